"""Memory and speed, measured: the benchmark behind notebook 08.

    python -m sdcourse.bench [--quick] [--device cpu|cuda] [--json PATH] [--markdown PATH]

One run measures, on the machine at hand, and prints one table:

* **The real Stable Diffusion 2.1 architecture** (UNet and VAE built from the published
  configs of ``stabilityai/stable-diffusion-2-1-base``, random weights, nothing downloaded):
  per denoising step (one UNet forward at batch 2, as classifier-free guidance runs it) the
  time and peak memory in float32 and in half precision (bfloat16 on a CPU, float16 on a GPU),
  with the default attention (PyTorch's ``scaled_dot_product_attention``) and with attention
  slicing; the VAE decode of two pictures plain, sliced and tiled; on a GPU, a whole
  generation with and without model CPU offload. Sizes: 512 px on a GPU; on a CPU 256 px
  (plus one float32 step at 512 px, for the ratio below).
* **The mini model** shipped in ``sdcourse/mini``: time to the first image in a new process
  (import / load / generate, split by the child), seconds per 25-step 64 px image, its UNet
  step against the real UNet step at 512 px on the same CPU, and its FLOPs per step against
  the machine's measured matrix-multiplication rate.
* **The machine**: CPU, cores, torch threads, load, library versions, date.

**How memory is measured.** On a GPU: ``torch.cuda.max_memory_allocated()`` (peak bytes in
tensors, reset before each call). On a CPU PyTorch keeps no such counter, so
:func:`peak_memory` records every allocation and free of PyTorch's CPU allocator during the
call with ``torch.profiler`` (``profile_memory=True``) and takes the running maximum: the
same quantity (bytes held by tensors, kernels' scratch buffers included), not the process's
resident size, which also counts Python, libraries and memory the C allocator keeps after a
free. The table's *peak* is the model's weights plus that extra peak during the call.

The course's targets (checked on a quiet machine, printed at the end): time to first image
<= 4 s, <= 1 s per 25-step mini image, mini UNet step >= 100x faster than the real one.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .cli import Parser
from .files import write_atomic
from .sizes import check_size

# --------------------------------------------------------------------------- architectures

#: UNet of Stable Diffusion 2.1 (base, 512 px), as in the ``unet/config.json`` published with
#: stabilityai/stable-diffusion-2-1-base (diffusers' defaults fill in the rest: silu, 32
#: groups, eps 1e-5, ...). ``attention_head_dim`` is, for this model, the number of heads.
SD21_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
#: VAE (AutoencoderKL) of Stable Diffusion 2.1-base, as in its published ``vae/config.json``
#: (whose ``sample_size``, the default tile of ``enable_tiling``, is 768 although the model
#: draws at 512 px).
SD21_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=768,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
#: Text encoder of Stable Diffusion 2.x (OpenCLIP ViT-H/14's text tower, in transformers'
#: CLIPTextModel), as in the published ``text_encoder/config.json``.
SD21_TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
)
#: Parameter counts of the published checkpoints (what the configs above must rebuild).
SD21_PARAMS = {"unet": 865_910_724, "vae": 83_653_863}

PROMPT = "a red circle on a blue background"
TEXT_LEN = 77  # tokens per prompt: the text encoder's fixed length


def _fill_random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give ``model`` random weights fast: norms 1 and 0, biases 0, every other weight a
    block of uniform noise in +-1/sqrt(fan_in) (PyTorch's default range) repeated over it.

    Speed does not depend on the values, only on their being ordinary numbers (no NaN, no
    denormals); filling 866 M parameters this way takes about a second, drawing each one
    from a random generator (the default initialisation) tens of seconds on a small CPU.
    """
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    pool = (torch.rand(1 << 20, generator=g) * 2 - 1).to(device)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, norms):
                    p.fill_(1.0 if name == "weight" else 0.0)
                elif p.ndim < 2:
                    p.zero_()
                else:
                    block = (pool * p[0].numel() ** -0.5).to(p.dtype)
                    flat = p.view(-1)
                    for i in range(0, flat.numel(), block.numel()):
                        part = flat[i:i + block.numel()]
                        part.copy_(block[:part.numel()])
        for name, b in model.named_buffers():
            if name.endswith("position_ids"):
                b.copy_(torch.arange(b.shape[-1]).expand_as(b))
            else:
                b.zero_()
    return model


def _random_model(make: Callable, dtype: torch.dtype, device, seed: int) -> torch.nn.Module:
    """Build with ``make()`` on the meta device (no memory), then allocate on ``device`` in
    ``dtype`` and fill with random weights. Inside ``with torch.device("meta"):`` the model
    stays on meta (to count parameters without allocating)."""
    if device is None:
        device = torch.get_default_device()
    with torch.device("meta"):
        model = make()
    model = torch.nn.Module.to(model, dtype=dtype)  # nn.Module's own: diffusers' to() warns
    if torch.device(device).type != "meta":
        model = _fill_random(model.to_empty(device=device), seed)
    return model.eval()


def build_unet(config: dict | None = None, dtype: torch.dtype = torch.float32, device=None,
               seed: int = 0):
    """A ``UNet2DConditionModel`` with random weights (default: the real SD 2.1 architecture),
    built directly in ``dtype`` on ``device`` (default: the current default device)."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in (config or SD21_UNET_CONFIG).items() if not k.startswith("_")}
    return _random_model(lambda: UNet2DConditionModel.from_config(config), dtype, device, seed)


def build_vae(config: dict | None = None, dtype: torch.dtype = torch.float32, device=None,
              seed: int = 0):
    """An ``AutoencoderKL`` with random weights (default: the real SD 2.1 VAE)."""
    from diffusers import AutoencoderKL

    config = {k: v for k, v in (config or SD21_VAE_CONFIG).items() if not k.startswith("_")}
    return _random_model(lambda: AutoencoderKL.from_config(config), dtype, device, seed)


def build_text_encoder(dtype: torch.dtype = torch.float32, device=None, seed: int = 0):
    """SD 2.x's text encoder (OpenCLIP ViT-H/14 text tower as a CLIPTextModel), random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return _random_model(lambda: CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER_CONFIG)),
                         dtype, device, seed)


def to(model: torch.nn.Module, device=None, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Move or cast a model in place (``torch.nn.Module.to``: diffusers' own ``to`` warns on
    every cast, even for models with nothing to keep in float32)."""
    return torch.nn.Module.to(model, device=device, dtype=dtype)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_bytes(*models: torch.nn.Module) -> int:
    """Bytes of the weights (parameters and buffers) of ``models``."""
    return sum(t.numel() * t.element_size() for m in models
               for t in [*m.parameters(), *m.buffers()])


# --------------------------------------------------------------------------- measuring


def _sync(device) -> None:
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize()
    elif kind == "mps":
        torch.mps.synchronize()


def time_call(fn: Callable, device="cpu", reps: int = 3, warmup: int = 1) -> list[float]:
    """Seconds taken by each of ``reps`` calls of ``fn`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def _quiet_fd2():
    """Silence file descriptor 2 (the profiler's C++ library prints start/stop lines there)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Callable, device="cpu") -> int | None:
    """Peak bytes that tensors take *on top of* what was allocated before ``fn()`` ran.

    GPU: ``torch.cuda.max_memory_allocated`` after a reset. CPU: the running sum of the
    allocations and frees PyTorch's CPU allocator reports to ``torch.profiler`` during the
    call (kernels' scratch buffers included; Python objects and allocator slack not). None
    on other devices (MPS keeps no peak counter) or when this PyTorch cannot report it.
    """
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        fn()
        return None
    if kind == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        results = getattr(getattr(prof, "profiler", None), "kineto_results", None)
        if results is None:
            return None
        events = sorted((e.start_ns(), e.nbytes()) for e in results.events()
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    now = peak = 0
    for _, nbytes in events:
        now += nbytes
        peak = max(peak, now)
    return peak


def matmul_gflops(n: int = 2048, reps: int = 5, device="cpu", dtype=torch.float32) -> float:
    """The machine's measured matrix-multiplication rate: best of ``reps`` n x n products."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = min(time_call(lambda: a @ b, device, reps=reps, warmup=1))
    return 2 * n ** 3 / best / 1e9


def unet_flops(config: dict | None = None, latent_size: int | None = None, batch: int = 2) -> int:
    """FLOPs of one UNet forward (``batch`` latents, a 77-token prompt each), counted with
    ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (nothing is computed).

    Counts matrix multiplications, convolutions and attention, the bulk of the work; norms,
    activations and additions are not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    config = dict(config or SD21_UNET_CONFIG)
    size = latent_size or config["sample_size"]
    with torch.device("meta"):
        unet = build_unet(config)
        sample = torch.zeros(batch, config["in_channels"], size, size)
        text = torch.zeros(batch, TEXT_LEN, config["cross_attention_dim"])
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(sample, 500, encoder_hidden_states=text)
    return int(counter.get_total_flops())


def unet_step(unet, latent_size: int, batch: int = 2, device="cpu") -> Callable:
    """One denoising step of ``unet``: a forward pass at batch 2 (CFG's two predictions)."""
    g = torch.Generator().manual_seed(0)
    dtype = unet.dtype
    sample = torch.randn(batch, unet.config.in_channels, latent_size, latent_size, generator=g)
    text = torch.randn(batch, TEXT_LEN, unet.config.cross_attention_dim, generator=g)
    sample, text = sample.to(device, dtype), text.to(device, dtype)
    t = torch.tensor(500, device=device)

    def step():
        with torch.inference_mode():
            return unet(sample, t, encoder_hidden_states=text).sample

    return step


def vae_decode(vae, latent_size: int, batch: int = 2, device="cpu") -> Callable:
    """Decoding ``batch`` latents of ``latent_size`` into pictures 8 times larger."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, vae.config.latent_channels, latent_size, latent_size, generator=g)
    z = z.to(device, vae.dtype)

    def decode():
        with torch.inference_mode():
            return vae.decode(z).sample

    return decode


def set_vae_tile(vae, tile_px: int) -> None:
    """Use tiles of ``tile_px`` pixels (the default is the VAE's ``sample_size``: 768 for SD 2.1)."""
    vae.tile_sample_min_size = tile_px
    vae.tile_latent_min_size = tile_px // 2 ** (len(vae.config.block_out_channels) - 1)


def _free(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(error: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(error, oom) or "out of memory" in str(error).lower()


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the table. ``peak_bytes``: memory in use at the peak of the call (CPU:
    the weights + the extra peak; GPU: all that was allocated on it, max_memory_allocated)."""

    section: str
    setting: str
    size: str = ""
    seconds: float | None = None
    peak_bytes: int | None = None
    weights_bytes: int | None = None
    note: str = ""


@dataclass
class Report:
    machine: dict
    quick: bool
    rows: list[Row] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    numbers: dict = field(default_factory=dict)  # the summary's raw values (seconds, FLOP, ...)
    targets: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0

    def add(self, row: Row, echo: bool = True) -> Row:
        self.rows.append(row)
        if echo:
            print("  " + _format_row(row), flush=True)
        return row


def measure(report: Report, section: str, setting: str, size: str, fn_factory: Callable,
            device, weights: int, reps: int, note: str = "") -> Row:
    """Peak memory on a first (warm-up) call, then the median time of ``reps`` more calls.

    ``reps=0`` (``--quick``): the one profiled call gives both, its time including the first
    call's set-up and the profiler's overhead.
    """
    gpu = torch.device(device).type == "cuda"
    try:
        fn = fn_factory()
        before = torch.cuda.memory_allocated() if gpu else weights
        start = time.perf_counter()
        extra = peak_memory(fn, device)
        if reps:
            seconds = statistics.median(time_call(fn, device, reps=reps, warmup=0))
        else:
            seconds = time.perf_counter() - start
            note = ", ".join(filter(None, [note, "one cold call (--quick)"]))
    except RuntimeError as error:  # a GPU out of memory is a result, not a crash
        if not _is_oom(error):
            raise
        _free(device)
        return report.add(Row(section, setting, size, None, None, weights, "out of memory"))
    finally:
        fn = None
        _free(device)
    peak = None if extra is None else before + extra
    return report.add(Row(section, setting, size, seconds, peak, weights, note))


def machine_info(device="cpu") -> dict:
    import diffusers
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        if sys.platform == "darwin":
            with contextlib.suppress(Exception):
                cpu = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                     capture_output=True, text=True).stdout.strip() or cpu
    info = {
        "cpu": cpu, "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "platform": platform.platform(), "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else None,
        "commit": _commit(),
    }
    if info["gpu"]:  # "fp32" rows on a GPU: convolutions may run in TF32 (cuDNN's default)
        info["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                        "cudnn_conv": torch.backends.cudnn.allow_tf32}
    return info


def _commit() -> str | None:
    """The course's git commit the run measured (None outside a git checkout)."""
    with contextlib.suppress(Exception):
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, cwd=Path(__file__).resolve().parent)
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.2f} s" if s >= 0.1 else f"{s * 1000:.1f} ms"


_COLUMNS = ("measurement", "setting", "size", "time", "peak memory", "of which weights", "note")


def _cells(row: Row) -> list[str]:
    return [row.section, row.setting, row.size, _fmt_seconds(row.seconds),
            _fmt_bytes(row.peak_bytes), _fmt_bytes(row.weights_bytes), row.note]


def _format_row(row: Row) -> str:
    return " | ".join(_cells(row))


def format_table(report: Report) -> str:
    cells = [list(_COLUMNS)] + [_cells(r) for r in report.rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _machine_line(m: dict) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"{m['cpu']}, {m['usable_cores']} cores, {m['torch_threads']} torch threads{gpu}; "
            f"load {m['load_average_1min']}; torch {m['torch']}, diffusers {m['diffusers']}, "
            f"transformers {m['transformers']}, Python {m['python']}; {m['date']}")


def format_summary(report: Report) -> str:
    lines = [f"{k}: {v}" for k, v in report.summary.items()]
    for t in report.targets:
        verdict = "n/a" if t["ok"] is None else ("PASS" if t["ok"] else "FAIL")
        lines.append(f"target {t['name']} {t['target']}: {t['value']} -> {verdict}")
    return "\n".join(lines)


def to_markdown(report: Report) -> str:
    head = "| " + " | ".join(_COLUMNS) + " |\n|" + "---|" * len(_COLUMNS)
    body = "\n".join("| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |"
                     for r in report.rows)
    summary = "\n".join(f"- {line}" for line in format_summary(report).splitlines())
    mode = " (--quick)" if report.quick else ""
    return (f"# sdcourse benchmark{mode}\n\n**Machine**: {_machine_line(report.machine)}\n\n"
            f"{head}\n{body}\n\n## Summary\n\n{summary}\n\n"
            f"Peak memory: weights + the largest extra amount held by tensors during the call "
            f"(CPU: PyTorch allocator events via torch.profiler; GPU: "
            f"torch.cuda.max_memory_allocated). Whole run: {report.elapsed_s:.0f} s.\n")


# --------------------------------------------------------------------------- the mini model

_CHILD = r"""
import json, time
t0 = time.perf_counter()
import torch, sdcourse
from sdcourse import load_pipeline
t1 = time.perf_counter()
pipe = load_pipeline('text2img', model='mini', device='cpu', verbose=False)
t2 = time.perf_counter()
image = pipe(PROMPT, num_inference_steps=25).images[0]
t3 = time.perf_counter()
print("SDCOURSE_BENCH " + json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "generate_s": t3 - t2,
      "image_at": time.time(), "size": list(image.size)}))
"""


_FIRST_IMAGE_PARTS = ("import_s", "load_s", "generate_s")


def first_image_in_new_process(prompt: str = PROMPT) -> dict:
    """Time to the first image in a fresh Python: start, import, load the mini model, 25 steps.

    The child does what notebook 00 does and prints its own split and the wall-clock moment
    it holds the image: ``import_s`` (``import torch, sdcourse``), ``load_s``
    (``load_pipeline``: importing diffusers, the pipeline class's module and transformers,
    the libraries' cost before any file of the model is read, then reading the checkpoints)
    and ``generate_s``. ``to_image_s``, the figure the course's target is about, runs from
    starting the interpreter to that moment; ``total_s`` to the process's exit, which adds
    the interpreter tearing the libraries down (about a second here) after the image is
    already there.
    """
    env = dict(os.environ, TQDM_DISABLE="1")
    code = _CHILD.replace("PROMPT", repr(prompt))
    launched = time.time()  # wall clock: the child reports the image's moment on the same clock
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    total = time.time() - launched
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the first-image child process failed: {tail}")
    line = next((l for l in done.stdout.splitlines() if l.startswith("SDCOURSE_BENCH ")), None)
    if line is None:
        raise RuntimeError("the first-image child process printed no result line")
    split = json.loads(line.split(" ", 1)[1])
    split["total_s"] = total
    split["to_image_s"] = split.pop("image_at") - launched
    split["startup_s"] = split["to_image_s"] - sum(split[k] for k in _FIRST_IMAGE_PARTS)
    split["exit_s"] = total - split["to_image_s"]
    return split


def first_image_median(children: int) -> dict:
    """:func:`first_image_in_new_process` in ``children`` new processes, one after the other:
    the split of the median one, with every child's ``to_image_s`` in ``children_to_image_s``.

    Why several: one child is at the mercy of a busy moment, and the first after an install
    may find the disk caches cold (its time is the list's first)."""
    runs = [first_image_in_new_process() for _ in range(children)]
    median = sorted(runs, key=lambda r: r["to_image_s"])[len(runs) // 2]
    return median | {"children_to_image_s": [r["to_image_s"] for r in runs]}


def mini_available() -> bool:
    from .models import MINI_DIR, _MINI_COMPONENTS

    return all((MINI_DIR / c).is_dir() for c in _MINI_COMPONENTS["text2img"].values())


# --------------------------------------------------------------------------- the run


@dataclass
class Plan:
    """Sizes and repetitions of one run (pixels; latents are 8 times smaller)."""

    unet_px: int
    vae_px: int
    vae_tile_px: int
    ratio_px: int | None  # the real UNet step on the CPU for the mini ratio (None: skipped)
    unet_reps: int
    vae_reps: int
    mini_images: int
    mini_step_reps: int
    matmul_n: int
    offload_steps: int
    offload_px: int
    first_image_children: int = 3  # new processes timed; the median counts
    ratio_reps: int = 3  # timed calls of the real UNet step on the CPU (for the ratio)


def make_plan(device, quick: bool) -> Plan:
    gpu = torch.device(device).type == "cuda"
    if quick:
        return Plan(unet_px=64, vae_px=64, vae_tile_px=32, ratio_px=None, unet_reps=0, vae_reps=0,
                    mini_images=1, mini_step_reps=10, matmul_n=1024, offload_steps=2, offload_px=64,
                    first_image_children=1, ratio_reps=0)
    if gpu:
        return Plan(unet_px=512, vae_px=1024, vae_tile_px=512, ratio_px=512, unet_reps=5,
                    vae_reps=3, mini_images=5, mini_step_reps=50, matmul_n=2048,
                    offload_steps=10, offload_px=512)
    return Plan(unet_px=256, vae_px=256, vae_tile_px=128, ratio_px=512, unet_reps=3, vae_reps=1,
                mini_images=5, mini_step_reps=50, matmul_n=2048, offload_steps=0, offload_px=512)


def _half(device) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def bench_real_unet(report: Report, plan: Plan, device) -> float | None:
    """Rows for the real SD 2.1 UNet; returns the fp32 CPU step time at ``plan.ratio_px``."""
    gpu = torch.device(device).type == "cuda"
    check_size(plan.unet_px, plan.unet_px)
    size, latent = f"{plan.unet_px} px", plan.unet_px // 8
    section = "SD 2.1 UNet step (batch 2)"
    note = "" if gpu or plan.unet_px >= 512 else "reduced size on CPU"
    print(f"building the SD 2.1 UNet ({SD21_PARAMS['unet'] / 1e6:.0f} M parameters, random weights) ...",
          flush=True)
    unet = build_unet(device="cpu")
    ratio_step = None
    if plan.ratio_px:  # on the CPU, for the ratio against the mini UNet
        check_size(plan.ratio_px, plan.ratio_px)
        row = measure(report, section, "fp32, SDPA, CPU (for the ratio)", f"{plan.ratio_px} px",
                      lambda: unet_step(unet, plan.ratio_px // 8), "cpu", model_bytes(unet),
                      reps=plan.ratio_reps, note=f"median of {plan.ratio_reps}")
        ratio_step = row.seconds
    to(unet, device)
    for dtype in (torch.float32, _half(device)):
        to(unet, dtype=dtype)
        name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        weights = model_bytes(unet)
        unet.set_attention_slice(None)  # the default: SDPA (F.scaled_dot_product_attention)
        # bf16 on a CPU without bf16 units runs ~30x slower than fp32 (146 s a step at 256 px
        # on the reference laptop): one row, one timed call after the profiled one
        cpu_half = dtype != torch.float32 and not gpu
        reps = min(plan.unet_reps, 1) if cpu_half else plan.unet_reps
        measure(report, section, f"{name}, SDPA (default)", size,
                lambda: unet_step(unet, latent, device=device), device, weights, reps,
                ", ".join(filter(None, [note, "one timed call" if cpu_half and reps else ""])))
        if cpu_half:
            continue
        unet.set_attention_slice("auto")
        measure(report, section, f"{name}, attention slicing", size,
                lambda: unet_step(unet, latent, device=device), device, weights, plan.unet_reps, note)
        unet.set_attention_slice(None)
    del unet
    _free(device)
    return ratio_step


def bench_real_vae(report: Report, plan: Plan, device) -> None:
    gpu = torch.device(device).type == "cuda"
    check_size(plan.vae_px, plan.vae_px)
    vae = build_vae(dtype=_half(device) if gpu else torch.float32, device=device)
    name = "fp16" if gpu else "fp32"
    section, size = "SD 2.1 VAE decode (2 images)", f"{plan.vae_px} px"
    weights, latent = model_bytes(vae), plan.vae_px // 8
    reduced = "" if gpu else "reduced size on CPU"
    measure(report, section, f"{name}, plain", size, lambda: vae_decode(vae, latent, device=device),
            device, weights, plan.vae_reps, reduced)
    vae.enable_slicing()
    measure(report, section, f"{name}, vae.enable_slicing()", size,
            lambda: vae_decode(vae, latent, device=device), device, weights, plan.vae_reps,
            "one image at a time")
    vae.disable_slicing()
    vae.enable_tiling()
    if plan.vae_tile_px != vae.config.sample_size:
        set_vae_tile(vae, plan.vae_tile_px)
    tile_note = f"tiles of {plan.vae_tile_px} px" + (
        "" if plan.vae_tile_px == vae.config.sample_size else f" (default {vae.config.sample_size})")
    measure(report, section, f"{name}, vae.enable_tiling()", size,
            lambda: vae_decode(vae, latent, device=device), device, weights, plan.vae_reps, tile_note)
    del vae
    _free(device)


def _real_pipeline(dtype):
    """A StableDiffusionPipeline of the real SD 2.1 architecture with random weights (the
    mini model's tokenizer stands in for OpenCLIP's: any CLIP tokenizer gives valid ids)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from .models import MINI_DIR

    return StableDiffusionPipeline(
        vae=build_vae(dtype=dtype, device="cpu"), text_encoder=build_text_encoder(dtype, "cpu"),
        tokenizer=CLIPTokenizer.from_pretrained(MINI_DIR / "tokenizer"),
        unet=build_unet(dtype=dtype, device="cpu"),
        scheduler=PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def bench_offload(report: Report, plan: Plan, device) -> None:
    section = "SD 2.1 pipeline, whole image"
    if torch.device(device).type != "cuda":
        for setting in ("fp16, all on the GPU", "fp16, enable_model_cpu_offload()"):
            report.add(Row(section, setting, f"{plan.offload_px} px", note="skipped (no GPU)"))
        return
    from .models import MINI_DIR

    if not (MINI_DIR / "tokenizer").is_dir():
        report.add(Row(section, "model CPU offload", note="skipped (no tokenizer in sdcourse/mini)"))
        return
    check_size(plan.offload_px, plan.offload_px)
    pipe = _real_pipeline(torch.float16)
    pipe.set_progress_bar_config(disable=True)
    size = f"{plan.offload_px} px, {plan.offload_steps} steps"

    def generate():
        return pipe(PROMPT, num_inference_steps=plan.offload_steps, height=plan.offload_px,
                    width=plan.offload_px, generator=torch.Generator().manual_seed(0),
                    output_type="np").images  # numpy: random weights may give NaN pixels

    weights = model_bytes(pipe.unet, pipe.vae, pipe.text_encoder)
    pipe.to(device)
    measure(report, section, "fp16, all on the GPU", size, lambda: generate, device, weights, 1,
            "weights stay on the GPU")
    pipe.to("cpu")
    _free(device)
    pipe.enable_model_cpu_offload()
    measure(report, section, "fp16, enable_model_cpu_offload()", size, lambda: generate, device,
            model_bytes(pipe.unet), 1, f"weights ({_fmt_bytes(weights)}) in CPU memory, one model "
            "on the GPU at a time (at the peak the UNet, whose weights the last column gives)")
    del pipe
    _free(device)


def bench_mini(report: Report, plan: Plan) -> dict:
    """Rows for the mini model (CPU); returns its numbers for the summary."""
    from .models import load_pipeline

    section = "mini model (CPU)"
    out = {}
    first = out["first_image"] = first_image_median(plan.first_image_children)
    times = first["children_to_image_s"]
    runs = ("" if len(times) == 1 else f"median of {len(times)} (the first {times[0]:.2f} s, all "
            f"{min(times):.2f}–{max(times):.2f} s); ")
    report.add(Row(section, "time to first image, new process", f"{first['size'][0]} px, 25 steps",
                   first["to_image_s"],
                   note=f"{runs}start {first['startup_s']:.2f} s + import torch, sdcourse {first['import_s']:.2f} s + "
                        f"load_pipeline (diffusers, transformers, checkpoints) {first['load_s']:.2f} s + "
                        f"generate {first['generate_s']:.2f} s; "
                        f"the process exits {first['exit_s']:.2f} s later"))
    pipe = load_pipeline("text2img", model="mini", device="cpu", verbose=False)
    pipe.set_progress_bar_config(disable=True)
    px = pipe.unet.config.sample_size * pipe.vae_scale_factor
    size = f"{px} px, 25 steps"
    weights = model_bytes(pipe.unet, pipe.vae, pipe.text_encoder)

    def image():
        return pipe(PROMPT, num_inference_steps=25, generator=torch.Generator().manual_seed(0)).images[0]

    times = time_call(image, reps=plan.mini_images, warmup=1)
    out["seconds_per_image"] = statistics.mean(times)
    report.add(Row(section, f"seconds per image (mean of {plan.mini_images})", size,
                   out["seconds_per_image"], weights + (peak_memory(image) or 0), weights,
                   f"min {min(times):.2f} s, max {max(times):.2f} s"))
    pipe.enable_attention_slicing()
    sliced = statistics.mean(time_call(image, reps=plan.mini_images, warmup=1))
    pipe.disable_attention_slicing()
    report.add(Row(section, "seconds per image, enable_attention_slicing()", size, sliced,
                   note=f"{sliced / out['seconds_per_image']:.2f}x the default's time"))
    step = unet_step(pipe.unet, pipe.unet.config.sample_size)
    out["unet_step_s"] = statistics.median(time_call(step, reps=plan.mini_step_reps, warmup=3))
    report.add(Row(section, "UNet step (batch 2), fp32, SDPA", f"{px} px", out["unet_step_s"],
                   model_bytes(pipe.unet) + (peak_memory(step) or 0), model_bytes(pipe.unet),
                   f"median of {plan.mini_step_reps}"))
    out["unet_config"] = dict(pipe.unet.config)
    out["unet_params"] = count_params(pipe.unet)
    return out


def run(quick: bool = False, device: str | None = None) -> Report:
    start = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    plan = make_plan(device, quick)
    report = Report(machine_info(device), quick)
    print("machine:", _machine_line(report.machine), flush=True)
    load = report.machine["load_average_1min"]
    report.machine["busy"] = load is not None and load > 0.5 * report.machine["usable_cores"]
    if report.machine["busy"]:
        print(f"note: the machine is busy (load {load}): timings are slower than on a quiet one",
              flush=True)
        report.summary["note"] = (f"the machine was busy at the start (load {load} on "
                                  f"{report.machine['usable_cores']} cores): timings are slower than on a quiet one")
    gflops = matmul_gflops(plan.matmul_n, device="cpu")
    report.numbers["cpu_matmul_gflops"] = gflops
    report.summary["cpu matmul rate (fp32)"] = f"{gflops:.1f} GFLOP/s ({plan.matmul_n}x{plan.matmul_n})"

    mini = bench_mini(report, plan) if mini_available() else None
    if mini is None:
        report.add(Row("mini model (CPU)", "all", note="skipped (no mini model in sdcourse/mini)"))
    ratio_step = bench_real_unet(report, plan, device)
    bench_real_vae(report, plan, device)
    bench_offload(report, plan, device)

    s, numbers, targets = report.summary, report.numbers, report.targets
    numbers.update(real_unet_step_cpu_s=ratio_step, real_unet_step_cpu_px=plan.ratio_px)
    real_flops = unet_flops(SD21_UNET_CONFIG, 64)
    s["SD 2.1 UNet"] = (f"{SD21_PARAMS['unet'] / 1e6:.1f} M parameters, {real_flops / 1e9:.0f} "
                        f"GFLOP per step at 512 px (batch 2)")
    if ratio_step:
        rate = unet_flops(SD21_UNET_CONFIG, plan.ratio_px // 8) / ratio_step / 1e9
        numbers["real_unet_gflops_achieved_cpu"] = rate
        s[f"SD 2.1 UNet efficiency (CPU, {plan.ratio_px} px, fp32)"] = (
            f"{rate:.1f} GFLOP/s: {100 * rate / gflops:.0f}% of the measured matmul peak")
    if mini:
        first = mini["first_image"]
        flops = unet_flops(mini["unet_config"], mini["unet_config"]["sample_size"])
        side = mini["unet_config"]["sample_size"]
        s["mini UNet"] = (f"{mini['unet_params'] / 1e6:.2f} M parameters, {flops / 1e9:.3f} GFLOP "
                          f"per step (batch 2, {side}x{side} latents)")
        rate = flops / mini["unet_step_s"] / 1e9
        numbers.update(first_image=first, seconds_per_image=mini["seconds_per_image"],
                       mini_unet_step_s=mini["unet_step_s"], mini_unet_flops=flops,
                       mini_unet_gflops_achieved=rate, mini_unet_share_of_matmul_peak=rate / gflops)
        s["mini UNet efficiency"] = (f"{rate:.1f} GFLOP/s: runs at {100 * rate / gflops:.1f}% of the "
                                     f"measured matmul peak")
        targets.append(dict(name="time to first image", target="<= 4 s",
                            value=f"{first['to_image_s']:.2f} s (start, import and load "
                                  f"{first['to_image_s'] - first['generate_s']:.2f} s, 25 steps "
                                  f"{first['generate_s']:.2f} s)",
                            ok=first["to_image_s"] <= 4))
        targets.append(dict(name="seconds per 25-step image", target="<= 1 s",
                            value=f"{mini['seconds_per_image']:.2f} s", ok=mini["seconds_per_image"] <= 1))
        if ratio_step:
            ratio = ratio_step / mini["unet_step_s"]
            numbers["real_over_mini_step"] = ratio
            s[f"real {plan.ratio_px} px / mini UNet step"] = (f"{ratio:.0f}x ({ratio_step:.2f} s / "
                                                 f"{mini['unet_step_s'] * 1000:.1f} ms, same CPU)")
            targets.append(dict(name=f"mini step speed-up (vs the real UNet at {plan.ratio_px} px)",
                                target=">= 100x", value=f"{ratio:.0f}x", ok=ratio >= 100))
        else:
            targets.append(dict(name="mini step speed-up", target=">= 100x",
                                value="not measured in --quick", ok=None))
    report.elapsed_s = time.perf_counter() - start
    if not quick:
        targets.append(dict(name="the whole benchmark", target="<= 10 min",
                            value=f"{report.elapsed_s:.0f} s", ok=report.elapsed_s <= 600))
    return report


def _output_problem(option: str, path: str | Path) -> str | None:
    """Why ``path`` (the value of ``option``) could not be written after the run, or None.

    Checked before any measurement, so a typo costs seconds, not a whole benchmark run. A
    missing folder is fine (it is created when the results are written), as long as the
    nearest existing one above it is a writable folder. A name ending in a separator
    ("out/", as typed: a Path drops it) means a folder, which would be written as a file.
    """
    example = "bench.json" if option == "--json" else "bench.md"
    if isinstance(path, str) and not path.strip():
        return f"{option} is empty: give a file name, e.g. {example}"
    if isinstance(path, str) and path.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        return f"{option} {path} ends with {path[-1]}, so names a folder: give a file name, e.g. {path}{example}"
    path = Path(path)
    if path.is_dir():
        return f"{option} {path} is a folder: give a file name, e.g. {path / example}"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{option} {path} exists and is not writable: choose another path or fix its permissions"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{option} {path} cannot be written: {folder} is a file, not a folder; choose another path"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{option} {path} cannot be written: {folder} is not writable; choose another path"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m sdcourse.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repetitions: checks every code path in under a minute")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="where the real architecture runs (default: cuda when present)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write a Markdown table")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but PyTorch sees no CUDA GPU")
    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        problem = path is not None and _output_problem(option, path)
        if problem:
            parser.error(problem)
    if args.json is not None and args.markdown is not None and \
            Path(args.json).resolve() == Path(args.markdown).resolve():
        parser.error(f"--json {args.json} and --markdown {args.markdown} are the same file: the "
                     f"Markdown would overwrite the JSON; give two different paths")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from .models import quiet_loaders

    quiet_loaders()  # loading bars would interleave with the table
    report = run(quick=args.quick, device=args.device)
    print()
    print(format_table(report))
    print()
    print(format_summary(report))
    print(f"whole run: {report.elapsed_s:.0f} s")
    if args.json:
        write_atomic(args.json, json.dumps(asdict(report), indent=2, default=str) + "\n")
        print("wrote", args.json)
    if args.markdown:
        write_atomic(args.markdown, to_markdown(report))
        print("wrote", args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
