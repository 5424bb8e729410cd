"""The shard's own DevTools connection to its Chromium, beside Playwright's, for one job: giving
a restored session's page its snapshot without passing megabytes through Playwright's driver.

Playwright's `add_init_script` carries a script from the shard through its Node driver, which
parses and re-serializes it on the way to Chromium: for a heavy page's 5-7 MB snapshot that was
about a third of what a restore cost more than a create (docs/benchmarks.md). Here the shard
sends the same DevTools command (`Page.addScriptToEvaluateOnNewDocument`) to Chromium itself,
over the DevTools WebSocket that `--remote-debugging-port=0` opens on loopback.

That port is reachable only from inside the shard's network namespace; Chromium refuses
WebSocket connections that carry an Origin header (every page's do) and answers its HTTP
endpoints only for loopback Host names, so the pages it hosts cannot use it. If the port cannot
be found or the connection breaks, restores go through Playwright as before (browser.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from chatscale_contract import proctree

log = logging.getLogger(__name__)

ARG = "--remote-debugging-port=0"
"""Added to Chromium's arguments: a DevTools port of the system's choosing, named in the
profile's DevToolsActivePort file."""
PORT_FILE = "DevToolsActivePort"
FIND_TIMEOUT = 5.0
CALL_TIMEOUT = 30.0


class DevToolsError(Exception):
    """A command failed, or the connection is gone; the message says which."""


def endpoint(user_data_dir: Path) -> str | None:
    """The browser's DevTools WebSocket URL from its profile, or None if not written (yet)."""
    try:
        port, path = (user_data_dir / PORT_FILE).read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return f"ws://127.0.0.1:{int(port)}{path}"


def locate(marker: str, value: str) -> str | None:
    """The DevTools URL of the running browser whose environment has `marker`=`value`, from
    the profile its command line names; None if not found within FIND_TIMEOUT (blocking)."""
    deadline = time.monotonic() + FIND_TIMEOUT
    while time.monotonic() < deadline:
        for proc in proctree.marked_tree(marker, value):
            with contextlib.suppress(psutil.Error):
                profile = profile_of(psutil.Process(proc.pid).cmdline())
                if profile is not None and (url := endpoint(profile)):
                    return url
        time.sleep(0.1)
    return None


def profile_of(cmdline: list[str]) -> Path | None:
    """The --user-data-dir of a Chromium browser process (not of its helpers: they have --type)."""
    if any(arg.startswith("--type=") for arg in cmdline):
        return None
    for arg in cmdline:
        if arg.startswith("--user-data-dir="):
            return Path(arg.partition("=")[2])
    return None


class DevTools:
    """One WebSocket to the browser; commands matched to answers by id, events ignored."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="devtools")

    @classmethod
    async def connect(cls, url: str) -> DevTools:
        http = aiohttp.ClientSession()
        try:
            # No size limit on answers; no Origin header (Chromium would refuse it).
            ws = await http.ws_connect(url, max_msg_size=0, autoping=False)
        except BaseException:
            await http.close()
            raise
        return cls(http, ws)

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        large: bool = False,
    ) -> dict[str, Any]:
        """Send one command (to a target's `session` if given) and return its result; a `large`
        one (megabytes of restore script) is encoded off the event loop."""
        if self._ws.closed:
            raise DevToolsError("the DevTools connection is closed")
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        answer = self._pending[ident] = asyncio.get_running_loop().create_future()
        try:
            text = await asyncio.to_thread(json.dumps, message) if large else json.dumps(message)
            await self._ws.send_str(text)
            return await asyncio.wait_for(answer, CALL_TIMEOUT)
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            raise DevToolsError(f"{method}: {exc or type(exc).__name__}") from exc
        finally:
            self._pending.pop(ident, None)

    @contextlib.asynccontextmanager
    async def init_script(self, target: str, source: str) -> AsyncIterator[None]:
        """`source` runs in every new document of page `target` while inside; attached only
        for that long (detaching drops the script)."""
        attached = await self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        session = attached["sessionId"]
        try:
            # Scripts added by a session run only once its Page domain is enabled.
            await self.call("Page.enable", session=session)
            script = {"source": source}
            await self.call("Page.addScriptToEvaluateOnNewDocument", script, session, large=True)
            yield
        finally:
            with contextlib.suppress(DevToolsError):
                await self.call("Target.detachFromTarget", {"sessionId": session})

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self._ws.close()
        await self._http.close()

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                answer = self._pending.get(message.get("id", 0))
                if answer is None or answer.done():
                    continue  # an event, or an answer nobody waits for any more
                if "error" in message:
                    error = message["error"]
                    answer.set_exception(DevToolsError(f"{error.get('message')} ({error})"))
                else:
                    answer.set_result(message.get("result", {}))
        finally:
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_exception(DevToolsError("the DevTools connection closed"))
