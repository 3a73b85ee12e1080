"""`tessera serve | drift | profile | loadtest`: flags (each also a TESSERA_* environment variable) -> settings.

Settings are built once here and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .auth import Authorizer, hash_token
from .batch import cli as batch_cli
from .cli_help import HelpFormatter, env, json_object, parse_bool
from .drift import cli as drift_cli
from .settings import ServerSettings
from .tls import TlsFiles

__all__ = ["build_parser", "main", "serve_settings", "settle_heap"]

logger = logging.getLogger("tessera")


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve a model repository over gRPC and HTTP",
                       formatter_class=HelpFormatter)
    p.add_argument("--model-repository", default=env("model-repository"),
                   help="path or fsspec URL of the model repository (TESSERA_MODEL_REPOSITORY)")
    p.add_argument("--host", default=env("host", "127.0.0.1"),
                   help="address to bind (loopback unless set; 0.0.0.0 for every interface, as in a container)")
    p.add_argument("--http-port", type=int, default=int(env("http-port", "8000") or 8000),
                   help="HTTP port (0: any free port)")
    p.add_argument("--grpc-port", type=int, default=int(env("grpc-port", "8001") or 8001),
                   help="gRPC port (0: any free port)")
    p.add_argument("--workers", type=int, default=int(env("workers", "1") or 1),
                   help="processes sharing the ports (SO_REUSEPORT), each with its own sessions")
    p.add_argument("--model-control-mode", choices=("none", "poll", "explicit"),
                   default=env("model-control-mode", "none"),
                   help="none: load everything at start; poll: also watch the repository; explicit: load on request")
    p.add_argument("--load-model", action="append", default=None,
                   help="model to load at start in explicit mode; repeatable, '*' for all")
    p.add_argument("--repository-poll-secs", type=float,
                   default=float(env("repository-poll-secs", "15") or 15),
                   help="seconds between repository scans in poll mode")
    p.add_argument("--repository-cache-dir", default=env("repository-cache-dir"),
                   help="local mirror of a remote (fsspec URL) repository; a temporary directory if unset")
    p.add_argument("--repository-storage-options", type=json_object,
                   default=json_object(env("repository-storage-options", "{}") or "{}"),
                   help='fsspec options for a remote repository, as JSON: \'{"endpoint_url": "http://..."}\'')
    p.add_argument("--allow-repository-admin", type=parse_bool,
                   default=parse_bool(env("allow-repository-admin", "false") or "false"),
                   help="serve repository load/unload and rollout control (true/false; default false)")
    p.add_argument("--grpc-max-message-bytes", type=int,
                   default=int(env("grpc-max-message-bytes", str(64 << 20)) or 0),
                   help="largest gRPC message received or sent, bytes")
    p.add_argument("--grpc-server", choices=("ours", "grpcio"), default=env("grpc-server", "ours"),
                   help="ours: Tessera's HTTP/2 gRPC server on the serving loop; grpcio: grpc.aio")
    p.add_argument("--grpc-max-concurrent-streams", type=int,
                   default=int(env("grpc-max-concurrent-streams", "1024") or 1024),
                   help="streams one gRPC connection may have open at once (ours)")
    p.add_argument("--http-max-body-bytes", type=int,
                   default=int(env("http-max-body-bytes", str(64 << 20)) or 0),
                   help="largest HTTP request body, bytes (wire and decompressed); larger bodies get 413")
    p.add_argument("--intra-op-threads", type=int, default=int(env("intra-op-threads", "1") or 1),
                   help="ONNX Runtime intra-op threads per session (models may override)")
    p.add_argument("--allow-spinning", type=parse_bool, default=parse_bool(env("allow-spinning", "false") or "false"),
                   help="let ONNX Runtime's intra-op threads spin-wait between runs (true/false; burns cores)")
    inline_run_us = env("inline-run-us")
    p.add_argument("--inline-run-us", type=int, default=int(inline_run_us) if inline_run_us else None,
                   help="make a model run on the event loop when runs of its batch size recently took less CPU "
                        "than this (microseconds), not on ONNX Runtime's thread pool; 0: never. Default: 100 when "
                        "the process can use one CPU (affinity or container quota), else 20 (models may override "
                        "with the inline_run_us parameter)")
    p.add_argument("--drain-timeout-s", type=float, default=float(env("drain-timeout-s", "30") or 30),
                   help="seconds SIGTERM waits for in-flight requests before exiting")
    p.add_argument("--redis-url", default=env("redis-url"),
                   help="Redis for drift statistics, shared rollouts and fleet admin (default: none, all in-process)")
    p.add_argument("--state-dir", default=env("state-dir", ".tessera"),
                   help="directory for rollout state and the audit log")
    p.add_argument("--drift", type=parse_bool, default=parse_bool(env("drift", "true") or "true"),
                   help="summarise input features for drift monitoring (true/false)")
    p.add_argument("--drift-model", action="append", default=None,
                   help="model whose inputs are summarised; repeatable (default: every model)")
    p.add_argument("--drift-window-s", type=float, default=float(env("drift-window-s", "60") or 60),
                   help="seconds per statistics window (aligned to the wall clock)")
    p.add_argument("--drift-window-rows", type=int, default=int(env("drift-window-rows", "0") or 0),
                   help="also close a window after this many rows (0: by time only)")
    p.add_argument("--drift-queue-size", type=int, default=int(env("drift-queue-size", "256") or 256),
                   help="requests waiting to be folded; beyond it they are dropped and counted")
    p.add_argument("--drift-max-features", type=int,
                   default=int(env("drift-max-features", "4096") or 4096),
                   help="an input with more columns than this is not summarised (its requests are counted)")
    p.add_argument("--drift-cpu-budget", type=float, default=float(env("drift-cpu-budget", "0.02") or 0.02),
                   help="share of the serving loop's CPU drift folding may use (above it, traffic is sampled)")
    p.add_argument("--drift-stream-maxlen", type=int, default=int(env("drift-stream-maxlen", "1000") or 1000),
                   help="approximate length cap of each model Redis stream (XADD MAXLEN ~)")
    p.add_argument("--drift-buffer-windows", type=int, default=int(env("drift-buffer-windows", "256") or 256),
                   help="windows kept while Redis is unreachable; older ones are dropped and counted")
    p.add_argument("--log-level", default=env("log-level", "INFO"),
                   help="Python logging level (DEBUG, INFO, WARNING, ERROR)")
    # The fleet: replicas sharing --redis-url share rollouts and (explicit mode) repository admin.
    p.add_argument("--rollout-tick-s", type=float, default=float(env("rollout-tick-s", "0.5") or 0.5),
                   help="seconds between checks of each active rollout (and fleet syncs)")
    p.add_argument("--rollout-lease-s", type=float, default=float(env("rollout-lease-s", "0") or 0),
                   help="rollout leader lease, seconds (0: three ticks)")
    p.add_argument("--replica-id", default=env("replica-id", "") or "",
                   help="this replica's name in the fleet (default <hostname>-<pid>)")
    p.add_argument("--fleet-admin-timeout-s", type=float,
                   default=float(env("fleet-admin-timeout-s", "30") or 30),
                   help="seconds a load/unload waits for every replica's answer (explicit mode, Redis)")
    # -- bounded decoding, slow clients, rate limits (issue 11) --
    p.add_argument("--max-request-elements", type=int,
                   default=int(env("max-request-elements", str(1 << 24)) or 0),
                   help="tensor elements one inference request may declare (all inputs)")
    p.add_argument("--max-request-tensor-bytes", type=int,
                   default=int(env("max-request-tensor-bytes", str(128 << 20)) or 0),
                   help="decoded tensor bytes one inference request may declare (all inputs)")
    p.add_argument("--max-strings-per-row", type=int,
                   default=int(env("max-strings-per-row", str(1 << 18)) or 0),
                   help="BYTES elements per row of a model input (0: no cap); ONNX Runtime converts one "
                        "row's strings holding the GIL, stalling every other request meanwhile")
    p.add_argument("--decode-off-loop-bytes", type=int,
                   default=int(env("decode-off-loop-bytes", str(1 << 20)) or 0),
                   help="bodies/messages at least this big are decoded on a worker thread")
    p.add_argument("--body-budget-bytes", type=int, default=int(env("body-budget-bytes", str(256 << 20)) or 0),
                   help="bytes held in request bodies process-wide before 429 / RESOURCE_EXHAUSTED (0: off)")
    p.add_argument("--http-header-timeout-s", type=float,
                   default=float(env("http-header-timeout-s", "10") or 0),
                   help="seconds to send a complete request head before the connection is closed (0: off)")
    p.add_argument("--http-body-timeout-s", type=float, default=float(env("http-body-timeout-s", "30") or 0),
                   help="seconds to send the whole body after the head before the connection is closed (0: off)")
    p.add_argument("--http-max-header-bytes", type=int,
                   default=int(env("http-max-header-bytes", str(64 << 10)) or 0),
                   help="largest request head; larger ones get 431 and the connection closes")
    p.add_argument("--http-max-connections", type=int,
                   default=int(env("http-max-connections", "2048") or 0),
                   help="concurrent HTTP connections or requests before 503 (0: unlimited)")
    p.add_argument("--grpc-max-connection-idle-s", type=float,
                   default=float(env("grpc-max-connection-idle-s", "300") or 0),
                   help="seconds a gRPC connection may stay without calls before it is closed")
    p.add_argument("--rate-limit-rps", type=float, default=float(env("rate-limit-rps", "0") or 0),
                   help="inference requests per second per client (token bucket); 0: off")
    p.add_argument("--rate-limit-burst", type=int, default=int(env("rate-limit-burst", "0") or 0),
                   help="rate-limit bucket size (0: one second's worth)")
    p.add_argument("--stream-queue-share", type=float, default=float(env("stream-queue-share", "0.25") or 0),
                   help="share of a model's queue one gRPC stream may hold")
    _add_security_flags(p)
    _add_observability(p)


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def _add_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", default=env("tls-cert"), help="PEM certificate chain; TLS on with --tls-key")
    p.add_argument("--tls-key", default=env("tls-key"), help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", default=env("tls-client-ca"),
                   help="PEM CA bundle; when given, clients must present a certificate it signed (mTLS)")
    p.add_argument("--tls-reload-s", type=float, default=float(env("tls-reload-s", "5") or 5),
                   help="seconds between checks of the TLS (and auth) files for changes")


def _add_security_flags(p: argparse.ArgumentParser) -> None:
    _add_tls_flags(p)
    p.add_argument("--auth-tokens-file", default=env("auth-tokens-file"),
                   help="bearer tokens, one 'name:scopes:sha256hex[:expires=unix_seconds]' per line")
    p.add_argument("--auth-cert-identities", default=env("auth-cert-identities"),
                   help="client certificate identities (CN or SAN), one 'identity:scopes' per line (mTLS)")
    p.add_argument("--metrics-auth", type=parse_bool, default=parse_bool(env("metrics-auth", "false") or "false"),
                   help="require the read scope for /metrics (true/false; default false)")
    p.add_argument("--cors-origins", default=env("cors-origins", ""),
                   help="comma-separated origins allowed cross-origin browser access (default: none, CORS off)")


def _security_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "tls_cert": _path(args.tls_cert), "tls_key": _path(args.tls_key),
        "tls_client_ca": _path(args.tls_client_ca), "tls_reload_s": args.tls_reload_s,
        "auth_tokens_file": _path(args.auth_tokens_file),
        "auth_cert_identities_file": _path(args.auth_cert_identities), "metrics_auth": args.metrics_auth,
        "cors_origins": tuple(o.strip() for o in args.cors_origins.split(",") if o.strip()),
    }


def _add_hash_token(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("hash-token", help="read a token on stdin, print the SHA-256 the tokens file stores")


def _add_loadtest(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Listed for --help only: main() hands `tessera loadtest ...` to the harness's own parser first.
    sub.add_parser("loadtest", add_help=False,
                   help="the load harness (`tessera loadtest run|sweep|plan|scenario|replay ...`, its own flags: "
                        "`tessera loadtest --help`); needs the loadtest extra: pip install 'tessera[loadtest]'")

def _add_observability(p: argparse.ArgumentParser) -> None:
    """Flags of traces, request logs, payload logs and prediction drift (issue 17)."""
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    ratio = {"always_on": "1", "parentbased_always_on": "1", "always_off": "0", "parentbased_always_off": "0"
             }.get(sampler, os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1"))
    p.add_argument("--tracing", choices=("auto", "on", "off"), default=env("tracing", "auto"),
                   help="OpenTelemetry traces over OTLP; auto: on when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set")
    p.add_argument("--trace-sample-ratio", type=float, default=float(env("trace-sample-ratio", ratio) or 1),
                   help="share of requests without a caller's trace that are traced (default from "
                        "OTEL_TRACES_SAMPLER/OTEL_TRACES_SAMPLER_ARG, else 1)")
    p.add_argument("--request-log", default=env("request-log", ""),
                   help="JSON request lines to stdout, stderr or a file (default off)")
    p.add_argument("--request-log-sample-ratio", type=float,
                   default=float(env("request-log-sample-ratio", "1") or 1),
                   help="share of successful requests logged (errors always are)")
    p.add_argument("--payload-log", choices=("", "redis", "parquet"), default=env("payload-log", ""),
                   help="sink of sampled payloads of models whose config opts in (payload_log_sample_ratio)")
    p.add_argument("--payload-log-dir", default=env("payload-log-dir", "payloads"),
                   help="directory of the rotating Parquet files of --payload-log parquet")
    p.add_argument("--payload-log-rotate-rows", type=int,
                   default=int(env("payload-log-rotate-rows", "100000") or 100000),
                   help="rows per payload Parquet file before the next one starts")
    p.add_argument("--payload-log-stream-maxlen", type=int,
                   default=int(env("payload-log-stream-maxlen", "10000") or 10000),
                   help="approximate length cap of each model's payload stream (XADD MAXLEN ~)")
    p.add_argument("--drift-outputs", type=parse_bool, default=parse_bool(env("drift-outputs", "true") or "true"),
                   help="summarise model outputs too, for prediction drift (true/false)")


def _observability_settings(args: argparse.Namespace) -> dict[str, Any]:
    from .tracing import otel_configured

    tracing = args.tracing == "on" or (args.tracing == "auto" and otel_configured(dict(os.environ)))
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if args.payload_log == "redis" and not args.redis_url:
        raise SystemExit("tessera serve: --payload-log redis needs --redis-url")
    return {
        "tracing_enabled": tracing, "trace_sample_ratio": args.trace_sample_ratio,
        "trace_parent_based": not sampler.startswith(("always", "traceidratio")),
        "otel_exporter_protocol": protocol, "request_log": args.request_log,
        "request_log_sample_ratio": args.request_log_sample_ratio, "payload_log": args.payload_log,
        "payload_log_dir": Path(args.payload_log_dir), "payload_log_rotate_rows": args.payload_log_rotate_rows,
        "payload_log_stream_maxlen": args.payload_log_stream_maxlen, "drift_outputs": args.drift_outputs,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_hash_token(sub)
    drift_cli.add_subcommands(sub)
    batch_cli.add_subcommands(sub)
    _add_loadtest(sub)
    return parser


# What the loadtest extra installs on top of Tessera's own dependencies (import names).
_LOADTEST_EXTRA = ("hdrh", "hpack", "matplotlib")


def _loadtest(argv: Sequence[str]) -> int:
    """`tessera loadtest ...`: the harness's own CLI; without the loadtest extra, say which one to install."""
    try:
        from loadtests.cli import main as loadtest_main
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in _LOADTEST_EXTRA:
            raise
        raise SystemExit(f"tessera loadtest: the load harness needs the loadtest extra ({missing} is not "
                         "installed): pip install 'tessera[loadtest]'") from None
    return loadtest_main(argv)


def serve_settings(args: argparse.Namespace) -> ServerSettings:
    if not args.model_repository:
        raise SystemExit("tessera serve: --model-repository (or TESSERA_MODEL_REPOSITORY) is required")
    loads = tuple(args.load_model or [m for m in (env("load-model") or "").split(",") if m])
    if args.model_control_mode == "poll" and args.repository_poll_secs <= 0:
        raise SystemExit("tessera serve: --model-control-mode poll needs --repository-poll-secs > 0")
    settings = ServerSettings(
        model_repository=args.model_repository, host=args.host, http_port=args.http_port,
        grpc_port=args.grpc_port, workers=args.workers, model_control_mode=args.model_control_mode,
        load_models=loads, repository_poll_secs=args.repository_poll_secs,
        repository_cache_dir=Path(args.repository_cache_dir) if args.repository_cache_dir else None,
        repository_storage_options=args.repository_storage_options,
        allow_repository_admin=args.allow_repository_admin,
        grpc_max_message_bytes=args.grpc_max_message_bytes, http_max_body_bytes=args.http_max_body_bytes,
        grpc_server=args.grpc_server, grpc_max_concurrent_streams=args.grpc_max_concurrent_streams,
        intra_op_threads=args.intra_op_threads, allow_spinning=args.allow_spinning, inline_run_us=args.inline_run_us,
        drain_timeout_s=args.drain_timeout_s, redis_url=args.redis_url, state_dir=Path(args.state_dir),
        drift_enabled=args.drift,
        drift_models=tuple(args.drift_model or [m for m in (env("drift-model") or "").split(",") if m]),
        drift_window_s=args.drift_window_s, drift_window_rows=args.drift_window_rows,
        drift_queue_size=args.drift_queue_size, drift_cpu_budget=args.drift_cpu_budget,
        drift_max_features=args.drift_max_features,
        drift_stream_maxlen=args.drift_stream_maxlen,
        drift_buffer_windows=args.drift_buffer_windows,
        log_level=args.log_level.upper(),
        **_security_settings(args),
        rollout_tick_s=args.rollout_tick_s, rollout_lease_s=args.rollout_lease_s, replica_id=args.replica_id,
        fleet_admin_timeout_s=args.fleet_admin_timeout_s,
        **_limit_settings(args),
        **_observability_settings(args),
    )
    problem = settings.exposure_problem()
    if problem is not None:
        raise SystemExit(f"tessera serve: {problem}")
    try:  # unreadable or malformed TLS and auth files, or drift settings out of range, stop the start with a
        # message, not a traceback
        files = TlsFiles.from_settings(settings)
        if files is not None:
            files.read()
        Authorizer(settings.auth_tokens_file, settings.auth_cert_identities_file)
        if settings.drift_enabled:
            from .app import tap_config

            tap_config(settings)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise SystemExit(f"tessera serve: {exc}") from None
    return settings


def _limit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The bounded-decoding, slow-client and rate-limit settings (issue 11)."""
    names = ("max_request_elements", "max_request_tensor_bytes", "max_strings_per_row", "decode_off_loop_bytes",
             "body_budget_bytes", "http_header_timeout_s", "http_body_timeout_s", "http_max_header_bytes",
             "http_max_connections", "grpc_max_connection_idle_s", "rate_limit_rps", "rate_limit_burst",
             "stream_queue_share")
    return {name: getattr(args, name) for name in names}


YOUNG_GC_THRESHOLD = 10_000
"""Allocations (net of frees) between collections of the youngest generation, once serving."""


def settle_heap() -> None:
    """Tune the garbage collector for serving, once start-up is done (call it then, once)."""
    # What start-up built (modules, configs, loaded models) lives as long as the process: take it out
    # of the collector's reach, so a full collection walks only what requests and side paths create
    # instead of pausing every request in flight for the whole start-up heap (BENCHMARKS.md, "Side paths").
    gc.collect()
    gc.freeze()
    # A request allocates a few dozen containers that nearly all die by reference count; at the default
    # threshold (700) the young generation is walked every ~20 small requests, each time through every
    # request in flight. 10,000 walks it ~15x less often: ~5% less CPU per small request (BENCHMARKS.md,
    # issue 13). The older generations keep their defaults.
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])


async def _serve(settings: ServerSettings) -> None:
    from .app import App

    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    settle_heap()
    await stop.wait()
    logger.info("signal received: draining")
    await app.stop()


def run_server(settings: ServerSettings) -> None:
    """Run one server process on uvloop until SIGTERM/SIGINT, then drain and return."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve(settings))


def _run_workers(settings: ServerSettings) -> int:
    from .metrics import mark_worker_dead, prepare_multiprocess_dir

    # prometheus-client picks its multiprocess value store when it is imported: the variable must be in
    # the environment the workers are spawned with.
    metrics_dir, temporary = prepare_multiprocess_dir(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    settings = dataclasses.replace(settings, metrics_multiprocess_dir=metrics_dir)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=run_server, args=(settings,), name=f"tessera-{i}") for i in range(settings.workers)]
    for proc in procs:
        proc.start()

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.pid is not None:
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.join()
        if proc.pid is not None:
            mark_worker_dead(metrics_dir, proc.pid)
    if temporary:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return max((proc.exitcode or 0) for proc in procs)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["loadtest"]:  # the harness has its own parser: run|sweep|plan|scenario|replay
        return _loadtest(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "hash-token":
        print(hash_token(sys.stdin.readline().strip()))
        return 0
    if args.command == "serve":
        settings = serve_settings(args)
        if settings.workers > 1:
            return _run_workers(settings)
        run_server(settings)
        return 0
    if args.command in drift_cli.COMMANDS:
        return drift_cli.run(args)
    if args.command in batch_cli.COMMANDS:
        return batch_cli.run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
