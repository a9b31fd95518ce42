# %% [markdown]
# # 01 · Latent diffusion: why Stable Diffusion works on latents
#
# **What you will learn**
# - why diffusing full-resolution pixels is expensive: self-attention's cost grows with the
#   *square* of the number of pixels (measured here, not just claimed);
# - what the VAE does: encode a picture to a small 4-channel latent (8× smaller per side),
#   decode it back, and how much is lost (PSNR) for how much is saved (compression ratio);
# - what the latent `scaling_factor` is and how it was found.
#
# **What you need**: CPU with the mini model: under a minute. Colab GPU with a real VAE:
# about a minute (a 170 MB download).

# %% [colab]

# %%
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

import sdcourse as sdc

device = sdc.pick_device()
choice = sdc.choose_model("text2img", device=device)
on_mini = choice.kind == "mini"
print(choice)

# %% [markdown]
# ## 1. The cost of attention grows with the square of the pixels
# A transformer layer lets every position attend to every other one: for *N* positions it
# computes an *N × N* attention matrix. A 128×128 picture has 4× the pixels of a 64×64 one, so
# 16× the attention entries — and 16× the work (as 512×512 against 256×256 would). Let us
# measure all three on the course's device: the FLOPs, counted by PyTorch's own
# `FlopCounterMode` while plain attention runs (the matrix products, written out); the memory
# of the *N × N* matrix that plain attention stores; and the time of PyTorch's fused attention
# (`scaled_dot_product_attention`, what diffusers uses by default).


# %%
from torch.utils.flop_counter import FlopCounterMode


def attention_cost(side: int, dim: int = 64, repeats: int = 5) -> dict:
    """One self-attention over side×side tokens: counted FLOPs, the attention matrix's size, time."""
    n = side * side
    q = k = v = torch.randn(1, 1, n, dim, device=device)
    with FlopCounterMode(display=False) as counter:  # plain attention, every step written out
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim)  # the N×N matrix, stored whole
        out = scores.softmax(dim=-1) @ v
    matrix_bytes = scores.numel() * scores.element_size()
    del scores, out
    # a GPU runs asynchronously: wait for it before reading the clock
    wait = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(q.device.type, lambda: None)
    F.scaled_dot_product_attention(q, k, v)  # warm-up
    times = []
    for _ in range(repeats):
        wait()
        start = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v)
        wait()
        times.append(time.perf_counter() - start)
    return {"side": side, "tokens": n, "matrix_MB": matrix_bytes / 1e6,
            "GFLOP": counter.get_total_flops() / 1e9, "ms": sorted(times)[repeats // 2] * 1e3}


small, large = attention_cost(64), attention_cost(128)
for row in (small, large):
    print("{side:>3}x{side:<3} {tokens:>5} tokens  attention matrix {matrix_MB:7.1f} MB  "
          "{GFLOP:6.2f} GFLOP  {ms:7.1f} ms".format(**row))

# %%
# NBVAL_CHECK_OUTPUT
print(f"2x the side -> {large['tokens'] / small['tokens']:.0f}x the pixels -> "
      f"{large['GFLOP'] / small['GFLOP']:.0f}x the FLOPs (counted), "
      f"{large['matrix_MB'] / small['matrix_MB']:.0f}x the matrix's memory")

# %%
print(f"measured time ratio: {large['ms'] / small['ms']:.1f}x (the median of 5 runs each)")

# %% [markdown]
# On a CPU the time grows nearly as much as the FLOPs (12–17× in the course’s runs: memory
# traffic and caches make time and FLOPs not exactly proportional; at much smaller sizes fixed
# overheads hide the growth, and on a GPU these two are so fast that launching the work can
# dominate). The memory is the matrix's size if it is stored whole, as plain
# attention does; fused kernels (SDPA's flash and memory-efficient ones) compute it in tiles
# and keep less, but the work still grows 16×. A 512×512 image attended pixel by pixel would
# need a 262,144² matrix — 275 GB in float32. Latent diffusion
# sidesteps this: the UNet works on a latent 8× smaller per side, 64× fewer positions.
#
# ## 2. The VAE: pixels → latents → pixels
# The VAE (`AutoencoderKL`) is part of every Stable Diffusion checkpoint. On the mini model we
# load just that component from the same folder the pipeline uses (`subfolder="vae"`); on a
# real checkpoint the same call reads the `vae/` folder of the Hub repository (its
# half-precision files on a GPU, about 170 MB: not the whole 2.6 GB pipeline).

# %%
# NBVAL_CHECK_OUTPUT
from diffusers import AutoencoderKL

if on_mini:
    vae = AutoencoderKL.from_pretrained(sdc.mini_model_path("text2img"), subfolder="vae", use_safetensors=True)
else:  # fp16 files where the checkpoint has them; from the local cache when offline
    vae = sdc.models.from_pretrained(AutoencoderKL, choice.source, dtype=sdc.pick_dtype(device), subfolder="vae",
                                     local_files_only=sdc.models.hub_offline(choice.source))
vae = vae.to(device).eval()
print("latent channels:", vae.config.latent_channels,
      "| downsampling:", 2 ** (len(vae.config.block_out_channels) - 1), "x per side",
      "| scaling_factor:", vae.config.scaling_factor)

# %% [markdown]
# A picture from the course's synthetic world (on a real model, the original article's
# 512×512 photo; offline, its bundled stand-in). Two small helpers convert between PIL images
# and the `[-1, 1]` tensors the VAE expects (torchvision's `to_tensor` gives `[0, 1]`):


# %%
# NBVAL_CHECK_OUTPUT
def pil_to_vae_input(image) -> torch.Tensor:
    """PIL image -> (1, 3, H, W) float tensor in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def vae_output_to_pil(x: torch.Tensor):
    """(1, 3, H, W) tensor in [-1, 1] -> PIL image."""
    from PIL import Image

    array = ((x[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


from sdcourse import world

if on_mini:
    picture = world.sample(3, color="yellow", shape="triangle", background="purple").image
else:
    picture = sdc.download_image("https://raw.githubusercontent.com/CompVis/latent-diffusion/main/"
                                 "data/inpainting_examples/overture-creations-5sI6fQgYIuo.png", size=512)
x = pil_to_vae_input(picture).to(device, vae.dtype)
print("image tensor:", tuple(x.shape))

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    latent_dist = vae.encode(x).latent_dist  # a Gaussian per latent value
    latents = latent_dist.mean
print("latents:", tuple(latents.shape))
print(f"compression: {x[0].numel()} numbers -> {latents[0].numel()} numbers "
      f"= {x[0].numel() / latents[0].numel():.0f}x")

# %% [markdown]
# Stable Diffusion's numbers are the same ratio: 3×512×512 = 786,432 pixel values become
# 4×64×64 = 16,384 latent values, 48× fewer. Each latent channel is a small map of the picture:

# %%
sdc.plot_latent_channels(latents[0].float().cpu(), title="the 4 latent channels");

# %% [markdown]
# Decoding goes back to pixels. How close is the round trip? PSNR (peak signal-to-noise ratio,
# in dB, higher is closer; around 30 dB the differences are small but, on sharp-edged 64 px
# shapes, still visible as a slight blur at the edges):


# %%
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1] (the range spans 2, so the peak² is 4)."""
    mse = F.mse_loss(a.float().clamp(-1, 1), b.float().clamp(-1, 1)).item()
    return 10 * math.log10(4 / mse)


with torch.no_grad():
    decoded = vae.decode(latents).sample
sdc.show_images([picture, vae_output_to_pil(decoded)], titles=["original", "decoded"], size=2);
print(f"round trip PSNR: {psnr(decoded, x):.1f} dB")

# %% [markdown]
# ## 3. The scaling factor
# The diffusion model expects inputs of roughly unit variance, but a VAE's latents have
# whatever spread training gave them. So each VAE carries a `scaling_factor`: latents are
# multiplied by it before diffusion and divided by it before decoding. The VAE of SD 1.x and
# 2.x has 0.18215 — found this way, as 1 / (standard deviation of the latents of a batch of
# training images).
# The mini VAE's factor was measured on its own data when it was trained. (On a real
# checkpoint this cell measures the real VAE on the mini world's flat shapes, far simpler than
# the photos 0.18215 came from, so expect its 1/std to differ from the shipped factor.)

# %%
from sdcourse.world import dataset, images_to_tensor

batch = images_to_tensor([s.image for s in dataset(64, seed=21)]).to(device, vae.dtype)
with torch.no_grad():
    z = vae.encode(batch).latent_dist.sample(generator=sdc.make_generator(0, device))
print(f"latent std: {z.std():.3f}  -> 1/std = {1 / z.std():.3f}  (shipped: {vae.config.scaling_factor})")
print(f"scaled latents std: {(z * vae.config.scaling_factor).std():.2f}")

# %% [markdown]
# ## 4. Measure: what the VAE keeps and what it saves
# Over 64 fresh pictures: mean reconstruction PSNR, and the compression ratio.

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    recon = vae.decode(vae.encode(batch).latent_dist.mean).sample
print(f"PSNR over {len(batch)} pictures (of their pooled squared error): {psnr(recon, batch):.0f} dB")
print(f"compression ratio: {batch[0].numel() / z[0].numel():.0f}x")

# %% [markdown]
# ## Exercises
# 1. Is there a "colour channel"? Encode the yellow triangle
#    (`world.sample(3, color="yellow", shape="triangle", background="purple")`, section 2's
#    picture on the mini model) and the same triangle in blue
#    (`world.sample(3, color="blue", shape="triangle", background="purple")`),
#    compute, per latent channel, the mean absolute difference of the two latents (their
#    `latent_dist.mean`, as in section 2: a sample would add noise; `changes`: 4 numbers), and
#    look at the difference with `plot_latent_channels`.
# 2. Diffusion in pixel space on a 128×128 picture would attend over 16,384 positions; in its
#    16×16 latent, over 256. How many times fewer attention FLOPs is that? Work it out from
#    the numbers of positions alone (the check measures it with `attention_cost`).

# %%
changes = None  # exercise 1: per-channel mean |difference| of the two latents, 4 numbers
pixel_positions, latent_positions = 128 * 128, 16 * 16
saving = None  # exercise 2: how many times fewer attention FLOPs in the latent?


# %%
# NBVAL_CHECK_OUTPUT
# Self-checks
def check_exercise_1() -> str:
    if changes is None:
        raise NotImplementedError
    pictures = [world.sample(3, color=c, shape="triangle", background="purple").image for c in ("yellow", "blue")]
    with torch.no_grad():
        z = vae.encode(images_to_tensor(pictures).to(device, vae.dtype)).latent_dist.mean.float()
    measured = (z[0] - z[1]).abs().mean(dim=(1, 2)).cpu()
    yours = torch.as_tensor(changes, dtype=torch.float32).flatten().cpu()
    assert yours.shape == measured.shape, f"one number per latent channel: {len(measured)} numbers"
    assert torch.allclose(yours, measured, rtol=0.02, atol=1e-3), \
        "encode both pictures (latent_dist.mean), subtract, take abs and average over height and width"
    big = int((measured > measured.max() / 2).sum())
    return f"{big} of {len(measured)} channels change by more than half the largest change"


def check_exercise_2() -> str:
    if saving is None:
        raise sdc.NotDoneYet("set `saving` in the exercise cell (the one that starts with `changes = None`)")
    measured = large["GFLOP"] / attention_cost(16)["GFLOP"]  # 128×128 positions (section 1) vs 16×16
    assert saving != pixel_positions / latent_positions, "that is the saving in positions, not in attention work"
    assert math.isclose(saving, measured, rel_tol=1e-6), "how does attention's work grow with the number of positions?"
    return f"attention in latent space is {saving:.0f}x cheaper"


passed_1 = sdc.self_check(check_exercise_1, "exercise 1")

# %%
# NBVAL_CHECK_OUTPUT
passed_2 = sdc.self_check(check_exercise_2, "exercise 2")  # (its own cell: run it even when exercise 1 fails)

# %% [markdown]
# **Solutions** (try them yourself first). The colour is not one channel's job: the check's
# line counts the channels that change by more than half the largest change, and the maps
# below show where in each channel the change sits (each map has its own colour scale:
# compare where, not how bright).

# %%
# NBVAL_CHECK_OUTPUT
pictures = [world.sample(3, color=c, shape="triangle", background="purple").image for c in ("yellow", "blue")]
with torch.no_grad():
    pair = vae.encode(images_to_tensor(pictures).to(device, vae.dtype)).latent_dist.mean.float()
difference = pair[0] - pair[1]
changes = difference.abs().mean(dim=(1, 2)).tolist()
saving = (pixel_positions / latent_positions) ** 2  # every position attends to every position
assert all(sdc.self_check(check, f"exercise {i}") for i, check in ((1, check_exercise_1), (2, check_exercise_2)))

# %%
sdc.plot_latent_channels(difference.cpu(), title="yellow minus blue, per latent channel");
