"""The technicians' status page in a real headless Chromium (Debian's ``chromium``, driven by
Playwright; never ``playwright install``), against the real agent, broker and microphone.

One agent, one browser, the page's whole life: opened without its key, the camera snapshot is
refused with the way to get the key; opened at the address ``classroom-agent page`` prints, in
English, the camera snapshot shows the synthetic test pattern, the level meter follows a tone
played into a PulseAudio microphone, the switch to Chinese, and the broker stopped shows as a
fault with its next step. With
``CLASSROOM_AGENT_SCREENSHOTS=docs/img`` the screenshots of docs/technicians.md are refreshed.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.browser import ARGS, CHROMIUM
from tests.media_support import VirtualMicrophone
from tests.support import REPO, AgentProcess, Broker, wait_until

W, H = 320, 180

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is missing: run scripts/deps.sh")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=ARGS, viewport={"width": 1100, "height": 1000})
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture
def mic(tmp_path: Path) -> Iterator[VirtualMicrophone]:
    m = VirtualMicrophone(tmp_path / "mic")
    m.start()
    yield m
    m.stop()


def _shoot(page: Any, name: str) -> None:
    target = os.environ.get("CLASSROOM_AGENT_SCREENSHOTS")
    if target:
        path = REPO / target / name
        page.screenshot(path=str(path), full_page=True)
        subprocess_optimize(path)


def subprocess_optimize(path: Path) -> None:
    """Keep the PNGs small for the repository (OpenCV's strongest PNG compression)."""
    img = cv2.imread(str(path))
    cv2.imwrite(str(path), img, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def _bars_match(jpeg_b64: str) -> tuple[bool, list[Any]]:
    """The synthetic pattern's first colour bars (grey, yellow, cyan in BGR) at the top."""
    img = cv2.imdecode(np.frombuffer(base64.b64decode(jpeg_b64), np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    want = [(192, 192, 192), (0, 192, 192), (192, 192, 0), (0, 192, 0)]
    got = [img[h // 6, int((i + 0.5) * w / 7)].tolist() for i in range(4)]
    ok = all(max(abs(int(a) - b) for a, b in zip(g, c, strict=True)) < 30
             for g, c in zip(got, want, strict=True))
    return ok, got


@pytest.mark.slow
def test_the_page_in_a_real_browser(tmp_path: Path, broker: Broker, browser: Any,
                                    mic: VirtualMicrophone) -> None:
    agent = AgentProcess(tmp_path / "agent", broker.port,
                         media={"video": {"width": W, "height": H, "fps": 10},
                                "audio": {"source": "default"}},
                         device={"name": "Room 101"})
    agent.env.update(mic.env)
    agent.env["LANG"] = "C.UTF-8"
    agent.start()
    try:
        wait_until(lambda: (s := agent.status()) and s["broker"]["connected"]
                   and s["telemetry"]["last_sample"], 30, "a connected agent")
        # Without the key (any local account can open the page): status yes, camera no.
        keyless = browser.new_page()
        keyless.goto(f"http://127.0.0.1:{agent.status_port}/?lang=en")
        keyless.wait_for_selector("#subsystem-broker.good")
        keyless.click("#snapshot-button")
        wait_until(lambda: "classroom-agent page" in keyless.inner_text("#snapshot-info"), 10,
                   "the refusal without the key")
        assert keyless.get_attribute("#snapshot", "hidden") is not None
        keyless.close()

        # The technician's address: `classroom-agent page` (root here) prints it with the key.
        url = _page_url(agent)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url.replace("/#key=", "/?lang=en#key="))
        # The key leaves the address bar at once (screenshots, someone looking over a shoulder).
        wait_until(lambda: "key=" not in page.url, 10, "the key out of the address bar")

        # English, every subsystem, the broker good.
        page.wait_for_selector("#subsystem-broker.good")
        assert page.inner_text("#subsystem-broker h3").startswith("Broker")
        assert "connected to 127.0.0.1" in page.inner_text("#subsystem-broker")
        ids = page.eval_on_selector_all("#subsystems article", "els => els.map(e => e.id)")
        assert ids == [f"subsystem-{x}" for x in (
            "agent", "broker", "outbox", "machine", "camera", "microphone", "lesson", "live",
            "recording", "upload", "commands", "telemetry")]
        assert page.inner_text("#overall") in ("Healthy", "Needs attention")

        # The camera snapshot: the synthetic test pattern, decoded from what the page shows.
        page.reload()  # the key is kept for the tab
        page.wait_for_selector("#subsystem-broker.good")
        page.click("#snapshot-button")
        page.wait_for_selector("#snapshot:not([hidden])", timeout=20000)
        src = page.get_attribute("#snapshot", "src") or ""
        assert src.startswith("data:image/jpeg;base64,")
        ok, got = _bars_match(src.split(",", 1)[1])
        assert ok, f"not the synthetic colour bars: {got}"
        assert page.eval_on_selector("#snapshot", "i => i.naturalWidth") == W
        assert f"{W}x{H}" in page.inner_text("#snapshot-info")

        # The level meter: quiet, then the tone, then quiet again.
        def level() -> float | None:
            v = page.get_attribute("#level-bar", "data-dbfs")
            return float(v) if v else None

        page.click("#level-button")
        wait_until(lambda: (v := level()) is not None and v < -80, 20, "the quiet microphone")
        quiet_width = page.eval_on_selector("#level-bar", "b => b.style.width")
        player = mic.play_tone(440, 4.0, volume=0.5)
        wait_until(lambda: (v := level()) is not None and v > -20, 10,
                   "the meter to rise with the tone")
        readings = []
        for _ in range(8):  # the tone's steady level (the first window may straddle its start)
            time.sleep(0.2)
            readings.append((level() or -120.0,
                             page.eval_on_selector("#level-bar", "b => b.style.width")))
        loud, loud_width = max(readings)
        _shoot(page, "status-page-en.png")
        player.wait(15)
        wait_until(lambda: (v := level()) is not None and v < -80, 10,
                   "the meter to fall when the tone stops")
        assert -12 < loud < -6, loud  # a sine at half scale: -9 dBFS RMS
        assert float(quiet_width.rstrip("%")) == 0, quiet_width
        assert float(loud_width.rstrip("%")) > 70, loud_width
        page.click("#level-button")  # stop listening

        # Chinese.
        page.click("#lang-zh_CN")
        # (wait_until, not wait_for_function: the page's CSP forbids the eval that one uses)
        wait_until(lambda: page.evaluate("document.documentElement.lang") == "zh-CN"
                   and page.inner_text("#subsystem-broker h3").startswith("消息服务器"), 10,
                   "the page in Chinese")
        assert page.inner_text("#h-camera") == "摄像头快照"
        assert "已连接 127.0.0.1" in page.inner_text("#subsystem-broker")

        # A fault: the broker stops; its card turns red with the cause and the next step.
        broker.stop()
        page.wait_for_selector("#subsystem-broker.fault", timeout=60000)
        text = page.inner_text("#subsystem-broker")
        assert "故障" in text and "未连接到消息服务器" in text
        assert "下一步：检查网络，并确认消息服务器在运行" in text
        assert page.get_attribute("#subsystem-broker .problem", "data-code") == \
            "broker_unreachable"
        assert "有故障" in page.inner_text("#overall")
        _shoot(page, "status-page-zh.png")
        page.click("#lang-en")
        wait_until(lambda: page.inner_text("#subsystem-broker .next-step").startswith(
            "Next step: check the network"), 10, "the next step in English")
        assert not errors, errors
    finally:
        agent.stop()
    log = agent.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert url.rpartition("#key=")[2] not in log


def _page_url(agent: AgentProcess) -> str:
    res = agent.cli("page", "--config", str(agent.config_path))
    assert res.returncode == 0, res.stdout + res.stderr
    url = res.stdout.strip().splitlines()[-1]
    assert url.startswith(f"http://127.0.0.1:{agent.status_port}/#key="), res.stdout
    return url


def test_every_subsystem_of_the_catalogue_has_a_card() -> None:
    """A warning whose subsystem had no card would never show on the page."""
    import typing

    from agent.status import page, warnings

    cards = [sid for sid, _label in page.SUBSYSTEMS]
    assert set(typing.get_args(warnings.Subsystem)) <= set(cards)
    assert {t.subsystem for t in warnings.CATALOGUE.values()} <= set(cards)


def test_the_page_headers_keep_it_to_itself(broker: Broker, agent_factory) -> None:
    """No external asset, no inline script, no framing; the snapshot is refused during a
    lesson with the reason, in the language asked."""
    import json
    import urllib.error
    import urllib.request

    agent = agent_factory(media={"video": {"width": W, "height": H, "fps": 10}}).start()
    base = f"http://127.0.0.1:{agent.status_port}"
    with urllib.request.urlopen(base + "/", timeout=5) as r:
        html = r.read().decode()
        csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "http://" not in html and "https://" not in html and "<script>" not in html
    for asset in ("/page.js", "/page.css"):
        with urllib.request.urlopen(base + asset, timeout=5) as r:
            body = r.read().decode()
        assert "http://" not in body and "https://" not in body
    key = _page_url(agent).rpartition("#key=")[2]

    def ask(path: str, key: str | None) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(base + path, headers={"X-Page-Key": key} if key else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    # Without the page's key, or with a wrong one, no picture and no level: the reason and the
    # way to the key, in the language asked.
    for path in ("/snapshot.json", "/level.json?lang=zh_CN"):
        for wrong in (None, "", key[:-1], key + "x", key.upper(), "x" * 5000):
            code, doc = ask(path, wrong)
            assert code == 403 and "classroom-agent page" in doc["error"], (path, code, doc)
            assert "jpeg" not in doc and "rms_dbfs" not in doc
    assert "密钥" in ask("/snapshot.json?lang=zh_CN", None)[1]["error"]
    res = agent.cli("lesson", "start", "--config", str(agent.config_path), "--duration", "30")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_until(lambda: (agent.status() or {}).get("media"), 30, "the lesson's media stats")
    code, doc = ask("/snapshot.json?lang=zh_CN", key)
    assert code == 409 and "正在上课" in doc["error"]
    code, level = ask("/level.json", key)
    assert code == 200 and level["source"] == "lesson" and level["rms_dbfs"] > -30  # the tone
    # The key is nowhere else: not in the status, not in the log.
    with urllib.request.urlopen(base + "/status.json", timeout=5) as r:
        assert key not in r.read().decode()
    assert key not in agent.log_text()
