"""What to watch: Redis nodes and ZooKeeper ensembles, as plain values."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

LOOPBACK = "127.0.0.1"
PORT_RANGE = (20000, 30000)
"""Below Linux's ephemeral range (32768-60999): a port the kernel hands out for some
client's outgoing connection cannot steal ours between choosing it and binding it."""


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now, in :data:`PORT_RANGE` (for a server about to bind it)."""
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise TargetError(f"no free port on {host} between {PORT_RANGE[0]} and {PORT_RANGE[1]}")


class TargetError(ValueError):
    """A Redis URL or ZooKeeper connect string that cannot be used."""


@dataclass(frozen=True)
class RedisTarget:
    id: str
    host: str
    port: int
    db: int = 0
    password: str | None = None
    username: str | None = None
    tls: bool = False
    allow_config: bool = False
    """May the collector run ``CONFIG SET notify-keyspace-events`` when it is off?"""
    cluster: str | None = None
    """The Redis Cluster this node is a member of (its name), or None for a standalone
    node: a cluster's topology is followed live, and its keys are the cluster's
    entities whichever node holds them (:mod:`collectors.redis_cluster`)."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def connection(self) -> dict[str, Any]:
        """Where and how to connect, as redis-py's ``Redis(...)`` takes it."""
        return {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "ssl": self.tls,
        }

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:{self.password}@"
        cluster = f"?cluster={quote(self.cluster, safe='')}" if self.cluster else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.db}{cluster}"

    @classmethod
    def from_url(cls, url: str, node_id: str | None = None, allow_config: bool = False) -> RedisTarget:
        if "://" not in url:
            url = f"redis://{url}"
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise TargetError(f"{url!r}: a Redis URL starts with redis:// or rediss://")
        if not parts.hostname:
            raise TargetError(f"{url!r}: no host in this Redis URL")
        try:
            port = parts.port or 6379
            db = int(parts.path.strip("/") or 0)
        except ValueError:
            raise TargetError(f"{url!r}: the port and database must be numbers") from None
        host = parts.hostname
        return cls(
            id=node_id or f"{host}:{port}",
            host=host,
            port=port,
            db=db,
            password=parts.password,
            username=parts.username or None,
            tls=parts.scheme == "rediss",
            allow_config=allow_config,
            # ?cluster=NAME: a node of that Redis Cluster (how a run's processes learn it)
            cluster=parse_qs(parts.query).get("cluster", [None])[0],
        )


@dataclass(frozen=True)
class ZkTarget:
    id: str
    hosts: str
    """A connect string: ``host:port[,host:port...]``."""
    roots: tuple[str, ...] = ("/",)
    budget: int = 5000
    """Stop watching new znodes past this many (a huge tree must not swamp us)."""
    persistent_watches: bool = True
    """Use one persistent recursive watch per root (ZooKeeper 3.6+ ``addWatch``) when
    the server has it; False keeps one-shot watches, re-armed on every read."""
    roles_interval_s: float = 1.0
    """How often each server of the connect string is asked its role (``srvr``)."""
    session_timeout_s: float = 10.0
    """The collector's session timeout: how long a server may be away (a restart) before
    the collector's session, and its watch, must be set up anew."""

    @property
    def servers(self) -> tuple[tuple[str, int], ...]:
        """Every ``(host, port)`` of the connect string, without its chroot."""
        found = []
        for hostport in self.hosts.split("/")[0].split(","):
            host, _, port = hostport.strip().rpartition(":")
            found.append((host.strip("[]"), int(port)))
        return tuple(found)

    def __post_init__(self) -> None:
        if not self.hosts.strip():
            raise TargetError("an empty ZooKeeper connect string")
        for hostport in self.hosts.split("/")[0].split(","):
            host, _, port = hostport.strip().rpartition(":")
            if not host or not port.isdigit():
                raise TargetError(f"{self.hosts!r}: a ZooKeeper connect string is host:port[,host:port...]")
        for root in self.roots:
            if not root.startswith("/"):
                raise TargetError(f"{root!r}: a ZooKeeper root must start with /")


@dataclass(frozen=True)
class PostgresTarget:
    """One PostgreSQL database (a server is watched per database: prepared transactions
    and sessions are listed per database)."""

    id: str
    host: str
    port: int
    user: str
    dbname: str
    password: str | None = field(default=None, repr=False)
    params: tuple[tuple[str, str], ...] = ()
    """Other libpq keywords of the DSN (``sslmode``, ``application_name``...), kept as given."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def dsn(self) -> str:
        """A libpq conninfo string (``host=... port=... user=... dbname=...``) for psycopg."""
        pairs = [("host", self.host), ("port", str(self.port)), ("user", self.user), ("dbname", self.dbname)]
        if self.password is not None:
            pairs.append(("password", self.password))
        return " ".join(f"{k}={self._quote(v)}" for k, v in (*pairs, *self.params))

    @classmethod
    def from_dsn(cls, dsn: str, node_id: str | None = None) -> PostgresTarget:
        """From a ``postgresql://user[:password]@host[:port]/dbname[?k=v]`` URL or a
        ``key=value`` conninfo string; host defaults to localhost, port to 5432, user to
        postgres, dbname to the user (libpq's defaults, less its environment variables)."""
        from psycopg import Error
        from psycopg.conninfo import conninfo_to_dict

        try:
            parts = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
        except Error as exc:
            raise TargetError(f"{dsn!r} is not a PostgreSQL DSN: {str(exc).strip()}") from None
        host = parts.pop("host", "") or "localhost"
        if "," in host:
            raise TargetError(f"{dsn!r}: name one PostgreSQL host per DSN")
        port_text = parts.pop("port", "") or "5432"
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise TargetError(f"{dsn!r}: the port must be a number from 1 to 65535")
        user = parts.pop("user", "") or "postgres"
        dbname = parts.pop("dbname", "") or user
        port = int(port_text)
        return cls(
            id=node_id or f"{host}:{port}/{dbname}",
            host=host,
            port=port,
            user=user,
            dbname=dbname,
            password=parts.pop("password", None),
            params=tuple(sorted(parts.items())),
        )

    @staticmethod
    def _quote(value: str) -> str:
        """A conninfo value, quoted where libpq needs it (empty, spaces, quotes, backslashes)."""
        if value and not any(c.isspace() or c in "'\\" for c in value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
