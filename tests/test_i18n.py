"""Chinese and English for technicians: every message translated, the language chosen right.

The msgids are found in the code itself (agent.i18n.msgids: every ``_``/``N_`` literal, every
template of the warning catalogue, every ``t("...")`` of the status page), so a message added
without a translation fails here, naming the message and where it is used.
"""

from __future__ import annotations

import string
import subprocess
import sys
from pathlib import Path

import pytest

from agent import i18n
from agent.status.text import pad, render_text
from tests.support import REPO

PO = i18n.LOCALE_DIR / "zh_CN.po"


def _fields(text: str) -> list[tuple[str, str]]:
    return sorted((f, spec or "") for _lit, f, spec, _conv in string.Formatter().parse(text)
                  if f is not None)


def untranslated(wanted: dict[str, str], po_text: str) -> list[str]:
    """Messages of the program the catalog does not translate (missing, empty or fuzzy)."""
    done = {e.msgid for e in i18n.parse_po(po_text) if e.msgid and e.msgstr and not e.fuzzy}
    return [f"{where}: {msgid!r}" for msgid, where in wanted.items() if msgid not in done]


def test_every_message_has_a_chinese_translation() -> None:
    wanted = i18n.msgids()
    assert len(wanted) > 150  # the CLI, doctor, the warning catalogue and the page
    missing = untranslated(wanted, PO.read_text(encoding="utf-8"))
    assert not missing, ("messages without a zh_CN translation (run scripts/update-po, then "
                         "translate):\n" + "\n".join(missing))


def test_the_check_fails_for_a_new_message() -> None:
    """The check above is not vacuous: a message the catalog lacks, or has only as fuzzy or
    empty, is reported."""
    po = ('msgid "Old"\nmsgstr "旧"\n\n#, fuzzy\nmsgid "Fuzzy"\nmsgstr "模糊"\n\n'
          'msgid "Empty"\nmsgstr ""\n')
    assert untranslated({"Old": "a:1", "New": "b:2", "Fuzzy": "c:3", "Empty": "d:4"}, po) == [
        "b:2: 'New'", "c:3: 'Fuzzy'", "d:4: 'Empty'"]


def test_translations_keep_every_placeholder_and_the_catalog_is_current() -> None:
    entries = [e for e in i18n.parse_po(PO.read_text(encoding="utf-8")) if e.msgid]
    wanted = i18n.msgids()
    stale = [e.msgid for e in entries if e.msgid not in wanted]
    assert not stale, f"entries the program no longer shows (run scripts/update-po): {stale}"
    for e in entries:
        assert _fields(e.msgstr) == _fields(e.msgid), (e.line, e.msgid, e.msgstr)
        if "{" in e.msgid:
            assert "python-brace-format" in e.flags, e.msgid
    assert len({e.msgid for e in entries}) == len(entries), "duplicate msgids"


def test_po_reader() -> None:
    entries = i18n.parse_po('#, python-brace-format\nmsgid "a {x}"\n" b\\n"\n'
                            'msgstr "甲\\"{x}\\""\n')
    assert [(e.msgid, e.msgstr, e.flags) for e in entries] == [
        ("a {x} b\n", '甲"{x}"', {"python-brace-format"})]
    with pytest.raises(ValueError, match="msgid_plural is not supported"):
        i18n.parse_po('msgid "a"\nmsgid_plural "as"\nmsgstr[0] "x"\n')
    with pytest.raises(ValueError, match="line 2"):
        i18n.parse_po('msgid "a"\nmsgstr x\n')


@pytest.mark.parametrize(("env", "want"), [
    ({"LANG": "zh_CN.UTF-8"}, "zh_CN"),
    ({"LANG": "en_US.UTF-8", "LC_ALL": "zh_TW.UTF-8"}, "zh_CN"),
    ({"LANG": "zh_CN.UTF-8", "LC_MESSAGES": "C"}, "en"),
    ({"LANGUAGE": "zh_CN:en", "LANG": "C"}, "zh_CN"),
    ({}, "en"),
    ({"LANG": "fr_FR.UTF-8"}, "en"),
])
def test_language_from_the_locale(env: dict[str, str], want: str) -> None:
    assert i18n.pick(None, env) == want
    assert i18n.pick("en", {"LANG": "zh_CN.UTF-8"}) == "en"  # --lang wins


def _snapshot() -> dict:
    return {
        "agent": {"version": "0.1.0", "pid": 812, "uptime_s": 11520, "config_path": "/etc/a.yaml",
                  "config_hash": "3539b65b"},
        "device": {"id": "room-101", "name": "Room 101", "school": "school-a"},
        "broker": {"tls": True, "connected": False, "address": "mqtt.example:8883",
                   "last_error": "connection refused", "next_attempt_in_s": 4.0},
        "outbox": {"depth": 12, "bytes": 3400, "oldest_age_s": 620.0, "dropped_total": 0,
                   "last_seq": 10422},
        "metrics": {"disks": [{"mount": "/", "percent": 71.0}], "cpu_percent": 12.0,
                    "memory_percent": 43.0, "uptime_s": 11580, "netquality": []},
        "telemetry": {},
        "lessons": {"current": {"lesson_id": "L1", "course": "数学", "teacher": "李明",
                                "role": "lecturing", "state": "live", "elapsed_s": 600,
                                "remaining_s": 2100}},
        "media": {"recording": {"state": "recording", "seconds": 600, "bytes": 10}},
        "warning_details": [{"code": "broker_unreachable",
                             "params": {"address": "mqtt.example:8883",
                                        "error": "connection refused"}}],
    }


def test_status_text_in_both_languages() -> None:
    try:
        i18n.use("zh_CN")
        zh = render_text(_snapshot())
        i18n.use("en")
        en = render_text(_snapshot())
    finally:
        i18n.use("en")
    assert "未连接 mqtt.example:8883, TLS：connection refused" in zh
    assert "  课程        L1（数学, 李明，主讲端）直播中" in zh  # the label padded to 12 columns
    assert "未连接到消息服务器 mqtt.example:8883：connection refused。下一步：检查网络" in zh
    assert "  Lesson      L1 (数学, 李明, lecturing) live for 10m 0s" in en
    assert "NOT connected to mqtt.example:8883, TLS: connection refused" in en
    assert pad("课程") == "课程" + " " * 8 and pad("Lesson") == "Lesson" + " " * 6


def test_cli_speaks_the_locale_and_lang_overrides_it(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("device: {id: room-101, school: school-a}\nmqtt: {prot: 1}\n")

    def run(*args: str, lang: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                              text=True, cwd=REPO, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "LANG": lang})

    zh = run("config", "check", str(cfg), lang="zh_CN.UTF-8")
    assert zh.returncode == 2 and "classroom-agent：配置有误：" in zh.stderr
    assert "mqtt.prot" in zh.stderr and "下一步：修改上面列出的行" in zh.stderr
    en = run("--lang", "en", "config", "check", str(cfg), lang="zh_CN.UTF-8")
    assert "classroom-agent: invalid configuration:" in en.stderr
    doc = run("--lang", "zh_CN", "doctor", "--config", str(cfg), lang="C")
    assert doc.returncode == 2 and "[失败] 配置：" in doc.stdout and "解决办法：" in doc.stdout
