"""Debian's chromium, headless, driven by Playwright (never ``playwright install``: the browser
is the system's, from scripts/deps.sh). For tests that check what a page really renders: the
status page (tests/test_status_page.py) and the report (tests/collector/test_reports.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium() -> Iterator[Any]:
    """A fresh browser (a new temporary profile each time); yields Playwright's Browser."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian's chromium is not installed: run scripts/deps.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()
