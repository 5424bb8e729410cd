"""`shard`: run one shard service (settings from the environment; see shard/settings.py)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from shard.app import init_app
from shard.settings import SettingsError, ShardSettings, from_env
from shard.state import SHARD

log = logging.getLogger("shard")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = from_env()
    except SettingsError as exc:
        print(f"shard: bad settings: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(settings))


async def serve(settings: ShardSettings) -> int:
    """Serve until SIGTERM/SIGINT; then drain within the stop timeout and exit 0."""
    app = init_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: handing sessions off (up to %.0f s)", settings.stop_timeout)
    # Keep a few seconds of the stop timeout for closing the browser itself.
    await app[SHARD].shutdown(max(1.0, settings.stop_timeout - 5))
    await runner.cleanup()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
