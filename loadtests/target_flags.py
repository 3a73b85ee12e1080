"""Command-line flags that name a target and how to reach it: URL or host and port, TLS files,
headers and bearer tokens; and argv with the credentials taken out, for results files."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from .spec import Target, TlsOptions, parse_url

__all__ = ["add_target_args", "parse_header", "redact_argv", "target_from_args"]


def add_target_args(p: argparse.ArgumentParser, *, model: bool, required: bool = True) -> None:
    g = p.add_argument_group("target")
    g.add_argument("--url", help="grpc://HOST:PORT, grpcs://... (TLS), http://..., https://...; "
                   "replaces --host, --protocol and --port")
    g.add_argument("--host", default="127.0.0.1", help="any host name or address (default 127.0.0.1)")
    g.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    g.add_argument("--port", type=int, help="default 8001 for gRPC, 8000 for HTTP")
    if model:
        g.add_argument("--model", required=required)
        g.add_argument("--model-version", default="")
    g.add_argument("--http-encoding", choices=("binary", "json"), default="binary")
    g.add_argument("--http-split-writes", action="store_true",
                   help="send headers and body in two writes, as perf_analyzer (libcurl) does")
    g.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    g.add_argument("--metrics-url", help="default SCHEME://HOST:8000/metrics (HTTP: the same port)")
    g.add_argument("--no-metrics", action="store_true", help="don't scrape the server's /metrics")
    t = p.add_argument_group("TLS and credentials")
    t.add_argument("--tls", action="store_true", help="TLS with the system's CAs (implied by grpcs/https "
                   "and by the other --tls-* flags)")
    t.add_argument("--tls-ca", type=Path, help="PEM CA bundle the server's certificate must chain to")
    t.add_argument("--tls-cert", type=Path, help="PEM client certificate (mTLS)")
    t.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    t.add_argument("--tls-server-name", help="name to verify and send as SNI / :authority instead of the host "
                   "(grpc.ssl_target_name_override)")
    t.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                   help="HTTP header or gRPC metadata on every call (repeatable)")
    t.add_argument("--token", help="bearer token (visible to other local users in the process list; "
                   "prefer --token-file or TESSERA_TOKEN)")
    t.add_argument("--token-file", type=Path, help="file whose first line is a bearer token")


def parse_header(item: str) -> tuple[str, str]:
    """`Name: value` -> (name, value). Raises ValueError on a missing name or a line break."""
    name, sep, value = item.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or any(c in item for c in "\r\n\0") or any(c in name for c in " \t"):
        raise ValueError(f"--header {item!r}: expected NAME:VALUE on one line")
    return name, value


def _credentials(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    headers = [parse_header(h) for h in args.header]
    token = args.token
    if args.token_file is not None:
        lines = args.token_file.read_text().splitlines()
        if not lines or not lines[0].strip():
            raise ValueError(f"--token-file {args.token_file}: the first line holds no token")
        token = lines[0].strip()
    token = token or os.environ.get("TESSERA_TOKEN") or None
    if token is not None:
        if any(c in token for c in "\r\n\0 "):
            raise ValueError("the bearer token must be one line without spaces")
        if any(name.lower() == "authorization" for name, _ in headers):
            raise ValueError("give either a token or an authorization header, not both")
        headers.append(("authorization", f"Bearer {token}"))
    return tuple(headers)


def target_from_args(args: argparse.Namespace, model: str | None = None) -> Target:
    protocol, host, port, tls_on = args.protocol, args.host, args.port, args.tls
    if args.url:
        parsed = parse_url(args.url)
        protocol, host, port, tls_on = parsed.protocol, parsed.host, parsed.port, parsed.tls or args.tls
    port = port or (8001 if protocol == "grpc" else 8000)
    tls_on = tls_on or any((args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name))
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = (
        TlsOptions(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key,
                   server_name=args.tls_server_name)
        if tls_on
        else None
    )
    scheme = "https" if tls is not None else "http"
    bracketed = f"[{host}]" if ":" in host else host
    metrics = (
        None
        if args.no_metrics
        else (args.metrics_url or f"{scheme}://{bracketed}:{port if protocol == 'http' else 8000}/metrics")
    )
    return Target(
        host=host,
        port=port,
        protocol=protocol,
        model=model if model is not None else args.model,
        model_version=getattr(args, "model_version", ""),
        http_encoding=args.http_encoding,
        http_split_writes=args.http_split_writes,
        request_timeout_s=args.timeout,
        metrics_url=metrics,
        tls=tls,
        headers=_credentials(args),
    )


_SECRET_FLAGS = ("--token", "--header")


def redact_argv(argv: Sequence[str]) -> list[str]:
    """argv with token and header values replaced, so results files never hold a credential."""
    redacted: list[str] = []
    hide_next = False
    for item in argv:
        if hide_next:
            redacted.append("***")
            hide_next = False
        elif item in _SECRET_FLAGS:
            redacted.append(item)
            hide_next = True
        elif item.startswith(tuple(f + "=" for f in _SECRET_FLAGS)):
            redacted.append(item.split("=", 1)[0] + "=***")
        else:
            redacted.append(item)
    return redacted
