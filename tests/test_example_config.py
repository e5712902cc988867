"""config/agent.example.yaml documents every key the code knows, with the code's defaults."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml

from agent.config import describe_keys, load
from tests.support import REPO

EXAMPLE = REPO / "config" / "agent.example.yaml"
#: Keys that are commented out in the example because the files they name must exist.
COMMENTED = {"mqtt.tls.ca_file", "mqtt.tls.cert_file", "mqtt.tls.key_file", "lessons.timetable",
             "upload.access_key_file", "upload.secret_key_file", "upload.tls.ca_file"}
_COMMENTED_KEY = re.compile(r"^(\s*)# ([a-z_]+: \S.*)$")


def _uncommented() -> list[str]:
    """The example's lines with commented-out keys (``# key: value``) turned into keys."""
    return [_COMMENTED_KEY.sub(r"\1\2", line) for line in EXAMPLE.read_text().splitlines()]


def _key_lines(lines: list[str]) -> dict[str, int]:
    """Dotted key path -> index of its line, from indentation (the example is block style)."""
    out: dict[str, int] = {}
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([a-z_]+):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        out[".".join(k for _, k in stack)] = i
    return out


def _leaf(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


def test_example_is_a_valid_config() -> None:
    cfg = load(EXAMPLE)
    assert cfg.device.id == "room-101" and cfg.device.school == "school-a"
    assert not cfg.mqtt.tls.active, "TLS files must stay commented out (they must exist)"


def test_every_key_is_in_the_example_in_code_order() -> None:
    keys = [path for path, _t, _d in describe_keys()]
    where = _key_lines(_uncommented())
    missing = [k for k in keys if k not in where]
    assert not missing, f"keys missing from {EXAMPLE.name}: {missing}"
    order = sorted(keys, key=lambda k: where[k])
    assert order == keys, "the example must list keys in the order the code declares them"
    commented = _key_lines(EXAMPLE.read_text().splitlines())
    assert {k for k in keys if k not in commented} == COMMENTED


def test_example_has_no_key_the_code_does_not_know() -> None:
    load(EXAMPLE)  # unknown live keys would fail here; check the commented ones as well
    tree = yaml.safe_load("\n".join(_uncommented()))
    known = {path for path, _t, _d in describe_keys()}

    def walk(node: Any, prefix: str) -> list[str]:
        if prefix in known or not isinstance(node, dict):
            return [] if prefix in known else [prefix]
        return [p for k, v in node.items() for p in walk(v, f"{prefix}.{k}" if prefix else k)]

    assert walk(tree, "") == []


def test_example_values_are_the_defaults() -> None:
    tree = yaml.safe_load(EXAMPLE.read_text())
    for path, _t, default in describe_keys():
        if default is dataclasses.MISSING or path in COMMENTED:
            continue
        value = _leaf(tree, path)
        assert value == default, f"{path}: example has {value!r}, the default is {default!r}"


def test_every_key_has_a_comment_with_its_default() -> None:
    lines = _uncommented()
    raw = EXAMPLE.read_text().splitlines()
    for path, i in _key_lines(lines).items():
        if path not in {p for p, _t, _d in describe_keys()}:
            continue
        block = []
        j = i - 1
        while j >= 0 and raw[j].lstrip().startswith("#") and not _COMMENTED_KEY.match(raw[j]):
            block.append(raw[j])
            j -= 1
        text = " ".join(block)
        assert block, f"{path} has no comment above it"
        assert "Default" in text or "Required" in text, f"{path}: comment names no default"
