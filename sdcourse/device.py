"""Where to run, in which precision, with which random generator.

Every notebook starts with the same three lines::

    device = pick_device()          # "mps", "cuda" or "cpu"
    dtype = pick_dtype(device)      # float16 on a GPU, float32 on a CPU
    generator = make_generator(0, device)

so a lesson runs unchanged on a Mac, on a Colab GPU and on a laptop CPU, and the same seed
gives the same picture again.
"""
from __future__ import annotations

import os
import re

import torch
from .messages import is_whole

#: Environment variable that forces a device, e.g. ``SDCOURSE_DEVICE=cpu``.
ENV_VAR = "SDCOURSE_DEVICE"

#: Preference order when nothing is forced: Apple GPU, NVIDIA GPU, then the CPU.
PREFERENCE = ("mps", "cuda", "cpu")


def _available(kind: str) -> bool:
    """Whether PyTorch can use a device kind on this machine."""
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())
    if kind == "cuda":
        return torch.cuda.is_available()
    return kind == "cpu"


def pick_device() -> str:
    """The device the course runs on: "mps", "cuda" or "cpu", in that order of preference.

    ``SDCOURSE_DEVICE`` overrides the choice ("cpu", "cuda", "cuda:1", "mps"); an unknown
    value raises ValueError and a device this machine does not have raises RuntimeError,
    each with a one-line message saying what to do. An empty value means "choose".
    """
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if not forced:
        return next(kind for kind in PREFERENCE if _available(kind))
    return check_device(forced, f"{ENV_VAR}={forced!r}",
                        unknown=f"(or unset {ENV_VAR} to choose automatically)",
                        absent=f"unset {ENV_VAR} or set it to cpu")


def check_device(device: str | torch.device, what: str | None = None, unknown: str = "",
                 absent: str = "use device=sdc.pick_device() or 'cpu'") -> str:
    """``device`` as a string ("cpu", "cuda:1", ...) once it is known to exist on this machine.

    Why: torch accepts "cuda" on a machine without a GPU until the first tensor moves there,
    so a pipeline would load completely (or a real checkpoint download) before failing; and
    an unknown name fails inside torch with a list of device types the course never uses.
    Raises ValueError (not a device) or RuntimeError (not on this machine), each one line.
    """
    text = _device_name(device, what, unknown)
    what = what or f"device {text!r}"
    kind, _, index = text.partition(":")
    if not _available(kind):
        raise RuntimeError(f"{what} but PyTorch sees no {kind} device on this machine: {absent}")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise RuntimeError(
            f"{what} but this machine has {torch.cuda.device_count()} CUDA "
            f"device(s): use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )
    return text


def _device_name(device: str | torch.device, what: str | None = None, unknown: str = "") -> str:
    """``device`` as a lower-case string once it names a course device (present here or not).

    The name half of :func:`check_device`, for questions about a device rather than moving
    anything to it (:func:`is_gpu`): "gpu" gets one ValueError line instead of torch's list.
    "cpu:0" is the CPU and "mps:0" the Apple GPU, as torch names them (``pipe.device``,
    ``tensor.device``); there is no other CPU or MPS index.
    """
    text = str(device).strip().lower()
    # as torch spells them: no empty index ("cuda:"), no leading zero ("cuda:01")
    if not re.fullmatch(r"cpu(:0)?|cuda(:(0|[1-9][0-9]*))?|mps(:0)?", text):
        raise ValueError(f"{what or f'device {text!r}'} is not a device: use one of cpu, cuda, "
                         f"cuda:N, mps {unknown}".rstrip())
    return text


def pick_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """float16 on a GPU (cuda, mps), float32 on a CPU; ``device`` None means :func:`pick_device`.

    Why: half precision halves the memory of weights and activations and is what GPUs run
    fastest; Stable Diffusion checkpoints ship an ``fp16`` variant for exactly this. On a CPU
    many half-precision kernels are slow or missing, so float32 is both faster and safer.
    bfloat16 is not used: the free Colab GPU (T4) has no bf16 support, and the published
    ``fp16`` variants load without conversion.

    None is the picked device, as in :func:`make_generator`; a name that is not a device
    ("gpu") is a one-line ValueError. Whether the machine has that device is not checked:
    the answer is the dtype to use there.
    """
    gpu = is_gpu(device if device is not None else pick_device())
    return torch.float16 if gpu else torch.float32


def is_gpu(device: str | torch.device) -> bool:
    """Whether ``device`` ("cuda", "cuda:1", "mps", a torch.device) is a GPU.

    An unknown name ("gpu") is the one-line ValueError of :func:`check_device`, not torch's
    list of every device type; the device need not exist on this machine.
    """
    return _device_name(device).partition(":")[0] in ("cuda", "mps")


def make_generator(seed: int, device: str | torch.device | None = None) -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed`` that works with ``device`` (default: picked).

    Pass it to a pipeline (``pipe(prompt, generator=g)``) to get the same image again.
    On MPS the generator is a CPU one, as diffusers recommends: random draws on MPS are not
    reproducible, and diffusers draws the noise on the CPU and moves it to the GPU.

    ``device`` goes through :func:`check_device`, so "cuda" without a GPU or "gpu" fails in
    one line rather than in torch. ``seed`` must be a whole number (an int, numpy ints too):
    a float was silently truncated (1.7 drew seed 1's picture) and True drew seed 1's.
    """
    if not is_whole(seed):
        raise TypeError(f"seed {seed!r} is not a whole number: pass an int, e.g. make_generator(0)")
    if not -2**63 <= seed < 2**64:  # what torch's manual_seed takes
        raise ValueError(f"seed {seed} is out of range: pass a whole number from -2**63 to 2**64 - 1")
    target = torch.device(check_device(device) if device is not None else pick_device())
    if target.type == "mps":
        target = torch.device("cpu")
    return torch.Generator(device=target).manual_seed(int(seed))
