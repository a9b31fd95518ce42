"""Read generated pictures of the synthetic world back into words, from pixels alone.

A generated image is scored against its prompt without any learned model: the border tells
the background colour, pixels far from that colour (their largest connected region) form the
object mask, the mask's median
colour names the object's colour, and how much of its bounding box the mask fills tells the
shape (triangle 1/2, circle pi/4 ~ 0.79, square 1). That is enough to measure prompt fidelity,
which is how every lesson ends with a number.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .cli import MAX_CASES, MAX_SEED  # the CLI's --n and --seed ranges (seed + i stays a torch seed)
from .world import COLORS, Scene
from .messages import is_number, is_whole

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)
OBJECT_DISTANCE = 60.0  # RGB distance from the background colour that counts as object
MIN_OBJECT_PIXELS = 40  # fewer object pixels than this: no object was drawn


@dataclass
class Reading:
    """What the evaluator sees in one image."""

    color: str | None  # None when there is no object
    shape: str | None
    background: str
    mask: np.ndarray  # bool (H, W), the object pixels


def nearest_color(rgb) -> str:
    """The palette colour closest to an RGB triple."""
    return _NAMES[int(np.argmin(((_PALETTE - np.asarray(rgb, np.float32)) ** 2).sum(1)))]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (stray specks dropped)."""
    from collections import deque

    seen = np.zeros_like(mask, dtype=bool)
    best: list = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        region, queue = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def shape_from_mask(mask: np.ndarray) -> str | None:
    """Classify a mask by how much of its bounding box it fills."""
    rows = np.flatnonzero(mask.sum(1) >= 2)  # ignore stray single pixels
    cols = np.flatnonzero(mask.sum(0) >= 2)
    if len(rows) < 4 or len(cols) < 4:
        return None
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    fill = box.mean()
    return "triangle" if fill < 0.64 else "circle" if fill < 0.89 else "square"


def to_array(image) -> np.ndarray:
    """PIL image (any mode), image file path or uint8 (H, W, 3|4) array -> float32 (H, W, 3)
    in 0..255; anything else is a one-line ValueError (None, a grayscale or empty array, or
    a float array, whose 0..1 values would all read as black)."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as error:  # missing, unreadable, not a picture
            raise ValueError(f"{image} cannot be read as a picture ({type(error).__name__}): pass "
                             "a PIL image, or the path of a picture file") from None
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    elif not isinstance(image, np.ndarray):
        raise ValueError(f"{type(image).__name__} is not a picture: pass a PIL image, an image "
                         f"file path or an (H, W, 3) uint8 array")
    elif image.dtype != np.uint8:
        raise ValueError(f"a {image.dtype} array is not a picture: pass uint8 values 0..255, e.g. "
                         f"pipe.numpy_to_pil(array)[0] for a pipeline's 0..1 floats")
    elif image.ndim != 3 or image.shape[2] not in (3, 4) or not image.size:
        raise ValueError(f"an array of shape {image.shape} is not a picture: pass an (H, W, 3) "
                         f"uint8 array with H and W at least 1")
    return np.asarray(image, dtype=np.float32)[..., :3]


def read_image(image) -> Reading:
    """Background colour, object mask, object colour and shape of one picture."""
    px = to_array(image)
    border = np.concatenate([px[:2].reshape(-1, 3), px[-2:].reshape(-1, 3),
                             px[:, :2].reshape(-1, 3), px[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    distance = np.sqrt(((px - bg_rgb) ** 2).sum(-1))
    mask = largest_component(distance > OBJECT_DISTANCE)
    background = nearest_color(bg_rgb)
    if mask.sum() < MIN_OBJECT_PIXELS:
        return Reading(None, None, background, mask)
    core = mask & (distance > max(OBJECT_DISTANCE, 0.6 * float(distance[mask].max())))  # no blended edges
    color = nearest_color(np.median(px[core], axis=0))
    return Reading(color, shape_from_mask(mask), background, mask)


def score(images, scenes: list[Scene]) -> dict[str, float]:
    """Share of images whose object colour, shape and background match their scene.

    ``images``: a list of pictures (or one, or a pipeline's output: its ``.images``);
    ``scenes``: one :class:`~sdcourse.world.Scene` per picture (or a world sample, read as its
    ``.scene``)."""
    from .images import _as_list  # (as show_images takes them: one, a list, a pipeline's output)

    if isinstance(scenes, Scene) or hasattr(scenes, "scene"):
        scenes = [scenes]
    images, scenes = _as_list(images), [getattr(s, "scene", s) for s in scenes]
    odd = next((s for s in scenes if not isinstance(s, Scene)), None)
    if odd is not None:
        raise ValueError(f"score compares with scenes, got {type(odd).__name__} {odd!r:.40}: pass "
                         "world.Scene objects (e.g. world.random_scene(rng), or a sample's .scene)")
    if len(images) != len(scenes) or not scenes:
        raise ValueError(f"score got {len(images)} images and {len(scenes)} scenes: pass one "
                         f"scene per image, at least one of each")
    readings = [read_image(im) for im in images]
    n = len(scenes)
    return {
        "color_acc": sum(r.color == s.color for r, s in zip(readings, scenes)) / n,
        "shape_acc": sum(r.shape == s.shape for r, s in zip(readings, scenes)) / n,
        "background_acc": sum(r.background == s.background for r, s in zip(readings, scenes)) / n,
    }


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


# ---------------------------------------------------------------------------------------------
# Evaluation suites behind `sdcourse evaluate ...`: fresh cases from a seed, one flat dict each.


def check_counts(seeds: dict, **counts) -> None:
    """Raise a one-line ValueError unless each count (``n=``, ``steps=``, ``batch=``) is a whole
    number of at least 1 (``n`` at most :data:`MAX_CASES`) and each of ``seeds`` (name -> value)
    one from 0 to :data:`MAX_SEED`.

    Why: every suite loads a pipeline first, so ``n=0`` used to fail only after loading (a
    ZeroDivisionError) and ``batch=0`` inside ``range()``; the suites call this before any work.
    """
    for at_least, values in ((1, counts), (0, seeds)):
        for name, value in values.items():
            if not is_whole(value) or value < at_least:
                raise ValueError(f"{name}={value!r} is not a whole number of at least {at_least}: "
                                 f"pass {name}={at_least} or more")
    for name, value in seeds.items():
        if value > MAX_SEED:
            raise ValueError(f"{name}={value} is too large for a seed: pass {name}=0 to {MAX_SEED}")
    if counts.get("n", 0) > MAX_CASES:
        raise ValueError(f"n={counts['n']} cases would take hours on a CPU: pass n={MAX_CASES} "
                         f"or fewer (--n on the command line)")


def check_steps(steps: int, strength: float) -> None:
    """One-line ValueError unless ``steps`` leaves a denoising step at ``strength``: diffusers
    runs ``int(steps * strength)`` of them, and with none it fails deep inside the pipeline."""
    if not is_whole(steps) or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1, got {steps!r}")
    if not is_number(strength) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    if int(steps * strength) < 1:
        least = next(s for s in range(1, 1000) if int(s * strength) >= 1)
        raise ValueError(f"steps={steps} leaves no denoising step at strength {strength} "
                         f"(int(steps * strength) = 0): pass steps={least} or more")


def random_scenes(n: int, seed: int) -> list[Scene]:
    """``n`` fresh scenes (prompts and layouts) drawn from ``seed``: never a training
    picture (:func:`sdcourse.world.evaluation_scenes`)."""
    from .world import evaluation_scenes

    return evaluation_scenes(n, seed)


def evaluate_vae(n: int = 256, seed: int = 1234) -> dict[str, float]:
    """Reconstruction PSNR (dB) of the shipped VAE on ``n`` fresh pictures."""
    check_counts({"seed": seed}, n=n)
    import torch
    from diffusers import AutoencoderKL

    from .models import MINI_DIR
    from .train.vae import tensor_psnr
    from .world import images_to_tensor, render

    vae = AutoencoderKL.from_pretrained(MINI_DIR / "vae", dtype=torch.float32,
                                        use_safetensors=True).eval()
    x = images_to_tensor([render(s).image for s in random_scenes(n, seed)])
    with torch.no_grad():
        recon = torch.cat([vae(x[i:i + 64], sample_posterior=False).sample for i in range(0, n, 64)])
    latent_elems = vae.config.latent_channels * (x.shape[-1] // 8) ** 2
    return {"psnr": round(tensor_psnr(recon, x), 3), "n": n,
            "compression": round(x[0].numel() / latent_elems, 1)}


def evaluate_text2img(n: int = 200, seed: int = 1234, steps: int = 25, batch: int = 50) -> dict:
    """Prompt fidelity at guidance 7.5 and 1.0 on ``n`` fresh prompts, and speed."""
    check_counts({"seed": seed}, n=n, steps=steps, batch=batch)
    import time

    import torch

    from .models import load_pipeline

    pipe = load_pipeline("text2img", model="mini", device="cpu", verbose=False)
    pipe.set_progress_bar_config(disable=True)
    scenes = random_scenes(n, seed)
    result: dict = {"n": n, "steps": steps}
    singles = scenes[:5]
    with _progress(2 * n + len(singles), "text2img") as bar:
        for guidance, suffix in ((7.5, ""), (1.0, "_g1")):
            start = time.perf_counter()
            images = _in_batches(pipe, n, batch, seed, bar, prompt=[s.caption for s in scenes],
                                 num_inference_steps=steps, guidance_scale=guidance)
            seconds = time.perf_counter() - start
            for key, value in score(images, scenes).items():
                result[key + suffix] = round(value, 4)
            if guidance == 7.5:
                result["seconds_per_image"] = round(seconds / n, 4)
        # one image at a time, as a learner runs it (batching hides per-call overhead)
        start = time.perf_counter()
        for s in singles:
            pipe(s.caption, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
        result["seconds_per_single_image"] = round((time.perf_counter() - start) / len(singles), 4)
        bar.update(len(singles))
    return result


def _new_color(rng, *avoid: str) -> str:
    from .world import COLORS

    return rng.choice([c for c in COLORS if c not in avoid])


def psnr(a, b, where: np.ndarray | None = None) -> float:
    """PSNR (dB, 8-bit peak) between two same-size pictures (PIL or uint8 arrays), over the
    pixels where the (H, W) mask ``where`` is set, or all of them. Higher: more alike.

    ``where``: booleans, 0/1 numbers, or a picture of the mask (PIL "L" or uint8, 0/255: set
    where 128 or more); it must select at least one pixel."""
    x, y = to_array(a), to_array(b)
    if x.shape != y.shape:
        raise ValueError(f"psnr compares pictures of one size, got {x.shape[1]}x{x.shape[0]} and "
                         f"{y.shape[1]}x{y.shape[0]}: resize one to the other's size")
    diff = x - y
    if where is not None:
        mask = np.asarray(where)
        if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):  # an RGB(A) or one-channel mask picture
            mask = mask[..., 0]
        mask = mask >= 128 if mask.dtype == np.uint8 and mask.max() > 1 else mask.astype(float) > 0.5
        if mask.shape != x.shape[:2]:
            raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the pictures "
                             f"{x.shape[1]}x{x.shape[0]}: give a mask of the pictures' size")
        if not mask.any():
            raise ValueError("the mask selects no pixel: PSNR over no pixels is undefined; give a "
                             "mask with at least one pixel set (or where=None for all)")
        diff = diff[mask]
    mse = float((diff ** 2).mean())
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))


def _progress(total: int, suite: str):
    """A bar over the pictures a suite draws, on stderr (``--json`` prints on stdout), gone
    when it ends: a default evaluation takes minutes on a CPU. TQDM_DISABLE=1 hides it."""
    import sys

    from .train.common import progress  # (honours TQDM_DISABLE in a notebook too)

    return progress(None, total=total, desc=f"evaluate {suite}", unit="image", file=sys.stderr,
                    leave=False)


def _in_batches(pipe, n: int, batch: int, seed: int, bar=None, **per_case) -> list:
    """Call ``pipe`` on ``n`` cases in batches; ``per_case`` values are lists of length n.
    ``bar`` (:func:`_progress`) advances by each batch."""
    import torch

    images = []
    for i in range(0, n, batch):
        chunk = {k: v[i:i + batch] for k, v in per_case.items() if isinstance(v, list)}
        fixed = {k: v for k, v in per_case.items() if not isinstance(v, list)}
        images += pipe(**chunk, **fixed, generator=torch.Generator().manual_seed(seed + i)).images
        if bar is not None:
            bar.update(min(batch, n - i))
    return images


def evaluate_img2img(n: int = 100, seed: int = 1234, steps: int = 25, batch: int = 50) -> dict:
    """Recolouring a picture with img2img: colour adoption at strength 0.8, layout kept at 0.3.

    Layout is the IoU of the object's mask in the output and in the input, both read from
    the pictures by :func:`read_image`: an output equal to its input scores 1. (Against the
    input's drawn mask, ``layout_iou_*_vs_drawn``, the reader's own outline costs ~0.02: such
    an output scores 0.98.)"""
    check_counts({"seed": seed}, n=n, steps=steps, batch=batch)
    check_steps(steps, 0.3)  # the smaller of its two strengths
    import random

    from .models import load_pipeline
    from .world import caption, render

    pipe = load_pipeline("img2img", model="mini", device="cpu", verbose=False)
    pipe.set_progress_bar_config(disable=True)
    rng = random.Random(seed)
    scenes = random_scenes(n, seed)
    inputs = [render(s) for s in scenes]
    targets = [_new_color(rng, s.color, s.background) for s in scenes]
    prompts = [caption(c, s.shape, s.background) for c, s in zip(targets, scenes)]
    result: dict = {"n": n, "steps": steps}
    with _progress(2 * n, "img2img") as bar:
        for strength in (0.8, 0.3):
            images = _in_batches(pipe, n, batch, seed, bar, prompt=prompts,
                                 image=[x.image for x in inputs], strength=strength,
                                 num_inference_steps=steps, guidance_scale=7.5)
            readings = [read_image(im) for im in images]
            tag = f"s{int(strength * 10):02d}"
            result[f"color_adopt_{tag}"] = round(sum(r.color == c for r, c in zip(readings, targets)) / n, 4)
            result[f"layout_iou_{tag}"], result[f"layout_iou_{tag}_vs_drawn"] = _layout_ious(readings, inputs)
    return result


def _layout_ious(readings, inputs) -> tuple[float, float]:
    """Mean IoU of each output's object mask (its reading) with its input's: the mask read
    from the input picture, and the input's drawn mask (the measure before 2026-11-28)."""
    read = [mask_iou(r.mask, read_image(x.image).mask) for r, x in zip(readings, inputs)]
    drawn = [mask_iou(r.mask, x.mask > 0.5) for r, x in zip(readings, inputs)]
    return round(float(np.mean(read)), 4), round(float(np.mean(drawn)), 4)


def evaluate_inpaint(n: int = 100, seed: int = 1234, steps: int = 25, batch: int = 50) -> dict:
    """Replace the object inside a mask by a requested one; keep everything outside."""
    check_counts({"seed": seed}, n=n, steps=steps, batch=batch)
    import random

    from PIL import Image

    from .models import load_pipeline
    from .world import SHAPES, caption, render

    pipe = load_pipeline("inpaint", model="mini", device="cpu", verbose=False)
    pipe.set_progress_bar_config(disable=True)
    rng = random.Random(seed)
    scenes = random_scenes(n, seed)
    inputs = [render(s) for s in scenes]
    masks, wanted = [], []
    for s in scenes:
        half = s.size / 2 + 4
        box = np.zeros((64, 64), bool)
        box[max(0, round(s.cy - half)):round(s.cy + half), max(0, round(s.cx - half)):round(s.cx + half)] = True
        masks.append(box)
        wanted.append((_new_color(rng, s.color, s.background), rng.choice(SHAPES)))
    prompts = [caption(c, sh, s.background) for (c, sh), s in zip(wanted, scenes)]
    with _progress(n, "inpaint") as bar:
        images = _in_batches(pipe, n, batch, seed, bar, prompt=prompts, image=[x.image for x in inputs],
                             mask_image=[Image.fromarray(m.astype(np.uint8) * 255) for m in masks],
                             num_inference_steps=steps, guidance_scale=7.5)
    hits, outside = 0, []
    for image, mask, (color, shape), x in zip(images, masks, wanted, inputs):
        r = read_image(image)
        inside = r.mask.sum() > 0 and (r.mask & mask).sum() / r.mask.sum() >= 0.8
        hits += bool(inside and r.color == color and r.shape == shape)
        outside.append(psnr(image, x.image, ~mask))
    return {"n": n, "steps": steps, "object_in_mask": round(hits / n, 4),
            "psnr_outside": round(float(np.mean(outside)), 3)}


def evaluate_depth2img(n: int = 100, seed: int = 1234, steps: int = 25, batch: int = 50) -> dict:
    """New colours from the prompt, layout from the estimated depth; and the estimator itself.
    Layout as in :func:`evaluate_img2img` (both masks read from the pictures)."""
    check_counts({"seed": seed}, n=n, steps=steps, batch=batch)
    check_steps(steps, 0.8)  # the depth pipeline's default strength, which it runs at
    import random

    from .models import load_pipeline
    from .train.depth_estimator import depth_correlation
    from .world import caption, render

    pipe = load_pipeline("depth2img", model="mini", device="cpu", verbose=False)
    pipe.set_progress_bar_config(disable=True)
    rng = random.Random(seed)
    scenes = random_scenes(n, seed)
    inputs = [render(s) for s in scenes]
    wanted = []
    for s in scenes:
        color = _new_color(rng, s.color, s.background)
        wanted.append((color, _new_color(rng, color)))
    prompts = [caption(c, s.shape, bg) for (c, bg), s in zip(wanted, scenes)]
    with _progress(n, "depth2img") as bar:
        images = _in_batches(pipe, n, batch, seed, bar, prompt=prompts, image=[x.image for x in inputs],
                             num_inference_steps=steps, guidance_scale=7.5)
    readings = [read_image(im) for im in images]
    layout, layout_vs_drawn = _layout_ious(readings, inputs)
    return {
        "n": n, "steps": steps, "layout_iou": layout, "layout_iou_vs_drawn": layout_vs_drawn,
        "color_acc": round(sum(r.color == c for r, (c, _) in zip(readings, wanted)) / n, 4),
        "background_acc": round(sum(r.background == bg for r, (_, bg) in zip(readings, wanted)) / n, 4),
        "depth_corr": round(depth_correlation(pipe.depth_estimator.float(), pipe.feature_extractor,
                                              n=n, seed=seed), 4),
    }


def evaluate_dreambooth(n: int = 50, seed: int = 1234, **kwargs) -> dict:
    """A new subject taught with DreamBooth: fidelity in unseen contexts, class prior kept
    (with and without prior preservation); see :mod:`sdcourse.dreambooth_subject`."""
    check_counts({"seed": seed, "train_seed": kwargs.get("train_seed", 0)}, n=n)  # before training
    from .dreambooth_subject import evaluate_dreambooth as run

    return run(n=n, seed=seed, **kwargs)
