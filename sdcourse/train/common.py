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
import math
import os
import shutil
from pathlib import Path

from ..files import remove_stale, write_atomic
from ..messages import first_line, is_whole
from ..models import unet_in_channels

CHECKPOINT = "checkpoint"
OPTIMIZER = "optimizer.safetensors"


def progress(iterable, **kwargs):
    """A tqdm.auto progress bar over ``iterable``; none at all when ``TQDM_DISABLE`` is set.

    Why: in a notebook tqdm.auto draws an ipywidget bar, and that one ignores ``TQDM_DISABLE``
    (tqdm reads the variable for its text bar only, and then once, when it is imported), so the
    tests and ``sdcourse run``, which set it, would still store the trainers' bars in the
    notebooks' outputs. Read here at each call: the variable as it is now decides.
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", bool(os.environ.get("TQDM_DISABLE")))
    return tqdm(iterable, **kwargs)


def new_accelerator(**settings):
    """An accelerate ``Accelerator(**settings)``, also where this process made one with other
    settings before.

    Why: accelerate keeps one state per process, and a second Accelerator with another device
    or mixed precision stops with "AcceleratorState has already been initialized ... restart
    your runtime" (a notebook that ran a mini trainer on the CPU, then DreamBooth on the GPU
    in fp16). In a single process that state only records the last choice, and it is reset
    (what accelerate's own tests do); under ``accelerate launch`` on several processes the
    launch decides the settings, and the error stands."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    try:
        return Accelerator(**settings)
    except ValueError as error:
        if "already been initialized" not in str(error) or PartialState().num_processes > 1:
            raise
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(**settings)


def mini_accelerator():
    """The accelerate ``Accelerator`` the mini model's trainers run under: on the CPU, even
    where PyTorch sees a GPU. The models are small (a GPU would gain little at these sizes),
    the shipped weights were trained on the CPU, and there the same seed gives the same
    weights; the loops also keep their batches on the CPU. (DreamBooth, which trains real
    checkpoints too, picks the GPU itself.)"""
    return new_accelerator(cpu=True, mixed_precision="no")  # (None: whatever the process had)


def scaler_state(accelerator) -> dict:
    """``{"scaler": ...}``, the state of the accelerator's fp16 loss scaler (plain numbers),
    for a checkpoint's ``state.json``; ``{}`` without one (no fp16 mixed precision).

    Why: resumed without it, the scaler starts again at 2**16; the first steps' gradients
    then overflow and their optimizer steps are skipped while the step count goes on, so a
    run stopped and resumed would be neither run."""
    scaler = getattr(accelerator, "scaler", None)
    return {"scaler": scaler.state_dict()} if scaler is not None and scaler.is_enabled() else {}


def restore_scaler(accelerator, checkpoint: Path) -> None:
    """Give the accelerator's loss scaler the state :func:`scaler_state` saved in
    ``checkpoint`` (nothing to do without a scaler, or a checkpoint that has none)."""
    scaler = getattr(accelerator, "scaler", None)
    state = checkpoint_state(checkpoint).get("scaler")
    if scaler is not None and scaler.is_enabled() and isinstance(state, dict):
        scaler.load_state_dict(state)


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


class RunMismatchError(CheckpointError):
    """A run folder that this call may not resume: another trainer's run, or this trainer's
    with other settings. The checkpoint is fine; the command asked for something else (the
    command line's usage error)."""


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
        if path.is_dir() and name == CHECKPOINT:  # save_checkpoint renames it in whole: never so
            raise _damaged(path, "no state.json in it: a partial copy?")
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
        reason = _missing_part(Path(checkpoint), error) or first_line(error, limit=120, named=True)
        raise _damaged(checkpoint, reason) from error


def _missing_part(checkpoint: Path, error: BaseException) -> str | None:
    """"no vae/config.json in it" when ``error`` names a part of the checkpoint whose config is
    missing (a half-copied run): diffusers and transformers then take the path for a Hub id
    and report a failed connection to huggingface.co, which is not the problem."""
    import re

    for part in re.findall(re.escape(str(checkpoint)) + r"/([\w.-]+)", str(error)):
        part = part.rstrip(".")  # (the end of the library's sentence)
        if part and not (checkpoint / part / "config.json").is_file():
            return f"no {part}/config.json in it"
    return None


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


# ------------------------------------------------------------------ whose run, which settings
#
# Each checkpoint records the trainer that wrote it (``"kind"``: vae, text2img, inpaint, depth,
# depth-estimator, dreambooth) and the settings its result depends on (``"settings"``). A run
# resumes only as the same kind and with the same settings: anything else is another run, and
# mixing the two would give a model that neither command describes.

#: The command-line options of the mini trainers' settings, named beside them in messages.
MINI_OPTIONS = {"steps": "--steps", "seed": "--seed", "caption_noise": "--caption-noise"}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def run_kind(out: Path) -> str | None:
    """Which trainer wrote the run folder ``out`` (None: no run there yet).

    A DreamBooth run is known by its ``dreambooth.json``; a checkpoint by its ``"kind"`` (or
    the UNet trainer's ``"task"``). Checkpoints written before either was recorded are known
    by what they hold: a ``vae``, a ``depth_estimator``, DreamBooth's trained weights, or a
    UNet with its EMA, whose input channels tell text2img (4), depth (5) and inpaint (9)."""
    out = Path(out)
    if (out / "dreambooth.json").exists():
        return "dreambooth"
    checkpoint = find_checkpoint(out)
    if checkpoint is None:
        return None
    state = checkpoint_state(checkpoint)
    for key in ("kind", "task"):
        if isinstance(state.get(key), str):
            return state[key]
    if (checkpoint / "vae").is_dir():
        return "vae"
    if (checkpoint / "depth_estimator").is_dir():
        return "depth-estimator"
    if (checkpoint / "unet" / "trained.safetensors").exists():
        return "dreambooth"
    # by its UNet's inputs; unknown (None) when unreadable: loading it will say what is wrong
    return {4: "text2img", 5: "depth", 9: "inpaint"}.get(unet_in_channels(checkpoint))


def check_kind(out: Path, kind: str, option: str = "--out") -> None:
    """Refuse, with one :class:`CheckpointError`, a run folder that another trainer wrote:
    before anything loads or is written, and without touching that other run."""
    found = run_kind(out)
    if found is not None and found != kind:
        raise RunMismatchError(
            f"{out} holds {_article(found)} {found} training run, not {kind}: choose another "
            f"{option} for {kind} (training {found} there resumes that run)")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_changes(old: dict, new: dict, labels: dict | None = None,
                     notes: dict | None = None, hidden=()) -> str:
    """The settings that differ between ``old`` and ``new`` (keys of both), in one line:
    ``seed (--seed) was 0, now 5; lr was 0.0005, now 0.001``. ``labels``: how to name a
    setting (default: its name); ``notes``: a remark to add after a setting's change;
    ``hidden``: settings whose values are not shown (``the instance pictures changed``)."""
    labels, notes = labels or {}, notes or {}
    parts = []
    for name in new:
        if name in old and old[name] != new[name]:
            label = labels.get(name, name)
            change = (f"{label} changed" if name in hidden else
                      f"{label} was {_shown(old[name])}, now {_shown(new[name])}")
            parts.append(change + notes.get(name, ""))
    return "; ".join(parts)


def plain(settings: dict) -> dict:
    """``settings`` as they read back from JSON (tuples as lists, paths as text)."""
    return json.loads(json.dumps(settings, default=str))


def check_settings(checkpoint: Path, kind: str, settings: dict) -> None:
    """Refuse to resume ``checkpoint`` under settings other than those it recorded, with one
    :class:`CheckpointError` naming each difference and what to do.

    ``steps`` is the length of the learning-rate schedule: it may grow once the run has
    finished (a longer run that goes on from the finished one, as the shipped inpainting
    UNet did: its rate rises again on the longer schedule), but not before, when the rate
    would jump to another schedule part-way (``stop_at`` is what ends a run early on its
    schedule). A checkpoint without settings (written before they were recorded) resumes as
    it did; a setting it does not record is not compared."""
    state = checkpoint_state(checkpoint)
    recorded = state.get("settings")
    if not isinstance(recorded, dict):
        return
    settings, step, notes = plain(settings), state["step"], {}
    if "steps" in recorded and recorded["steps"] != settings.get("steps", recorded["steps"]):
        old, new = recorded["steps"], settings["steps"]
        if step >= old and new > old:
            settings["steps"] = old  # a finished run extended: allowed
        elif step >= old:
            notes["steps"] = (f" (the run has finished its {old} steps: a larger --steps "
                              "extends it, a smaller one cannot undo them)")
        else:
            notes["steps"] = (f" (the learning rate follows a schedule over all {old} steps, "
                              f"which cannot change before the run finishes: it is at step "
                              f"{step}; --stop-at is what ends a run early on its schedule)")
    labels = {name: f"{name} ({option})" for name, option in MINI_OPTIONS.items()}
    differences = describe_changes(recorded, settings, labels, notes)
    if differences:
        raise RunMismatchError(
            f"{Path(checkpoint).parent} holds {_article(kind)} {kind} run with other settings: "
            f"{differences}: to resume it, give the settings it was trained with; for a new "
            "run, choose another --out")


def check_counts(**counts) -> None:
    """One ValueError unless each count (``steps``, ``save_every``, ...) is a whole number of
    at least 1, or None where that means "never" (``stop_at``, ``eval_every`` and the
    ``freeze_..._at`` steps, which may also be 0): what a trainer checks first, so that
    ``save_every=0`` stops at once, not with a division by zero after minutes of encoding,
    and ``stop_at=0`` is not taken for "no stop"."""
    for name, value in counts.items():
        least = 0 if name.startswith("freeze") or name == "eval_every" else 1
        if value is None and (least == 0 or name == "stop_at"):
            continue
        if not is_whole(value) or value < least:
            raise ValueError(f"{name} must be a whole number of at least {least}, got {value!r}")


def resume_point(out: Path, kind: str, settings: dict, stop_at: int | None = None) -> Path | None:
    """The checkpoint a ``kind`` run with these ``settings`` resumes from in ``out`` (None: it
    starts from scratch), after :func:`check_kind` and :func:`check_settings`: before any
    model loads and before ``out`` is made. A ``stop_at`` before the checkpoint's step is
    refused: the run is past it, and going on would return (and publish) the later model."""
    check_kind(out, kind)
    checkpoint = find_checkpoint(out)
    if checkpoint is not None:
        step = checkpoint_step(checkpoint)
        if stop_at is not None and stop_at < step:
            raise RunMismatchError(
                f"{Path(out)} holds {_article(kind)} {kind} run already at step {step}, past "
                f"--stop-at {stop_at}: a run cannot go back; for the model of step {stop_at}, "
                "train it in another --out")
        check_settings(checkpoint, kind, settings)
    return checkpoint


# ------------------------------------------------------------------ one trainer per run folder
#
# Two trainers in one folder (the same command started in two terminals) would each write
# ``checkpoint.tmp`` and swap it in: a checkpoint of one's UNet with the other's optimizer. So
# a trainer claims its folder before it writes there: an exclusive lock (``flock``) on
# ``<out>/.lock``, which the system drops when the process ends, killed or not: no stale lock
# to clean up. The file stays (with the last holder's pid); the lock does not.

LOCK = ".lock"
_held: dict[Path, int] = {}  # the folders this process holds: their lock files' descriptors


def claim_run(out: Path) -> None:
    """Make the run folder ``out`` and lock it for this process until :func:`release_run`
    (or the process's end); :class:`RunMismatchError` naming the holder's pid when another
    process holds it. On POSIX systems only: elsewhere (Windows) nothing is locked."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = out.resolve()
    if os.name != "posix" or key in _held:
        return
    import fcntl

    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunMismatchError(f"{out} is being trained by another process (pid {holder}): wait "
                               "for it to finish, or give another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[key] = fd


def release_run(out: Path) -> None:
    """Unlock ``out`` if this process holds it (:func:`claim_run`); else nothing."""
    fd = _held.pop(Path(out).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor drops the flock


def releases_run(train):
    """Decorator for a trainer ``train(out, ...)`` that calls :func:`claim_run`: the folder is
    released when the call ends, finished or not (an error, Ctrl-C in a notebook), so that
    the same folder can be trained from a terminal while the notebook's kernel lives on."""
    import functools

    @functools.wraps(train)
    def wrapper(out, *args, **kwargs):
        try:
            return train(out, *args, **kwargs)
        finally:
            release_run(out)
    return wrapper


def run_record(kind: str, settings: dict, **more) -> dict:
    """What a trainer keeps beside the step in each checkpoint (``extra`` of
    :func:`save_checkpoint`): its kind and settings, for :func:`resume_point`."""
    return {"kind": kind, "settings": plain(settings), **more}


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
    import torch  # (here: the command line checks a run folder with this module before torch loads)

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


def trim_log(out: Path, start: int) -> None:
    """Called once as a run (re)starts at step ``start``: drop the log rows past it. A run killed
    after its last checkpoint logged steps it now trains again; without this they would
    appear twice. The file is rewritten atomically, and only when there is something to drop."""
    path = Path(out) / "log.csv"
    if not path.exists():
        return
    rows = path.read_text().splitlines(keepends=True)
    kept = [row for row in rows if not _logged_step(row) > start]
    if len(kept) < len(rows):
        write_atomic(path, "".join(kept))


def _logged_step(row: str) -> float:
    """The step a log row is for (-inf for a row that does not start with one)."""
    try:
        return int(row.split(",", 1)[0])
    except ValueError:
        return -math.inf


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
    if old is None:
        remove_stale(target.parent, f"{target.name}.old")  # (a process killed mid-swap)
        old = target.with_name(f"{target.name}.old{os.getpid()}")
    old = Path(old)
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
