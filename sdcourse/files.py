"""Writing a file so that no reader ever sees half of it.

Caches, run records, benchmark results and executed notebooks are read by other processes
(or by the next run after a crash). Each is written to a temporary file beside its target
and renamed onto it only when complete: a reader finds the old file, the new one, or none,
and a failed write leaves nothing behind. (Folders: ``sdcourse.train.common.replace_dir``.)
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to (``image.save(tmp)``, ``torch.save(x, tmp)``).

    When the block ends without an error, the file is renamed onto ``path``; otherwise it is
    removed and ``path`` is left as it was. The temporary name keeps ``path``'s suffix, so
    writers that choose the format by extension (PIL) write the right one, and names the
    process and thread (``.<stem>.<pid>-<thread>.tmp<suffix>``): two threads writing the same
    file (downloads in a thread pool) each fill their own.
    """
    import threading

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{path.stem}.", f".tmp{path.suffix}")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful rename


def remove_stale(folder: str | os.PathLike, before: str, after: str = "") -> None:
    """Remove the files and folders in ``folder`` named ``<before><pid><after>`` (or
    ``<before><pid>-<thread><after>``) whose process no longer runs.

    Why: what a process writes under a name with its pid it removes itself when the write
    fails, but a kill (SIGKILL, a power cut) runs no clean-up, and the next run, with another
    pid, never looks for it: a 41 MB half-written training set, a folder of class pictures.
    On POSIX only, where ``os.kill(pid, 0)`` asks harmlessly whether a pid runs (on Windows it
    would send Ctrl-C). A pid taken since by another process keeps its file: harmless."""
    import glob
    import shutil

    if os.name != "posix":
        return
    for stale in Path(folder).glob(glob.escape(before) + "*" + glob.escape(after)):
        pid = stale.name[len(before):len(stale.name) - len(after)].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # it runs (or runs as another user): not ours to remove
        except ProcessLookupError:
            pass
        except OSError:
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def cache_root() -> Path:
    """Where the course keeps what it makes or downloads (pictures, the mini model's folders,
    DreamBooth runs): ``$SDCOURSE_CACHE`` when set, else ``~/.cache/sdcourse``. Absolute, with
    ``~`` expanded: a value set in Python or a .env file gets no shell to do it, and a relative
    one would name another folder in every notebook's own folder."""
    root = os.environ.get("SDCOURSE_CACHE") or Path.home() / ".cache" / "sdcourse"
    return Path(root).expanduser().absolute()


def cache_fix() -> str:
    """What to do when the course's cache folder (:func:`cache_root`) cannot be used, as the
    end of a one-line error."""
    if os.environ.get("SDCOURSE_CACHE"):
        return "point SDCOURSE_CACHE at a writable folder or unset it"
    return "set SDCOURSE_CACHE to a writable folder"


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why the folder ``folder`` cannot be made and written to (None: it can), in a few words
    for a one-line error. Leaves nothing behind (a test file is created in the folder, or in
    its nearest existing parent, and removed). Checked before work that ends by writing there:
    a run must not compute for minutes and then fail to save what it computed."""
    import tempfile

    folder = Path(folder).absolute()
    for path in (folder, *folder.parents):
        if os.path.lexists(path) and not path.exists():  # a link whose target is gone
            return f"{path} is a link to {os.readlink(path)}, which does not exist"
        if path.exists():
            break
    if not path.is_dir():
        return "a file, not a folder" + ("" if path == folder else f" ({path} is)")
    try:
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        return f"cannot write in {path} ({error.strerror or error})"
    return None


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
