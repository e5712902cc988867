"""The collector's configuration: errors name the key and the line, the example config holds
every key with its default, and a minimal file works."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest
import yaml

from collector import config
from tests.support import REPO
from tests.test_example_config import _COMMENTED_KEY, _key_lines, _leaf

EXAMPLE = REPO / "config" / "collector.example.yaml"
COMMENTED = {"mqtt.tls.ca_file", "mqtt.tls.cert_file", "mqtt.tls.key_file"}


def _uncommented() -> list[str]:
    return [_COMMENTED_KEY.sub(r"\1\2", line) for line in EXAMPLE.read_text().splitlines()]


def test_minimal_file_works() -> None:
    cfg = config.loads("database: {url: 'postgresql://c@db/classroom'}\n"
                       "mqtt: {host: broker.example, port: 8883}\n")
    assert cfg.mqtt.host == "broker.example" and cfg.mqtt.port == 8883
    assert cfg.subscription.topic == "$share/collectors/classroom/v1/#"
    assert config.loads("database: {url: 'postgresql:///x'}\nsubscription: {group: ''}\n"
                        ).subscription.topic == "classroom/v1/#"


@pytest.mark.parametrize(("text", "expected"), [
    ("database: {url: 'postgresql:///x'}\nmqtt:\n  prot: 1\n",
     "<config>:3: mqtt.prot: unknown key (did you mean 'port'?)"),
    ("database: {url: 'postgresql:///x'}\nmqtt:\n  port: 0\n",
     "<config>:3: mqtt.port: must be at least 1, got 0"),
    ("mqtt: {host: x}\n", "database: required key is missing"),
    ("database: {url: 'mysql://x'}\n", "<config>:1: database.url: invalid value (not shown): "
                                       "a libpq URL"),
    ("database: {url: 'postgresql:///x'}\nsubscription:\n  group: a/b\n",
     "<config>:3: subscription.group: invalid value 'a/b'"),
    ("database: {url: 'postgresql:///x'}\ningest: {batch_max: many}\n",
     "<config>:2: ingest.batch_max: expected an integer, got 'many'"),
])
def test_errors_name_the_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.loads(text)
    assert expected in str(err.value)


def test_a_password_in_the_url_is_refused_and_never_echoed() -> None:
    with pytest.raises(config.ConfigError) as err:
        config.loads("database: {url: 'postgresql://u:s3cret@db/x'}\n")
    assert "password_file" in str(err.value) and "s3cret" not in str(err.value)


def test_example_is_valid_and_has_every_key_with_its_default_in_code_order() -> None:
    cfg = config.load(EXAMPLE)
    assert not cfg.mqtt.tls.active
    keys = [path for path, _t, _d in config.all_keys()]
    where = _key_lines(_uncommented())
    assert [k for k in keys if k not in where] == [], "keys missing from the example"
    assert sorted(keys, key=lambda k: where[k]) == keys, "the example must follow code order"
    live = _key_lines(EXAMPLE.read_text().splitlines())
    assert {k for k in keys if k not in live} == COMMENTED
    tree = yaml.safe_load(EXAMPLE.read_text())
    for path, _t, default in config.all_keys():
        if default is dataclasses.MISSING or path in COMMENTED:
            continue
        assert _leaf(tree, path) == default, f"{path}: the example differs from the default"
    known = set(keys)

    def walk(node: Any, prefix: str) -> list[str]:
        if prefix in known or not isinstance(node, dict):
            return [] if prefix in known else [prefix]
        return [p for k, v in node.items() for p in walk(v, f"{prefix}.{k}" if prefix else k)]

    assert walk(yaml.safe_load("\n".join(_uncommented())), "") == []


def test_config_check_command(tmp_path: Any) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("database: {url: 'postgresql:///x'}\nmqtt:\n  hots: x\n")
    res = subprocess.run([sys.executable, "-m", "collector", "config", "check", str(bad)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 2
    assert f"{bad}:3: mqtt.hots: unknown key (did you mean 'host'?)" in res.stderr
    res = subprocess.run([sys.executable, "-m", "collector", "config", "check", str(EXAMPLE)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0 and "OK" in res.stdout
