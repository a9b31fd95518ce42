"""What every trainer shares: checkpoints written atomically, resume, a loss log, seeds.

A checkpoint is a directory ``<out>/checkpoint`` holding the model(s) as safetensors
(``save_pretrained``), the optimizer state (safetensors too: nothing the course reads back is
a pickle) and ``state.json`` (the step). It is written to
``checkpoint.tmp`` first and then renamed, so a run killed at any moment leaves either the
previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import torch

from ..messages import first_line

CHECKPOINT = "checkpoint"
OPTIMIZER = "optimizer.safetensors"


def progress(iterable, **kwargs):
    """A tqdm.auto progress bar over ``iterable``; none at all when ``TQDM_DISABLE`` is set.

    Why: in a notebook tqdm.auto draws an ipywidget bar, and that one ignores ``TQDM_DISABLE``
    (tqdm reads the variable for its text bar only), so the tests and ``sdcourse run``, which
    set it, would still store the trainers' bars in the notebooks' outputs.
    """
    from tqdm.auto import tqdm

    if os.environ.get("TQDM_DISABLE"):
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


def save_checkpoint(out: Path, step: int, models: dict, optimizer, extra: dict | None = None) -> Path:
    """Write models (by name), optimizer and step to ``out/checkpoint`` atomically."""
    final, old = Path(out) / CHECKPOINT, Path(out) / f"{CHECKPOINT}.old"
    # the old one is kept as checkpoint.old during the swap: find_checkpoint falls back on it
    with new_folder(final, old=old) as tmp:
        for name, model in models.items():
            model.save_pretrained(tmp / name, safe_serialization=True)
        save_optimizer(optimizer, tmp / OPTIMIZER)
        (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}))
    # a run resumed from a .old (killed between the renames) had no checkpoint to swap out,
    # so replace_dir left that .old alone: now superseded, it goes
    shutil.rmtree(old, ignore_errors=True)
    return final


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (the message says which and what to do)."""


def _damaged(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"the checkpoint {path} cannot be resumed from ({reason}): delete it "
                           "to train from the start, or give another --out")


def find_checkpoint(out: Path) -> Path | None:
    """The last complete checkpoint under ``out`` (a rename interrupted mid-way leaves ``.old``).

    Its ``state.json`` must give the step; a damaged one (a disk that filled up, a hand edit)
    raises :class:`CheckpointError` before any model is built."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        path = Path(out) / name
        if (path / "state.json").exists():
            checkpoint_step(path)  # a damaged state.json fails here
            return path
    return None


@contextlib.contextmanager
def resuming(checkpoint: Path | None):
    """Around the code that loads a run's models and optimizer from ``checkpoint``: any
    failure (a missing or unreadable file, weights of another model) becomes one
    :class:`CheckpointError` naming the checkpoint and what to do, not a library traceback."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the libraries raise on a bad file
        if checkpoint is None:
            raise
        raise _damaged(checkpoint, first_line(error, limit=120, named=True)) from error


def checkpoint_state(checkpoint: Path) -> dict:
    """A checkpoint's ``state.json``: its step and what the trainer recorded beside it (the
    ``extra`` of :func:`save_checkpoint`); a damaged one raises :class:`CheckpointError`."""
    path = Path(checkpoint)
    try:
        state = json.loads((path / "state.json").read_text())
        step = state["step"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _damaged(path, f"state.json: {type(error).__name__}: {error}") from None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise _damaged(path, f"state.json: {step!r} is not a step number")
    return state


def checkpoint_step(checkpoint: Path) -> int:
    """The step a checkpoint was taken at (:func:`checkpoint_state`)."""
    return checkpoint_state(checkpoint)["step"]


def save_tensors(path: Path, tensors: dict, **metadata) -> None:
    """Tensors by name in one safetensors file, with ``metadata`` (plain values: numbers,
    strings, lists, dicts) as JSON in the file's header: what the trainers keep beside their
    weights (an optimizer's state, an encoded training set). Why not ``torch.save``: that is a
    pickle, and the course loads nothing but safetensors."""
    from safetensors.torch import save_file

    save_file({name: t.detach().contiguous() for name, t in tensors.items()}, path,
              metadata={key: json.dumps(value) for key, value in metadata.items()})


def read_tensors(path: Path) -> tuple[dict, dict]:
    """The tensors and the metadata that :func:`save_tensors` wrote to ``path``."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        metadata = {key: json.loads(value) for key, value in (f.metadata() or {}).items()}
    return tensors, metadata


def save_optimizer(optimizer, path: Path) -> None:
    """An optimizer's ``state_dict`` through :func:`save_tensors`: each parameter's state
    tensors (Adam's moments and step) under ``<parameter index>.<name>``, the parameter groups
    (rates, betas, weight decay: plain numbers) in the metadata."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if not torch.is_tensor(value):
                raise TypeError(f"optimizer state {name!r} is a {type(value).__name__}, not a tensor: "
                                "save_optimizer stores tensors only")
            tensors[f"{index}.{name}"] = value
    save_tensors(path, tensors, param_groups=state["param_groups"])


def read_optimizer(path: Path) -> dict:
    """The ``state_dict`` that :func:`save_optimizer` wrote to ``path`` (betas come back as
    lists, which the optimizers unpack as they do tuples)."""
    tensors, metadata = read_tensors(path)
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    return {"state": state, "param_groups": metadata["param_groups"]}


def load_optimizer(optimizer, checkpoint: Path) -> int:
    """Restore the optimizer state; returns the step the checkpoint was taken at."""
    optimizer.load_state_dict(read_optimizer(Path(checkpoint) / OPTIMIZER))
    return checkpoint_step(checkpoint)


def append_log(out: Path, step: int, **values) -> None:
    """One CSV line per logged step: ``step,name=value,...`` (easy to grep and to plot)."""
    with open(Path(out) / "log.csv", "a") as f:
        f.write(f"{step}," + ",".join(f"{k}={v:.6g}" for k, v in values.items()) + "\n")


@contextlib.contextmanager
def new_folder(target: Path, old: Path | None = None):
    """A fresh, empty folder beside ``target`` (``<target>.tmp``) to fill; when the block ends
    without an error it replaces ``target`` whole (:func:`replace_dir`, which parks the
    previous folder at ``old`` meanwhile), otherwise it is removed and ``target`` stays as it
    was."""
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_dir(tmp, target, old=old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_folder(component, target: Path) -> None:
    """``component.save_pretrained`` (a scheduler, an image processor) into ``target``, replacing
    it atomically (:func:`new_folder`): a failure leaves the old folder whole."""
    with new_folder(target) as tmp:
        component.save_pretrained(tmp)


def publish(model, target: Path, fp16: bool = True) -> None:
    """Save a trained model for shipping (safetensors, fp16 by default), replacing atomically.

    The weights are saved as usual, then each float tensor of the safetensors files is stored
    as float16: half the size, and ``from_pretrained(..., dtype=torch.float32)`` loads it back.
    """
    from safetensors.torch import load_file, save_file

    with new_folder(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if fp16:
            for file in tmp.glob("*.safetensors"):
                tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(file).items()}
                save_file(tensors, file, metadata={"format": "pt"})


def replace_dir(new: Path, target: Path, old: Path | None = None) -> None:
    """Move the finished folder ``new`` to ``target``, replacing what was there.

    The old folder is first renamed to a sibling (``old``, default ``<target>.old<pid>``), the
    new one renamed into place, and only then is the old one deleted: a crash at any moment
    leaves either ``target`` or the old folder beside it, never nothing. Should the swap fail,
    the old folder is put back (unless another process put its own folder at ``target``
    meanwhile).
    """
    new, target = Path(new), Path(target)
    old = Path(old) if old is not None else target.with_name(f"{target.name}.old{os.getpid()}")
    had_old = os.path.lexists(target)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if had_old and os.path.lexists(target):  # another process's folder: newer than ours
            shutil.rmtree(old, ignore_errors=True)
        elif had_old:
            os.replace(old, target)
        raise
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
