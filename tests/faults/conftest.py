from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.proxy import BlackholeProxy
from tests.support import Broker


@pytest.fixture
def proxy(broker: Broker) -> Iterator[BlackholeProxy]:
    p = BlackholeProxy(broker.port)
    yield p
    p.close()
