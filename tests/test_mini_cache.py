"""Tests for sdcourse.models.mini_model_path: the per-task pipeline folder built from the shipped
mini components, cached under a name that changes when the shipped files change.

The shipped folder (sdcourse/mini) is never touched: the tests point MINI_DIR at a copy.
"""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from sdcourse import models

TASKS = ("text2img", "img2img", "inpaint", "depth2img")


@pytest.fixture(scope="module")
def mini_copy(tmp_path_factory):
    """One copy of the shipped components per module (about 45 MB), mtimes kept."""
    # the weights ship in sdcourse/mini: a missing component is a broken package, not a skip
    missing = sorted({c for parts in models._MINI_COMPONENTS.values() for c in parts.values()
                      if not (models.MINI_DIR / c).is_dir()})
    assert not missing, f"{', '.join(missing)} missing from {models.MINI_DIR}"
    copy = tmp_path_factory.mktemp("package") / "mini"
    shutil.copytree(models.MINI_DIR, copy)
    return copy


@pytest.fixture
def mini(mini_copy, monkeypatch):
    monkeypatch.setattr(models, "MINI_DIR", mini_copy)
    return mini_copy


@pytest.mark.parametrize("task", TASKS)
def test_folder_has_the_index_and_every_component(mini, tmp_path, task):
    path = models.mini_model_path(task, cache_dir=tmp_path)
    assert path.parent == tmp_path / "mini" and path.name.startswith(f"{task}-")
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == models.PIPELINES[task]
    parts = models._MINI_COMPONENTS[task]
    for name, component in parts.items():
        assert index[name] == models._LIBRARY[name]
        assert (path / name).is_dir(), name
        # the part is the shipped component it stands for (e.g. unet -> unet_inpaint)
        assert (path / name).resolve() == (mini / component).resolve(), name
        expected = sorted(p.relative_to(mini / component) for p in (mini / component).rglob("*"))
        assert sorted(p.relative_to(path / name) for p in (path / name).rglob("*")) == expected
    # every component the index names is there (diffusers loads them all)
    named = {k for k, v in index.items() if isinstance(v, list) and v[0] is not None}
    assert named == set(parts)
    assert sorted(p.name for p in (tmp_path / "mini").iterdir()) == [path.name]  # no .tmp left


def test_folder_loads_as_a_diffusers_pipeline(mini, tmp_path):
    import diffusers

    path = models.mini_model_path("text2img", cache_dir=tmp_path)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(path)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert pipe.safety_checker is None


def test_second_call_reuses_the_folder_without_rebuilding(mini, tmp_path, monkeypatch):
    first = models.mini_model_path("inpaint", cache_dir=tmp_path)
    index = first / "model_index.json"
    before = (first.stat().st_mtime_ns, index.stat().st_mtime_ns, index.stat().st_ino)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("mini_model_path rebuilt a folder that was already there")

    with monkeypatch.context() as m:  # building needs mkdir and a link or a copy
        m.setattr(Path, "mkdir", no_rebuild)
        m.setattr(Path, "symlink_to", no_rebuild)
        m.setattr(models.shutil, "copytree", no_rebuild)
        second = models.mini_model_path("inpaint", cache_dir=tmp_path)
    assert second == first
    assert (first.stat().st_mtime_ns, index.stat().st_mtime_ns, index.stat().st_ino) == before
    assert sorted(p.name for p in (tmp_path / "mini").iterdir()) == [first.name]


def test_a_changed_shipped_file_gives_a_new_folder(mini, tmp_path):
    first = models.mini_model_path("text2img", cache_dir=tmp_path)
    config = mini / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text() + "\n")  # still valid JSON, but a different file
    second = models.mini_model_path("text2img", cache_dir=tmp_path)
    assert second != first and (second / "model_index.json").exists()
    assert (second / "scheduler" / "scheduler_config.json").read_text() == config.read_text()
    assert models.mini_model_path("text2img", cache_dir=tmp_path) == second  # then reused


def test_something_else_where_the_folder_goes_is_one_line_not_returned(mini, tmp_path):
    """A file (or a stray folder) under the folder's name was printed by `models path` as
    the model's folder: the rename that failed was taken for another process's build."""
    name = models.mini_model_path("text2img", cache_dir=tmp_path / "a").name
    (tmp_path / "b" / "mini").mkdir(parents=True)
    (tmp_path / "b" / "mini" / name).write_text("x")
    with pytest.raises(models.ModelChoiceError) as info:
        models.mini_model_path("text2img", cache_dir=tmp_path / "b")
    assert str(info.value) == (f"{tmp_path / 'b' / 'mini' / name} is in the way of the mini model's "
                               "folder and is not one: delete it, then try again")
    assert sorted(p.name for p in (tmp_path / "b" / "mini").iterdir()) == [name]


def test_a_cache_that_cannot_be_written_is_one_line_naming_the_variable(mini, tmp_path, monkeypatch,
                                                                       capsys):
    """SDCOURSE_CACHE pointing at a file: the error names the variable and the fix, from the
    API and from `sdcourse models path`, and nothing is created beside the file."""
    from sdcourse import cli

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SDCOURSE_CACHE", str(blocker))
    with pytest.raises(models.ModelChoiceError) as info:
        models.mini_model_path("text2img")
    assert str(info.value) == (f"cannot assemble the mini model's folder in {blocker} (Not a "
                               "directory): point SDCOURSE_CACHE at a writable folder or unset it")
    assert cli.main(["models", "path", "text2img"]) == 1
    assert capsys.readouterr().err == f"sdcourse: error: {info.value}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_write_failing_part_way_leaves_no_temporary_folder(mini, tmp_path, monkeypatch, capsys):
    """The disk fills after the temporary folder and its links exist: the error names the
    cause and the fix, from the API and from `sdcourse models path`, and the half-built
    temporary folder is removed (the next call, with room again, builds the folder)."""
    from sdcourse import cli

    cache = tmp_path / "cache"
    monkeypatch.setenv("SDCOURSE_CACHE", str(cache))
    built = []  # what the temporary folder held when the write failed
    real_write_text = Path.write_text

    def disk_full(self, *args, **kwargs):
        if self.name == "model_index.json":
            built.append(sorted(p.name for p in self.parent.iterdir()))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", disk_full)
        with pytest.raises(models.ModelChoiceError) as info:
            models.mini_model_path("text2img")
        assert str(info.value) == (f"cannot assemble the mini model's folder in {cache} (No space "
                                   "left on device): point SDCOURSE_CACHE at a writable folder or "
                                   "unset it")
        assert cli.main(["models", "path", "text2img"]) == 1
        assert capsys.readouterr().err == f"sdcourse: error: {info.value}\n"
    # the failure came after the temporary folder and its parts existed (twice: API and CLI)
    assert built == [sorted(models._MINI_COMPONENTS["text2img"])] * 2
    assert list((cache / "mini").iterdir()) == []  # no .tmp folder left behind
    path = models.mini_model_path("text2img")
    assert sorted(p.name for p in (cache / "mini").iterdir()) == [path.name]


def test_without_symbolic_links_the_parts_are_real_copies(mini, tmp_path, monkeypatch):
    """Where no link can be made (Windows without developer mode, some network or FAT file
    systems: symlink_to raises OSError), each part is a copy of its shipped component, so the
    folder still loads; nothing in it points into the package."""
    def no_links(self, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "symlink_to", no_links)
    path = models.mini_model_path("inpaint", cache_dir=tmp_path)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == models.PIPELINES["inpaint"]
    for name, component in models._MINI_COMPONENTS["inpaint"].items():
        part, shipped = path / name, mini / component
        assert part.is_dir() and not part.is_symlink(), name
        files = sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
        assert files and sorted(p.relative_to(part) for p in part.rglob("*") if p.is_file()) == files
        for relative in files:
            copy = part / relative
            assert copy.is_file() and not copy.is_symlink(), copy
            assert copy.resolve() != (shipped / relative).resolve()
            assert copy.read_bytes() == (shipped / relative).read_bytes(), copy
    assert (path / "unet" / "config.json").is_file()  # what from_pretrained reads first
    assert sorted(p.name for p in (tmp_path / "mini").iterdir()) == [path.name]  # no .tmp left
