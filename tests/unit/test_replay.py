"""Recordings and their replay, without servers: the file format, seeking by keyframes,
the playhead, the recorder, and the CLI's refusals."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from app import cli
from app.bus import Bus
from app.recorder import record
from app.replay import Replay, ReplayState
from collectors.events import Logged, Snapshot, Upserted
from collectors.families.locks import Lock
from collectors.recording import Recording, RecordingError, parse, read_recording, recording_line
from collectors.state import State
from tests.conftest import eventually

FIXTURE = Path(__file__).parent.parent / "fixtures" / "lock-redis.jsonl"
LOCK = "redis:coordscope:lock:lock-redis-214710-8084"


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def holder(state: ReplayState) -> str | None:
    lock = state.get("lock", LOCK)
    assert lock is None or isinstance(lock, Lock)
    return None if lock is None else (lock.holder or "free")


def from_the_start(rec: Recording, at_ms: int) -> ReplayState:
    """The naive way: every frame from the first, up to ``at_ms``."""
    state = ReplayState(lambda: at_ms)
    first = rec.frames[0].item
    assert isinstance(first, Snapshot)
    state.load(first)
    for frame in rec.frames[1:]:
        if frame.at_ms > at_ms:
            break
        state.apply(frame.item)
    return state


def entities(state: ReplayState) -> dict[str, Any]:
    snap = state.snapshot()
    return {k: v for k, v in snap.entities.items() if k != "node"}  # node counters tick


def test_the_committed_recording_reads_with_its_keyframes() -> None:
    rec = read_recording(FIXTURE)
    assert not rec.cut and rec.frames[0].line == 1
    assert len(rec.keyframes) >= 3 and rec.keyframes[0] == 0
    assert 5000 <= rec.end_ms - rec.start_ms <= 7000
    assert rec.events == len(rec.frames) - len(rec.keyframes) > 150


@pytest.mark.parametrize("offset", [0, 500, 1500, 2000, 2500, 3000, 3400, 3700, 4000, 4350, 5000, 5995])
def test_seeking_anywhere_shows_what_playing_from_the_start_shows(offset: int) -> None:
    rec = read_recording(FIXTURE)
    at = rec.start_ms + offset
    for start in (rec.end_ms, rec.start_ms + 2100):  # from after and from before the moment
        replay = Replay(rec, playing=False)
        replay.seek(start)
        replay.seek(at)
        assert replay.position_ms() == at
        assert entities(replay.state) == entities(from_the_start(rec, at))


def test_the_locks_at_known_moments_of_the_recording() -> None:
    rec = read_recording(FIXTURE)
    replay = Replay(rec, playing=False)
    seen = []
    for offset in (1000, 1500, 2500, 3250, 3400, 3800, 4350, 5500):
        replay.seek(rec.start_ms + offset)
        seen.append(holder(replay.state))
    assert seen == [None, "client-1", "client-2", "client-1", "client-3", None, "client-2", None]


def test_a_seek_starts_from_the_last_keyframe_not_from_the_first_frame() -> None:
    """A keyframe that says something no event said: a seek past it shows it."""
    lock = Lock(id="redis:only-in-the-keyframe", store="redis", name="k", layout="redis-py", holder="kf")
    lines = [
        recording_line(Snapshot(seq=0, at_ms=1000, entities={}), 1000),
        recording_line(Logged(at_ms=1500, level="info", source="t", text="one", seq=1), 1500),
        recording_line(Snapshot(seq=5, at_ms=2000, entities={"lock": (lock,)}), 2000),
        recording_line(Logged(at_ms=2500, level="info", source="t", text="two", seq=6), 2500),
    ]
    rec = parse("mem", enumerate((line.strip().encode() for line in lines), 1))
    assert rec.keyframes == [0, 2]
    replay = Replay(rec, playing=False)
    assert replay.state.get("lock", lock.id) is None
    replay.seek(2600)
    assert replay.state.get("lock", lock.id) == lock
    assert [line.text for line in replay.state.snapshot().log] == ["two"]  # the keyframe had none
    replay.seek(1600)
    assert replay.state.get("lock", lock.id) is None
    assert [line.text for line in replay.state.snapshot().log] == ["one"]


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "rec.jsonl"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def good_lines() -> list[str]:
    return FIXTURE.read_text().splitlines(keepends=True)[:5]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("\n\n", "empty file"),
        ("hello world\n", "rec.jsonl:1: not JSON"),
        ('{"type": "lock.upserted", "v": 1, "lock": {}, "recorded_ms": 1}\n', ":1: not a coordscope event"),
        (
            '{"type": "log", "v": 1, "at_ms": 1, "level": "info", "source": "s", "text": "t", '
            '"recorded_ms": 1}\n',
            ":1: a recording starts with a snapshot",
        ),
        ('{"type": "snapshot", "v": 7, "recorded_ms": 1}\n', ":1: recorded with event schema version 7"),
        ('{"type": "snapshot", "v": 1}\n', ":1: no 'recorded_ms'"),
        ("[1, 2]\n", ":1: not a JSON object"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\n", ":1: not JSON"),
    ],
)
def test_what_is_not_a_recording_is_named_with_its_line(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(RecordingError, match=message):
        read_recording(write(tmp_path, content))


def test_a_garbage_line_in_the_middle_is_reported_with_its_number(tmp_path: Path) -> None:
    lines = good_lines()
    lines.insert(3, "}{ not an event\n")
    with pytest.raises(RecordingError, match=r"rec\.jsonl:4: not JSON"):
        read_recording(write(tmp_path, "".join(lines)))


def test_a_recording_cut_mid_line_by_a_kill_keeps_its_whole_lines(tmp_path: Path) -> None:
    lines = good_lines()
    cut = "".join(lines) + lines[1][: len(lines[1]) // 2]
    rec = read_recording(write(tmp_path, cut))
    assert rec.cut and len(rec.frames) == len(lines)


def test_playing_moves_the_playhead_at_its_speed_and_announces_events() -> None:
    rec = read_recording(FIXTURE)
    clock = FakeClock()
    replay = Replay(rec, playing=False, clock=clock)
    changes: list[int] = []
    replay.set_on_change(lambda: changes.append(replay.position_ms()))
    replay.seek(rec.start_ms + 1400)
    assert holder(replay.state) is None
    replay.set_speed(2)
    replay.play()
    clock.t += 0.25  # 0.5 s of the recording at 2x
    assert replay.position_ms() == rec.start_ms + 1900
    replay.pause()
    assert replay.status()["state"] == "paused" and changes
    assert holder(replay.state) == "client-2"
    clock.t += 10
    assert replay.position_ms() == rec.start_ms + 1900  # paused: it stays
    events = replay.state.drain()
    assert events and all(b.seq > a.seq for a, b in itertools.pairwise(events))
    replay.seek(rec.end_ms)
    replay.play()
    assert replay.status()["state"] == "playing"
    assert replay.position_ms() == rec.start_ms  # play at the end starts again


def test_the_speed_is_one_of_the_offered_ones() -> None:
    replay = Replay(read_recording(FIXTURE), speed=3, playing=False)
    assert replay.speed in (2.0, 4.0)
    replay.set_speed(16)
    replay.faster()
    assert replay.speed == 16
    for _ in range(10):
        replay.faster(-1)
    assert replay.speed == 0.25


async def test_a_seek_sends_every_viewer_a_snapshot_of_that_moment() -> None:
    rec = read_recording(FIXTURE)
    replay = Replay(rec, playing=False)
    bus = Bus(replay)
    replay.set_on_seek(bus.resync)
    await replay.start()
    try:
        viewers = [bus.subscribe(), bus.subscribe()]
        for v in viewers:
            first = await v.get()
            assert isinstance(first, Snapshot) and first.at_ms == rec.start_ms
        replay.seek(rec.start_ms + 2500)
        for v in viewers:
            snap = await asyncio.wait_for(v.get(), 2)
            assert isinstance(snap, Snapshot) and snap.at_ms == rec.start_ms + 2500
            (lock,) = snap.of("lock")
            assert isinstance(lock, Lock) and lock.holder == "client-2"
        replay.seek(rec.start_ms + 2600)  # a short step forward: events, not a snapshot
        batch = await asyncio.wait_for(viewers[0].get(), 2)
        assert isinstance(batch, list) and batch
    finally:
        await replay.stop()


async def test_playing_delivers_the_recorded_events_to_a_viewer() -> None:
    rec = read_recording(FIXTURE)
    replay = Replay(rec, speed=16, playing=False)
    bus = Bus(replay)
    replay.set_on_seek(bus.resync)
    replay.seek(rec.start_ms + 3200)
    await replay.start()
    try:
        viewer = bus.subscribe()
        await viewer.get()
        replay.play()
        holders: list[str | None] = []
        while "client-3" not in holders:
            batch = await asyncio.wait_for(viewer.get(), 5)
            assert isinstance(batch, list)
            holders += [
                e.entity.holder for e in batch if isinstance(e, Upserted) and isinstance(e.entity, Lock)
            ]
        await eventually(lambda: replay.status()["state"] == "ended", 5, "the replay to end")
        assert replay.position_ms() == rec.end_ms
    finally:
        await replay.stop()


class StateSource:
    """The live state, fed by hand: what the recorder records."""

    def __init__(self) -> None:
        self.state = State()
        self.wake: Any = lambda: None

    def set_on_change(self, callback: Any) -> None:
        self.wake = callback


async def test_the_recorder_writes_a_snapshot_events_and_keyframes_without_repeats() -> None:
    source = StateSource()
    bus = Bus(source)
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.create_task(record(bus, out, stop, keyframe_s=0.05))
    for n in range(30):
        source.state.log("info", "test", f"line {n}")
        source.wake()
        if n % 10 == 9:
            keyframes = out.getvalue().count('"type": "snapshot"')
            await eventually(
                lambda k=keyframes: out.getvalue().count('"type": "snapshot"') > k, 5, "a keyframe"
            )
    await eventually(lambda: '"line 29"' in out.getvalue(), 5, "the last line recorded")
    stop.set()
    done = await asyncio.wait_for(task, 5)
    assert done.events == out.getvalue().count('"type": "log"') and done.keyframes >= 3
    rec = parse("mem", enumerate(out.getvalue().encode().splitlines(), 1))
    replay = Replay(rec, playing=False)
    replay.seek(rec.end_ms)
    shown = [line.text for line in replay.state.snapshot().log]
    assert shown == [f"line {n}" for n in range(30)]  # each once, in order, keyframes or not
    assert all(json.loads(line)["recorded_ms"] for line in out.getvalue().splitlines())


def test_replay_of_what_is_not_a_recording_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for content in ("", "garbage\n", '{"type": "snapshot", "v": 99, "recorded_ms": 1}\n'):
        path = write(tmp_path, content)
        assert cli.main(["replay", str(path), "--state", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("coordscope: error: ") and str(path) in err
    assert cli.main(["replay", str(tmp_path / "missing.jsonl"), "--state", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_record_to_a_path_it_cannot_write_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no" / "such" / "folder" / "rec.jsonl"
    argv = ["record", str(target), "--state", str(tmp_path), "--redis", "redis://127.0.0.1:1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write {target}" in err


def test_replay_print_lists_the_frames(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["replay", str(FIXTURE), "--print", "--state", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(read_recording(FIXTURE).frames)
    assert out[0].endswith("snapshot: 0 entities") and any("lock.removed" in line for line in out)
