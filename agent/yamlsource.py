"""Parse YAML into a node tree (with line numbers) for the loaders of config and timetable.

Both loaders walk nodes rather than parsed values so that every problem names its line; this is
the one place that turns PyYAML's failures into those loaders' own error type.
"""

from __future__ import annotations

from collections.abc import Callable

import yaml


def compose(text: str, name: str, what: str,
            error: Callable[[list[str]], Exception]) -> yaml.Node | None:
    """The root node of ``text`` (None when empty); raises ``error([...])`` naming the line."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise error([f"{where}: YAML syntax error: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise error([f"{name}: YAML error: {exc}"]) from None
    except RecursionError:
        raise error([f"{name}: YAML nested too deeply to be {what}"]) from None
