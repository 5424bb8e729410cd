"""The status page (HTML, no external assets), JSON status, Prometheus metrics and health.

Everything shown comes from the daemon's last observation and decisions; nothing here does
scaling work, so the page stays responsive whatever the fleet is doing.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from autoscaler.activator.hold import Activator
from autoscaler.engine.model import ShardState
from autoscaler.loop.daemon import Daemon, Decision
from autoscaler.web.appkeys import ACTIVATOR, DAEMON, DELIVERER
from autoscaler.web.charts import charts, folded
from autoscaler.web.webhooks import replay_json, summary, webhooks_json
from autoscaler.webhooks.deliver import Deliverer
from chatscale_contract.ids import InvalidSessionId, check_session_id, shard_number

log = logging.getLogger(__name__)
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_OPEN = {"/healthz"}


def init_app(
    daemon: Daemon, activator: Activator | None = None, deliverer: Deliverer | None = None
) -> web.Application:
    app = web.Application(middlewares=[_json_errors, _token])
    app[DAEMON] = daemon
    if activator is not None:
        app[ACTIVATOR] = activator
    if deliverer is not None:
        app[DELIVERER] = deliverer
    app.add_routes(
        [
            web.get("/", page),
            web.get("/api/status", status_json),
            web.get("/api/route", route_json),
            web.get("/metrics", metrics),
            web.get("/healthz", healthz),
            web.get("/api/webhooks", webhooks_json),
            web.post("/api/webhooks/replay", replay_json),
        ]
    )
    return app


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own errors (404, 405) and crashes as JSON, like every other error here."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason, "status": exc.status}, status=exc.status)
    except Exception:
        log.exception("status request %s failed", request.path)
        return web.json_response({"error": "internal error", "status": 500}, status=500)


@web.middleware
async def _token(request: web.Request, handler: Any) -> web.StreamResponse:
    token = request.app[DAEMON].config.status.token
    if token and request.path not in _OPEN:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        given = given or request.query.get("token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.json_response({"error": "missing or wrong token", "status": 401}, status=401)
    response: web.StreamResponse = await handler(request)
    return response


def status(daemon: Daemon, activator: Activator | None = None) -> dict[str, Any]:
    """The whole status as plain data (the HTML page renders this same dict)."""
    state, config = daemon.state, daemon.config
    observed = state.observed
    shards = _shards(daemon)
    front = daemon.front
    return {
        "now": daemon.clock.time(),
        "holder": daemon.holder,
        "leader": state.leader,
        "dry_run": config.policy.dry_run,
        "config_error": state.config_error or None,
        "last_error": state.last_error or None,
        "fleet": {
            "shards": len(shards),
            "desired": state.decisions[0].plan.desired if state.decisions else None,
            "sessions": observed.sessions if observed else 0,
            "pending": observed.pending if observed else 0,
            "orphans": observed.orphans if observed else 0,
            "capacity": observed.capacity if observed else 0,
            "data_fresh": observed.fresh if observed else False,
            "stale_reason": (observed.stale_reason or None) if observed else None,
        },
        "policy": {
            "min_shards": config.policy.min_shards,
            "max_shards": config.policy.max_shards,
            "max_sessions": config.shard.max_sessions,
            "memory_limit": config.shard.memory_limit,
            "idle_to_zero": config.policy.idle_to_zero,
        },
        "shards": shards,
        "rollout": _rollout(daemon, shards),
        "nodes": _nodes(daemon),
        "decisions": [_decision(d) for d in list(state.decisions)[:20]],
        "history": [asdict(sample) for sample in state.samples],
        "nginx": {
            "enabled": config.nginx.enabled,
            "applied_version": front.applied.version if front.applied else None,
            "wanted_version": front.table.version if front.table else None,
            "exceptions": len(front.table.exceptions) if front.table else 0,
            "error": front.error or None,
            "fronts": _fronts(daemon),
        },
        "activator": {
            "enabled": config.activator.enabled,
            "here": activator.stats() if activator is not None else None,
            "live": list(state.fleet.activators) if state.fleet else [],
        },
    }


def _nodes(daemon: Daemon) -> list[dict[str, Any]] | None:
    """The cluster's nodes with their shards and free memory (None: one host, no nodes)."""
    fleet = daemon.state.fleet
    if fleet is None or fleet.cluster is None:
        return None
    shards_on: dict[str, list[str]] = {}
    for instance in fleet.instances.values():
        if instance.node:
            shards_on.setdefault(instance.node, []).append(instance.shard_id)
    return [
        {
            "id": node.id,
            "hostname": node.hostname,
            "ready": node.ready,
            "active": node.active,
            "role": node.role,
            "memory_bytes": node.memory_bytes,
            "reserved_bytes": node.reserved_bytes,
            "free_bytes": node.free_bytes,
            "shards": sorted(shards_on.get(node.id, []), key=shard_number),
        }
        for node in sorted(fleet.cluster.nodes, key=lambda n: (n.hostname, n.id))
    ]


def _fronts(daemon: Daemon) -> list[dict[str, Any]]:
    """Every front that reported, what it serves, and whether that is the latest config."""
    front, now = daemon.front, daemon.clock.time()
    published = front.state.generation or None
    return [
        {
            "id": r.id,
            "node": r.node,
            "generation": r.generation or None,
            "version": r.version or None,
            "current": r.generation == published,
            "live": now - r.ts <= daemon.config.nginx.front_timeout,
            "report_age": round(now - r.ts, 1),
            "error": r.error or None,
        }
        for r in sorted(front.fronts, key=lambda r: r.id)
    ]


def _shards(daemon: Daemon) -> list[dict[str, Any]]:
    fleet, observed = daemon.state.fleet, daemon.state.observed
    if fleet is None or observed is None:
        return []
    rows = []
    for view in observed.shards:
        beat = fleet.beats.get(view.id)
        instance = fleet.instances.get(view.id)
        rows.append(
            {
                "id": view.id,
                "state": view.state.value,
                "reported": beat.state if beat else None,
                "sessions": view.sessions,
                "capacity": beat.capacity if beat else daemon.config.shard.max_sessions,
                "memory_bytes": view.memory_bytes,
                "memory_limit_bytes": (beat.memory_limit_bytes if beat else 0)
                or (instance.memory_limit_bytes if instance else 0),
                "heartbeat_age": None
                if view.heartbeat_age is None
                else round(view.heartbeat_age, 1),
                "addr": beat.addr if beat else (instance.addr if instance else None),
                "runtime": instance.detail if instance else "missing",
                "node": (instance.node or None) if instance else None,
                # Started with other shard settings than the running config, or from an
                # older image (until replaced); `outdated_by` says which.
                "outdated": bool(instance and instance.outdated(daemon.config.fingerprint())),
                "outdated_by": (instance.outdated_by(daemon.config.fingerprint()) or None)
                if instance
                else None,
            }
        )
    return rows


def _rollout(daemon: Daemon, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """How far replacing the outdated shards has come, and what holds it (the last decision's
    reasons about recycling: "rollout held: ...", "recycle of shard-3 waits: ...")."""
    recycle = daemon.config.policy.recycle
    latest = daemon.state.decisions[0].plan.reasons if daemon.state.decisions else ()
    return {
        "enabled": recycle.outdated,
        "paused": recycle.paused,
        "outdated": sum(1 for s in shards if s["outdated"]),
        "current": sum(1 for s in shards if not s["outdated"]),
        "waiting": [r for r in latest if r.startswith(("rollout held", "recycle of"))],
    }


def _decision(decision: Decision) -> dict[str, Any]:
    plan = decision.plan
    return {
        "ts": decision.ts,
        "leader": decision.leader,
        "desired": plan.desired,
        "current": plan.current,
        "recommendation": plan.recommendation,
        "held": plan.held,
        "actions": [str(a) for a in plan.actions],
        "reasons": list(plan.reasons),
        "outcomes": [str(e) for e in decision.events],
        "duration_ms": round(decision.duration * 1000, 1),
    }


def route(daemon: Daemon, session_id: str) -> dict[str, Any]:
    """Which shard a session id reaches, as nginx (the applied table) and the registry say."""
    table = daemon.front.applied or daemon.front.table
    fleet = daemon.state.fleet
    ring_owner = table.ring().owner(session_id) if table else None
    exception = table.exceptions.get(session_id) if table else None
    return {
        "session": session_id,
        "ring_owner": ring_owner,
        "exception": exception,
        "routes_to": exception or ring_owner,
        "registry_owner": fleet.owners.get(session_id) if fleet else None,
    }


async def access(daemon: Daemon) -> dict[str, Any]:
    """Whether keys are required, how many there are, and the generated admin key if the
    first start made one (this page is for whoever runs the system: loopback, or a token)."""
    try:
        async with daemon.redis.pipeline(transaction=False) as pipe:
            pipe.get(daemon.keys.auth_mode)
            pipe.hlen(daemon.keys.api_keys)
            pipe.get(daemon.keys.generated_key)
            mode, count, generated = await pipe.execute()
    except RedisError as exc:
        return {"error": str(exc)}
    return {"mode": mode, "keys": count, "generated_key": generated}


async def page(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    data = status(daemon, request.app.get(ACTIVATOR))
    data["webhooks"] = await summary(daemon, request.app.get(DELIVERER), 10)
    data["auth"] = await access(daemon)
    lookup = None
    if "session" in request.query:
        try:
            lookup = route(daemon, check_session_id(request.query["session"]))
        except InvalidSessionId as exc:
            lookup = {"error": str(exc), "session": request.query["session"]}
    try:
        events = [e.as_dict() for e in await daemon.events.recent(30)]
    except RedisError as exc:
        events = [
            {"kind": "error", "shard": "", "reason": str(exc), "outcome": "", "detail": "", "ts": 0}
        ]
    html = _TEMPLATES.get_template("status.html.j2").render(
        s=data,
        events=events,
        lookup=lookup,
        states=[s.value for s in ShardState],
        charts=charts(list(daemon.state.samples), daemon.clock.time()),
        decisions=folded([_decision(d) for d in daemon.state.decisions])[:10],
    )
    return web.Response(text=html, content_type="text/html")


async def status_json(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    data = status(daemon, request.app.get(ACTIVATOR))
    data["webhooks"] = await summary(daemon, request.app.get(DELIVERER))
    data["auth"] = await access(daemon)
    try:
        data["events"] = [e.as_dict() for e in await daemon.events.recent(50)]
    except RedisError as exc:
        data["events"] = []
        data["events_error"] = str(exc)
    return web.json_response(data)


async def route_json(request: web.Request) -> web.Response:
    raw = request.query.get("session", "")
    try:
        sid = check_session_id(raw)
    except InvalidSessionId as exc:
        return web.json_response({"error": str(exc), "status": 400}, status=400)
    return web.json_response(route(request.app[DAEMON], sid))


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[DAEMON].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    return web.json_response({"status": "ok", "leader": daemon.state.leader})
