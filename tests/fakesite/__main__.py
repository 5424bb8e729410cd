"""Run the stand-in for WhatsApp Web (not affiliated): python -m fakesite --port N [--heavy]."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

from aiohttp import web

from fakesite.app import BANNER, create_app
from fakesite.heavy import HeavyOptions


def parse_args(
    argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ
) -> argparse.Namespace:
    """Heavy mode's options also come from the environment (FAKESITE_HEAVY=1 and
    FAKESITE_HEAVY_SCRIPT_MB, _IDB_MB, _TICK_SECONDS); a flag given wins."""
    defaults = HeavyOptions()
    parser = argparse.ArgumentParser(prog="python -m fakesite", description=BANNER)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--qr-rotate-seconds", type=float, default=20.0)
    heavy = parser.add_argument_group("heavy mode (a page that weighs like WhatsApp Web)")
    heavy.add_argument(
        "--heavy",
        action=argparse.BooleanOptionalAction,
        default=env.get("FAKESITE_HEAVY", "").lower() in ("1", "true", "yes", "on"),
        help="every page is heavy unless it asks for ?heavy=0 (otherwise only ?heavy=1 pages)",
    )
    heavy.add_argument(
        "--heavy-script-mb",
        type=float,
        default=float(env.get("FAKESITE_HEAVY_SCRIPT_MB", defaults.script_mb)),
        help="size of the generated script bundle (MB)",
    )
    heavy.add_argument(
        "--heavy-idb-mb",
        type=float,
        default=float(env.get("FAKESITE_HEAVY_IDB_MB", defaults.idb_mb)),
        help="what a heavy page writes into IndexedDB after the login, once per login (MB)",
    )
    heavy.add_argument(
        "--heavy-tick-seconds",
        type=float,
        default=float(env.get("FAKESITE_HEAVY_TICK_SECONDS", defaults.tick_seconds)),
        help="how often a logged-in heavy page updates its clock, presence and IndexedDB",
    )
    return parser.parse_args(argv)


def heavy_options(args: argparse.Namespace) -> HeavyOptions:
    return HeavyOptions(
        default=args.heavy,
        script_mb=args.heavy_script_mb,
        idb_mb=args.heavy_idb_mb,
        tick_seconds=args.heavy_tick_seconds,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(BANNER, flush=True)
    app = create_app(qr_rotate_seconds=args.qr_rotate_seconds, heavy=heavy_options(args))
    web.run_app(app, host=args.host, port=args.port, print=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
