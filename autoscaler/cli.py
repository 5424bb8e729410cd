"""`autoscaler` command line: run, check-config, simulate, down, front-agent."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from autoscaler.engine.explain import explain_quiet
from autoscaler.engine.schedules import VALIDATION
from autoscaler.engine.simcluster import NodeSpec
from autoscaler.engine.simulate import TraceError, parse_trace
from autoscaler.engine.simulate import run as run_simulation
from chatscale_contract.config import parse_size
from chatscale_contract.configload import ConfigError, load_config


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config has {len(exc.issues)} error(s):", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoscaler", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate a config file; list every error")
    check.add_argument("path", nargs="?", default="config.yaml")
    check.set_defaults(func=_check_config)

    sim = sub.add_parser("simulate", help="replay a load trace through the scaling engine")
    sim.add_argument("--config", default="config.yaml")
    sim.add_argument("--trace", required=True, help="CSV: t,sessions[,memory_fraction][,nodes]")
    sim.add_argument("--tick", type=float, default=1.0, help="simulated seconds per pass")
    sim.add_argument(
        "--start-delay", type=float, default=30.0, help="seconds until a shard is ready"
    )
    sim.add_argument("--drain-seconds", type=float, default=10.0, help="seconds a drain takes")
    sim.add_argument("--summary-only", action="store_true", help="print only the summary line")
    sim.add_argument("--nodes", type=int, help="capacity planning: place shards on this many nodes")
    sim.add_argument("--node-memory", help="memory of each node with --nodes, e.g. 64g")
    sim.set_defaults(func=_simulate)

    run = sub.add_parser("run", help="run the autoscaler daemon")
    run.add_argument("--config", default="config.yaml")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    run.set_defaults(func=_run)

    down = sub.add_parser("down", help="stop every shard of this project")
    down.add_argument("--config", default="config.yaml")
    down.set_defaults(func=_down)

    agent = sub.add_parser(
        "front-agent", help="run the nginx front beside this process and keep its config current"
    )
    agent.add_argument("--config", default="config.yaml")
    agent.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    agent.set_defaults(func=_front_agent)
    return parser


def _front_agent(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from autoscaler.service import front_agent

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(front_agent(load_config(args.config, context=VALIDATION)))


def _down(args: argparse.Namespace) -> int:
    import asyncio

    from autoscaler.service import down

    return asyncio.run(down(load_config(args.config, context=VALIDATION)))


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    from pathlib import Path

    from autoscaler.service import serve

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # APScheduler logs every job run at INFO: one line per pass says nothing the status page
    # does not.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    path = Path(args.config).resolve()
    config = load_config(path, context=VALIDATION)
    return asyncio.run(serve(config, path))


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.path, context=VALIDATION)
    policy = config.policy
    shards = f"{policy.min_shards}..{policy.max_shards}"
    print(
        f"{args.path}: ok (runtime {config.runtime.kind}, shards {shards}"
        f" x {config.shard.max_sessions} sessions, {len(policy.schedules)} schedule(s)"
        f"{', dry run' if policy.dry_run else ''})"
    )
    print(explain_quiet(config))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    problem = _simulate_problem(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    nodes = NodeSpec(args.nodes, parse_size(args.node_memory)) if args.nodes else None
    config = load_config(args.config, context=VALIDATION)
    try:
        with open(args.trace) as handle:
            points = parse_trace(handle.read(), args.trace)
    except (OSError, TraceError) as exc:
        print(exc, file=sys.stderr)
        return 2
    out = sys.stdout
    records = run_simulation(config, points, args.tick, args.start_delay, args.drain_seconds, nodes)
    for record in records:
        if args.summary_only and "summary" not in record:
            continue
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
    return 0


def _simulate_problem(args: argparse.Namespace) -> str:
    if args.tick <= 0 or args.start_delay < 0 or args.drain_seconds < 0:
        return "--tick must be > 0; --start-delay and --drain-seconds >= 0"
    if args.nodes is None and args.node_memory is None:
        return ""
    if not args.nodes or args.nodes < 1 or not args.node_memory:
        return "--nodes (at least 1) and --node-memory (e.g. 64g) go together"
    try:
        parse_size(args.node_memory)
    except ValueError as exc:
        return f"--node-memory: {exc}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
