"""Telemetry: small collectors behind one contract (see :mod:`agent.telemetry.base`)."""
