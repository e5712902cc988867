"""YAML into typed, frozen dataclasses: the loader both programs' configs are built on.

Every key is declared once, as a dataclass field: its type, its default and its bounds (in the
field's metadata, see :func:`opt`). The loader walks the YAML node tree (not the parsed dict) so
that every error names the key path and the line it stands on, like Telegraf's fail-fast check.
Unknown keys are errors (a typo must never silently fall back to a default), with a "did you
mean" hint. The agent (agent/config.py) and the collector (collector/config.py) declare their own
dataclasses and share this machinery.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from datetime import date
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from agent.yamlsource import compose, describe_node, shown, unknown_key

T = TypeVar("T")


def meta(
    *, min: float | None = None, max: float | None = None, pattern: str | None = None,
    file: bool = False, doc: str = "", check: Callable[[Any], str | None] | None = None,
    redact: bool = False,
) -> dict[str, Any]:
    """A field's bounds: ``min``/``max`` for numbers, ``pattern`` (explained by ``doc``) for
    strings, ``file`` for paths that must name a readable file, ``check`` for anything else (it
    returns the problem, or None). ``redact``: a value that may hold a secret is never echoed
    in an error."""
    return {"min": min, "max": max, "pattern": pattern, "file": file, "doc": doc, "check": check,
            "redact": redact}


def opt(default: Any, **bounds: Any) -> Any:
    return field(default=default, metadata=meta(**bounds))


def opt_factory(factory: Any, **bounds: Any) -> Any:
    return field(default_factory=factory, metadata=meta(**bounds))


class ConfigError(Exception):
    """One or more problems in a config file; ``str()`` lists each with its key path and line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_file(cls: type[T], path: str | os.PathLike[str]) -> T:
    """Read and validate ``path`` as ``cls``; raise :class:`ConfigError` naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    return load_text(cls, text, name=str(path))


def load_text(cls: type[T], text: str, name: str = "<config>") -> T:
    root = compose(text, name, "a config file", ConfigError)
    loader = _Loader(name)
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
        root = yaml.MappingNode("tag:yaml.org,2002:map", [])
    cfg = loader.build(cls, root, "")
    if loader.problems:
        raise ConfigError(loader.problems)
    return cfg  # type: ignore[no-any-return]


class _Loader:
    """Walks YAML nodes against dataclass fields, collecting every problem it meets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []
        self._scalars = yaml.constructor.SafeConstructor()

    def _err(self, node: yaml.Node | None, key: str, msg: str) -> None:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        self.problems.append(f"{self.name}{line}: {key or '(top level)'}: {msg}")

    def build(self, cls: type, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self._err(node, path, f"expected a mapping of keys, got {describe_node(node)}")
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        given: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            kpath = f"{path}.{key}" if path else str(key)
            if key not in fields:
                self._err(knode, kpath, unknown_key(str(key), sorted(fields)))
            elif key in given:
                self._err(knode, kpath, "duplicate key")
            else:
                given[key] = (knode, vnode)
        values: dict[str, Any] = {}
        for fname, f in fields.items():
            fpath = f"{path}.{fname}" if path else fname
            if fname not in given:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self._err(node if node.value else None, fpath, "required key is missing")
                continue
            value = self._value(hints[fname], given[fname][1], fpath, f.metadata)
            if value is not _INVALID:
                values[fname] = value
        try:
            return cls(**values)
        except TypeError:  # a required value was missing or invalid: already reported
            return None

    def _value(self, tp: Any, node: yaml.Node, path: str, meta: Mapping[str, Any]) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            built = self.build(tp, node, path)  # type: ignore[arg-type]
            return _INVALID if built is None else built
        if origin in (types.UnionType, typing.Union):
            if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                return None
            (inner,) = [a for a in args if a is not type(None)]
            return self._value(inner, node, path, meta)
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                self._err(node, path, f"expected a list, got {describe_node(node)}")
                return _INVALID
            items = [
                self._value(args[0], n, f"{path}[{i}]", meta) for i, n in enumerate(node.value)
            ]
            return _INVALID if _INVALID in items else items
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                self._err(node, path, f"expected a mapping, got {describe_node(node)}")
                return _INVALID
            out = {}
            for knode, vnode in node.value:
                key = self._value(args[0], knode, path, {})
                val = self._value(args[1], vnode, f"{path}.{key}", {})
                if key is _INVALID or val is _INVALID:
                    return _INVALID
                out[key] = val
            return out
        if not isinstance(node, yaml.ScalarNode):
            self._err(node, path, f"expected {_type_name(tp)}, got {describe_node(node)}")
            return _INVALID
        try:
            raw = self._scalars.construct_object(node)
        except Exception as exc:  # a bad explicit tag: !!int abc, !!timestamp x, !python/...
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self._err(node, path, f"cannot read {shown(node.value)} as {node.tag}: {problem}")
            return _INVALID
        value = self._coerce(tp, raw, node, path)
        if value is not _INVALID:
            self._check(value, node, path, meta)
        return value

    def _coerce(self, tp: Any, raw: Any, node: yaml.Node, path: str) -> Any:
        if typing.get_origin(tp) is Literal:
            choices = typing.get_args(tp)
            if str(raw) in choices and raw is not None:
                return str(raw)
            listed = ", ".join(repr(c) for c in choices)
            self._err(node, path, f"must be one of {listed}, got {shown(raw)}")
            return _INVALID
        if tp is str and isinstance(raw, int | float | date) and not isinstance(raw, bool):
            return node.value  # the text as written: 2026-10-01, or 17:00 (YAML 1.1's 1020)
        ok = (
            (tp is bool and isinstance(raw, bool))
            or (tp is int and isinstance(raw, int) and not isinstance(raw, bool))
            or (tp is float and isinstance(raw, int | float) and not isinstance(raw, bool))
            or (tp is str and isinstance(raw, str | int | float) and not isinstance(raw, bool))
        )
        if not ok:
            self._err(node, path, f"expected {_type_name(tp)}, got {shown(raw)}")
            return _INVALID
        return tp(raw)

    def _check(self, value: Any, node: yaml.Node, path: str, meta: Mapping[str, Any]) -> None:
        lo, hi, pattern = meta.get("min"), meta.get("max"), meta.get("pattern")
        if isinstance(value, float) and math.isnan(value):
            self._err(node, path, "must be a number, got .nan")
            return
        if lo is not None and value < lo:
            self._err(node, path, f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            self._err(node, path, f"must be at most {hi}, got {value}")
        if pattern and isinstance(value, str) and not re.match(pattern, value):
            rule = meta.get("doc") or f"must match {pattern}"
            echo = "(not shown)" if meta.get("redact") else shown(value)
            self._err(node, path, f"invalid value {echo}: {rule}")
        elif meta.get("check") is not None:
            problem = meta["check"](value)
            if problem:
                echo = "(not shown)" if meta.get("redact") else shown(value)
                self._err(node, path, f"invalid value {echo}: {problem}")
        if meta.get("file") and isinstance(value, str):
            self._check_file(value, node, path)

    def _check_file(self, value: str, node: yaml.Node, path: str) -> None:
        p = Path(value)
        try:  # a name too long for the file system, a NUL byte, ... are the file's problems
            is_file = p.is_file()
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            self._err(node, path, f"file {clip(value)!r} cannot be used: {why}")
            return
        if not is_file:
            self._err(node, path, f"file {value} does not exist or is not a regular file")
        elif not os.access(p, os.R_OK):
            self._err(node, path, f"file {value} is not readable by this user")


_INVALID = object()


def clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def _type_name(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def read_secret(path: str | None, env: str) -> str | None:
    """A secret from its file (trailing newline stripped) or, failing that, the environment."""
    if path:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    return os.environ.get(env) or None


def describe_keys(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """Every key as (path, type, default): keeps docs and the example config honest in tests."""
    out: list[tuple[str, str, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(describe_keys(tp, path + "."))  # type: ignore[arg-type]
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append((path, str(tp), default))
    return out
