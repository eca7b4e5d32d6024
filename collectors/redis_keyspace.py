"""Watch one Redis node through keyspace notifications.

Algorithm
---------
1. Subscribe to ``__keyspace@<db>__:*`` on a connection of our own whose
   replies hiredis parses directly (:mod:`collectors.resp`): no await per
   notification, so a burst drains at the parser's speed.
2. A notification names a key and an event, not a value: the key is marked
   *dirty* (the latest event wins; repeats while it waits are counted as
   coalesced).
3. A reader takes dirty keys in batches and reads them back, on a second
   connection of our own, with two pipelined round trips per batch: ``TYPE``+``PTTL``, then a read sized by
   type (a bounded prefix of a string, up to ``MAX_FIELDS`` hash fields, the
   first members of a collection, new entries of a run's history stream).
   A key that is gone is dropped with the event as the cause.
4. Every subscribe confirmation is a (re)sync point: the first one starts
   the initial scan; any later one means a subscription was lost and
   re-opened and the notifications in between are gone — a *gap*, resynced
   by a scan. Because we subscribe before we scan, nothing falls between.
5. Scans walk the keyspace a page (``SCAN ... COUNT``) at a time, read each
   page back at once and pace themselves to ``Limits.scan_rate`` keys a
   second, with their progress on the node: the first screen is useful long
   before a million-key scan ends. What no family recognises is listed up to
   the raw-key budget and counted by prefix beyond it (the state decides);
   a node whose keys are summarised is rescanned every
   ``census_interval_s`` to recount them.
6. Our subscriber's output buffer on the server (``CLIENT LIST ID``) is read
   every health period and shown on the node. Past ``sub_buffer_bytes`` we
   unsubscribe and scan for ``pause_s`` instead, and say so: a watched
   production Redis is never made to hold megabytes for us, nor cut us off
   at its pub/sub limit (whose resubscribe would lose events silently).

Error handling
--------------
A node that stops answering is shown ``down`` with the time of its last good
read; its keys stay listed as stale until it answers again and a resync
replaces them. With notifications off (``notify-keyspace-events`` lacks
``K``), the collector says so on screen and falls back to a scan every
``scan_interval`` seconds; it turns them on itself only when the target
allows it (``--enable-notifications``), never otherwise. Garbage in a key is
the recognisers' problem and never reaches here as an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from collectors import redis_streams as streams_
from collectors.families.nodes import Node
from collectors.limits import Limits
from collectors.records import KeyRecord, StreamGroup, display
from collectors.redis_reads import MAX_STREAM_READ, first_read, is_history, record, second_read
from collectors.redis_topology import Topology
from collectors.resp import Arg, Reads, Redirect, Subscription, redirect_of
from collectors.state import State, now_ms
from collectors.targets import RedisTarget

BATCH = 512
HEALTH_EVERY_S = 0.5
CONFIG_EVERY_S = 2.0

NETWORK_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
OMEM = re.compile(rb"\bomem=(\d+)")
READ_TIMEOUT_S = 5.0
"""A read-back that takes longer means the node is not answering."""


def notifications_enabled(flags: str) -> bool:
    """Do these ``notify-keyspace-events`` flags give us keyspace events for every type?"""
    return "K" in flags and ("A" in flags or all(c in flags for c in "g$hx"))


class RedisCollector:
    def __init__(
        self,
        target: RedisTarget,
        state: State,
        wake: Callable[[], None],
        topology: Topology | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.target = target
        self._state = state
        self._wake = wake
        self._topology = topology or Topology([target])
        self._limits = limits or state.limits
        self._scan_interval_s = self._limits.scan_interval_s
        self._dirty: dict[bytes, bytes | str] = {}
        """Keys to read back, with the last event that named them (the cause we report)."""
        self.events = 0
        self.coalesced = 0
        self.gaps = 0
        self._dirty_event = asyncio.Event()
        self._stream_pos: dict[bytes, bytes] = {}
        self._grouped: dict[bytes, None] = {}
        """Streams with consumer groups, in the order their groups are re-read."""
        self.refreshes = 0
        """Cycles that re-read stream groups (for tests and the bench)."""
        self._node = Node(id=target.id, store="redis", address=target.address, cluster=target.cluster or "")
        self.handover: Callable[[str, bytes, str, str, frozenset[str]], None] | None = None
        """In a Redis Cluster: called with (this node, key, cause, address, nodes that listed
        it) when the node redirects a read of a key (MOVED/ASK): it lives elsewhere now."""
        self._taken: dict[bytes, frozenset[str]] = {}
        """Keys handed over to us from the nodes that listed them: dropped there once read here."""
        self._notifications = True
        self._connected_once = False
        self._client: Redis | None = None
        self._reads: Reads | None = None
        self._scanned = False
        self._subscription: Subscription | None = None
        self._subscriptions = 0
        """Subscriptions opened in the current watch (a second one means one was lost)."""
        self._paused_until = 0.0
        """While in the future: not subscribed (our buffer grew too big), scanning instead."""
        self._overflowed = False
        """A burst outran our read-back: notifications are counted, not queued."""
        self._burst = 0
        """Notifications counted since the last health check, during a burst."""
        self._feed_stale = False
        self._idle = False
        """The reader waits for dirty keys (the next notification may send its read at once)."""
        self._sent: tuple[list[tuple[bytes, str]], asyncio.Future[list[Any]]] | None = None
        """A batch whose first round went out from a notification's callback."""
        self._scan_task: asyncio.Task[None] | None = None
        self._scan_wanted: str | None = None
        self._last_scan_end = 0.0
        self._counted = False
        """Has a scan counted the keys by prefix since they went past the budget?"""
        self.scans = 0
        """Complete scans of the keyspace."""
        self.synced = asyncio.Event()
        """Set once the first full scan has been read back: the state reflects the node."""
        self.subscribe_confirmations = 0
        """Subscribe confirmations seen on the current pub/sub connection (for tests)."""

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Watch until cancelled; reconnect with backoff whenever the node goes away."""
        backoff = 0.1
        while True:
            try:
                await self._watch()
            except asyncio.CancelledError:
                raise
            except NETWORK_ERRORS as exc:
                self._set_down(f"{type(exc).__name__}: {exc}")
            except redis_errors.RedisError as exc:
                self._set_down(f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug must not silence the collector for good
                self._state.log(
                    "error", self.target.id, f"collector error ({type(exc).__name__}: {exc}); reconnecting"
                )
                self._wake()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
            if self._node.status == "up":
                backoff = 0.1

    def _client_for(self) -> Redis:
        # Reads retry once at once, then fail: a dead node must show as down within a
        # health period, not after redis-py's backoff.
        return Redis(
            **self.target.connection(),
            protocol=2,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            decode_responses=False,
            client_name="coordscope-read",
            retry=Retry(NoBackoff(), 1),
        )

    async def _watch(self) -> None:
        client = self._client_for()
        tasks: list[asyncio.Task[None]] = []
        reads: Reads | None = None
        try:
            await self._health(client)
            reads = await Reads.open(self.target)
            self._client, self._reads = client, reads
            self._subscriptions = 0
            self.subscribe_confirmations = 0
            tasks = [
                asyncio.create_task(self._listen(), name=f"listen {self.target.id}"),
                asyncio.create_task(self._reader(reads), name=f"read {self.target.id}"),
                asyncio.create_task(self._health_loop(client), name=f"health {self.target.id}"),
            ]
            watching: list[asyncio.Future[Any]] = [*tasks, reads.ended]
            done, _ = await asyncio.wait(watching, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is reads.ended:
                    raise redis_errors.ConnectionError(f"the read connection ended ({reads.ended.result()})")
                task.result()  # re-raise what stopped it
        finally:
            self._client = self._reads = None
            self._idle, self._sent = False, None  # a read sent on that connection is lost with it
            if self._scan_task is not None:
                tasks.append(self._scan_task)
                self._scan_task = None
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            if self._subscription is not None:
                self._subscription.close()
            if reads is not None:
                reads.close()
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(client.aclose(), 1.0)

    async def _listen(self) -> None:
        """Keep one subscription open; a lost one is re-opened (its confirmation is a gap)."""
        while True:
            pause = self._paused_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            self._subscriptions += 1
            sub = await Subscription.open(self.target, self._on_key(), self._subscribed, self._send_now)
            self._subscription = sub
            try:
                why = await sub.ended
            finally:
                sub.close()
                self._subscription = None
            if self._paused_until <= time.monotonic():
                self._state.log("warn", self.target.id, f"the subscription ended ({why}); subscribing again")

    def _subscribed(self) -> None:
        self.subscribe_confirmations += 1
        if not self._connected_once:
            self._connected_once = True
            self._resync("initial scan")
            return
        self.gaps += 1
        why = (
            "the subscription was lost and re-opened"
            if self._subscriptions > 1
            else "reconnected after the node was down"
        )
        self._state.log(
            "warn", self.target.id, f"gap: {why}; notifications in between were lost, resyncing by scan"
        )
        self._publish_node()
        self._resync("gap")

    # ------------------------------------------------------------------ dirty keys

    @property
    def backlog(self) -> int:
        """Keys notified (or scanned) but not read back yet."""
        return len(self._dirty)

    def _mark(self, raw_key: bytes, event: bytes) -> None:
        """The hot path: one call per notification, so nothing here but bookkeeping."""
        dirty = self._dirty
        if raw_key in dirty:
            self.coalesced += 1
        dirty[raw_key] = event
        self.events += 1
        if len(dirty) > self._limits.dirty_keys:
            self._overflow()
        self._dirty_event.set()

    def _count(self, raw_key: bytes, event: bytes) -> None:
        """The hot path during a burst too big to read back: count, nothing else."""
        self.events += 1
        self._burst += 1

    def _on_key(self) -> Callable[[bytes, bytes], None]:
        return self._count if self._overflowed else self._mark

    def _overflow(self) -> None:
        """More keys wait to be read back than we may hold: drop them, count notifications
        until the burst ends, then resync by a scan (which finds what they named)."""
        queued = len(self._dirty)
        self._dirty = {}
        self._overflowed, self._burst = True, 0
        if self._subscription is not None:
            self._subscription.on_key = self._count
        self._state.log(
            "warn",
            self.target.id,
            f"writes come faster than we read keys back ({queued:,} queued): counting notifications "
            "until the burst ends, then resyncing by scan",
        )
        self._set_feed(self._notifications, "notifications counted only (burst): resync by scan when it ends")

    def _burst_over(self) -> None:
        self._overflowed = False
        if self._subscription is not None:
            self._subscription.on_key = self._mark
        self.gaps += 1
        self._state.log("info", self.target.id, "the burst is over: resyncing by scan")
        self._feed_stale = True  # say what feeds us now at the next health check
        self._resync("after a burst")

    def _resync(self, why: str) -> None:
        """Scan the keyspace (once more after the running scan, if one runs)."""
        self._scan_wanted = why
        if self._scan_task is None or self._scan_task.done():
            self._scan_task = asyncio.get_running_loop().create_task(
                self._scans(), name=f"scan {self.target.id}"
            )

    async def _scans(self) -> None:
        while self._scan_wanted is not None:
            why, self._scan_wanted = self._scan_wanted, None
            with contextlib.suppress(*NETWORK_ERRORS):  # the node went away: the reconnect scans
                await self._scan(why)

    async def _scan(self, why: str) -> None:
        """Walk the keyspace a page at a time, reading each page back at once, at most
        ``scan_rate`` keys a second: a big keyspace is never one stop-the-world read, and
        what a page holds is on screen as soon as it is read."""
        client, reads = self._client, self._reads
        if client is None or reads is None:
            return
        limits = self._limits
        started, started_ms = time.monotonic(), now_ms()
        total = int(await client.dbsize())
        self._state.scan_started(self.target.id)
        cursor, read, shown = 0, 0, started
        self._set_scan(f"scan 0% of {total:,} keys")
        while True:
            cursor, keys = await client.scan(cursor, count=limits.scan_count)
            if keys:
                await self._read(reads, [(_raw(k), "scan") for k in keys])
                read += len(keys)
                self._wake()
            if not cursor:
                break
            now = time.monotonic()
            if now - shown >= 0.5:
                shown = now
                self._set_scan(f"scan {min(99, 100 * read // max(total, 1))}% of {total:,} keys")
            await asyncio.sleep(max(0.0, started + read / limits.scan_rate - now))
        # A key we list that this scan did not read went (or changed) while we were away.
        for key in self._state.keys_of(self.target.id):
            rec = self._state.record(self.target.id, key)
            if isinstance(rec, KeyRecord) and rec.read_at_ms < started_ms:
                self._dirty.setdefault(rec.raw_key, "resync")  # not "scan": not in this count
        self._state.scan_ended(self.target.id)
        self._counted = self._counted or self._state.summarising(self.target.id)
        self.scans += 1
        self._scanned = True
        self._last_scan_end = time.monotonic()
        self._dirty_event.set()
        took = self._last_scan_end - started
        self._set_scan(f"scanned {read:,} keys in {took:.1f}s")
        if why != "periodic scan":
            self._state.log("info", self.target.id, f"{why}: {read:,} keys in {took * 1000:.0f} ms")

    def _set_scan(self, progress: str) -> None:
        self._node = replace(self._node, scan=progress)
        self._publish_node()

    async def _reader(self, reads: Reads) -> None:
        while True:
            self._idle = True
            await self._dirty_event.wait()
            self._idle = False
            self._dirty_event.clear()
            sent, self._sent = self._sent, None
            if sent is not None:
                await self._read(reads, sent[0], sent[1])
                self._wake()
            while self._dirty:
                await self._read(reads, self._take_batch())
                self._wake()
                await asyncio.sleep(0)
            if self._scanned:
                self.synced.set()

    def _take_batch(self) -> list[tuple[bytes, str]]:
        batch = []
        for raw in list(itertools.islice(self._dirty, BATCH)):  # not list(all): O(n) each
            cause = self._dirty.pop(raw)
            batch.append((raw, cause.decode() if isinstance(cause, bytes) else cause))
        return batch

    def _send_now(self) -> None:
        """Called after each chunk of notifications: if the reader is idle, send the first
        read of what changed from here, not after the loop has woken the reader (which
        waits behind whatever else is ready: a change then took ~90 us longer to show)."""
        reads = self._reads
        if not self._idle or not self._dirty or reads is None:
            return
        self._idle = False
        batch = self._take_batch()
        self._sent = (batch, reads.execute(first_read(raw for raw, _ in batch)))

    async def _read(
        self, reads: Reads, batch: list[tuple[bytes, str]], sent: asyncio.Future[list[Any]] | None = None
    ) -> None:
        """Read a batch of keys back into the state (``sent``: its first round, already sent)."""
        first = await (sent or reads.execute(first_read(raw for raw, _ in batch)))
        read_at = now_ms()
        # (key, cause, type, ttl, which round answered it, where in that round's replies)
        plan: list[tuple[bytes, str, str, int | None, int, int]] = []
        second_round: list[tuple[Arg, ...]] = []
        for i, (raw, cause) in enumerate(batch):
            kind, pttl = first[4 * i], first[4 * i + 1]
            if (redirect := redirect_of(kind)) is not None:  # MOVED or ASK: not this node's key now
                self._redirected(raw, cause, redirect)
                continue
            if isinstance(kind, Exception) or isinstance(pttl, Exception):
                continue
            kind = display(kind)
            if kind == "none" or pttl == -2:
                self._stream_pos.pop(raw, None)
                self._grouped.pop(raw, None)
                self._state.drop_key(self.target.id, raw, cause)
                self._handed(raw)
                continue
            ttl = None if pttl < 0 else int(pttl)
            if kind == "string":
                plan.append((raw, cause, kind, ttl, 0, 4 * i + 2))
            else:
                plan.append((raw, cause, kind, ttl, 1, len(second_round)))
                second_round += second_read(raw, kind, self._stream_pos.get(raw))
        second = await reads.execute(second_round)
        rounds = [first, second]
        recs: list[KeyRecord] = []
        for raw, cause, kind, ttl, round_, at in plan:
            try:
                rec = record(self.target.id, raw, cause, kind, ttl, read_at, rounds[round_][at : at + 2])
            except (TypeError, ValueError, IndexError, AttributeError):
                rec = None
            if rec is None:
                self._dirty.setdefault(raw, cause)  # it changed type under us: read it again
                continue
            recs.append(rec)
        streams = [r.raw_key for r in recs if r.type == "stream" and not is_history(r.raw_key)]
        if streams:
            found = await self._read_groups(reads, streams, read_at)
            recs = [replace(r, groups=found[r.raw_key]) if r.raw_key in found else r for r in recs]
        for rec in recs:
            raw = rec.raw_key
            if rec.type == "stream":
                if rec.groups:
                    self._grouped[raw] = None
                else:
                    self._grouped.pop(raw, None)
            if rec.entries and is_history(raw):  # read a run's history on from its last entry
                self._stream_pos[raw] = rec.entries[-1][0]
                if len(rec.entries) == MAX_STREAM_READ:
                    self._dirty.setdefault(raw, rec.cause)
            self._state.apply_key(rec)
            self._handed(raw)

    async def _read_groups(
        self, reads: Reads, streams: list[bytes], read_at: int
    ) -> dict[bytes, tuple[StreamGroup, ...]]:
        """The consumer groups of these streams, in two round trips for them all."""
        info = await reads.execute([streams_.groups_read(raw) for raw in streams])
        names = [streams_.group_names(reply) for reply in info]
        second = [
            c
            for raw, groups in zip(streams, names, strict=True)
            for g in groups
            for c in streams_.consumers_read(raw, g)
        ]
        replies = await reads.execute(second)
        found, at = {}, 0
        for raw, reply, groups in zip(streams, info, names, strict=True):
            found[raw] = streams_.groups(reply, replies[at : at + 2 * len(groups)], read_at)
            at += 2 * len(groups)
        return found

    async def _refresh_groups(self) -> None:
        """Re-read the groups of the streams known to have some (a delivery or an ack sends
        no notification), at most ``REFRESH_BATCH`` a cycle, taking turns; a stream whose
        groups read the same as before is not sent on."""
        reads = self._reads
        if reads is None or not self._grouped:
            return
        batch = list(itertools.islice(self._grouped, streams_.REFRESH_BATCH))
        for raw in batch:  # to the back of the line: the next cycle starts with the others
            self._grouped.pop(raw)
            self._grouped[raw] = None
        read_at = now_ms()
        found = await self._read_groups(reads, batch, read_at)
        self.refreshes += 1
        changed = False
        for raw, groups in found.items():
            held = self._state.record(self.target.id, display(raw))
            if not isinstance(held, KeyRecord) or held.type != "stream":
                self._grouped.pop(raw, None)
                continue
            if streams_.same(held.groups, groups):
                continue
            if not groups:
                self._grouped.pop(raw, None)
            self._state.apply_key(replace(held, groups=groups, read_at_ms=read_at, cause="refresh"))
            changed = True
        if changed:
            self._wake()

    def _redirected(self, raw: bytes, cause: str, redirect: Redirect) -> None:
        """A cluster node answered MOVED or ASK for a key: a reshard moved its slot (or is
        moving it), or a failover gave the slot to another node. Hand the key to the node
        named; it drops our copy once it has read its own."""
        listed_on = self._taken.pop(raw, frozenset())
        if self._state.record(self.target.id, display(raw)) is not None:
            listed_on |= {self.target.id}
        if self.handover is not None:
            self.handover(self.target.id, raw, cause, f"{redirect.host}:{redirect.port}", listed_on)

    # ------------------------------------------------------------------ health

    async def _health_loop(self, client: Redis) -> None:
        last_config = last_refresh = 0.0
        while True:
            await asyncio.sleep(min(HEALTH_EVERY_S, streams_.REFRESH_EVERY_S))
            now = time.monotonic()
            if now - last_refresh >= streams_.REFRESH_EVERY_S - 0.05:
                last_refresh = now
                await self._refresh_groups()
            if now - last_config >= CONFIG_EVERY_S or self._feed_stale:
                self._feed_stale = False
                await self._check_notifications(client)
                last_config = now
            await self._health(client, check_config=False)
            await self._check_buffer(client)
            reads = self._reads
            if reads is not None and reads.overdue(READ_TIMEOUT_S):
                reads.close()  # the node stopped answering: the watch ends and reconnects
            if self._overflowed:
                if self._burst * 2 < self._limits.dirty_keys:  # a rate our queue can take again
                    self._burst_over()
                self._burst = 0
            scanning = not self._notifications or self._paused_until > now
            since = now - self._last_scan_end
            busy = self._scan_task is not None and not self._scan_task.done()
            if busy or not self._scanned:
                continue
            summarising = self._state.summarising(self.target.id)
            if scanning and since >= self._scan_interval_s:
                self._resync("periodic scan")
            elif summarising and (not self._counted or since >= self._limits.census_interval_s):
                self._counted = True  # the keys went past the budget: count them by prefix now
                self._resync("count by prefix")

    async def _check_buffer(self, client: Redis) -> None:
        """Read our subscriber's output buffer on the server; past the limit, stop
        subscribing for a while (scanning instead) rather than make Redis hold megabytes
        for us or cut us off at its pub/sub limit."""
        sub = self._subscription
        if sub is None or sub.client_id is None:
            if self._node.sub_buffer is not None:
                self._node = replace(self._node, sub_buffer=None)
                self._publish_node()
            return
        reply = await client.execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "LIST", "ID", str(sub.client_id)
        )
        match = OMEM.search(reply if isinstance(reply, bytes) else str(reply).encode())
        if match is None:
            return
        omem = int(match.group(1))
        if omem != self._node.sub_buffer:
            self._node = replace(self._node, sub_buffer=omem)
            self._publish_node()
        if omem > self._limits.sub_buffer_bytes:
            self._paused_until = time.monotonic() + self._limits.pause_s
            self._state.log(
                "warn",
                self.target.id,
                f"notifications come faster than we read them: {omem / 1048576:.1f} MiB queued for us "
                f"on the server; unsubscribed, scanning every {self._scan_interval_s:g}s for "
                f"{self._limits.pause_s:g}s, then subscribing again",
            )
            sub.close()
            self._set_feed(
                self._notifications,
                f"notifications paused (buffer past {self._limits.sub_buffer_bytes // 1048576} MiB): "
                f"scanning every {self._scan_interval_s:g}s",
            )

    async def _health(self, client: Redis, check_config: bool = True) -> None:
        info = await client.info("replication")
        role = "replica" if info.get("role") == "slave" else "master"
        master = None
        detail = ""
        if role == "replica":
            address = f"{info.get('master_host')}:{info.get('master_port')}"
            master = self._topology.master_of(self.target, address)
            link = info.get("master_link_status", "?")
            detail = f"replica of {master or address}, link {link}"
        else:
            listed = [
                f"{r.get('ip')}:{r.get('port')}"
                for k, r in info.items()
                if k.startswith("slave") and isinstance(r, dict)
            ]
            self._topology.master_listed(self.target.id, listed)
            detail = f"{len(listed)} replica(s)"
        placed = self._topology.placement(self.target.id)
        slots = ""
        if placed is not None:  # a Redis Cluster's node: the cluster's view, not ours
            role, master, slots = placed.role, placed.master, placed.slots
            if master is not None:
                detail = f"replica of {master}, link {info.get('master_link_status', '?')}"
        was_down = self._node.status != "up"
        self._node = replace(
            self._node,
            role=role,
            master=master,
            slots=slots,
            status="up",
            as_of_ms=now_ms(),
            detail=detail,
        )
        if check_config:
            await self._check_notifications(client)
        if was_down:
            self._state.log("info", self.target.id, f"up ({role}, {self.target.address})")
        self._publish_node()

    async def _check_notifications(self, client: Redis) -> None:
        if self._paused_until > time.monotonic() or self._overflowed:
            return  # the feed says why we are not subscribed, or only count
        try:
            reply: dict[Any, Any] = await client.config_get("notify-keyspace-events")
            raw = next(iter(reply.values()), b"")  # redis-py decodes this reply itself
            flags = raw if isinstance(raw, str) else display(raw)
        except redis_errors.ResponseError:
            self._set_feed(True, "keyspace notifications (CONFIG GET not allowed: unverified)")
            return
        if notifications_enabled(flags):
            self._set_feed(True, f"keyspace notifications ({flags})")
            return
        if self.target.allow_config:
            wanted = "".join(sorted(set(flags) | set("KA")))
            await client.config_set("notify-keyspace-events", wanted)
            self._state.log(
                "warn",
                self.target.id,
                f"turned keyspace notifications on (notify-keyspace-events {wanted!r})",
            )
            self._set_feed(True, f"keyspace notifications ({wanted})")
            self._resync("notifications turned on")
            return
        self._set_feed(
            False,
            f"scanning every {self._scan_interval_s:g}s: notify-keyspace-events "
            f"is {flags!r} (start with --enable-notifications to turn it on)",
        )

    def _set_feed(self, notifications: bool, feed: str) -> None:
        if notifications != self._notifications:
            level = "info" if notifications else "warn"
            what = (
                "notifications are back"
                if notifications
                else "notifications are off: changes are now found by scanning"
            )
            self._state.log(level, self.target.id, what)
            if notifications:
                self._resync("notifications back")
        self._notifications = notifications
        if self._node.feed != feed:
            self._node = replace(self._node, feed=feed)
            self._publish_node()

    def placed(self) -> None:
        """The cluster moved this node (a failover, a reshard): show where it is now."""
        placed = self._topology.placement(self.target.id)
        if placed is None:
            return
        node = replace(self._node, role=placed.role, master=placed.master, slots=placed.slots)
        if node != self._node:
            self._node = node
            self._publish_node()

    def take(self, raw: bytes, cause: str, listed_on: frozenset[str]) -> None:
        """A key another node of the cluster redirected us to: read it here, then drop it
        from the nodes that listed it (in that order: the entity is never without it)."""
        self._taken[raw] = self._taken.get(raw, frozenset()) | listed_on
        self._dirty.setdefault(raw, cause)
        self._dirty_event.set()

    def _handed(self, raw: bytes) -> None:
        for node_id in self._taken.pop(raw, ()):
            if node_id != self.target.id:
                self._state.drop_key(node_id, raw, "moved")

    def _set_down(self, why: str) -> None:
        if self._node.status != "down":
            self._state.log("error", self.target.id, f"down: {why}")
        self._node = replace(self._node, status="down", detail=why)
        self._publish_node()

    def _publish_node(self) -> None:
        self._node = replace(self._node, events=self.events, coalesced=self.coalesced, gaps=self.gaps)
        self._state.set_node(self._node)
        self._wake()


def _raw(key: bytes | str) -> bytes:
    return key if isinstance(key, bytes) else key.encode()
