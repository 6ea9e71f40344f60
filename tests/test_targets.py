"""Target files: validation with one-line errors, environment templating, the registry's search path."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from edgepipe.config.target import Target
from edgepipe.errors import ConfigError
from edgepipe.targets import load_target, target_files


def test_shipped_targets_are_valid() -> None:
    names = set(target_files())
    assert {"local", "rpi4", "loopback"} <= names
    rpi4 = load_target("rpi4")
    assert rpi4.transport == "ssh" and rpi4.arch == "aarch64" and rpi4.trust_on_first_use is False
    assert rpi4.agent_python("/usr/bin/python3") == ".cache/edgepipe/venv/bin/python"
    assert load_target("local").agent_python("/host/python") == "/host/python"


def test_values_come_from_edgepipe_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPIPE_RPI4_HOST", "pi-17.farm.example")
    monkeypatch.setenv("EDGEPIPE_RPI4_PORT", "2201")
    target = load_target("rpi4")
    assert (target.host, target.port) == ("pi-17.farm.example", 2201)


def test_wrong_fields_name_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntransport: ssh\nhost: h\nuser: u\nkey: k\nthreds: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: threds: unknown field"):
        load_target(str(bad))
    bad.write_text("name: bad\ntransport: ssh\nuser: u\nkey: k\n")
    with pytest.raises(ConfigError, match="needs host"):
        load_target(str(bad))
    bad.write_text("name: bad\ntransport: ssh\nhost: h\n")  # no user is fine (your login name); no key is not
    with pytest.raises(ConfigError, match="needs a key file, or use_agent"):
        load_target(str(bad))
    bad.write_text("name: bad\ntransport: serial\n")
    with pytest.raises(ConfigError, match="transport"):
        load_target(str(bad))


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown target 'rpi5' \(known: .*local.*rpi4"):
        load_target("rpi5")


def test_key_and_known_hosts_expand_home() -> None:
    target = Target(name="t", transport="ssh", host="h", user="u", key=Path("~/k"), known_hosts=Path("~/kh"))
    assert target.key == Path.home() / "k" and target.known_hosts == Path.home() / "kh"


def test_targets_list_cli() -> None:
    done = run_cli("targets", "list")
    assert done.returncode == 0
    assert all(name in done.stdout for name in ("local", "rpi4", "loopback"))
