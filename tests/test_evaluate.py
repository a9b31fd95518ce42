import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sdcourse import evaluate, models, world


def test_evaluator_reads_ground_truth_pictures():
    samples = world.dataset(300, seed=42)
    scores = evaluate.score([s.image for s in samples], [s.scene for s in samples])
    assert min(scores.values()) >= 0.98, scores


def test_evaluator_is_near_chance_on_noise():
    scenes = [s.scene for s in world.dataset(300, seed=43)]
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in scenes]
    scores = evaluate.score(noise, scenes)
    assert scores["color_acc"] < 0.3 and scores["background_acc"] < 0.3
    assert scores["shape_acc"] < 0.5


def test_empty_picture_has_no_object():
    plain = np.zeros((64, 64, 3), np.uint8) + np.array(world.COLORS["green"], np.uint8)
    reading = evaluate.read_image(plain)
    assert reading.background == "green" and reading.color is None and reading.shape is None


def test_read_image_takes_a_path_or_any_pil_mode(tmp_path):
    s = world.sample(5)
    want = evaluate.read_image(s.image)
    s.image.save(tmp_path / "five.png")
    for image in (str(tmp_path / "five.png"), tmp_path / "five.png", s.image.convert("RGBA"),
                  s.image.convert("P")):
        got = evaluate.read_image(image)
        assert (got.color, got.shape, got.background) == (want.color, want.shape, want.background)


@pytest.mark.parametrize("image, message", [
    (None, "NoneType is not a picture: pass a PIL image, an image file path or an (H, W, 3) uint8 array"),
    (np.zeros((64, 64), np.uint8), "an array of shape (64, 64) is not a picture: pass an (H, W, 3) "
                                   "uint8 array with H and W at least 1"),
    (np.zeros((0, 0, 3), np.uint8), "an array of shape (0, 0, 3) is not a picture: pass an (H, W, 3) "
                                    "uint8 array with H and W at least 1"),
    (np.ones((64, 64, 3), np.float32), "a float32 array is not a picture: pass uint8 values 0..255, "
                                       "e.g. pipe.numpy_to_pil(array)[0] for a pipeline's 0..1 floats"),
])
def test_read_image_refuses_what_is_not_a_picture_in_one_line(image, message):
    """None was an IndexError, a grayscale array a reshape error, an empty one a made-up reading."""
    with pytest.raises(ValueError) as info:
        evaluate.read_image(image)
    assert str(info.value) == message


@pytest.mark.parametrize("n_images, n_scenes", [(2, 3), (0, 0)])
def test_score_refuses_unmatched_or_no_images(n_images, n_scenes):
    """Different lengths were silently cut to the shorter; none divided by zero."""
    samples = world.dataset(3)
    with pytest.raises(ValueError) as info:
        evaluate.score([s.image for s in samples[:n_images]], [s.scene for s in samples[:n_scenes]])
    assert str(info.value) == (f"score got {n_images} images and {n_scenes} scenes: pass one scene "
                               f"per image, at least one of each")


def test_object_mask_matches_truth_and_iou():
    s = world.sample(5)
    reading = evaluate.read_image(s.image)
    assert evaluate.mask_iou(reading.mask, s.mask > 0.5) > 0.9
    assert evaluate.mask_iou(reading.mask, ~reading.mask) == 0.0


# ------------------------------------------------------------------------------------------
# The evaluation suites' maths, on fake pipelines. Each fake is called exactly as the suite
# calls a diffusers pipeline and answers with the world's own renderer: a "perfect" one draws
# what the prompt asks for where the input picture's object is, an "identity" one gives the
# input back. What the suite must then report follows from the pictures, not from its code.

N, SEED = 4, 1234
#: The PSNR of pixels whose every channel is off by 10: 20 log10(255 / 10) = 28.13 dB
PSNR_OFF_BY_10 = 20 * np.log10(255 / 10)


class FakePipe:
    """A stand-in for a diffusers pipeline: ``draw(prompt, image=..., ...)`` makes each picture."""

    def __init__(self, draw, **attributes):
        self.draw, self.calls = draw, []
        self.__dict__.update(attributes)

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, prompt, generator=None, **kwargs):
        assert isinstance(generator, torch.Generator)  # seeded per batch, as a real run is
        prompt = [prompt] if isinstance(prompt, str) else prompt  # one prompt, as a learner calls it
        per_case = {k: v for k, v in kwargs.items() if isinstance(v, list)}
        fixed = {k: v for k, v in kwargs.items() if not isinstance(v, list)}
        self.calls.append((list(prompt), fixed))
        images = [self.draw(p, **{k: v[i] for k, v in per_case.items()}, **fixed)
                  for i, p in enumerate(prompt)]
        return SimpleNamespace(images=images)


def _parse(prompt: str) -> tuple[str, str, str]:
    return re.fullmatch(r"an? (\w+) (\w+) on an? (\w+) background", prompt).groups()


def _layouts(n: int = N, seed: int = SEED) -> dict:
    """The scene behind each input picture the suite will pass (its ground-truth rendering)."""
    return {world.render(s).image.tobytes(): s for s in evaluate.random_scenes(n, seed)}


def _perfect(layouts):
    """Draws exactly the prompted scene, the object where the input picture's object is."""
    def draw(prompt, image, **kwargs):
        scene = layouts[image.tobytes()]
        color, shape, background = _parse(prompt)
        return world.render(world.Scene(color, shape, background, scene.cx, scene.cy,
                                        scene.size)).image
    return draw


def _plain(background: str) -> Image.Image:
    return Image.new("RGB", (world.SIZE, world.SIZE), world.COLORS[background])


def _identity(prompt, image, **kwargs):
    return image.copy()


def _use(monkeypatch, task, pipe):
    """``load_pipeline(task, ...)`` answers ``pipe`` (and any other task fails the test)."""
    def load(asked, **kwargs):
        assert asked == task and kwargs.get("model") == "mini"
        return pipe

    monkeypatch.setattr(models, "load_pipeline", load)


#: Each suite's numeric arguments, and a bad value of each with the one-line error it must give.
SUITE_ARGUMENTS = {"vae": "n seed", "text2img": "n seed steps batch", "img2img": "n seed steps batch",
                   "inpaint": "n seed steps batch", "depth2img": "n seed steps batch",
                   "dreambooth": "n seed train_seed"}
BAD_NUMBERS = [
    ({"n": 0}, "n=0 is not a whole number of at least 1: pass n=1 or more"),
    ({"n": 2.5}, "n=2.5 is not a whole number of at least 1: pass n=1 or more"),
    ({"n": True}, "n=True is not a whole number of at least 1: pass n=1 or more"),
    ({"seed": -1}, "seed=-1 is not a whole number of at least 0: pass seed=0 or more"),
    ({"batch": 0}, "batch=0 is not a whole number of at least 1: pass batch=1 or more"),
    ({"steps": -3}, "steps=-3 is not a whole number of at least 1: pass steps=1 or more"),
    ({"train_seed": "7"}, "train_seed='7' is not a whole number of at least 0: pass train_seed=0 or more"),
    # 10**9 cases used to fill the memory with scenes (text2img: after loading its pipeline)
    ({"n": 10**9}, "n=1000000000 cases would take hours on a CPU: pass n=10000 or fewer "
                   "(--n on the command line)"),
    # torch's manual_seed overflowed on seed + i, after the pipeline had loaded
    ({"seed": 2**64}, "seed=18446744073709551616 is too large for a seed: pass seed=0 to 4294967295"),
    ({"train_seed": 2**32}, "train_seed=4294967296 is too large for a seed: pass train_seed=0 to 4294967295"),
]


@pytest.mark.parametrize("suite, kwargs, message", [
    (suite, kwargs, message) for suite, names in SUITE_ARGUMENTS.items()
    for kwargs, message in BAD_NUMBERS if set(kwargs) <= set(names.split())])
def test_suites_refuse_bad_numbers_before_loading_anything(monkeypatch, suite, kwargs, message):
    """n=0 used to load the pipeline and then divide by zero; batch=0 failed inside range()."""
    from diffusers import AutoencoderKL

    from sdcourse import dreambooth_subject

    never = lambda *a, **k: pytest.fail("loaded before checking its arguments")  # noqa: E731
    monkeypatch.setattr(models, "load_pipeline", never)
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", never)
    monkeypatch.setattr(dreambooth_subject, "evaluate_dreambooth", never)
    with pytest.raises(ValueError) as info:
        getattr(evaluate, f"evaluate_{suite}")(**kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("suite, kwargs, message", [
    # strength 0.3 x 3 steps = 0 denoising steps: a RuntimeError inside diffusers, after loading
    ("img2img", {"n": 4, "steps": 3, "batch": 2},
     "steps=3 leaves no denoising step at strength 0.3 (int(steps * strength) = 0): pass steps=4 or more"),
    ("depth2img", {"n": 1, "steps": 1},
     "steps=1 leaves no denoising step at strength 0.8 (int(steps * strength) = 0): pass steps=2 or more"),
])
def test_suites_refuse_steps_that_leave_no_denoising_step(monkeypatch, suite, kwargs, message):
    never = lambda *a, **k: pytest.fail("loaded before checking its arguments")  # noqa: E731
    monkeypatch.setattr(models, "load_pipeline", never)
    with pytest.raises(ValueError) as info:
        getattr(evaluate, f"evaluate_{suite}")(**kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("steps, strength, message", [
    (10, 0, "strength must be a number in (0, 1], got 0"),
    (10, -0.5, "strength must be a number in (0, 1], got -0.5"),
    ("10", 0.5, "steps must be a whole number of at least 1, got '10'"),
])
def test_check_steps_says_what_is_wrong(steps, strength, message):
    """Strength 0 was a bare StopIteration, steps '10' a TypeError about sequences."""
    with pytest.raises(ValueError) as info:
        evaluate.check_steps(steps, strength)
    assert str(info.value) == message


def test_largest_seed_and_the_seeds_derived_from_it_are_valid():
    evaluate.check_counts({"seed": evaluate.MAX_SEED}, n=evaluate.MAX_CASES)
    torch.Generator().manual_seed(evaluate.MAX_SEED + evaluate.MAX_CASES - 1)  # seed + i


class _FakeVAE:
    """Gives each picture back with every value moved 0.1 towards zero (never clamped), so its
    reconstruction error is exactly 0.1: PSNR 10 log10(4 / 0.01) = 26.02 dB on the [-1, 1] range."""

    def __init__(self, latent_channels):
        self.config, self.batches = SimpleNamespace(latent_channels=latent_channels), []

    def eval(self):
        return self

    def __call__(self, x, sample_posterior=True):
        assert sample_posterior is False  # the posterior mean: the same number every run
        self.batches.append(len(x))
        return SimpleNamespace(sample=x - 0.1 * x.sign())


def test_vae_suite_reports_psnr_compression_and_batches(monkeypatch):
    from diffusers import AutoencoderKL

    vae = _FakeVAE(latent_channels=8)
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", lambda path, **kw: vae)
    result = evaluate.evaluate_vae(n=66, seed=SEED)
    assert result == {"psnr": 26.021, "n": 66, "compression": 24.0}  # 64*64*3 / (8*8*8)
    assert vae.batches == [64, 2]


def test_text2img_suite_scores_each_guidance_and_times_the_pipeline(monkeypatch):
    import time

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def draw(prompt, guidance_scale=7.5, **kwargs):  # 1 s a picture; at guidance 1.0 the colour is off
        clock[0] += 1.0
        color, shape, background = _parse(prompt)
        if guidance_scale == 1.0:
            color = next(c for c in world.COLORS if c not in (color, background))
        return world.render(world.Scene(color, shape, background, 32.0, 32.0, 24.0)).image

    pipe = FakePipe(draw)
    _use(monkeypatch, "text2img", pipe)
    result = evaluate.evaluate_text2img(n=N, seed=SEED, steps=3, batch=3)
    assert result == {"n": N, "steps": 3, "color_acc": 1.0, "shape_acc": 1.0, "background_acc": 1.0,
                      "seconds_per_image": 1.0, "color_acc_g1": 0.0, "shape_acc_g1": 1.0,
                      "background_acc_g1": 1.0, "seconds_per_single_image": 1.0}
    sizes = [(len(p), f.get("guidance_scale"), f["num_inference_steps"]) for p, f in pipe.calls]
    assert sizes == [(3, 7.5, 3), (1, 7.5, 3), (3, 1.0, 3), (1, 1.0, 3)] + [(1, None, 3)] * N
    asked = [p for prompts, _ in pipe.calls[:2] for p in prompts]
    assert asked == [s.caption for s in evaluate.random_scenes(N, SEED)]


def test_suites_show_how_far_they_are_on_stderr_unless_tqdm_disable(monkeypatch, capsys):
    """A default evaluation draws hundreds of pictures for minutes: a bar counts them, on
    stderr (stdout holds the numbers, or --json's one line); TQDM_DISABLE hides it."""
    import time

    def slow(prompt, **kwargs):  # slower than the bar's refresh interval (0.1 s)
        time.sleep(0.15)
        return _plain_scene(prompt)

    _use(monkeypatch, "inpaint", FakePipe(slow))
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    evaluate.evaluate_inpaint(n=N, seed=SEED, steps=3, batch=3)
    out, err = capsys.readouterr()
    assert out == "" and "evaluate inpaint" in err and f"{N}/{N}" in err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    evaluate.evaluate_inpaint(n=N, seed=SEED, steps=3, batch=3)
    assert capsys.readouterr() == ("", "")


class SeedRecorder(FakePipe):
    """A FakePipe that notes the seed of each call's generator (the noise that batch gets)."""

    def __init__(self, draw, **attributes):
        super().__init__(draw, **attributes)
        self.seeds = []

    def __call__(self, prompt, generator=None, **kwargs):
        self.seeds.append(generator.initial_seed())
        return super().__call__(prompt, generator=generator, **kwargs)


def _batch_seeds(monkeypatch, suite: str, task: str, draw, seed: int) -> list[int]:
    """The generator seeds the suite's batched calls got: n=N in batches of 3 (two batches)."""
    pipe = SeedRecorder(draw)
    _use(monkeypatch, task, pipe)
    getattr(evaluate, f"evaluate_{suite}")(n=N, seed=seed, steps=4, batch=3)
    return pipe.seeds


def _plain_scene(prompt, **kwargs):
    color, shape, background = _parse(prompt)
    return world.render(world.Scene(color, shape, background, 32.0, 32.0, 24.0)).image


@pytest.mark.parametrize("suite, task, draw", [("text2img", "text2img", _plain_scene),
                                               ("img2img", "img2img", _identity)])
def test_each_batch_gets_its_own_noise_reproducible_from_the_seed(monkeypatch, suite, task, draw):
    """Every batch draws its noise from a seed of its own (one fixed seed would give each batch
    the same noise: the cases of batch 2 would repeat batch 1's starting points), derived from
    the run's seed: the same seed gives the same sequence, another seed another one."""
    seeds = _batch_seeds(monkeypatch, suite, task, draw, SEED)
    batched = seeds[:4]  # two batches at each guidance (text2img) or strength (img2img)
    assert batched[0] != batched[1] and batched[2] != batched[3], seeds
    assert _batch_seeds(monkeypatch, suite, task, draw, SEED) == seeds  # reproducible
    other = _batch_seeds(monkeypatch, suite, task, draw, SEED + 100)
    assert other[:4] != batched and not set(other[:2]) & set(batched[:2]), (other, seeds)


def test_img2img_suite_scores_a_perfect_and_an_identity_pipeline(monkeypatch):
    layouts = _layouts()
    perfect = _perfect(layouts)
    # strength 0.8 recolours perfectly, 0.3 keeps the picture: each key gets its strength's score
    by_strength = FakePipe(lambda p, image, strength, **kw:
                           perfect(p, image) if strength == 0.8 else _identity(p, image))
    _use(monkeypatch, "img2img", by_strength)
    result = evaluate.evaluate_img2img(n=N, seed=SEED, steps=4, batch=3)
    assert (result["n"], result["steps"]) == (N, 4)
    assert (result["color_adopt_s08"], result["color_adopt_s03"]) == (1.0, 0.0)
    # both masks read from the pictures: the input given back keeps its layout exactly
    assert result["layout_iou_s08"] >= 0.95 and result["layout_iou_s03"] == 1.0
    assert 0.95 <= result["layout_iou_s03_vs_drawn"] < 1.0  # against the drawn mask: the reader's outline
    assert [(len(p), f["strength"]) for p, f in by_strength.calls] == [(3, 0.8), (1, 0.8), (3, 0.3), (1, 0.3)]
    prompts = by_strength.calls[0][0] + by_strength.calls[1][0]  # a new colour, nothing else
    for prompt, scene in zip(prompts, layouts.values()):
        color, shape, background = _parse(prompt)
        assert color != scene.color and (shape, background) == (scene.shape, scene.background)

    blank = FakePipe(lambda p, image, **kw: _plain(_parse(p)[2]))  # no object at all
    _use(monkeypatch, "img2img", blank)
    result = evaluate.evaluate_img2img(n=N, seed=SEED)
    assert result["layout_iou_s08"] == result["layout_iou_s03"] == 0.0
    assert result["color_adopt_s08"] == result["color_adopt_s03"] == 0.0


def _off_by_10(image) -> Image.Image:
    return Image.fromarray((np.asarray(image, np.int16) + 10).clip(0, 255).astype(np.uint8))


def test_inpaint_suite_scores_the_object_in_the_mask_and_the_pixels_outside(monkeypatch):
    layouts = _layouts()
    perfect = _perfect(layouts)

    def inpaint(prompt, image, mask_image, **kwargs):  # the prompted scene inside, the input outside
        inside = np.asarray(mask_image.convert("L"))[..., None] > 127
        return Image.fromarray(np.where(inside, np.asarray(perfect(prompt, image)), np.asarray(image)))

    pipe = FakePipe(inpaint)
    _use(monkeypatch, "inpaint", pipe)
    result = evaluate.evaluate_inpaint(n=N, seed=SEED, steps=3)
    assert (result["n"], result["steps"], result["object_in_mask"]) == (N, 3, 1.0)
    assert result["psnr_outside"] > 100  # identical outside: only the 1e-10 floor on the error
    (prompts, fixed), = pipe.calls
    assert fixed["num_inference_steps"] == 3 and len(prompts) == N
    for prompt, scene in zip(prompts, layouts.values()):  # a new object on the same background
        color, shape, background = _parse(prompt)
        assert color not in (scene.color, scene.background) and background == scene.background

    # the input given back: nothing new in the mask, everything kept outside
    _use(monkeypatch, "inpaint", FakePipe(_identity))
    result = evaluate.evaluate_inpaint(n=N, seed=SEED)
    assert result["object_in_mask"] == 0.0 and result["psnr_outside"] > 100

    # the object right, but every pixel outside the mask off by 10: PSNR outside is 28.13 dB
    def shifted(prompt, image, mask_image, **kwargs):
        inside = np.asarray(mask_image.convert("L"))[..., None] > 127
        return Image.fromarray(np.where(inside, np.asarray(perfect(prompt, image)),
                                        np.asarray(_off_by_10(image))))

    _use(monkeypatch, "inpaint", FakePipe(shifted))
    result = evaluate.evaluate_inpaint(n=N, seed=SEED)
    assert result["object_in_mask"] == 1.0
    assert result["psnr_outside"] == pytest.approx(PSNR_OFF_BY_10, abs=1e-3)

    # the prompted object drawn well away from the mask, in the corner farthest from it:
    # right colour and shape, wrong place
    def misplaced(prompt, image, mask_image, **kwargs):
        scene = layouts[image.tobytes()]
        color, shape, background = _parse(prompt)
        x, y = (10.0 if scene.cx > world.SIZE / 2 else 54.0), (10.0 if scene.cy > world.SIZE / 2 else 54.0)
        return world.render(world.Scene(color, shape, background, x, y, 16.0)).image

    _use(monkeypatch, "inpaint", FakePipe(misplaced))
    assert evaluate.evaluate_inpaint(n=N, seed=SEED)["object_in_mask"] == 0.0

    # a plain picture of another colour: no object, and nothing outside the mask kept
    def other_background(prompt, image, **kwargs):
        color, shape, background = _parse(prompt)
        return _plain(next(c for c in world.COLORS if c not in (color, background)))

    _use(monkeypatch, "inpaint", FakePipe(other_background))
    result = evaluate.evaluate_inpaint(n=N, seed=SEED)
    assert result["object_in_mask"] == 0.0 and result["psnr_outside"] < 15


class _DepthEstimator:
    """Depth from the world's pixels: the object's share of each pixel (its colour's mix with
    the border's), nearness 0.9 on the object and the world's receding background elsewhere.
    ``flat``: the same depth everywhere, which correlates with nothing."""

    def __init__(self, flat=False):
        self.flat = flat

    def float(self):
        return self

    def __call__(self, pixel_values):
        px = pixel_values.permute(0, 2, 3, 1).double()  # (N, H, W, 3), normalised: linear in RGB
        if self.flat:
            return SimpleNamespace(predicted_depth=torch.ones(px.shape[:3]))
        depths = []
        for p in px:
            border = torch.cat([p[0], p[-1], p[:, 0], p[:, -1]])
            bg = border.median(0).values
            far = ((p - bg) ** 2).sum(-1)
            fg = p.reshape(-1, 3)[far.argmax()]
            share = (((p - bg) * (fg - bg)).sum(-1) / ((fg - bg) ** 2).sum()).clamp(0, 1)
            depths.append(share * 0.9 + (1 - share) * torch.from_numpy(world.background_depth()).double())
        return SimpleNamespace(predicted_depth=torch.stack(depths).float())


def test_depth2img_suite_scores_colours_background_layout_and_the_estimator(monkeypatch):
    from sdcourse.train.depth_estimator import image_processor

    layouts = _layouts()
    pipe = FakePipe(_perfect(layouts), depth_estimator=_DepthEstimator(),
                    feature_extractor=image_processor())
    _use(monkeypatch, "depth2img", pipe)
    result = evaluate.evaluate_depth2img(n=N, seed=SEED, steps=3)
    assert (result["n"], result["steps"]) == (N, 3)
    assert result["color_acc"] == result["background_acc"] == 1.0
    assert result["layout_iou"] >= 0.95
    assert result["depth_corr"] >= 0.99  # exact depth, up to the pictures' 8-bit rounding
    (prompts, _), = pipe.calls
    asked = [_parse(p) for p in prompts]
    for (color, shape, background), scene in zip(asked, layouts.values()):
        assert color != scene.color and color != background and shape == scene.shape

    # the input given back: the layout is kept, the prompt's colours are not; its background
    # counts only where the prompt happened to ask for the picture's own
    pipe = FakePipe(_identity, depth_estimator=_DepthEstimator(flat=True),
                    feature_extractor=image_processor())
    _use(monkeypatch, "depth2img", pipe)
    result = evaluate.evaluate_depth2img(n=N, seed=SEED)
    assert result["color_acc"] == 0.0 and result["layout_iou"] == 1.0
    assert 0.95 <= result["layout_iou_vs_drawn"] < 1.0
    same = [bg == scene.background for (_, _, bg), scene in zip(asked, layouts.values())]
    assert result["background_acc"] == sum(same) / N
    assert result["depth_corr"] == 0.0  # a flat depth map explains none of the true one

    # only the prompted background, no object: the background right, the layout lost
    blank = FakePipe(lambda p, image, **kw: _plain(_parse(p)[2]), depth_estimator=_DepthEstimator(),
                     feature_extractor=image_processor())
    _use(monkeypatch, "depth2img", blank)
    result = evaluate.evaluate_depth2img(n=N, seed=SEED)
    assert (result["layout_iou"], result["color_acc"], result["background_acc"]) == (0.0, 0.0, 1.0)


def test_psnr_over_all_pixels_or_a_mask():
    a = np.full((4, 4, 3), 100, np.uint8)
    b = a.copy()
    b[:2] += 10  # the top half off by 10, the bottom half identical
    top = np.zeros((4, 4), bool)
    top[:2] = True
    assert evaluate.psnr(Image.fromarray(a), Image.fromarray(b), top) == pytest.approx(PSNR_OFF_BY_10)
    assert evaluate.psnr(a, b, ~top) > 100  # identical there: only the 1e-10 floor
    assert evaluate.psnr(a, b) == pytest.approx(20 * np.log10(255 / np.sqrt(50)))  # mean error 50
    # the same mask as 0/1 numbers (once read as row indices), floats, or a picture of it
    for mask in (top.astype(int), top.astype(np.float32), Image.fromarray(top.astype(np.uint8) * 255),
                 np.stack([top.astype(np.uint8) * 255] * 3, axis=-1)):
        assert evaluate.psnr(a, b, mask) == pytest.approx(PSNR_OFF_BY_10), type(mask)


@pytest.mark.parametrize("where, b_shape, message", [
    (np.zeros((4, 4), bool), (4, 4, 3), "the mask selects no pixel: PSNR over no pixels is undefined"),
    (np.ones((2, 2), bool), (4, 4, 3), "the mask is 2x2, the pictures 4x4: give a mask of the pictures' size"),
    (None, (2, 4, 3), "psnr compares pictures of one size, got 4x4 and 4x2: resize one"),
])
def test_psnr_refuses_an_empty_or_mismatched_mask_and_pictures_of_two_sizes(where, b_shape, message):
    """An empty mask gave 148 dB, as if the pictures were identical; sizes, numpy's errors."""
    a = np.full((4, 4, 3), 100, np.uint8)
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate.psnr(a, np.full(b_shape, 100, np.uint8), where)


def test_score_takes_a_pipelines_output_single_pictures_and_samples():
    """A pipeline's output iterated its keys ("images" opened as a file); samples, as a
    sample's scene; what is no scene is named."""
    samples = world.dataset(2)

    class Output:  # what a diffusers pipeline returns
        images = [s.image for s in samples]

    perfect = {"color_acc": 1.0, "shape_acc": 1.0, "background_acc": 1.0}
    assert evaluate.score(Output(), samples) == perfect
    assert evaluate.score(samples[0].image, samples[0]) == perfect
    with pytest.raises(ValueError, match="score compares with scenes, got str 'a red"):
        evaluate.score([samples[0].image], ["a red circle on a blue background"])
    with pytest.raises(ValueError, match=r"^missing\.png cannot be read as a picture \(FileNotFoundError\)"):
        evaluate.read_image("missing.png")


# the depth pipeline's float32 autocast notice, which sdcourse filters at import (pytest
# resets the filters for each test)
@pytest.mark.filterwarnings("ignore:In CPU autocast, but the target dtype is not supported")
@pytest.mark.parametrize("suite, kwargs, shares", [
    ("vae", dict(n=2), set()),
    ("text2img", dict(n=2, steps=2, batch=2), {"color_acc", "shape_acc", "background_acc", "color_acc_g1"}),
    ("img2img", dict(n=2, steps=4, batch=2), {"color_adopt_s08", "layout_iou_s03"}),
    ("inpaint", dict(n=2, steps=2, batch=2), {"object_in_mask"}),
    ("depth2img", dict(n=2, steps=2, batch=2), {"layout_iou", "color_acc", "background_acc"}),
])
def test_every_suite_runs_on_the_shipped_mini_model(suite, kwargs, shares):
    """The fakes above take any keyword: here each suite calls the real diffusers pipelines on
    the shipped checkpoints (a handful of pictures, a few steps), so an argument a pipeline no
    longer accepts fails here. Shares lie in [0, 1]; the VAE and the depth estimator, which
    need no sampling, are far above what random weights give (about 10 dB and 0)."""
    result = getattr(evaluate, f"evaluate_{suite}")(**kwargs)
    assert result["n"] == 2 and shares <= result.keys()
    assert all(0 <= result[key] <= 1 for key in shares), result
    if suite == "vae":
        assert result["psnr"] > 20 and result["compression"] == 48.0
    if suite == "text2img":
        assert result["seconds_per_image"] > 0 and result["seconds_per_single_image"] > 0
    if suite == "inpaint":
        assert result["psnr_outside"] > 0  # dB; with 2 steps the picture is still noisy
    if suite == "depth2img":
        assert result["depth_corr"] > 0.5
