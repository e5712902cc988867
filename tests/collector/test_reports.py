"""``classroom-collector report`` against a month computed by hand.

The fixture month (tests/collector/report_month.py) is September 2026 at two terminals, sent as
the agents send it (their envelope, their timetable expansion, schema-valid payloads) through the
collector's real ingest into a real PostgreSQL: with duplicates, deliveries out of order and a
backlog that arrives days late. Every figure below is worked out by hand from the story, with
the arithmetic in the comments; none is computed by the code under test.

Calendar used throughout (reports.calendar in CONFIG): September 2026 has 22 weekdays
(1-4: 4, 7-11: 5, 14-18: 5, 21-25: 5, 28-30: 3), minus the Mid-Autumn holiday on Friday the 25th,
plus the make-up Saturday the 26th = 22 school days; 08:00-17:00 is 9 h a day, so each terminal
has 22 x 9 = 198 school hours.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector import config, migrate
from collector.reports import build, render
from collector.reports.calendar import ReportError, clocks
from collector.reports.timeline import Run, link
from tests.browser import chromium
from tests.collector import report_month
from tests.collector.ingest_support import Ingest
from tests.platform_support import PostgresServer
from tests.support import REPO

CONFIG = """
reports:
  online_hold_s: 1200      # the fixture's metrics come every 15 minutes
  calendar:
    holidays: [2026-09-25, 2026-10-01..2026-10-07, 2027-01-01]
    make_up_days: [2026-09-26]
  terms:
    - name: 2026秋
      start: 2026-09-01
      end: 2027-01-22
      minimum_hours: {王芳: 36, 李明: 24, school-a/赵强: 10}
"""
#: The reports are made "now": two months after the fixture month.
NOW = datetime(2026, 11, 30, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def month(postgres: PostgresServer) -> Iterator[tuple[str, dict[str, Any]]]:
    """The month ingested; yields the database URL and the report made before the backlog
    of school-a (2026-09-22..24) arrived."""
    url = postgres.create_database("report_month")
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.migrate(conn)
    story = report_month.build()
    ingest = Ingest(url)
    try:
        for batch in story.on_time:
            res = ingest.write(*batch)
            assert res.quarantined == 0, ingest.conn.execute(
                "SELECT reason FROM quarantine").fetchall()
        ingest.sweep()
        before = build.build(ingest.conn, config_().reports, "2026-09", now=NOW)
        late = ingest.write(*story.backlog)  # four days after it was observed
        again = ingest.write(*story.again)  # replays: the 8th, 9th and 11th once more
        assert (late.stored, late.duplicates) == (144, 0)
        assert (again.stored, again.duplicates) == (0, len(story.again))
        ingest.sweep()
    finally:
        ingest.close()
    yield url, before


def config_(url: str = "postgresql:///unused") -> config.CollectorConfig:
    return config.loads(f"database: {{url: '{url}'}}\n{CONFIG}")


@pytest.fixture(scope="module")
def report(month: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    with psycopg.connect(month[0], autocommit=True) as conn:
        return build.build(conn, config_().reports, "2026-09", now=NOW)


def by(entries: list[dict[str, Any]], **key: str) -> dict[str, Any]:
    (found,) = [e for e in entries if all(e[k] == v for k, v in key.items())]
    return found


# -- per terminal --------------------------------------------------------------------------------

TERMINAL_A = {
    "school": "school-a", "device": "room-101",
    "school_hours": 198.0,
    # Online: 17 ordinary school days fully online (9 h each: on 07:50-17:30, a metrics record
    # every 15 min holds the link's state for up to 20 min) = 153 h;
    # + the 15th: the link was down 09:00-11:00; the first record that saw it down is 09:10
    #   and the reconnect is at 11:00, so online 08:00-09:10 (1 h 10) + 11:00-17:00 (6 h)
    #   = 7 h 10 = 7.1667 h. Total 160.1667 h.
    # (The 21st is fully online: the agent was killed 08:15-08:20, shorter than the hold, and
    # the metrics at 08:10 and 08:25 both saw the link up.)
    "online_hours": 160.1667,
    # Offline: the 10th switched off all day (between the boot that ended on the 9th at 17:30
    # and the one of the 11th at 07:50) 9 h; the 15th 09:10-11:00 1 h 50 = 1.8333 h; the 22nd,
    # 23rd and 24th on but with the broker blocked (metrics say connected: false) 3 x 9 = 27 h.
    # 9 + 1.8333 + 27 = 37.8333 h.
    "offline_hours": 37.8333,
    "unknown_hours": 0.0,
    "online_share": 0.8089,    # 160.1667 / 198 = 0.80892
    "offline_share": 0.1911,   # 37.8333 / 198 = 0.19108
    "unknown_share": 0.0,
    # Power on: 21 days on (22 school days without the 10th); 07:50-17:30 (9 h 40) on 19 of
    # them = 183.6667 h; the 1st from 07:00 = 10.5 h; the 30th from 07:50 until the end of the
    # month at midnight (it stayed on until 08:30 on 1 October) = 16 h 10 = 16.1667 h.
    # 183.6667 + 10.5 + 16.1667 = 210.3333 h.
    "power_on_hours": 210.3333,
    "power_on_school_hours": 189.0,  # 21 days x 9 h
    "apps": {
        # classroom_live: 1 h running, 20 min active in the first usage record of each of the
        # 21 days: 21 h and 7 h.
        "classroom_live": {"running_hours": 21.0, "active_hours": 7.0},
        # whiteboard: 1800 s running, 900 s active in every usage record (one every 2 h from
        # the boot, and one at the stop). Records in September: 5 a day on 19 days (09:50,
        # 11:50, 13:50, 15:50, 17:30) = 95; 6 on the 1st (09:00 .. 17:00, 17:30); 8 on the
        # 30th (09:50 .. 23:50) and 10 of the 120 minutes of the one at 01:50 on 1 October
        # = 1/12. (95 + 6 + 8 + 1/12) x 1800 s = 196,350 s = 54.5417 h; active half: 27.2708.
        "whiteboard": {"running_hours": 54.5417, "active_hours": 27.2708},
    },
    # display_disconnected (warning) on the 17th, peripheral_removed of a camera (warning) on the
    # 29th; the USB stick pulled out on the 8th (info) is no fault.
    "peripheral_faults": 2,
    "faults_by_type": {"display_disconnected": 1, "peripheral_removed": 1},
    # The backlog of the 22nd-24th opened a gap when the 26th's records came first, and closed
    # it when it arrived.
    "open_gaps": 0, "missing_records": 0, "lost_gaps": 0, "closed_gaps": 1,
}

TERMINAL_B = {
    "school": "school-b", "device": "room-101",
    "school_hours": 198.0,
    # On every school day from the 1st to the 26th (19 days) 07:40-17:40, fully online, except
    # the metrics record of the 17th at 12:15, lost for good: the time between its neighbours
    # (12:00-12:30) is unknown. 19 x 9 - 0.5 = 170.5 h. The power went on the 26th at 17:00
    # (the hold carries the 16:45 record to 17:05, past the school day).
    "online_hours": 170.5,
    "offline_hours": 0.0,
    # The terminal never came back after the 26th: the 28th, 29th and 30th have no record
    # and no clean stop, 27 h; plus the 30 minutes of the lost record: 27.5 h.
    "unknown_hours": 27.5,
    "online_share": 0.8611,    # 170.5 / 198 = 0.86111
    "offline_share": 0.0,
    "unknown_share": 0.1389,   # 27.5 / 198 = 0.13889
    # 18 days 07:40-17:40 = 180 h; the 26th's boot is known until its last usage record at
    # 15:40 (its end is never reported: the terminal stayed dead) = 8 h. 188 h.
    "power_on_hours": 188.0,
    # 18 x 9 h + the 26th 08:00-15:40 (7 h 40) = 169.6667 h
    "power_on_school_hours": 169.6667,
    # 1200 s / 600 s in each usage record: 5 a day on 18 days (09:40 .. 15:40, 17:40) + 4 on
    # the 26th = 94 records: 112,800 s = 31.3333 h running, 15.6667 h active.
    "apps": {"whiteboard": {"running_hours": 31.3333, "active_hours": 15.6667}},
    "peripheral_faults": 1,  # camera_lost during the lesson of the 14th
    "faults_by_type": {"camera_lost": 1},
    "open_gaps": 1, "missing_records": 1, "lost_gaps": 0, "closed_gaps": 0,
}


def test_terminal_figures(report: dict[str, Any]) -> None:
    assert report["month"] == "2026-09"
    assert len(report["terminals"]) == 2
    assert by(report["terminals"], school="school-a") == TERMINAL_A
    assert by(report["terminals"], school="school-b") == TERMINAL_B


# -- per school ----------------------------------------------------------------------------------

NO_LESSONS = {"scheduled": 0, "delivered": 0, "missed": 0, "interrupted": 0, "unconfirmed": 0,
              "upcoming": 0, "extra": 0, "delivery_rate": None, "live_seconds": 0.0,
              "recorded_seconds": 0.0}
SCHOOL_A_LECTURING = {
    # 数学 in p1 on Mondays (7, 14, 21, 28), Wednesdays (2, 9, 16, 23, 30), Fridays (4, 11, 18;
    # the 25th is a holiday) and the make-up Saturday the 26th (runs Monday's timetable) = 13;
    # the override moved the 16th's from p1 to p2 (one lesson, not two). 语文 in p3 on
    # Tuesdays (1, 8, 15, 22, 29) and Thursdays (3, 10, 17, 24) = 9. 13 + 9 = 22.
    "scheduled": 22,
    # All but the 10th (terminal switched off, reported as lesson_missed on the 11th) = 21;
    # the 22nd-24th count: their evidence arrived days late.
    "delivered": 21, "missed": 1,
    # The 21st: killed at 08:15, resumed at 08:20 as a continuation: one lesson, interrupted.
    "interrupted": 1, "unconfirmed": 0, "upcoming": 0,
    # 王芳's lesson started by hand on the 1st at 07:10 (23:10 UTC on 31 August: September in
    # local time).
    "extra": 1,
    "delivery_rate": 0.9545,  # 21 / 22
    # Live: 12 数学 lessons x 2390 s + the 21st's two parts 895 + 1195 + 7 语文 lessons x 2390
    # (the 15th's went out live 0 s: the link was down) + the manual lesson 2690
    # = 28,680 + 2,090 + 16,730 + 2,690 = 50,190 s.
    "live_seconds": 50190.0,
    # Recorded: 12 x 2400 + 900 + 1200 + 8 语文 x 2400 + 2700 = 28,800 + 2,100 + 19,200 + 2,700
    # = 52,800 s.
    "recorded_seconds": 52800.0,
}
SCHOOL_B_RECEIVING = {
    # The same 13 数学 lessons, received.
    "scheduled": 13,
    # Missed: the 9th (its media never produced anything: lesson_missed media_failed), the 28th
    # and the 30th (the terminal was dead and never said so). 13 - 3 = 10 delivered.
    "delivered": 10, "missed": 3,
    "interrupted": 1,  # the camera was lost for 2 minutes on the 14th
    "unconfirmed": 0, "upcoming": 0, "extra": 0,
    "delivery_rate": 0.7692,  # 10 / 13
    "live_seconds": 0.0,  # a receiving end that only records
    "recorded_seconds": 24000.0,  # 10 x 2400
}


def test_school_figures(report: dict[str, Any]) -> None:
    a, b = by(report["schools"], school="school-a"), by(report["schools"], school="school-b")
    assert {k: a[k] for k in SCHOOL_A_LECTURING} == SCHOOL_A_LECTURING
    assert a["by_role"] == {"lecturing": SCHOOL_A_LECTURING, "receiving": NO_LESSONS}
    assert a["missed_reasons"] == {"terminal_off": 1}
    assert {k: b[k] for k in SCHOOL_B_RECEIVING} == SCHOOL_B_RECEIVING
    assert b["by_role"] == {"lecturing": NO_LESSONS, "receiving": SCHOOL_B_RECEIVING}
    assert b["missed_reasons"] == {"media_failed": 1, "unreported": 2}


# -- per teacher ---------------------------------------------------------------------------------

# The term 2026-09-01..2027-01-22: 104 weekdays (21 weeks from Monday 31 August, less that
# Monday), minus the holidays on weekdays (25 September; 1, 2, 5, 6, 7 October; 1 January)
# = 97, plus the make-up Saturday = 98 school days. By the end of September 22 have passed:
# 22 / 98 = 0.22449 of the term.
TEACHERS = [
    # 李明: 语文 7 online (9 scheduled, less the missed 10th and the 15th that went out live
    # 0 s) x 40 min = 16,800 s = 4.6667 h; 7 x 1.5 = 10.5 lessons. Minimum 24 h: expected
    # 24 x 22/98 = 5.3878 h by now: behind.
    {"teacher": "李明", "school": "school-a", "lessons_online": 7, "hours_online": 4.6667,
     "weighted_lessons": 10.5, "term": "2026秋", "minimum_hours": 24.0,
     "term_hours_online": 4.6667, "expected_hours": 5.3878, "on_track": False},
    # 王芳: 13 数学 + the manual one = 14 online (the interrupted 21st counts once);
    # 12 x 2400 + (900 + 1200) + 2700 = 33,600 s = 9.3333 h; 14 x 1.5 = 21 lessons. Minimum
    # 36 h: expected 36 x 22/98 = 8.0816 h: on track. (Her 数学 received at school-b counts for
    # school-b's figures, not as her teaching.)
    {"teacher": "王芳", "school": "school-a", "lessons_online": 14, "hours_online": 9.3333,
     "weighted_lessons": 21.0, "term": "2026秋", "minimum_hours": 36.0,
     "term_hours_online": 9.3333, "expected_hours": 8.0816, "on_track": True},
    # 赵强 owes 10 h and taught nothing: expected 10 x 22/98 = 2.2449 h.
    {"teacher": "赵强", "school": "school-a", "lessons_online": 0, "hours_online": 0.0,
     "weighted_lessons": 0.0, "term": "2026秋", "minimum_hours": 10.0,
     "term_hours_online": 0.0, "expected_hours": 2.2449, "on_track": False},
]


def test_teacher_figures(report: dict[str, Any], month: tuple[str, dict[str, Any]]) -> None:
    assert report["teachers"] == TEACHERS
    with psycopg.connect(month[0], autocommit=True) as conn:
        school_b = build.build(conn, config_().reports, "2026-09", "school-b", now=NOW)
    # school-b only receives: no teacher of its own; the minimums name school-a's teachers.
    assert school_b["teachers"] == []
    assert report["settings"]["term"] == {
        "name": "2026秋", "start": "2026-09-01", "end": "2027-01-22", "school_days": 98,
        "school_days_elapsed": 22, "elapsed_share": 0.2245}


# -- before the backlog arrived ------------------------------------------------------------------

def test_a_backlog_days_late_is_unknown_until_it_arrives(
        month: tuple[str, dict[str, Any]]) -> None:
    before = month[1]
    a = by(before["terminals"], school="school-a")
    # The 22nd-24th lie in the open gap between the 21st's last record (17:30) and the 26th's
    # first: unknown (27 h), not offline, although the boots around them say "off".
    assert (a["online_hours"], a["offline_hours"], a["unknown_hours"]) == (160.1667, 10.8333,
                                                                           27.0)
    assert (a["open_gaps"], a["missing_records"], a["closed_gaps"]) == (1, 144, 0)
    # 210.3333 h less the 22nd's and 23rd's 9 h 40 (reported only in the backlog; the 24th's
    # boot is reported by the 26th's first usage record, the first after its end): 191 h.
    assert a["power_on_hours"] == 191.0
    school = by(before["schools"], school="school-a")
    # Their lessons were planned and nothing said they happened: missed, until the evidence
    # came.
    assert (school["delivered"], school["missed"], school["missed_reasons"]) == (
        18, 4, {"terminal_off": 1, "unreported": 3})
    wang = by(before["teachers"], teacher="王芳")
    assert (wang["lessons_online"], wang["hours_online"]) == (13, 8.6667)  # without the 23rd


# -- the command ---------------------------------------------------------------------------------

def _cli(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(f"database: {{url: '{url}'}}\n{CONFIG}", encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "collector", "report", "--config", str(cfg),
                           *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_report_command_writes_json_and_csv(month: tuple[str, dict[str, Any]],
                                           tmp_path: Path) -> None:
    res = _cli(tmp_path, month[0], "--month", "2026-09", "--school", "school-a")
    assert res.returncode == 0, res.stderr
    assert "report 2026-09: lessons" in res.stderr  # progress goes to stderr
    data = json.loads(res.stdout)
    assert set(data) >= {"month", "terminals", "schools", "teachers"}
    assert data["school"] == "school-a"
    assert data["terminals"] == [TERMINAL_A]
    assert [s["school"] for s in data["schools"]] == ["school-a"]
    assert data["teachers"] == TEACHERS

    out = tmp_path / "september.csv"
    res = _cli(tmp_path, month[0], "--month", "2026-09", "--format", "csv", "--out", str(out))
    assert res.returncode == 0, res.stderr
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), "UTF-8 with a BOM, for Excel and WPS"
    sections = _csv_sections(raw.decode("utf-8-sig"))
    terminals = {r["school"]: r for r in sections["terminals"]}
    assert float(terminals["school-a"]["online_share"]) == TERMINAL_A["online_share"]
    assert float(terminals["school-b"]["apps.whiteboard.running_hours"]) == 31.3333
    assert terminals["school-b"]["open_gaps"] == "1"
    schools = {r["school"]: r for r in sections["schools"]}
    assert schools["school-b"]["by_role.receiving.delivered"] == "10"
    assert schools["school-b"]["missed_reasons.unreported"] == "2"
    teachers = {r["teacher"]: r for r in sections["teachers"]}
    assert teachers["王芳"]["weighted_lessons"] == "21.0"
    assert teachers["李明"]["on_track"] == "False"


def _csv_sections(text: str) -> dict[str, list[dict[str, str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    out: dict[str, list[dict[str, str]]] = {}
    i = 1
    while i < len(rows):
        if rows[i] == [] and i + 2 < len(rows):
            name, header = rows[i + 1][0], rows[i + 2]
            i += 3
            out[name] = []
            while i < len(rows) and rows[i]:
                out[name].append(dict(zip(header, rows[i], strict=True)))
                i += 1
        else:
            i += 1
    return out


def test_report_command_refuses_a_bad_month_and_a_backwards_school_day(
        month: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    res = _cli(tmp_path, month[0], "--month", "2026-13")
    assert res.returncode == 2 and "expected YYYY-MM" in res.stderr
    empty = month[0].rsplit("/", 1)[0] + "/postgres"  # a database nobody migrated
    res = _cli(tmp_path, empty, "--month", "2026-09")
    assert res.returncode == 3 and "Next step: classroom-collector migrate" in res.stderr
    with pytest.raises(ReportError, match=r"school_day: the end \(07:00\) must be after"):
        cfg = config.loads("database: {url: 'postgresql:///x'}\n"
                           "reports: {school_day: {start: '08:00', end: '07:00'}}\n")
        build.build(None, cfg.reports, "2026-09")  # type: ignore[arg-type]


# -- the rule, on its own -------------------------------------------------------------------------

def test_online_rule_precedence() -> None:
    # up 0-100 (held to 160, cut at 150 by the next run), down 150-300 (held to 360), a
    # connect at 1000 (held 60 s), a clean stop at 2000 (offline until 3000); power off
    # 1200-1500 is offline; the open gap 2500-2600 is unknown over everything.
    got = link([Run(0, 100, True), Run(150, 300, False), Run(1000, 1000, True),
                Run(2000, 2000, False, persistent=True)], 60, [(1200, 1500)], [(2500, 2600)],
               3000)
    assert got.up == [(0, 150), (1000, 1060)]
    assert got.down == [(150, 360), (1200, 1500), (2000, 2500), (2600, 3000)]


def test_csv_never_starts_a_cell_with_a_formula() -> None:
    text = render.to_csv({"month": "2026-09", "school": None, "generated_at": "x",
                          "terminals": [], "schools": [],
                          "teachers": [{"teacher": "=HYPERLINK(\"x\")", "school": "-1"}]})
    assert "'=HYPERLINK" in text and ",'-1" in text


# -- the HTML page, in a real browser ------------------------------------------------------------

_BARS = """() => [...document.querySelectorAll('svg.chart rect.bar')].map(r => {
    const b = r.getBoundingClientRect();
    return {chart: r.closest('svg').id, key: r.dataset.key, part: r.dataset.part,
            value: +r.dataset.value, total: +r.dataset.total, width: b.width, x: b.x};
})"""
_ROWS = """(cls) => [...document.querySelectorAll(`table.${cls} tbody tr`)].map(
    tr => [...tr.cells].map(td => td.innerText.replace(/\\s+/g, ' ').trim()))"""


def test_html_report_in_chromium(month: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    """The page opens offline in Debian's chromium, asks for nothing, and its tables and charts
    show the hand-computed figures."""
    page_file = tmp_path / "2026-09.html"
    res = _cli(tmp_path, month[0], "--month", "2026-09", "--format", "html",
               "--out", str(page_file))
    assert res.returncode == 0, res.stderr
    html = page_file.read_text(encoding="utf-8")
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file.as_uri())
        assert requests == [page_file.as_uri()], "the page fetched something besides itself"
        text = page.inner_text("body")
        for words in ("学校课程情况", "Lessons by school", "主讲教师在线教学",
                      "Online teaching by lecturing teacher", "终端使用情况", "Terminals"):
            assert words in text
        schools = page.evaluate(_ROWS, "schools")
        # school, role, scheduled, delivered, missed, interrupted, unconfirmed, upcoming,
        # extra, delivery rate, live h (50,190 s), recorded h (52,800 s), why missed
        assert schools == [
            ["school-a", "主讲端 lecturing", "22", "21", "1", "1", "0", "0", "1", "95.5%",
             "13.94", "14.67", "terminal_off 1"],
            ["school-b", "接收端 receiving", "13", "10", "3", "1", "0", "0", "0", "76.9%",
             "0.00", "6.67", "media_failed 1, unreported 2"]]
        teachers = page.evaluate(_ROWS, "teachers")
        assert [r[:5] + r[8:] for r in teachers] == [
            ["李明", "school-a", "7", "4.67", "10.5", "落后 behind"],
            ["王芳", "school-a", "14", "9.33", "21.0", "达标 yes"],
            ["赵强", "school-a", "0", "0.00", "0.0", "落后 behind"]]
        terminals = page.evaluate(_ROWS, "terminals")
        assert [r[:8] + r[9:] for r in terminals] == [
            ["school-a", "room-101", "80.9%", "198.0", "160.17", "37.83", "0.00", "210.3", "2",
             "0 / 1"],
            ["school-b", "room-101", "86.1%", "198.0", "170.50", "0.00", "27.50", "188.0", "1",
             "1 / 0"]]
        assert terminals[0][8] == "classroom_live 21.0, whiteboard 54.5"

        bars = page.evaluate(_BARS)
        full = {(b["chart"], b["key"]): 0.0 for b in bars}
        for b in bars:
            full[(b["chart"], b["key"])] += b["width"]

        def drawn(chart: str, key: str, part: str) -> float:
            (b,) = [b for b in bars if (b["chart"], b["key"], b["part"]) == (chart, key, part)]
            return b["width"] / full[(chart, key)] if chart != "chart-teachers" else b["width"]

        # Each drawn share is the figure's: online 160.1667 / 198, unknown 27.5 / 198, ...
        assert drawn("chart-terminals", "school-a/room-101", "online") == pytest.approx(
            160.1667 / 198, abs=1e-3)
        assert drawn("chart-terminals", "school-a/room-101", "offline") == pytest.approx(
            37.8333 / 198, abs=1e-3)
        assert drawn("chart-terminals", "school-b/room-101", "unknown") == pytest.approx(
            27.5 / 198, abs=1e-3)
        assert drawn("chart-schools", "school-a", "delivered") == pytest.approx(21 / 22, abs=1e-3)
        assert drawn("chart-schools", "school-b", "missed") == pytest.approx(3 / 13, abs=1e-3)
        # Term progress: 王芳's bar is 9.3333 of 36 h of the track, 李明's 4.6667 of 24 h.
        track = page.evaluate("() => document.querySelector('#chart-teachers rect')"
                              ".getBoundingClientRect().width")
        assert drawn("chart-teachers", "王芳", "term") / track == pytest.approx(9.3333 / 36,
                                                                              abs=1e-3)
        assert drawn("chart-teachers", "李明", "term") / track == pytest.approx(4.6667 / 24,
                                                                              abs=1e-3)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        if os.environ.get("CLASSROOM_REPORT_SCREENSHOT"):  # docs/img/report.png is made so
            page.screenshot(path=os.environ["CLASSROOM_REPORT_SCREENSHOT"], full_page=True)


def test_a_school_keeps_its_own_zone_and_hours() -> None:
    cfg = config.loads("database: {url: 'postgresql:///x'}\nreports:\n  schools:\n"
                       "    school-x: {timezone: Asia/Urumqi, school_day: {start: '10:00', "
                       "end: '19:30'}}\n")
    region, schools = clocks(cfg.reports)
    x = schools["school-x"]
    # Urumqi is UTC+6: September starts there at 2026-08-31T18:00Z (Beijing: 16:00Z).
    assert x.month(2026, 9)[0] == datetime(2026, 8, 31, 18, tzinfo=UTC).timestamp()
    assert region.month(2026, 9)[0] == datetime(2026, 8, 31, 16, tzinfo=UTC).timestamp()
    hours = x.school_hours(x.month(2026, 9))
    # 22 weekdays (no holiday configured here) of 10:00-19:30 local = 04:00-13:30Z, 9.5 h.
    assert len(hours) == 22 and sum(b - a for a, b in hours) == 22 * 9.5 * 3600
    assert hours[0] == (datetime(2026, 9, 1, 4, tzinfo=UTC).timestamp(),
                        datetime(2026, 9, 1, 13, 30, tzinfo=UTC).timestamp())
