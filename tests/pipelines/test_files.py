"""write_atomic and append_line: what a reader or a resumed run finds after a writer dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines.files import append_line, complete_lines, write_atomic
from pipelines.train.loop import METRICS, read_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = write_atomic(tmp_path / "run.json", '{"step": 1}')
    assert target.read_text() == '{"step": 1}' and oct(target.stat().st_mode & 0o777) == "0o644"

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, '{"step": 2}')
    assert target.read_text() == '{"step": 1}'
    assert siblings(target) == ["run.json"]


def test_a_writer_killed_mid_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """A child writes 128 MiB over a small file and is killed as soon as its partial file exists."""
    target = write_atomic(tmp_path / "record.json", "old")
    size = 128 << 20
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pipelines.files import write_atomic; "
         f"write_atomic(sys.argv[1], b'x' * {size})", str(target)],
        cwd=REPO_ROOT,
    )
    try:
        while child.poll() is None and not any(name.endswith(".partial") for name in siblings(target)):
            time.sleep(0.001)  # polling for the event (the partial file), not timing it
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    content = target.read_bytes()
    assert content == b"old" or content == b"x" * size  # the old file or the whole new one, never a part


def test_concurrent_writers_of_one_path_each_leave_a_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "asset.glb"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=write_atomic, args=(target, p)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in payloads
    assert siblings(target) == ["asset.glb"]


def test_a_torn_last_line_is_skipped_by_readers_and_cut_by_the_next_append(tmp_path: Path) -> None:
    log = tmp_path / METRICS
    append_line(log, json.dumps({"step": 1, "loss": 0.5}))
    append_line(log, json.dumps({"step": 2, "loss": 0.4}))
    with open(log, "a") as f:  # what a trainer killed in the middle of a line leaves
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    append_line(log, json.dumps({"step": 3, "loss": 0.3}))  # the resumed run logs step 3 again
    assert complete_lines(log) == [json.dumps({"step": s, "loss": l}) for s, l in ((1, 0.5), (2, 0.4), (3, 0.3))]
    assert log.read_text().endswith("\n")
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_a_torn_line_longer_than_a_block_is_cut_whole(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    append_line(log, "first")
    with open(log, "a") as f:
        f.write("y" * 200_000)
    append_line(log, "second")
    assert complete_lines(log) == ["first", "second"]
    torn_only = tmp_path / "torn.jsonl"
    torn_only.write_text("z" * 70_000)
    append_line(torn_only, "only")
    assert torn_only.read_text() == "only\n"


def test_a_folder_written_whole_replaces_only_a_previous_one_and_a_crash_leaves_the_old_one(tmp_path):
    from pipelines.files import FolderRefused, folder_swapped_in

    out = tmp_path / "out"
    with folder_swapped_in(out, ".mine", "thing") as staging:
        (staging / "a.txt").write_text("one")
    assert (out / "a.txt").read_text() == "one" and (out / ".mine").is_file()
    with pytest.raises(RuntimeError), folder_swapped_in(out, ".mine", "thing") as staging:
        (staging / "a.txt").write_text("two")
        raise RuntimeError("killed mid-write")
    assert (out / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes").write_text("keep")
    with pytest.raises(FolderRefused, match="not a previous thing"), folder_swapped_in(theirs, ".mine", "thing"):
        pass
    assert (theirs / "notes").read_text() == "keep"
