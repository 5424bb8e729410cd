"""Names of every Redis key the system uses; see docs/redis-schema.md for what each holds.

Shards and the autoscaler build key names only through this class, so the schema has one home.
The registry's Lua scripts learn some shard ids only inside Redis (a session's current owner);
they get the fragments of those names from `Keys.shard_fragments`, not a spelling of their own.
Purely computational, no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "cs:"

    @property
    def shards(self) -> str:
        """ZSET shard id -> time of its last heartbeat (epoch seconds)."""
        return f"{self.prefix}shards"

    def shard(self, shard_id: str) -> str:
        """HASH heartbeat of one shard, with a TTL of the heartbeat timeout (its lease)."""
        return f"{self.prefix}shard:{shard_id}"

    def shard_sessions(self, shard_id: str) -> str:
        """SET of the session ids a shard owns; its size is checked atomically on every claim."""
        return f"{self.prefix}shard:{shard_id}:sessions"

    @property
    def shard_fragments(self) -> tuple[str, str]:
        """(head, tail) with head + id == shard(id) and head + id + tail == shard_sessions(id),
        for Lua scripts that build those names from an id read inside Redis."""
        head = self.shard("")
        tail = self.shard_sessions("").removeprefix(head)
        return head, tail

    def session(self, session_id: str) -> str:
        """HASH registry record of one session: owner, fencing token, status, metadata."""
        return f"{self.prefix}session:{session_id}"

    def messages_seen(self, session_id: str) -> str:
        """ZSET of the messages (and acks) of one session already turned into events -> when;
        outside `session:` so a scan for records never meets it."""
        return f"{self.prefix}seen:{session_id}"

    @property
    def api_keys(self) -> str:
        """HASH SHA-256 of an API key -> its grant (chatscale_contract.auth.Grant, JSON)."""
        return f"{self.prefix}auth:keys"

    @property
    def auth_mode(self) -> str:
        """STRING `keys` or `off`, set by the autoscaler at start (config `auth.enabled`)."""
        return f"{self.prefix}auth:mode"

    @property
    def internal_key(self) -> str:
        """STRING the fleet's own admin key, which shards use for their calls to each other (a
        drain's hand-offs); set once by the first autoscaler. Whoever reads Redis has it, as
        whoever reads Redis has the whole fleet."""
        return f"{self.prefix}auth:internal"

    @property
    def generated_key(self) -> str:
        """STRING the admin key the first autoscaler generated when config.yaml named none;
        shown on the (loopback) status page, so that whoever runs the system can read it."""
        return f"{self.prefix}auth:generated"

    def limit_counter(self, key_name: str, kind: str, minute: int) -> str:
        """STRING count of a key's `kind` (creates, sends) in one minute; expires after two."""
        return f"{self.prefix}limit:{key_name}:{kind}:{minute}"

    @property
    def sessions(self) -> str:
        """ZSET of every session with a registry record -> its creation time: the fleet-wide
        list (claim adds, forget removes)."""
        return f"{self.prefix}sessions"

    @property
    def sessions_indexed(self) -> str:
        """STRING set once the records that predate `sessions` have been added to it."""
        return f"{self.prefix}sessions:indexed"

    @property
    def outbox(self) -> str:
        """STREAM of events for webhooks (chatscale_contract.webhooks), written by the registry
        scripts with the change they report; capped at OUTBOX_MAXLEN entries."""
        return f"{self.prefix}outbox"

    @property
    def outbox_salt(self) -> str:
        """STRING, random, set once: mixed into event ids so two fleets never share one."""
        return f"{self.prefix}outbox:salt"

    @property
    def dead_letters(self) -> str:
        """STREAM of events a receiver did not take after the last attempt: shown, replayable."""
        return f"{self.prefix}outbox:dead"

    def snapshot(self, session_id: str) -> str:
        """HASH {token, saved_at, data}: compressed browser auth state of one session."""
        return f"{self.prefix}snapshot:{session_id}"

    @property
    def orphans(self) -> str:
        """SET of sessions released while they should keep running (e.g. a shard shut down)
        and not yet claimed again; the autoscaler places them."""
        return f"{self.prefix}orphans"

    @property
    def pending(self) -> str:
        """ZSET session id -> time a create was refused for lack of room (demand not yet placed)."""
        return f"{self.prefix}pending"

    @property
    def ring(self) -> str:
        """STRING JSON: the shards in nginx's hash ring as last applied by the autoscaler."""
        return f"{self.prefix}ring"

    @property
    def events(self) -> str:
        """STREAM of autoscaler actions and their reasons, capped."""
        return f"{self.prefix}events"

    @property
    def leader(self) -> str:
        """STRING lock held by the acting autoscaler, with a TTL."""
        return f"{self.prefix}leader"

    @property
    def front_config(self) -> str:
        """HASH {generation, version, text, hosts, ts}: the nginx.conf every front should serve,
        as the leading autoscaler rendered it last."""
        return f"{self.prefix}front:config"

    @property
    def front_nudge(self) -> str:
        """Pub/sub channel: a new front config was published (the agents fetch it at once)."""
        return f"{self.prefix}front:nudge"

    @property
    def fronts(self) -> str:
        """ZSET front id -> time of its last report."""
        return f"{self.prefix}fronts"

    def front(self, front_id: str) -> str:
        """HASH one front agent's report (what its nginx serves), with a TTL."""
        return f"{self.prefix}front:{front_id}"

    @property
    def activators(self) -> str:
        """ZSET activator address (host:port) -> time of its last registration. nginx and the
        shards hand requests no shard can take to the live ones (hops.ACTIVATOR_TTL)."""
        return f"{self.prefix}activators"

    @property
    def nudge(self) -> str:
        """Pub/sub channel: a shard that became full asks for a reconcile pass now."""
        return f"{self.prefix}nudge"
