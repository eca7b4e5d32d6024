"""The event model's JSON, and the bus: throttled flushes, coalescing, slow viewers."""

from __future__ import annotations

import asyncio
import json

import pytest

from app.bus import Bus
from collectors.events import Logged, Removed, SchemaError, Snapshot, Upserted, from_json, to_json
from collectors.families.locks import Grant, Lock, Waiter
from collectors.observatory import Observatory
from collectors.records import KeyRecord

HOSTILE = "acct:<img src=x onerror=alert(1)>:[bold red]x[/]:\x1b[31m:lock"


def test_every_event_round_trips_through_json() -> None:
    lock = Lock(
        id="redis:" + HOSTILE,
        store="redis",
        name=HOSTILE,
        layout="redis-py",
        holder="h",
        token="t",
        ttl_ms=5,
        waiters=(Waiter(id="w", polls=3),),
        grants=(Grant(node="redis-1", token="t", holder="h", ttl_ms=5),),
        nodes=("redis-1",),
    )
    for event in (
        Upserted(entity=lock, seq=3),
        Removed(kind="lock", id="x", seq=4),
        Logged(at_ms=1, level="warn", source="redis-1", text=HOSTILE, seq=5),
    ):
        wire = json.loads(json.dumps(to_json(event)))
        assert wire["v"] == 1 and wire["type"] == event.type
        assert from_json(wire) == event
    text = json.dumps(to_json(Upserted(entity=lock)))
    assert "\\u001b" in text and "\x1b" not in text


def test_snapshot_json_is_the_state_body_with_a_type() -> None:
    lock = Lock(id="l", store="redis", name="n", layout="x", holder=None)
    snap = Snapshot(seq=9, at_ms=10, entities={"lock": (lock,)})
    wire = to_json(snap)
    assert wire["type"] == "snapshot" and wire["locks"][0]["name"] == "n"
    assert set(wire) >= {"locks", "sessions", "marks", "transactions", "nodes", "runs", "keys"}
    back = from_json(json.loads(json.dumps(wire)))
    assert isinstance(back, Snapshot) and back.of("lock") == (lock,)


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"v": 2, "type": "log"},
        {"v": 1},
        {"v": 1, "type": "x.y"},
        {"v": 1, "type": "lock.upserted", "lock": {"oops": 1}},
    ],
)
def test_bad_json_is_a_schema_error(bad: object) -> None:
    with pytest.raises(SchemaError):
        from_json(bad)  # type: ignore[arg-type]


def key(name: str, value: str) -> KeyRecord:
    return KeyRecord(
        node="redis-1",
        raw_key=name.encode(),
        type="string",
        ttl_ms=1000,
        read_at_ms=1,
        value=value.encode(),
        size=len(value),
    )


async def test_viewer_gets_snapshot_then_coalesced_batches() -> None:
    bus = Bus(Observatory([], []), interval_s=0.05)
    viewer = bus.subscribe()
    first = await viewer.get()
    assert isinstance(first, Snapshot)
    loop = asyncio.get_running_loop()
    bus.state.apply_key(key("acct:1:lock", f"{0:032x}"))
    bus.wake()
    batch = await asyncio.wait_for(viewer.get(), 1)
    leading = loop.time()
    # leading edge: the first change after a quiet spell goes out at once, alone
    assert [e.entity.holder for e in batch if isinstance(e, Upserted)] == [f"{0:032x}"]
    for i in range(1, 50):
        bus.state.apply_key(key("acct:1:lock", f"{i:032x}"))
        bus.wake()
        await asyncio.sleep(0)
    batch = await asyncio.wait_for(viewer.get(), 1)
    assert loop.time() - leading >= 0.04  # throttled: at most one flush per interval
    upserts = [e for e in batch if isinstance(e, Upserted) and e.entity.KIND == "lock"]
    assert len(upserts) == 1 and upserts[0].entity.holder == f"{49:032x}"  # latest wins


async def test_a_slow_viewer_gets_a_snapshot_and_never_blocks_the_others() -> None:
    bus = Bus(Observatory([], []), interval_s=0.0, max_batches=4)
    slow, fast = bus.subscribe(), bus.subscribe()
    assert isinstance(await slow.get(), Snapshot)
    assert isinstance(await fast.get(), Snapshot)
    for i in range(20):
        bus.state.apply_key(key(f"acct:{i}:lock", "0" * 32))
        bus.flush()
        delivered = await asyncio.wait_for(fast.get(), 1)
        assert isinstance(delivered, list)
    caught_up = await asyncio.wait_for(slow.get(), 1)
    assert isinstance(caught_up, Snapshot)
    assert len(caught_up.of("lock")) == 20
    assert slow.snapshots == 2 and fast.snapshots == 1


async def test_wait_for_wakes_on_flush() -> None:
    bus = Bus(Observatory([], []), interval_s=0.0)

    async def later() -> None:
        await asyncio.sleep(0.05)
        bus.state.apply_key(key("acct:9:lock", "0" * 32))
        bus.wake()

    task = asyncio.create_task(later())
    assert await bus.wait_for(lambda st: st.get("lock", "redis:acct:9:lock") is not None, 2)
    assert not await bus.wait_for(lambda st: False, 0.05)
    await task


async def test_an_event_is_encoded_once_for_every_viewer() -> None:
    bus = Bus(Observatory([], []), interval_s=0.0)
    viewers = [bus.subscribe() for _ in range(3)]
    for v in viewers:
        assert isinstance(await v.get(), Snapshot)
    bus.state.apply_key(key("acct:9:lock", "0" * 32))
    bus.flush()
    batches = [await asyncio.wait_for(v.get(), 1) for v in viewers]
    texts = [[bus.encoded(e) for e in b] for b in batches if isinstance(b, list)]
    assert len(texts) == 3
    assert all(a is b for a, b in zip(texts[0], texts[1], strict=True))  # the same str, made once
    upsert = json.loads(next(t for t in texts[0] if '"lock.upserted"' in t))
    assert upsert["lock"]["name"] == "acct:9:lock" and len(upsert["row"]) >= 5  # its cells too


async def test_a_wire_snapshot_is_encoded_once_per_state_but_always_tells_the_time() -> None:
    bus = Bus(Observatory([], []), interval_s=0.0)
    now = [1_000]
    bus.state._clock = lambda: now[0]
    bus.state.apply_key(key("acct:1:lock", f"{1:032x}"))
    first = json.loads(bus.wire_snapshot())
    now[0] = 600_000  # ten minutes on, nothing changed: the same encoding, a new time
    later = json.loads(bus.wire_snapshot())
    assert first["at_ms"] == 1_000 and later["at_ms"] == 600_000  # countdowns set their clock by it
    assert first["locks"] == later["locks"] and first["seq"] == later["seq"]
    assert json.loads(bus.wire_snapshot_state())["at_ms"] == 600_000
    bus.state.apply_key(key("acct:2:lock", f"{2:032x}"))
    assert len(json.loads(bus.wire_snapshot())["locks"]) == 2  # a new state, a new encoding


async def test_a_batch_sent_late_tells_the_totals_of_its_own_moment() -> None:
    """A viewer whose sender comes round late must not be told a later state's totals with an
    earlier state's events: the page would count a lock it has not been sent yet, take the
    kind for partial, and ignore that lock's upsert when it comes (seen on a loaded CI)."""
    bus = Bus(Observatory([], []), interval_s=0.0)
    viewer = bus.subscribe()
    assert isinstance(await viewer.get(), Snapshot)
    bus.state.apply_key(key("acct:1:lock", "0" * 32))
    bus.flush()
    bus.state.apply_key(key("acct:2:lock", "0" * 32))  # after the flush, before the send
    batch = await asyncio.wait_for(viewer.get(), 1)
    assert isinstance(batch, list)
    sent = json.loads(bus.batch_text(batch))
    assert [e["lock"]["name"] for e in sent["events"] if e["type"] == "lock.upserted"] == ["acct:1:lock"]
    assert sent["totals"]["locks"] == 1  # not 2: the second lock comes with the next batch
    bus.flush()
    later = json.loads(bus.batch_text(await asyncio.wait_for(viewer.get(), 1)))  # type: ignore[arg-type]
    assert later["totals"]["locks"] == 2
