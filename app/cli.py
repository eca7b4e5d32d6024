"""``coordscope``: the command line.

Exit status: 0 on success (for ``run``: the invariant held), 1 when a run's
invariant was violated, 2 on any error — always with one line saying what
was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import sys
import termios
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import config
from app.cluster import ClusterError, LocalCluster
from app.config import ConfigError, Settings
from collectors.events import Snapshot, Upserted, state_json, to_json
from collectors.families import REGISTRY
from collectors.families.runs import Run
from collectors.runs import Op
from collectors.targets import TargetError
from scenarios.kit.catalogue import ScenarioError, parse_assignments
from scenarios.kit.history import follow
from scenarios.runner import catalogue

if TYPE_CHECKING:
    from app.core import Core
    from collectors.recording import Recording

EXIT_OK, EXIT_VIOLATED, EXIT_ERROR = 0, 1, 2


class UsageError(Exception):
    """A mistake in how coordscope was called."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _speed(text: str) -> float:
    from app.replay import SPEEDS

    value = _positive(text)
    if not SPEEDS[0] <= value <= SPEEDS[-1]:
        raise argparse.ArgumentTypeError(f"{text} is not a speed from {SPEEDS[0]} to {SPEEDS[-1]:g}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("where to look")
    g.add_argument(
        "--state",
        metavar="DIR",
        help="state folder of the local cluster (default $COORDSCOPE_STATE or ~/.local/state/coordscope)",
    )
    g.add_argument("--config", metavar="FILE", help="config file (TOML)")
    g.add_argument(
        "--redis",
        metavar="URL",
        action="append",
        help="watch this Redis node instead of the local cluster (repeatable)",
    )
    g.add_argument(
        "--redis-cluster",
        action="store_true",
        help="the --redis URLs are seeds of a Redis Cluster: follow its nodes; "
        "with up: start a Redis Cluster (3 primaries, a replica each) instead of the masters",
    )
    g.add_argument("--zk", metavar="HOSTS", help="watch this ZooKeeper ensemble (host:port,...)")
    g.add_argument(
        "--pg",
        metavar="DSN",
        action="append",
        help="watch this PostgreSQL database (postgresql://user@host:port/db; repeatable)",
    )
    g.add_argument(
        "--enable-notifications",
        action="store_true",
        help="allow CONFIG SET notify-keyspace-events where it is off",
    )
    g.add_argument(
        "--allow-writes",
        action="store_true",
        help="allow scenarios to run on a cluster coordscope did not start",
    )

    p = argparse.ArgumentParser(
        prog="coordscope",
        description="A live observatory for distributed coordination in Redis and ZooKeeper.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser("up", parents=[common], help="start the local cluster")
    up.add_argument("--masters", type=int, default=None, help="independent Redis masters (3)")
    up.add_argument(
        "--zk-ensemble",
        type=int,
        default=None,
        metavar="N",
        help="ZooKeeper servers: 3 for an ensemble (default 1, a standalone server)",
    )
    sub.add_parser("down", parents=[common], help="stop the local cluster")
    sub.add_parser("status", parents=[common], help="show the local cluster")
    sub.add_parser("tui", parents=[common], help="the terminal dashboard")
    web = sub.add_parser("web", parents=[common], help="serve the web view")
    web.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    web.add_argument("--port", type=_port, default=None, help="port (default 8765)")
    web.add_argument("--token", help="token for changes when not on loopback (default: random)")
    demo = sub.add_parser("demo", parents=[common], help="local cluster + web view + TUI")
    demo.add_argument("--port", type=_port, default=None, help="web port (default 8765, or free)")
    sc = sub.add_parser("scenarios", parents=[common], help="list scenarios, variants, faults")
    sc.add_argument("--json", action="store_true")
    st = sub.add_parser("state", parents=[common], help="print one snapshot")
    st.add_argument("--json", action="store_true", help="as JSON (the body of GET /api/state)")
    st.add_argument("--timeout", type=float, default=5.0)
    rec = sub.add_parser("record", parents=[common], help="record the event stream to a file")
    rec.add_argument("file", help="JSON lines: a snapshot, then one event per line, keyframes between")
    rec.add_argument(
        "--seconds", type=_positive, default=None, help="stop after this long (default: at Ctrl-C)"
    )
    rec.add_argument(
        "--keyframe",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="write a full snapshot this often, for seeking (default 30)",
    )
    rep = sub.add_parser("replay", parents=[common], help="replay a recording in the TUI or the web view")
    rep.add_argument("file")
    rep.add_argument("--speed", type=_speed, default=1.0, help="0.25 to 16 (default 1: real time)")
    rep.add_argument("--paused", action="store_true", help="open paused at the start")
    rep.add_argument("--web", action="store_true", help="serve the web view instead of the TUI")
    rep.add_argument("--host", default="127.0.0.1", help="with --web: bind address (default 127.0.0.1)")
    rep.add_argument("--port", type=_port, default=8765, help="with --web: port (default 8765)")
    rep.add_argument("--token", help="with --web: token for changes when not on loopback")
    rep.add_argument("--print", action="store_true", help="print the recording's events and exit")
    run = sub.add_parser("run", parents=[common], help="run a scenario and judge it")
    run.add_argument("scenario")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter or variant, e.g. --set fencing=off (repeatable)",
    )
    run.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME",
        help="a fault to inject, e.g. --fault pause-holder (repeatable)",
    )
    run.add_argument("--quiet", action="store_true", help="print only the verdict")
    run.add_argument("--json", action="store_true", help="print the finished run as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_logs(args)
    try:
        return int(_dispatch(args) or 0)
    except (ConfigError, ClusterError, ScenarioError, TargetError, UsageError) as exc:
        print(f"coordscope: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("coordscope: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `coordscope state --json | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay open
        return EXIT_OK


def _quiet_logs(args: argparse.Namespace) -> None:
    """Library logs (kazoo's reconnect chatter) go to a file, never over the screen."""
    state = Path(args.state) if args.state else config.default_state_dir()
    with contextlib.suppress(OSError):
        state.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(
            filename=state / "coordscope.log",
            level=logging.WARNING,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
        return
    logging.basicConfig(handlers=[logging.NullHandler()])


def _settings(args: argparse.Namespace, need_cluster: bool = True) -> Settings:
    return config.load(
        redis_urls=args.redis,
        zk_hosts=args.zk,
        pg_dsns=args.pg,
        state_dir=args.state,
        config_file=args.config,
        enable_notifications=args.enable_notifications,
        allow_writes=args.allow_writes,
        redis_cluster=True if args.redis_cluster else None,
        need_cluster=need_cluster,
    )


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command in ("up", "down", "status"):
        state = Path(args.state) if args.state else config.default_state_dir()
        return {"up": _up, "down": _down, "status": _status}[command](LocalCluster(state), args)
    if command == "scenarios":
        return _scenarios(args)
    if command == "replay":
        return _replay(args)
    if command == "demo":
        return _demo(args)
    settings = _settings(args)
    if command == "run":
        return asyncio.run(_run(settings, args))
    if command == "state":
        return asyncio.run(_state(settings, args))
    if command == "record":
        return asyncio.run(_record(settings, args))
    if command == "web":
        return _web(settings, args)
    if command == "tui":
        return _tui(settings)
    raise UsageError(f"unknown command {command!r}")


# ---------------------------------------------------------------------- cluster


def _up(cluster: LocalCluster, args: argparse.Namespace) -> int:
    info, started = cluster.up(args.masters, args.zk_ensemble, True if args.redis_cluster else None)
    print("started the local cluster:" if started else "the local cluster is already running:")
    for line in info.describe():
        print("  " + line)
    print(f"state folder: {cluster.state_dir}   (coordscope down stops it)")
    return EXIT_OK


def _down(cluster: LocalCluster, args: argparse.Namespace) -> int:
    stopped = cluster.down()
    print(f"stopped {', '.join(stopped)}" if stopped else "no local cluster was running")
    return EXIT_OK


def _status(cluster: LocalCluster, args: argparse.Namespace) -> int:
    info = cluster.load()
    if info is None:
        print(f"no local cluster in {cluster.state_dir}")
        return EXIT_ERROR
    from app.cluster import alive

    for m, line in zip(info.members, info.describe(), strict=True):
        print(f"  {line}  {'running' if alive(m) else 'NOT RUNNING'}")
    return EXIT_OK


# ---------------------------------------------------------------------- scenarios and runs


def _scenarios(args: argparse.Namespace) -> int:
    specs = catalogue()
    if args.json:
        print(json.dumps([s.to_json() for s in specs], indent=2))
        return EXIT_OK
    for s in specs:
        print(f"{s.name} — {s.title}")
        print(f"  {s.summary}")
        print(f"  invariant: {s.invariant}")
        for p in s.all_params():
            values = "|".join(p.choices) if p.choices else f"{p.minimum}..{p.maximum}"
            setting = f"--set {p.name}={p.default}"
            print(f"  {setting:<26} {values:<13} {p.help}")
        for f in s.faults:
            print(f"  {'--fault ' + f.name:<40} {f.help}")
        print()
    return EXIT_OK


def _print_op(op: Op) -> None:
    fence = f" fence={op.fence}" if op.fence is not None else ""
    value = f" value={op.value}" if op.value and len(op.value) <= 40 else ""
    key = f" {op.key}" if op.key and op.f in ("pay", "handle", "charge", "replay", "ledger") else ""
    note = f"  {op.note}" if op.note else ""
    line = f"{op.t_ms:>7} ms  {op.actor:<10} {op.kind:<6} {op.f:<8}{key}{fence}{value}{note}"
    print(line.encode("utf-8", "backslashreplace").decode("utf-8"), flush=True)


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from app.core import Core

    params = parse_assignments(args.set)
    core = Core(settings)
    run = await core.runner.start(args.scenario, params, args.fault)
    following: asyncio.Task[None] | None = None
    if not (args.quiet or args.json):
        shown = " ".join(f"{k}={v}" for k, v in run.context.params.items())
        print(
            f"run {run.id}: {shown}"
            + (f"; faults: {', '.join(run.context.faults)}" if run.context.faults else ""),
            flush=True,
        )
        # what the store holds, as it arrives: the run's own operations and its services'
        control = core.runner.env.client(core.runner.env.control_node)
        following = asyncio.create_task(follow(control, run.id, run.done, _print_op))
    try:
        await core.runner.wait(run.id)
        if following is not None:
            await asyncio.wait_for(following, 10)
    except asyncio.CancelledError:
        await core.runner.close()
        raise
    except (TimeoutError, OSError):
        pass  # the control node went away, or the terminal did (`| head`): the run ended all the same
    if args.json:
        print(
            json.dumps(
                {
                    "id": run.id,
                    "scenario": run.spec.name,
                    "status": run.status,
                    "params": {k: str(v) for k, v in run.context.params.items()},
                    "faults": run.context.faults,
                    "error": run.error,
                    "verdict": dataclasses.asdict(run.verdict) if run.verdict else None,
                },
                indent=2,
            )
        )
    else:
        _print_verdict(run.status, run.verdict, run.error)
    if run.status == "held":
        return EXIT_OK
    return EXIT_VIOLATED if run.status == "violated" else EXIT_ERROR


def _print_verdict(status: str, verdict: Any, error: str) -> None:
    if error:
        print(f"run {status}: {error}")
    if verdict is None:
        return
    print(("HELD" if verdict.holds else "VIOLATED") + f" — {verdict.invariant}")
    print(f"  {verdict.summary}")
    if verdict.actors:
        print(f"  actors: {', '.join(verdict.actors)}")
    for finding in verdict.findings:
        print(f"  finding: {finding}")


# ---------------------------------------------------------------------- state, record, replay


async def _state(settings: Settings, args: argparse.Namespace) -> int:
    from app.core import Core

    core = Core(settings)
    await core.start()
    try:
        missing = await core.observatory.wait_synced(args.timeout)
        snapshot = core.bus.snapshot()
    finally:
        await core.stop()
    if args.json:
        print(json.dumps(state_json(snapshot), indent=2))
    else:
        _print_state(snapshot)
    if missing:
        print(f"coordscope: warning: no complete read from {', '.join(missing)}", file=sys.stderr)
    return EXIT_OK


def _print_state(snapshot: Snapshot) -> None:
    for family in REGISTRY:
        if family.kind == "key":
            continue  # raw keys: see --json
        entities = snapshot.of(family.kind)
        print(f"{family.plural} ({len(entities)})")
        for e in entities:
            cells = "  ".join(c.plain for c in family.row(e)[1:5])
            print(f"  {e.id!r}  {cells}".encode("ascii", "backslashreplace").decode())


async def _record(settings: Settings, args: argparse.Namespace) -> int:
    from app.core import Core
    from app.recorder import record

    try:
        out = open(args.file, "w", encoding="utf-8")  # noqa: SIM115, ASYNC230 - closed below
    except OSError as exc:
        raise UsageError(f"cannot write {args.file}: {exc.strerror or exc}") from None
    core = Core(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)  # the normal end of a recording, not an error
    how_long = f"for {args.seconds:g} s" if args.seconds else "until Ctrl-C"
    print(f"recording to {args.file} {how_long}", file=sys.stderr, flush=True)
    try:
        with out:
            await core.start()
            done = await record(core.bus, out, stop, seconds=args.seconds, keyframe_s=args.keyframe)
    except OSError as exc:
        raise UsageError(f"cannot write {args.file}: {exc.strerror or exc}") from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await core.stop()
    print(f"recorded {done.events} events and {done.keyframes} snapshots to {args.file}")
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    """Everything shown comes from the file: nothing connects to a store."""
    from app.core import Core
    from app.replay import Replay
    from collectors.recording import RecordingError, read_recording

    try:
        recording = read_recording(args.file)
    except RecordingError as exc:
        raise UsageError(str(exc)) from None
    if recording.cut:
        print(
            f"coordscope: note: the last line of {args.file} was cut short; replaying the rest",
            file=sys.stderr,
        )
    if args.print:
        return _print_recording(recording)
    state = Path(args.state) if args.state else config.default_state_dir()
    core = Core(
        Settings(state_dir=state, redis=(), zookeeper=()),
        Replay(recording, speed=args.speed, playing=not args.paused),
    )
    if args.web:
        problem = _bind_problem(args.port, args.host)
        if problem:
            raise UsageError(problem)
        return _serve(core, args.host, args.port, args.token, f"replaying {args.file}")
    from app.tui.replay_app import ReplayApp

    exit_on_hangup()
    ReplayApp(core).run()
    return EXIT_OK


def _print_recording(recording: Recording) -> int:
    for frame in recording.frames:
        item = frame.item
        if isinstance(item, Snapshot):
            print(f"{frame.at_ms} snapshot: {sum(len(v) for v in item.entities.values())} entities")
        elif isinstance(item, Upserted) and isinstance(item.entity, Run):
            print(f"{frame.at_ms} {item.type} {item.entity.id} {item.entity.status}")
        else:
            print(f"{frame.at_ms} " + json.dumps(to_json(item), ensure_ascii=False))
    return EXIT_OK


# ---------------------------------------------------------------------- screens


def _web(settings: Settings, args: argparse.Namespace) -> int:
    from app.core import Core

    host = args.host or settings.web_host
    port = args.port or settings.web_port
    problem = _bind_problem(port, host)
    if problem:
        raise UsageError(problem)
    return _serve(Core(settings), host, port, args.token, "coordscope web view")


def _serve(core: Core, host: str, port: int, given_token: str | None, what: str) -> int:
    from app.web import create_app, server, token_for

    token = token_for(host, given_token)
    app = create_app(core, token=token)
    print(f"{what} on http://{host}:{port}/", flush=True)
    if token:
        print(f"changes need the token: Authorization: Bearer {token}", flush=True)
    server(app, host, port).run()
    return EXIT_OK


def exit_on_hangup(cleanup: Callable[[], object] | None = None) -> None:
    """When the terminal goes away, stop what this process started and exit.

    Nothing can be drawn or read any more, and Textual does not end by itself on a
    dead terminal: its writer thread dies on the first failed write, the next repaints
    fill its bounded queue and block the event loop for good (textual#6692), while the
    input thread spins on end-of-file (textual#6690) — a process left at 100% CPU, with
    the demo's cluster still running. A handler on the event loop never runs then, and
    a Python signal handler only runs in the main thread, the one blocked. And SIGHUP
    does not always come: under ``make demo`` a closed tmux pane only leaves the
    terminal hung up (every call on it fails with EIO).

    So one thread of our own watches: SIGHUP is blocked in this thread, and so in every
    thread started after it, and the watcher waits for it (``sigtimedwait``) while it
    asks the terminal, once a second, for its attributes. On either, it points the
    terminal's descriptors at /dev/null, runs ``cleanup`` (the demo stops the cluster it
    started) and exits the process. A run it started stops too: its services and its
    janitor notice its heartbeat stopping. Call it before any other thread starts."""
    terminal = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None

    def gone() -> bool:
        if terminal is None:
            return False
        try:
            termios.tcgetattr(terminal)
        except (termios.error, OSError):
            return True
        return False

    def watch() -> None:
        while signal.sigtimedwait({signal.SIGHUP}, 1.0) is None and not gone():
            pass
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
        if cleanup is not None:
            with contextlib.suppress(Exception):
                cleanup()
        os._exit(128 + signal.SIGHUP)

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    threading.Thread(target=watch, name="hangup", daemon=True).start()


def _tui(settings: Settings) -> int:
    from app.core import Core
    from app.tui.app import CoordscopeApp

    exit_on_hangup()
    CoordscopeApp(Core(settings)).run()
    return EXIT_OK


def _bind_problem(port: int, host: str = "127.0.0.1") -> str | None:
    """Why we could not listen on host:port, or None when we can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as uvicorn will: a port whose last connections linger in TIME_WAIT is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"{host}:{port} is in use: choose another port with --port"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _demo(args: argparse.Namespace) -> int:
    from app.cluster import free_port
    from app.core import Core
    from app.tui.app import CoordscopeApp
    from app.web import create_app, server

    state = Path(args.state) if args.state else config.default_state_dir()
    cluster = LocalCluster(state)
    _, started = cluster.up()
    exit_on_hangup(cluster.down if started else None)
    print("started the local cluster" if started else "using the running local cluster", flush=True)
    try:
        settings = _settings(args)
        port = args.port or settings.web_port
        if _bind_problem(port):
            port = free_port()
        core = Core(settings)
        web = server(create_app(core, own_core=False), "127.0.0.1", port, embedded=True)
        url = f"http://127.0.0.1:{port}/"
        CoordscopeApp(core, web_url=url, services=[web]).run()
    finally:
        if started:
            cluster.down()
            print("stopped the local cluster this demo started")
        else:
            print("the local cluster is still running (coordscope down stops it)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
