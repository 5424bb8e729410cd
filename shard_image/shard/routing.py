"""Where a session belongs, and passing requests to the shard that owns it.

nginx routes by the same ring, so almost every request arrives at the right shard. The rest (a
stale front, a session that moved, an overflow placement) are forwarded here: correctness never
depends on nginx being fresh.
"""

from __future__ import annotations

import random
import time
from collections.abc import Collection

import aiohttp
from aiohttp import web

from chatscale_contract.beat import Beat, ReportedState
from chatscale_contract.hops import ADOPT, FORWARDED_BY, NO_ROOM, PASS_BACK, passed_headers
from chatscale_contract.placement import place
from chatscale_contract.ring import Ring
from shard.errors import json_error
from shard.handoff import MOVING, Moved
from shard.registry import Registry
from shard.settings import ShardSettings

VIEW_TTL = 1.0


class NoRoom(Exception):
    """The shard a new session was passed to cannot take it after all (hops.NO_ROOM)."""


class Router:
    """Ring placement and forwarding for one shard. Fleet views are cached for VIEW_TTL."""

    def __init__(self, settings: ShardSettings, registry: Registry, http: aiohttp.ClientSession):
        self.settings = settings
        self.registry = registry
        self.http = http
        self._view: tuple[float, Ring, dict[str, Beat]] | None = None
        self.credential = settings.api_key
        """The key this shard sends on its own calls to others (state.py keeps it current)."""

    async def view(self, fresh: bool = False) -> tuple[Ring, dict[str, Beat]]:
        """The ring nginx uses (as published by the autoscaler) and every live heartbeat."""
        now = time.monotonic()
        if not fresh and self._view is not None and now - self._view[0] < VIEW_TTL:
            return self._view[1], self._view[2]
        beats = {b.id: b for b in await self.registry.heartbeats()}
        members = await self.registry.ring_members()
        if members is None:
            # No autoscaler has published a ring yet: use the one it would publish.
            members = [(b.id, b.addr) for b in beats.values() if b.state != ReportedState.DRAINING]
        ring = Ring(members)
        self._view = (now, ring, beats)
        return ring, beats

    async def place(self, sid: str, local_room: bool, exclude: Collection[str] = ()) -> str | None:
        """The shard a new session should live on: its ring owner, else the next with room."""
        ring, beats = await self.view()
        me = self.settings.shard_id

        def has_room(shard_id: str) -> bool:
            if shard_id in exclude:
                return False
            if shard_id == me:
                return local_room
            beat = beats.get(shard_id)
            return beat is not None and beat.has_room

        target = place(ring, sid, has_room)
        if target is None and me not in exclude and local_room and not ring.members:
            return me  # a lone shard before any ring exists
        return target

    async def addr(self, shard_id: str) -> str | None:
        _, beats = await self.view()
        if shard_id not in beats:
            _, beats = await self.view(fresh=True)
        beat = beats.get(shard_id)
        return beat.addr if beat is not None else None

    async def alive(self, shard_id: str) -> bool:
        return await self.addr(shard_id) is not None

    async def forward(
        self,
        request: web.Request,
        shard_id: str,
        body: bytes,
        method: str | None = None,
        path: str | None = None,
        placing: bool = False,
    ) -> web.Response:
        """Replay `request` (or `method path` with its headers) on `shard_id`; return its answer.
        `placing`: a create passed on for room; raises NoRoom when `shard_id` has none."""
        addr = await self.addr(shard_id)
        if addr is None:
            return json_error(503, f"owner {shard_id} is not reachable", retry_after=2)
        headers = passed_headers(request.headers, self.settings.shard_id)
        url = f"http://{addr}{path or request.rel_url}"
        verb = method or request.method
        try:
            async with self.http.request(verb, url, headers=headers, data=body) as resp:
                if resp.status == 503 and MOVING in resp.headers:
                    raise Moved()  # it moved on from there: the handler runs again here
                if placing and resp.status == 503 and NO_ROOM in resp.headers:
                    raise NoRoom()
                return await _passed_back(resp)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return json_error(503, f"owner {shard_id} did not answer: {exc}", retry_after=2)

    async def to_activator(self, request: web.Request, body: bytes) -> web.Response | None:
        """Hand a request no shard has room for to a live activator, which holds it until one
        has; its answer, or None when no activator is registered or none answered."""
        addrs = await self.registry.activators()
        random.shuffle(addrs)
        headers = passed_headers(request.headers, self.settings.shard_id)
        for addr in addrs:
            url = f"http://{addr}{request.rel_url}"
            try:
                async with self.http.request(
                    request.method, url, headers=headers, data=body
                ) as resp:
                    return await _passed_back(resp)
            except (aiohttp.ClientError, TimeoutError):
                continue  # a stale registration, or one going down: try the next
        return None

    async def adopt(self, sid: str, target: str) -> bool:
        """Ask `target` to restore `sid` from its snapshot (used when draining)."""
        addr = await self.addr(target)
        if addr is None:
            return False
        # A released session is claimed like a new one and opens from its snapshot: the
        # receiving shard needs no more than the forwarding mark (it must not forward again).
        headers = {FORWARDED_BY: self.settings.shard_id, ADOPT: "1"}
        if self.credential:
            headers["X-Api-Key"] = self.credential
        try:
            url = f"http://{addr}/api/sessions/{sid}"
            async with self.http.put(url, headers=headers, json={}) as resp:
                return resp.status in (200, 201)
        except (aiohttp.ClientError, TimeoutError):
            return False


async def _passed_back(resp: aiohttp.ClientResponse) -> web.Response:
    payload = await resp.read()
    passed = {h: resp.headers[h] for h in PASS_BACK if h in resp.headers}
    return web.Response(status=resp.status, body=payload, headers=passed)
