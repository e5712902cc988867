"""The import rules between the agent's parts, checked on the source (an ``ast`` walk).

They keep data flowing one way and the heavy parts apart: telemetry must run without the media
pipeline or the MQTT transport loaded, the media worker must not drag the transport into its
process, the configuration is the bottom layer, and the CLI is the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[1] / "agent"

#: part -> the modules (prefixes) that belong to it.
PARTS = {
    "telemetry": ("agent.telemetry",),
    "media": ("agent.media",),
    "transport": ("agent.publisher",),
    "config": ("agent.config", "agent.typedconfig", "agent.yamlsource", "agent.urls"),
    "cli": ("agent.cli", "agent.__main__"),
}
#: (part, parts it must never import).
RULES = [
    ("telemetry", {"media", "transport"}),
    ("media", {"transport"}),
    ("config", {"telemetry", "media", "transport", "cli", "other"}),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(AGENT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    for part, prefixes in PARTS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return part
    return "other" if module == "agent" or module.startswith("agent.") else "outside"


def imports(path: Path) -> list[tuple[int, str]]:
    """Every agent module ``path`` imports, anywhere in the file (inside functions and
    ``TYPE_CHECKING`` blocks too: a type-only import still couples the parts)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            # `from agent import publisher` imports the module agent.publisher.
            found += [(node.lineno, f"{mod}.{a.name}" if mod == "agent" else mod)
                      for a in node.names]
    return [(n, m) for n, m in found if m == "agent" or m.startswith("agent.")]


SOURCES = sorted(AGENT.rglob("*.py"))


def violations() -> list[str]:
    out = []
    for path in SOURCES:
        me = module_name(path)
        mine = part_of(me)
        for line, target in imports(path):
            theirs = part_of(target)
            if theirs == mine:
                continue
            for part, forbidden in RULES:
                if mine == part and theirs in forbidden:
                    out.append(f"{path.relative_to(AGENT.parent)}:{line}: {part} imports "
                               f"{target} ({theirs})")
            if theirs == "cli":
                out.append(f"{path.relative_to(AGENT.parent)}:{line}: imports the CLI "
                           f"({target}); nothing may")
    return out


def test_the_import_rules_hold() -> None:
    assert violations() == []


@pytest.mark.parametrize("source, target, rule", [
    ("agent/telemetry/agent_self.py", "from agent.publisher import Publisher", "transport"),
    ("agent/telemetry/system.py", "from agent.media import devices", "media"),
    ("agent/media/worker.py", "from agent import publisher", "transport"),
    ("agent/config.py", "from agent.records import Record", "other"),
    ("agent/outbox.py", "from agent.cli import main", "the CLI"),
    ("agent/telemetry/usage.py", "from ..publisher import Publisher", "transport"),
])
def test_the_check_catches_each_kind_of_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   source: str, target: str, rule: str) -> None:
    """Guard against a vacuous walk: one forbidden import added to a copy of the tree."""
    copy = tmp_path / "agent"
    for path in SOURCES:
        dest = copy / path.relative_to(AGENT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(path.read_text())
    victim = tmp_path / source
    victim.write_text(victim.read_text() + f"\n\ndef _late() -> None:\n    {target}\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "AGENT", copy)
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "SOURCES",
                        sorted(copy.rglob("*.py")))
    found = violations()
    assert len(found) == 1 and found[0].startswith(source) and rule in found[0], found
