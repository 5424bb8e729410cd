"""A stand-in for many shards in one process: each port answers as one shard.

Run:  python upstream_server.py shard-1=127.0.0.1:8101 shard-2=127.0.0.1:8102 ...

Every request gets 200 with JSON {"shard", "method", "path", "session_header", "request_id",
"forwarded_for", "body_bytes"} and an X-Shard-Id header, so a test sees which shard nginx chose and
what nginx passed on. GET /__upstream/status/<code> answers that status with Retry-After: 7 (a
shard's own error, which nginx must pass through untouched).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from aiohttp import web

SHARD = web.AppKey("shard", str)


async def answer(request: web.Request) -> web.Response:
    shard = request.app[SHARD]
    headers = {"X-Shard-Id": shard}
    if request.path.startswith("/__upstream/status/"):
        code = int(request.path.rsplit("/", 1)[1])
        body = json.dumps({"shard": shard, "shard_error": code})
        headers["Retry-After"] = "7"
        return web.Response(
            status=code, text=body, content_type="application/json", headers=headers
        )
    payload = await request.read()
    body = json.dumps(
        {
            "shard": shard,
            "method": request.method,
            "path": request.path_qs,
            "session_header": request.headers.get("X-Session-Id"),
            "request_id": request.headers.get("X-Request-Id"),
            "forwarded_for": request.headers.get("X-Forwarded-For"),
            "body_bytes": len(payload),
        }
    )
    return web.Response(text=body, content_type="application/json", headers=headers)


def make_app(shard: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    app[SHARD] = shard
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def serve(specs: list[str]) -> None:
    runners = []
    for spec in specs:
        shard, _, addr = spec.partition("=")
        host, _, port = addr.rpartition(":")
        runner = web.AppRunner(make_app(shard), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, int(port), backlog=1024).start()
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"serving {len(specs)} shard(s)", flush=True)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:]))
