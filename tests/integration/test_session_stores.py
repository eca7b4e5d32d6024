"""The session run's stores against a real Redis: Spring Session's layout byte for byte (as
``RedisIndexedSessionRepository`` writes it, ``../shared/research/layouts.md``), its
logout and its ``changeSessionId``; the container's opaque blob; and what the viewer
makes of each."""

from __future__ import annotations

import redis

from app.cluster import ClusterInfo
from collectors.families.sessions import Session
from collectors.layouts import javaser
from collectors.layouts.sessions import PRINCIPAL
from scenarios.kit.clients import redis_client as async_client
from scenarios.sessions.spring import SpringStore, expiry_bucket
from scenarios.sessions.stores import BLOB_MAGIC, ContainerStore, SessionData, now_ms
from tests.conftest import observing, until

LONG = (
    "aced00057372000e6a6176612e6c616e672e4c6f6e673b8be490cc8f23df0200014a000576616c7565"
    "787200106a6176612e6c616e672e4e756d62657286ac951d0b94e08b0200007870"
)
INT_1800 = (
    "aced0005737200116a6176612e6c616e672e496e746567657212e2a0a4f781873802000149000576616c7565"
    "787200106a6176612e6c616e672e4e756d62657286ac951d0b94e08b020000787000000708"
)
SESSION_ID = "0a6c2b4e-3d1f-4c55-9e0b-6f1d2a3b4c5d"


def alice(idle_s: int = 1800) -> SessionData:
    now = now_ms()
    return SessionData(SESSION_ID, now - 1000, now, idle_s, {"user": "alice", "servedBy": "app-2"})


async def test_spring_session_layout_byte_for_byte(cluster: ClusterInfo) -> None:
    node = cluster.masters[0]
    target = next(t for t in cluster.redis_targets() if t.id == node.name)
    store = SpringStore(async_client(target), "layout-test")
    r = redis.Redis(port=node.port)
    data = alice()
    try:
        await store.save(data, {"user", "servedBy"}, new=True)
        h = r.hgetall(store.hash_key(SESSION_ID))
        assert set(h) == {
            b"creationTime", b"lastAccessedTime", b"maxInactiveInterval",
            b"sessionAttr:user", b"sessionAttr:servedBy", f"sessionAttr:{PRINCIPAL}".encode(),
        }  # fmt: skip
        assert h[b"creationTime"].hex() == LONG + (data.created_ms).to_bytes(8, "big").hex()
        assert h[b"maxInactiveInterval"].hex() == INT_1800
        assert h[b"sessionAttr:user"].hex() == "aced0005740005616c696365"
        assert 2095 <= r.ttl(store.hash_key(SESSION_ID)) <= 2100  # idle + 5 min
        assert r.get(store.expires_key(SESSION_ID)) == b""
        assert 1795 <= r.ttl(store.expires_key(SESSION_ID)) <= 1800
        bucket = store.bucket_key(data.last_ms + 1800_000)
        assert bucket.endswith(f":expirations:{expiry_bucket(data.last_ms + 1800_000)}")
        member = r.smembers(bucket).pop()
        assert member.hex().startswith("aced000574002c") and javaser.decode(member) == f"expires:{SESSION_ID}"
        assert r.ttl(bucket) == -1  # as Spring Session 3.4+: the bucket has no TTL
        assert [javaser.decode(m) for m in r.smembers(store.index_key("alice"))] == [SESSION_ID]
        loaded = await store.load(SESSION_ID)
        assert loaded is not None and loaded.attrs == {"user": "alice", "servedBy": "app-2"}
        # a request's touch (one script): last access now, the attribute set, both TTLs renewed
        r.expire(store.expires_key(SESSION_ID), 5)
        touched = await store.touch(SESSION_ID, {"servedBy": "app-3"})
        assert (
            touched is not None and touched.last_ms >= data.last_ms and touched.attrs["servedBy"] == "app-3"
        )
        h = r.hgetall(store.hash_key(SESSION_ID))
        assert javaser.decode(h[b"lastAccessedTime"]) == touched.last_ms
        assert javaser.decode(h[b"sessionAttr:servedBy"]) == "app-3"
        assert 1795 <= r.ttl(store.expires_key(SESSION_ID)) <= 1800
        assert r.sismember(store.bucket_key(touched.last_ms + 1800_000), member)
        loaded = touched
        # changeSessionId: RENAME of the hash and its shadow, the index follows
        await store.rotate(loaded, "new-id")
        assert not r.exists(store.hash_key(SESSION_ID), store.expires_key(SESSION_ID))
        assert r.exists(store.hash_key("new-id"), store.expires_key("new-id")) == 2
        assert [javaser.decode(m) for m in r.smembers(store.index_key("alice"))] == ["new-id"]
        # logout (deleteById): the shadow goes, the hash stays 5 minutes with maxInactiveInterval 0
        await store.delete(loaded)
        assert not r.exists(store.expires_key("new-id"))
        assert javaser.decode(r.hget(store.hash_key("new-id"), "maxInactiveInterval") or b"") == 0
        assert 0 < r.ttl(store.hash_key("new-id")) <= 300
        assert not r.exists(store.index_key("alice"))
        assert await store.load("new-id") is None
        # a deleted session is not revived by a request: read, left as it is
        assert await store.touch("new-id", {"servedBy": "app-1"}) is None
        assert not r.exists(store.expires_key("new-id"))
        assert javaser.decode(r.hget(store.hash_key("new-id"), "sessionAttr:servedBy") or b"") == "app-3"
        # nor an expired one (its idle timeout passed by its own fields), nor a missing one
        stale = SessionData("stale", now_ms() - 10_000, now_ms() - 5_000, 2, {"user": "bob"})
        await store.save(stale, {"user"}, new=True)
        assert await store.touch("stale", {"servedBy": "app-1"}) is None
        assert javaser.decode(r.hget(store.hash_key("stale"), "lastAccessedTime") or b"") == stale.last_ms
        assert await store.touch("missing", {}) is None
        # Spring's minute job: the ended minute's bucket read, its sessions' shadows read, deleted
        due = stale.last_ms + 2000
        assert r.sismember(store.bucket_key(due), javaser.encode_string("expires:stale"))
        assert await store.clean_expired(expiry_bucket(due)) >= 1
        assert not r.exists(store.bucket_key(due))
    finally:
        for key in r.scan_iter("coordscope:session:{layout-test}:*"):
            r.delete(key)
        r.close()
        await store.redis.aclose()


async def test_the_viewer_reads_the_stores_as_a_spring_app_would_write_them(cluster: ClusterInfo) -> None:
    node = cluster.masters[0]
    target = next(t for t in cluster.redis_targets() if t.id == node.name)
    client = async_client(target)
    spring, container = SpringStore(client, "viewer-test"), ContainerStore(client, "viewer-test")
    r = redis.Redis(port=node.port)
    try:
        async with observing(cluster) as bus:

            def session(layout: str) -> Session | None:
                return next(
                    (
                        s
                        for s in bus.state.entities("session")
                        if isinstance(s, Session) and s.layout == layout and "{viewer-test}" in s.key
                    ),
                    None,
                )

            data = alice(idle_s=60)
            await spring.save(data, {"user", "servedBy"}, new=True)
            await until(bus, lambda st: session("spring-session") is not None, "the Spring session")
            s = session("spring-session")
            assert s is not None and s.user == "alice" and s.served_by == "app-2" and s.state == "live"
            assert s.max_inactive_s == 60 and s.last_access_ms == data.last_ms
            assert s.expires_at_ms is not None and abs(s.expires_at_ms - (data.last_ms + 60_000)) < 2000
            await spring.delete(data)
            await until(
                bus,
                lambda st: (x := session("spring-session")) is not None and x.state == "deleted",
                "deleted",
            )
            blob = alice(idle_s=60)
            await container.save(blob, set(), new=True)
            assert (r.get(container.key(SESSION_ID)) or b"").startswith(BLOB_MAGIC)
            await until(bus, lambda st: session("container") is not None, "the container's blob")
            c = session("container")
            assert c is not None and c.user is None and c.attributes == {} and c.served_by is None
            size = r.strlen(container.key(SESSION_ID))
            assert c.encoding == f"opaque container blob, {size} bytes"
            await container.delete(blob)
            await until(bus, lambda st: session("container") is None, "the blob gone")
    finally:
        for key in r.scan_iter("coordscope:session:{viewer-test}:*"):
            r.delete(key)
        r.close()
        await client.aclose()
