"""The report as one HTML page for an education bureau: tables and charts, in Chinese and
English, with nothing outside the file (inline CSS, charts as inline SVG, no script, no font or
image to fetch), so it opens offline and can be mailed or archived as it is.

Every string from the database (school, device, teacher, application names) is escaped. Each
chart element carries its figure in ``data-*`` attributes, so that a test (or a reader's tool)
can check what is drawn against what is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

#: key -> (中文, English)
LABELS: dict[str, tuple[str, str]] = {
    "title": ("三个课堂 终端与课程月报",
              "Three Classrooms: monthly report of terminals and lessons"),
    "month": ("月份", "Month"),
    "scope": ("范围", "Scope"),
    "all_schools": ("全部学校", "all schools"),
    "generated": ("生成时间", "Generated"),
    "as_of": ("数据截至", "Figures as of"),
    "settings": ("口径", "Definitions"),
    "school_day": ("在校时段", "School hours"),
    "weight": ("在线课时折算系数", "Weight of an online lesson"),
    "term": ("学期进度", "Term progress"),
    "schools": ("学校课程情况", "Lessons by school"),
    "teachers": ("主讲教师在线教学", "Online teaching by lecturing teacher"),
    "terminals": ("终端使用情况", "Terminals"),
    "school": ("学校", "School"),
    "device": ("终端", "Terminal"),
    "role": ("角色", "Role"),
    "lecturing": ("主讲端", "lecturing"),
    "receiving": ("接收端", "receiving"),
    "all": ("合计", "all"),
    "scheduled": ("计划", "Scheduled"),
    "delivered": ("开出", "Delivered"),
    "missed": ("未开", "Missed"),
    "interrupted": ("中断", "Interrupted"),
    "unconfirmed": ("待确认", "Unconfirmed"),
    "upcoming": ("未到期", "Upcoming"),
    "extra": ("计划外", "Extra"),
    "delivery_rate": ("开课率", "Delivery rate"),
    "live_hours": ("直播小时", "Live hours"),
    "recorded_hours": ("录制小时", "Recorded hours"),
    "missed_reasons": ("未开原因", "Why missed"),
    "teacher": ("教师", "Teacher"),
    "lessons_online": ("在线课节数", "Online lessons"),
    "hours_online": ("在线授课小时", "Online hours"),
    "weighted_lessons": ("折算课时", "Weighted lessons"),
    "minimum_hours": ("学期最低小时", "Term minimum (h)"),
    "term_hours_online": ("本学期累计小时", "Term hours so far"),
    "expected_hours": ("应完成小时", "Expected by now (h)"),
    "on_track": ("进度", "On track"),
    "yes": ("达标", "yes"),
    "no": ("落后", "behind"),
    "online_share": ("在线率", "Online share"),
    "school_hours": ("在校小时", "School hours"),
    "online_hours": ("在线小时", "Online (h)"),
    "offline_hours": ("离线小时", "Offline (h)"),
    "unknown_hours": ("未知小时", "Unknown (h)"),
    "power_on_hours": ("开机小时", "Power-on (h)"),
    "apps": ("教学软件使用小时", "Teaching applications (h running)"),
    "peripheral_faults": ("外设故障", "Peripheral faults"),
    "gaps": ("数据缺口 未补/已补", "Data gaps open / filled"),
    "online": ("在线", "online"),
    "offline": ("离线", "offline"),
    "unknown": ("未知", "unknown"),
    "none": ("无", "none"),
    "unnamed": ("未注明", "unnamed"),
    "chart_schools": ("各校计划课程的结果", "What became of each school's scheduled lessons"),
    "chart_terminals": ("在校时段内的联网状态", "Broker link during school hours"),
    "chart_teachers": ("学期在线授课进度 (竖线为应完成)",
                       "Term's online hours so far (the line: expected by now)"),
    "definitions_note": ("各项指标的定义见 docs/reports.md。",
                         "Every figure is defined in docs/reports.md."),
}

_CSS = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Micro Hei","Microsoft YaHei",sans-serif;
 margin:24px;color:#1d2733;background:#fff}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:2px solid #2b6cb0}
.en{color:#5a6675;font-weight:normal;font-size:.85em}
table{border-collapse:collapse;margin:8px 0 4px;font-size:13px}
th,td{border:1px solid #cfd6de;padding:3px 7px;text-align:right}
th{background:#eef2f7;vertical-align:bottom}td.t,th.t{text-align:left}
.meta td{border:none;text-align:left;padding:1px 10px 1px 0}
.behind{color:#b42318;font-weight:bold}.ok{color:#1a7f37}
figure{margin:10px 0}figcaption{font-size:13px;color:#333}
svg text{font-size:12px;fill:#1d2733}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
@media print{body{margin:8mm}h2{break-after:avoid}}
"""

COLORS = {"delivered": "#2f855a", "missed": "#c53030", "unconfirmed": "#d69e2e",
          "upcoming": "#a0aec0", "online": "#2f855a", "offline": "#c53030",
          "unknown": "#a0aec0", "term": "#2b6cb0", "expected": "#1d2733"}
DASH = "\u2013"  # an en dash: no figure
_BAR_W = 480  # width of a full bar in a chart
_LABEL_W = 180


def label(key: str) -> str:
    zh, en = LABELS[key]
    return f'{escape(zh)} <span class="en">{escape(en)}</span>'


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value * 100:.1f}%"


def _table(cls: str, head: Sequence[str], rows: Iterable[Sequence[str]],
           left: int = 1) -> str:
    """``head`` and cells are HTML already escaped; the first ``left`` columns align left."""
    th = "".join(f'<th class="t">{h}</th>' if i < left else f"<th>{h}</th>"
                 for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="t">{c}</td>' if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _legend(keys: Sequence[str]) -> str:
    return '<div class="legend">' + "".join(
        f'<span><i class="sw" style="background:{COLORS[k]}"></i>{label(k)}</span>'
        for k in keys) + "</div>"


def _stacked(chart: str, caption: str, bars: Sequence[tuple[str, str, Sequence[tuple[str, float]],
                                                        float]]) -> str:
    """Horizontal stacked bars: (name, key, [(part, value)], total); each bar is the total's
    full width, each part its share of it."""
    row_h, top = 22, 4
    h = top + row_h * len(bars) + 4
    parts = []
    for i, (name, key, segs, whole) in enumerate(bars):
        y = top + i * row_h
        parts.append(f'<text x="{_LABEL_W - 6}" y="{y + 14}" text-anchor="end">'
                     f"{escape(name)}</text>")
        x = float(_LABEL_W)
        for part, value in segs:
            w = _BAR_W * value / whole if whole > 0 else 0.0
            parts.append(
                f'<rect class="bar" x="{x:.3f}" y="{y}" width="{w:.3f}" height="16" '
                f'fill="{COLORS[part]}" data-key="{escape(key)}" data-part="{part}" '
                f'data-value="{value:.4f}" data-total="{whole:.4f}">'
                f"<title>{escape(name)}: {escape(LABELS[part][0])} {value:.2f}</title></rect>")
            x += w
        parts.append(f'<text x="{_LABEL_W + _BAR_W + 6}" y="{y + 14}">{_num(whole, 1)}</text>')
    width = _LABEL_W + _BAR_W + 70
    return (f'<figure><svg class="chart" id="{chart}" role="img" aria-label="{escape(caption)}" '
            f'width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
            f"<figcaption>{caption}</figcaption></figure>")


def _schools(report: dict[str, Any]) -> str:
    rows = []
    for s in report["schools"]:
        roles = [(r, c) for r, c in s["by_role"].items() if c["scheduled"] or c["extra"]]
        # One row per role with lessons, and the school's total when it has both.
        for role, counts in ([("all", s), *roles] if len(roles) > 1 else roles or [("all", s)]):
            reasons = ", ".join(f"{escape(k)} {v}" for k, v in s["missed_reasons"].items()
                                ) if role == "all" or len(roles) == 1 else ""
            rows.append([escape(s["school"]), label(role) if role in LABELS else escape(role),
                         _num(counts["scheduled"]), _num(counts["delivered"]),
                         _num(counts["missed"]), _num(counts["interrupted"]),
                         _num(counts["unconfirmed"]), _num(counts["upcoming"]),
                         _num(counts["extra"]), _pct(counts["delivery_rate"]),
                         _num(counts["live_seconds"] / 3600, 2),
                         _num(counts["recorded_seconds"] / 3600, 2), reasons or DASH])
    head = [label(k) for k in ("school", "role", "scheduled", "delivered", "missed",
                               "interrupted", "unconfirmed", "upcoming", "extra",
                               "delivery_rate", "live_hours", "recorded_hours",
                               "missed_reasons")]
    bars = [(s["school"], s["school"], [(k, float(s[k])) for k in
                                        ("delivered", "missed", "unconfirmed", "upcoming")],
             float(s["scheduled"])) for s in report["schools"] if s["scheduled"]]
    chart = _stacked("chart-schools", label("chart_schools"), bars) if bars else ""
    return (f"<h2>{label('schools')}</h2>" + _table("schools", head, rows, left=2) + chart
            + _legend(("delivered", "missed", "unconfirmed", "upcoming")))


def _teachers(report: dict[str, Any]) -> str:
    rows = []
    for t in report["teachers"]:
        track = DASH
        if t["on_track"] is not None:
            track = (f'<span class="ok">{label("yes")}</span>' if t["on_track"]
                     else f'<span class="behind">{label("no")}</span>')
        rows.append([escape(t["teacher"]) if t["teacher"] else label("unnamed"),
                     escape(t["school"] or DASH), _num(t["lessons_online"]),
                     _num(t["hours_online"], 2), _num(t["weighted_lessons"], 1),
                     _num(t["minimum_hours"], 1), _num(t["term_hours_online"], 2),
                     _num(t["expected_hours"], 2), track])
    head = [label(k) for k in ("teacher", "school", "lessons_online", "hours_online",
                               "weighted_lessons", "minimum_hours", "term_hours_online",
                               "expected_hours", "on_track")]
    return (f"<h2>{label('teachers')}</h2>" + _table("teachers", head, rows, left=2)
            + _progress([t for t in report["teachers"] if t["minimum_hours"]]))


def _progress(teachers: Sequence[dict[str, Any]]) -> str:
    """One bar per teacher with a minimum: hours so far over the minimum, a line at the
    hours expected by now."""
    if not teachers:
        return ""
    row_h, top = 22, 4
    h = top + row_h * len(teachers) + 4
    parts = []
    for i, t in enumerate(teachers):
        y = top + i * row_h
        scale = _BAR_W / t["minimum_hours"]
        done = min(t["term_hours_online"], t["minimum_hours"]) * scale
        x_exp = _LABEL_W + t["expected_hours"] * scale
        name = f"{t['teacher']} ({t['school'] or DASH})"
        parts += [
            f'<text x="{_LABEL_W - 6}" y="{y + 14}" text-anchor="end">{escape(name)}</text>',
            f'<rect x="{_LABEL_W}" y="{y}" width="{_BAR_W}" height="16" fill="#edf2f7" '
            f'stroke="#cfd6de"/>',
            f'<rect class="bar" x="{_LABEL_W}" y="{y}" width="{done:.3f}" height="16" '
            f'fill="{COLORS["term"]}" data-key="{escape(t["teacher"])}" data-part="term" '
            f'data-value="{t["term_hours_online"]:.4f}" data-total="{t["minimum_hours"]:.4f}">'
            f"<title>{escape(name)}: {t['term_hours_online']:.2f} h</title></rect>",
            f'<line class="expected" x1="{x_exp:.3f}" x2="{x_exp:.3f}" y1="{y - 2}" '
            f'y2="{y + 18}" stroke="{COLORS["expected"]}" stroke-width="2" '
            f'data-key="{escape(t["teacher"])}" data-value="{t["expected_hours"]:.4f}"/>',
            f'<text x="{_LABEL_W + _BAR_W + 6}" y="{y + 14}">'
            f"{t['term_hours_online']:.1f} / {t['minimum_hours']:.0f} h</text>"]
    width = _LABEL_W + _BAR_W + 90
    cap = label("chart_teachers")
    return (f'<figure><svg class="chart" id="chart-teachers" role="img" '
            f'aria-label="{escape(LABELS["chart_teachers"][1])}" width="{width}" height="{h}" '
            f'viewBox="0 0 {width} {h}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}'
            f"</svg><figcaption>{cap}</figcaption></figure>")


def _terminals(report: dict[str, Any]) -> str:
    rows = []
    for t in report["terminals"]:
        apps = ", ".join(f"{escape(k)} {v['running_hours']:.1f}" for k, v in t["apps"].items())
        rows.append([escape(t["school"]), escape(t["device"]), _pct(t["online_share"]),
                     _num(t["school_hours"], 1), _num(t["online_hours"], 2),
                     _num(t["offline_hours"], 2), _num(t["unknown_hours"], 2),
                     _num(t["power_on_hours"], 1), apps or DASH,
                     _num(t["peripheral_faults"]), f"{t['open_gaps']} / {t['closed_gaps']}"])
    head = [label(k) for k in ("school", "device", "online_share", "school_hours",
                               "online_hours", "offline_hours", "unknown_hours",
                               "power_on_hours", "apps", "peripheral_faults", "gaps")]
    bars = [(f"{t['school']} / {t['device']}", f"{t['school']}/{t['device']}",
             [("online", t["online_hours"]), ("offline", t["offline_hours"]),
              ("unknown", t["unknown_hours"])], t["school_hours"])
            for t in report["terminals"] if t["school_hours"]]
    chart = _stacked("chart-terminals", label("chart_terminals"), bars) if bars else ""
    return (f"<h2>{label('terminals')}</h2>" + _table("terminals", head, rows, left=2) + chart
            + _legend(("online", "offline", "unknown")))


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    term = s.get("term")
    meta = [
        (label("month"), escape(report["month"])),
        (label("scope"), escape(report["school"]) if report["school"] else label("all_schools")),
        (label("as_of"), escape(report["as_of"])),
        (label("generated"), escape(report["generated_at"])),
        (label("school_day"), escape(f"{s['school_day']['start']}-{s['school_day']['end']} "
                                     f"({s['timezone']})")),
        (label("weight"), escape(f"{s['weight']:g}")),
    ]
    if term:
        meta.append((label("term"), escape(
            f"{term['name']} {term['start']}..{term['end']}: {term['school_days_elapsed']} / "
            f"{term['school_days']} ({term['elapsed_share'] * 100:.1f}%)")))
    head = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in meta)
    zh, en = LABELS["title"]
    return (
        '<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Nothing may be fetched: no script, and only what is in this file.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(zh)} {escape(report['month'])}</title><style>{_CSS}</style></head>"
        f'<body><h1>{escape(zh)} · {escape(report["month"])}</h1>'
        f'<div class="en">{escape(en)}</div>'
        f'<table class="meta"><tbody>{head}</tbody></table>'
        + _schools(report) + _teachers(report) + _terminals(report)
        + f'<p class="en">{label("definitions_note")}</p></body></html>\n')
