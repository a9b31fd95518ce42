"""The mini model's synthetic captioned world.

Every sample is a 64x64 RGB picture of one coloured shape on a plain coloured background,
with its caption ("a red circle on a blue background"), the object's mask and a depth map
(the object stands in front of a background that recedes towards the top). Everything is
drawn from a seed, so the same seed always gives the same picture: training, evaluation and
the notebooks all draw from the same world.

Why so simple? Because a model trained on it in minutes on a CPU still shows every idea of
Stable Diffusion (latents, text conditioning, guidance, img2img, inpainting, depth), and a
few lines of pixel arithmetic (:mod:`sdcourse.evaluate`) can check whether a generated image
follows its prompt.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .messages import is_number, is_whole

SIZE = 64  # pixels per side
SUPERSAMPLE = 4  # shapes are drawn 4x larger and shrunk: smooth (anti-aliased) edges

#: The palette: colour name -> RGB. Used for objects and backgrounds alike.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 50),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Scene:
    """What a picture shows: enough to draw it and to caption it."""

    color: str
    shape: str
    background: str
    cx: float = 32.0  # object centre, pixels
    cy: float = 32.0
    size: float = 30.0  # side of the object's bounding box, pixels

    def __post_init__(self):
        _check_names(self.color, self.shape, self.background)
        if self.color == self.background:  # an object that cannot be seen: no picture of it
            raise ValueError(f"object and background are both {self.color!r}: pick two different colours")
        for name in ("cx", "cy", "size"):  # a NaN or far-off centre drew no object, silently
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value <= SIZE or (name == "size" and value < 1):
                raise ValueError(f"{name} must be a number from {1 if name == 'size' else 0} to "
                                 f"{SIZE} (pixels of the {SIZE}x{SIZE} picture), got {value!r}")

    @property
    def caption(self) -> str:
        return caption(self.color, self.shape, self.background)


def _check_names(color: str | None, shape: str | None, background: str | None) -> None:
    """One-line ValueError for a colour, shape or background the world cannot draw (None: unset)."""
    for kind, name, valid in (("colour", color, COLORS), ("shape", shape, SHAPES),
                              ("background", background, COLORS)):
        if name is not None and name not in valid:
            raise ValueError(f"unknown {kind} {name!r}: choose one of {', '.join(valid)}")


@dataclass
class Sample:
    """One drawn scene: the image and the ground truth a model should reproduce."""

    scene: Scene
    image: Image.Image  # RGB, 64x64
    mask: np.ndarray  # float32 (64, 64), 1 inside the object (fractional on edges)
    depth: np.ndarray  # float32 (64, 64), larger = nearer, in [0, 1]

    @property
    def caption(self) -> str:
        return self.scene.caption


def article(word: str) -> str:
    """"an" before a vowel ("an orange circle"), else "a"."""
    return "an" if word[:1].lower() in tuple("aeiou") else "a"


def caption(color: str, shape: str, background: str) -> str:
    """The one caption template of the world: "a red circle on an orange background"."""
    return f"{article(color)} {color} {shape} on {article(background)} {background} background"


def random_scene(rng: random.Random, color: str | None = None, shape: str | None = None,
                 background: str | None = None) -> Scene:
    """Draw a scene; any of colour, shape, background may be fixed by the caller."""
    _check_names(color or None, shape or None, background)
    if not color:
        color = rng.choice(list(COLORS))
        if color == background:  # a fixed background: the object takes one of the other colours
            color = rng.choice([c for c in COLORS if c != background])
    shape = shape or rng.choice(SHAPES)
    if background is None:
        background = rng.choice([c for c in COLORS if c != color])
    size = rng.uniform(24, 40)
    half = size / 2
    cx = rng.uniform(half + 2, SIZE - half - 2)
    cy = rng.uniform(half + 2, SIZE - half - 2)
    return Scene(color, shape, background, round(cx, 2), round(cy, 2), round(size, 2))


def shape_polygon(shape: str, cx: float, cy: float, size: float, scale: float = 1.0):
    """The outline of a shape as PIL draw arguments (box for circles, points otherwise)."""
    h = size / 2 * scale
    cx, cy = cx * scale, cy * scale
    if shape == "circle":
        return [cx - h, cy - h, cx + h, cy + h]
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    raise ValueError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")


def draw_mask(shape: str, cx: float, cy: float, size: float) -> np.ndarray:
    """Anti-aliased object mask, float32 in [0, 1], shape (64, 64)."""
    big = Image.new("L", (SIZE * SUPERSAMPLE,) * 2, 0)
    draw = ImageDraw.Draw(big)
    outline = shape_polygon(shape, cx, cy, size, SUPERSAMPLE)
    if shape == "circle":
        draw.ellipse(outline, fill=255)
    else:
        draw.polygon(outline, fill=255)
    small = big.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def background_depth() -> np.ndarray:
    """The background recedes upwards: depth (nearness) 0.1 at the top, 0.4 at the bottom."""
    column = np.linspace(0.1, 0.4, SIZE, dtype=np.float32)
    return np.repeat(column[:, None], SIZE, axis=1)


def render(scene: Scene) -> Sample:
    """Draw a scene: image, mask and depth (a sample is drawn again from its ``.scene``)."""
    scene = getattr(scene, "scene", scene)
    mask = draw_mask(scene.shape, scene.cx, scene.cy, scene.size)
    fg = np.array(COLORS[scene.color], dtype=np.float32)
    bg = np.array(COLORS[scene.background], dtype=np.float32)
    pixels = mask[..., None] * fg + (1 - mask[..., None]) * bg
    image = Image.fromarray(np.round(pixels).astype(np.uint8), "RGB")
    depth = mask * 0.9 + (1 - mask) * background_depth()
    return Sample(scene, image, mask, depth.astype(np.float32))


def _whole(name: str, value) -> int:
    """``value`` as an int, or a one-line TypeError unless it is a whole number (bools are not;
    as make_generator's check: None drew a new picture each call, 1.5 a picture of its own)."""
    if not is_whole(value):
        raise TypeError(f"{name} {value!r} is not a whole number: pass an int, e.g. {name}=0")
    return int(value)


def _seed(value) -> int:
    """A seed as :func:`_whole` takes it, and not negative: ``random.Random(-1)`` is
    ``Random(1)``, so seed -1 would repeat seed 1's picture (and a training set could overlap
    an evaluation's)."""
    seed = _whole("seed", value)
    if seed < 0:
        raise ValueError(f"seed {seed} is negative: pass 0 or more (seed -1 would draw seed 1's "
                         "picture again)")
    return seed


def sample(seed: int, **fixed) -> Sample:
    """The sample for one seed (same seed, same picture); ``fixed`` pins colour/shape/background."""
    return render(random_scene(random.Random(_seed(seed)), **fixed))


#: Samples per :func:`dataset` seed: seed ``s`` draws samples ``s * DATASET_STRIDE + i``.
DATASET_STRIDE = 1_000_003


def dataset(n: int, seed: int = 0) -> list[Sample]:
    """``n`` samples; sample ``i`` comes from seed ``seed * 1_000_003 + i`` (so ``n`` is at
    most 1,000,003: one more would be the first sample of ``dataset(..., seed + 1)``)."""
    n, seed = _whole("n", n), _seed(seed)
    if n < 0:
        raise ValueError(f"n={n} is not a number of samples: pass n=0 or more")
    if n > DATASET_STRIDE:
        raise ValueError(f"n={n} is more samples than one seed holds: pass at most "
                         f"{DATASET_STRIDE:,} (more would repeat the next seed's samples)")
    return [sample(seed * DATASET_STRIDE + i) for i in range(n)]


def evaluation_scenes(n: int, seed: int) -> list[Scene]:
    """``n`` scenes for an evaluation, drawn from ``seed`` in a seed space of their own.

    Why: the trainers draw their pictures from whole-number seeds (:func:`sample`,
    :func:`dataset`), and an evaluation seeded the same way would start on a training picture
    (``random.Random(1234)`` is what ``sample(1234)`` draws from, and the VAE trained on
    samples 0 to 31,999). A text seed (``"sdcourse-eval:1234"``, hashed by ``random``)
    starts a stream no whole-number seed starts: every evaluated picture is fresh."""
    seed = _seed(seed)
    rng = random.Random(f"sdcourse-eval:{seed}")
    return [random_scene(rng) for _ in range(_whole("n", n))]


def images_to_tensor(images) -> "torch.Tensor":
    """PIL images (a list, or one) -> float tensor (N, 3, H, W) in [-1, 1], the range SD's VAE
    expects. What is no PIL image, or a size that differs from the first's, is one line."""
    import torch

    images = [images] if isinstance(images, Image.Image) else list(images)
    if not images:
        raise ValueError("images_to_tensor needs at least one PIL image")
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise TypeError(f"image {i} is {type(im).__name__}, not a PIL image: pass PIL images "
                            "(a world sample's .image, or Image.open(path))")
        if im.size != images[0].size:
            raise ValueError(f"image {i} is {im.size[0]}x{im.size[1]}, image 0 "
                             f"{images[0].size[0]}x{images[0].size[1]}: one batch takes one size; "
                             "resize them to one")
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0
