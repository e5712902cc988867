"""The collector shares the agent's schemas and small pure helpers, never its daemon, publisher,
media or telemetry (a platform server has no camera, and the two evolve apart)."""

from __future__ import annotations

import ast

from tests.support import REPO

ALLOWED = {"agent", "agent.backoff", "agent.config", "agent.mqttauth", "agent.threadnames",
           "agent.typedconfig",
           "agent.yamlsource"}


def test_collector_imports_only_pure_agent_modules() -> None:
    used: dict[str, set[str]] = {}
    for path in (REPO / "collector").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name == "agent" or name.startswith("agent."):
                    used.setdefault(name, set()).add(path.name)
    assert used, "the collector should share the agent's helpers, not copy them"
    assert set(used) <= ALLOWED, {k: v for k, v in used.items() if k not in ALLOWED}


def test_agent_never_imports_the_collector() -> None:
    for path in (REPO / "agent").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("collector"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("collector") for a in node.names), path
