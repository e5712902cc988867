"""The YAML timetable a school secretary writes, one file per terminal (format:
docs/timetable.md): a period grid, a weekly pattern and the exceptions to it.

The reader walks the YAML node tree, like the config loader, so every problem names the file,
the line and the key path; it never constructs Python objects from tags and never lets anything
but :class:`TimetableError` out. Clock times are read from the raw scalar text, because YAML 1.1
reads an unquoted ``8:40`` as the integer 520. What it reads becomes a
:class:`~agent.lessons.timetable_term.TermSpec`, expanded over the term into a
:class:`~agent.lessons.timetable.Timetable`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from datetime import date, time
from pathlib import Path

import yaml

from agent.lessons.timetable import (
    MAX_FILE_BYTES,
    ROLES,
    Timetable,
    TimetableError,
    course_code,
    read_file,
    zone,
)
from agent.lessons.timetable_term import (
    MAX_LESSONS_PER_DAY,
    PERIOD,
    WEEKDAY_NAMES,
    Entry,
    Expander,
    Grids,
    Move,
    Override,
    Slot,
    TermSpec,
    find_slot,
    parse_range,
)
from agent.urls import SINK_NAME_RE, SINK_NAME_RULE, SINK_RULE, SINK_URL_RE
from agent.yamlsource import compose, describe_node, unknown_key

MAX_TERM_DAYS = 731

_CODE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_DATE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})$")
_NULL = "tag:yaml.org,2002:null"

_WEEKDAYS: dict[str, int] = {}
for _i, _n in enumerate(WEEKDAY_NAMES):
    _cn = "一二三四五六日"[_i]
    _WEEKDAYS.update({_n: _i, _n[:3]: _i, str(_i + 1): _i, f"周{_cn}": _i, f"星期{_cn}": _i})
_WEEKDAYS.update({"周天": 6, "星期天": 6})


def load_timetable(path: Path | str, tz: str) -> Timetable:
    """Read, validate and expand a YAML timetable; raise TimetableError naming every problem."""
    path = Path(path)
    raw = read_file(path, MAX_FILE_BYTES)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TimetableError([f"{path}: not UTF-8 text: {exc}"]) from None
    timetable = loads_timetable(text, tz, name=str(path))
    timetable.sha256 = hashlib.sha256(raw).hexdigest()
    return timetable


def loads_timetable(text: str, tz: str, name: str = "<timetable>") -> Timetable:
    zi = zone(tz)
    root = compose(text, name, "a timetable", TimetableError)
    reader = _Reader(name)
    spec = _parse(reader, root)
    if spec is None or reader.problems:
        raise TimetableError(reader.problems or [f"{name}: not a timetable"])
    days = Expander(reader, spec, zi).run()
    if reader.problems:
        raise TimetableError(reader.problems)
    return Timetable(days, zi, spec.name)


# -- reading the file ------------------------------------------------------------------------------


class _Reader:
    """Reads YAML nodes, collecting ``file:line: key: message`` problems instead of raising."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []

    def err(self, node: yaml.Node | int | None, path: str, msg: str) -> None:
        if isinstance(node, yaml.Node):
            line = f":{node.start_mark.line + 1}"
        else:
            line = f":{node}" if node else ""
        self.problems.append(f"{self.name}{line}: {path or '(top level)'}: {msg}")

    def mapping(
        self, node: yaml.Node, path: str, known: Iterable[str], required: Iterable[str] = ()
    ) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.err(node, path, f"expected a mapping of keys, got {describe_node(node)}")
            return None
        known = list(known)
        out: dict[str, yaml.Node] = {}
        for knode, vnode in node.value:
            key = self.key(knode, path)
            if key is None:
                continue
            kpath = f"{path}.{key}" if path else key
            if key not in known:
                self.err(knode, kpath, unknown_key(key, known))
            elif key in out:
                self.err(knode, kpath, "duplicate key")
            else:
                out[key] = vnode
        for key in required:
            if key not in out:
                self.err(node, f"{path}.{key}" if path else key, "required key is missing")
        return out

    def key(self, node: yaml.Node, path: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.value == "":
            self.err(node, path, f"keys must be plain names, got {describe_node(node)}")
            return None
        return node.value

    def seq(self, node: yaml.Node, path: str) -> list[yaml.Node] | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, path, f"expected a list, got {describe_node(node)}")
            return None
        return list(node.value)

    def text(self, node: yaml.Node, path: str, *, required: bool = True) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.err(node, path, f"expected a single value, got {describe_node(node)}")
            return None
        value = node.value.strip()
        if node.tag == _NULL or not value:
            if required:
                self.err(node, path, "must not be empty")
            return None
        return value

    def choice(self, node: yaml.Node, path: str, choices: Sequence[str]) -> str | None:
        value = self.text(node, path)
        if value is not None and value not in choices:
            self.err(node, path, f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return value

    def date(self, node: yaml.Node, path: str) -> date | None:
        value = self.text(node, path)
        if value is None:
            return None
        m = _DATE.match(value)
        try:
            if m is None:
                raise ValueError("write it as YYYY-MM-DD, e.g. 2026-09-01")
            return date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError as exc:
            self.err(node, path, f"invalid date {value!r}: {exc}")
            return None

    def weekday(self, node: yaml.Node, path: str) -> int | None:
        value = self.text(node, path)
        if value is None:
            return None
        day = _WEEKDAYS.get(value.lower())
        if day is None:
            self.err(node, path, f"unknown weekday {value!r}; write monday .. sunday "
                                 "(mon .. sun, 1 .. 7 or 周一 .. 周日 also work)")
        return day

    def time_range(self, node: yaml.Node, path: str) -> tuple[time, time] | None:
        value = self.text(node, path)
        if value is None:
            return None
        parsed = parse_range(value)
        if isinstance(parsed, str):
            self.err(node, path, parsed)
            return None
        return parsed


_TOP = ("name", "term", "grids", "default_grid", "weekly", "holidays", "make_up_days", "overrides")
_LESSON = ("period", "time", "grid", "course", "teacher", "role", "live", "code", "note")


def _parse(r: _Reader, root: yaml.Node | None) -> TermSpec | None:
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
        r.err(None, "(top level)", "the file is empty; see docs/timetable.md")
        return None
    top = r.mapping(root, "", _TOP, required=("term", "grids"))
    if top is None:
        return None
    name = r.text(top["name"], "name", required=False) if "name" in top else None
    term = _parse_term(r, top.get("term"))
    grids = _parse_grids(r, top.get("grids"))
    default_grid = None
    if "default_grid" in top:
        default_grid = r.text(top["default_grid"], "default_grid")
        if default_grid is not None and default_grid not in grids:
            r.err(top["default_grid"], "default_grid",
                  f"no grid named {default_grid!r}; grids: {', '.join(grids) or '(none)'}")
            default_grid = None
    elif len(grids) == 1:
        default_grid = next(iter(grids))
    ctx = _LessonParser(r, grids, default_grid)
    weekly = _parse_weekly(r, ctx, top.get("weekly"))
    holidays = _parse_holidays(r, top.get("holidays"))
    make_up, make_up_lines = _parse_make_up(r, top.get("make_up_days"))
    overrides = _parse_overrides(r, ctx, top.get("overrides"))
    if term is None:
        return None
    return TermSpec(name or "", term, grids, default_grid, weekly, holidays, make_up, overrides,
                 make_up_lines)


def _parse_term(r: _Reader, node: yaml.Node | None) -> tuple[date, date] | None:
    if node is None:
        return None
    m = r.mapping(node, "term", ("start", "end", "name"), required=("start", "end"))
    if m is None or "start" not in m or "end" not in m:
        return None
    if "name" in m:
        r.text(m["name"], "term.name", required=False)
    start, end = r.date(m["start"], "term.start"), r.date(m["end"], "term.end")
    if start is None or end is None:
        return None
    if end < start:
        r.err(m["end"], "term.end", f"the term ends ({end}) before it starts ({start})")
        return None
    if (end - start).days > MAX_TERM_DAYS:
        r.err(m["end"], "term.end", f"a term longer than {MAX_TERM_DAYS} days ({start} .. {end}) "
                                    "is surely a typo in a year")
        return None
    return start, end


def _parse_grids(r: _Reader, node: yaml.Node | None) -> Grids:
    grids: Grids = {}
    if node is None:
        return grids
    if not isinstance(node, yaml.MappingNode) or not node.value:
        r.err(node, "grids", "expected a mapping of grid names to periods, e.g. "
                             "grids: {main: {p1: 08:00-08:40}}")
        return grids
    for knode, vnode in node.value:
        gname = r.key(knode, "grids")
        if gname is None:
            continue
        path = f"grids.{gname}"
        if not PERIOD.match(gname):
            r.err(knode, path, "a grid name is 1-16 letters, digits or '_' (it goes in lesson ids)")
            continue
        if gname in grids:
            r.err(knode, path, "duplicate grid")
            continue
        periods: dict[str, tuple[time, time]] = {}
        if not isinstance(vnode, yaml.MappingNode) or not vnode.value:
            r.err(vnode, path, "expected a mapping of periods, e.g. p1: 08:00-08:40")
        else:
            for pk, pv in vnode.value:
                pname = r.key(pk, path)
                if pname is None:
                    continue
                ppath = f"{path}.{pname}"
                if not PERIOD.match(pname):
                    r.err(pk, ppath, "a period name is 1-16 letters, digits or '_', e.g. p1")
                elif pname in periods:
                    r.err(pk, ppath, "duplicate period")
                else:
                    span = r.time_range(pv, ppath)
                    if span is not None:
                        periods[pname] = span
        grids[gname] = periods
    return grids


class _LessonParser:
    """Parses one lesson entry (weekly or added by an override) against the grids."""

    def __init__(self, r: _Reader, grids: Grids, default_grid: str | None) -> None:
        self.r, self.grids, self.default_grid = r, grids, default_grid

    def slot(self, ref: str, grid: str | None, node: yaml.Node, path: str) -> Slot | None:
        """A period name of ``grid`` or an explicit ``HH:MM-HH:MM``."""
        slot = find_slot(ref, grid, self.grids, self.default_grid)
        if isinstance(slot, str):
            self.r.err(node, path, slot)
            return None
        return slot

    def entry(self, node: yaml.Node, path: str, *, weekly: bool) -> Entry | None:
        r = self.r
        known = (*_LESSON, "weeks") if weekly else _LESSON
        m = r.mapping(node, path, known, required=("course",))
        if m is None:
            return None
        grid = r.text(m["grid"], f"{path}.grid") if "grid" in m else None
        if grid is not None and grid not in self.grids:
            r.err(m["grid"], f"{path}.grid",
                  f"no grid named {grid!r}; grids: {', '.join(self.grids) or '(none)'}")
            return None
        slot = None
        if ("period" in m) == ("time" in m):
            r.err(node, path, "give either period (e.g. p1) or time (e.g. 15:40-16:20)")
        elif "period" in m:
            ref = r.text(m["period"], f"{path}.period")
            slot = self.slot(ref, grid, m["period"], f"{path}.period") if ref else None
        else:
            span = r.time_range(m["time"], f"{path}.time")
            if span is not None:
                slot = Slot(span[0].strftime("%H%M"), "", *span)
        course = r.text(m["course"], f"{path}.course") if "course" in m else None
        teacher = r.text(m["teacher"], f"{path}.teacher", required=False) if "teacher" in m else ""
        role = r.choice(m["role"], f"{path}.role", ROLES) if "role" in m else "lecturing"
        weeks = r.choice(m["weeks"], f"{path}.weeks", ("all", "odd", "even")) if "weeks" in m \
            else "all"
        if "note" in m:
            r.text(m["note"], f"{path}.note", required=False)
        code = None
        if "code" in m:
            code = r.text(m["code"], f"{path}.code")
            if code is not None and not _CODE.match(code):
                r.err(m["code"], f"{path}.code",
                      "a course code is 1-32 lowercase letters, digits or '-', e.g. math")
                code = None
        live = self.live(m["live"], f"{path}.live") if "live" in m else (None, ())
        if slot is None or course is None or role is None or weeks is None or live is False:
            return None
        urls, names = live
        return Entry(slot, grid, course, teacher or "", role, urls, names,
                      code or course_code(course), weeks, node.start_mark.line + 1, path)

    def live(self, node: yaml.Node, path: str) -> tuple[tuple[str, ...] | None, tuple[str, ...]] \
            | bool:
        """URLs and names; ``(None, ())`` = use media.live; False = invalid (reported)."""
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
            return None, ()
        items = self.r.seq(node, path)
        if items is None:
            return False
        urls: list[str] = []
        names: list[str] = []
        ok = True
        for i, item in enumerate(items):
            ipath = f"{path}[{i}]"
            if isinstance(item, yaml.MappingNode):
                m = self.r.mapping(item, ipath, ("url", "name"), required=("url",))
                if m is None or "url" not in m:
                    ok = False
                    continue
                url = self.r.text(m["url"], f"{ipath}.url")
                url_node = m["url"]
                name = self.r.text(m["name"], f"{ipath}.name") if "name" in m else ""
                if name and not SINK_NAME_RE.match(name):
                    self.r.err(m["name"], f"{ipath}.name", SINK_NAME_RULE)
                    ok = False
                elif name and name in names:
                    self.r.err(m["name"], f"{ipath}.name", f"duplicate sink name {name!r}")
                    ok = False
            else:
                url, url_node, name = self.r.text(item, ipath), item, ""
            if url is None:
                ok = False
            elif not SINK_URL_RE.match(url):
                self.r.err(url_node, ipath if url_node is item else f"{ipath}.url",
                           f"expected {SINK_RULE}")
                ok = False
            else:
                urls.append(url)
                names.append(name or "")
        return (tuple(urls), tuple(names)) if ok else False


def _parse_weekly(r: _Reader, ctx: _LessonParser, node: yaml.Node | None) \
        -> dict[int, tuple[Entry, ...]]:
    weekly: dict[int, tuple[Entry, ...]] = {}
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
        return weekly
    if not isinstance(node, yaml.MappingNode):
        r.err(node, "weekly",
              f"expected a mapping of weekdays to lessons, got {describe_node(node)}")
        return weekly
    seen: dict[int, int] = {}
    for knode, vnode in node.value:
        day = r.weekday(knode, "weekly")
        if day is None:
            continue
        path = f"weekly.{knode.value}"
        if day in seen:
            r.err(knode, path, f"{WEEKDAY_NAMES[day]} is already listed at line {seen[day]}")
            continue
        seen[day] = knode.start_mark.line + 1
        items = r.seq(vnode, path)
        if items is None:
            continue
        if len(items) > 2 * MAX_LESSONS_PER_DAY:
            r.err(vnode, path, f"more than {2 * MAX_LESSONS_PER_DAY} lessons on one weekday")
            continue
        entries = [ctx.entry(item, f"{path}[{i}]", weekly=True) for i, item in enumerate(items)]
        weekly[day] = tuple(e for e in entries if e is not None)
    return weekly


def _parse_holidays(r: _Reader, node: yaml.Node | None) -> tuple[tuple[date, date], ...]:
    items = r.seq(node, "holidays") if node is not None else []
    out: list[tuple[date, date]] = []
    for i, item in enumerate(items or []):
        path = f"holidays[{i}]"
        m = r.mapping(item, path, ("date", "from", "to", "name"))
        if m is None:
            continue
        if "name" in m:
            r.text(m["name"], f"{path}.name", required=False)
        if "date" in m and not ({"from", "to"} & m.keys()):
            day = r.date(m["date"], f"{path}.date")
            if day is not None:
                out.append((day, day))
        elif "from" in m and "to" in m and "date" not in m:
            first, last = r.date(m["from"], f"{path}.from"), r.date(m["to"], f"{path}.to")
            if first is None or last is None:
                continue
            if last < first:
                r.err(m["to"], f"{path}.to", f"the holiday ends ({last}) before it starts "
                                             f"({first})")
            elif (last - first).days > 366:
                r.err(m["to"], f"{path}.to", "a holiday longer than a year is surely a typo")
            else:
                out.append((first, last))
        else:
            r.err(item, path, "give either date (one day) or from and to (a range, inclusive)")
    return tuple(out)


def _parse_make_up(r: _Reader, node: yaml.Node | None) -> tuple[dict[date, int], dict[date, int]]:
    items = r.seq(node, "make_up_days") if node is not None else []
    out: dict[date, int] = {}
    lines: dict[date, int] = {}
    for i, item in enumerate(items or []):
        path = f"make_up_days[{i}]"
        m = r.mapping(item, path, ("date", "follows", "name"), required=("date", "follows"))
        if m is None or "date" not in m or "follows" not in m:
            continue
        if "name" in m:
            r.text(m["name"], f"{path}.name", required=False)
        day, follows = r.date(m["date"], f"{path}.date"), r.weekday(m["follows"],
                                                                    f"{path}.follows")
        if day is None or follows is None:
            continue
        if day in out:
            r.err(m["date"], f"{path}.date", f"{day} is already a make-up day at line {lines[day]}")
            continue
        out[day], lines[day] = follows, item.start_mark.line + 1
    return out, lines


def _parse_overrides(r: _Reader, ctx: _LessonParser, node: yaml.Node | None) \
        -> tuple[Override, ...]:
    items = r.seq(node, "overrides") if node is not None else []
    out: list[Override] = []
    lines: dict[date, int] = {}
    for i, item in enumerate(items or []):
        path = f"overrides[{i}]"
        m = r.mapping(item, path, ("date", "cancel", "move", "add", "note"), required=("date",))
        if m is None or "date" not in m:
            continue
        if "note" in m:
            r.text(m["note"], f"{path}.note", required=False)
        day = r.date(m["date"], f"{path}.date")
        cancel = _parse_cancel(r, m["cancel"], f"{path}.cancel") if "cancel" in m else ()
        moves = _parse_moves(r, m["move"], f"{path}.move") if "move" in m else ()
        adds: list[Entry] = []
        add_nodes = (r.seq(m["add"], f"{path}.add") or []) if "add" in m else []
        for j, anode in enumerate(add_nodes):
            entry = ctx.entry(anode, f"{path}.add[{j}]", weekly=False)
            if entry is not None:
                adds.append(entry)
        if day is None:
            continue
        if day in lines:
            r.err(m["date"], f"{path}.date", f"{day} already has an override at line "
                                             f"{lines[day]}; put all changes of a day in one entry")
            continue
        lines[day] = item.start_mark.line + 1
        out.append(Override(day, cancel, moves, tuple(adds), lines[day], path))
    return tuple(out)


def _parse_cancel(r: _Reader, node: yaml.Node, path: str) -> tuple[tuple[str, int, str], ...]:
    if isinstance(node, yaml.ScalarNode) and node.tag != _NULL:
        value = r.text(node, path)
        if value == "all":
            return (("all", node.start_mark.line + 1, path),)
        r.err(node, path, "expected all (the whole day) or a list of periods or start times, "
                          "e.g. [p1, '15:40']")
        return ()
    out = []
    for i, item in enumerate(r.seq(node, path) or []):
        value = r.text(item, f"{path}[{i}]")
        if value is not None:
            out.append((value, item.start_mark.line + 1, f"{path}[{i}]"))
    return tuple(out)


def _parse_moves(r: _Reader, node: yaml.Node, path: str) -> tuple[Move, ...]:
    out = []
    for i, item in enumerate(r.seq(node, path) or []):
        ipath = f"{path}[{i}]"
        m = r.mapping(item, ipath, ("from", "to", "to_date"), required=("from", "to"))
        if m is None or "from" not in m or "to" not in m:
            continue
        ref, to = r.text(m["from"], f"{ipath}.from"), r.text(m["to"], f"{ipath}.to")
        to_date = r.date(m["to_date"], f"{ipath}.to_date") if "to_date" in m else None
        if ref is not None and to is not None and ("to_date" not in m or to_date is not None):
            out.append(Move(ref, to, to_date, item.start_mark.line + 1, ipath))
    return tuple(out)
