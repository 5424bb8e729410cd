"""Typed, frozen configuration: every policy and setting of the autoscaler and its shards.

Models only; reading YAML, environment overrides and error reporting live in `configload`.
Purely computational, no side effects.
Every model forbids unknown keys so that a typo fails loudly instead of silently keeping a default.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    model_validator,
)

from chatscale_contract.hops import MAX_HOLD
from chatscale_contract.redisurl import parse_redis_url
from chatscale_contract.webhooks import Webhook

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | int) -> int:
    """Turn a Docker-style size ("10g", "512m", 1024) into bytes. Purely computational."""
    if isinstance(text, int):
        if text <= 0:
            raise ValueError("size must be positive")
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size such as '10g', '512m' or a number of bytes")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError("size must be positive")
    return value


def _check_size(value: str | int) -> str | int:
    parse_size(value)
    return value


Size = Annotated[str | int, AfterValidator(_check_size)]


def _removed(value: object) -> None:
    if value is not None:
        raise ValueError(
            "this key was removed in 0.2: every front now runs `autoscaler front-agent`, which"
            " applies, reloads and confirms its own nginx; delete the key (see README)"
        )


Removed = Annotated[object, AfterValidator(_removed), Field(exclude=True)]
"""A key that no longer exists: set, it is an error that says what replaced it."""
Fraction = Annotated[float, Field(gt=0, le=1)]


CRON_CHECK = "cron_check"
"""Validation-context key under which a caller passes a check of cron expressions: a callable
that raises ValueError for a bad one. The autoscaler passes APScheduler's parser (the one that
will run the schedule); without it only the shape is checked, so the shards need no APScheduler."""


def _check_cron(expr: str, info: ValidationInfo) -> str:
    if len(expr.split()) != 5:
        raise ValueError(f"invalid cron expression {expr!r}: needs 5 fields")
    check = (info.context or {}).get(CRON_CHECK)
    if check is not None:
        check(expr)
    return expr


def _check_timezone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _check_redis_url(url: str) -> str:
    parse_redis_url(url)
    return url


class RedisSettings(Frozen):
    url: Annotated[str, AfterValidator(_check_redis_url)] = "redis://127.0.0.1:6379/0"
    """Redis holding heartbeats, the session registry, snapshots and events. Env: REDIS_URL.
    Redis Sentinel: redis+sentinel://host1:26379,host2:26379,host3:26379/<service>[/db]."""
    key_prefix: str = Field(default="cs:", pattern=r"^[A-Za-z0-9:_.-]*$")
    """Prefix of every key this system writes, so several fleets can share one Redis."""


class ShardSettings(Frozen):
    image: str = "chatscale-shard:latest"
    """Image the Docker runtime starts for each shard."""
    max_sessions: PositiveInt = 50
    """Sessions one shard may hold; the shard refuses the next one (503)."""
    memory_limit: Size = "10g"
    """Hard memory limit of each shard container (Docker `--memory`)."""
    cpus: PositiveFloat = 2.0
    """CPU limit of each shard container (Docker `--cpus`)."""
    shm_size: Size = "1g"
    """/dev/shm of each shard container; Chromium needs more than Docker's 64 MB default."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for every shard (e.g. API_KEY, WHATSAPP_URL)."""
    network: str | None = None
    """Docker network shards join; nginx must be on it too. None: Docker's default bridge."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra Docker labels on every shard container (e.g. compose's project label, so that
    `docker compose down --remove-orphans` removes shards too). chatscale.* labels are reserved."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Port the shard service listens on inside its container."""
    stop_timeout: PositiveInt = 60
    """Seconds a stopping shard gets to snapshot its sessions before it is killed."""
    boot_timeout: PositiveInt = 90
    """Seconds a new shard may take to send its first heartbeat before it counts as dead."""
    egress_allow: list[str] = Field(
        default_factory=lambda: ["web.whatsapp.com", "*.whatsapp.com", "*.whatsapp.net"]
    )
    """Hosts the browsers may reach (`name`, `*.domain`, each with an optional `:port`); the
    site of WHATSAPP_URL always. Loopback, private and link-local addresses only when listed
    exactly. Enforced by a proxy every browser connection goes through (shard/egress.py)."""


class HeartbeatSettings(Frozen):
    interval: PositiveFloat = 5.0
    """Seconds between two heartbeats of a shard."""
    timeout: PositiveFloat = 20.0
    """A shard whose last heartbeat is older than this is dead and gets replaced."""

    @model_validator(mode="after")
    def _timeout_exceeds_interval(self) -> HeartbeatSettings:
        if self.timeout <= 2 * self.interval:
            raise ValueError("timeout must be more than twice the interval, or one late beat kills")
        return self


class ScaleUp(Frozen):
    max_step: PositiveInt = 4
    """Most shards started in one reconcile pass."""
    stabilization: float = Field(default=0.0, ge=0)
    """Seconds a higher recommendation must hold before scaling up (0: at once)."""


class ScaleDown(Frozen):
    stabilization: float = Field(default=300.0, ge=0)
    """Scale down only to the highest recommendation seen over this many seconds."""
    max_step: PositiveInt = 1
    """Most shards drained or stopped in one reconcile pass."""


class Recycle(Frozen):
    """Replacing shards that run too long, grew too much or run old settings, a few at a time:
    each is drained (its sessions move to other shards from their snapshots, no new scan) and a
    new one takes its place. Only while no shard is dead, restoring or starting; with max_surge
    an extra shard starts first and the drain waits until it is ready (within max_shards)."""

    max_age: PositiveFloat | None = None
    """Seconds after its start at which a shard is replaced (browsers leak memory). None: never."""
    max_growth_per_session: PositiveFloat | None = None
    """MiB: replace a shard whose memory grew by more than this per session since its browser
    came up ((memory - baseline) / sessions, from its heartbeat). None: never."""
    outdated: bool = False
    """Replace shards started with other shard settings than the running config, or (Docker,
    Swarm) from an older image than shard.image names now: a rolling update (the status page
    marks them "outdated")."""
    max_at_once: PositiveInt = 1
    """Most shards draining for a recycle at the same time."""
    max_surge: int = Field(default=1, ge=0)
    """Extra shards (beyond what the load needs) started before any shard is drained: each
    drain waits until one is ready, so a new image or new settings that never come up hold the
    rollout with every old shard still serving. 0: drain first when the others have room for
    the shard's sessions, else start one more."""
    paused: bool = False
    """Start no new recycle (those under way finish)."""


class Buffer(Frozen):
    slots: int = Field(default=5, ge=0)
    """Free session slots to keep ready for new sessions."""
    percent: float = Field(default=10.0, ge=0, le=1000)
    """Free slots as a percentage of current sessions. The larger of the two applies."""


class Schedule(Frozen):
    name: str
    """Shown in plans and on the status page."""
    cron: Annotated[str, AfterValidator(_check_cron)]
    """Five-field crontab expression marking the start of each window."""
    duration: PositiveFloat
    """Seconds the window stays open after each start."""
    min_shards: int = Field(ge=0)
    """Floor on the shard count while the window is open."""
    timezone: Annotated[str, AfterValidator(_check_timezone)] = "UTC"
    """Time zone the cron expression is read in."""


class Policy(Frozen):
    min_shards: int = Field(default=1, ge=0)
    """Never run fewer shards than this."""
    max_shards: PositiveInt = 20
    """Never run more shards than this."""
    target_utilization: Fraction = 0.8
    """Fraction of max_sessions a shard should hold on average."""
    buffer: Buffer = Buffer()
    scale_up: ScaleUp = ScaleUp()
    scale_down: ScaleDown = ScaleDown()
    memory_high_watermark: Fraction = 0.85
    """Fraction of the memory limit at which a shard counts as full."""
    drain_deadline: PositiveFloat = 600.0
    """Seconds a draining shard gets to move its sessions before the drain is reported overdue."""
    schedules: tuple[Schedule, ...] = ()
    """Windows that raise min_shards, e.g. before a known daily peak."""
    dry_run: bool = False
    """Decide and report, but start, stop and reload nothing."""
    recycle: Recycle = Recycle()
    idle_to_zero: PositiveFloat | None = None
    """Seconds without any session and without any waiting request after which the fleet goes
    to zero shards, whatever min_shards and the buffer say (an open schedule window still
    holds its floor). The next request wakes it through the activator. None: never."""

    @property
    def can_reach_zero(self) -> bool:
        """Whether this policy ever leaves the fleet without a shard."""
        return self.idle_to_zero is not None or (self.min_shards == 0 and self.buffer.slots == 0)

    @model_validator(mode="after")
    def _bounds(self) -> Policy:
        if self.min_shards > self.max_shards:
            raise ValueError(
                f"min_shards: {self.min_shards} exceeds max_shards ({self.max_shards})"
            )
        for index, schedule in enumerate(self.schedules):
            if schedule.min_shards > self.max_shards:
                raise ValueError(
                    f"schedules.{index}.min_shards: schedule {schedule.name!r} asks for"
                    f" {schedule.min_shards}, more than max_shards ({self.max_shards})"
                )
        return self


class ReloadSettings(Frozen):
    min_interval: float = Field(default=1.0, ge=0)
    """Least seconds between two nginx reloads; changes in between are batched."""
    max_delay: float = Field(default=5.0, ge=0)
    """Most seconds a pending change waits for the batch to settle."""


class NginxSettings(Frozen):
    enabled: bool = True
    """Render and reload nginx. Off: the shards' own forwarding still routes every request."""
    template_dir: str = "nginx_templates"
    """Jinja2 templates; relative paths are read from the config file's folder."""
    config_path: str = "/etc/chatscale/nginx/nginx.conf"
    """The complete nginx.conf chatscale renders; nginx runs with `-c` pointing here. Written
    atomically, and only after `nginx -t` passed on exactly this text."""
    listen: int = Field(default=3000, ge=1, le=65535)
    """Port clients (e.g. a Laravel app) talk to."""
    waha_listen: int = Field(default=3001, ge=0, le=65535)
    """Port of the WAHA-compatible API (WAHA's clients change only their base URL); 0: off."""
    binary: str = "nginx"
    """nginx executable the front agent tests configs with (`nginx -t`) and starts."""
    front_url: Removed = None
    """Removed in 0.2: each front's agent confirms its own nginx."""
    container: Removed = None
    """Removed in 0.2: no nginx container is signalled through Docker; its agent reloads it."""
    pid_path: str = "/run/chatscale-nginx.pid"
    """Pid file of the nginx master the front agent runs and signals."""
    runtime_dir: str = "/var/lib/chatscale/nginx"
    """Folder for nginx's temporary files (request bodies, proxy buffers)."""
    access_log: str = "/var/log/nginx/chatscale-access.log"
    """Access log; each line records the session id and the shard that served it."""
    error_log: str = "/var/log/nginx/chatscale-error.log"
    """Error log of the front."""
    worker_processes: int = Field(default=0, ge=0)
    """nginx worker processes; 0 means one per CPU (`auto`)."""
    worker_shutdown_timeout: PositiveFloat = 30.0
    """Seconds old workers get to finish requests in flight after a reload."""
    client_max_body_size: Size = "16m"
    """Largest request body the front accepts (media messages)."""
    connect_timeout: PositiveFloat = 3.0
    """Seconds to connect to a shard before the request fails over."""
    read_timeout: PositiveFloat = 120.0
    """Seconds a shard may take to answer (QR codes and sends drive a browser)."""
    upstream_keepalive: int = Field(default=32, ge=0)
    """Idle keep-alive connections each nginx worker keeps per shard."""
    reload: ReloadSettings = ReloadSettings()
    agent_interval: PositiveFloat = 1.0
    """Seconds between two rounds of a front agent (check nginx, apply, report)."""
    front_timeout: PositiveFloat = 5.0
    """A front whose agent has not reported for this long is not live: not waited for."""
    confirm_timeout: PositiveFloat = 10.0
    """Seconds an agent waits for its nginx to serve a new config; a live front that does not
    serve it this long after it was published is reported as lagging."""
    hosts_file: str | None = None
    """A file the front agent writes the shards' addresses into before testing each config
    (/etc/hosts in a front container), so nginx resolves shard names from what the autoscaler
    saw rather than from DNS. None: names resolve through DNS (one Docker host: at once)."""

    @model_validator(mode="after")
    def _ports_differ(self) -> NginxSettings:
        if self.waha_listen == self.listen:
            raise ValueError(f"waha_listen must differ from listen ({self.listen}); 0 turns it off")
        return self


class LocalRuntime(Frozen):
    host: str = "127.0.0.1"
    """Address local shard processes bind to."""
    base_port: int = Field(default=8101, ge=1, le=65000)
    """Shard N listens on base_port + N - 1; stable ports keep nginx's ring stable."""
    command: tuple[str, ...] = ("shard",)
    """Command that starts one shard process; its settings come through the environment."""
    log_dir: str = "/tmp/chatscale-shards"
    """Each shard's output goes to <log_dir>/<shard id>.log."""


def _check_preference(value: str) -> str:
    strategy, sep, descriptor = value.partition("=")
    if strategy.strip() != "spread" or not sep or not descriptor.strip():
        raise ValueError(
            f"{value!r} is not a placement preference such as 'spread=node.labels.zone'"
        )
    return value


def _check_constraint(value: str) -> str:
    if "==" not in value and "!=" not in value:
        raise ValueError(
            f"{value!r} is not a placement constraint such as 'node.labels.shards == true'"
        )
    return value


class SwarmRuntime(Frozen):
    memory_reservation: Size | None = None
    """Memory each shard's service reserves, so the scheduler places it only on a node with that
    much free. None: shard.memory_limit, so no node is ever given more shards than it holds."""
    constraints: tuple[Annotated[str, AfterValidator(_check_constraint)], ...] = ()
    """Placement constraints of every shard service, e.g. "node.labels.chatscale == shards"."""
    preferences: tuple[Annotated[str, AfterValidator(_check_preference)], ...] = ()
    """Placement preferences, e.g. "spread=node.labels.zone" (spread shards over zones)."""
    restart_delay: float = Field(default=5.0, ge=0)
    """Seconds Swarm waits before restarting a crashed shard task."""


class RuntimeSettings(Frozen):
    kind: Literal["docker", "local", "swarm"] = "docker"
    """Where shards run: Docker containers on one host, child processes without Docker, or
    Docker Swarm services on many hosts."""
    project: str = Field(default="chatscale", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    """Label and name prefix of every shard container or service (<project>-shard-<n>)."""
    local: LocalRuntime = LocalRuntime()
    swarm: SwarmRuntime = SwarmRuntime()


def _check_bind(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:8080")
    return value


class ActivatorSettings(Frozen):
    enabled: bool = True
    """Hold requests no shard can take (no shard at all, or all full) until one can, instead of
    answering 503; this is what wakes a fleet at zero shards. Off: 503 with Retry-After."""
    bind: Annotated[str, AfterValidator(_check_bind)] = "127.0.0.1:8081"
    """host:port the activator listens on; the fronts and the shards must reach it."""
    advertise: str | None = None
    """host:port the fronts and shards reach this activator at. None: the bind address, or
    when that is 0.0.0.0, this machine's address on the way to Redis, with the bind port."""
    hold_timeout: PositiveFloat = Field(default=60.0, le=MAX_HOLD)
    """Seconds a request is held waiting for room; then 503 with Retry-After (its demand stays
    recorded, so the fleet still grows)."""
    max_held: PositiveInt = 1000
    """Requests held at once by one activator; the next gets 503 with Retry-After at once."""


class ReconcileSettings(Frozen):
    interval: PositiveFloat = 2.0
    """Seconds between two reconcile passes (a shard reporting `full` triggers one sooner)."""
    leader_ttl: PositiveFloat = 10.0
    """Seconds the leader lock lives without renewal: how soon a standby takes over."""


class StatusSettings(Frozen):
    bind: Annotated[str, AfterValidator(_check_bind)] = "127.0.0.1:8080"
    """host:port of the status page, JSON status and /metrics."""
    token: str | None = None
    """If set, every status request must carry `Authorization: Bearer <token>` or `?token=`."""


class ApiKey(Frozen):
    """A key clients use at the front. Give `sha256` (of the key: `printf %s KEY | sha256sum`)
    rather than `key` where config.yaml is not secret."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    key: str | None = Field(default=None, min_length=16)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    scope: Literal["admin", "tenant"] = "tenant"
    prefix: str = Field(default="", max_length=63, pattern=r"^[a-z0-9_-]*$")
    """Tenant: the session ids it may use start with this."""
    workspace: str = Field(default="", max_length=128)
    """Tenant: only sessions of this workspace (new ones get it)."""
    creates_per_minute: int = Field(default=0, ge=0)
    """New sessions per minute, fleet-wide (0: no limit); past it 429 with Retry-After."""
    sends_per_minute: int = Field(default=0, ge=0)
    """Messages sent per minute, fleet-wide (0: no limit); past it 429 with Retry-After."""
    max_sessions: int = Field(default=0, ge=0)
    """Tenant: sessions its scope may hold at once (0: no cap); past it 429."""

    @model_validator(mode="after")
    def _complete(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give one of key or sha256")
        if self.scope == "tenant" and not (self.prefix or self.workspace):
            raise ValueError("a tenant key needs a prefix or a workspace (or scope: admin)")
        return self


class AuthSettings(Frozen):
    enabled: bool = True
    """Requests need a key. false: anyone who reaches the front may do anything (warned about at
    every start); only for a front nobody else can reach."""
    keys: list[ApiKey] = Field(default_factory=list)
    """Keys from config (more through the API). With none, and none in Redis, the first start
    generates an admin key, logs it once and shows it on the status page."""

    @model_validator(mode="after")
    def _unique(self) -> AuthSettings:
        names = [k.name for k in self.keys]
        if len(names) != len(set(names)):
            raise ValueError("auth.keys: names must be unique")
        return self


class Config(Frozen):
    redis: RedisSettings = RedisSettings()
    shard: ShardSettings = ShardSettings()
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    policy: Policy = Policy()
    reconcile: ReconcileSettings = ReconcileSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    nginx: NginxSettings = NginxSettings()
    activator: ActivatorSettings = ActivatorSettings()
    status: StatusSettings = StatusSettings()
    webhooks: list[Webhook] = Field(default_factory=list)
    """Receivers of every session's events (session.status), delivered by the leader."""
    auth: AuthSettings = AuthSettings()

    @model_validator(mode="after")
    def _swarm_needs_a_network(self) -> Config:
        if self.runtime.kind == "swarm" and not self.shard.network:
            raise ValueError(
                "runtime.kind swarm needs shard.network: an attachable overlay network the fronts"
                " and the autoscaler are on too (the stack file makes one)"
            )
        return self

    @model_validator(mode="after")
    def _holds_fit_in_nginx(self) -> Config:
        if self.activator.enabled and self.activator.hold_timeout >= self.nginx.read_timeout:
            raise ValueError(
                f"activator.hold_timeout: {self.activator.hold_timeout:g} s must be shorter than"
                f" nginx.read_timeout ({self.nginx.read_timeout:g} s), or nginx gives up on a"
                " held request first"
            )
        return self

    @model_validator(mode="after")
    def _can_wake(self) -> Config:
        if self.activator.enabled or not self.policy.can_reach_zero:
            return self
        raise ValueError(
            "activator.enabled: false, but the fleet can reach zero shards (policy.idle_to_zero,"
            " or min_shards 0 with buffer.slots 0) and then nothing would start one again:"
            " enable the activator, or keep a shard (policy.min_shards: 1)"
        )

    def fingerprint(self) -> str:
        """Short hash of the shard-relevant settings; labels containers started with them."""
        relevant = {"shard": self.shard.model_dump(), "redis": self.redis.model_dump()}
        blob = json.dumps(relevant, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
