"""The config loader: every problem names its key path and line, and nothing but ConfigError leaks.

Unit tests call ``agent.config`` directly; the CLI tests run ``python -m agent`` as a process,
since what a technician sees (exit code, stderr) is the behaviour under test there.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent import config
from agent.config import ConfigError, describe_keys, load, loads
from tests.fuzzing import fuzz_case, hostile_scalars, near_valid, yaml_text
from tests.support import REPO

GOOD = "device: {id: a, school: b}\n"
HEAD = "device: {id: a, school: b}\nmqtt:\n"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text, name="agent.yaml")
    assert info.value.problems, "a ConfigError must list at least one problem"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def _one(text: str) -> str:
    problems = _problems(text)
    assert len(problems) == 1, problems
    return problems[0]


# -- what a valid file gives -------------------------------------------------------------------


def test_minimal_file_is_valid_with_defaults() -> None:
    cfg = loads(GOOD)
    assert (cfg.device.id, cfg.device.school, cfg.device.name) == ("a", "b", "")
    assert cfg.mqtt.host == "localhost"
    assert cfg.mqtt.port == 1883
    assert cfg.mqtt.topic_prefix == "classroom/v1"
    assert cfg.mqtt.protocol == "auto"
    assert cfg.mqtt.username is None and cfg.mqtt.password_file is None
    assert not cfg.mqtt.tls.active
    assert cfg.status.listen == "127.0.0.1:8765"
    assert cfg.status.address == ("127.0.0.1", 8765)
    assert cfg.telemetry.interval_s == 60.0
    assert cfg.telemetry.apps == config.DEFAULT_APPS
    assert cfg.log_level == "info"
    assert cfg.state_path == Path("/var/lib/classroom-agent")


def test_fractions_and_quoted_literals_are_accepted() -> None:
    cfg = loads(GOOD + "telemetry: {interval_s: 0.5, usage_interval_s: 2}\n"
                       "mqtt: {protocol: '3.1.1', flush_on_exit_s: 0}\n")
    assert cfg.telemetry.interval_s == 0.5
    assert cfg.telemetry.usage_interval_s == 2.0 and isinstance(cfg.telemetry.usage_interval_s,
                                                                 float)
    assert cfg.mqtt.protocol == "3.1.1"
    assert cfg.mqtt.flush_on_exit_s == 0.0
    assert loads(GOOD + "mqtt: {protocol: 5}\n").mqtt.protocol == "5"


def test_hash_is_stable_and_follows_the_content() -> None:
    a, b = loads(GOOD), loads("# a comment\ndevice:\n  school: b\n  id: a\n")
    assert a.hash == b.hash and len(a.hash) == 16
    assert loads(GOOD + "telemetry: {interval_s: 30}\n").hash != a.hash


def test_load_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(GOOD + "mqtt: {port: 1884}\n")
    assert load(path).mqtt.port == 1884
    path.write_text(GOOD + "mqtt: {port: 0}\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: mqtt.port: must be at least 1"):
        load(path)


def test_load_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path)  # a directory
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"device: {id: caf\xe9, school: b}\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load(bad)


# -- each kind of problem ----------------------------------------------------------------------


def test_empty_file_names_the_required_device() -> None:
    for text in ("", "\n", "# only a comment\n"):
        assert _one(text) == "agent.yaml: device: required key is missing"


def test_unknown_key_names_path_line_and_suggestion() -> None:
    msg = _one(HEAD + "  host: broker\n  prot: 1884\n")
    assert msg.startswith("agent.yaml:4: mqtt.prot: unknown key")
    assert "did you mean 'port'?" in msg
    assert "known keys here:" in msg and "topic_prefix" in msg


def test_wrong_type_names_key_and_line() -> None:
    msg = _one(HEAD + "  port: abc\n")
    assert msg == "agent.yaml:3: mqtt.port: expected an integer, got 'abc'"
    assert _one(GOOD + "telemetry: {interval_s: fast}\n").startswith(
        "agent.yaml:2: telemetry.interval_s: expected a number")
    # true/false are not numbers, and numbers are not true/false
    assert "expected an integer" in _one(HEAD + "  port: true\n")
    assert "expected true or false" in _one(HEAD + "  tls: {enabled: 1}\n")


def test_missing_device_id_names_device_id() -> None:
    assert _one("device:\n  school: b\n") == "agent.yaml:2: device.id: required key is missing"


def test_malformed_yaml_gives_line_and_column() -> None:
    msg = _one("device: {id: a, school: b\nmqtt: [\n")
    assert msg.startswith("agent.yaml:2:5: YAML syntax error:")
    msg = _one("device:\n  id: a\n school: b\n")
    assert msg.startswith("agent.yaml:3:") and "YAML syntax error" in msg


def test_list_where_a_mapping_is_expected() -> None:
    assert _one(HEAD + "  - port\n") == "agent.yaml:3: mqtt: expected a mapping of keys, got a list"
    assert _one("- device\n") == (
        "agent.yaml:1: (top level): expected a mapping of keys, got a list")
    assert _one(GOOD + "telemetry: {probes: 'a:1'}\n").startswith(
        "agent.yaml:2: telemetry.probes: expected a list")


def test_bad_literal_lists_the_choices() -> None:
    msg = _one(HEAD + "  protocol: 4\n")
    assert msg == "agent.yaml:3: mqtt.protocol: must be one of 'auto', '5', '3.1.1', got 4"
    assert "log_level" in _one(GOOD + "log_level: loud\n")


@pytest.mark.parametrize(("text", "expected"), [
    (HEAD + "  port: 70000\n", "agent.yaml:3: mqtt.port: must be at most 65535, got 70000"),
    (HEAD + "  port: 0\n", "agent.yaml:3: mqtt.port: must be at least 1, got 0"),
    (GOOD + "telemetry: {interval_s: 0}\n", "agent.yaml:2: telemetry.interval_s: must be at"),
    (GOOD + "telemetry: {interval_s: .nan}\n", "agent.yaml:2: telemetry.interval_s: must be a"),
    (GOOD + "outbox: {max_records: 3}\n", "agent.yaml:2: outbox.max_records: must be at least 10"),
])
def test_bounds(text: str, expected: str) -> None:
    assert _one(text).startswith(expected)


@pytest.mark.parametrize("bad_id", ["a/b", "a+", "#", "room 101", "-lead", "x" * 65, "é"])
def test_device_id_must_be_one_topic_level(bad_id: str) -> None:
    msg = _one(yaml.safe_dump({"device": {"id": bad_id, "school": "b"}}))
    assert msg.startswith("agent.yaml:2: device.id: invalid value")
    assert "topic level" in msg


def test_school_and_topic_prefix_are_checked_too() -> None:
    assert _one("device: {id: a, school: 'x/y'}\n").startswith(
        "agent.yaml:1: device.school: invalid value")
    assert _one(HEAD + "  topic_prefix: 'classroom/+'\n").startswith(
        "agent.yaml:3: mqtt.topic_prefix: invalid value")
    assert loads(HEAD + "  topic_prefix: a/b/c\n").mqtt.topic_prefix == "a/b/c"


def test_tls_file_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    msg = _one(HEAD + f"  tls:\n    ca_file: {missing}\n")
    assert msg.startswith("agent.yaml:4: mqtt.tls.ca_file: file")
    assert str(missing) in msg and "does not exist" in msg
    missing.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = loads(HEAD + f"  tls:\n    ca_file: {missing}\n")
    assert cfg.mqtt.tls.ca_file == str(missing) and cfg.mqtt.tls.active


def test_a_file_name_the_file_system_refuses_is_a_config_error() -> None:
    """Found by fuzzing: a 300-character password_file made Path.is_file() raise
    OSError(ENAMETOOLONG) out of the loader instead of a ConfigError."""
    msg = _one(HEAD + f"  password_file: {'a' * 300}\n")
    assert msg.startswith("agent.yaml:3: mqtt.password_file: file 'aaaa")
    assert "cannot be used: File name too long" in msg and "(300 characters)" in msg
    assert "mqtt.password_file: file" in _one(HEAD + '  password_file: "a\\0b"\n')  # NUL byte


@pytest.mark.parametrize("key", ["status: {listen: ", "telemetry: {probes: ["])
@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_host_port_values_need_a_port_a_socket_accepts(key: str, port: str) -> None:
    """'127.0.0.1:99999' matched HOST:PORT, and the daemon then died binding the status port
    (OverflowError) and the netquality collector failed every tick."""
    close = "}" if key.startswith("status") else "]}"
    msg = _one(f"{GOOD}{key}'127.0.0.1:{port}'{close}\n")
    assert msg.startswith("agent.yaml:2: ") and "the port must be 1-65535" in msg, msg


def test_a_lone_surrogate_escape_is_a_config_error() -> None:
    """Found by fuzzing (the timetable's twin): "\\ud800" is a valid YAML escape but no text
    a path, a log line or a record can hold; state_dir: "\\ud800" crashed the daemon at start."""
    msg = _one(GOOD + 'state_dir: "/var/lib/x\\ud800"\n')
    assert msg.startswith("agent.yaml:2:12: '/var/lib/x\\ud800' is not valid Unicode"), msg


@pytest.mark.parametrize(("live", "echoed"), [
    ('["rtmp://push.example/live/KEY-8f3a"]', True),              # a URL where a mapping goes
    ('[{url: "rtmp://push.example/live/KEY-8f3a "}]', True),      # a space: the pattern fails
    ('[{url: "srt://push.example:9000?passphrase=KEY-8f3a x"}]', True),
    ('[{url: "rtmp://u:KEY-8f3a@push.example/live/x", protocol: rtnp}]', False),
    ('[{url: "see rtmp://push.example/live/KEY-8f3a"}]', False),
])
def test_a_wrong_live_url_is_named_without_its_secret(live: str, echoed: bool) -> None:
    """Config problems reach the log and, on a reload, the config_reload_failed event sent to
    the platform: a stream key or passphrase in a mistyped URL must not ride along."""
    with pytest.raises(ConfigError) as err:
        loads(f"device: {{id: r1, school: s1}}\nmedia: {{live: {live}}}\n")
    text = str(err.value)
    assert "media.live" in text and "KEY-8f3a" not in text, text
    if echoed:
        assert "push.example" in text and "***" in text, text  # still says which URL


def test_a_wrong_timetable_live_url_is_named_without_its_secret() -> None:
    """The timetable's problems go the same way (``config_reload_failed``)."""
    from agent.lessons.timetable import TimetableError
    from agent.lessons.timetable_yaml import loads_timetable

    with pytest.raises(TimetableError) as err:
        loads_timetable("term: {start: 2026-09-01, end: 2027-01-20}\n"
                        "grids: {default: {p1: '08:00-08:40'}}\n"
                        "weekly: {monday: [{period: p1, course: x, "
                        "live: 'rtmp://push.example/live/KEY-8f3a'}]}\n", "Asia/Shanghai")
    text = "; ".join(err.value.problems)
    assert "weekly.monday[0].live" in text and "KEY-8f3a" not in text, text


def test_duplicate_keys_are_errors() -> None:
    assert _one(HEAD + "  port: 1\n  port: 2\n") == "agent.yaml:4: mqtt.port: duplicate key"
    assert _one(GOOD + GOOD) == "agent.yaml:2: device: duplicate key"


def test_bad_explicit_tags_are_config_errors() -> None:
    for tagged in ("!!int abc", "!!timestamp nope", "!foo bar", "!!python/name:os.system ''"):
        msg = _one(HEAD + f"  host: {tagged}\n")
        assert msg.startswith("agent.yaml:3: mqtt.host: cannot read"), msg


def test_absurd_nesting_is_a_config_error() -> None:
    assert "nested too deeply" in _one("x: " + "[" * 5000 + "]" * 5000 + "\n")


def test_several_problems_are_reported_at_once() -> None:
    problems = _problems(
        "device:\n"
        "  school: b/c\n"          # 2: bad level; device.id missing
        "mqtt:\n"
        "  prot: 1\n"              # 4: unknown
        "  port: 70000\n"          # 5: bound
        "telemetry:\n"
        "  interval_s: often\n"    # 7: type
        "log_level: loud\n"        # 8: literal
    )
    keys = {p.split(": ")[1] for p in problems}
    assert keys == {"device.school", "device.id", "mqtt.prot", "mqtt.port",
                    "telemetry.interval_s", "log_level"}, problems
    lines = {p.split(": ")[1]: p.split(": ")[0] for p in problems}
    assert lines["mqtt.prot"] == "agent.yaml:4"
    assert lines["log_level"] == "agent.yaml:8"


# -- the CLI: `config check` and `run` ---------------------------------------------------------

BAD_CASES: dict[str, tuple[str, str]] = {
    # name: (file text, what stderr must contain; {p} is the file's path)
    "empty": ("", "{p}: device: required key is missing"),
    "unknown": (HEAD + "  prot: 1884\n", "{p}:3: mqtt.prot: unknown key (did you mean 'port'?)"),
    "type": (HEAD + "  port: abc\n", "{p}:3: mqtt.port: expected an integer"),
    "no_id": ("device:\n  school: b\n", "{p}:2: device.id: required key is missing"),
    "yaml": ("device: {id: a, school: b\nmqtt: [\n", "{p}:2:5: YAML syntax error"),
    "list": (HEAD + "  - port\n", "{p}:3: mqtt: expected a mapping of keys, got a list"),
    "literal": (HEAD + "  protocol: 4\n", "{p}:3: mqtt.protocol: must be one of"),
    "bound": (HEAD + "  port: 70000\n", "{p}:3: mqtt.port: must be at most 65535"),
    "slash": ("device: {id: a/b, school: b}\n", "{p}:1: device.id: invalid value 'a/b'"),
    "plus": ("device: {id: a+, school: b}\n", "{p}:1: device.id: invalid value 'a+'"),
    "ca_file": (HEAD + "  tls: {ca_file: /nonexistent/ca.pem}\n",
                "{p}:3: mqtt.tls.ca_file: file /nonexistent/ca.pem does not exist"),
    "duplicate": (HEAD + "  port: 1\n  port: 2\n", "{p}:4: mqtt.port: duplicate key"),
}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_config_check_good_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(GOOD + "mqtt: {host: broker.example, port: 8883}\n")
    res = _cli("config", "check", str(path))
    assert res.returncode == 0, res.stderr
    assert f"{path}: OK" in res.stdout
    assert "broker.example:8883" in res.stdout and loads(path.read_text()).hash in res.stdout
    assert res.stderr == ""


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_config_check_bad_file(tmp_path: Path, case: str) -> None:
    text, expected = BAD_CASES[case]
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    res = _cli("config", "check", str(path))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert expected.format(p=path) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert "OK" not in res.stdout


def test_config_check_missing_file(tmp_path: Path) -> None:
    res = _cli("config", "check", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2
    assert "file not found" in res.stderr and "Traceback" not in res.stderr


def test_run_with_a_bad_config_exits_2_at_once(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD + "  prot: 1884\n" + f"state_dir: {tmp_path / 'state'}\n")
    t0 = time.monotonic()
    res = _cli("run", "--config", str(path))
    elapsed = time.monotonic() - t0
    assert res.returncode == 2, res.stderr
    assert elapsed < 15, f"took {elapsed:.1f}s"
    assert f"{path}:3: mqtt.prot: unknown key" in res.stderr
    assert "Next step" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "state").exists(), "a rejected config must not start anything"


def test_run_with_a_missing_config_exits_2(tmp_path: Path) -> None:
    res = _cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2
    assert "file not found" in res.stderr and "Traceback" not in res.stderr


# -- robustness: whatever the file holds, only ConfigError comes out ---------------------------

_SEGMENTS = sorted({part for path, _t, _d in describe_keys() for part in path.split(".")}
                   | {"tls", "device", "mqtt", "telemetry", "outbox", "status"})
_TAGS = ["!!int", "!!float", "!!bool", "!!null", "!!str", "!!timestamp", "!!binary", "!!map",
         "!!seq", "!!set", "!foo", "!!python/name:os.system", "!!python/object:os.system"]

_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
            | st.text(max_size=20) | st.sampled_from(["a:1", "127.0.0.1:8765", "room-101", "5"]))
_keys = st.sampled_from(_SEGMENTS) | st.text(max_size=10)
_trees = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=6),
    max_leaves=30,
)
#: The example config with one app (the catalogue would take most mutations), a probe and a
#: live sink, so that mutations land on every kind of value.
_EXAMPLE = yaml.safe_load((REPO / "config" / "agent.example.yaml").read_text())
_EXAMPLE["telemetry"].update(apps={"whiteboard": ["easinote*"]}, probes=["10.0.0.1:53"])
_EXAMPLE["media"]["live"] = [{"url": "rtmp://live.example/app/key", "name": "platform"}]
_WORDS = [f"{part}: " for part in _SEGMENTS] + ["room-101", "school-a", "127.0.0.1:8765"]


def _port_ok(hostport: str) -> bool:
    return 0 < int(hostport.rpartition(":")[2]) <= 65535


def _only_config_error(text: str) -> None:
    with fuzz_case():
        try:
            cfg = loads(text)
        except ConfigError as exc:
            assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
            return
        assert isinstance(cfg, config.Config)
        assert len(cfg.hash) == 16  # a valid result is fully usable: hashable, and every
        host, port = cfg.status.address  # address in it is one a socket accepts
        assert host and 0 < port <= 65535, cfg.status.listen
        assert all(_port_ok(p) for p in cfg.telemetry.probes), cfg.telemetry.probes
        json.dumps(dataclasses.asdict(cfg), ensure_ascii=False).encode()  # all text is UTF-8


@pytest.mark.fuzz
@given(st.text(max_size=300))
def test_random_text_raises_only_config_error(text: str) -> None:
    _only_config_error(text)


@pytest.mark.fuzz
@given(_trees)
def test_random_yaml_structures_raise_only_config_error(tree: Any) -> None:
    _only_config_error(yaml.safe_dump(tree))


@pytest.mark.fuzz
@given(st.dictionaries(st.sampled_from(["device", "mqtt", "telemetry", "outbox", "status",
                                        "state_dir", "log_level"]), _trees, max_size=7))
def test_random_values_under_real_sections_raise_only_config_error(tree: dict[str, Any]) -> None:
    tree.setdefault("device", {"id": "a", "school": "b"})
    _only_config_error(yaml.safe_dump(tree))


@pytest.mark.fuzz
@given(st.sampled_from([p for p, _t, _d in describe_keys()]), st.sampled_from(_TAGS),
       st.sampled_from(["", "abc", "1", "0.5", "2001-12-14", "true", "[]", "{}", "'%%'"]))
def test_explicit_tags_at_any_key_raise_only_config_error(path: str, tag: str, value: str) -> None:
    tree: dict[str, Any] = {"device": {"id": "a", "school": "b"}}
    *parents, leaf = path.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = "@@VALUE@@"
    text = yaml.safe_dump(tree).replace("'@@VALUE@@'", f"{tag} {value}")
    _only_config_error(text)


@pytest.mark.fuzz
@given(yaml_text(_WORDS))
def test_yaml_syntax_soup_raises_only_config_error(text: str) -> None:
    _only_config_error(text)


@pytest.mark.fuzz
@given(near_valid(_EXAMPLE, hostile_scalars()))
def test_near_valid_configs_raise_only_config_error(tree: dict[str, Any]) -> None:
    _only_config_error(yaml.safe_dump(tree, allow_unicode=True))
