"""Technician-facing text in English and Chinese (zh-CN): gettext catalogs read without msgfmt.

The English text in the code is the msgid; ``agent/locale/<lang>.po`` holds the translations
and is read at run time by the small reader below (no compiled ``.mo``, no ``msgfmt`` on the
classroom PC). Mark text with :func:`_` where it is shown, or :func:`N_` where it is defined and
translated later (check titles, the warning catalogue's templates are taken whole);
``tests/test_i18n.py`` finds every marked string and every catalogue template and fails when
one has no translation.

The language: ``--lang`` on the command line, else the system locale as gettext reads it
(``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``, ``LANG``); anything Chinese picks ``zh_CN``,
anything else English.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
LANGUAGES = ("en", "zh_CN")
Translate = Callable[[str], str]

_current = "en"


def pick(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The language to use: ``explicit`` if given, else the first locale variable set."""
    env = os.environ if env is None else env
    for value in (explicit, env.get("LANGUAGE", "").split(":")[0], env.get("LC_ALL"),
                  env.get("LC_MESSAGES"), env.get("LANG")):
        if value:
            return normalize(value)
    return "en"


def normalize(value: str) -> str:
    """``zh``, ``zh_CN.UTF-8``, ``zh-Hans``, ``zh-cn`` -> ``zh_CN``; everything else -> ``en``."""
    return "zh_CN" if value.strip().lower().replace("-", "_").startswith("zh") else "en"


def use(lang: str) -> None:
    """Set the language of :func:`_` for this process (the CLI calls it once)."""
    global _current
    _current = normalize(lang)


def current() -> str:
    return _current


def _(msgid: str) -> str:
    """``msgid`` in the current language (itself when there is no translation)."""
    return catalog(_current).get(msgid, msgid) if _current != "en" else msgid


def N_(msgid: str) -> str:  # gettext's name for "mark now, translate later"
    return msgid


def translator(lang: str) -> Translate:
    """A ``translate`` function for one language (for text rendered for someone else, e.g. the
    status page's JSON or a ``--lang`` given per call)."""
    table = catalog(normalize(lang))
    return lambda msgid: table.get(msgid, msgid)


@cache
def catalog(lang: str) -> dict[str, str]:
    """msgid -> msgstr of ``agent/locale/<lang>.po`` (empty for English or a missing file).
    Fuzzy and empty translations are left out: the English then shows, never a wrong text."""
    if lang == "en":
        return {}
    path = LOCALE_DIR / f"{lang}.po"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    return {e.msgid: e.msgstr for e in parse_po(text) if e.msgid and e.msgstr and not e.fuzzy}


class PoEntry:
    __slots__ = ("flags", "fuzzy", "line", "msgid", "msgstr")

    def __init__(self, line: int) -> None:
        self.line = line
        self.msgid = ""
        self.msgstr = ""
        self.flags: set[str] = set()
        self.fuzzy = False


def parse_po(text: str) -> list[PoEntry]:
    """Entries of a ``.po`` file (msgid, msgstr, flags). Plural forms and contexts are not used
    by this project and are refused, so a catalog cannot mean more than this reader reads."""
    entries: list[PoEntry] = []
    flags: set[str] = set()
    entry: PoEntry | None = None
    field = ""
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#,"):
            flags |= {f.strip() for f in line[2:].split(",") if f.strip()}
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith(("msgctxt", "msgid_plural", "msgstr[")):
            raise ValueError(f"line {n}: {line.split()[0]} is not supported here")
        if line.startswith("msgid "):
            entry = PoEntry(n)
            entry.flags, entry.fuzzy, flags = flags, "fuzzy" in flags, set()
            entries.append(entry)
            field, rest = "msgid", line[6:]
        elif line.startswith("msgstr "):
            if entry is None or field != "msgid":
                raise ValueError(f"line {n}: msgstr without msgid")
            field, rest = "msgstr", line[7:]
        elif line.startswith('"') and entry is not None:
            rest = line
        else:
            raise ValueError(f"line {n}: cannot read {line[:40]!r}")
        setattr(entry, field, getattr(entry, field) + _unquote(rest, n))
    return entries


def _unquote(s: str, n: int) -> str:
    s = s.strip()
    if len(s) < 2 or not (s.startswith('"') and s.endswith('"')):
        raise ValueError(f"line {n}: expected a quoted string, got {s[:40]!r}")
    try:
        value = ast.literal_eval(s)
    except (ValueError, SyntaxError):
        raise ValueError(f"line {n}: bad escape in {s[:40]!r}") from None
    if not isinstance(value, str):
        raise ValueError(f"line {n}: expected a string")
    return value


# -- for maintainers and the tests: every msgid the program can show ---------------------------

#: Calls whose first argument (a string literal) is a msgid (``tr`` is a ``translate`` passed in,
#: e.g. for the status page's language).
MARKERS = ("_", "N_", "tr")


def msgids(root: Path = LOCALE_DIR.parent) -> dict[str, str]:
    """msgid -> the file that first uses it (no line numbers: the catalog must not change with
    every edit): every literal marked with ``_``/``N_``
    under ``agent/``, every template of the warning catalogue, and every ``t("...")`` of the
    status page's script (agent/status/page.js)."""
    from agent.status import warnings
    from agent.status.warnings import CATALOGUE

    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in MARKERS and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                found.setdefault(node.args[0].value, str(path.relative_to(root.parent)))
    for code, t in CATALOGUE.items():
        for text in (t.cause, t.next_step):
            if text:
                found.setdefault(text, f"agent/status/warnings.py:{code}")
    found.setdefault(warnings.NEXT_STEP, "agent/status/warnings.py:render")
    page = root / "status" / "page.js"
    if page.exists():
        for line in page.read_text(encoding="utf-8").splitlines():
            for m in re.finditer(r'\bt\("((?:[^"\\]|\\.)*)"\)', line):
                found.setdefault(ast.literal_eval(f'"{m.group(1)}"'), "agent/status/page.js")
    return found
