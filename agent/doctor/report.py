"""Findings of ``doctor``, rendered for people or as JSON, and the exit code they make."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.i18n import N_, Translate
from agent.safetext import inert
from agent.status import warnings

Status = Literal["pass", "warn", "fail", "skip"]
EXIT = {"pass": 0, "skip": 0, "warn": 1, "fail": 2}
LABELS: dict[Status, str] = {"pass": N_("PASS"), "warn": N_("WARN"), "fail": N_("FAIL"),
                             "skip": N_("SKIP")}


def _same(text: str) -> str:
    return text


@dataclass(frozen=True)
class Finding:
    """One result. ``text`` is a template (a msgid) for pass and skip; warn and fail carry the
    catalogue ``code`` instead, whose cause and next step are the words shown."""

    check: str
    title: str
    status: Status
    text: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    code: str | None = None

    @property
    def warning(self) -> warnings.Warning | None:
        return warnings.Warning(self.code, self.params) if self.code else None

    def summary(self, translate: Translate = _same) -> str:
        w = self.warning
        return warnings.cause(w, translate) if w else warnings.fill(self.text, self.params,
                                                                    translate)

    def fix(self, translate: Translate = _same) -> str:
        w = self.warning
        return warnings.next_step(w, translate) if w else ""

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"check": self.check, "title": self.title, "status": self.status,
                               "summary": self.summary(), "params": dict(self.params)}
        if self.code:
            doc.update(code=self.code, fix=self.fix())
        return doc


def passed(check: str, title: str, text: str, **params: Any) -> Finding:
    return Finding(check, title, "pass", text, params)


def skipped(check: str, title: str, text: str, **params: Any) -> Finding:
    return Finding(check, title, "skip", text, params)


def problem(check: str, title: str, code: str, **params: Any) -> Finding:
    """warn or fail, as the catalogue's severity for ``code`` says."""
    severity = warnings.CATALOGUE[code].severity
    return Finding(check, title, "fail" if severity == "fault" else "warn", "", params, code)


def exit_code(findings: list[Finding]) -> int:
    return max((EXIT[f.status] for f in findings), default=0)


def line(f: Finding, translate: Translate = _same) -> str:
    """One finding for a terminal: ``[PASS] Title: summary`` and, for warn/fail, the fix.
    Parameters from outside are made inert (no control characters reach the terminal)."""
    head = translate(N_("[{status}] {title}: {summary}")).format(
        status=translate(LABELS[f.status]), title=translate(f.title),
        summary=_inert(f.summary(translate)))
    fix = f.fix(translate)
    if fix:
        head += "\n       " + translate(N_("Fix: {fix}")).format(fix=_inert(fix))
    return head


def _inert(text: str) -> str:
    return inert(text, limit=None)
