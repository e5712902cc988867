"""Hostile-input fuzzing: one settings-profile mechanism, a per-example hang guard, a tally.

Profiles (chosen by ``CLASSROOM_AGENT_FUZZ``, loaded in tests/conftest.py):

* ``ci`` (default): a few dozen examples per test, so the suite stays quick;
* ``bench``: 10,000 examples per test (``CLASSROOM_AGENT_FUZZ_EXAMPLES`` changes it), no
  example database; ``bench/fuzz.py`` runs it.

Every example runs inside :func:`fuzz_case`, which counts it and interrupts it with :class:`Hang`
after ``HANG_S`` seconds (a SIGALRM timer, repeated each second in case the code under test
swallows the first), so a hang fails the test instead of stalling the run. Hypothesis's own
deadline is off: on a loaded machine it reports slowness as flakiness, the guard reports hangs.
The shared strategies (YAML made of YAML's own syntax, near-valid mutations of a good document,
hostile scalars) live here so that the config and timetable fuzzers use the same ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from agent.commands import COMMANDS
from agent.safetext import InertFormatter

PROFILE_ENV = "CLASSROOM_AGENT_FUZZ"
REPORT_ENV = "CLASSROOM_AGENT_FUZZ_REPORT"
EXAMPLES_ENV = "CLASSROOM_AGENT_FUZZ_EXAMPLES"
#: An example that runs longer than this is a hang.
HANG_S = 10.0
BENCH_EXAMPLES = int(os.environ.get(EXAMPLES_ENV) or 10_000)

_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much,
                              HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=40, **_COMMON)
settings.register_profile("bench", max_examples=BENCH_EXAMPLES, database=None, **_COMMON)


def load_profile() -> str:
    name = os.environ.get(PROFILE_ENV, "ci")
    settings.load_profile(name)
    return name


class Hang(Exception):
    """An example ran for more than HANG_S seconds."""


@dataclass
class Tally:
    cases: int = 0
    failures: int = 0
    slowest_s: float = 0.0
    seconds: float = 0.0
    outcome: str = ""


TALLY: dict[str, Tally] = {}
_current = {"test": "(outside a test)"}


def set_current_test(nodeid: str) -> None:
    _current["test"] = nodeid


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise Hang(f"one example ran for more than {HANG_S:g} s: the input hangs the code")


@contextlib.contextmanager
def fuzz_case() -> Iterator[None]:
    """Run one example: counted, timed, and interrupted if it hangs."""
    tally = TALLY.setdefault(_current["test"], Tally())
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_S, 1.0)
    began = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        tally.cases += 1
        tally.failures += not ok
        tally.slowest_s = max(tally.slowest_s, time.perf_counter() - began)


def note_outcome(nodeid: str, outcome: str, seconds: float) -> None:
    if nodeid in TALLY:
        TALLY[nodeid].outcome, TALLY[nodeid].seconds = outcome, seconds


def write_report() -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        Path(path).write_text(json.dumps({k: asdict(v) for k, v in TALLY.items()}, indent=1))


# -- shared properties -----------------------------------------------------------------------

#: Unicode categories that act on a terminal or a log reader, or hide text (agent/safetext.py).
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def unsafe_chars(text: str, allowed: str = "") -> list[str]:
    """The characters of ``text`` that were not made inert (those in ``allowed`` excepted)."""
    return [ch for ch in text
            if ch not in allowed and unicodedata.category(ch) in UNSAFE_CATEGORIES]


class LogLines(logging.Handler):
    """Every log record of the ``agent`` loggers as the daemon writes it (InertFormatter)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(InertFormatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []
        #: records at ERROR or above: a traceback, or a failure the input caused
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        self.lines.append(line)
        if record.levelno >= logging.ERROR:
            self.errors.append(line)

    def forged(self) -> list[str]:
        """Lines that would print as more than one (tracebacks keep their frames' lines)."""
        return [ln for ln in self.lines if "\n" in ln and "Traceback" not in ln]


@contextlib.contextmanager
def agent_log(*names: str) -> Iterator[LogLines]:
    """What the ``agent`` loggers (and ``names``) write while the block runs."""
    handler = LogLines()
    loggers = [logging.getLogger(n) for n in ("agent", *names)]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


# -- shared strategies ------------------------------------------------------------------------

#: Code points that break naive text handling: NUL and controls, BOM, RTL marks, line and
#: paragraph separators, a lone surrogate, astral characters, CJK.
NASTY_CHARS = ["\x00", "\x07", "\x1b", "\x7f", "\ufeff", "\u202e", "\u200b", "\u2028", "\u2029",
               "\ud800", "\U0001f600", "\U000e0001", "周", "é", "\t", "\r", "\n", "\\"]

_YAML_SYNTAX = ["\n", "\n  ", "\n    ", "\t", " ", ": ", ":", "- ", "-", "? ", "{", "}", "[", "]",
                ", ", "&a ", "*a", "&b ", "*b", "<<: ", "!!int ", "!!str ", "!!float ", "!!map ",
                "!!seq ", "!!binary ", "!!timestamp ", "!!set ", "!!omap ",
                "!!python/object:os.system ", "!!python/name:os.system ", "!foo ", "!<tag:x> ",
                "---\n", "...\n", "%YAML 1.1\n",
                "%TAG ! tag:x,2000:\n", "|\n", ">-\n", "'", '"', "\\", "# ", "~", "null", "true",
                "no", "yes", "on", "0x1F", "0o17", "1_000", "1e309", "-.inf", ".nan", "2026-09-01",
                "08:00", "08:00-08:40", "1:30:00", "=", "@", "`"]


def yaml_text(words: list[str]) -> st.SearchStrategy[str]:
    """Text made of YAML's own syntax, the document's key words and a little noise: it reaches
    the parser's corners (anchors, tags, merge keys, block scalars) far more often than
    random characters do."""
    piece = (st.sampled_from(_YAML_SYNTAX) | st.sampled_from(words)
             | st.sampled_from(NASTY_CHARS) | st.text(max_size=4))
    return st.lists(piece, max_size=60).map("".join)


def hostile_scalars() -> st.SearchStrategy[Any]:
    """Values that sit at the edges of every type: huge and tiny numbers, specials, odd text."""
    return st.one_of(
        st.none(), st.booleans(),
        st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 65535, 65536, 99999]),
        st.integers(),
        st.sampled_from([0.0, -0.0, 1e-320, 1e308, float("inf"), float("-inf"), float("nan")]),
        st.floats(),
        st.text(st.sampled_from(NASTY_CHARS) | st.characters(), max_size=12),
        st.sampled_from(["", " ", "a" * 300, "127.0.0.1:99999", "[::1]:0", "host:65536", ":80",
                         "/dev/null", "/", "/proc/self/mem", "../../etc/passwd", "rtmp://x",
                         "srt://h:1?passphrase=p", "2026-02-30", "25:00", "08:40-08:00"]),
    )


def key_paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of a nested dict/list document, the root excluded."""
    out: list[tuple[Any, ...]] = []
    items = tree.items() if isinstance(tree, dict) else (
        enumerate(tree) if isinstance(tree, list) else [])
    for k, v in items:
        out.append((*prefix, k))
        out.extend(key_paths(v, (*prefix, k)))
    return out


#: "tweak" twice: neighbours of good values find boundary bugs most often.
_MUTATIONS = ("set", "tweak", "tweak", "delete", "rename", "wrap_list", "wrap_map",
              "duplicate_into_list")


def _tweak(draw: st.DrawFn, value: Any) -> Any:
    """A neighbour of a good value: one more digit or character, a sign, a power of ten."""
    if isinstance(value, bool) or value is None:
        return draw(st.sampled_from([not value, 0, 1, "true", "yes"]))
    if isinstance(value, int | float):
        return draw(st.sampled_from([-value, value * 10, value + 1, value - 1, value / 3,
                                     str(value), [value]]))
    if isinstance(value, str):
        extra = draw(st.sampled_from([*"0123456789:/.-_ ", *NASTY_CHARS]) | st.text(max_size=3))
        at = draw(st.integers(0, len(value)))
        return value[:at] + extra + value[at:]
    return value




@st.composite
def near_valid(draw: st.DrawFn, document: dict[str, Any], values: st.SearchStrategy[Any],
               max_mutations: int = 2) -> dict[str, Any]:
    """``document`` (a valid one) with a few mutations: a value replaced by a hostile one, a key
    deleted, renamed (a typo) or its value wrapped in a list or a mapping."""
    tree = json.loads(json.dumps(document, default=str))  # a deep copy of plain data
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = key_paths(tree)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = tree
        for step in path[:-1]:
            parent = parent[step]
        leaf = path[-1]
        op = draw(st.sampled_from(_MUTATIONS))
        if op == "set":
            parent[leaf] = draw(values)
        elif op == "tweak":
            parent[leaf] = _tweak(draw, parent[leaf])
        elif op == "delete":
            del parent[leaf]
        elif op == "rename" and isinstance(parent, dict):
            new = draw(st.sampled_from([f"{leaf}s", str(leaf)[:-1], str(leaf).upper(), "",
                                        f"{leaf} ", "<<"]) | st.text(max_size=6))
            parent[new] = parent.pop(leaf)
        elif op == "wrap_list":
            parent[leaf] = [parent[leaf]]
        elif op == "wrap_map":
            parent[leaf] = {draw(st.text(max_size=4)): parent[leaf]}
        elif op == "duplicate_into_list":
            parent[leaf] = [parent[leaf], parent[leaf]]
    return tree


# -- commands: names, ids and arguments as a stranger on the broker sends them -----------------

#: Short text with the nasty characters and lone surrogates (a JSON "\ud800" escape).
unicode_text = (st.text(st.characters() | st.sampled_from(NASTY_CHARS), min_size=1, max_size=12)
                | st.builds("{}\ud800{}".format, st.text(max_size=4), st.text(max_size=4)))
#: Any JSON value an argument can take, at the edges of every type.
_arg_values = (st.sampled_from(["lecturing", "receiving", "", "x" * 200, "x" * 201, "Maths"])
               | st.integers(-10, 100_000) | st.floats(0, 100_000) | st.booleans() | st.none()
               | st.sampled_from([10, 86400, 86400.0001, 9.999, 2**64, -0.0, 1e308])
               | unicode_text | st.lists(st.integers(), max_size=2)
               | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
command_args = st.dictionaries(
    st.sampled_from(["course", "teacher", "role", "duration_s", "room"]), _arg_values, max_size=5)
#: Command names as topics' last levels and URL paths carry them: allow-listed, random, and made
#: of the characters that break topics, paths and terminals.
command_names = (st.text(max_size=80) | st.sampled_from(sorted(COMMANDS))
                 | st.text(st.sampled_from([*NASTY_CHARS, "/", "+", "#", ".", "a"]), max_size=20))
