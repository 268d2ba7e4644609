"""Configuration: the predecessor's keys and defaults, strict validation naming file and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from livereduce.config import (
    AccumulationMethod,
    ConfigError,
    Engine,
    ListenerKind,
    RunTransitionBehavior,
    StartFrom,
    default_instrument_name,
    load_config,
)


@pytest.fixture
def script_dir(tmp_path: Path) -> Path:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "reduce_HYS_live_proc.py").write_text("output = input\n")
    return scripts


def write(tmp_path: Path, data: object, name: str = "livereduce.conf") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_predecessor_defaults(tmp_path, script_dir):
    config = load_config(write(tmp_path, {"instrument": "HYSPEC", "script_dir": str(script_dir)}))
    assert config.instrument.name == "HYSPEC"
    assert config.instrument.short_name == "HYS"
    assert config.update_every == 30.0
    assert config.preserve_events is True
    assert config.accum_method is AccumulationMethod.ADD
    assert config.periods is None
    assert config.spectra is None
    assert config.system_mem_limit_perc == 70.0
    assert (
        config.mem_check_interval_sec == 0.1
    )  # 1 s in the predecessor: too slow for a script allocating 1 GB/s
    assert (config.watchdog.interval, config.watchdog.threshold) == (60, 300)
    assert config.engine is Engine.AUTO
    assert config.listener is ListenerKind.ADARA
    assert config.address == "bl14b-daq1.sns.gov:31415"
    assert config.start_from is StartFrom.START_OF_RUN
    assert config.run_transition is RunTransitionBehavior.RESTART
    assert config.output_workspace == "result"
    assert config.poll_interval_sec == 10.0
    assert config.stop_timeout == 20.0
    assert config.heartbeat_timeout == 90.0  # max(3 * 30, 60)
    assert config.proc_script == script_dir / "reduce_HYS_live_proc.py"
    assert config.post_proc_script == script_dir / "reduce_HYS_live_post_proc.py"
    assert config.existing_scripts() == (script_dir / "reduce_HYS_live_proc.py", None)


def test_short_names_name_the_scripts(tmp_path):
    (tmp_path / "reduce_PG3_live_post_proc.py").write_text("output = input\n")
    config = load_config(write(tmp_path, {"instrument": "POWGEN", "script_dir": "."}))
    assert config.instrument.short_name == "PG3"
    assert config.script_dir == tmp_path
    assert config.existing_scripts() == (None, tmp_path / "reduce_PG3_live_post_proc.py")
    assert config.address == "bl11a-daq1.sns.gov:31415"


def test_default_script_dir_is_the_instrument_share(tmp_path):
    config = load_config(write(tmp_path, {"instrument": "NOM"}), check_scripts=False)
    assert config.script_dir == Path("/SNS/NOM/shared/livereduce")


def test_relative_paths_resolve_against_the_config_folder(tmp_path, script_dir):
    path = write(
        tmp_path,
        {"instrument": "HYSPEC", "script_dir": "scripts", "output_dir": "out", "log_file": "x.log"},
    )
    config = load_config(path)
    assert config.script_dir == script_dir
    assert config.output_dir == tmp_path / "out"
    assert config.status_file == tmp_path / "out" / "status.json"
    assert config.log_file == tmp_path / "x.log"


def test_all_new_keys(tmp_path, script_dir):
    config = load_config(
        write(
            tmp_path,
            {
                "instrument": "HYSPEC",
                "script_dir": str(script_dir),
                "engine": "embedded",
                "listener": "adara",
                "address": "127.0.0.1:31999",
                "start_from": "now",
                "run_transition": "Rename",
                "output_workspace": "live_HYS",
                "accum_method": "Append",
                "periods": [1, 3],
                "spectra": [0, 5],
                "update_every": 0.5,
                "heartbeat_timeout_sec": 7,
                "listener_options": {"stale_timeout_sec": 4},
                "watchdog": {"interval": 30, "threshold": 120},
            },
        )
    )
    assert config.engine is Engine.EMBEDDED
    assert config.address == "127.0.0.1:31999"
    assert config.start_from is StartFrom.NOW
    assert config.run_transition is RunTransitionBehavior.RENAME
    assert config.output_workspace == "live_HYS"
    assert config.accum_method is AccumulationMethod.APPEND
    assert config.periods == (1, 3)
    assert config.spectra == (0, 5)
    assert config.heartbeat_timeout == 7.0
    assert config.listener_options == {"stale_timeout_sec": 4}
    assert (config.watchdog.interval, config.watchdog.threshold) == (30, 120)


@pytest.mark.parametrize(
    ("data", "key", "allowed"),
    [
        ({"update_every": "30"}, "update_every", "a number > 0"),
        ({"update_every": 0}, "update_every", "a number > 0"),
        ({"update_every": True}, "update_every", "a number > 0"),
        ({"preserve_events": "yes"}, "preserve_events", "true or false"),
        ({"accum_method": "add"}, "accum_method", "Add, Replace, Append"),
        ({"engine": "scipp"}, "engine", "auto, embedded, mantid"),
        ({"listener": "epics"}, "listener", "adara, fake, nexus, kafka"),
        ({"start_from": "start"}, "start_from", "start_of_run, now"),
        ({"run_transition": "restart"}, "run_transition", "Restart, Stop, Rename"),
        ({"periods": [0, 1]}, "periods", "list of whole numbers >= 1"),
        ({"spectra": "1,2"}, "spectra", "list of whole numbers >= 0"),
        ({"system_mem_limit_perc": 150}, "system_mem_limit_perc", "<= 100"),
        ({"mem_check_interval_sec": -1}, "mem_check_interval_sec", "> 0"),
        ({"address": "localhost"}, "address", "'host:port'"),
        ({"address": "localhost:99999"}, "address", "port from 1 to 65535"),
        ({"output_workspace": "a/b"}, "output_workspace", "letters, digits"),
        ({"watchdog": {"threshold": 10}}, "watchdog.threshold", ">= 20"),
        ({"watchdog": {"interval": 1.5}}, "watchdog.interval", "whole number"),
        ({"watchdog": {"intervall": 5}}, "watchdog.intervall", "allowed: interval, threshold"),
        ({"watchdog": 5}, "watchdog", "an object"),
        ({"listener_options": {"event_rate": 5}}, "listener_options.event_rate", "allowed:"),
        ({"CONDA_ENV": ""}, "CONDA_ENV", "non-empty string"),
        ({"instrument": 7}, "instrument", "non-empty string"),
        ({"instrument": "NOSUCH"}, "instrument", "set 'address'"),
        ({"script_timeout_sec": 0}, "script_timeout_sec", "> 0"),
        ({"script_timeout_sec": {"proc": 5}}, "script_timeout_sec", "allowed: processing"),
        ({"script_timeout_sec": {"processing": "x"}}, "script_timeout_sec.processing", "> 0"),
    ],
)
def test_wrong_values_name_file_key_and_what_is_allowed(tmp_path, script_dir, data, key, allowed):
    path = write(tmp_path, {"instrument": "HYSPEC", "script_dir": str(script_dir)} | data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert caught.value.key == key
    assert str(path) in message
    assert f"key '{key}'" in message
    assert allowed in message


@pytest.mark.parametrize(
    ("given", "update_every", "proc", "post_proc"),
    [
        (None, 30, 300.0, 600.0),
        (None, 400, 1200.0, 800.0),
        (45, 30, 45.0, 45.0),
        ({"post_processing": 900}, 30, 300.0, 900.0),
        ({"processing": 12}, 30, 12.0, 600.0),
    ],
)
def test_script_timeouts(tmp_path, script_dir, given, update_every, proc, post_proc):
    data = {"instrument": "HYSPEC", "script_dir": str(script_dir), "update_every": update_every}
    if given is not None:
        data["script_timeout_sec"] = given
    config = load_config(write(tmp_path, data))
    assert (config.proc_script_timeout, config.post_proc_script_timeout) == (proc, post_proc)
    assert config.script_timeout("reduce_HYS_live_post_proc.py") == post_proc
    assert config.script_timeout("reduce_HYS_live_proc.py") == proc


def test_bad_json_names_line_and_column(tmp_path):
    path = write(tmp_path, '{"instrument": "HYSPEC",\n  "update_every": }')
    with pytest.raises(ConfigError, match=r"invalid JSON at line 2 column 19") as caught:
        load_config(path)
    assert caught.value.path == path


def test_a_key_given_twice(tmp_path):
    path = write(tmp_path, '{"instrument": "HYSPEC", "update_every": 5, "update_every": 50}')
    with pytest.raises(ConfigError, match="key 'update_every': given twice; keep one"):
        load_config(path)


def test_json_that_is_not_an_object(tmp_path):
    with pytest.raises(ConfigError, match="must hold a JSON object, not list"):
        load_config(write(tmp_path, [1, 2]))


def test_given_path_that_is_missing_does_not_fall_back(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.conf")


def test_no_processing_script(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, {"instrument": "HYSPEC", "script_dir": str(tmp_path)}))
    assert caught.value.key == "script_dir"
    assert "'reduce_HYS_live_proc.py' or 'reduce_HYS_live_post_proc.py'" in str(caught.value)


def test_an_empty_script_does_not_count(tmp_path, script_dir):
    (script_dir / "reduce_HYS_live_proc.py").write_text("")
    with pytest.raises(ConfigError, match="need at least one non-empty"):
        load_config(write(tmp_path, {"instrument": "HYSPEC", "script_dir": str(script_dir)}))


def test_post_process_false_ignores_the_post_processing_script(tmp_path, script_dir):
    (script_dir / "reduce_HYS_live_post_proc.py").write_text("output = input\n")
    path = write(
        tmp_path, {"instrument": "HYSPEC", "script_dir": str(script_dir), "post_process": False}
    )
    assert load_config(path).existing_scripts()[1] is None


def test_unknown_keys_warn_by_name(tmp_path, script_dir):
    warnings: list[str] = []
    path = write(
        tmp_path,
        {"instrument": "HYSPEC", "script_dir": str(script_dir), "updte_every": 3, "zzz": 1},
    )
    load_config(path, warn=warnings.append)
    assert warnings == [f"{path}: unknown key(s) ignored: updte_every, zzz"]


def test_unknown_instrument_with_address_or_offline_listener(tmp_path, script_dir):
    (script_dir / "reduce_FAKE_live_proc.py").write_text("output = input\n")
    config = load_config(
        write(tmp_path, {"instrument": "FAKE", "listener": "fake", "script_dir": str(script_dir)})
    )
    assert config.instrument.short_name == "FAKE"
    (script_dir / "reduce_XYZ_live_proc.py").write_text("output = input\n")
    config = load_config(
        write(
            tmp_path,
            {"instrument": "XYZ", "address": "127.0.0.1:4000", "script_dir": str(script_dir)},
        )
    )
    assert config.address == "127.0.0.1:4000"


def test_nexus_listener_needs_a_file_path(tmp_path, script_dir):
    base = {"instrument": "HYSPEC", "script_dir": str(script_dir), "listener": "nexus"}
    with pytest.raises(ConfigError, match="path of a NeXus event file"):
        load_config(write(tmp_path, base))
    with pytest.raises(ConfigError, match=r"NeXus event file .*run\.nxs\.h5 does not exist"):
        load_config(write(tmp_path, base | {"address": "run.nxs.h5"}))
    with pytest.raises(ConfigError, match=r"NeXus event file .*scripts is not a file"):
        load_config(write(tmp_path, base | {"address": "scripts"}))
    (tmp_path / "run.nxs.h5").write_bytes(b"")
    config = load_config(write(tmp_path, base | {"address": "run.nxs.h5"}))
    assert config.address == str(tmp_path / "run.nxs.h5")


def test_instrument_from_mantid_properties(tmp_path, script_dir):
    local = tmp_path / "mantid.local.properties"
    user = tmp_path / "Mantid.user.properties"
    local.write_text("default.facility=SNS\ndefault.instrument=POWGEN\n")
    assert default_instrument_name((local, user)) == "POWGEN"
    user.write_text("# user settings\ndefault.instrument = HYSPEC\n")
    assert default_instrument_name((local, user)) == "HYSPEC"
    config = load_config(
        write(tmp_path, {"script_dir": str(script_dir)}), mantid_properties=(local, user)
    )
    assert config.instrument.name == "HYSPEC"


def test_no_instrument_anywhere(tmp_path, script_dir):
    with pytest.raises(ConfigError, match=r"no default\.instrument in") as caught:
        load_config(
            write(tmp_path, {"script_dir": str(script_dir)}),
            mantid_properties=(tmp_path / "absent.properties",),
        )
    assert caught.value.key == "instrument"


def test_effective_configuration_lists_every_key_including_memory(tmp_path, script_dir):
    config = load_config(write(tmp_path, {"instrument": "HYSPEC", "script_dir": str(script_dir)}))
    effective = config.effective()
    json.dumps(effective)
    assert effective["system_mem_limit_perc"] == 70.0
    assert effective["mem_check_interval_sec"] == 0.1
    assert effective["progress_every_sec"] == 60.0
    assert effective["instrument"]["short_name"] == "HYS"
    assert effective["heartbeat_timeout"] == 90.0
    assert "raw" not in effective


def test_given_records_the_keys_the_file_sets_and_not_null_or_defaulted_ones(tmp_path, script_dir):
    config = load_config(
        write(
            tmp_path,
            {"instrument": "HYSPEC", "script_dir": str(script_dir), "status_file": None},
        )
    )
    assert config.given == frozenset({"instrument", "script_dir"})
    assert "given" not in config.effective()
    defaults = load_config(
        write(
            tmp_path,
            {
                "instrument": "HYSPEC",
                "script_dir": str(script_dir),
                "status_file": "s.json",
                "listener": "adara",
            },
        )
    )
    assert {"status_file", "listener"} <= defaults.given
    assert "address" not in defaults.given  # filled in from the instrument table
