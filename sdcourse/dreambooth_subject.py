"""A subject the mini model has never seen, for the DreamBooth lesson: the two-tone circle.

The synthetic world (:mod:`sdcourse.world`) only has one-colour shapes. The DreamBooth
subject is a circle whose left half is white and whose right half is black: a particular
object, like "my dog", that no caption of the world can ask for. DreamBooth teaches it
to the model from a handful of pictures under a rare token: "a sks circle on a red background".

The pictures show it on a few backgrounds but never on a green one, so "a sks circle on a
green background" puts the subject in a context it was never shown in. :func:`detect_subject`
recognises it from pixels, which turns "did the model learn the subject?" into a number.
"""
from __future__ import annotations

import random

import numpy as np
from PIL import Image

from . import world
from .evaluate import _in_batches, read_image, to_array
from .files import atomic_path, cache_fix, cache_root, unwritable

# The subject's two halves. White and black because the mini VAE, which never saw a two-tone
# object, redraws light/dark contrasts faithfully; colourful pairs (yellow/blue...) bleed.
LEFT, RIGHT = "white", "black"
SHAPE = "circle"  # its class: "a sks circle" is a kind of "circle"
TOKEN = "sks"  # the rare token DreamBooth binds it to
#: Backgrounds of the instance pictures, in order (never green, never one of its own colours).
INSTANCE_BACKGROUNDS = ("red", "blue", "yellow", "purple", "orange")
#: Backgrounds it is never shown on: where the lesson asks for it in a new context.
UNSEEN_BACKGROUNDS = ("green",)
#: How many instance pictures the lesson and the evaluation use: one per instance background.
N_INSTANCE = len(INSTANCE_BACKGROUNDS)


def subject_prompt(background: str, token: str = TOKEN) -> str:
    """``a sks circle on a green background``: the world's caption with the token as colour."""
    return world.caption(token, SHAPE, background)


def render_subject(background: str, cx: float = 32.0, cy: float = 32.0, size: float = 30.0) -> Image.Image:
    """Draw the two-tone circle on a plain background (anti-aliased, like the world's shapes)."""
    if background in (LEFT, RIGHT):
        raise ValueError(f"the subject is {LEFT} and {RIGHT}: a {background} background hides half "
                         "of it, pick another colour")
    mask = world.draw_mask(SHAPE, cx, cy, size)[..., None]
    left_share = np.clip(cx - np.arange(world.SIZE, dtype=np.float32), 0, 1)[None, :, None]
    left, right, bg = (np.array(world.COLORS[c], np.float32) for c in (LEFT, RIGHT, background))
    pixels = mask * (left_share * left + (1 - left_share) * right) + (1 - mask) * bg
    return Image.fromarray(np.round(pixels).astype(np.uint8), "RGB")


def random_subject(rng: random.Random, background: str) -> Image.Image:
    """The subject at a random place and size (the same ranges as the world's objects)."""
    scene = world.random_scene(rng, color=LEFT, shape=SHAPE, background=background)
    return render_subject(background, scene.cx, scene.cy, scene.size)


def make_instance_images(n: int = N_INSTANCE, seed: int = 0,
                         backgrounds: tuple[str, ...] = INSTANCE_BACKGROUNDS) -> list[Image.Image]:
    """``n`` (3 to 5 is typical) pictures of the subject, picture ``i`` on the ``i``-th
    background (the list repeats when ``n`` is longer)."""
    rng = random.Random(seed)
    return [random_subject(rng, backgrounds[i % len(backgrounds)]) for i in range(n)]


def instance_prompts(n: int = N_INSTANCE, token: str = TOKEN,
                     backgrounds: tuple[str, ...] = INSTANCE_BACKGROUNDS) -> list[str]:
    """The caption of each picture of :func:`make_instance_images`, with the rare token."""
    return [subject_prompt(backgrounds[i % len(backgrounds)], token) for i in range(n)]


def class_prompts(n: int, seed: int = 0,
                  backgrounds: tuple[str, ...] = INSTANCE_BACKGROUNDS) -> list[str]:
    """``n`` class prompts for prior preservation: the instance prompts without the rare
    token, as in the DreamBooth paper ("a dog" for "a sks dog"). The mini world has no
    colourless caption, so the token gives way to an ordinary colour: "a sks circle on a red
    background" becomes "a blue circle on a red background" (a random colour other than the
    background), cycling through the instance pictures' backgrounds.

    Why those backgrounds only: the prior then holds the class exactly where the subject is
    taught, and asks nothing of the base model about other backgrounds. Class prompts on
    every background (green included) held "a sks circle on a green background" to the base
    model's answer, an ordinary circle, with 4 of 5 training seeds (`benchmarks/RESULTS.md`)."""
    return [prompt for _, prompt in _ordinary_circles(n, seed, backgrounds)]


def _ordinary_circles(n: int, seed: int, backgrounds: tuple[str, ...]) -> list[tuple[str, str]]:
    """``n`` (colour, caption) of ordinary circles on ``backgrounds`` in turn, each a random
    colour other than its background."""
    rng = random.Random(seed)
    circles = []
    for i in range(n):
        background = backgrounds[i % len(backgrounds)]
        color = rng.choice([c for c in world.COLORS if c != background])
        circles.append((color, world.caption(color, SHAPE, background)))
    return circles


def save_instance_images(folder, n: int = N_INSTANCE, seed: int = 0) -> list[str]:
    """Write the instance pictures as PNG files into ``folder``; returns their prompts."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(make_instance_images(n, seed)):
        with atomic_path(folder / f"subject_{i}.png") as tmp:
            image.save(tmp)
    return instance_prompts(n)


def detect_subject(image) -> bool:
    """Whether a picture shows the subject: an object white on its left, black on its right.

    The evaluator finds the object (the pixels far from the border's colour). Each of its
    pixels is named by its nearest palette colour: at least a fifth of them must be white
    and a fifth black, the white ones clearly to the left of the black ones. An ordinary
    one-colour object never passes. The outline is not checked: the mini VAE, which never
    saw a two-tone object, draws it a little lumpy.
    """
    reading = read_image(image)
    if reading.color is None:
        return False
    px = to_array(image)[reading.mask]
    palette = np.array(list(world.COLORS.values()), np.float32)
    names = np.array(list(world.COLORS))[((px[:, None] - palette) ** 2).sum(-1).argmin(1)]
    xs = np.nonzero(reading.mask)[1]
    left, right = names == LEFT, names == RIGHT
    if left.sum() < 0.2 * len(names) or right.sum() < 0.2 * len(names):
        return False
    width = xs[left | right].max() - xs[left | right].min() + 1
    return bool(xs[right].mean() - xs[left].mean() >= 0.15 * width)


# ------------------------------------------------------------------------------- evaluation

#: The settings `sdcourse evaluate dreambooth` trains with: the whole UNet and the text encoder
#: (the mini text encoder never saw "sks"; training it lets the token's embedding move), the
#: token's embedding started at the mean of the subject's two colours (``token_init``), the
#: prior's loss at full weight as in the paper, 450 steps at 4e-4 (short enough for notebook
#: 07's 3 minutes), with the class pictures of :func:`class_prompts`. Subject fidelity on
#: training seeds 0-8: 1.00, 0.94, 0.82, 1.00, 1.00, 0.88, 0.34, 1.00 and 0.98 (the README's
#: results; other recipes in `benchmarks/results/dreambooth_sweep.json`).
EVAL_SETTINGS = dict(lora=False, train_text_encoder=True, steps=450, batch_size=4, lr=4e-4,
                     num_class_images=100, prior_loss_weight=1.0, validate_every=0,
                     token_init=f"{LEFT} {RIGHT}")


def _unseen_and_class_prompts(n: int, seed: int,
                              token: str = TOKEN) -> tuple[list[str], list[tuple[str, str]]]:
    """``n`` subject prompts in unseen contexts, and ``n`` (colour, prompt) of the class there."""
    subject = [subject_prompt(UNSEEN_BACKGROUNDS[i % len(UNSEEN_BACKGROUNDS)], token)
               for i in range(n)]
    return subject, _ordinary_circles(n, seed, UNSEEN_BACKGROUNDS)


def measure(pipe, n: int = 50, seed: int = 1234, batch: int = 50, steps: int = 25,
            token: str = TOKEN) -> dict:
    """``subject_fidelity``: share of "a sks circle on a green background" pictures showing the
    subject; ``prior_kept``: share of "a red circle on a green background" (any colour) showing
    that ordinary circle, and not the subject. ``token``: the run's rare token."""
    subject, ordinary = _unseen_and_class_prompts(n, seed, token)

    def draw(prompts):
        return _in_batches(pipe, n, batch, seed, prompt=prompts, num_inference_steps=steps,
                           guidance_scale=7.5)

    fidelity = np.mean([detect_subject(im) for im in draw(subject)])
    kept = []
    for image, (color, _) in zip(draw([p for _, p in ordinary]), ordinary):
        reading = read_image(image)
        kept.append(reading.color == color and reading.shape == SHAPE and not detect_subject(image))
    return {"subject_fidelity": round(float(fidelity), 4), "prior_kept": round(float(np.mean(kept)), 4)}


def train_subject(out, *, prior: bool = True, token: str = TOKEN, class_dir=None, **overrides):
    """Teach the subject to the mini model: its instance pictures and prompts, ordinary circles
    as the class, :data:`EVAL_SETTINGS` updated with ``overrides``; returns what
    :func:`sdcourse.train.dreambooth.load_dreambooth` loads (a finished run returns at once)."""
    from .train.dreambooth import train_dreambooth

    settings = EVAL_SETTINGS | overrides
    return train_dreambooth(make_instance_images(), instance_prompts(token=token),
                            class_prompts(settings["num_class_images"]), out,
                            token=token,
                            prior_preservation=prior, class_dir=class_dir, **settings)


def evaluate_dreambooth(n: int = 50, seed: int = 1234, cache_dir=None, train_seed: int = 0,
                        **overrides) -> dict:
    """Train the subject into the mini model with and without prior preservation (or reuse
    cached runs of the same settings), then measure both and the untouched base model.

    ``seed`` draws the evaluation's pictures; ``train_seed`` the training runs (their batches,
    noise and class pictures): the recipe's robustness shows across training seeds."""
    import hashlib
    import json
    from pathlib import Path

    from diffusers import StableDiffusionPipeline

    from .models import mini_model_path
    from .train.dreambooth import DreamBoothError, load_dreambooth, mini_base

    base = mini_model_path("text2img")
    settings = EVAL_SETTINGS | {"seed": train_seed} | overrides
    root = Path(cache_dir) if cache_dir else cache_root()
    result: dict = {"n": n, "train_steps": settings["steps"], "train_seed": settings["seed"]}
    for prior, suffix in ((True, ""), (False, "_no_prior")):
        # the base by its contents: the assembled folder's name changes with a reinstall
        key = json.dumps({"base": mini_base(), "prior": prior, "subject": [LEFT, RIGHT],
                          "prompts": instance_prompts(),
                          "class_prompts": class_prompts(settings["num_class_images"]),
                          **settings}, sort_keys=True)
        out = root / "dreambooth" / hashlib.sha256(key.encode()).hexdigest()[:12]
        try:
            train_subject(out, prior=prior, cpu=True, **settings)  # (on the CPU, as recorded)
        except DreamBoothError:
            problem = unwritable(out)  # a cache that serves finished runs only (read-only)
            if problem:  # the run's folder is the cache's: say which setting to change
                raise DreamBoothError(f"cannot train in the cache folder {root} ({problem}): "
                                      f"{cache_fix() if not cache_dir else 'give a writable cache_dir'}") from None
            raise
        token = settings.get("token", TOKEN)
        for name, value in measure(load_dreambooth(out), n, seed, token=token).items():
            result[name + suffix] = value
        record = json.loads((out / "dreambooth.json").read_text())
        result["train_seconds" + suffix] = record["train_seconds"]
        result["train_cpu_seconds" + suffix] = record["train_cpu_seconds"]
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None,
                                                   requires_safety_checker=False, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    for name, value in measure(pipe, n, seed).items():
        result[name + "_base"] = value
    return result
