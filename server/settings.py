"""ServerSettings: every knob of `tessera serve`, parsed once at the edge (CLI flags + TESSERA_* env).

Units are in the field names. Nothing mutates settings after start; they are passed down explicitly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ServerSettings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    model_repository: str
    """Path (or fsspec URL) of the model repository in Triton's layout."""

    host: str = "127.0.0.1"
    """Address both servers bind (loopback by default; a container sets TESSERA_HOST=0.0.0.0)."""

    http_port: int = 8000
    """HTTP port; 0 picks a free one (tests)."""

    grpc_port: int = 8001
    """gRPC port; 0 picks a free one (tests)."""

    workers: int = 1
    """Processes sharing the ports through SO_REUSEPORT, each with its own sessions."""

    model_control_mode: str = "none"
    """none: load everything at start; poll: also watch the repository; explicit: load on request."""

    load_models: tuple[str, ...] = ()
    """Models to load at start in explicit mode ("*" for all)."""

    repository_poll_secs: float = 15.0
    """Seconds between repository scans in poll mode."""

    repository_cache_dir: Path | None = None
    """Local cache for remote (fsspec) repositories; a temporary directory when None."""

    repository_storage_options: Mapping[str, Any] = field(default_factory=dict)
    """fsspec storage options for a remote repository (e.g. endpoint_url, key, secret, anon)."""

    allow_repository_admin: bool = False
    """Serve the admin operations: repository load / unload and rollout start / promote / abort."""

    grpc_max_message_bytes: int = 64 * 1024 * 1024
    """Largest gRPC message accepted or sent."""

    grpc_server: str = "ours"
    """Which gRPC server serves the port: "ours" (HTTP/2 on the serving loop, the default) or "grpcio"
    (grpc.aio, the fallback)."""

    grpc_max_concurrent_streams: int = 1024
    """Calls one gRPC connection may have open at once (ours; SETTINGS_MAX_CONCURRENT_STREAMS)."""

    http_max_body_bytes: int = 64 * 1024 * 1024
    """Largest HTTP request body accepted; larger bodies get 413."""

    intra_op_threads: int = 1
    """ONNX Runtime intra-op threads per session, unless the model's parameters override it."""

    allow_spinning: bool = False
    """Let ONNX Runtime's intra-op pool spin-wait between runs (burns cores; see BENCHMARKS.md)."""

    inline_run_us: int | None = None
    """Runs of a batch size that recently took less CPU than this many microseconds are made on the event
    loop rather than handed to the executor's pool (the hand-off costs more); 0: always the pool; None:
    100 when the process can use one CPU, else 20 (executor/runner.py says why)."""

    drain_timeout_s: float = 30.0
    """Seconds SIGTERM waits for in-flight requests before exiting."""

    redis_url: str | None = None
    """Redis for drift statistics (and shared rollout state); None keeps everything in-process."""

    state_dir: Path = field(default_factory=lambda: Path(".tessera"))
    """Directory for persisted server state (rollouts, audit log)."""

    drift_enabled: bool = True
    """Fold input feature statistics and publish them (Redis Streams, or the embedded monitor)."""

    drift_models: tuple[str, ...] = ()
    """Models whose inputs are summarised; empty means every model."""

    drift_window_s: float = 60.0
    """Seconds per statistics window, aligned to the wall clock so replicas' windows line up."""

    drift_window_rows: int = 0
    """Also close a window after this many rows (0: by time only)."""

    drift_queue_size: int = 256
    """Requests waiting to be folded; beyond it, they are dropped and counted."""

    drift_max_features: int = 4096
    """Columns of an input beyond which it is not summarised: each column is a summary held for the
    window, and a client chooses the width of an input with a free dimension."""

    drift_cpu_budget: float = 0.02
    """Share of the serving loop's CPU the folding may use; above it, the statistics sample the traffic."""

    drift_stream_maxlen: int = 1000
    """Approximate length cap of each model's Redis stream (XADD MAXLEN ~)."""

    drift_buffer_windows: int = 256
    """Windows kept while Redis is unreachable; older ones are dropped and counted."""

    rollout_tick_s: float = 0.5
    """Seconds between checks of each active rollout's step."""

    log_level: str = "INFO"
    """Python logging level name."""

    # -- bounded decoding, slow clients, rate limits (issue 11) -------------------------------------
    max_request_elements: int = 1 << 24
    """Tensor elements one inference request may declare, all inputs together (16,777,216)."""

    max_request_tensor_bytes: int = 128 << 20
    """Decoded tensor bytes one inference request may declare, all inputs together (BYTES: payload)."""

    max_strings_per_row: int = 1 << 18
    """BYTES elements per row of a model input (0: no cap): one row's strings are one GIL-held stall."""

    decode_off_loop_bytes: int = 1 << 20
    """Bodies and gRPC messages at least this big are decoded on a worker thread, off the event loop."""

    body_budget_bytes: int = 256 << 20
    """Bytes held in inference request bodies, process-wide; beyond it, 429 / RESOURCE_EXHAUSTED (0: off)."""

    http_header_timeout_s: float = 10.0
    """Seconds a connection has to send a complete request head (from connect or its last response)."""

    http_body_timeout_s: float = 30.0
    """Seconds a request has, after its head, to send its whole body; slower connections are closed."""

    http_max_header_bytes: int = 64 << 10
    """Largest request head (request line and headers); larger ones get 431 and the connection closes."""

    http_max_connections: int = 2048
    """Concurrent HTTP connections (or requests) before new requests get 503 (uvicorn's limit_concurrency)."""

    grpc_max_connection_idle_s: float = 300.0
    """Seconds a gRPC connection may stay without calls before the server closes it (GOAWAY)."""

    rate_limit_rps: float = 0.0
    """Inference requests per second per client identity (token bucket); 0 switches rate limits off."""

    rate_limit_burst: int = 0
    """Bucket size of the rate limit; 0 means one second's worth (at least 1)."""

    stream_queue_share: float = 0.25
    """Share of a model's queue one gRPC stream may hold (at least one request); its excess is refused."""

    # -- the fleet (replicas sharing --redis-url) ----------------------------------------------
    replica_id: str = ""
    """This replica's name in the fleet; empty: <hostname>-<pid> (the pod name in Kubernetes)."""

    rollout_lease_s: float = 0.0
    """Seconds the rollout leader's lease lasts unless renewed each tick; 0: three ticks, at least 0.5 s."""

    fleet_admin_timeout_s: float = 30.0
    """Seconds an explicit-mode load/unload waits for every replica to answer (with Redis)."""

    metrics_multiprocess_dir: Path | None = None
    """Set by `--workers N` (N > 1): where the workers' metric values meet, so one scrape shows all."""

    # -- security (TLS, authentication, CORS): see README "Security" ----------------------------
    tls_cert: Path | None = None
    """PEM certificate chain both servers present; TLS is on when this and tls_key are set."""

    tls_key: Path | None = None
    """PEM private key of tls_cert."""

    tls_client_ca: Path | None = None
    """PEM bundle of CAs that sign client certificates; when set, every client must present one (mTLS)."""

    tls_reload_s: float = 5.0
    """Seconds between checks of the TLS and auth files; changed files are loaded without a restart."""

    auth_tokens_file: Path | None = None
    """`name:scopes:sha256hex[:expires=unix_seconds]` lines; when set, requests need a bearer token."""

    auth_cert_identities_file: Path | None = None
    """`identity:scopes` lines mapping a client certificate's CN or SAN to scopes (with mTLS)."""

    metrics_auth: bool = False
    """Require the `read` scope for /metrics (open by default, for scrapers)."""

    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the HTTP API from a browser; empty: CORS off."""

    # -- observability (issue 17): traces, request logs, payload logs, prediction drift ------------------
    tracing_enabled: bool = False
    """Export OpenTelemetry traces over OTLP (the CLI turns this on when OTEL_EXPORTER_OTLP_*ENDPOINT is set)."""

    trace_sample_ratio: float = 1.0
    """Share of requests without a sampled caller trace that start a trace (OTEL_TRACES_SAMPLER_ARG)."""

    trace_parent_based: bool = True
    """Follow the caller's sampled flag when a traceparent arrives (the parentbased_* samplers)."""

    otel_exporter_protocol: str = "http/protobuf"
    """OTLP transport: http/protobuf, or grpc with opentelemetry-exporter-otlp-proto-grpc installed."""

    request_log: str = ""
    """Structured JSON request lines: "" off, "stdout", "stderr", or a file path."""

    request_log_sample_ratio: float = 1.0
    """Share of successful requests logged; failed requests are always logged."""

    request_log_queue_size: int = 10_000
    """Lines waiting for the writer thread; beyond it lines are dropped and counted."""

    payload_log: str = ""
    """Where sampled payloads of opted-in models go: "" off, "redis" (needs redis_url), "parquet"."""

    payload_log_dir: Path = field(default_factory=lambda: Path("payloads"))
    """Directory of the rotating Parquet files (payload_log "parquet")."""

    payload_log_rotate_rows: int = 100_000
    """Rows per Parquet file before the next one starts."""

    payload_log_stream_maxlen: int = 10_000
    """Approximate length cap of each model's payload stream (XADD MAXLEN ~)."""

    payload_log_queue_size: int = 1024
    """Sampled requests waiting for the writer thread; beyond it they are dropped and counted."""

    drift_outputs: bool = True
    """Summarise each model version's outputs too (prediction drift), when drift monitoring is on."""

    def exposure_problem(self) -> str | None:
        """Why these settings must not start (admin reachable off loopback with nobody checked), or None."""
        if not self.allow_repository_admin or _is_loopback(self.host):
            return None
        if self.auth_tokens_file is not None or self.tls_client_ca is not None:
            return None
        return (f"refusing to serve the admin API on {self.host}, which is not a loopback address, without "
                "authentication: set --auth-tokens-file (bearer tokens) or --tls-cert/--tls-key/--tls-client-ca "
                "(mTLS), or turn admin off (--allow-repository-admin false), or bind --host 127.0.0.1")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere
