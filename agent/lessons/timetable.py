"""Timetables as schools keep them: a period grid, a weekly pattern and the exceptions to it.

A school secretary writes one YAML file per terminal (format: docs/timetable.md). The loader walks
the YAML node tree, like ``agent.config``, so every problem names the file, the line and the key
path; it never constructs Python objects from tags and never lets anything but
:class:`TimetableError` out. Clock times are read from the raw scalar text, because YAML 1.1 reads
an unquoted ``8:40`` as the integer 520.

Loading expands the whole term into concrete lessons, in the order a school applies its rules:
term bounds, holidays, make-up days (调休, "this Saturday follows Monday"), odd/even weeks, then
per-date overrides (cancel, move, add) which always win. Expanding up front checks every date
once (overlaps, cancels of lessons that do not exist), so a bad file fails at load, never in the
middle of a lesson. Every instant is an aware datetime in the configured zone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from agent.urls import SINK_NAME_RE, SINK_NAME_RULE, SINK_RULE, SINK_URL_RE
from agent.yamlsource import compose, describe_node, unknown_key

ROLES = ("lecturing", "receiving")
SOURCES = ("timetable", "ical")
#: How far ahead ``current_and_next`` looks for the next lesson when the schedule is open-ended.
HORIZON_DAYS = 400
MAX_FILE_BYTES = 1_000_000
MAX_TERM_DAYS = 731
MAX_LESSONS_PER_DAY = 30

_PERIOD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{0,15}$")
_CODE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_DATE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})$")
_CLOCK = re.compile(r"^(\d{1,2})[:\uff1a](\d{2})$")  # also the full-width colon
#: "08:00-08:40"; also en/em dashes, "~", the full-width tilde and 至, as typed in Chinese IMEs.
_RANGE = re.compile(r"^\s*(\S+?)\s*(?:-|\u2013|\u2014|~|\uff5e|至)\s*(\S+)\s*$")
_NULL = "tag:yaml.org,2002:null"

WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAYS: dict[str, int] = {}
for _i, _n in enumerate(WEEKDAY_NAMES):
    _cn = "一二三四五六日"[_i]
    _WEEKDAYS.update({_n: _i, _n[:3]: _i, str(_i + 1): _i, f"周{_cn}": _i, f"星期{_cn}": _i})
_WEEKDAYS.update({"周天": 6, "星期天": 6})

#: Subject codes for lesson ids, so "数学" gives "2026-11-23-p1-math" rather than a hash.
SUBJECT_CODES = {
    "语文": "chinese", "数学": "math", "英语": "english", "科学": "science", "音乐": "music",
    "美术": "art", "体育": "pe", "体育与健康": "pe", "道德与法治": "ethics", "品德与社会": "ethics",
    "信息技术": "it", "信息科技": "it", "书法": "calligraphy", "综合实践": "practice",
    "劳动": "labour", "心理健康": "wellbeing", "物理": "physics", "化学": "chemistry",
    "生物": "biology", "历史": "history", "地理": "geography", "政治": "politics",
    "思想政治": "politics", "班会": "class-meeting", "阅读": "reading",
}


class TimetableError(Exception):
    """Problems in a timetable file; ``str()`` lists each as ``file:line: key: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class PlannedLesson:
    """One lesson on one date: what the lesson manager starts and stops.

    ``live`` holds the URLs that replace ``media.live`` for this lesson (``()`` means record only,
    ``None`` means use ``media.live``); ``live_names`` gives each URL's sink name ("" = unnamed),
    so the evidence can say which receiving school got how many seconds without publishing URLs.
    """

    lesson_id: str
    course: str
    teacher: str
    role: str
    start: datetime
    end: datetime
    live: tuple[str, ...] | None = None
    source: str = "timetable"
    live_names: tuple[str, ...] = ()

    def sink_name(self, index: int) -> str:
        return self.live_names[index] if index < len(self.live_names) else ""


class Schedule(Protocol):
    """What the lesson manager needs from a timetable, whatever file it came from."""

    def lessons_between(self, start: datetime, end: datetime) -> list[PlannedLesson]: ...

    def current_and_next(
        self, now: datetime
    ) -> tuple[PlannedLesson | None, PlannedLesson | None]: ...


def zone(tz: str) -> ZoneInfo:
    """The zone named ``tz``, or TimetableError (a typo must not silently mean UTC)."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise TimetableError([f"lessons.timezone: unknown time zone {tz!r} ({exc})"]) from None


def course_code(course: str) -> str:
    """A stable ASCII slug for a course, for lesson ids (which become file and topic names)."""
    name = course.strip()
    if name in SUBJECT_CODES:
        return SUBJECT_CODES[name]
    slug = "-".join(re.findall(r"[a-z0-9]+", name.lower()))[:32].strip("-")
    return slug or "c" + hashlib.sha256(name.encode()).hexdigest()[:7]


def _aware(when: datetime, what: str) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime, got {when!r}")
    return when


class DaySchedule:
    """Lessons indexed by local date; answers both queries from ``_day`` alone."""

    tz: ZoneInfo
    #: SHA-256 of the file's bytes as loaded (None when built in memory): which version of the
    #: timetable a terminal runs, published with its schedule.
    sha256: str | None = None
    #: The file format, as the schedule names it: "yaml" or "ical".
    format = "yaml"

    def _day(self, day: date) -> tuple[PlannedLesson, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _span(self) -> tuple[date, date] | None:
        """First and last date that can hold a lesson, or None when open-ended."""
        return None

    def _dates(self, first: date, last: date) -> Iterable[date]:
        span = self._span()
        if span is not None:
            first, last = max(first, span[0]), min(last, span[1])
        day = first
        while day <= last:
            yield day
            day += timedelta(days=1)

    def lessons_between(self, start: datetime, end: datetime) -> list[PlannedLesson]:
        """Lessons overlapping ``[start, end)``, sorted by start."""
        start, end = _aware(start, "start"), _aware(end, "end")
        first = start.astimezone(self.tz).date() - timedelta(days=1)
        last = end.astimezone(self.tz).date()
        found = [
            lesson for day in self._dates(first, last) for lesson in self._day(day)
            if lesson.end > start and lesson.start < end
        ]
        return sorted(found, key=lambda x: (x.start, x.end, x.lesson_id))

    def current_and_next(
        self, now: datetime
    ) -> tuple[PlannedLesson | None, PlannedLesson | None]:
        """The lesson on at ``now`` (the earliest started, if several) and the next one to start."""
        now = _aware(now, "now")
        today = now.astimezone(self.tz).date()
        on = [
            lesson for day in self._dates(today - timedelta(days=1), today)
            for lesson in self._day(day) if lesson.start <= now < lesson.end
        ]
        current = min(on, key=lambda x: (x.start, x.lesson_id)) if on else None
        for day in self._dates(today, today + timedelta(days=HORIZON_DAYS)):
            later = [lesson for lesson in self._day(day) if lesson.start > now]
            if later:
                return current, min(later, key=lambda x: (x.start, x.lesson_id))
        return current, None


class Timetable(DaySchedule):
    """An expanded timetable: concrete lessons per local date."""

    def __init__(
        self, days: Mapping[date, Sequence[PlannedLesson]], tz: ZoneInfo, name: str = ""
    ) -> None:
        self.tz = tz
        self.name = name
        self._days = {
            d: tuple(sorted(ls, key=lambda x: (x.start, x.lesson_id)))
            for d, ls in days.items() if ls
        }

    @classmethod
    def from_lessons(cls, lessons: Iterable[PlannedLesson], tz: str | ZoneInfo) -> Timetable:
        """A timetable of exactly these lessons (tests, commands, other sources)."""
        zi = tz if isinstance(tz, ZoneInfo) else zone(tz)
        days: dict[date, list[PlannedLesson]] = {}
        for lesson in lessons:
            days.setdefault(lesson.start.astimezone(zi).date(), []).append(lesson)
        return cls(days, zi)

    def _day(self, day: date) -> tuple[PlannedLesson, ...]:
        return self._days.get(day, ())

    def _span(self) -> tuple[date, date] | None:
        if not self._days:
            return (date.max, date.min)  # empty: nothing to iterate
        return min(self._days), max(self._days)

    def __len__(self) -> int:
        return sum(len(v) for v in self._days.values())


# -- loading --------------------------------------------------------------------------------------


def load_timetable(path: Path | str, tz: str) -> Timetable:
    """Read, validate and expand a YAML timetable; raise TimetableError naming every problem."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise TimetableError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise TimetableError([f"{path}: cannot read: {exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise TimetableError([f"{path}: larger than {MAX_FILE_BYTES} bytes: not a timetable"])
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
    days = _Expander(reader, spec, zi).run()
    if reader.problems:
        raise TimetableError(reader.problems)
    return Timetable(days, zi, spec.name)


# -- the parsed file (before expansion) -----------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    key: str  # "p1", "partner-p1" or "1540": part of the lesson id
    period: str  # the period name ("" for explicit times): what cancel/move refer to
    start: time
    end: time


@dataclass(frozen=True)
class _Entry:
    slot: _Slot
    grid: str | None
    course: str
    teacher: str
    role: str
    live: tuple[str, ...] | None
    live_names: tuple[str, ...]
    code: str
    weeks: str
    line: int
    path: str

    def describe(self) -> str:
        return f"{self.slot.period or self.slot.start.strftime('%H:%M')} {self.course}"


@dataclass(frozen=True)
class _Move:
    ref: str
    to: str
    to_date: date | None
    line: int
    path: str


@dataclass(frozen=True)
class _Override:
    day: date
    cancel: tuple[tuple[str, int, str], ...]  # (ref, line, path); ref "all" cancels the day
    moves: tuple[_Move, ...]
    add: tuple[_Entry, ...]
    line: int
    path: str


@dataclass(frozen=True)
class _Spec:
    name: str
    term: tuple[date, date]
    grids: dict[str, dict[str, tuple[time, time]]]
    default_grid: str | None
    weekly: dict[int, tuple[_Entry, ...]]
    holidays: tuple[tuple[date, date], ...]
    make_up: dict[date, int]
    overrides: tuple[_Override, ...]
    make_up_lines: dict[date, int] = field(default_factory=dict)


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


def parse_clock(text: str) -> time | None:
    m = _CLOCK.match(text.strip())
    if m is None or int(m[1]) > 23 or int(m[2]) > 59:
        return None
    return time(int(m[1]), int(m[2]))


def parse_range(text: str) -> tuple[time, time] | str:
    """``"08:00-08:40"`` into two times, or the reason it is not a range."""
    m = _RANGE.match(text)
    start, end = (parse_clock(m[1]), parse_clock(m[2])) if m else (None, None)
    if start is None or end is None:
        return f"invalid time range {text!r}: write it as HH:MM-HH:MM, e.g. 08:00-08:40"
    if end <= start:
        return f"invalid time range {text!r}: the end must be after the start, on the same day"
    return start, end


_TOP = ("name", "term", "grids", "default_grid", "weekly", "holidays", "make_up_days", "overrides")
_LESSON = ("period", "time", "grid", "course", "teacher", "role", "live", "code", "note")


def _parse(r: _Reader, root: yaml.Node | None) -> _Spec | None:
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
    return _Spec(name or "", term, grids, default_grid, weekly, holidays, make_up, overrides,
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


def _parse_grids(r: _Reader, node: yaml.Node | None) -> dict[str, dict[str, tuple[time, time]]]:
    grids: dict[str, dict[str, tuple[time, time]]] = {}
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
        if not _PERIOD.match(gname):
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
                if not _PERIOD.match(pname):
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

    def __init__(self, r: _Reader, grids: dict[str, dict[str, tuple[time, time]]],
                 default_grid: str | None) -> None:
        self.r, self.grids, self.default_grid = r, grids, default_grid

    def slot(self, ref: str, grid: str | None, node: yaml.Node | int, path: str) -> _Slot | None:
        """A period name of ``grid`` or an explicit ``HH:MM-HH:MM``."""
        span = parse_range(ref)
        if not isinstance(span, str):
            return _Slot(span[0].strftime("%H%M"), "", span[0], span[1])
        gname = grid or self.default_grid
        if gname is None:
            if _PERIOD.match(ref):
                self.r.err(node, path, f"period {ref!r}: which grid? there are several; set "
                                       "default_grid or give the lesson a grid")
            else:
                self.r.err(node, path, span)
            return None
        periods = self.grids.get(gname, {})
        if ref not in periods:
            if not _PERIOD.match(ref) and any(c in ref for c in ":\uff1a-~"):
                self.r.err(node, path, span)
            else:
                known = ", ".join(periods) or "(none)"
                self.r.err(node, path, f"no period {ref!r} in grid {gname!r}; periods: {known}")
            return None
        key = ref if gname == self.default_grid else f"{gname}-{ref}"
        return _Slot(key, ref, *periods[ref])

    def entry(self, node: yaml.Node, path: str, *, weekly: bool) -> _Entry | None:
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
                slot = _Slot(span[0].strftime("%H%M"), "", *span)
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
        return _Entry(slot, grid, course, teacher or "", role, urls, names,
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
        -> dict[int, tuple[_Entry, ...]]:
    weekly: dict[int, tuple[_Entry, ...]] = {}
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
        -> tuple[_Override, ...]:
    items = r.seq(node, "overrides") if node is not None else []
    out: list[_Override] = []
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
        adds: list[_Entry] = []
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
        out.append(_Override(day, cancel, moves, tuple(adds), lines[day], path))
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


def _parse_moves(r: _Reader, node: yaml.Node, path: str) -> tuple[_Move, ...]:
    out = []
    for i, item in enumerate(r.seq(node, path) or []):
        ipath = f"{path}[{i}]"
        m = r.mapping(item, ipath, ("from", "to", "to_date"), required=("from", "to"))
        if m is None or "from" not in m or "to" not in m:
            continue
        ref, to = r.text(m["from"], f"{ipath}.from"), r.text(m["to"], f"{ipath}.to")
        to_date = r.date(m["to_date"], f"{ipath}.to_date") if "to_date" in m else None
        if ref is not None and to is not None and ("to_date" not in m or to_date is not None):
            out.append(_Move(ref, to, to_date, item.start_mark.line + 1, ipath))
    return tuple(out)


# -- expansion ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    entry: _Entry
    slot: _Slot

    def matches(self, ref: str) -> bool:
        if ref in (self.slot.key, self.slot.period):
            return True
        clock = parse_clock(ref)
        return clock is not None and clock == self.slot.start


class _Expander:
    """Applies the rules of the file to every date of the term, reporting conflicts."""

    def __init__(self, r: _Reader, spec: _Spec, tz: ZoneInfo) -> None:
        self.r, self.spec, self.tz = r, spec, tz
        self.holiday_days = {
            first + timedelta(days=n)
            for first, last in spec.holidays for n in range((last - first).days + 1)
        }
        first, _ = spec.term
        self.week_one = first - timedelta(days=first.weekday())
        self.reported: set[tuple[int, int]] = set()

    def week_number(self, day: date) -> int:
        return (day - self.week_one).days // 7 + 1

    def in_term(self, day: date) -> bool:
        return self.spec.term[0] <= day <= self.spec.term[1]

    def base_day(self, day: date) -> list[_Item]:
        if day in self.holiday_days:
            return []
        weekday = self.spec.make_up.get(day, day.weekday())
        parity = "odd" if self.week_number(day) % 2 else "even"
        return [
            _Item(e, e.slot) for e in self.spec.weekly.get(weekday, ())
            if e.weeks in ("all", parity)
        ]

    def run(self) -> dict[date, list[PlannedLesson]]:
        spec, r = self.spec, self.r
        for day, line in spec.make_up_lines.items():
            if not self.in_term(day):
                r.err(line, "make_up_days", f"{day} is outside the term "
                                            f"({spec.term[0]} .. {spec.term[1]})")
            elif day in self.holiday_days:
                r.err(line, "make_up_days", f"{day} is both a holiday and a make-up day")
        days: dict[date, list[_Item]] = {}
        day = spec.term[0]
        while day <= spec.term[1]:
            days[day] = self.base_day(day)
            day += timedelta(days=1)
        incoming: list[tuple[date, _Item, _Move]] = []
        for ov in spec.overrides:
            if not self.in_term(ov.day):
                r.err(ov.line, f"{ov.path}.date", f"{ov.day} is outside the term "
                                                  f"({spec.term[0]} .. {spec.term[1]})")
                continue
            todays = days[ov.day]
            for ref, line, path in ov.cancel:
                hit = todays if ref == "all" else [it for it in todays if it.matches(ref)]
                if not hit and ref != "all":
                    r.err(line, path, f"no lesson at {ref!r} on {_day_name(ov.day)} to cancel"
                                      f"{self._listing(todays)}")
                todays = [it for it in todays if it not in hit]
            for mv in ov.moves:
                hit = [it for it in todays if it.matches(mv.ref)]
                if len(hit) != 1:
                    what = "no lesson" if not hit else "more than one lesson"
                    r.err(mv.line, f"{mv.path}.from", f"{what} at {mv.ref!r} on "
                                                      f"{_day_name(ov.day)} to move"
                                                      f"{self._listing(todays)}")
                    continue
                todays = [it for it in todays if it is not hit[0]]
                incoming.append((mv.to_date or ov.day, hit[0], mv))
            days[ov.day] = todays
        for ov in spec.overrides:
            if self.in_term(ov.day):
                days[ov.day].extend(_Item(e, e.slot) for e in ov.add)
        ctx_grids = _LessonParser(r, spec.grids, spec.default_grid)
        for target, item, mv in incoming:
            if not self.in_term(target):
                r.err(mv.line, f"{mv.path}.to_date", f"{target} is outside the term")
                continue
            slot = ctx_grids.slot(mv.to, item.entry.grid, mv.line, f"{mv.path}.to")
            if slot is not None:
                days[target].append(_Item(item.entry, slot))
        return {d: self._lessons(d, items) for d, items in days.items() if items}

    def _listing(self, items: list[_Item]) -> str:
        if not items:
            return " (there are no lessons that day)"
        return "; lessons that day: " + ", ".join(it.entry.describe() for it in items)

    def _lessons(self, day: date, items: list[_Item]) -> list[PlannedLesson]:
        items = sorted(items, key=lambda it: (it.slot.start, it.slot.end))
        if len(items) > MAX_LESSONS_PER_DAY:
            self.r.err(items[0].entry.line, items[0].entry.path,
                       f"more than {MAX_LESSONS_PER_DAY} lessons on {_day_name(day)}")
            return []
        out: list[PlannedLesson] = []
        ids: set[str] = set()
        prev: _Item | None = None  # the kept lesson that ends last so far
        for it in items:
            if prev is not None and it.slot.start < prev.slot.end:
                pair = (prev.entry.line, it.entry.line)
                if pair not in self.reported:
                    self.reported.add(pair)
                    self.r.err(it.entry.line, it.entry.path,
                               f"{it.entry.describe()} ({_span(it.slot)}) overlaps "
                               f"{prev.entry.describe()} ({_span(prev.slot)}, line "
                               f"{prev.entry.line}) on {_day_name(day)}")
                continue
            prev = it
            lesson_id = f"{day.isoformat()}-{it.slot.key}-{it.entry.code}"
            if lesson_id in ids:
                self.r.err(it.entry.line, it.entry.path, f"two lessons get the id {lesson_id}")
                continue
            ids.add(lesson_id)
            e = it.entry
            out.append(PlannedLesson(
                lesson_id=lesson_id, course=e.course, teacher=e.teacher, role=e.role,
                start=datetime.combine(day, it.slot.start, self.tz),
                end=datetime.combine(day, it.slot.end, self.tz),
                live=e.live, source="timetable", live_names=e.live_names,
            ))
        return out


def _span(slot: _Slot) -> str:
    return f"{slot.start:%H:%M}-{slot.end:%H:%M}"


def _day_name(day: date) -> str:
    return f"{day.isoformat()} ({WEEKDAY_NAMES[day.weekday()].capitalize()})"
