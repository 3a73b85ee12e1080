"""`python -m loadtests run | sweep | plan | scenario | replay` (also `tessera loadtest ...`).

    python -m loadtests run   --url grpcs://staging.example:443 --tls-ca ca.pem --token-file t \\
        --model tabular --mode open --rate 500
    python -m loadtests sweep --protocol http --port 8000 --model tabular --mode closed \\
        --levels 1,2,4,8,16,32 --slo-p99 25 --out .bench/sweep
    python -m loadtests plan  --target-rps 20000 --slo-p99 25 --from .bench/sweep/results.json
    python -m loadtests scenario mix.yaml --url grpc://127.0.0.1:8001 --out .bench/mix
    python -m loadtests replay arrivals.csv --speed 2 --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .encoding import encode_payloads
from .inputs import fetch_model_info, random_samples, samples_from_file
from .plan import CapacityPlan, FleetOptions, plan_capacity
from .plot import plot_latency, plot_models
from .replay import build_replay, read_arrival_log
from .report import load_steps, model_table, table, write_csv, write_json, write_models_csv
from .results import StepResult
from .runner import Progress, run_step
from .scenario import build_traffic, load_scenario
from .spec import LoadSpec, Target
from .sweep import Slo, SweepResult, best_of, geometric_levels, run_sweep
from .target_flags import add_target_args, redact_argv, target_from_args
from .traffic import Arrivals, Mix

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"loadtests: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(required=True, dest="command")
    run = commands.add_parser("run", help="one load step")
    _load_args(run)
    run.set_defaults(func=_cmd_run)
    sweep = commands.add_parser("sweep", help="step the load up, find the best throughput within an SLO")
    _load_args(sweep)
    _sweep_args(sweep)
    sweep.set_defaults(func=_cmd_sweep)
    plan = commands.add_parser("plan", help="pods, workers per pod and HPA target for a rate, from a sweep")
    _load_args(plan, required=False)
    _sweep_args(plan)
    f = plan.add_argument_group("fleet")
    f.add_argument("--target-rps", type=float, required=True)
    f.add_argument("--headroom", type=float, default=0.3, help="capacity kept free (default 0.3)")
    f.add_argument("--from", dest="from_file", type=Path, help="a results.json from `sweep`")
    f.add_argument("--zones", type=int, default=3, help="zones the pods spread over; plan for one lost (1: none)")
    f.add_argument("--min-pods", type=int, default=2)
    f.add_argument("--hpa-signal", choices=("pending", "queue-p99"), default="pending",
                   help="pending: tessera_pending_requests per pod; queue-p99: batcher queue p99 (ms)")
    plan.set_defaults(func=_cmd_plan)
    scenario = commands.add_parser("scenario", help="a traffic mix from a YAML or JSON scenario file")
    scenario.add_argument("file", type=Path)
    add_target_args(scenario, model=False)
    _generator_args(scenario)
    _output_args(scenario)
    scenario.set_defaults(func=_cmd_scenario)
    replay = commands.add_parser("replay", help="replay a recorded arrival log (CSV or JSON lines), open loop")
    replay.add_argument("file", type=Path)
    replay.add_argument("--speed", type=float, default=1.0, help="2: twice as fast as recorded (default 1)")
    add_target_args(replay, model=False)
    _generator_args(replay)
    _output_args(replay)
    replay.set_defaults(func=_cmd_replay)
    return parser


def _load_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    add_target_args(p, model=True, required=required)
    i = p.add_argument_group("inputs")
    i.add_argument("--input-file", type=Path, help="JSON or Parquet rows / V2 request bodies")
    i.add_argument("--batch-size", type=int, default=1, help="rows per request")
    i.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:D1,D2",
        help="full shape for an input with variable dims",
    )
    i.add_argument("--distinct", type=int, default=64, help="distinct requests to cycle through")
    i.add_argument("--outputs", default="", help="comma-separated outputs to request (default all)")
    load = p.add_argument_group("load")
    load.add_argument("--mode", choices=("open", "closed"), default="closed")
    load.add_argument("--rate", type=float, default=0.0, help="open loop: req/s")
    load.add_argument("--arrival", choices=("poisson", "constant"), default="poisson")
    load.add_argument("--concurrency", type=int, default=1, help="closed loop: requests in flight")
    load.add_argument("--duration", type=float, default=10.0, help="measured seconds per step")
    load.add_argument("--warmup", type=float, default=2.0, help="seconds sent but not recorded")
    _generator_args(p)
    _output_args(p)


def _generator_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generators")
    g.add_argument("--processes", type=int, default=1, help="generator processes (or Ray actors)")
    g.add_argument("--max-requests", type=int, default=5_000_000, help="hard cap per step")
    g.add_argument("--max-in-flight", type=int, default=2048, help="open loop, per process")
    g.add_argument("--grpc-channels", type=int, default=1, help="per process")
    g.add_argument("--cpus", default="", help="generator CPU affinity, e.g. 1 or 2,3")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--send-spin-ms", type=float, default=0.0,
                   help="scenario/replay: poll the last MS before each send time instead of sleeping "
                        "(default 0: sleep only; try 1 on a dedicated generator core)")
    g.add_argument("--ray-address", help="run the generators as actors on this Ray cluster (ray://..., "
                   "HOST:PORT or auto); needs the `ray` extra")


def _output_args(p: argparse.ArgumentParser) -> None:
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, help="directory for results.json, results.csv, latency.png")
    out.add_argument("--label", default="", help="title of the plot and progress line")


def _sweep_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sweep and SLO")
    g.add_argument("--levels", default="", help="rates (open) or concurrencies (closed), comma-separated")
    g.add_argument("--start", type=float, default=1.0, help="first level when --levels is not given")
    g.add_argument("--factor", type=float, default=2.0, help="each level is the last times this")
    g.add_argument("--steps", type=int, default=8, help="number of levels")
    g.add_argument("--slo-p99", type=float, help="ms")
    g.add_argument("--slo-p95", type=float, help="ms")
    g.add_argument("--max-error-rate", type=float, default=0.001)
    g.add_argument("--stop-after-failures", type=int, default=2)
    g.add_argument("--workers-per-pod", type=int, default=None,
                   help="Tessera --workers of the replica under test (recorded in results.json for `plan`; "
                        "plan: default the sweep's, else 1)")


def _generator_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The LoadSpec fields every kind of step takes from the generator flags alike."""
    return {"processes": args.processes, "max_requests": args.max_requests, "max_in_flight": args.max_in_flight,
            "grpc_channels": args.grpc_channels, "seed": args.seed,
            "cpus": tuple(int(c) for c in args.cpus.split(",") if c.strip())}


def _spec(args: argparse.Namespace, level: float | None = None) -> LoadSpec:
    """The step the flags describe; `level` (a sweep's) replaces --rate or --concurrency."""
    is_open = args.mode == "open"
    rate = (level if level is not None else args.rate) if is_open else 0.0
    concurrency = 0 if is_open else max(1, round(level if level is not None else args.concurrency))
    return LoadSpec(
        mode=args.mode,
        rate_rps=rate,
        arrival=args.arrival,
        concurrency=concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        **_generator_settings(args),
    )


def _payloads(args: argparse.Namespace, target: Target) -> list[bytes]:
    info = fetch_model_info(target)
    if args.input_file is not None:
        samples = samples_from_file(args.input_file, info, batch_size=args.batch_size, limit=args.distinct)
    else:
        shapes = {}
        for item in args.shape:
            name, _, dims = item.partition(":")
            shapes[name] = [int(d) for d in dims.split(",")]
        samples = random_samples(info, batch_size=args.batch_size, count=args.distinct, seed=args.seed, shapes=shapes)
    return encode_payloads(target, samples, [o for o in args.outputs.split(",") if o])


def _label(args: argparse.Namespace, target: Target) -> str:
    loop = f"open loop ({args.arrival})" if args.mode == "open" else "closed loop"
    return args.label or f"{target.model} over {target.protocol}, {loop}"


def _cmd_run(args: argparse.Namespace) -> int:
    target = target_from_args(args)
    spec = _spec(args)
    payloads = _payloads(args, target)
    step = run_step(target, spec, payloads, progress=Progress(_label(args, target), spec.processes, spec.warmup_s),
                    ray_address=args.ray_address)
    _print_step_notes(step)
    print(table([step]))
    if args.out is not None:
        _write(args, [step], None, None, None, target)
    return 0 if step.ok else 1


def _run_sweep(args: argparse.Namespace) -> tuple[SweepResult, Target]:
    target = target_from_args(args)
    payloads = _payloads(args, target)
    levels = (
        [float(v) for v in args.levels.split(",") if v.strip()]
        if args.levels
        else geometric_levels(args.start, args.factor, args.steps, integer=args.mode == "closed")
    )
    slo = Slo(p99_ms=args.slo_p99, p95_ms=args.slo_p95, max_error_rate=args.max_error_rate)

    def run_level(level: float) -> StepResult:
        spec = _spec(args, level)
        label = f"{_label(args, target)} @ {level:g}"
        return run_step(target, spec, payloads, progress=Progress(label, spec.processes, spec.warmup_s),
                        ray_address=args.ray_address)

    def on_step(step: StepResult, met: bool, reason: str) -> None:
        _print_step_notes(step)
        print(
            f"  level {step.level:g}: {step.throughput_rps:.1f} req/s, p99 {step.latency.p99_ms:.2f} ms, "
            f"errors {step.error_rate:.2%} -> {'SLO met' if met else 'FAIL: ' + reason}",
            flush=True,
        )

    return run_sweep(levels, run_level, slo, stop_after_failures=args.stop_after_failures, on_step=on_step), target


def _cmd_sweep(args: argparse.Namespace) -> int:
    sweep, target = _run_sweep(args)
    print(table(sweep.steps, sweep.verdicts, sweep.best_index))
    best = sweep.best
    print("best within SLO: " + (f"{best.throughput_rps:.1f} req/s at level {best.level:g}" if best else "none"))
    if args.out is not None:
        _write(args, list(sweep.steps), sweep, None, args.slo_p99, target)
    return 0 if best is not None else 1


def _cmd_plan(args: argparse.Namespace) -> int:
    workers = args.workers_per_pod
    if args.from_file is not None:
        steps, verdicts = load_steps(args.from_file)
        slo = Slo(p99_ms=args.slo_p99, p95_ms=args.slo_p95, max_error_rate=args.max_error_rate)
        verdicts = [slo.check(s) for s in steps] if args.slo_p99 or args.slo_p95 or verdicts is None else verdicts
        sweep = SweepResult(tuple(steps), tuple(verdicts), best_of(steps, verdicts))
        target = None
        if workers is None:
            workers = json.loads(args.from_file.read_text()).get("meta", {}).get("workers_per_pod")
    else:
        if args.model is None:
            raise ValueError("plan needs --from results.json, or --model (and the sweep flags) to run one")
        sweep, target = _run_sweep(args)
    fleet = FleetOptions(workers_per_pod=workers or 1, zones=args.zones, hpa_signal=args.hpa_signal,
                         min_pods=args.min_pods)
    plan = plan_capacity(sweep, args.target_rps, args.headroom, fleet)
    print(table(sweep.steps, sweep.verdicts, sweep.best_index))
    print(plan.describe())
    if args.out is not None:
        _write(args, list(sweep.steps), sweep, plan, args.slo_p99, target)
    return 0 if plan.replicas is not None else 1


def _run_traffic(
    args: argparse.Namespace, target: Target, payloads: list[bytes], mix: Mix, arrivals: Arrivals, warmup_s: float
) -> StepResult:
    """One open-loop step over explicit arrivals: the window runs from warmup_s to the last arrival."""
    if not len(arrivals):
        raise ValueError("no arrivals to send")
    span = arrivals.span_s
    spec = LoadSpec(
        mode="open",
        rate_rps=len(arrivals) / max(span, 1e-3),
        arrival="constant",
        duration_s=max(span - warmup_s, 0.0) + 1e-3,
        warmup_s=warmup_s,
        **_generator_settings(args),
        send_spin_ms=args.send_spin_ms,
    )
    label = args.label or f"{'+'.join(mix.models)} over {target.protocol}"
    step = run_step(target, spec, payloads, mix=mix, arrivals=arrivals,
                    progress=Progress(label, spec.processes, spec.warmup_s), ray_address=args.ray_address)
    _print_step_notes(step)
    print(table([step]))
    print(model_table(step))
    if args.out is not None:
        _write(args, [step], None, None, None, target)
    return step


def _cmd_scenario(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.file)
    target = target_from_args(args, model=scenario.models[0].name)
    payloads, mix, arrivals = build_traffic(scenario, target, seed=args.seed)
    print(f"scenario: {len(arrivals)} requests over {scenario.duration_s:g} s "
          f"(mean {scenario.mean_rate_rps:.1f} req/s), models {', '.join(mix.models)}", flush=True)
    step = _run_traffic(args, target, payloads, mix, arrivals, scenario.warmup_s)
    return 0 if step.ok else 1


def _cmd_replay(args: argparse.Namespace) -> int:
    log = read_arrival_log(args.file)
    target = target_from_args(args, model=log.models[0])
    payloads, mix, arrivals = build_replay(log, target, base=args.file.parent, speed=args.speed, seed=args.seed)
    print(f"replay: {len(arrivals)} requests over {arrivals.span_s:.3f} s at {args.speed:g}x, "
          f"models {', '.join(mix.models)}", flush=True)
    step = _run_traffic(args, target, payloads, mix, arrivals, 0.0)
    return 0 if step.ok else 1


def describe(step: StepResult) -> str:
    """'tabular over grpc, open loop (poisson)'."""
    loop = f"open loop ({step.mode.split('-', 1)[1]})" if step.mode.startswith("open-") else "closed loop"
    return f"{step.model or 'model'} over {step.protocol}, {loop}"


def _print_step_notes(step: StepResult) -> None:
    for note in step.warnings:
        print(f"  warning: {note}", file=sys.stderr)
    if step.first_error:
        print(f"  first error: {step.first_error}", file=sys.stderr)


def _write(
    args: argparse.Namespace,
    steps: list[StepResult],
    sweep: SweepResult | None,
    plan: CapacityPlan | None,
    slo_p99: float | None,
    target: Target | None,
) -> None:
    out: Path = args.out
    meta = {
        "argv": redact_argv(sys.argv[1:]),
        "model": getattr(args, "model", None) or (steps[0].model if steps else None),
        "protocol": target.protocol if target is not None else getattr(args, "protocol", None),
        "mode": getattr(args, "mode", "open"),
        "workers_per_pod": getattr(args, "workers_per_pod", None),
    }
    write_json(out / "results.json", steps, sweep=sweep, plan=plan, meta=meta)
    write_csv(out / "results.csv", steps, list(sweep.verdicts) if sweep else None)
    title = args.label or (describe(steps[0]) if steps else "")
    written = [out / "results.json", out / "results.csv", out / "latency.png"]
    plot_latency(
        out / "latency.png",
        steps,
        title=title,
        slo_p99_ms=slo_p99,
        best_index=sweep.best_index if sweep else None,
    )
    if any(step.per_model for step in steps):
        write_models_csv(out / "models.csv", steps)
        plot_models(out / "models.png", steps[-1], title=title)
        written += [out / "models.csv", out / "models.png"]
    print("wrote " + ", ".join(str(w) for w in written))
