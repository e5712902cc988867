"""classroom-collector: the platform side of the classroom-agent contract.

It subscribes to every terminal's records (an MQTT 5 shared subscription, so several instances
share the load), validates each against the agent's own JSON Schemas and stores it in PostgreSQL,
idempotently, acknowledging a message to the broker only once its row is committed. It never
imports the agent's daemon, publisher or media: only the schemas and small pure helpers.
"""

from agent import __version__

__all__ = ["__version__"]
