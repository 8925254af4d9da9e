"""The Redis key schema: every key Hubbub touches is built here and nowhere else.

Keys that belong to one hub share the hash tag ``{<prefix>:<hub>}`` so that the membership
scripts, which touch group, user and connection keys of one hub atomically, run unchanged on
Redis Cluster. The variable part of each key (group, user or connection name) comes last, after
a fixed kind marker, so no two names can ever produce the same key.
"""

from __future__ import annotations

from dataclasses import dataclass

# Kind markers of per-hub keys.
CONNECTION = "c"
CONNECTION_GROUPS = "cg"
GROUP_CONNECTIONS = "gc"
GROUP_GATEWAYS = "gg"
USER_CONNECTIONS = "uc"
USER_GATEWAYS = "ug"
USER_GROUPS = "ugr"
GATEWAY_CONNECTIONS = "gwc"
RESUME = "rs"
RESUME_GONE = "rg"

# Fields of the connection hash (:meth:`HubKeys.connection`).
CONNECTION_GATEWAY = "gw"
CONNECTION_USER = "user"
# Stateful (resumable) connections only: the hub protocol it speaks (its presence marks the
# connection resumable), the sequence id of the next message to it, how many of its client's
# messages were handled, and the holding gateway's inbox and broadcast-feed positions up to
# which every message to it is in its resume stream.
CONNECTION_PROTOCOL = "rp"
CONNECTION_NEXT_SEQ = "sq"
CONNECTION_RECEIVED = "rx"
CONNECTION_INBOX_AT = "ic"
CONNECTION_FEED_AT = "fc"

# Fields of a gateway's status hash (:meth:`KeySchema.gateway_status`).
GATEWAY_STATUS_CONNECTIONS = "n"
GATEWAY_STATUS_DRAINING = "d"


@dataclass(frozen=True, slots=True)
class HubKeys:
    """Keys of one hub. Group, user and connection names go in verbatim.

    Each method with an empty name gives its family's *prefix* (``...:gc:``): the membership
    scripts receive those through ``KEYS`` (they share the hub's hash slot) and append names
    they read from Redis, e.g. the groups of a connection being unregistered.
    """

    base: str  # "<prefix>:{<prefix>:<hub>}"

    def connection(self, conn: str) -> str:
        """Hash: :data:`CONNECTION_GATEWAY` (gateway id) and :data:`CONNECTION_USER`."""
        return f"{self.base}:{CONNECTION}:{conn}"

    def connection_groups(self, conn: str) -> str:
        """Set of groups the connection is in."""
        return f"{self.base}:{CONNECTION_GROUPS}:{conn}"

    def group_connections(self, group: str) -> str:
        """Set of connection ids in the group."""
        return f"{self.base}:{GROUP_CONNECTIONS}:{group}"

    def group_gateways(self, group: str) -> str:
        """Hash gateway id -> number of the group's connections on that gateway."""
        return f"{self.base}:{GROUP_GATEWAYS}:{group}"

    def user_connections(self, user: str) -> str:
        """Set of the user's live connection ids."""
        return f"{self.base}:{USER_CONNECTIONS}:{user}"

    def user_gateways(self, user: str) -> str:
        """Hash gateway id -> number of the user's connections on that gateway."""
        return f"{self.base}:{USER_GATEWAYS}:{user}"

    def user_groups(self, user: str) -> str:
        """Sorted set group -> expiry (unix seconds, ``inf`` = durable) of user-bound groups."""
        return f"{self.base}:{USER_GROUPS}:{user}"

    def resume(self, conn: str) -> str:
        """Stream of a resumable connection's messages its client has not acknowledged: entry
        id ``0-<sequence id>``, fields ``m`` (message id) and ``r`` (the JSON hub record)."""
        return f"{self.base}:{RESUME}:{conn}"

    def resume_gone(self, conn: str) -> str:
        """String, with a TTL: why a resumable connection ended; a re-attach is refused with it."""
        return f"{self.base}:{RESUME_GONE}:{conn}"

    def gateway_connections(self, gateway: str) -> str:
        """Set of this hub's connection ids held by a gateway, for the reaper."""
        return f"{self.base}:{GATEWAY_CONNECTIONS}:{gateway}"


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Process-wide keys, and the factory for per-hub keys."""

    prefix: str = "hubbub"

    def hub(self, hub: str) -> HubKeys:
        return HubKeys(f"{self.prefix}:{{{self.prefix}:{hub}}}")

    def publish_partition(self, partition: int) -> str:
        """Stream of accepted REST requests for one partition of the targets.

        Each partition is routed by one worker at a time (it holds the partition's lease), which
        is what keeps messages to the same target in order with any number of workers.
        """
        return f"{self.prefix}:publish:{partition}"

    def partition_lease(self, partition: int) -> str:
        """String: the name of the worker that routes this partition, with a TTL."""
        return f"{self.prefix}:lease:{partition}"

    def upstream_partition(self, partition: int) -> str:
        """Stream of what clients did (invocations, connected, disconnected) for one partition
        of the connections: each service consumes it in its own consumer group, one consumer
        per partition at a time, which keeps each connection's invocations in order."""
        return f"{self.prefix}:upstream:{partition}"

    def upstream_lease(self, group: str, partition: int) -> str:
        """String: the consumer of ``group`` that handles this upstream partition, with a TTL."""
        return f"{self.prefix}:uplease:{group}:{partition}"

    def upstream_consumers(self, group: str) -> str:
        """Sorted set consumer name -> heartbeat deadline, to size each consumer's share."""
        return f"{self.prefix}:upconsumers:{group}"

    @property
    def upstream_services(self) -> str:
        """Sorted set service (consumer group) -> heartbeat deadline: with none live, a
        gateway answers a client's invocation itself (no such method) instead of waiting."""
        return f"{self.prefix}:upservices"

    def idempotency(self, partition: str, hub: str, key: str) -> str:
        """String, with a TTL: the message id a send with this ``Idempotency-Key`` was
        accepted as, so a retry within the window answers it and appends nothing. Hash-tagged
        with the name of its publish ``partition``'s stream, so the script that appends and
        remembers runs on one slot in Redis Cluster (a retry names the same target, hence
        the same partition)."""
        return f"{self.prefix}:idem:{{{partition}}}:{hub}:{key}"

    @property
    def workers(self) -> str:
        """Sorted set worker name -> heartbeat deadline, to size each worker's share."""
        return f"{self.prefix}:workers"

    @property
    def broadcast_feed(self) -> str:
        """Stream every gateway reads: one entry per hub-wide broadcast."""
        return f"{self.prefix}:broadcast"

    def inbox(self, gateway: str) -> str:
        """Stream of deliveries and control entries for one gateway."""
        return f"{self.prefix}:inbox:{gateway}"

    @property
    def gateways(self) -> str:
        """Sorted set gateway id -> heartbeat deadline (unix seconds)."""
        return f"{self.prefix}:gateways"

    def gateway_hubs(self, gateway: str) -> str:
        """Set of hubs a gateway has held connections of, for the reaper."""
        return f"{self.prefix}:gwh:{gateway}"

    def gateway_status(self, gateway: str) -> str:
        """Hash, with a TTL renewed by the gateway's heartbeat: its connections
        (:data:`GATEWAY_STATUS_CONNECTIONS`) and ``1`` while draining
        (:data:`GATEWAY_STATUS_DRAINING`), for the admin console."""
        return f"{self.prefix}:gws:{gateway}"

    def reaper_lock(self, gateway: str) -> str:
        return f"{self.prefix}:reaping:{gateway}"
