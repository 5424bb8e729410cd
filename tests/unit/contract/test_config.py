"""Config validation: defaults, the shipped config.yaml, errors located by key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.cli import main
from autoscaler.engine.schedules import VALIDATION
from chatscale_contract.config import Config, parse_size
from chatscale_contract.configload import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[3]


def issues_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", env or {})
    return [str(i) for i in info.value.issues]


def test_shipped_config_is_valid_and_documented() -> None:
    config = load_config(ROOT / "config.yaml", env={})
    assert config.shard.max_sessions == 50
    assert config.shard.memory_limit == "10g"
    assert config.policy.scale_down.stabilization == 300
    # Every leaf key of the model appears in the shipped file, so the file documents them all.
    text = (ROOT / "config.yaml").read_text()
    for section, model in Config.model_fields.items():
        assert f"\n{section}:" in text
        sub = model.annotation
        for key, info in getattr(sub, "model_fields", {}).items():
            if info.exclude:  # a removed key: setting it is an error that says what replaced it
                continue
            assert f" {key}:" in text, f"{section}.{key} undocumented in config.yaml"


def test_empty_file_gives_defaults() -> None:
    config = parse_config("", "c.yaml", {})
    assert config == Config()
    assert config.policy.min_shards == 1


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(ValueError, match="frozen"):
        setattr(config.policy, "min_shards", 3)  # noqa: B010 (the assignment is the test)


def test_three_mistakes_are_all_reported_with_key_and_line() -> None:
    text = (
        "policy:\n"
        "  min_shards: 2\n"
        "  target_utilisation: 0.7\n"  # typo: line 3
        "  scale_down:\n"
        "    stabilization: -5\n"  # negative: line 5
        "shard:\n"
        "  memory_limit: lots\n"  # not a size: line 7
    )
    found = issues_of(text)
    assert len(found) == 3, found
    assert any("c.yaml:3: policy.target_utilisation: unknown key" in f for f in found)
    assert any("c.yaml:5: policy.scale_down.stabilization:" in f and "-5" in f for f in found)
    assert any("c.yaml:7: shard.memory_limit:" in f and "'lots'" in f for f in found)


def test_cross_field_errors_point_at_the_key_to_change() -> None:
    found = issues_of("policy:\n  min_shards: 9\n  max_shards: 3\n")
    assert found == ["c.yaml:2: policy.min_shards: 9 exceeds max_shards (3)"]
    text = "policy:\n  max_shards: 3\n  schedules:\n    - name: a\n      cron: '0 8 * * *'\n"
    found = issues_of(text + "      duration: 60\n      min_shards: 9\n", {})
    assert found == [
        "c.yaml:7: policy.schedules.0.min_shards: schedule 'a' asks for 9, more than max_shards (3)"
    ]


def test_a_hold_must_end_before_nginx_gives_up() -> None:
    (found,) = issues_of("nginx:\n  read_timeout: 30\nactivator:\n  hold_timeout: 40\n")
    assert found.startswith("c.yaml:4: activator.hold_timeout: 40 s must be shorter than")
    (found,) = issues_of("activator:\n  hold_timeout: 500\n")
    assert "activator.hold_timeout" in found and "120" in found


@pytest.mark.parametrize(
    "policy",
    [
        "policy:\n  idle_to_zero: 600\n",
        "policy:\n  min_shards: 0\n  buffer:\n    slots: 0\n",
    ],
)
def test_a_fleet_that_could_never_wake_is_refused(policy: str) -> None:
    (found,) = issues_of(policy + "activator:\n  enabled: false\n")
    assert "activator.enabled: false, but the fleet can reach zero shards" in found
    assert parse_config(policy, "c.yaml", {}).activator.enabled  # with the activator: fine


def test_schedule_errors_name_the_list_item() -> None:
    text = (
        "policy:\n"
        "  schedules:\n"
        "    - name: ok\n"
        "      cron: '0 8 * * *'\n"
        "      duration: 60\n"
        "      min_shards: 2\n"
        "    - name: bad\n"
        "      cron: 'every morning'\n"
        "      duration: 60\n"
        "      min_shards: 2\n"
        "      timezone: Mars/Olympus\n"
    )
    found = issues_of(text)
    assert any(f.startswith("c.yaml:8: policy.schedules.1.cron: invalid cron") for f in found), (
        found
    )
    assert any(f.startswith("c.yaml:11: policy.schedules.1.timezone: unknown") for f in found), (
        found
    )


def test_cron_ranges_are_checked_by_the_parser_the_autoscaler_runs() -> None:
    """Five fields pass the contract's shape check; APScheduler, passed in the validation
    context as the autoscaler does, rejects minute 61 in the same pass as the other errors."""
    text = (
        "policy:\n"
        "  min_shards: -1\n"
        "  schedules:\n"
        "    - name: late\n"
        "      cron: '61 8 * * *'\n"
        "      duration: 60\n"
        "      min_shards: 2\n"
    )
    shape_only = parse_config(text.replace("-1", "1"), "c.yaml", {})
    assert shape_only.policy.schedules[0].cron == "61 8 * * *"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", {}, context=VALIDATION)
    found = [str(i) for i in info.value.issues]
    assert found[0].startswith("c.yaml:2: policy.min_shards:"), found
    assert found[1].startswith("c.yaml:5: policy.schedules.0.cron: invalid cron"), found


def test_yaml_syntax_error_names_the_line() -> None:
    found = issues_of("policy:\n  min_shards: [1\n")
    assert len(found) == 1 and found[0].startswith("c.yaml:") and "not valid YAML" in found[0]


def test_duplicate_keys_are_errors() -> None:
    found = issues_of("policy:\n  min_shards: 1\n  min_shards: 2\n")
    assert found == ["c.yaml:3: policy.min_shards: key given twice; remove one"]


def test_top_level_must_be_a_mapping() -> None:
    assert issues_of("- a\n- b\n") == [
        "c.yaml:1: <top level>: the top level must be a mapping of sections"
    ]


def test_environment_overrides() -> None:
    env = {"REDIS_URL": "redis://elsewhere:6380/2", "CHATSCALE__POLICY__MIN_SHARDS": "3"}
    config = parse_config("policy:\n  min_shards: 1\n", "c.yaml", env)
    assert config.redis.url == "redis://elsewhere:6380/2"
    assert config.policy.min_shards == 3


def test_bad_environment_override_names_the_variable() -> None:
    found = issues_of("", {"CHATSCALE__POLICY__MAX_SHARDS": "many"})
    assert len(found) == 1
    assert found[0].startswith("env CHATSCALE__POLICY__MAX_SHARDS: policy.max_shards:")


def test_heartbeat_timeout_must_exceed_two_intervals() -> None:
    found = issues_of("heartbeat:\n  interval: 5\n  timeout: 8\n")
    assert found == [
        "c.yaml:1: heartbeat: timeout must be more than twice the interval, or one late beat kills"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10g", 10 * 1024**3),
        ("512m", 512 * 1024**2),
        ("1.5g", int(1.5 * 1024**3)),
        (4096, 4096),
        ("2GB", 2 * 1024**3),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "-1g", "0", 0])
def test_parse_size_rejects(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "config.yaml")]) == 0
    assert "never goes below 1 shard(s)" in capsys.readouterr().out
    sleepy = tmp_path / "sleepy.yaml"
    sleepy.write_text("policy:\n  idle_to_zero: 900\n  min_shards: 2\n")
    assert main(["check-config", str(sleepy)]) == 0
    out = capsys.readouterr().out
    assert "keeps 2 shard(s)" in out and "goes to zero after 900 s" in out
    assert "the activator holds it" in out
    sleepy.write_text("policy:\n  min_shards: 0\n  buffer: {slots: 0}\n")
    assert main(["check-config", str(sleepy)]) == 0
    assert "goes to zero whenever it has no session" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy:\n  min_shard: 1\n  max_shards: 0\nstatus:\n  bnd: x\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "3 error(s)" in err
    assert f"{bad}:2: policy.min_shard: unknown key" in err
    assert f"{bad}:3: policy.max_shards:" in err
    assert f"{bad}:5: status.bnd: unknown key" in err


def test_named_environment_values_stay_strings() -> None:
    config = parse_config("", "c.yaml", {"STATUS_TOKEN": "123456", "AUTOSCALER_DRY_RUN": "true"})
    assert config.status.token == "123456" and config.policy.dry_run is True
    assert parse_config("", "c.yaml", {"STATUS_TOKEN": "null"}).status.token == "null"


def test_status_bind_must_be_host_and_port() -> None:
    found = issues_of("", {"STATUS_BIND": "localhost"})
    assert found == [
        "env STATUS_BIND: status.bind: 'localhost' is not host:port, e.g. 127.0.0.1:8080"
    ]
