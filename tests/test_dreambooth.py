"""DreamBooth: the subject and its detector, input checks, LoRA output, resume after a kill.

Mechanics only: the pipeline here has random weights (built in a temporary folder), so
nothing about quality is tested; `sdcourse evaluate dreambooth` measures that on the mini model.
"""
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sdcourse import dreambooth_subject as subject
from sdcourse import world
from sdcourse.train import common
from sdcourse.train import dreambooth as db

FAST = dict(steps=2, batch_size=2, num_class_images=2, save_every=1, validate_every=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random-weight pipeline of the mini model's architecture, saved as a diffusers folder."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sdcourse.models import MINI_DIR
    from sdcourse.train import text2img, vae

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base")
    StableDiffusionPipeline(
        vae=AutoencoderKL(**vae.VAE_CONFIG), unet=UNet2DConditionModel(**text2img.UNET_CONFIG),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text2img.TEXT_ENCODER_CONFIG)),
        tokenizer=CLIPTokenizer.from_pretrained(MINI_DIR / "tokenizer"),
        scheduler=text2img.sampling_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("instance")
    subject.save_instance_images(folder, n=4)
    return folder


# ------------------------------------------------------------------------------ the subject


def test_detector_finds_the_subject_in_any_context_and_nothing_else():
    rng = random.Random(0)
    backgrounds = [c for c in world.COLORS if c not in (subject.LEFT, subject.RIGHT)]
    drawn = [subject.random_subject(rng, rng.choice(backgrounds)) for _ in range(200)]
    assert np.mean([subject.detect_subject(im) for im in drawn]) >= 0.95
    ordinary = [s.image for s in world.dataset(300, seed=4)]
    assert np.mean([subject.detect_subject(im) for im in ordinary]) <= 0.05
    # the left/right order matters: the mirrored subject is not the subject
    mirrored = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in drawn[:50]]
    assert np.mean([subject.detect_subject(im) for im in mirrored]) <= 0.05


def test_instance_pictures_and_prompts():
    images = subject.make_instance_images(4)
    prompts = subject.instance_prompts(4)
    assert len(images) == 4 and all(im.size == (64, 64) for im in images)
    assert all(subject.detect_subject(im) for im in images)
    assert prompts[0] == "a sks circle on a red background"
    assert not any("green" in p for p in prompts)  # green is kept for the unseen context


def test_class_prompts_are_the_instance_prompts_without_the_token():
    prompts = subject.class_prompts(12)
    assert prompts == subject.class_prompts(12)  # the same seed, the same prompts
    backgrounds = subject.INSTANCE_BACKGROUNDS
    for i, prompt in enumerate(prompts):
        color, shape, background = re.fullmatch(r"an? (\w+) (\w+) on an? (\w+) background", prompt).groups()
        assert shape == "circle" and color in world.COLORS and color != background
        # the instance pictures' backgrounds, in their order: never the unseen green
        assert background == backgrounds[i % len(backgrounds)]
    assert len({p.split()[1] for p in subject.class_prompts(100)}) >= 6  # many ordinary colours


def _caption(prompt: str) -> tuple[str, str, str]:
    return re.fullmatch(r"an? (\w+) (\w+) on an? (\w+) background", prompt).groups()


class _DrawingPipe:
    """Called as ``measure`` calls a text-to-image pipeline; ``draw(prompt)`` makes each picture."""

    def __init__(self, draw):
        self.draw, self.prompts = draw, []

    def __call__(self, prompt, num_inference_steps, guidance_scale, generator):
        assert isinstance(generator, torch.Generator)
        self.prompts.append(list(prompt))
        return SimpleNamespace(images=[self.draw(p) for p in prompt])


def _the_subject(prompt):  # a model that learnt the subject and lost its class
    return subject.render_subject(_caption(prompt)[2])


def _ordinary(color=None, shape=subject.SHAPE):
    """An ordinary one-colour object: the prompt's colour (red for a word the world lacks, as
    the base model draws "sks"), or ``color``, as ``shape``."""
    def draw(prompt):
        asked, _, background = _caption(prompt)
        asked = color or (asked if asked in world.COLORS else "red")
        return world.render(world.Scene(asked, shape, background)).image
    return draw


@pytest.mark.parametrize("draw, fidelity, kept", [
    (_the_subject, 1.0, 0.0),
    (_ordinary(), 0.0, 1.0),
    (_ordinary(shape="square"), 0.0, 0.0),  # the class is circles
    (_ordinary(color="blue"), 0.0, 0.0),  # the class prompts ask for orange, yellow, white
])
def test_measure_reads_the_subject_and_the_class_from_the_pictures(draw, fidelity, kept):
    """``measure`` on pipelines that always draw the subject, or ordinary circles (or the
    wrong ordinary object). Seed 5's class prompts ask for a white circle too: the subject
    reads as one, and must not count as the class kept."""
    pipe = _DrawingPipe(draw)
    result = subject.measure(pipe, n=4, seed=5, batch=3, steps=2, token="zwx")
    assert result == {"subject_fidelity": fidelity, "prior_kept": kept}
    assert [len(p) for p in pipe.prompts] == [3, 1, 3, 1]  # subject prompts, then the class's
    asked = [_caption(p) for p in pipe.prompts[0] + pipe.prompts[1]]
    assert set(asked) == {("zwx", subject.SHAPE, "green")}  # the run's token, an unseen context
    asked = [_caption(p) for p in pipe.prompts[2] + pipe.prompts[3]]
    assert all(c in world.COLORS and b == "green" for c, _, b in asked)
    assert {c for c, _, _ in asked} == {"orange", "yellow", "white"}


# ----------------------------------------------------------------------------- input checks


def _contents(path: Path):
    """What is at ``path``: None, a file's bytes, or a folder's files and their bytes."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in path.rglob("*")}


def _expect_error(tmp_path, monkeypatch, instance, match, **kwargs):
    """The call fails with a DreamBoothError before any model is loaded, and leaves the out
    folder as it found it: not created, or (made by the test first) unchanged."""
    def no_training(*args, **kw):
        raise AssertionError("training started before the inputs were checked")

    monkeypatch.setattr(db, "load_components", no_training)
    args = dict(instance_prompt="a sks circle", class_prompt="a red circle",
                out=tmp_path / "run", base=kwargs.pop("base"))
    args |= kwargs
    before = _contents(Path(args["out"]))
    with pytest.raises(db.DreamBoothError, match=match) as info:
        db.train_dreambooth(instance, **args)
    message = str(info.value)
    assert "\n" not in message and ":" in message  # one line: the problem, then what to do
    assert _contents(Path(args["out"])) == before, "a refused call changed the out folder"
    return message


def test_missing_and_empty_instance_folders(tmp_path, monkeypatch, base):
    message = _expect_error(tmp_path, monkeypatch, tmp_path / "nowhere", "does not exist", base=base)
    assert "holds 3 or more pictures (3–5 is typical) of the subject" in message
    (tmp_path / "empty").mkdir()
    message = _expect_error(tmp_path, monkeypatch, tmp_path / "empty", "is empty", base=base)
    assert "put 3 or more pictures (3–5 is typical)" in message


def test_unsupported_files_in_the_instance_folder(tmp_path, monkeypatch, base, instance_dir):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in instance_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("my subject")
    message = _expect_error(tmp_path, monkeypatch, folder, "holds 1 thing that is not a picture", base=base)
    assert "(notes.txt)" in message and "keep only" in message
    (folder / "more.png").mkdir()  # a folder named like a picture is named a folder
    message = _expect_error(tmp_path, monkeypatch, folder, "holds 2 things that are not pictures", base=base)
    assert "(more.png/, notes.txt)" in message
    (folder / "more.png").rmdir()
    (folder / "notes.txt").unlink()
    (folder / "broken.png").write_text("not a picture")
    _expect_error(tmp_path, monkeypatch, folder, "cannot be read as a picture", base=base)


def test_mismatched_sizes_and_too_few_pictures(tmp_path, monkeypatch, base):
    images = subject.make_instance_images(4)
    images[2] = images[2].resize((96, 96))
    message = _expect_error(tmp_path, monkeypatch, images, "differ in size", base=base)
    assert "96x96" in message and "resize" in message
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(2), "only 2", base=base)
    assert "needs 3 or more pictures (3–5 is typical)" in message and "add more" in message


@pytest.mark.parametrize("instance, got", [
    (5, "int 5"),  # not a folder, not a list
    (None, "NoneType None"),
    (["a.png", "b.png", "c.png"], "str 'a.png'"),  # file names, not opened pictures
    (subject.make_instance_images(3)[:2] + [np.zeros((64, 64, 3), np.uint8)], "ndarray"),
])
def test_instance_images_that_are_no_pictures_say_what_to_give(tmp_path, monkeypatch, base,
                                                               instance, got):
    message = _expect_error(tmp_path, monkeypatch, instance,
                            "^instance images must be a folder or a list of PIL images, got ",
                            base=base)
    assert got in message
    assert message.endswith("give the folder's path, or a list of pictures opened with "
                            "PIL.Image.open")


def test_an_instance_path_to_a_file_asks_for_its_folder(tmp_path, monkeypatch, base, instance_dir):
    picture = sorted(instance_dir.iterdir())[0]
    message = _expect_error(tmp_path, monkeypatch, str(picture), "is a file, not a folder",
                            base=base)
    assert message.startswith(f"instance folder {picture} ") and "give the folder" in message


def test_more_than_five_pictures_are_accepted(tmp_path):
    """3 is the least; DreamBooth users often give 5-20 pictures, and every one is used."""
    subject.save_instance_images(tmp_path / "many", n=12)
    images, names = db.load_instance_images(tmp_path / "many")
    assert len(images) == len(names) == 12
    assert len(db.load_instance_images(subject.make_instance_images(20))[0]) == 20
    assert len(db.load_instance_images(subject.make_instance_images(3))[0]) == 3


@pytest.mark.parametrize("token, problem", [
    ("dog", "common English word"),  # a word the model already knows
    ("red", "common English word"),  # one of the mini world's own words
    ("xqzvw", "split by the tokenizer into 4 pieces"),
    ("pikachu", "token 28107 of CLIP's vocabulary"),  # one piece, but a frequent one
    ("two words", "^rare token 'two words' must be one word: "),
    (" ", "^rare token ' ' must be one word: "),
    ("", "^rare token '' must be one word: "),
    # the tokenizer drops the space that lets " dog" past the list of common words
    (" dog", "^rare token ' dog' reads as the common word 'dog' to the tokenizer: "),
])
def test_rare_token_must_be_rare_and_one_token(tmp_path, monkeypatch, base, token, problem):
    images = subject.make_instance_images(4)
    message = _expect_error(tmp_path, monkeypatch, images, problem, base=base, token=token,
                            instance_prompt=f"a {token} circle")
    assert '"sks"' in message


def test_prompts_must_carry_the_token(tmp_path, monkeypatch, base):
    images = subject.make_instance_images(4)
    _expect_error(tmp_path, monkeypatch, images, "lacks the rare token", base=base,
                  instance_prompt="a circle")
    _expect_error(tmp_path, monkeypatch, images, "class prompt .* contains", base=base,
                  class_prompt="a sks circle")
    _expect_error(tmp_path, monkeypatch, images, "needs a class_prompt", base=base, class_prompt=None)


@pytest.mark.parametrize("class_prompt, shown", [
    ("", None), ("   ", "'   '"), (["a red circle", " \t"], "' \\t'"),
])
def test_an_empty_class_prompt_is_refused_before_any_picture_is_drawn(tmp_path, monkeypatch, base,
                                                                      class_prompt, shown):
    """Prior preservation draws its class pictures from the class prompt: an empty or blank
    one would have the base model draw 100 pictures of nothing in particular."""
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3), "class_prompt",
                            base=base, class_prompt=class_prompt)
    if shown is None:  # "" reads as no class prompt at all
        assert message.startswith("prior preservation needs a class_prompt")
    else:
        assert message == (f"class_prompt {shown} is empty: give the class of the subject "
                           'without the rare token (e.g. "a dog"), or pass prior_preservation=False')


@pytest.mark.parametrize("prompts, got", [
    (["a sks circle"] * 2, "got 2"),  # fewer than the 3 pictures
    (["a sks circle"] * 4, "got 4"),  # more
    (["a sks circle", None, "a sks circle"], "got 3, not all of them text"),  # one per picture
    (None, "got 0"),
])
def test_instance_prompts_must_be_one_or_one_per_picture(tmp_path, monkeypatch, base, prompts, got):
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3),
                            r"instance_prompt: give one prompt for all the pictures, or one "
                            r"prompt per picture \(3 pictures\)", base=base, instance_prompt=prompts)
    assert message.endswith(got)


_OPTION_NAMES = {"steps": "steps (--steps)", "seed": "seed (--seed)", "lr": "lr (--lr)"}


@pytest.mark.parametrize("setting, value, problem", [
    *[(name, value, f"must be at least {least}, got {value}") for name, value, least in [
        ("steps", 0, 1), ("steps", -5, 1), ("batch_size", 0, 1), ("rank", 0, 1),
        ("num_class_images", 0, 1), ("save_every", 0, 1), ("validate_every", -1, 0),
        ("seed", -1, 0)]],
    # steps=400.0 used to pass the checks and fail in range() after the model had loaded and
    # the class pictures were drawn; a string rate failed as a bare TypeError
    *[(name, value, f"must be {kind}, got {value!r}") for name, value, kind in [
        ("steps", 400.0, "a whole number"), ("batch_size", "4", "a whole number"),
        ("save_every", True, "a whole number"), ("lr", "1e-4", "a number"),
        ("prior_loss_weight", None, "a number")]],
])
def test_bad_counts_and_numbers_are_refused_before_any_model_loads(tmp_path, monkeypatch, base,
                                                                   setting, value, problem):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(db, "load_tokenizer", no_model)
    monkeypatch.setattr(db, "load_components", no_model)
    with pytest.raises(db.DreamBoothError) as info:
        db.train_dreambooth(subject.make_instance_images(3), "a sks circle", "a red circle",
                            tmp_path / "run", base=base, **{setting: value})
    name = _OPTION_NAMES.get(setting, setting)  # its option, where it has one
    assert str(info.value) == f"{name} {problem}"
    assert not (tmp_path / "run").exists()


def test_numpy_numbers_are_taken_as_the_numbers_they_are(tmp_path, base, instance_dir):
    """np.int64 counts pass the checks; they used to fail writing the run's JSON record, after
    the base model's files had been fetched."""
    settings = {k: np.int64(v) for k, v in FAST.items()} | {"lr": np.float32(1e-2)}
    out = tmp_path / "run"
    assert db.train_dreambooth(instance_dir, subject.instance_prompts(4), None, out, base=base,
                               prior_preservation=False, **settings) == out
    record = db.read_record(out)
    assert record["done_step"] == record["steps"] == 2 and record["settings"]["lr"] == pytest.approx(1e-2)


@pytest.mark.skipif(os.name != "posix", reason="run folders are locked on POSIX only")
def test_a_run_folder_another_process_trains_is_one_line(tmp_path, base, instance_dir, hold_run_folder):
    """A second DreamBooth run in a folder that another process is training (the same cell in
    two notebooks) stops with one line before it writes there; the finished call unlocks it."""
    out = tmp_path / "run"
    child = hold_run_folder(out)
    args = (instance_dir, subject.instance_prompts(4), None, out)
    settings = FAST | {"base": base, "prior_preservation": False, "lr": 1e-2}
    with pytest.raises(db.DreamBoothError, match=rf"^{re.escape(str(out))} is being trained by "
                       rf"another process \(pid {child.pid}\): wait for it to finish, or give "
                       "another --out$"):
        db.train_dreambooth(*args, **settings)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no record, no weights
    child.stdin.close()
    assert child.wait() == 0
    assert db.train_dreambooth(*args, **settings) == out
    child = hold_run_folder(out)
    child.stdin.close()
    assert child.wait() == 0


def test_no_class_pictures_are_needed_without_prior_preservation(tmp_path, monkeypatch, base):
    """``num_class_images=0`` is refused only when prior preservation would draw them."""
    class Reached(Exception):
        pass

    def reached(base):
        raise Reached

    monkeypatch.setattr(db, "load_tokenizer", reached)
    with pytest.raises(Reached):  # past every check of the settings
        db.train_dreambooth(subject.make_instance_images(3), "a sks circle", out=tmp_path / "run",
                            base=base, prior_preservation=False, num_class_images=0)


def test_a_bad_base_model_is_one_line(tmp_path, monkeypatch, base):
    """A mistyped --base, a folder that is no pipeline, or an id that cannot be loaded:
    one line saying what to give instead, not a traceback from transformers."""
    images = subject.make_instance_images(3)
    message = _expect_error(tmp_path, monkeypatch, images, "neither a folder nor a Hub id",
                            base=str(tmp_path / "mistyped" / "model"))
    assert "model_index.json" in message
    (tmp_path / "photos").mkdir()
    _expect_error(tmp_path, monkeypatch, images, "without a tokenizer folder", base=tmp_path / "photos")
    (tmp_path / "no_vocab" / "tokenizer").mkdir(parents=True)  # transformers builds an empty one
    _expect_error(tmp_path, monkeypatch, images, "has no tokenizer files", base=tmp_path / "no_vocab")

    import huggingface_hub
    from transformers import CLIPTokenizer

    from sdcourse import models

    def unknown(*args, **kwargs):
        raise OSError("someone/no-such-model is not a valid model identifier\ndetails")

    # the Hub answers and serves the id (check_hub_base passes), and loading it still fails
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setattr(huggingface_hub, "file_exists", lambda repo, name: True)
    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", unknown)
    message = _expect_error(tmp_path, monkeypatch, images, "could not load base model "
                            "someone/no-such-model .*not a valid model identifier", base="someone/no-such-model")
    assert "details" not in message and message.endswith("or give a local diffusers folder")


def test_the_unet_learns_what_its_checkpoint_predicts(tmp_path, monkeypatch, base):
    """The target is the noise for epsilon checkpoints (SD 1.x, the mini model) and the
    velocity for v-prediction ones (SD 2.x at 768 px); other kinds are refused in one line."""
    from diffusers import DDPMScheduler

    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    epsilon = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    assert epsilon.config.prediction_type == "epsilon"
    assert db.check_prediction_type(base) == "epsilon"
    assert torch.equal(db.training_target(epsilon, latents, noise, t), noise)
    velocity = DDPMScheduler.from_config(epsilon.config, prediction_type="v_prediction")
    alpha_bar = velocity.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    assert torch.allclose(db.training_target(velocity, latents, noise, t), expected, atol=1e-6)

    folder = tmp_path / "sample_base"
    shutil.copytree(base, folder)
    DDPMScheduler.from_config(epsilon.config, prediction_type="sample").save_pretrained(folder / "scheduler")
    _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3),
                  "predicts 'sample': the trainer trains UNets that predict epsilon or v_prediction",
                  base=folder)


@pytest.mark.parametrize("setting, value, problem", [
    ("lr", 0.0, r"^lr \(--lr\) must be greater than 0"),
    ("lr", -1e-4, r"^lr \(--lr\) must be greater than 0"),
    ("text_encoder_lr", 0.0, "^text_encoder_lr must be greater than 0"),
    ("lr", float("nan"), r"^lr \(--lr\) must be greater than 0"),
    ("lr", float("inf"), r"^lr \(--lr\) must be greater than 0 and finite, got inf"),
    ("prior_loss_weight", -0.5, "prior_loss_weight must be at least 0"),
    ("prior_loss_weight", float("inf"), "prior_loss_weight must be at least 0 and finite, got inf"),
])
def test_rates_and_weights_must_make_sense(tmp_path, monkeypatch, base, setting, value, problem):
    def no_tokenizer(base):
        raise AssertionError("the base model was loaded before the settings were checked")

    monkeypatch.setattr(db, "load_tokenizer", no_tokenizer)
    _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3), problem, base=base,
                  train_text_encoder=True, **{setting: value})


def test_base_weights_load_as_safetensors_only(tmp_path, base):
    """A base model whose UNet is a pickle (.bin) is not loaded: safetensors only."""
    from diffusers import UNet2DConditionModel

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for part in base.iterdir():
        if part.name != "unet":
            (pickled / part.name).symlink_to(part)
    UNet2DConditionModel.from_pretrained(base / "unet").save_pretrained(pickled / "unet",
                                                                        safe_serialization=False)
    assert not list((pickled / "unet").glob("*.safetensors"))
    with pytest.raises(OSError, match="safetensors"):
        db.load_components(pickled)
    assert db.load_components(base)["unet"].config.sample_size == 8


def _copy_base(base, folder: Path, replace: str | None = None) -> Path:
    """A base model folder of links to ``base``'s parts, but for ``replace`` (left out: the
    test makes its own)."""
    folder.mkdir()
    for part in base.iterdir():
        if part.name != replace:
            (folder / part.name).symlink_to(part)
    return folder


@pytest.mark.parametrize("break_it, lacks", [
    ("bin_unet", r"lacks unet weights as diffusion_pytorch_model\.safetensors \(only pickled \.bin files\)"),
    ("no_scheduler", r"lacks scheduler/:"),
    ("no_index", r"lacks model_index\.json:"),
    ("fp16_text_encoder", r"lacks text_encoder weights as model\.safetensors \(only fp16 ones, "
                          r"which are read on a GPU\)"),
    ("no_vae_config", r"lacks vae/config\.json:"),
])
def test_an_incomplete_base_folder_is_refused_before_out_is_made(tmp_path, monkeypatch, base,
                                                                 break_it, lacks):
    """A base folder the trainer could not load (weights only as pickles, a part missing) is
    one line naming the folder and what it lacks, before the run's folder is made: not
    diffusers' "Error no file named ..." once dreambooth.json is written."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # full-precision files read
    part = {"bin_unet": "unet", "no_scheduler": "scheduler", "no_index": "model_index.json",
            "fp16_text_encoder": "text_encoder", "no_vae_config": "vae"}[break_it]
    folder = _copy_base(base, tmp_path / "broken", replace=part)
    if break_it == "bin_unet":
        UNet2DConditionModel.from_pretrained(base / "unet").save_pretrained(folder / "unet",
                                                                            safe_serialization=False)
    elif break_it == "fp16_text_encoder":
        CLIPTextModel.from_pretrained(base / "text_encoder").half().save_pretrained(
            folder / "text_encoder", variant="fp16")
        assert [p.name for p in (folder / "text_encoder").glob("*.safetensors")] == ["model.fp16.safetensors"]
    elif break_it == "no_vae_config":
        (folder / "vae").mkdir()
        (folder / "vae" / "diffusion_pytorch_model.safetensors").symlink_to(
            base / "vae" / "diffusion_pytorch_model.safetensors")
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3), lacks,
                            base=folder)
    assert message.startswith(f"base model {folder} lacks ")
    assert message.endswith("give a complete diffusers Stable Diffusion folder with safetensors "
                            "weights (as pipe.save_pretrained(folder) writes it), or a Hub id")
    assert not (tmp_path / "run").exists()


def test_an_unreadable_base_folder_is_one_line(tmp_path, monkeypatch, base):
    """A part of the base folder that cannot be listed (permissions): one line naming the
    folder and the cause, before out is made. Faked: as root, chmod would not stop the read."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    listdir = Path.iterdir

    def iterdir(self):
        if self == Path(base) / "unet":
            raise PermissionError(13, "Permission denied", str(self))
        return listdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3),
                            "cannot be read", base=base)
    assert message == (f"base model {base} cannot be read (Permission denied): check its "
                       "permissions, or give another base model")
    assert not (tmp_path / "run").exists()


def test_fp16_weights_count_where_they_are_read(tmp_path, base):
    """On a GPU the trainer reads a checkpoint's fp16 files: a folder with only those is whole
    there, and lacks its weights on a CPU, which reads the full-precision ones."""
    from diffusers import UNet2DConditionModel

    folder = _copy_base(base, tmp_path / "fp16", replace="unet")
    UNet2DConditionModel.from_pretrained(base / "unet").half().save_pretrained(folder / "unet",
                                                                               variant="fp16")
    db.check_base_folder(folder, fp16_files=True)
    with pytest.raises(db.DreamBoothError, match="lacks unet weights .*only fp16 ones"):
        db.check_base_folder(folder)
    db.check_base_folder(base)  # full-precision files serve both
    db.check_base_folder(base, fp16_files=True)


def test_an_unreadable_scheduler_config_is_one_line(tmp_path, monkeypatch, base):
    """A scheduler config that is no JSON: diffusers' OSError becomes a DreamBoothError (which
    the command line prints as one line), before out is made."""
    folder = _copy_base(base, tmp_path / "bad_scheduler", replace="scheduler")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text("{cut short")
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3),
                            "could not read the scheduler config of base model", base=folder)
    assert message.endswith("give a complete diffusers Stable Diffusion folder, or a Hub id")


@pytest.mark.parametrize("channels, kind", [(9, "an inpainting"), (5, "a depth-to-image")])
def test_a_base_of_another_task_is_refused_before_out_is_made(tmp_path, monkeypatch, base,
                                                               channels, kind):
    """An inpainting or depth UNet (9 or 5 input channels) once drew the class pictures, then
    failed on its first training step with a shape error; its config says so first."""
    import json

    folder = _copy_base(base, tmp_path / f"unet{channels}", replace="unet")
    (folder / "unet").mkdir()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").symlink_to(
        base / "unet" / "diffusion_pytorch_model.safetensors")
    config = json.loads((base / "unet" / "config.json").read_text()) | {"in_channels": channels}
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3),
                            "input channels", base=folder)
    assert message == (f"base model {folder} is {kind} checkpoint (its UNet takes {channels} input "
                       "channels, text2img needs 4): give a checkpoint made for text2img, or "
                       "leave base (--base) out for the mini model")
    assert not (tmp_path / "run").exists()


class _Stop(Exception):
    """Raised by a stand-in for the loading of the base model's weights: the test has seen
    what it wanted."""


def test_damaged_base_weights_are_one_line_and_leave_no_run_behind(tmp_path, base):
    """Weights cut short (an interrupted copy) fail to load: one line naming the base, and no
    dreambooth.json that would make the corrected rerun a run "with other settings"."""
    folder = _copy_base(base, tmp_path / "cut", replace="unet")
    (folder / "unet").mkdir()
    (folder / "unet" / "config.json").symlink_to(base / "unet" / "config.json")
    whole = (base / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(db.DreamBoothError) as info:
        db.train_dreambooth(subject.make_instance_images(3), "a sks circle", out=tmp_path / "run",
                            base=folder, prior_preservation=False, **FAST)
    message = str(info.value)
    assert message.startswith(f"could not load base model {folder} (") and "\n" not in message
    assert message.endswith("): give a complete diffusers Stable Diffusion folder, or a Hub id")
    assert not (tmp_path / "run" / "dreambooth.json").exists()


def test_base_mini_is_the_mini_model_and_real_asks_for_an_id(tmp_path, monkeypatch):
    """`--base mini` and `--base real` are the course's own words (as `--model` takes them):
    mini is the default model, not a Hub id to download; real names no single checkpoint."""
    from sdcourse.models import mini_model_path

    loaded = []

    def stop(files, **kwargs):
        loaded.append(files)
        raise _Stop

    monkeypatch.setattr(db, "load_components", stop)
    with pytest.raises(_Stop):
        db.train_dreambooth(subject.make_instance_images(3), "a sks circle", out=tmp_path / "run",
                            base=" Mini", prior_preservation=False, **FAST)
    assert loaded == [str(mini_model_path("text2img"))]
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3),
                            "base model 'real'", base="real")
    assert message.endswith("or leave base (--base) out for the mini model")


def test_folders_that_cannot_be_written_are_refused_before_any_model_loads(tmp_path, monkeypatch,
                                                                          base):
    """The class pictures' folder (and the run's, given as a Python argument, which the command
    line checks itself) must be writable before the base model draws for a minute; the class
    folder must not be the current folder, which would be swapped out as a whole."""
    (tmp_path / "afile").write_text("notes")
    images = subject.make_instance_images(3)
    message = _expect_error(tmp_path, monkeypatch, images, "class folder", base=base,
                            class_dir=tmp_path / "afile" / "class")
    assert message == (f"class folder (class_dir / --class-dir) {tmp_path / 'afile' / 'class'}: a "
                       f"file, not a folder ({tmp_path / 'afile'} is): give a folder you can write to")
    message = _expect_error(tmp_path, monkeypatch, images, "out folder", base=base,
                            out=tmp_path / "afile" / "run")
    assert message == (f"out folder (--out) {tmp_path / 'afile' / 'run'}: a file, not a folder "
                       f"({tmp_path / 'afile'} is): give a folder you can write to")
    monkeypatch.chdir(tmp_path)
    for here in (".", str(tmp_path), ".."):
        _expect_error(tmp_path, monkeypatch, images, "is the current folder or holds it",
                      base=base, class_dir=here)
    assert (tmp_path / "afile").read_text() == "notes"


def test_cli_reports_an_incomplete_base_in_one_line(tmp_path, capsys, base, instance_dir):
    """`sdcourse train dreambooth --base` a folder without a scheduler: one line, exit 2."""
    from sdcourse.cli import main

    folder = _copy_base(base, tmp_path / "no_scheduler", replace="scheduler")
    status = main(["train", "dreambooth", "--instance-dir", str(instance_dir), "--instance-prompt",
                   "a sks circle", "--no-prior", "--base", str(folder), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err == (f"sdcourse: error: base model {folder} lacks scheduler/: give a "
                                   "complete diffusers Stable Diffusion folder with safetensors "
                                   "weights (as pipe.save_pretrained(folder) writes it), or a Hub id")
    assert not (tmp_path / "run").exists()


def test_frozen_parts_are_half_precision_on_cuda_only():
    """On CUDA the VAE and a frozen text encoder are held in float16 (fp16 mixed precision
    computes in it anyway; a 16 GB GPU needs the memory); elsewhere float32, as ever."""
    assert db.frozen_dtype("cuda") == db.frozen_dtype(torch.device("cuda", 1)) == torch.float16
    assert db.frozen_dtype("cpu") == db.frozen_dtype(torch.device("cpu")) == torch.float32
    assert db.frozen_dtype("mps") == torch.float32  # the trainer runs on cuda or cpu only


def test_the_vae_loads_in_the_frozen_precision(base):
    parts = db.load_components(base, vae_dtype=torch.float16)
    assert parts["vae"].dtype == torch.float16
    assert parts["unet"].dtype == parts["text_encoder"].dtype == torch.float32  # what may learn
    assert db.load_components(base)["vae"].dtype == torch.float32


def test_on_a_gpu_the_weights_come_from_the_fp16_files_the_pipeline_used(tmp_path, base):
    """With ``fp16_files`` (on CUDA) a checkpoint's fp16 files are read, not its full ones (no
    second download); a base without them loads its full files; what learns is float32."""
    from diffusers import StableDiffusionPipeline

    both = tmp_path / "both"
    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.save_pretrained(both)
    with torch.no_grad():  # the fp16 files hold other weights, to tell which ones were read
        for model in (pipe.unet, pipe.text_encoder, pipe.vae):
            for weight in model.parameters():
                weight.add_(0.5)
    pipe.to(torch.float16).save_pretrained(both, variant="fp16")
    parts = db.load_components(both, fp16_files=True)
    full = db.load_components(both)
    for name in ("unet", "text_encoder", "vae"):
        assert parts[name].dtype == torch.float32
        read, plain = next(parts[name].parameters()), next(full[name].parameters())
        assert torch.allclose(read, plain + 0.5, atol=1e-2), name
    no_fp16 = db.load_components(base, fp16_files=True)  # only full-precision files there
    assert torch.equal(next(no_fp16["unet"].parameters()), next(full["unet"].parameters()))


def test_pictures_are_encoded_in_batches_that_fit_the_picture_size(base):
    """64 small pictures at once, but 512 px ones a few at a time (64 of them would need tens
    of GB in the VAE's first layers); the latents do not depend on the batch."""
    vae = db.load_components(base)["vae"]
    seen = []
    encode = vae.encode
    vae.encode = lambda x: seen.append(len(x)) or encode(x)
    small = subject.make_instance_images(5)
    mean, std = db.encode_images(vae, small)
    assert seen == [5]
    big = [im.resize((512, 512)) for im in small]
    db.encode_images(vae, big)
    assert seen[1:] == [4, 1]
    mean2, std2 = db.encode_images(vae, small, batch=2)
    # the same numbers up to float rounding: how a batch is split over threads and kernels
    # changes the order of the sums (differences of ~2e-6 with 2 threads)
    assert torch.allclose(mean, mean2, atol=1e-4) and torch.allclose(std, std2, atol=1e-4)


# --------------------------------------------------------------------------- training runs


def test_a_run_on_the_default_mini_model_survives_a_reinstall(tmp_path, monkeypatch, base,
                                                              instance_dir):
    """A run on the course's own model (base left out) records it by its contents
    ("sdcourse:mini@<digest>"), not as the folder assembled from the package, whose name
    follows the files' timestamps: after a reinstall (new timestamps, a new folder, the old one
    cleaned away) the finished run is the same run, returned without training, and its LoRA
    still loads. A run recorded by the folder of the same package (before the digest) is
    rewritten to the digest; a mini model with other weights is another base."""
    from sdcourse import models

    package = tmp_path / "package" / "mini"  # the random-weight base stands in for the package
    shutil.copytree(base, package)
    monkeypatch.setattr(models, "MINI_DIR", package)
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path / "cache"))
    out, args = tmp_path / "run", (instance_dir, subject.instance_prompts(4), None)
    settings = FAST | {"prior_preservation": False, "lr": 1e-2}
    assert db.train_dreambooth(*args, out, **settings) == out
    recorded = db.read_record(out)["settings"]["base"]
    assert recorded == db.mini_base() and re.fullmatch(r"sdcourse:mini@[0-9a-f]{12}", recorded)
    first = models.mini_model_path("text2img")

    def no_training(*args, **kwargs):
        raise AssertionError("the finished run was trained again")

    monkeypatch.setattr(db, "_train", no_training)
    record = json.loads((out / "dreambooth.json").read_text())
    record["settings"]["base"] = str(first)  # as runs were recorded before the digest
    (out / "dreambooth.json").write_text(json.dumps(record))
    assert db.train_dreambooth(*args, out, **settings) == out
    assert db.read_record(out)["settings"]["base"] == recorded  # rewritten on disk

    for f in package.rglob("*"):  # a reinstall: the same files, newer timestamps
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    shutil.rmtree(first)
    assert models.mini_model_path("text2img") != first
    assert db.train_dreambooth(*args, out, **settings) == out
    pipe = db.load_dreambooth(out)
    assert any("lora" in name for name, _ in pipe.unet.named_parameters())

    (package / "unet" / "config.json").write_text(  # a new model published: another base
        (package / "unet" / "config.json").read_text() + " ")
    assert db.mini_base() != recorded
    with pytest.raises(db.DreamBoothError, match=rf"^the LoRA in {re.escape(str(out))} was trained "
                       rf"on another version of the mini model \({recorded}; now sdcourse:mini@"):
        db.load_dreambooth(out)
    with pytest.raises(db.DreamBoothError, match=rf"base \(--base\) was '{recorded}', now 'sdcourse:mini@"):
        db.train_dreambooth(*args, out, **settings)


def test_lora_run_loads_into_a_pipeline_and_changes_the_unet(tmp_path, base, instance_dir):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "lora"
    result = db.train_dreambooth(instance_dir, subject.instance_prompts(4), "a red circle", out,
                                 base=base, lr=1e-2, validation_prompts=["a sks circle"],
                                 **(FAST | {"validate_every": 2}))
    assert result == out and (out / db.LORA_FILE).stat().st_size < 2_000_000
    assert (out / "validation" / "step_00002.png").exists()
    assert len(list((out / "class_images").glob("*.png"))) == 2

    pipe = StableDiffusionPipeline.from_pretrained(base)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    hidden = torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = pipe.unet(x, t, encoder_hidden_states=hidden).sample
        pipe.load_lora_weights(out)
        after = pipe.unet(x, t, encoder_hidden_states=hidden).sample
    assert not torch.allclose(before, after, atol=1e-6)
    # a finished run is not trained again
    record = json.loads((out / "dreambooth.json").read_text())
    assert record["done_step"] == 2 and record["train_seconds"] > 0
    mtime = (out / db.LORA_FILE).stat().st_mtime_ns
    db.train_dreambooth(instance_dir, subject.instance_prompts(4), "a red circle", out,
                        base=base, lr=1e-2, **FAST)
    assert (out / db.LORA_FILE).stat().st_mtime_ns == mtime


def test_runs_share_class_pictures_through_class_dir(tmp_path, base):
    """Class pictures drawn once into ``class_dir`` are reused by the next run, not redrawn."""
    images, shared = subject.make_instance_images(3), tmp_path / "class"
    args = dict(instance_prompt="a sks circle", class_prompt="a red circle", base=base,
                class_dir=shared, **(FAST | {"steps": 1}))
    db.train_dreambooth(images, out=tmp_path / "one", **args)
    pictures = sorted(shared.glob("*.png"))
    assert len(pictures) == 2 and (shared / "prompts.json").exists()
    assert not (tmp_path / "one" / "class_images").exists()
    drawn = [p.stat().st_mtime_ns for p in pictures]
    db.train_dreambooth(images, out=tmp_path / "two", **args)
    assert [p.stat().st_mtime_ns for p in sorted(shared.glob("*.png"))] == drawn
    assert (tmp_path / "two" / db.LORA_FILE).exists()


def test_class_pictures_drawn_beforehand_are_reused_by_a_run_from_the_same_base(tmp_path, base,
                                                                                  monkeypatch):
    """As notebook 07 does: the pictures are drawn first with the base pipeline, then the run
    from that base finds them in ``class_dir`` (recorded as drawn by it) and does not redraw."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    shared = tmp_path / "class"
    db.generate_class_images(pipe, ["a red circle"] * 2, shared, seed=0, steps=1)
    assert json.loads((shared / "prompts.json").read_text())["base"] == str(base.resolve())
    drawn = [p.stat().st_mtime_ns for p in sorted(shared.glob("*.png"))]
    db.train_dreambooth(subject.make_instance_images(3), out=tmp_path / "run",
                        instance_prompt="a sks circle", class_prompt="a red circle", base=base,
                        class_dir=shared, **(FAST | {"steps": 1}))
    assert [p.stat().st_mtime_ns for p in sorted(shared.glob("*.png"))] == drawn
    # the same base spelled otherwise (a link to its folder, given relative): the same model
    (tmp_path / "link").symlink_to(base, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    db.train_dreambooth(subject.make_instance_images(3), out=tmp_path / "run2",
                        instance_prompt="a sks circle", class_prompt="a red circle",
                        base="link/", class_dir=shared, **(FAST | {"steps": 1}))
    assert [p.stat().st_mtime_ns for p in sorted(shared.glob("*.png"))] == drawn


def test_class_pictures_of_another_base_are_redrawn_not_reused(tmp_path, base):
    """A class folder shared by runs from two base models: each needs its own model's
    pictures (another model's would pull it towards a prior that is not its own), so the
    second base redraws them, and records itself."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    shared = tmp_path / "class"
    db.generate_class_images(pipe, ["a red circle"] * 2, shared, seed=0, steps=1,
                             base="someone/another-model")
    (shared / "0000.png").write_bytes(b"another model's picture")
    db.train_dreambooth(subject.make_instance_images(3), out=tmp_path / "run",
                        instance_prompt="a sks circle", class_prompt="a red circle", base=base,
                        class_dir=shared, **(FAST | {"steps": 1}))
    assert json.loads((shared / "prompts.json").read_text()) == {
        "prompts": ["a red circle"] * 2, "seed": 0, "base": str(base.resolve())}
    assert Image.open(shared / "0000.png").size == (64, 64)


def test_the_mini_pipeline_draws_as_the_mini_base(base):
    """The mini model's pipeline (its assembled folder) is recorded as ``mini_base()``, as a
    run with the default base records it; any other pipeline by its name or folder."""
    from diffusers import StableDiffusionPipeline

    from sdcourse.models import load_pipeline

    from sdcourse.models import mini_model_path

    mini = load_pipeline("text2img", model="mini", device="cpu", verbose=False)
    assert db.drawn_by(mini) == db.mini_base() == db.class_base(None)
    assert db.class_base(mini_model_path("text2img")) == db.mini_base()  # --base that folder
    assert db.drawn_by(StableDiffusionPipeline.from_pretrained(base)) == str(base.resolve())
    assert db.class_base("someone/a-model") == "someone/a-model"  # a Hub id as it is


def test_class_pictures_are_drawn_in_a_folder_of_this_process(tmp_path, base, monkeypatch):
    """Two runs drawing into the same ``class_dir`` at once (two notebooks, or an evaluation
    beside a notebook) each write into a temporary folder of their own process: this one
    neither deletes the other's nor leaves its own behind; the folder of a process that was
    killed while writing (and is gone) is removed."""
    from diffusers import StableDiffusionPipeline

    written, save = [], Image.Image.save

    def recording_save(image, fp, *args, **kwargs):
        written.append(Path(fp))
        return save(image, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", recording_save)
    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path / "class_images"
    other = tmp_path / f"class_images.tmp{os.getppid()}"  # a running process, half-way through
    other.mkdir()
    (other / "0000.png").write_bytes(b"being written")
    killed = tmp_path / "class_images.tmp999999999"  # a process killed half-way: no clean-up ran
    killed.mkdir()
    images = db.generate_class_images(pipe, ["a red circle", "a blue circle"], folder, seed=0,
                                      steps=2)
    assert len(images) == 2 and sorted(p.name for p in folder.glob("*.png")) == ["0000.png", "0001.png"]
    assert (other / "0000.png").read_bytes() == b"being written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_images", other.name]  # killed's gone
    assert {p.parent.name for p in written} == {f"class_images.tmp{os.getpid()}"}


def test_a_class_dir_of_other_files_is_refused_not_deleted(tmp_path, monkeypatch, base):
    """`--class-dir` pointed at the user's own photos: the trainer replaces class folders it
    wrote, so it refuses this one, before any model is loaded, and leaves it as it was."""
    from diffusers import StableDiffusionPipeline

    def no_model(*args, **kwargs):
        raise AssertionError("the base model was loaded before the class folder was checked")

    monkeypatch.setattr(db, "load_tokenizer", no_model)
    monkeypatch.setattr(db, "local_checkpoint", no_model)  # a Hub id's download: gigabytes
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"the user's own picture")
    images = subject.make_instance_images(3)
    message = _expect_error(tmp_path, monkeypatch, images, "did not write", base=base,
                            class_dir=photos)
    assert "holiday.jpg" in message and "empty or new folder" in message
    pipe = StableDiffusionPipeline.from_pretrained(base)
    with pytest.raises(db.DreamBoothError, match="did not write"):
        db.generate_class_images(pipe, ["a red circle"], photos, seed=0, steps=1)
    assert [p.name for p in photos.iterdir()] == ["holiday.jpg"]
    assert (photos / "holiday.jpg").read_bytes() == b"the user's own picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


@pytest.mark.parametrize("where", ["out is the instance folder", "out inside it",
                                   "class_dir inside it", "class_dir is out", "out inside class_dir"])
def test_the_runs_folders_keep_out_of_the_pictures_and_of_each_other(tmp_path, monkeypatch,
                                                                     base, where):
    """A run writing into the instance folder leaves files that the next run refuses as
    pictures; a class folder holding the run folder would take it along when its pictures are
    swapped in. Refused in one line before any model loads, nothing written."""
    def no_model(*args, **kwargs):
        raise AssertionError("the base model was loaded before the folders were checked")

    monkeypatch.setattr(db, "load_tokenizer", no_model)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(subject.make_instance_images(3)):
        image.save(photos / f"{i}.png")
    out, class_dir = {
        "out is the instance folder": (photos, None), "out inside it": (photos / "run", None),
        "class_dir inside it": (tmp_path / "run", photos / "classes"),
        "class_dir is out": (tmp_path / "run", tmp_path / "run"),
        "out inside class_dir": (tmp_path / "classes" / "run", tmp_path / "classes")}[where]
    match = "inside the instance folder" if "instance" in where or "inside it" in where else \
        "holds the run's out folder"
    message = _expect_error(tmp_path, monkeypatch, photos, match, base=base, out=out,
                            class_dir=class_dir)
    assert message.endswith("give a folder outside it") or message.endswith(
        "a folder of its own (default: out/class_images)")
    assert sorted(p.name for p in photos.iterdir()) == ["0.png", "1.png", "2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_class_pictures_interrupted_while_saved_leave_no_folder(tmp_path, monkeypatch, base):
    """Ctrl-C while the class pictures are written: no half folder stays behind (its name
    holds this process's id, so no later run would ever clean it up)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    saved, save = [], Image.Image.save

    def interrupted_save(image, fp, *args, **kwargs):
        if saved:
            raise KeyboardInterrupt
        saved.append(fp)
        return save(image, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        db.generate_class_images(pipe, ["a red circle"] * 2, tmp_path / "class_images", seed=0,
                                 steps=1)
    assert saved and list(tmp_path.iterdir()) == []


def test_a_class_dir_that_is_a_file_is_refused_before_any_model_loads(tmp_path, monkeypatch,
                                                                      base):
    def no_model(*args, **kwargs):
        raise AssertionError("the base model was loaded before the class folder was checked")

    monkeypatch.setattr(db, "load_tokenizer", no_model)
    monkeypatch.setattr(db, "local_checkpoint", no_model)
    (tmp_path / "class.png").write_bytes(b"the user's own picture")
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3),
                            f"^class folder {re.escape(str(tmp_path / 'class.png'))} is not a "
                            "folder: ", base=base, class_dir=tmp_path / "class.png")
    assert message.endswith("give an empty or new folder for the class pictures "
                            "(class_dir / --class-dir)")
    assert (tmp_path / "class.png").read_bytes() == b"the user's own picture"
    assert not (tmp_path / "run").exists()


def test_an_out_that_is_a_file_is_refused_before_any_model_loads(tmp_path, monkeypatch, base):
    def no_model(*args, **kwargs):
        raise AssertionError("the base model was loaded before the out folder was checked")

    monkeypatch.setattr(db, "load_tokenizer", no_model)
    monkeypatch.setattr(db, "local_checkpoint", no_model)
    (tmp_path / "run").write_text("notes")
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3),
                            f"out folder {tmp_path / 'run'} is a file", base=base)
    assert message.endswith("give a folder for the run (a new one, or the one an earlier call trained in)")
    assert (tmp_path / "run").read_text() == "notes"


def test_stale_class_pictures_are_replaced_by_a_swap(tmp_path, base):
    """The trainer's own pictures for other prompts are replaced: the new set is drawn beside
    them and swapped in, and no old or temporary folder stays behind."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path / "class_images"
    folder.mkdir()
    (folder / "0000.png").write_bytes(b"old")
    (folder / "prompts.json").write_text(json.dumps({"prompts": ["a blue square"], "seed": 0}))
    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    db.generate_class_images(pipe, ["a red circle", "a red circle"], folder, seed=0, steps=1)
    assert json.loads((folder / "prompts.json").read_text())["prompts"] == ["a red circle"] * 2
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png", "prompts.json"]
    assert Image.open(folder / "0000.png").size == (64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_images"]


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, base, monkeypatch, capsys):
    """Kill the run while it writes its 3rd checkpoint: the rerun continues from step 2, with
    the LoRA and optimizer state of step 2, and ends where an uninterrupted run ends."""
    out = tmp_path / "run"
    images = subject.make_instance_images(3)
    args = dict(instance_prompt="a sks circle", out=out, base=base, prior_preservation=False,
                train_text_encoder=True, **(FAST | {"steps": 4}))
    real_save = common.save_checkpoint

    def save_then_die(folder, step, *a, **kw):
        if step == 3:  # a kill in the middle of writing: half a checkpoint.tmp
            (folder / "checkpoint.tmp").mkdir()
            (folder / "checkpoint.tmp" / common.OPTIMIZER).write_bytes(b"half")
            raise KeyboardInterrupt
        return real_save(folder, step, *a, **kw)

    monkeypatch.setattr(common, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        db.train_dreambooth(images, **args)
    assert common.checkpoint_step(common.find_checkpoint(out)) == 2
    # half a run is nothing to load: one line saying so, not diffusers' missing-file error
    with pytest.raises(db.DreamBoothError, match=r"holds no finished DreamBooth run: train it first$"):
        db.load_dreambooth(out)
    monkeypatch.setattr(common, "save_checkpoint", real_save)
    common.append_log(out, 3, loss=9.0)  # as a run killed after logging step 3 leaves its log
    assert json.loads((out / "checkpoint" / "state.json").read_text())["kind"] == "dreambooth"
    # the learning rate decays over all 4 steps: the run cannot go on on another schedule
    before = _contents(out)
    with pytest.raises(db.DreamBoothError) as info:
        db.train_dreambooth(images, **(args | {"steps": 6}))
    assert str(info.value).startswith(f"{out} holds a DreamBooth run stopped at step 2 of 4: "
                                      "steps (--steps) was 4, now 6 (the learning rate decays")
    assert _contents(out) == before
    capsys.readouterr()

    db.train_dreambooth(images, **args)  # the same call again
    assert "resuming from step 2" in capsys.readouterr().out
    assert common.checkpoint_step(common.find_checkpoint(out)) == 4
    assert not list(out.glob("*.tmp")) and not (out / "checkpoint.old").exists()
    assert (out / db.LORA_FILE).exists()
    logged = [row.split(",")[0] for row in (out / "log.csv").read_text().splitlines()]
    assert logged == ["4"]  # step 3, trained again after the resume, is not there twice
    # the same weights as a run never killed: a resume that restarted the LoRA (or the
    # optimizer's moments, or the batches) from scratch would end elsewhere
    from safetensors.torch import load_file

    db.train_dreambooth(images, **(args | {"out": tmp_path / "whole"}))
    resumed, whole = load_file(out / db.LORA_FILE), load_file(tmp_path / "whole" / db.LORA_FILE)
    assert resumed.keys() == whole.keys() and any("text_encoder" in k for k in whole)
    differ = [k for k in whole if not torch.allclose(resumed[k], whole[k], atol=1e-6)]
    assert not differ, f"{len(differ)} of {len(whole)} LoRA tensors differ, e.g. {differ[:2]}"
    # another setting is another run: it is not mixed into this one, and the message says
    # which settings differ and how
    with pytest.raises(db.DreamBoothError) as info:
        db.train_dreambooth(images, **(args | {"rank": 4, "seed": 2}))
    assert str(info.value) == (
        f"{out} holds a DreamBooth run with other settings: rank was 16, now 4; seed (--seed) was "
        "0, now 2: to resume it, give the settings it was trained with; for a new run, give "
        "another out folder (--out), or delete this one to start over")
    # a full fine-tune asked of a LoRA run: said as the option to drop; the learning rate's
    # default follows the kind, and is said to
    with pytest.raises(db.DreamBoothError) as info:
        db.train_dreambooth(images, **(args | {"lora": False}))
    assert ("lora (False with --full) was True, now False (the run is a LoRA: drop --full); "
            "lr (--lr) was 0.003, now 0.0003 (each kind's default, unless given): ") in str(info.value)


def _checkpointing(model) -> bool:
    """Whether a diffusers or transformers model recomputes activations in the backward pass."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_gradient_checkpointing_saves_memory_not_results(tmp_path, base, monkeypatch):
    """With ``gradient_checkpointing`` the UNet, and the text encoder it trains, recompute their
    activations in the backward pass; the trained weights are those of a run without it."""
    images = subject.make_instance_images(3)
    args = dict(instance_prompt="a sks circle", class_prompt="a red circle", base=base,
                train_text_encoder=True, lr=1e-2, **FAST)
    checkpointed = []

    class Recording(db.TrainedWeights):  # sees the models as each checkpoint is saved
        def __init__(self, model):
            checkpointed.append(_checkpointing(model))
            super().__init__(model)

    monkeypatch.setattr(db, "TrainedWeights", Recording)
    db.train_dreambooth(images, out=tmp_path / "plain", **args)
    assert checkpointed == [False] * 4  # unet and text encoder, at steps 1 and 2
    checkpointed.clear()
    db.train_dreambooth(images, out=tmp_path / "gc", gradient_checkpointing=True, **args)
    assert checkpointed == [True] * 4

    from safetensors.torch import load_file

    plain, gc = (load_file(tmp_path / run / db.LORA_FILE) for run in ("plain", "gc"))
    assert plain.keys() == gc.keys() and any("text_encoder" in k for k in gc)
    assert all(torch.allclose(plain[k], gc[k], atol=1e-6) for k in plain)
    record = json.loads((tmp_path / "gc" / "dreambooth.json").read_text())
    assert record["settings"]["gradient_checkpointing"] is True
    # like every setting, it belongs to the run: the folder refuses the other value
    with pytest.raises(db.DreamBoothError, match="other settings"):
        db.train_dreambooth(images, out=tmp_path / "gc", **args)


def test_a_base_folder_is_recorded_resolved_so_its_spellings_resume_and_load_anywhere(
        tmp_path, base, monkeypatch):
    """`--base models/sd` from the repository root, then `models/sd/`, or load_dreambooth from
    notebooks/: one model. Recorded as typed, the second spelling was 'other settings' and the
    LoRA's base was looked up relative to the new working folder (as a Hub id)."""
    shutil.copytree(base, tmp_path / "models" / "sd")
    monkeypatch.chdir(tmp_path)
    images = subject.make_instance_images(3)
    args = dict(instance_prompt="a sks circle", prior_preservation=False, **(FAST | {"steps": 1}))
    out = db.train_dreambooth(images, out=tmp_path / "run", base="models/sd", **args)
    assert db.read_record(tmp_path / "run")["settings"]["base"] == str((tmp_path / "models" / "sd").resolve())

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(db, "_train", no_training)
    assert db.train_dreambooth(images, out=tmp_path / "run", base="./models/sd/", **args) == out
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert db.load_dreambooth(tmp_path / "run").unet.config.sample_size == 8


def test_a_finished_run_asked_for_fewer_steps_is_refused_not_returned(tmp_path, base):
    """A 2-step run asked again for 1 step (a learner shortening a notebook's run) returned the
    2-step weights without a word; it is refused, saying how to get either run."""
    images = subject.make_instance_images(3)
    args = dict(instance_prompt="a sks circle", base=base, prior_preservation=False, **FAST)
    out = db.train_dreambooth(images, out=tmp_path / "run", **(args | {"steps": 2}))
    with pytest.raises(db.DreamBoothError, match=r"finished at step 2, more than steps \(--steps\) 1: "
                       r"a shorter run is another run; give another out folder"):
        db.train_dreambooth(images, out=tmp_path / "run", **(args | {"steps": 1}))
    assert db.train_dreambooth(images, out=tmp_path / "run", **(args | {"steps": 2})) == out


def test_runs_recorded_before_a_setting_existed_still_resume(tmp_path, base):
    """A dreambooth.json written before ``gradient_checkpointing`` existed holds no such key:
    it reads as the default, so the finished run is returned at once, not refused."""
    images = subject.make_instance_images(3)
    out = tmp_path / "old"
    args = dict(instance_prompt="a sks circle", base=base, prior_preservation=False,
                **(FAST | {"steps": 1}))
    db.train_dreambooth(images, out=out, **args)
    record = json.loads((out / "dreambooth.json").read_text())
    del record["settings"]["gradient_checkpointing"]
    (out / "dreambooth.json").write_text(json.dumps(record))
    mtime = (out / db.LORA_FILE).stat().st_mtime_ns
    assert db.train_dreambooth(images, out=out, **args) == out
    assert (out / db.LORA_FILE).stat().st_mtime_ns == mtime  # not trained again
    with pytest.raises(db.DreamBoothError, match="other settings"):
        db.train_dreambooth(images, out=out, gradient_checkpointing=True, **args)


@pytest.mark.parametrize("record", ["{cut short", "[]", '{"done_step": 3}'])
def test_a_damaged_run_record_is_one_line(tmp_path, monkeypatch, base, record):
    """A dreambooth.json that does not parse or lacks the settings: training and loading
    both say which file and what to do, before any model loads."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "dreambooth.json").write_text(record)
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3),
                            "dreambooth.json is damaged", base=base, prior_preservation=False)
    assert message.endswith(f"delete {out} to start over, or give another out folder")
    with pytest.raises(db.DreamBoothError, match="dreambooth.json is damaged"):
        db.load_dreambooth(out)
    assert (out / "dreambooth.json").read_text() == record


@pytest.mark.parametrize("recorded", [{"step": 1, "kind": "vae"}, {"step": 1}])
def test_a_folder_of_another_trainer_is_refused_before_any_model_loads(tmp_path, monkeypatch, base,
                                                                       recorded):
    """A VAE's run folder given as ``out``: one line saying whose run it is, before any model
    loads (not a missing trained.safetensors after it) and without writing dreambooth.json
    into the other run. A checkpoint from before the kind was recorded is known by its
    contents (a ``vae`` folder)."""
    out = tmp_path / "run"
    (out / "checkpoint" / "vae").mkdir(parents=True)
    (out / "checkpoint" / "state.json").write_text(json.dumps(recorded))
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3),
                            "holds a vae training run", base=base, prior_preservation=False)
    assert message == (f"{out} holds a vae training run, not dreambooth: choose another out folder "
                       "(--out) for dreambooth (training vae there resumes that run)")


def test_loading_a_folder_without_a_run_is_one_line(tmp_path):
    """``load_dreambooth`` on a folder that never trained (or on its ``pipeline`` path) says
    so in one line instead of failing inside diffusers."""
    for folder in (tmp_path / "nowhere", tmp_path, tmp_path / "pipeline"):
        with pytest.raises(db.DreamBoothError) as info:
            db.load_dreambooth(folder)
        assert str(info.value) == f"{folder} holds no finished DreamBooth run: train it first"


def test_full_finetune_writes_a_pipeline(tmp_path, base):
    from diffusers import StableDiffusionPipeline

    images = subject.make_instance_images(3)
    result = db.train_dreambooth(images, "a sks circle", "a red circle", tmp_path / "full",
                                 base=base, lora=False, **(FAST | {"steps": 1}))
    assert result == tmp_path / "full" / "pipeline"
    pipe = StableDiffusionPipeline.from_pretrained(result)
    base_unet = StableDiffusionPipeline.from_pretrained(base).unet
    assert any(not torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), base_unet.parameters()))
    assert db.load_dreambooth(tmp_path / "full").unet.config.sample_size == 8
    assert db.load_dreambooth(result).unet.config.sample_size == 8  # the returned path loads too
    assert db.load_dreambooth(result, dtype=torch.bfloat16).unet.dtype == torch.bfloat16


def test_a_diverging_run_stops_in_one_line_before_saving_nan(tmp_path, base):
    """A learning rate far too high makes the loss NaN within steps: the run stops there with
    what to do, instead of training to the end on NaN and saving NaN weights."""
    with pytest.raises(db.DreamBoothError, match=r"^the loss became nan at step \d+: training "
                       r"diverged at a learning rate of 1e\+30; give a lower one") as info:
        db.train_dreambooth(subject.make_instance_images(3), "a sks circle", None, tmp_path / "run",
                            base=base, lora=False, prior_preservation=False, lr=1e30,
                            **(FAST | {"steps": 5, "save_every": 1}))
    assert "\n" not in str(info.value)
    step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    checkpoint = tmp_path / "run" / "checkpoint"
    assert not checkpoint.exists() or common.checkpoint_step(checkpoint) < step  # finite weights only


def test_a_lora_run_loads_in_the_precision_asked_for(tmp_path, base, monkeypatch):
    """``load_dreambooth(out, dtype=...)``: the base model and the LoRA in that precision; in
    float16 the base model's fp16 files are asked for first, its full ones where it has none."""
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "lora"
    db.train_dreambooth(subject.make_instance_images(3), "a sks circle", out=out, base=base,
                        prior_preservation=False, **(FAST | {"steps": 1}))
    assert db.load_dreambooth(out).unet.dtype == torch.float32  # as saved
    pipe = db.load_dreambooth(out, dtype=torch.bfloat16)
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}  # LoRA included
    assert pipe.text_encoder.dtype == pipe.vae.dtype == torch.bfloat16

    asked = []
    load = StableDiffusionPipeline.from_pretrained.__func__
    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(
        lambda cls, *args, **kwargs: asked.append(kwargs.get("variant")) or load(cls, *args, **kwargs)))
    assert db.load_dreambooth(out, dtype=torch.float16).unet.dtype == torch.float16
    assert asked == ["fp16", None]  # the base folder has no fp16 files: its full ones, converted


def test_loading_on_a_device_this_machine_lacks_is_one_line_before_anything_loads(monkeypatch):
    """``load_dreambooth(out, "cuda")`` on a machine without a GPU: torch would accept the name
    until the loaded pipeline moved there; the device is checked first, before the run is read."""
    from diffusers import StableDiffusionPipeline

    from sdcourse import device

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the device was checked")

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", no_loading)
    monkeypatch.setattr(db, "read_record", no_loading)
    monkeypatch.setattr(device, "_available", lambda kind: kind == "cpu")
    with pytest.raises(RuntimeError, match=r"^device 'cuda' but PyTorch sees no cuda device on this "
                                           r"machine: use device=sdc.pick_device\(\) or 'cpu'$"):
        db.load_dreambooth("runs/anything", device="cuda")
    with pytest.raises(ValueError, match="'gpu' is not a device"):
        db.load_dreambooth("runs/anything", device="gpu")


def test_a_lora_whose_base_folder_is_gone_is_one_line(tmp_path, monkeypatch, base):
    """A LoRA loads onto the base model it was trained on: if that folder was moved or deleted
    (the mini model's folder is renamed when its files change), say so and what to do."""
    from sdcourse import models

    moved = _copy_base(base, tmp_path / "base")
    out = tmp_path / "lora"
    db.train_dreambooth(subject.make_instance_images(3), "a sks circle", out=out, base=moved,
                        prior_preservation=False, **(FAST | {"steps": 1}))
    assert db.load_dreambooth(out).unet.config.sample_size == 8
    shutil.rmtree(moved)
    with pytest.raises(db.DreamBoothError) as info:
        db.load_dreambooth(out)
    assert str(info.value) == (f"the LoRA in {out} was trained on base model {moved}, a folder that "
                               "no longer exists: put the base model back there, or train the run "
                               "again on one that exists")
    # a relative folder reads like a Hub id ("models/base"): diffusers' error, in one line
    record = json.loads((out / "dreambooth.json").read_text())
    record["settings"]["base"] = "gone/base"
    (out / "dreambooth.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(db.DreamBoothError, match=r"^could not load base model gone/base of the LoRA in "
                                                 r".*: check the folder or your network, or train the "
                                                 r"run again$") as info:
        db.load_dreambooth(out)
    assert "\n" not in str(info.value)


def test_text_encoder_gets_its_own_learning_rate(tmp_path, base):
    """With ``text_encoder_lr`` the encoder's weights follow their own peak rate; the schedule
    (a cosine to zero) scales both groups alike, and a resumed run keeps them."""
    images = subject.make_instance_images(3)
    out = tmp_path / "te"
    args = dict(instance_prompt="a sks circle", class_prompt="a red circle", out=out, base=base,
                lora=False, train_text_encoder=True, lr=1e-4, text_encoder_lr=1e-3)
    db.train_dreambooth(images, **(args | FAST | {"steps": 4, "save_every": 2}))
    state = common.read_optimizer(out / "checkpoint" / common.OPTIMIZER)
    unet_group, te_group = state["param_groups"]
    assert (unet_group["base_lr"], te_group["base_lr"]) == (1e-4, 1e-3)
    assert te_group["lr"] == pytest.approx(10 * unet_group["lr"]) and 0 < unet_group["lr"] < 1e-4
    # changing the rate is changing the run: the folder refuses it
    with pytest.raises(db.DreamBoothError, match="other settings"):
        db.train_dreambooth(images, **(args | FAST | {"text_encoder_lr": 2e-3}))


@pytest.mark.parametrize("words, lora, problem", [
    ("white black", True, "a LoRA file does not carry"),
    ("white xqzvw", False, "split by the tokenizer"),
    ("sks", False, "is the rare token itself"),
])
def test_token_init_words_are_checked_first(tmp_path, monkeypatch, base, words, lora, problem):
    _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3), problem, base=base,
                  lora=lora, token_init=words)


def test_token_init_starts_the_token_at_the_mean_of_the_words(tmp_path, base):
    """The rare token's embedding starts as the mean of the given words' (textual inversion's
    initializer); the encoder is frozen here, so the saved row is where it started."""
    from transformers import CLIPTextModel, CLIPTokenizer

    images = subject.make_instance_images(3)
    result = db.train_dreambooth(images, "a sks circle", "a red circle", tmp_path / "init",
                                 base=base, lora=False, token_init="white black",
                                 **(FAST | {"steps": 1}))
    tok = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    before = CLIPTextModel.from_pretrained(base, subfolder="text_encoder").get_input_embeddings().weight
    after = CLIPTextModel.from_pretrained(result, subfolder="text_encoder").get_input_embeddings().weight
    sks, white, black = tok.convert_tokens_to_ids(["sks</w>", "white</w>", "black</w>"])
    assert torch.allclose(after[sks], (before[white] + before[black]) / 2)
    assert not torch.allclose(after[sks], before[sks])
    assert torch.equal(after[white], before[white])  # the words themselves are untouched
    record = json.loads((tmp_path / "init" / "dreambooth.json").read_text())
    assert record["settings"]["token_init"] == ["white", "black"]


# ------------------------------------------------------------------------------------ CLI


def test_cli_reports_bad_inputs_in_one_line(tmp_path, capsys):
    from sdcourse.cli import main

    (tmp_path / "empty").mkdir()
    status = main(["train", "dreambooth", "--instance-dir", str(tmp_path / "empty"),
                   "--instance-prompt", "a sks circle", "--class-prompt", "a circle",
                   "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("sdcourse: error: instance folder") and "empty" in err
    assert len(err.splitlines()) == 1
    assert main(["train", "dreambooth", "--instance-prompt", "a sks circle"]) == 2
    assert "needs --instance-dir" in capsys.readouterr().err
    assert main(["train", "vae", "--instance-dir", str(tmp_path)]) == 2
    assert "only for `sdcourse train dreambooth`" in capsys.readouterr().err


def test_cli_messages_name_the_options_typed(tmp_path, monkeypatch, capsys, instance_dir):
    """Messages name the settings as both callers know them: a command-line user reads the
    option (--lr, --full), not only the Python argument."""
    from sdcourse.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(db, "load_components", no_model)
    start = ["train", "dreambooth", "--instance-dir", str(instance_dir), "--instance-prompt",
             "a sks circle", "--out", str(tmp_path / "run")]
    cases = [
        (["--no-prior", "--lr", "-1"], "lr (--lr) must be greater than 0 and finite, got -1.0: give a "
         "learning rate such as 1e-4 (or leave it out for the default)"),
        (["--no-prior", "--token-init", "white black"], "--token-init changes the text encoder's "
         "embedding of the rare token, which a LoRA file does not carry: use it with a full "
         "fine-tune (lora=False in Python, --full on the command line)"),
        (["--class-prompt", " "], "--class-prompt ' ' is empty: give the class of the subject "
         'without the rare token (e.g. "a dog"), or pass --no-prior'),
    ]
    for extra, message in cases:
        assert main(start + extra) == 2
        assert capsys.readouterr().err == f"sdcourse: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_evaluation_trains_with_the_given_seed_and_keeps_runs_apart(tmp_path, monkeypatch):
    """`evaluate dreambooth --train-seed N`: both training runs get seed N, in folders of their
    own (a run of another seed is never reused), and the result says which seed it measured.
    Each pipeline's measures land under its own keys: with prior preservation unsuffixed, then
    ``_no_prior``, then ``_base`` for the untouched model."""
    import diffusers

    from sdcourse.train import dreambooth as trainer

    seen, runs = [], {}

    def train(images, prompts, class_prompts, out, **kw):
        assert kw["cpu"] is True  # measured on the CPU, as the recorded numbers were
        seen.append((kw["seed"], kw["prior_preservation"], out))
        runs[out] = "prior" if kw["prior_preservation"] else "no_prior"
        seconds = {"prior": 11, "no_prior": 22}[runs[out]]
        out.mkdir(parents=True, exist_ok=True)  # (a finished run, asked again, is reused)
        (out / "dreambooth.json").write_text(json.dumps({"train_seconds": seconds,
                                                         "train_cpu_seconds": seconds + 1}))
        return out

    class Pipe:
        def __init__(self, name):
            self.name = name

        def set_progress_bar_config(self, **kw):
            pass

    measured = {"prior": (0.9, 0.8), "no_prior": (0.7, 0.1), "base": (0.0, 0.95)}
    calls = []

    def measure(pipe, n, seed, token="sks"):
        calls.append((pipe.name, n, seed))
        fidelity, kept = measured[pipe.name]
        return {"subject_fidelity": fidelity, "prior_kept": kept}

    monkeypatch.setattr(trainer, "train_dreambooth", train)
    monkeypatch.setattr(trainer, "load_dreambooth", lambda out: Pipe(runs[out]))
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained",
                        lambda *a, **k: Pipe("base"))
    monkeypatch.setattr(subject, "measure", measure)
    result = subject.evaluate_dreambooth(n=2, seed=7, cache_dir=tmp_path, train_seed=3)
    assert result["train_seed"] == 3 and result["n"] == 2
    assert [(s, p) for s, p, _ in seen] == [(3, True), (3, False)]
    assert sorted(calls) == [("base", 2, 7), ("no_prior", 2, 7), ("prior", 2, 7)]
    assert {k: v for k, v in result.items() if k.startswith(("subject_fidelity", "prior_kept"))} == {
        "subject_fidelity": 0.9, "prior_kept": 0.8,
        "subject_fidelity_no_prior": 0.7, "prior_kept_no_prior": 0.1,
        "subject_fidelity_base": 0.0, "prior_kept_base": 0.95}
    assert (result["train_seconds"], result["train_seconds_no_prior"]) == (11, 22)
    assert (result["train_cpu_seconds"], result["train_cpu_seconds_no_prior"]) == (12, 23)
    subject.evaluate_dreambooth(n=2, cache_dir=tmp_path, train_seed=4)
    assert len({out for _, _, out in seen}) == 4
    # a reinstall renames the assembled mini folder (its name hashes the files' times): the
    # runs are found again by the model's contents
    from sdcourse import models

    monkeypatch.setattr(models, "mini_model_path", lambda task="text2img": tmp_path / "elsewhere")
    subject.evaluate_dreambooth(n=2, cache_dir=tmp_path, train_seed=3)
    assert len({out for _, _, out in seen}) == 4


def test_notebook_07_trains_with_the_evaluation_recipe():
    """Notebook 07 spells the recipe out for its readers; it must stay the one that
    `sdcourse evaluate dreambooth` measures (and the README reports)."""
    import re

    src = (Path(__file__).resolve().parents[1] / "notebooks" / "src" / "07_dreambooth.py").read_text()
    line = re.search(r"settings = dict\(lora=False, (.*)\)\n\s*full_steps = (\d+)", src)
    assert line, "notebook 07 no longer sets its mini-model recipe in one line: update this test"
    given = dict(kv.split("=") for kv in line.group(1).split(", "))
    recipe = subject.EVAL_SETTINGS
    assert recipe["lora"] is False and int(line.group(2)) == recipe["steps"]
    assert given["train_text_encoder"] == str(recipe["train_text_encoder"])
    assert float(given["prior_loss_weight"]) == recipe["prior_loss_weight"]
    assert float(given["lr"]) == recipe["lr"]
    assert given["token_init"].strip('"') == recipe["token_init"]


@pytest.mark.parametrize("lora", [False, True])
def test_a_finished_run_leaves_no_model_behind(tmp_path, base, lora, monkeypatch, request):
    """Models of a finished run are freed before ``train_dreambooth`` returns, not whenever
    Python's collector next runs: on a GPU the trained UNet (3.5 GB for SD 2) would otherwise
    hold memory the tuned pipelines that follow need."""
    import gc

    import accelerate
    from accelerate.state import AcceleratorState
    from diffusers import UNet2DConditionModel

    # mixed precision, as on a GPU (bfloat16 autocast here): accelerate's prepare then wraps
    # each model's forward in a method bound to the model, a reference cycle
    plain = accelerate.Accelerator
    monkeypatch.setattr(accelerate, "Accelerator",
                        lambda **kwargs: plain(**(kwargs | {"mixed_precision": "bf16"})))
    AcceleratorState._reset_state(True)  # accelerate keeps one precision per process: ours, then
    request.addfinalizer(lambda: AcceleratorState._reset_state(True))  # the other tests' again

    def is_unet(o) -> bool:
        try:
            return isinstance(o, UNet2DConditionModel)
        except ReferenceError:  # a weak proxy whose object is gone (left by an earlier test)
            return False

    def live_unets():
        with warnings.catch_warnings():  # isinstance on torch's deprecated module attributes
            warnings.simplefilter("ignore", FutureWarning)
            return sum(map(is_unet, gc.get_objects()))

    gc.collect()
    before = live_unets()
    gc.disable()  # only train_dreambooth's own collection may free cycles
    try:
        db.train_dreambooth(subject.make_instance_images(3), "a sks circle", out=tmp_path / "run",
                            base=base, lora=lora, prior_preservation=False, **(FAST | {"steps": 1}))
        after = live_unets()
    finally:
        gc.enable()
    assert after == before


def test_a_hub_base_is_read_from_its_local_copy(monkeypatch, tmp_path):
    """A Hub id is downloaded once as a whole pipeline (fp16 files on a GPU) and every
    component then loads from that folder: no component asks the Hub itself."""
    from diffusers import DiffusionPipeline

    from sdcourse import models
    from sdcourse.train import dreambooth as db

    calls = []
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setattr(DiffusionPipeline, "download",
                        classmethod(lambda cls, repo, **kw: calls.append((repo, kw)) or tmp_path))
    assert db.local_checkpoint("some/repo", fp16_files=True) == str(tmp_path)
    assert calls == [("some/repo", {"use_safetensors": True, "local_files_only": False, "variant": "fp16"})]
    assert db.local_checkpoint(str(tmp_path)) == str(tmp_path) and len(calls) == 1  # a folder: as is


def test_a_hub_base_not_downloaded_offline_is_one_clear_line(monkeypatch):
    from sdcourse import models
    from sdcourse.train import dreambooth as db

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(db.DreamBoothError, match=r"could not download base model sdcourse-tests/never-downloaded \(.+\): "
                                                 r"check your network, or give a local diffusers folder$"):
        db.local_checkpoint("sdcourse-tests/never-downloaded")


def _hub(monkeypatch, *, reachable, served=False):
    """The Hub as the checks see it (no network here): whether huggingface.co answers, whether
    it serves the id's model_index.json. Nothing may be
    loaded from it: a from_pretrained call is where huggingface_hub retried for half a minute."""
    import huggingface_hub
    from transformers import CLIPTokenizer

    from sdcourse import models

    def no_loading(*args, **kwargs):
        raise AssertionError("the tokenizer was loaded from a Hub id that cannot be fetched")

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: reachable)
    monkeypatch.setattr(huggingface_hub, "file_exists", lambda repo_id, name: served)
    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", no_loading)


@pytest.mark.parametrize("hub, env, problem, advice", [
    (dict(reachable=False), {}, r"^base model sdcourse-tests/never-downloaded is not in the local "
     r"Hugging Face cache and huggingface.co cannot be reached: ",
     "connect, or give a local diffusers folder"),
    (dict(reachable=False), {"HF_HUB_OFFLINE": "1"}, r"^base model sdcourse-tests/never-downloaded "
     r"is not in the local Hugging Face cache and offline mode is on \(HF_HUB_OFFLINE=1\): ",
     "unset it to download the model, or give a local diffusers folder"),
    (dict(reachable=False), {"TRANSFORMERS_OFFLINE": "true"}, r"^base model \S+ is not in the local "
     r"Hugging Face cache and offline mode is on \(TRANSFORMERS_OFFLINE=true\)", "unset it"),
    (dict(reachable=True), {}, r"^base model sdcourse-tests/never-downloaded is not on the "
     r"Hugging Face Hub \(no model_index.json there\): ", "check the id, or give a local diffusers folder"),
])
def test_a_hub_base_that_cannot_be_fetched_is_one_line_before_any_download(
        tmp_path, monkeypatch, hub, env, problem, advice):
    """A Hub id neither in the local cache nor fetchable: one line saying why (offline mode,
    no network, no such repository) and what to do, before the tokenizer or anything else
    is loaded, and the out folder untouched. The id is not in the cache (really: it was never
    downloaded), so the offline message does not suggest the very id given."""
    _hub(monkeypatch, **hub)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    message = _expect_error(tmp_path, monkeypatch, subject.make_instance_images(3), problem,
                            base="sdcourse-tests/never-downloaded", prior_preservation=False)
    assert advice in message
    if env:
        assert "Hub id like" not in message


def test_the_cli_stops_at_once_on_a_hub_id_it_cannot_fetch(tmp_path, monkeypatch, capsys,
                                                           instance_dir):
    """The reviewer's command: `--base nonexistent/repo` with no network hung in
    huggingface_hub's retries; now it is one line, and nothing is written."""
    from sdcourse.cli import main

    _hub(monkeypatch, reachable=False)
    status = main(["train", "dreambooth", "--instance-dir", str(instance_dir), "--instance-prompt",
                   "a sks dog", "--no-prior", "--out", str(tmp_path / "x"), "--base", "nonexistent/repo"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert err.startswith("sdcourse: error: base model nonexistent/repo is not in the local Hugging "
                          "Face cache and huggingface.co cannot be reached")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("reachable", [False, True])
def test_a_cached_hub_base_loads_without_asking_the_hub(monkeypatch, reachable):
    """A Hub id downloaded before is usable whatever the network: with huggingface.co out of
    reach its tokenizer is read from the cache alone (no request, so nothing retried); online,
    transformers may look for updates as usual. Whether the Hub still serves it is not asked."""
    import huggingface_hub
    from transformers import CLIPTokenizer

    from sdcourse import models

    real = CLIPTokenizer.from_pretrained
    calls = []

    def from_cache(base, **kwargs):
        calls.append((base, kwargs))
        return real(models.MINI_DIR / "tokenizer")

    def not_asked(*args, **kwargs):
        raise AssertionError("the Hub was asked about a checkpoint in the local cache")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "in_local_cache", lambda repo: repo == "someone/cached")
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: reachable)
    monkeypatch.setattr(huggingface_hub, "file_exists", not_asked)
    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", from_cache)
    tokenizer = db.load_tokenizer("someone/cached")
    assert tokenizer.tokenize("sks") == ["sks</w>"]
    cache_only = {} if reachable else {"local_files_only": True}
    assert calls == [("someone/cached", {"subfolder": "tokenizer", **cache_only})]


def test_the_mini_model_and_local_folders_ask_no_network(tmp_path, monkeypatch, base):
    """The common case stays as fast as it was: base=None (the embedded mini model) or a
    folder goes through every check to the model's files without a Hub check or a socket."""
    import socket

    from sdcourse import models

    def no_network(*args, **kwargs):
        raise AssertionError("the network was asked about a local base model")

    class Reached(Exception):
        pass

    def reached(files, fp16_files=False):
        seen.append(files)
        raise Reached

    for name in ("hub_reachable", "in_local_cache", "on_hub"):
        monkeypatch.setattr(models, name, no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(db, "check_base_folder", reached)  # past the tokenizer and every check
    seen = []
    for given in (None, base):
        with pytest.raises(Reached):
            db.train_dreambooth(subject.make_instance_images(3), "a sks circle",
                                out=tmp_path / "run", base=given, prior_preservation=False)
    assert seen == [str(models.mini_model_path("text2img")), str(base)]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("checkpoint_at, refused", [(200, True), (400, False)])
def test_a_run_killed_after_its_last_checkpoint_may_still_be_extended(tmp_path, checkpoint_at, refused):
    """A run of 400 steps killed between its checkpoint at step 400 and writing its result
    (validation, saving a pipeline: minutes on a real model) has finished its schedule: 600
    steps go on from it, as from a run whose result was written. Part-way (step 200), the
    schedule cannot change."""
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps({"step": checkpoint_at}))
    record = {"steps": 400, "done_step": 0}
    if refused:
        with pytest.raises(db.DreamBoothError, match=r"stopped at step 200 of 400: steps \(--steps\) "
                           r"was 400, now 600"):
            db.check_same_schedule(tmp_path, record, 600)
    else:
        db.check_same_schedule(tmp_path, record, 600)


def test_pictures_of_another_size_are_centre_cropped_and_resized():
    """What every real base at 512 px relies on (the mini tests' pictures are all 64 px): a
    100x60 picture in three vertical bands keeps the middle 60x60 square, resized to 64x64."""
    bands = np.zeros((60, 100, 3), np.uint8)
    bands[:, :20] = (255, 0, 0)     # cropped away on the left
    bands[:, 20:80] = (0, 255, 0)   # the centre square
    bands[:, 80:] = (0, 0, 255)     # cropped away on the right
    out = db.to_resolution(Image.fromarray(bands), 64)
    assert out.size == (64, 64)
    pixels = np.asarray(out).reshape(-1, 3)
    assert (np.abs(pixels.astype(int) - (0, 255, 0)) <= 2).all()
    already = Image.fromarray(bands[:, :64].repeat(2, axis=0)[:64])
    assert db.to_resolution(already, 64) is already  # the right size: left as it is
