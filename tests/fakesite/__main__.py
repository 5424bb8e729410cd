"""Run the stand-in for WhatsApp Web (not affiliated): python -m fakesite --port N."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aiohttp import web

from fakesite.app import BANNER, create_app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fakesite", description=BANNER)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--qr-rotate-seconds", type=float, default=20.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(BANNER, flush=True)
    app = create_app(qr_rotate_seconds=args.qr_rotate_seconds)
    web.run_app(app, host=args.host, port=args.port, print=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
