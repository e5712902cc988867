from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import AgentProcess, Broker, Subscriber


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
