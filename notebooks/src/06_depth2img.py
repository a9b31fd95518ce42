# %% [markdown]
# # 06 · Depth to image: keep the layout, change everything else
#
# **What you will learn**
# - how `StableDiffusionDepth2ImgPipeline` estimates a depth map from your picture (with a
#   DPT depth model) and feeds it to a UNet with an extra input channel;
# - how to pass your own `depth_map` instead;
# - measured: the layout survives while colours follow the prompt.
#
# **What you need**: CPU with the mini model: under a minute. Colab GPU with a real depth
# checkpoint: about 2 minutes (download included).

# %% [colab]

# %%
import random

import numpy as np
import torch

import sdcourse as sdc
from sdcourse.evaluate import mask_iou, read_image
from sdcourse.world import caption, random_scene, render, sample

device = sdc.pick_device()
choice = sdc.choose_model("depth2img", device=device)  # mini or real: see notebook 00
on_mini = choice.kind == "mini"
pipe = sdc.load_pipeline("depth2img", model=choice, device=device)
size = 64 if on_mini else 512

# %% [markdown]
# ## 1. Estimating depth
# The pipeline carries a depth estimator (`DPTForDepthEstimation`, the architecture of
# MiDaS/DPT) and its image processor. Called by hand:

# %%
# NBVAL_CHECK_OUTPUT
def image_to_pixel_values(image) -> torch.Tensor:
    """PIL image -> the (1, 3, H, W) tensor the depth estimator reads (its image processor)."""
    return pipe.feature_extractor(images=image, return_tensors="pt").pixel_values


def pixel_values_to_depth(pixels: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) pixel values -> the estimator's (1, h, w) depth (larger = nearer)."""
    # DPT's batch norms want autocast in fp16, as the pipeline does (except on Apple GPUs: no autocast there)
    half = pipe.depth_estimator.dtype == torch.float16 and not device.startswith("mps")
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=half):
        return pipe.depth_estimator(pixels.to(device, pipe.depth_estimator.dtype)).predicted_depth


def depth_for_display(depth_map: torch.Tensor) -> torch.Tensor:
    """A depth map rescaled to [0, 1] for showing (a real estimator's values run far above 1)."""
    d = depth_map.float().cpu()
    return (d - d.min()) / (d.max() - d.min()).clamp(min=1e-8)


truth = sample(8, color="red", shape="circle", background="blue")
picture = truth.image.resize((size, size))
pixels = image_to_pixel_values(picture)
depth = pixel_values_to_depth(pixels)
print("picture:", picture.size, "-> pixel_values:", tuple(pixels.shape), "-> predicted_depth:", tuple(depth.shape))
sdc.show_images([picture, depth_for_display(depth[0]), truth.depth],
                titles=["picture", "estimated depth", "true depth"], size=2);

# %%
# NBVAL_CHECK_OUTPUT
if on_mini:
    est = depth[0].float().cpu().numpy().ravel()
    print(f"correlation with the true depth: {np.corrcoef(est, truth.depth.ravel())[0, 1]:.2f}")
else:
    print("SKIPPED: the true depth exists for the mini model's world only (judge the map by eye).")

# %% [markdown]
# ## 2. The depth-conditioned UNet
# The pipeline shrinks the depth map to latent size, rescales it to [-1, 1], and concatenates
# it to the noisy latents: the UNet has 5 input channels. Like img2img, it also starts from
# the noised picture (`strength`, default 0.8).

# %%
# NBVAL_CHECK_OUTPUT
print("depth UNet in_channels:", pipe.unet.config.in_channels)

# %% [markdown]
# ### From depth and a prompt to a picture
# One call does it all: estimate the depth, noise the picture, denoise with the depth as a
# fifth channel. Did the layout survive? Estimate the output's depth too and correlate it
# with the input's (1: the same depth layout), a check that works on any model.

# %%
prompt = "a green circle on a white background" if on_mini else "a green ball on a white table"
result = pipe(prompt=prompt, image=picture, num_inference_steps=25, guidance_scale=7.5,
              generator=sdc.make_generator(0)).images[0]
sdc.show_images([picture, result], titles=["input", "result"], size=2)
kept = np.corrcoef(pixel_values_to_depth(image_to_pixel_values(result)).float().cpu().numpy().ravel(),
                   depth.float().cpu().numpy().ravel())[0, 1]
print(f"prompt: {prompt}\ndepth correlation, input vs output: {kept:.2f}")

# %% [markdown]
# ## 3. Your own depth map
# `depth_map=` skips the estimator: any (1, H, W) tensor, larger = nearer. Here, the world's
# true depth of a *different* picture (a triangle, elsewhere in the frame), with the same
# picture and prompt as before: at strength 1.0 the layout comes from the depth map. The
# prompt still says "circle": the depth map decides *where*, the words *what*.

# %%
other = sample(9, color="red", shape="triangle", background="blue")
depth_map = torch.from_numpy(other.depth)[None]
from_depth = pipe(prompt=prompt, image=picture, depth_map=depth_map, strength=1.0,
                  num_inference_steps=25, guidance_scale=7.5, generator=sdc.make_generator(0)).images[0]
print("depth_map:", tuple(depth_map.shape))
sdc.show_images([other.depth, from_depth], titles=["depth map given", "strength 1.0"], size=2);
if on_mini:  # where did the object land: on the depth map's object, or the picture's?
    landed = read_image(from_depth).mask
    print(f"object mask IoU with the depth map's object {mask_iou(landed, other.mask > 0.5):.2f}, "
          f"with the input picture's object {mask_iou(landed, truth.mask > 0.5):.2f}")

# %% [markdown]
# ## 4. Measure: layout preserved, colours from the prompt
# 24 pictures; each prompt asks for new object *and* background colours. Layout: IoU of the
# object's mask in the output with the input's. Colours: does the evaluator read the
# requested object colour, and the requested background colour? For comparison, plain
# img2img at the same strength.

# %%
if on_mini:
    rng = random.Random(4)
    cases = []
    for i in range(24):
        scene = random_scene(rng)
        color = rng.choice([c for c in sdc.world.COLORS if c not in (scene.color, scene.background)])
        bg = rng.choice([c for c in sdc.world.COLORS if c not in (color, scene.background)])
        cases.append((render(scene), color, caption(color, scene.shape, bg), bg))
    img2img = sdc.load_pipeline("img2img", model="mini", device=device, verbose=False)

    def measure(p) -> tuple[float, float, float]:
        outs = p([c[2] for c in cases], image=[c[0].image for c in cases], strength=0.8,
                 num_inference_steps=25, guidance_scale=7.5, generator=sdc.make_generator(0)).images
        readings = [read_image(o) for o in outs]
        iou = np.mean([mask_iou(r.mask, x.mask > 0.5) for r, (x, _, _, _) in zip(readings, cases)])
        acc = np.mean([r.color == c for r, (_, c, _, _) in zip(readings, cases)])
        bg_acc = np.mean([r.background == bg for r, (_, _, _, bg) in zip(readings, cases)])
        return float(iou), float(acc), float(bg_acc)

    scores = {"depth2img": measure(pipe), "img2img": measure(img2img)}
    for name, (iou, acc, bg_acc) in scores.items():
        print(f"{name:>9}: layout IoU {iou:.2f}   prompt colour: object {acc:.2f}, background {bg_acc:.2f}")
else:
    print("SKIPPED: the pixel evaluator reads the mini model's world only")

# %% [markdown]
# On the mini model, plain img2img keeps less of the layout here than in notebook 04 at the
# same strength (0.47 there): there the prompt kept the background's colour, here it asks for
# a new one too, so nearly every pixel must change and the object's outline goes with them,
# to about the overlap notebook 04 measured against an *unrelated* picture (0.27): the layout
# is lost. The depth UNet keeps it because the depth map, not the noisy picture, carries the
# layout: it is given to the UNet at every step, whatever the strength.

# %%
# NBVAL_CHECK_OUTPUT
if on_mini:
    print("depth keeps the layout better than img2img at the same strength:",
          scores["depth2img"][0] > scores["img2img"][0])
    print("and takes the prompt's object and background colours at least 80% of the time:",
          min(scores["depth2img"][1:]) >= 0.8)
else:
    print("SKIPPED: the pixel reader knows the mini model's world only.")

# %% [markdown]
# ## Exercises
# 1. Pass a depth map without any object, a ramp from near on the left to far on the right
#    (`torch.linspace`), with strength 1.0. What layout do you get? (A perfectly flat map
#    would not work: the pipeline rescales each map by its min and max, 0/0 for a flat one.)
#    (No self-check: look at the picture.)
# 2. Complete `normalize_depth` the way the pipeline rescales depth before the UNet sees it,
#    and run the self-check.


# %%
def normalize_depth(d: torch.Tensor) -> torch.Tensor:
    """Rescale each depth map in a batch (N, 1, h, w) to [-1, 1]."""
    raise NotImplementedError  # your code


# %%
# NBVAL_CHECK_OUTPUT
# Self-check for exercise 2
def check_exercise_2() -> str:
    d = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 5 + 3
    d[1] *= 10  # a second picture on another scale: each is rescaled on its own
    n = normalize_depth(d)
    assert n.shape == d.shape, f"shape {tuple(n.shape)}: keep (N, 1, h, w)"
    assert torch.allclose(n.amin(dim=(1, 2, 3)), torch.tensor(-1.0)), "each picture's smallest value should become -1"
    assert torch.allclose(n.amax(dim=(1, 2, 3)), torch.tensor(1.0)), "each picture's largest value should become 1"
    big = d.flatten(1).argmax(dim=1)
    assert (n.flatten(1).gather(1, big[:, None]) > 0.99).all(), "rescale, don't flip: the largest value maps to 1"
    lo, hi = d[0].amin(), d[0].amax()
    d[0, 0, 0, :3] = torch.stack([lo, hi, (lo + hi) / 2])  # the range stays [lo, hi]
    assert normalize_depth(d)[0, 0, 0, 2].abs() < 1e-5, "a straight-line rescale: halfway maps to 0"
    return "depth rescaled to [-1, 1] per picture, as StableDiffusionDepth2ImgPipeline does"


passed = sdc.self_check(check_exercise_2, "exercise 2")

# %% [markdown]
# **A solution** (try it yourself first):


# %%
# NBVAL_CHECK_OUTPUT
def normalize_depth(d: torch.Tensor) -> torch.Tensor:
    """Rescale each depth map in a batch (N, 1, h, w) to [-1, 1]."""
    lo = d.amin(dim=(1, 2, 3), keepdim=True)
    hi = d.amax(dim=(1, 2, 3), keepdim=True)
    return 2.0 * (d - lo) / (hi - lo) - 1.0


assert sdc.self_check(check_exercise_2, "exercise 2")
