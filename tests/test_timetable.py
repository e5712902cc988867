"""Timetables: the YAML format as schools keep it, the iCalendar mapping, and bad files.

Every rule of docs/timetable.md has a test here: the grid, odd/even weeks, the term, holidays,
make-up days (调休), per-date overrides, the time zone; and every bad file must give a
``file:line: key: message`` problem, never another exception.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent.lessons import load_schedule
from agent.lessons.ical import loads_ical
from agent.lessons.timetable import PlannedLesson, Timetable, TimetableError, course_code
from agent.lessons.timetable_yaml import load_timetable, loads_timetable
from tests.fuzzing import fuzz_case, hostile_scalars, near_valid, yaml_text
from tests.support import REPO

TZ = "Asia/Shanghai"
SH = ZoneInfo(TZ)

HEAD = """\
term: {start: 2026-09-01, end: 2027-01-22}
grids:
  main:
    p1: 08:00-08:40
    p2: 08:50-09:30
    p3: 10:00-10:40
    p5: 14:00-14:40
"""
WEEK = HEAD + """\
weekly:
  monday:
    - {period: p1, course: Math, teacher: Wang Fang}
    - {period: p3, course: 音乐, teacher: 李明, role: receiving}
  tuesday:
    - {time: 15:40-16:20, course: Reading, teacher: Zhang}
"""


def _load(text: str, tz: str = TZ) -> Timetable:
    return loads_timetable(text, tz, name="tt.yaml")


def _day(tt: Any, day: str) -> list[PlannedLesson]:
    start = datetime.fromisoformat(day).replace(tzinfo=SH)
    return tt.lessons_between(start, start + timedelta(days=1))


def _ids(tt: Any, day: str) -> list[str]:
    return [lesson.lesson_id for lesson in _day(tt, day)]


def _at(day: str, hhmm: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=SH)


def _problems(text: str) -> list[str]:
    with pytest.raises(TimetableError) as info:
        _load(text)
    assert info.value.problems and str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def _one(text: str) -> str:
    problems = _problems(text)
    assert len(problems) == 1, problems
    return problems[0]


# -- the weekly pattern on a grid ----------------------------------------------------------------


def test_weekly_lessons_on_the_grid() -> None:
    tt = _load(WEEK)
    monday = _day(tt, "2026-11-23")
    assert [(x.lesson_id, x.course, x.teacher, x.role) for x in monday] == [
        ("2026-11-23-p1-math", "Math", "Wang Fang", "lecturing"),
        ("2026-11-23-p3-music", "音乐", "李明", "receiving"),
    ]
    assert monday[0].start == _at("2026-11-23", "08:00") and monday[0].end == _at("2026-11-23",
                                                                                  "08:40")
    assert monday[0].live is None and monday[0].source == "timetable"
    tuesday = _day(tt, "2026-11-24")
    assert [x.lesson_id for x in tuesday] == ["2026-11-24-1540-reading"]
    assert (tuesday[0].start.hour, tuesday[0].start.minute) == (15, 40)
    assert _day(tt, "2026-11-25") == []  # Wednesday: nothing


def test_current_and_next() -> None:
    tt = _load(WEEK)
    cur, nxt = tt.current_and_next(_at("2026-11-23", "08:20"))
    assert cur is not None and cur.lesson_id == "2026-11-23-p1-math"
    assert nxt is not None and nxt.lesson_id == "2026-11-23-p3-music"
    cur, nxt = tt.current_and_next(_at("2026-11-23", "08:40"))  # the end is exclusive
    assert cur is None and nxt is not None and nxt.lesson_id == "2026-11-23-p3-music"
    cur, nxt = tt.current_and_next(_at("2026-11-23", "12:00"))
    assert cur is None and nxt is not None and nxt.lesson_id == "2026-11-24-1540-reading"
    cur, nxt = tt.current_and_next(_at("2026-11-23", "07:59"))
    assert cur is None and nxt is not None and nxt.lesson_id == "2026-11-23-p1-math"


def test_lessons_between_is_sorted_and_overlap_based() -> None:
    tt = _load(WEEK)
    found = tt.lessons_between(_at("2026-11-23", "08:30"), _at("2026-11-24", "16:00"))
    assert [x.lesson_id for x in found] == ["2026-11-23-p1-math", "2026-11-23-p3-music",
                                            "2026-11-24-1540-reading"]
    week = tt.lessons_between(_at("2026-11-23", "00:00"), _at("2026-11-30", "00:00"))
    assert [x.start for x in week] == sorted(x.start for x in week) and len(week) == 3


def test_unquoted_clock_times_are_read_as_written() -> None:
    # YAML 1.1 reads an unquoted 8:40 as the integer 520: the loader reads the raw text instead.
    tt = _load(HEAD.replace("08:00-08:40", "8:00-8:40") + """\
weekly:
  mon: [{period: p1, course: Math}]
  周二: [{time: 8:50\uff5e9:30, course: Art}]  # a full-width tilde, as IMEs type it
overrides:
  - {date: 2026-11-30, cancel: [8:00]}
""")
    assert _day(tt, "2026-11-23")[0].start == _at("2026-11-23", "08:00")
    assert _day(tt, "2026-11-30") == []  # cancelled by its start time
    assert _day(tt, "2026-11-24")[0].start == _at("2026-11-24", "08:50")


def test_a_second_grid_gives_its_own_times_and_ids() -> None:
    text = """\
term: {start: 2026-09-01, end: 2027-01-22}
grids:
  main: {p1: 08:00-08:40, p2: 08:50-09:30}
  county: {p2: 09:00-09:40}
default_grid: main
weekly:
  monday:
    - {period: p1, course: Math}
    - {period: p2, grid: county, course: English, role: receiving, live: []}
"""
    lessons = _day(_load(text), "2026-11-23")
    assert [(x.lesson_id, x.start.strftime("%H:%M"), x.live) for x in lessons] == [
        ("2026-11-23-p1-math", "08:00", None),
        ("2026-11-23-county-p2-english", "09:00", ()),
    ]


def test_live_urls_override_media_live() -> None:
    tt = _load(HEAD + """\
weekly:
  monday:
    - period: p1
      course: Math
      live: ["rtmp://h/app/key", {name: school-b, url: "srt://h:9000?streamid=b"}]
""")
    (lesson,) = _day(tt, "2026-11-23")
    assert lesson.live == ("rtmp://h/app/key", "srt://h:9000?streamid=b")
    assert lesson.live_names == ("", "school-b")


# -- the calendar of a term ----------------------------------------------------------------------


def test_odd_and_even_weeks_count_from_the_term_start() -> None:
    tt = _load(HEAD + """\
weekly:
  tuesday:
    - {period: p5, course: Science, weeks: odd}
    - {period: p5, course: Calligraphy, weeks: even}
    - {period: p1, course: Math, weeks: all}
""")
    # 2026-09-01 is a Tuesday: week 1 is Mon 08-31 .. Sun 09-06
    assert _ids(tt, "2026-09-01") == ["2026-09-01-p1-math", "2026-09-01-p5-science"]
    assert _ids(tt, "2026-09-08") == ["2026-09-08-p1-math", "2026-09-08-p5-calligraphy"]
    assert _ids(tt, "2026-09-15") == ["2026-09-15-p1-math", "2026-09-15-p5-science"]


def test_no_lessons_outside_the_term() -> None:
    tt = _load(WEEK)
    assert _day(tt, "2026-08-31") == []  # the Monday before the term
    assert _ids(tt, "2026-09-07") == ["2026-09-07-p1-math", "2026-09-07-p3-music"]
    assert _day(tt, "2027-01-25") == []  # the Monday after it
    assert tt.current_and_next(_at("2027-01-30", "08:00")) == (None, None)
    cur, nxt = tt.current_and_next(_at("2026-07-01", "08:00"))
    assert cur is None and nxt is not None and nxt.lesson_id == "2026-09-01-1540-reading"


def test_a_holiday_range_has_no_lessons() -> None:
    tt = _load(WEEK + """\
holidays:
  - {from: 2026-10-01, to: 2026-10-07, name: National Day}
  - {date: 2026-09-21, name: a single day}
""")
    assert _day(tt, "2026-09-21") == []
    assert _day(tt, "2026-10-05") == [] and _day(tt, "2026-10-06") == []
    assert _ids(tt, "2026-10-12") == ["2026-10-12-p1-math", "2026-10-12-p3-music"]
    _, nxt = tt.current_and_next(_at("2026-09-30", "17:00"))
    assert nxt is not None and nxt.lesson_id == "2026-10-12-p1-math"


def test_a_make_up_saturday_follows_mondays_timetable() -> None:
    tt = _load(WEEK + """\
make_up_days:
  - {date: 2026-09-26, follows: monday}
  - {date: 2026-10-11, follows: 星期二}
""")
    assert date(2026, 9, 26).weekday() == 5
    sat = _day(tt, "2026-09-26")
    assert [x.lesson_id for x in sat] == ["2026-09-26-p1-math", "2026-09-26-p3-music"]
    assert sat[0].start == _at("2026-09-26", "08:00")
    assert _ids(tt, "2026-10-11") == ["2026-10-11-1540-reading"]
    assert _day(tt, "2026-10-03") == []  # an ordinary Saturday


def test_make_up_days_follow_the_parity_of_their_own_week() -> None:
    tt = _load(HEAD + """\
weekly:
  monday: [{period: p1, course: Odd, weeks: odd}, {period: p1, course: Even, weeks: even}]
make_up_days: [{date: 2026-09-26, follows: monday}]
""")
    # 2026-09-26 is in week 4 (Mon 09-21 .. Sun 09-27): even
    assert _ids(tt, "2026-09-26") == ["2026-09-26-p1-even"]


def test_overrides_cancel_move_and_add() -> None:
    tt = _load(WEEK + """\
overrides:
  - date: 2026-11-23
    cancel: [p1]
    move: [{from: p3, to: p5}]
    add: [{period: p2, course: Science, teacher: Zhao}]
  - date: 2026-11-24
    move: [{from: "15:40", to: p1, to_date: 2026-11-26}]
  - date: 2026-11-30
    cancel: all
  - date: 2026-12-05
    note: a Saturday lesson, outside the weekly pattern
    add: [{time: 09:00-09:40, course: Art, role: receiving}]
""")
    monday = _day(tt, "2026-11-23")
    assert [(x.lesson_id, x.start.strftime("%H:%M")) for x in monday] == [
        ("2026-11-23-p2-science", "08:50"), ("2026-11-23-p5-music", "14:00")]
    assert monday[1].teacher == "李明" and monday[1].role == "receiving"
    assert _day(tt, "2026-11-24") == []
    assert _ids(tt, "2026-11-26") == ["2026-11-26-p1-reading"]
    assert _day(tt, "2026-11-30") == []
    assert _ids(tt, "2026-12-05") == ["2026-12-05-0900-art"]
    assert _ids(tt, "2026-12-07") == ["2026-12-07-p1-math", "2026-12-07-p3-music"]  # untouched


def test_an_override_wins_over_a_holiday() -> None:
    tt = _load(WEEK + """\
holidays: [{from: 2026-10-01, to: 2026-10-07}]
overrides: [{date: 2026-10-05, add: [{period: p1, course: Exam prep}]}]
""")
    assert _ids(tt, "2026-10-05") == ["2026-10-05-p1-exam-prep"]


def test_clock_times_are_local_and_instants_aware() -> None:
    tt = _load(WEEK)
    first = _day(tt, "2026-11-23")[0]
    assert first.start.utcoffset() == timedelta(hours=8)
    assert first.start == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # 08:00 CST == 00:00Z
    found = tt.lessons_between(datetime(2026, 11, 23, 0, 10, tzinfo=UTC),
                               datetime(2026, 11, 23, 0, 20, tzinfo=UTC))
    assert [x.lesson_id for x in found] == ["2026-11-23-p1-math"]
    cur, _ = tt.current_and_next(datetime(2026, 11, 23, 0, 30, tzinfo=UTC))
    assert cur is not None and cur.lesson_id == "2026-11-23-p1-math"
    utc = _load(WEEK, tz="UTC")  # the same file in another zone: the same clock times
    (first_utc,) = utc.lessons_between(datetime(2026, 11, 23, 7, 59, tzinfo=UTC),
                                       datetime(2026, 11, 23, 8, 1, tzinfo=UTC))
    assert first_utc.start == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="aware"):
        tt.current_and_next(datetime(2026, 11, 23, 8, 0))
    with pytest.raises(TimetableError, match="time zone"):
        _load(WEEK, tz="Asia/Shangai")


def test_course_codes_keep_lesson_ids_ascii_and_stable() -> None:
    assert course_code("数学") == "math" and course_code("Maths 2") == "maths-2"
    made_up = course_code("劳动与技术实践")
    assert made_up == course_code("劳动与技术实践") and made_up.isascii() and made_up[0] == "c"
    tt = _load(HEAD + "weekly: {monday: [{period: p1, course: 数学, code: algebra}]}\n")
    assert _ids(tt, "2026-11-23") == ["2026-11-23-p1-algebra"]


def test_the_example_timetable_loads() -> None:
    tt = load_timetable(REPO / "config" / "timetable.example.yaml", TZ)
    assert len(tt) > 100
    roles = {x.role for x in tt.lessons_between(_at("2026-09-01", "00:00"),
                                                _at("2027-01-23", "00:00"))}
    assert roles == {"lecturing", "receiving"}
    assert _day(tt, "2026-10-05") == []  # National Day
    assert [x.course for x in _day(tt, "2026-09-26")] == ["音乐", "英语"]  # follows Monday
    assert _day(tt, "2026-11-18") == []  # sports day: all cancelled
    assert _ids(tt, "2026-11-23") == ["2026-11-23-p1-science", "2026-11-23-p6-music"]
    music = _day(tt, "2026-11-16")[0]
    assert music.live_names == ("lijiawan", "shuangxi") and music.role == "lecturing"
    receiving = _day(tt, "2026-11-16")[1]
    assert receiving.role == "receiving" and receiving.live == ()
    assert receiving.start == _at("2026-11-16", "14:30")  # on the county school's grid
    # load_schedule (what the daemon calls) reads the same file into the same lessons.
    loaded = load_schedule(REPO / "config" / "timetable.example.yaml", TZ)
    span = (_at("2026-09-01", "00:00"), _at("2027-01-23", "00:00"))
    assert loaded.lessons_between(*span) == tt.lessons_between(*span)


def test_from_lessons_builds_a_timetable_for_other_sources() -> None:
    a = PlannedLesson("x", "Math", "T", "lecturing", _at("2026-11-23", "08:00"),
                      _at("2026-11-23", "08:40"))
    tt = Timetable.from_lessons([a], TZ)
    assert tt.current_and_next(_at("2026-11-23", "08:10")) == (a, None)
    empty = Timetable.from_lessons([], TZ)
    assert empty.current_and_next(_at("2026-11-23", "08:10")) == (None, None)
    assert empty.lessons_between(_at("2026-11-23", "08:10"), _at("2027-11-23", "08:10")) == []


# -- bad files: file, line, key path and the reason ----------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    (HEAD + "weekly: {monday: [{period: p1, course: Math}]}\nholidyas: []\n",
     "tt.yaml:9: holidyas: unknown key (did you mean 'holidays'?)"),
    (HEAD + "weekly: {monday: [{period: p4, course: Math}]}\n",
     "tt.yaml:8: weekly.monday[0].period: no period 'p4' in grid 'main'; periods: p1, p2, p3, p5"),
    (HEAD.replace("10:00-10:40", "10:40-10:00"), "tt.yaml:6: grids.main.p3: invalid time range"),
    (HEAD.replace("10:00-10:40", "10:00"), "tt.yaml:6: grids.main.p3: invalid time range "
                                           "'10:00': write it as HH:MM-HH:MM"),
    (HEAD + "weekly: {funday: []}\n", "tt.yaml:8: weekly: unknown weekday 'funday'"),
    (HEAD + "weekly: {monday: [{period: p1, course: Math, role: teaching}]}\n",
     "tt.yaml:8: weekly.monday[0].role: must be one of lecturing, receiving, got 'teaching'"),
    (HEAD + "weekly: {monday: [{period: p1, course: Math, weeks: 3}]}\n",
     "tt.yaml:8: weekly.monday[0].weeks: must be one of all, odd, even"),
    (HEAD + "weekly: {monday: [{period: p1}]}\n",
     "tt.yaml:8: weekly.monday[0].course: required key is missing"),
    (HEAD + "weekly: {monday: [{course: Math}]}\n",
     "tt.yaml:8: weekly.monday[0]: give either period (e.g. p1) or time"),
    (HEAD + "weekly: {monday: [{period: p1, course: M, live: [ftp://x/y]}]}\n",
     "tt.yaml:8: weekly.monday[0].live[0]: expected an rtmp://, rtmps://, srt:// or (with "
     "protocol: whip) http(s):// URL"),
    (HEAD + "weekly:\n  monday:\n    - {period: p1, course: A}\n    - {time: 08:30-09:00, "
     "course: B}\n",
     "tt.yaml:11: weekly.monday[1]: 08:30 B (08:30-09:00) overlaps p1 A (08:00-08:40, line 10) "
     "on 2026-09-07 (Monday)"),
    (HEAD + "weekly: {monday: [{period: p1, course: A}]}\nholidays: [{from: 2026-10-07, "
     "to: 2026-10-01}]\n", "tt.yaml:9: holidays[0].to: the holiday ends (2026-10-01) before"),
    (HEAD + "holidays: [{date: 2026-02-30}]\n",
     "tt.yaml:8: holidays[0].date: invalid date '2026-02-30': day is out of range for month"),
    (HEAD + "holidays: [{date: 2026-10-01}]\nmake_up_days: [{date: 2026-10-01, follows: mon}]\n",
     "tt.yaml:9: make_up_days: 2026-10-01 is both a holiday and a make-up day"),
    (HEAD + "make_up_days: [{date: 2027-09-26, follows: monday}]\n",
     "tt.yaml:8: make_up_days: 2027-09-26 is outside the term (2026-09-01 .. 2027-01-22)"),
    (HEAD + "weekly: {monday: [{period: p1, course: A}]}\noverrides:\n  - date: 2026-11-23\n"
     "    cancel: [p2]\n",
     "tt.yaml:11: overrides[0].cancel[0]: no lesson at 'p2' on 2026-11-23 (Monday) to cancel; "
     "lessons that day: p1 A"),
    (HEAD + "overrides:\n  - {date: 2026-11-24, move: [{from: p1, to: p2}]}\n",
     "tt.yaml:9: overrides[0].move[0].from: no lesson at 'p1' on 2026-11-24 (Tuesday) to move "
     "(there are no lessons that day)"),
    (HEAD + "overrides:\n  - {date: 2026-11-24}\n  - {date: 2026-11-24}\n",
     "tt.yaml:10: overrides[1].date: 2026-11-24 already has an override at line 9"),
    (HEAD + "weekly: {monday: [], mon: []}\n", "tt.yaml:8: weekly.mon: monday is already listed"),
    ("term: {start: 2026-09-01, end: 2026-08-01}\ngrids: {a: {p1: 08:00-08:40}}\n",
     "tt.yaml:1: term.end: the term ends (2026-08-01) before it starts (2026-09-01)"),
    ("term: {start: 2026-09-01, end: 2062-01-01}\ngrids: {a: {p1: 08:00-08:40}}\n",
     "tt.yaml:1: term.end: a term longer than 731 days"),
    ("grids: {a: {p1: 08:00-08:40}}\n", "tt.yaml:1: term: required key is missing"),
    ("term: {start: 2026-09-01, end: 2027-01-22}\ngrids: {a: {p1: 8-9}}\n",
     "tt.yaml:2: grids.a.p1: invalid time range '8-9'"),
    ("term: {start: 2026-09-01, end: 2027-01-22}\ngrids:\n  a: {p1: 08:00-08:40}\n  b: "
     "{p1: 09:00-09:40}\nweekly: {monday: [{period: p1, course: A}]}\n",
     "tt.yaml:5: weekly.monday[0].period: period 'p1': which grid?"),
    ("weekly: [\n", "tt.yaml:2:1: YAML syntax error"),
    ("", "tt.yaml: (top level): the file is empty"),
    ("- a\n- b\n", "tt.yaml:1: (top level): expected a mapping of keys, got a list"),
])
def test_bad_files_name_the_line_and_key(text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_a_lone_surrogate_escape_is_a_timetable_error() -> None:
    """Found by the near-valid timetable fuzzer: course "\\ud800科学" (a valid YAML escape)
    raised UnicodeEncodeError out of the loader (course_code), which stops the daemon."""
    msg = _one(WEEK.replace("course: Math", 'course: "\\ud800科学"'))
    assert msg.startswith("tt.yaml:10:") and "is not valid Unicode" in msg, msg


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(HEAD + """\
weekly:
  monday:
    - {period: p9, course: A}
    - {period: p1, course: B, role: x}
holidays: [{date: 2026-13-01}]
""")
    assert len(problems) == 3, problems
    assert [p.split(":")[1] for p in problems] == ["10", "11", "12"]


def test_an_overlap_in_the_weekly_pattern_is_reported_once() -> None:
    problems = _problems(HEAD + """\
weekly:
  monday: [{period: p1, course: A}, {time: 08:30-09:00, course: B}]
""")
    assert len(problems) == 1  # not once for every Monday of the term


def test_load_timetable_names_a_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(TimetableError, match="file not found"):
        load_timetable(tmp_path / "nope.yaml", TZ)
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TimetableError, match="not UTF-8"):
        load_timetable(bad, TZ)


# -- robustness: whatever the file holds, only TimetableError comes out --------------------------

_WORDS = ["term", "start", "end", "grids", "main", "p1", "weekly", "monday", "周六", "period",
          "time", "course", "teacher", "role", "live", "weeks", "holidays", "from", "to", "date",
          "make_up_days", "follows", "overrides", "cancel", "move", "add", "to_date", "all",
          "default_grid", "grid", "code", "url", "name", "note"]
_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
            | st.sampled_from(["2026-09-01", "2026-11-23", "08:00-08:40", "8:00", "p1", "odd",
                               "receiving", "monday", "rtmp://h/a/k", "all", "2027-01-22"]))
_trees = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.sampled_from(_WORDS) | st.text(max_size=6), kids, max_size=6),
    max_leaves=40,
)
_EXAMPLE = yaml.safe_load((REPO / "config" / "timetable.example.yaml").read_text())


def _usable(tt: Any) -> None:
    """A timetable that loaded answers what the lesson manager asks, for a whole term."""
    tt.current_and_next(_at("2026-11-23", "08:00"))
    tt.lessons_between(_at("2026-09-01", "00:00"), _at("2026-09-15", "00:00"))


def _only_timetable_error(text: str) -> None:
    with fuzz_case():
        try:
            tt = _load(text)
        except TimetableError as exc:
            assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        else:
            _usable(tt)


@pytest.mark.fuzz
@given(st.text(max_size=400))
def test_random_text_raises_only_timetable_error(text: str) -> None:
    _only_timetable_error(text)


@pytest.mark.fuzz
@given(_trees)
def test_random_yaml_raises_only_timetable_error(tree: Any) -> None:
    _only_timetable_error(yaml.safe_dump(tree, allow_unicode=True))


@pytest.mark.fuzz
@given(st.dictionaries(st.sampled_from(["weekly", "holidays", "make_up_days", "overrides",
                                        "default_grid", "name"]), _trees, max_size=4))
def test_random_sections_of_a_real_timetable_raise_only_timetable_error(tree: Any) -> None:
    base = yaml.safe_load(WEEK)
    base.update(tree)
    _only_timetable_error(yaml.safe_dump(base, allow_unicode=True))


@pytest.mark.fuzz
@given(st.sampled_from(["!!int", "!!float", "!!binary", "!!timestamp", "!!python/object:os.system",
                        "!foo", "!!map", "!!seq", "&a", "*a"]),
       st.sampled_from(["term.start", "grids.main.p1", "weekly.monday", "holidays",
                        "overrides"]))
def test_tags_and_aliases_anywhere_raise_only_timetable_error(tag: str, where: str) -> None:
    tree = yaml.safe_load(WEEK)
    *parents, leaf = where.split(".")
    node = tree
    for p in parents:
        node = node[p]
    node[leaf] = "@@V@@"
    _only_timetable_error(yaml.safe_dump(tree).replace("'@@V@@'", f"{tag} x"))


# -- iCalendar -----------------------------------------------------------------------------------

ICS = """\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//test//timetable//EN
BEGIN:VEVENT
UID:math@school-a
SUMMARY:Math
DTSTART;TZID=Asia/Shanghai:20260907T080000
DTEND;TZID=Asia/Shanghai:20260907T084000
RRULE:FREQ=WEEKLY;BYDAY=MO,WE;UNTIL=20270122T000000Z
EXDATE;TZID=Asia/Shanghai:20260914T080000
ORGANIZER;CN=Wang Fang:mailto:wang@school-a.edu.cn
CATEGORIES:receiving,maths
X-LIVE-URL;NAME=school-b:rtmp://live.example/app/key
END:VEVENT
BEGIN:VEVENT
UID:math@school-a
RECURRENCE-ID;TZID=Asia/Shanghai:20260916T080000
SUMMARY:Math
DTSTART;TZID=Asia/Shanghai:20260916T140000
DTEND;TZID=Asia/Shanghai:20260916T144000
END:VEVENT
BEGIN:VEVENT
UID:music@school-a
SUMMARY:音乐
DTSTART:20260908T020000Z
DURATION:PT40M
RRULE:FREQ=WEEKLY;COUNT=3
X-TEACHER:李明
X-ROLE:lecturing
DESCRIPTION:teacher: somebody else\\nbring instruments
END:VEVENT
BEGIN:VEVENT
UID:art@school-a
SUMMARY:Art
DTSTART:20260909T100000
DTEND:20260909T104000
DESCRIPTION:教师\uff1a王芳
X-LIVE-URL:
END:VEVENT
BEGIN:VEVENT
UID:holiday@school-a
SUMMARY:Mid-Autumn
DTSTART;VALUE=DATE:20260925
END:VEVENT
END:VCALENDAR
"""


def test_ical_recurrence_exdate_and_overridden_instance() -> None:
    tt = loads_ical(ICS, TZ, name="tt.ics")
    found = tt.lessons_between(_at("2026-09-07", "00:00"), _at("2026-09-21", "00:00"))
    assert [(x.lesson_id, x.start.strftime("%m-%d %H:%M")) for x in found] == [
        ("2026-09-07-0800-math", "09-07 08:00"),
        ("2026-09-08-1000-music", "09-08 10:00"),  # 02:00Z is 10:00 in Shanghai
        ("2026-09-09-0800-math", "09-09 08:00"),
        ("2026-09-09-1000-art", "09-09 10:00"),  # floating time: local to the school
        # 09-14 is an EXDATE; the 09-16 instance moved to the afternoon
        ("2026-09-15-1000-music", "09-15 10:00"),
        ("2026-09-16-1400-math", "09-16 14:00"),
    ]
    math, music, art = found[0], found[1], found[3]
    assert (math.teacher, math.role, math.source) == ("Wang Fang", "receiving", "ical")
    assert math.live == ("rtmp://live.example/app/key",) and math.live_names == ("school-b",)
    moved = found[-1]
    assert (moved.teacher, moved.role, moved.live) == (math.teacher, math.role, math.live)
    assert (music.teacher, music.role, music.live) == ("李明", "lecturing", None)
    assert music.end - music.start == timedelta(minutes=40)
    assert (art.teacher, art.live) == ("王芳", ())
    cur, nxt = tt.current_and_next(_at("2026-09-16", "14:10"))
    assert cur == moved and nxt is not None and nxt.lesson_id == "2026-09-21-0800-math"
    later = tt.lessons_between(_at("2026-09-22", "00:00"), _at("2026-09-30", "00:00"))
    assert [x.course for x in later] == ["音乐", "Math", "Math"]  # music: COUNT=3, its last
    assert tt.lessons_between(_at("2026-09-29", "00:00"), _at("2026-09-30", "00:00")) == []


def test_ical_is_chosen_by_file_name(tmp_path: Path) -> None:
    path = tmp_path / "school.ics"
    path.write_text(ICS, encoding="utf-8")
    tt = load_schedule(path, TZ)
    assert tt.current_and_next(_at("2026-09-07", "08:10"))[0] is not None


@pytest.mark.parametrize(("text", "expected"), [
    ("garbage\n", "tt.ics: not a valid iCalendar file"),
    (ICS.replace("SUMMARY:Art\n", ""), "tt.ics:32: VEVENT '(no SUMMARY)' UID art@school-a: "
                                       "SUMMARY (the course) is missing"),
    (ICS.replace("X-ROLE:lecturing", "X-ROLE:teaching"),
     "tt.ics:22: VEVENT '音乐' UID music@school-a: X-ROLE must be one of lecturing, receiving"),
    (ICS.replace("rtmp://live.example/app/key", "ftp://x/y"),
     "tt.ics:4: VEVENT 'Math' UID math@school-a: X-LIVE-URL"),
    (ICS.replace("RRULE:FREQ=WEEKLY;COUNT=3", "RRULE:FREQ=SOMETIMES"),
     "tt.ics:22: VEVENT '音乐' UID music@school-a"),
    (ICS.replace("DTSTART:20260909T100000", "DTSTART:2026XX"),
     "tt.ics:32: VEVENT 'Art' UID art@school-a: DTSTART"),
    # Found by fuzzing: a property icalendar cannot parse (here a date that does not exist)
    # raised BrokenCalendarProperty out of the loader, which would stop the daemon at start.
    (ICS.replace("X-ROLE:lecturing", "X-ROLE;VALUE=DATE:20260230T080000"),
     "tt.ics:22: VEVENT '音乐' UID music@school-a: X-ROLE: Wrong datetime format"),
])
def test_bad_ical_files_name_the_event(text: str, expected: str) -> None:
    with pytest.raises(TimetableError) as info:
        loads_ical(text, TZ, name="tt.ics")
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def _only_ical_error(text: str) -> None:
    with fuzz_case():
        try:
            tt = loads_ical(text, TZ, name="tt.ics")
        except TimetableError as exc:
            assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        else:
            _usable(tt)


@pytest.mark.fuzz
@given(st.integers(0, len(ICS) - 1), st.integers(0, 40), st.text(max_size=20))
def test_mangled_ical_raises_only_timetable_error(at: int, cut: int, junk: str) -> None:
    _only_ical_error(ICS[:at] + junk + ICS[at + cut:])


# iCalendar written from its own grammar: properties a timetable uses, with parameters and values
# from good ones to hostile ones (recurrences that never end or fire every second, dates that do
# not exist, time zones that do not exist, nested components, folded lines).
_ICAL_VALUES = st.sampled_from([
    "20260907T080000", "20260907T080000Z", "20260907", "20260230T080000", "99991231T235959",
    "00010101T000000", "20260907T250000", "PT40M", "-PT40M", "P1000Y", "PT0S", "P1W",
    "FREQ=WEEKLY;BYDAY=MO,WE;UNTIL=20270122T000000Z", "FREQ=SECONDLY",
    "FREQ=MINUTELY;COUNT=1000000",
    "FREQ=DAILY;INTERVAL=0", "FREQ=YEARLY;BYMONTHDAY=31;BYMONTH=2", "FREQ=WEEKLY;BYDAY=XX",
    "FREQ=MONTHLY;BYSETPOS=-1;BYDAY=MO,TU", "FREQ=SOMETIMES", "COUNT=3", "lecturing", "receiving",
    "rtmp://live.example/app/key", "http://x", "mailto:wang@school-a.edu.cn", "Math", "音乐",
    "teacher: 王芳", "", ";", ":", ",", "\\n", "\\", '"', "x" * 300])
_ICAL_PARAMS = st.sampled_from(["", ";TZID=Asia/Shanghai", ";TZID=Mars/Olympus", ";VALUE=DATE",
                                ";VALUE=PERIOD", ";CN=Wang Fang", ";NAME=school-b", ";X=\"a:b\"",
                                ";TZID=", ";;", ";RANGE=THISANDFUTURE"])
_ICAL_NAMES = st.sampled_from(["UID", "SUMMARY", "DTSTART", "DTEND", "DURATION", "RRULE",
                               "EXRULE", "EXDATE", "RDATE", "RECURRENCE-ID", "X-TEACHER",
                               "X-ROLE", "X-LIVE-URL", "CATEGORIES", "ORGANIZER", "DESCRIPTION",
                               "STATUS", "TRANSP", "SEQUENCE", "X-WR-TIMEZONE", "BEGIN", "END"])
_ical_line = st.builds("{}{}:{}".format, _ICAL_NAMES, _ICAL_PARAMS,
                       _ICAL_VALUES | st.text(max_size=12))
_ical_event = st.lists(_ical_line, max_size=12).map(
    lambda ls: "BEGIN:VEVENT\n" + "\n".join(ls) + "\nEND:VEVENT\n")
_ical_text = st.builds(
    lambda head, events, tail: "BEGIN:VCALENDAR\nVERSION:2.0\n" + head + "".join(events) + tail,
    st.sampled_from(["", "X-WR-TIMEZONE:Asia/Shanghai\n", "X-WR-TIMEZONE:Nowhere/Else\n",
                     "BEGIN:VTIMEZONE\nTZID:Asia/Shanghai\nEND:VTIMEZONE\n", " folded\n"]),
    st.lists(_ical_event, max_size=4),
    st.sampled_from(["END:VCALENDAR\n", "", "END:VEVENT\n", "END:VCALENDAR\nBEGIN:VCALENDAR\n"]))


@pytest.mark.fuzz
@given(_ical_text)
def test_ical_from_its_grammar_raises_only_timetable_error(text: str) -> None:
    _only_ical_error(text)


@pytest.mark.fuzz
@given(st.binary(max_size=400) | st.text(max_size=400).map(lambda t: t.encode("utf-8")))
def test_random_bytes_as_ical_raise_only_timetable_error(data: bytes) -> None:
    _only_ical_error(data)  # type: ignore[arg-type]


def test_the_docs_name_every_key() -> None:
    from agent.lessons import timetable_yaml as tt

    doc = (REPO / "docs" / "timetable.md").read_text(encoding="utf-8")
    keys = {*tt._TOP, *tt._LESSON, "weeks", "start", "end", "from", "to", "date", "follows",
            "cancel", "move", "add", "to_date", "url", "X-TEACHER", "X-ROLE", "X-LIVE-URL",
            "CATEGORIES", "ORGANIZER", "RECURRENCE-ID", "EXDATE"}
    assert not [k for k in keys if f"`{k}" not in doc]


@pytest.mark.fuzz
@given(yaml_text(_WORDS))
def test_yaml_syntax_soup_raises_only_timetable_error(text: str) -> None:
    _only_timetable_error(text)


@pytest.mark.fuzz
@given(near_valid(_EXAMPLE, hostile_scalars()))
def test_near_valid_timetables_raise_only_timetable_error(tree: dict[str, Any]) -> None:
    _only_timetable_error(yaml.safe_dump(tree, allow_unicode=True))
