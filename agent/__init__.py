"""classroom-agent: the edge agent of a classroom teaching terminal."""

__version__ = "0.1.0"

#: Version of the MQTT contract (topics and payloads); see docs/contract.md.
CONTRACT_VERSION = 1
