"""A change of the configuration file is accepted (exit 0 for systemd to restart) only when the
next start would accept it too; otherwise the supervisor runs on with what it read at start."""

from __future__ import annotations

import json
from pathlib import Path

from livereduce.config import load_config
from livereduce.supervisor.daemon import Supervisor
from livereduce.supervisor.watch import ConfigChanged
from livereduce.worker.engine import mantid_available


def supervisor_for(tmp_path: Path) -> tuple[Supervisor, Path, dict]:
    (tmp_path / "reduce_FAKE_live_proc.py").write_text("output = input\n")
    raw = {"instrument": "FAKE", "listener": "fake", "script_dir": ".", "engine": "embedded"}
    conf = tmp_path / "livereduce.conf"
    conf.write_text(json.dumps(raw))
    return Supervisor(load_config(conf)), conf, raw


def change(conf: Path) -> ConfigChanged:
    return ConfigChanged(path=conf, detected_by="inotify", old_md5="a", new_md5="b")


def test_a_change_to_an_engine_this_python_cannot_run_is_rejected(tmp_path):
    # Found live: `"engine": "mantid"` saved on a machine without Mantid was accepted, the
    # supervisor exited for systemd to restart it, and every start after that failed (exit 2)
    # until systemd's start limit stopped the service.
    assert mantid_available()[0] is False
    supervisor, conf, raw = supervisor_for(tmp_path)
    conf.write_text(json.dumps({**raw, "engine": "mantid"}))
    saved = supervisor._config_saved(change(conf))
    assert saved.error == (
        f"configuration file {conf}: key 'engine': engine 'mantid' is configured but no module "
        "named 'mantid' in this Python"
    )


def test_a_usable_change_is_accepted(tmp_path):
    supervisor, conf, raw = supervisor_for(tmp_path)
    conf.write_text(json.dumps({**raw, "update_every": 5}))
    saved = supervisor._config_saved(change(conf))
    assert (saved.error, saved.restored) == ("", False)
