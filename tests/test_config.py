from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, dump_toml, load_config
from agent.config.loader import toml_key_lines
from agent.config.schema import Config
from tests.conftest import agent_env, run_agent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vigil.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_round_trip_through_toml(tmp_path):
    cfg = Config()
    again = load_config(write(tmp_path, dump_toml(cfg)), environ={}).config
    assert again == cfg


def test_error_names_field_value_reason_and_line(tmp_path):
    path = write(
        tmp_path,
        '# comment\n[node]\nid = "pole-1"\n\n[detect]\nclasses = ["person"]\nscore_threshold = 1.5\n',
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    (issue,) = err.value.issues
    assert issue.path == "detect.score_threshold"
    assert issue.value == 1.5
    assert issue.origin == f"{path}:7"
    assert "less than or equal to 1" in issue.reason


def test_unknown_key_and_bad_table_are_reported_with_lines(tmp_path):
    path = write(tmp_path, "[capture]\nfsp = 10\n\n[motoin]\nenabled = false\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    found = {(i.path, i.origin) for i in err.value.issues}
    assert ("capture.fsp", f"{path}:2") in found
    assert ("motoin", f"{path}:4") in found
    assert all("unknown setting" in i.reason for i in err.value.issues)


def test_toml_syntax_error_points_at_line(tmp_path):
    path = write(tmp_path, '[node]\nid = "x"\nsite = \n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.issues[0].origin == f"{path}:3"


def test_precedence_defaults_file_env_cli(tmp_path):
    path = write(tmp_path, '[capture]\nfps = 5\nsource = "synthetic:1"\n[detect]\nscore_threshold = 0.3\n')
    env = {"VIGIL_CAPTURE__FPS": "7", "VIGIL_DETECT__SCORE_THRESHOLD": "0.6"}
    loaded = load_config(
        path, environ=env, overrides={"capture.fps": 9.0}, override_origins={("capture", "fps"): "--fps"}
    )
    cfg = loaded.config
    assert cfg.capture.fps == 9.0  # CLI beats env
    assert cfg.detect.score_threshold == 0.6  # env beats file
    assert cfg.capture.source == "synthetic:1"  # file beats default
    assert cfg.motion.enabled is True  # default
    assert loaded.origins[("capture", "fps")] == "--fps"


def test_env_error_names_the_variable(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"VIGIL_CAPTURE__FPS": "fast"})
    assert err.value.issues[0].origin == "env VIGIL_CAPTURE__FPS"
    assert err.value.issues[0].path == "capture.fps"


def test_key_line_scan_handles_array_tables_and_dotted_keys():
    text = '[[rules]]\nname = "a"\n\n[[rules]]\nname = "b"\nzone.points = 1\n[node]\n"id" = "x"\n'
    lines = toml_key_lines(text)
    assert lines[("rules", 0, "name")] == 2
    assert lines[("rules", 1, "name")] == 5
    assert lines[("rules", 1, "zone", "points")] == 6
    assert lines[("node", "id")] == 8


def test_check_config_command(tmp_path):
    good = write(tmp_path, '[node]\nid = "pole-17"\n')
    ok = run_agent("check-config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nid = "pole 17"\n')
    res = run_agent("check-config", str(bad))
    assert res.returncode == 2
    assert f"{bad}:2: node.id = 'pole 17'" in res.stderr
    assert "Traceback" not in res.stderr


def test_check_config_print_shows_effective_values(tmp_path):
    path = write(tmp_path, "[capture]\nfps = 4\n")
    res = run_agent("check-config", "--print", str(path), env=agent_env(VIGIL_MOTION__ENABLED="false"))
    assert res.returncode == 0, res.stderr
    assert "fps = 4" in res.stdout
    assert "enabled = false" in res.stdout


def test_secrets_are_never_echoed(tmp_path):
    path = write(tmp_path, '[modem]\npin = "12x4"\n[uplink]\npassword = 5\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    text = str(err.value)
    assert "modem.pin = '***'" in text and "12x4" not in text
    assert "uplink.password = '***'" in text


def test_print_hides_secrets(tmp_path):
    path = write(tmp_path, '[modem]\npin = "1234"\n[uplink]\npassword = "hunter2"\n')
    res = run_agent("check-config", "--print", str(path))
    assert res.returncode == 0, res.stderr
    assert "1234" not in res.stdout and "hunter2" not in res.stdout
    assert 'pin = "***"' in res.stdout


def test_print_includes_live_changes_kept_on_the_node(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "config-overlay.toml").write_text('[set]\n"detect.score_threshold" = 0.77\n')
    path = write(tmp_path, f'[node]\nstate_dir = "{state}"\n[detect]\nscore_threshold = 0.5\n')
    res = run_agent("check-config", "--print", str(path))
    assert res.returncode == 0, res.stderr
    assert "score_threshold = 0.77" in res.stdout and "live changes" in res.stdout
