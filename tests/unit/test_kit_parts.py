"""Pure parts of the scenarios' kit that several scenarios share: where the two sides of a
run keep their tables, and which op a checker's problem points at."""

from __future__ import annotations

from collectors.runs import Op
from collectors.targets import PostgresTarget
from scenarios.kit.database import schema_for, two_databases
from scenarios.kit.problems import step_of
from scenarios.transactions.accounts import participants


def pg(name: str, port: int) -> PostgresTarget:
    return PostgresTarget(id=name, host="127.0.0.1", port=port, user="postgres", dbname="postgres")


def test_two_servers_hold_the_runs_schema_each() -> None:
    a, b = two_databases("txn-outbox-1", (pg("postgres-1", 5001), pg("postgres-2", 5002), pg("pg-3", 5003)))
    assert (a.name, a.target.port, a.schema) == ("postgres-1", 5001, schema_for("txn-outbox-1"))
    assert (b.name, b.target.port, b.schema) == ("postgres-2", 5002, schema_for("txn-outbox-1"))
    assert b.describe() == {"name": "postgres-2", "dsn": b.target.dsn, "schema": b.schema}


def test_one_server_holds_two_schemas_named_by_side() -> None:
    only = pg("postgres-1", 5001)
    a, b = two_databases("Run-2", (only,))
    assert a.target == b.target == only
    assert (a.name, a.schema) == ("postgres-1/a", "coordscope_run_2_a")
    assert (b.name, b.schema) == ("postgres-1/b", "coordscope_run_2_b")
    assert participants("Run-2", (only,)) == [a, b]  # 2PC and TCC's participants are the same two


def op(index: int, actor: str, msg: str, tick: str) -> Op:
    return Op(index=index, t_ms=index * 10, actor=actor, kind="ok", f="step", data={"msg": msg, "tick": tick})


def test_step_of_finds_the_first_or_last_step_of_a_message() -> None:
    ops = [
        op(0, "A", "o1", "committed"),
        op(1, "relay", "o1", "published"),
        op(2, "B-1", "o2", "applied"),
        op(3, "B-1", "o1", "applied"),
        op(4, "relay", "o1", "published"),
        op(5, "B-2", "o1", "twice"),
    ]
    assert step_of(ops, "o1", "published") is ops[1]
    assert step_of(ops, "o1", "published", last=True) is ops[4]
    assert step_of(ops, "o1", "applied", "twice", last=True) is ops[5]
    assert step_of(ops, "o1", "applied", "twice", actor="B-1", last=True) is ops[3]
    assert step_of(ops, "o2", "applied", actor="B-2") is None
    assert step_of(ops, "o3", "committed") is None
