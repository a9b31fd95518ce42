"""Atomic writes: a reader finds the old file or the new one, never half of one, and a failed
write leaves nothing behind."""
from pathlib import Path

import pytest
from PIL import Image

from sdcourse import files


@pytest.mark.parametrize("fail_at", ["write", "replace"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, fail_at):
    """A write that fails half-way (disk full) or a rename that fails leaves the old file as it
    was and nothing beside it."""
    target = tmp_path / "nb.html"
    target.write_text("old")
    real_write_bytes = Path.write_bytes

    def half_write(self, data):
        real_write_bytes(self, data[:3])
        raise OSError(28, "No space left on device")

    def refuse(src, dst):
        raise OSError(13, "Permission denied")

    if fail_at == "write":
        monkeypatch.setattr(Path, "write_bytes", half_write)
    else:
        monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError):
        files.write_atomic(target, "new contents")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nb.html"]
    assert target.read_text() == "old"


def test_write_atomic_replaces_the_file_with_text_or_bytes(tmp_path):
    target = tmp_path / "sub" / "nb.html"  # the folder is made
    files.write_atomic(target, "new é")
    assert target.read_text(encoding="utf-8") == "new é"
    files.write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["nb.html"]


def test_atomic_path_keeps_the_suffix_so_pil_writes_the_format_asked(tmp_path):
    target = tmp_path / "grid.png"
    with files.atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and not target.exists()
        Image.new("RGB", (4, 4), "red").save(tmp)
    assert Image.open(target).format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_an_error_inside_the_block_removes_the_partial_file(tmp_path):
    target = tmp_path / "data.pt"
    with pytest.raises(RuntimeError, match="interrupted"):
        with files.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_cache_root_follows_sdcourse_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path))
    assert files.cache_root() == tmp_path
    monkeypatch.setenv("SDCOURSE_CACHE", "")  # empty counts as unset
    assert files.cache_root() == Path.home() / ".cache" / "sdcourse"
    monkeypatch.setenv("SDCOURSE_CACHE", "~/sdc")  # set in Python or a .env file: no shell expands it
    assert files.cache_root() == Path.home() / "sdc"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDCOURSE_CACHE", "relative")  # the same folder from any working folder
    assert files.cache_root() == tmp_path / "relative"


def test_leftovers_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    """A writer killed mid-write (no clean-up runs) leaves ``.<name>.<pid>.tmp<suffix>`` that
    the next run, with another pid, would never look for. The next atomic write removes those
    of processes that are gone; its own and a running process's stay."""
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    names = {pid: tmp_path / f".result.{pid}.tmp.json" for pid in (gone, os.getppid(), "x1")}
    names["thread"] = tmp_path / f".result.{gone}-140312.tmp.json"  # a gone process's thread
    for name in names.values():
        name.write_text("half")
    (tmp_path / f"class_images.tmp{gone}").mkdir()
    (tmp_path / f"class_images.tmp{gone}" / "0000.png").write_text("half")
    files.write_atomic(tmp_path / "result.json", "{}")
    assert (tmp_path / "result.json").read_text() == "{}"
    assert not names[gone].exists() and not names["thread"].exists()
    assert names[os.getppid()].exists() and names["x1"].exists()  # running; not a pid
    files.remove_stale(tmp_path, "class_images.tmp")
    assert not (tmp_path / f"class_images.tmp{gone}").exists()


def test_threads_writing_one_file_at_once_each_write_whole(tmp_path):
    """Threads of one process (downloads in a pool) used to share one temporary name: one
    renamed the other's half-written file into place, and the other's rename then failed
    (FileNotFoundError). Each now writes its own: every write succeeds and the file is always
    one of them, whole."""
    import threading

    target, errors, seen = tmp_path / "picture.bin", [], set()
    contents = [bytes([i]) * 200_000 for i in range(6)]

    def write(data):
        try:
            for _ in range(5):
                files.write_atomic(target, data)
                seen.add(target.read_bytes())
        except Exception as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=write, args=(data,)) for data in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert seen <= set(contents) and target.read_bytes() in contents
    assert [p.name for p in tmp_path.iterdir()] == ["picture.bin"]
