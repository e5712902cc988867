"""A report (the dict ``build`` makes) as JSON, CSV or HTML text, and written to a file."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: CSV sections: (report key, columns); nested figures are flattened with dots.
_SECTIONS = ("terminals", "schools", "teachers")


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, ensure_ascii=False, indent=2) + "\n"


def _flat(entry: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in entry.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = "" if v is None else v
    return out


def to_csv(report: dict[str, Any]) -> str:
    """One section per table (terminals, schools, teachers): a line naming it, its header, its
    rows, a blank line. UTF-8 with a byte-order mark, so that Excel and WPS show Chinese names.
    Nested figures become dotted columns (``apps.whiteboard.running_hours``,
    ``by_role.lecturing.delivered``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["month", report["month"], "school", report["school"] or "",
                "generated_at", report["generated_at"]])
    for section in _SECTIONS:
        rows = [_flat(e) for e in report[section]]
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        w.writerow([])
        w.writerow([section])
        w.writerow(columns)
        for row in rows:
            w.writerow([_cell(row.get(c, "")) for c in columns])
    return "\ufeff" + buf.getvalue()


def _cell(value: Any) -> Any:
    text = str(value)
    # A cell starting with = + - @ is a formula to a spreadsheet: a teacher's name from a
    # terminal must never run as one.
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return value


def to_html(report: dict[str, Any]) -> str:
    from collector.reports import html

    return html.render(report)


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "json": to_json, "csv": to_csv, "html": to_html}


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` so that a reader never sees half a report."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
