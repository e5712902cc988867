"""Parse YAML into a node tree (with line numbers) for the loaders of config and timetable.

Both loaders walk nodes rather than parsed values so that every problem names its line; this is
the one place that turns PyYAML's failures into those loaders' own error type, and that words
what both say about a node (:func:`describe_node`, :func:`unknown_key`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import yaml

from agent.urls import redact_url

_URL_START = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")


def compose(text: str, name: str, what: str,
            error: Callable[[list[str]], Exception]) -> yaml.Node | None:
    """The root node of ``text`` (None when empty); raises ``error([...])`` naming the line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise error([f"{where}: YAML syntax error: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise error([f"{name}: YAML error: {exc}"]) from None
    except RecursionError:
        raise error([f"{name}: YAML nested too deeply to be {what}"]) from None
    bad = _lone_surrogate(root)
    if bad is not None:
        mark = bad.start_mark
        raise error([f"{name}:{mark.line + 1}:{mark.column + 1}: {bad.value[:40]!a} is not "
                     "valid Unicode (a lone surrogate escape such as \\ud800): write the "
                     "character itself"])
    return root


def describe_node(node: yaml.Node) -> str:
    """A YAML node as an error message names it: "a mapping", "a list" or its text."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return shown(node.value)


def shown(value: object, n: int = 80) -> str:
    """A value as a problem echoes it: clipped to ``n`` characters, and a URL without its
    secrets (user info, an RTMP stream key, query values such as an SRT passphrase). Config and
    timetable problems are logged, and a failed reload sends them to the platform
    (``config_reload_failed``)."""
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, str) and "://" in text:
        text = (redact_url(text.strip()) if _URL_START.match(text)
                else "(not shown: it holds a URL)")
    if len(text) > n:
        text = f"{text[:n]}... ({len(text)} characters)"
    return repr(text) if isinstance(value, str) else text


def unknown_key(key: str, known: Iterable[str]) -> str:
    """The problem with a key that is none of ``known`` (listed in the order given), with the
    likeliest meant one first: a typo must never silently fall back to a default."""
    known = list(known)
    import difflib  # only for a mistyped key: a daemon with a good config never loads it

    hint = difflib.get_close_matches(key, known, n=1)
    extra = f" (did you mean '{hint[0]}'?)" if hint else ""
    return f"unknown key{extra}; known keys here: {', '.join(known)}"


def _lone_surrogate(root: yaml.Node | None) -> yaml.ScalarNode | None:
    """The first scalar holding a lone surrogate, which only a ``"\\ud800"`` escape can make:
    such text cannot be written to a file, a log line or a record, so it is the file's error."""
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:  # aliases share nodes; a recursive one loops
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                node.value.encode("utf-8")
            except UnicodeEncodeError:
                return node
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
    return None
