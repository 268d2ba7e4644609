"""The file watcher on real files and real inotify: one event per save, none for a touch."""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path

import pytest

from livereduce.supervisor.watch import ConfigChanged, ScriptsChanged, Watcher, file_md5

DEBOUNCE_S = 0.3
QUIET_S = 0.8  # how long "nothing more happens" is waited for: well past one debounce


@pytest.fixture
def files(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    proc = scripts / "reduce_HYS_live_proc.py"
    post = scripts / "reduce_HYS_live_post_proc.py"
    proc.write_text("output = input\n")
    conf = tmp_path / "etc" / "livereduce.conf"
    conf.parent.mkdir()
    conf.write_text('{"instrument": "HYSPEC"}\n')
    return proc, post, conf


@pytest.fixture
def watch(files):
    watchers = []

    def start(*, poll_interval_s=60.0, use_inotify=True, config=None):
        proc, post, conf = files
        events: queue.Queue = queue.Queue()
        watcher = Watcher(
            [proc, post],
            config or conf,
            events.put,
            poll_interval_s=poll_interval_s,
            debounce_s=DEBOUNCE_S,
            use_inotify=use_inotify,
        )
        watcher.start()
        watchers.append(watcher)
        return watcher, events

    yield start
    for watcher in watchers:
        watcher.stop()


def drain(events: queue.Queue, quiet_s: float = QUIET_S, limit_s: float = 15.0) -> list:
    """Events until none came for ``quiet_s`` (bounded by ``limit_s``)."""
    got = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            got.append(events.get(timeout=quiet_s))
        except queue.Empty:
            break
    return got


def replace_file(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_an_old_file_moved_in_counts_from_when_it_was_seen(watch, files):
    proc, _, _ = files
    _, events = watch()
    old = proc.with_name("kept.py")
    old.write_text("output = input * 5\n")
    os.utime(old, (time.time() - 3600, time.time() - 3600))  # as `cp -p` or `rsync -t` leave it
    moved_at = time.time()
    os.replace(old, proc)
    (saved,) = drain(events)
    assert moved_at <= saved.saved_at < moved_at + 1.0


def test_each_kind_of_save_gives_exactly_one_event(watch, files):
    proc, post, _ = files
    watcher, events = watch()
    assert watcher.inotify_active
    before = time.time()
    proc.write_text("output = input * 2\n")  # in place
    after = time.time()
    (saved,) = drain(events)
    assert isinstance(saved, ScriptsChanged)
    assert saved.paths == (proc,)
    assert saved.detected_by == "inotify"
    assert before <= saved.saved_at <= after + 0.5  # when the save was seen, not the debounce
    replace_file(proc, "output = input * 3\n")  # rename over, as editors and rsync do
    assert [e.paths for e in drain(events)] == [(proc,)]
    post.write_text("output = input\n")  # created
    assert [e.paths for e in drain(events)] == [(post,)]
    post.unlink()  # deleted
    assert [e.paths for e in drain(events)] == [(post,)]


def test_touch_and_identical_rewrite_give_none(watch, files, caplog):
    caplog.set_level("INFO", logger="livereduce.supervisor.watch")
    proc, _, conf = files
    _, events = watch()
    proc.touch()
    assert drain(events) == []
    replace_file(proc, proc.read_text())
    conf.write_text(conf.read_text())
    assert drain(events) == []
    unchanged = [r.getMessage() for r in caplog.records if "content_unchanged" in r.getMessage()]
    assert len(unchanged) >= 2
    assert all("reduce_HYS_live_proc.py" in m or "livereduce.conf" in m for m in unchanged)


def test_vim_style_double_save_is_seen_twice(watch, files):
    proc, _, _ = files
    _, events = watch()
    for version in (1, 2):  # vim backupcopy=no: old file renamed away, a new file written
        backup = proc.with_name(proc.name + "~")
        os.rename(proc, backup)
        proc.write_text(f"output = input  # v{version}\n")
        backup.unlink()
        (event,) = drain(events)
        assert event.paths == (proc,)
    assert "v2" in proc.read_text()


def test_a_script_written_in_pieces_gives_one_event_after_the_last_write(watch, files):
    proc, _, _ = files
    _, events = watch()
    pieces = ["import time\n", "x = 1\n", "output = input\n"]
    with proc.open("w") as handle:  # the writer keeps the file open and pauses past the debounce
        for piece in pieces:
            handle.write(piece)
            handle.flush()
            time.sleep(2 * DEBOUNCE_S)
        last_write = time.monotonic()
    event = events.get(timeout=10)
    assert time.monotonic() - last_write >= DEBOUNCE_S * 0.9
    assert event.paths == (proc,)
    assert proc.read_text() == "".join(pieces)
    assert drain(events) == []


def test_twenty_changes_in_a_burst_end_on_the_last_version(watch, files):
    proc, _, _ = files
    _, events = watch()
    for version in range(20):
        replace_file(proc, f"output = input  # v{version}\n")
        time.sleep(0.05)
    got = drain(events)
    assert 1 <= len(got) <= 2
    assert "v19" in proc.read_text()


def test_without_inotify_the_periodic_check_finds_the_change(watch, files):
    proc, _, _ = files
    poll_s = 1.0
    watcher, events = watch(poll_interval_s=poll_s, use_inotify=False)
    assert not watcher.inotify_active
    proc.write_text("output = input + 1\n")
    # within a poll interval, then one debounce to confirm the content stays the same
    event = events.get(timeout=poll_s + 3 * DEBOUNCE_S + 2)
    assert event.detected_by == "poll"
    assert event.paths == (proc,)
    proc.touch()
    assert drain(events, quiet_s=2 * poll_s) == []


def test_environment_variable_disables_inotify(files, monkeypatch):
    monkeypatch.setenv("LIVEREDUCE_INOTIFY", "0")
    proc, post, conf = files
    watcher = Watcher([proc, post], conf, lambda _: None, poll_interval_s=1.0)
    assert watcher.use_inotify is False


def test_config_change_and_identical_rewrite(watch, files):
    _, _, conf = files
    _, events = watch()
    conf.write_text(conf.read_text())
    assert drain(events) == []
    old = file_md5(conf)
    replace_file(conf, '{"instrument": "HYSPEC", "update_every": 5}\n')
    (event,) = drain(events)
    assert isinstance(event, ConfigChanged)
    assert (event.path, event.old_md5, event.new_md5) == (conf, old, file_md5(conf))
    assert "livereduce.conf changed" in event.describe()


def test_config_symlink_swap_is_seen(watch, tmp_path):
    # /etc/lr/current -> v1 ; the config is /etc/lr/current/livereduce.conf ; swap to v2
    base = tmp_path / "lr"
    for version in ("v1", "v2"):
        (base / version).mkdir(parents=True)
        (base / version / "livereduce.conf").write_text(
            f'{{"instrument": "HYSPEC", "v": "{version}"}}'
        )
    (base / "current").symlink_to("v1")
    conf = base / "current" / "livereduce.conf"
    _, events = watch(config=conf)
    new_link = base / "current.new"
    new_link.symlink_to("v2")
    os.replace(new_link, base / "current")
    (event,) = drain(events)
    assert isinstance(event, ConfigChanged)
    assert event.detected_by == "inotify"
    (base / "v2" / "livereduce.conf").write_text('{"instrument": "HYSPEC", "v": "v2b"}')
    (event,) = drain(events)  # the watch follows the swap to the new folder
    assert isinstance(event, ConfigChanged)


def test_script_folder_replaced_is_watched_again(watch, files):
    proc, _, _ = files
    _, events = watch()
    folder = proc.parent
    fresh = folder.with_name("scripts.new")
    fresh.mkdir()
    (fresh / proc.name).write_text("output = input  # new folder\n")
    old = folder.with_name("scripts.old")
    os.rename(folder, old)
    os.rename(fresh, folder)
    (event,) = drain(events)
    assert event.paths == (proc,)
    proc.write_text("output = input  # edited in the new folder\n")
    assert [e.paths for e in drain(events)] == [(proc,)]


def test_resync_takes_the_current_content_as_known(watch, files):
    proc, _, _ = files
    watcher, events = watch(use_inotify=False, poll_interval_s=0.5)
    proc.write_text("output = input  # changed, then resynced\n")
    watcher.resync()
    assert drain(events, quiet_s=2.0) == []


def test_an_unreadable_script_is_not_a_change(watch, files, caplog):
    proc, _, _ = files
    _, events = watch()
    proc.unlink()
    proc.mkdir()  # exists but cannot be read as a file, like EIO/ESTALE on NFS
    assert drain(events) == []
    assert "file_unreadable" in caplog.text
    proc.rmdir()
    proc.write_text("output = input  # back\n")
    assert [e.paths for e in drain(events)] == [(proc,)]
