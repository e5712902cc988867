"""Every library the agent imports is one of its declared dependencies.

The agent is installed on classroom PCs without the extras (scripts/install.sh: `pip install .`);
the test and development venvs carry the collector's and the tests' libraries too, so an import
of one of those in `agent/` passes every other test and breaks the installed agent at start
(it happened: the publisher imported orjson, a collector-only library).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement (``paho-mqtt>=2.0,<3`` -> paho-mqtt)."""
    name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported(package: Path) -> dict[str, list[str]]:
    """Top-level module names imported anywhere in ``package`` (functions included), with where."""
    found: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                found.setdefault(n.split(".")[0], []).append(
                    f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_agent_imports_only_its_declared_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_name(r) for r in project["dependencies"]}
    dists = packages_distributions()
    undeclared = {}
    for module, where in _imported(ROOT / "agent").items():
        if module in sys.stdlib_module_names or module == "agent":
            continue
        names = {_name(d) for d in dists.get(module, [module])}
        if not names & declared:
            undeclared[module] = where
    assert not undeclared, (
        "imported by the agent but not in [project] dependencies (only in an extra, or nowhere): "
        f"{undeclared}")


def test_the_check_sees_an_extra_only_library() -> None:
    # orjson is the collector's (an extra): the check above must not let it through.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "orjson" not in {_name(r) for r in project["dependencies"]}
    assert "orjson" in {_name(d) for d in packages_distributions()["orjson"]}
