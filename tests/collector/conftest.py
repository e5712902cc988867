"""Fixtures of the collector tests: one PostgreSQL cluster for the whole session (``initdb``
costs seconds), a fresh migrated database per test, and collectors as processes."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from collector import migrate
from tests.platform_support import CollectorProcess, PostgresServer, available
from tests.support import Broker

_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if not available():
        pytest.fail("PostgreSQL is not installed: run scripts/deps.sh (Debian package "
                    "postgresql)")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    """URL of a new database with every migration applied."""
    url = postgres.create_database(f"t{next(_counter)}")
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.migrate(conn)
    return url


@pytest.fixture
def db(database: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database, autocommit=True) as conn:
        yield conn


@pytest.fixture
def collector_factory(tmp_path: Path, broker: Broker, database: str
                      ) -> Iterator[Callable[..., CollectorProcess]]:
    started: list[CollectorProcess] = []

    def make(**overrides: object) -> CollectorProcess:
        c = CollectorProcess(tmp_path / f"collector{len(started)}", broker.port, database,
                             **overrides)
        started.append(c)
        return c

    yield make
    for c in started:
        c.kill()
