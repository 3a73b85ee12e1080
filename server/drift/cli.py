"""`tessera profile` and `tessera drift`: flags (each also a TESSERA_* variable) -> the drift tools.

server/cli.py adds these with `add_subcommands(sub)` and dispatches with `run(args)` when
`args.command in COMMANDS`; `python -m server.drift` runs them on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from ..cli_help import HelpFormatter, csv_list, env
from ..repository.config import read_config
from ..tls import ServerTlsContext, TlsFiles
from .codec import write_profile_file
from .evaluate import EvaluationConfig, Thresholds
from .metrics import MonitorMetrics
from .monitor import MonitorConfig
from .outputs import build_output_profile
from .profiles import (
    ProfileStore,
    build_profile,
    config_feature_names,
    input_widths,
    profile_path,
    store_profile_in_redis,
)
from .report_http import ReportServer
from .reports import ReportBook
from .service import DriftService, ServiceConfig
from .stats import FeatureKey, WindowSummary
from .webhook import WebhookNotifier

__all__ = ["COMMANDS", "add_subcommands", "run"]

COMMANDS = ("profile", "drift")

logger = logging.getLogger("tessera.drift")

def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `profile` and `drift` to tessera's subcommands."""
    p = sub.add_parser("profile", help="build a model's drift reference profile from training data (Parquet)",
                       formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--data", required=True, type=Path, help="Parquet file of training inputs")
    p.add_argument("--model-repository", default=env("model-repository"),
                   help="repository holding the model: its config names inputs and features, and the "
                        "profile is written beside it")
    p.add_argument("--out", type=Path, help="profile file (default <repository>/<model>/drift_profile.arrow)")
    p.add_argument("--redis-url", default=None, help="also store the profile in this Redis")
    p.add_argument("--input", help="input that the Parquet's plain columns feed (default: the only one)")
    p.add_argument("--columns", type=csv_list, help="comma-separated columns to use (default: all numeric)")
    p.add_argument("--exclude", type=csv_list, default=[], help="comma-separated columns to leave out (labels)")
    p.add_argument("--batch-rows", type=int, default=65536, help="rows per record batch read")
    p.add_argument("--outputs", action="store_true",
                   help="profile the model's outputs from a scored table (a column per output) for prediction "
                        "drift; written as drift_profile.outputs.arrow / tessera:drift-profile:<model>:outputs")

    d = sub.add_parser("drift", help="run the drift service: read statistics streams, compare with "
                       "reference profiles", formatter_class=HelpFormatter)
    d.add_argument("--redis-url", "--redis", dest="redis_url", default=env("redis-url"), help="Redis URL")
    d.add_argument("--model-repository", default=env("model-repository"),
                   help="where to find drift_profile.arrow files (profiles in Redis come first)")
    d.add_argument("--http-host", default=env("drift-http-host", "0.0.0.0"),
                   help="address the reports endpoint binds (it serves aggregates only)")
    d.add_argument("--http-port", type=int, default=int(env("drift-http-port", "8003") or 8003),
                   help="reports and /metrics; 0 picks a free port")
    d.add_argument("--webhook", default=env("drift-webhook"), help="POST alert changes here (JSON)")
    d.add_argument("--group", default="tessera-drift", help="consumer group shared by drift services")
    d.add_argument("--consumer", default=None, help="this service's consumer name (default host-pid)")
    d.add_argument("--bucket-s", type=float, default=float(env("drift-bucket-s", "60") or 60),
                   help="seconds per bucket; match the servers' --drift-window-s")
    d.add_argument("--sliding-buckets", type=int, default=5, help="buckets per evaluated sliding window")
    d.add_argument("--retention-buckets", type=int, default=0, help="buckets kept for late windows")
    d.add_argument("--thresholds", type=Path, help="JSON file of threshold overrides")
    d.add_argument("--min-rows", type=int, default=500, help="fewer values in the window: not judged")
    d.add_argument("--psi-bins", type=int, default=10, help="reference quantile bins for PSI / JS")
    d.add_argument("--claim-idle-ms", type=int, default=60_000,
                   help="take over messages a dead service left pending this long")
    d.add_argument("--log-level", default=env("log-level", "INFO"), help="Python logging level")
    d.add_argument("--tls-cert", default=env("tls-cert"), help="PEM certificate chain: HTTPS with --tls-key")
    d.add_argument("--tls-key", default=env("tls-key"), help="PEM private key of --tls-cert")
    d.add_argument("--tls-client-ca", default=env("tls-client-ca"),
                   help="PEM CA bundle; when given, clients must present a certificate it signed (mTLS)")


def run(args: argparse.Namespace) -> int:
    """Run the subcommand `args.command` parsed by the parser add_subcommands extended."""
    if args.command == "profile":
        return _output_profile(args) if args.outputs else _profile(args)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_drift(args))
    return 0


def _profile(args: argparse.Namespace) -> int:
    repository = Path(args.model_repository) if args.model_repository else None
    widths: dict[str, int | None] = {}
    names: dict[FeatureKey, str] = {}
    if repository is not None:
        config = read_config(repository / args.model)
        widths = input_widths(config)
        names = config_feature_names({k: v.string_value for k, v in config.parameters.items()}, list(widths))
    try:
        profile = build_profile(args.model, args.data, widths=widths, names=names, target_input=args.input,
                                columns=args.columns, exclude=args.exclude, batch_rows=args.batch_rows)
    except ValueError as exc:
        raise SystemExit(f"tessera profile: {exc}") from exc
    return _save(args, repository, profile, "profile")


def _save(args: argparse.Namespace, repository: Path | None, profile: WindowSummary, what: str) -> int:
    """Write `profile` beside the model (or to --out) and/or into Redis, and say where it went."""
    out = args.out or (profile_path(repository, profile.model) if repository is not None else None)
    if out is None and not args.redis_url:
        raise SystemExit("tessera profile: give --out, --model-repository or --redis-url")
    if out is not None:
        write_profile_file(profile, out)
    if args.redis_url:
        asyncio.run(_store(args.redis_url, profile))
    where = ", ".join(str(w) for w in (out, args.redis_url and f"Redis {args.redis_url}") if w)
    print(f"{what} of {args.model}: {profile.rows} rows, {len(profile.features)} features -> {where}")
    return 0


def _output_profile(args: argparse.Namespace) -> int:
    repository = Path(args.model_repository) if args.model_repository else None
    outputs = list(args.columns or [])
    if repository is not None and not outputs:
        outputs = [t.name for t in read_config(repository / args.model).output]
    if not outputs:
        raise SystemExit("tessera profile --outputs: give --model-repository (its config names the outputs) "
                         "or --columns")
    try:
        profile = build_output_profile(args.model, args.data, outputs, batch_rows=args.batch_rows)
    except ValueError as exc:
        raise SystemExit(f"tessera profile: {exc}") from exc
    return _save(args, repository, profile, "output profile")


async def _store(url: str, profile: WindowSummary) -> None:
    redis = Redis.from_url(url)
    try:
        await store_profile_in_redis(redis, profile)
    finally:
        await redis.aclose()


def service_config(args: argparse.Namespace) -> ServiceConfig:
    thresholds = Thresholds.from_file(args.thresholds) if args.thresholds else Thresholds()
    monitor = MonitorConfig(bucket_s=args.bucket_s, sliding_buckets=args.sliding_buckets,
                            retention_buckets=args.retention_buckets,
                            evaluation=EvaluationConfig(thresholds=thresholds, psi_bins=args.psi_bins,
                                                        min_rows=args.min_rows))
    extra = {"consumer": args.consumer} if args.consumer else {}
    return ServiceConfig(monitor=monitor, group=args.group, claim_idle_ms=args.claim_idle_ms, **extra)


async def _drift(args: argparse.Namespace) -> None:
    if not args.redis_url:
        raise SystemExit("tessera drift: --redis-url (or TESSERA_REDIS_URL) is required")
    redis = Redis.from_url(args.redis_url, socket_connect_timeout=5)
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    reports = ReportBook(metrics)
    repository = Path(args.model_repository) if args.model_repository else None
    notifier = WebhookNotifier(args.webhook, metrics) if args.webhook else None
    service = DriftService(redis, service_config(args), ProfileStore(repository, redis), reports, metrics,
                           notifier)
    try:
        files = TlsFiles.from_settings(args)
    except ValueError as exc:
        raise SystemExit(f"tessera drift: {exc}") from None
    http = ReportServer(reports, registry, args.http_host, args.http_port,
                        ServerTlsContext(files) if files is not None else None)
    http.start()
    logger.info("drift service: reports and metrics on %s://%s:%d", "https" if files else "http",
                args.http_host, http.port)
    task = asyncio.create_task(service.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        logger.info("drift service stopping")
    finally:
        http.stop()
        await redis.aclose()
