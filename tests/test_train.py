"""The trainers' mechanics on a few steps: freezing, checkpoints, resume (no quality here)."""
import inspect
import json
import os
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from sdcourse import world
from sdcourse.train import common, vae


@pytest.fixture
def vae_steps(monkeypatch):
    """The step of each training picture the VAE trainer draws (clear it between calls).

    At batch 2 and seed 0, step ``s`` draws world samples ``2s`` and ``2s + 1``; evaluation
    and the scaling factor use :func:`world.dataset`'s seeds (7_000_021 and up), left out."""
    steps = []
    real_sample = world.sample

    def recording_sample(seed, **fixed):
        if seed < 10**6:
            steps.append(seed // 2)
        return real_sample(seed, **fixed)

    monkeypatch.setattr(world, "sample", recording_sample)
    return steps


def test_vae_freezes_encoder_and_resumes_from_checkpoint(tmp_path, vae_steps):
    out = tmp_path / "vae"
    # a 6-step schedule stopped at step 4 (as the shipped VAE stopped at 2000 of 4000)
    vae.train(out, steps=6, stop_at=4, batch_size=2, freeze_encoder_at=2, save_every=3, eval_every=100)
    assert vae_steps == [0, 0, 1, 1, 2, 2, 3, 3]
    assert common.checkpoint_step(common.find_checkpoint(out)) == 4
    snapshot = AutoencoderKL.from_pretrained(out / "frozen_encoder_vae")
    # measured on data by the function the trainer uses, and stored rounded to 5 decimals
    # (SD 1.x's 0.18215 was found the same way on its own data)
    assert snapshot.config.scaling_factor == round(vae.latent_scaling_factor(snapshot.eval()), 5)
    after = AutoencoderKL.from_pretrained(out / "checkpoint" / "vae")
    for a, b in zip(snapshot.encoder.parameters(), after.encoder.parameters()):
        assert torch.equal(a, b)  # the latent space did not move after the freeze
    assert any(not torch.equal(a, b) for a, b in zip(snapshot.decoder.parameters(),
                                                         after.decoder.parameters()))
    # a second call, without stop_at, resumes at step 4 and runs only the missing steps
    vae_steps.clear()
    vae.train(out, steps=6, batch_size=2, freeze_encoder_at=2, save_every=2, eval_every=100)
    assert vae_steps == [4, 4, 5, 5]  # not 0 to 5: the checkpoint was used
    assert common.checkpoint_step(common.find_checkpoint(out)) == 6
    resumed = AutoencoderKL.from_pretrained(out / "checkpoint" / "vae")
    for a, b in zip(snapshot.encoder.parameters(), resumed.encoder.parameters()):
        assert torch.equal(a, b)  # it went on from the checkpoint's weights, encoder still frozen
    lines = (out / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines if "psnr" in line] == ["4", "6"]
    assert not (out / "checkpoint.tmp").exists() and not (out / "checkpoint.old").exists()


def test_unet_trainer_resumes_and_builds_inpaint_and_depth_unets(tmp_path, monkeypatch):
    """Few steps of the text2img trainer, resumed; then the 9- and 5-channel UNets from it."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from sdcourse.models import MINI_DIR
    from sdcourse.train import text2img

    vae_dir = tmp_path / "vae"
    AutoencoderKL(**vae.VAE_CONFIG).save_pretrained(vae_dir)  # random weights: mechanics only
    common_args = dict(vae_path=vae_dir, tokenizer_path=MINI_DIR / "tokenizer", batch_size=4,
                       n_images=16, save_every=1, eval_every=0)
    saved = []  # the step of each checkpoint written (save_every=1: one per step run)
    real_save = common.save_checkpoint
    monkeypatch.setattr(common, "save_checkpoint",
                        lambda out, step, *a, **k: saved.append(step) or real_save(out, step, *a, **k))
    t2i = tmp_path / "t2i"
    text2img.train(t2i, steps=4, stop_at=2, freeze_text_encoder_at=3, **common_args)
    assert saved == [1, 2]
    first = UNet2DConditionModel.from_pretrained(t2i / "checkpoint" / "unet")
    saved.clear()
    text2img.train(t2i, steps=4, freeze_text_encoder_at=3, **common_args)
    assert saved == [3, 4]  # only the missing steps, not a restart from step 0
    assert common.checkpoint_step(common.find_checkpoint(t2i)) == 4
    later = UNet2DConditionModel.from_pretrained(t2i / "checkpoint" / "unet")
    assert any(not torch.equal(a, b) for a, b in zip(first.parameters(), later.parameters()))
    # batch i is the same on resume, and the optimizer state is restored (the freeze at step 3
    # starts a new optimizer, so it must not be at the resume step): stopped at 2 and resumed
    # is the uninterrupted 4-step run
    whole = tmp_path / "t2i_whole"
    text2img.train(whole, steps=4, freeze_text_encoder_at=3, **common_args)
    for name, cls in (("unet", UNet2DConditionModel), ("unet_ema", UNet2DConditionModel),
                      ("text_encoder", CLIPTextModel)):
        resumed = cls.from_pretrained(t2i / "checkpoint" / name)
        uninterrupted = cls.from_pretrained(whole / "checkpoint" / name)
        for (key, a), b in zip(resumed.named_parameters(), uninterrupted.parameters()):
            assert torch.equal(a, b), (name, key)
    # the text encoder froze at step 3: the snapshot and the final one are the same
    frozen = CLIPTextModel.from_pretrained(t2i / "at_text_encoder_freeze" / "text_encoder")
    final = CLIPTextModel.from_pretrained(t2i / "checkpoint" / "text_encoder")
    assert all(torch.equal(a, b) for a, b in zip(frozen.parameters(), final.parameters()))

    assert json.loads((t2i / "checkpoint" / "state.json").read_text())["task"] == "text2img"
    for task, channels in (("inpaint", 9), ("depth", 5)):
        out = tmp_path / task
        text2img.train(out, steps=1, task=task, init=t2i / "checkpoint", **common_args)
        assert json.loads((out / "checkpoint" / "state.json").read_text())["task"] == task
        unet = UNet2DConditionModel.from_pretrained(out / "checkpoint" / "unet")
        assert unet.config.in_channels == channels
        # the shared text encoder did not move
        te_before = CLIPTextModel.from_pretrained(t2i / "checkpoint" / "text_encoder")
        te_after = CLIPTextModel.from_pretrained(out / "checkpoint" / "text_encoder")
        assert all(torch.equal(a, b) for a, b in zip(te_before.parameters(), te_after.parameters()))

    # a checkpoint from before the task (and the settings) were recorded resumes as it did:
    # its UNet's 5 input channels say it is a depth run; from now on it records both
    state = tmp_path / "depth" / "checkpoint" / "state.json"
    state.write_text(json.dumps({"step": 1}))
    text2img.train(tmp_path / "depth", steps=2, task="depth", **common_args)
    recorded = json.loads(state.read_text())
    assert {k: recorded[k] for k in ("step", "task", "kind")} == {"step": 2, "task": "depth",
                                                                  "kind": "depth"}
    assert recorded["settings"]["steps"] == 2 and recorded["settings"]["n_images"] == 16
    # a training set left by another task's run (killed before its first checkpoint): one line
    # before any step, not a KeyError mid-training
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "dataset.safetensors").write_bytes((t2i / "dataset.safetensors").read_bytes())
    saved.clear()
    with pytest.raises(common.CheckpointError, match=r"^\S+dataset.safetensors holds another run's training "
                       r"set \(16 pictures, 0 extra channels; inpaint needs 16 and 5\): delete it "
                       r"or give another --out$"):
        text2img.train(tmp_path / "mixed", steps=1, task="inpaint", init=t2i / "checkpoint",
                       **common_args)
    assert saved == [] and not (tmp_path / "mixed" / "checkpoint").exists()


def test_unet_trainer_checks_task_init_and_the_run_folder_before_any_work(tmp_path):
    """Mistakes in the arguments stop at once with one line: before the VAE and tokenizer load
    (here they do not even exist) and before the output folder is made."""
    from sdcourse.train import text2img

    args = dict(vae_path=tmp_path / "no_vae", tokenizer_path=tmp_path / "no_tokenizer")
    with pytest.raises(ValueError, match=r"^unknown task 'img2img': use one of text2img, "
                       r"inpaint, depth$"):
        text2img.train(tmp_path / "a", task="img2img", **args)
    with pytest.raises(ValueError, match=r"^training the inpaint UNet needs init=<folder with the "
                       r"text2img unet>$"):
        text2img.train(tmp_path / "a", task="inpaint", **args)
    assert not (tmp_path / "a").exists()
    # resuming a text2img run's folder as inpaint (its dataset has no masks): refused
    ckpt = tmp_path / "t2i" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": 3, "task": "text2img"}))
    with pytest.raises(common.CheckpointError) as info:
        text2img.train(tmp_path / "t2i", task="inpaint", init=tmp_path / "init", **args)
    assert str(info.value) == (f"{tmp_path / 't2i'} holds a text2img training run, not inpaint: "
                               "choose another --out for inpaint (training text2img there "
                               "resumes that run)")
    assert sorted(p.name for p in (tmp_path / "t2i").iterdir()) == ["checkpoint"]


def test_an_init_folder_that_does_not_load_is_one_line_and_no_run_folder(tmp_path):
    """Weights cut short (empty files beside good configs): one line naming the folder and
    what to give, after the libraries tried, and no empty run folder left behind."""
    from sdcourse.models import MINI_DIR
    from sdcourse.train import text2img

    init = tmp_path / "init"
    for part, weights in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (init / part).mkdir(parents=True)
        (init / part / "config.json").write_text((MINI_DIR / part / "config.json").read_text())
        (init / part / f"{weights}.safetensors").write_bytes(b"")
    with pytest.raises(common.CheckpointError) as info:
        text2img.train(tmp_path / "run", task="inpaint", init=init, vae_path=MINI_DIR / "vae",
                       tokenizer_path=MINI_DIR / "tokenizer")
    message = str(info.value)
    assert message.startswith(f"init folder {init} does not load (") and "\n" not in message
    assert message.endswith("runs/text2img/at_text_encoder_freeze")
    assert not (tmp_path / "run").exists()


def test_widened_unet_starts_as_the_text2img_unet():
    from diffusers import UNet2DConditionModel

    from sdcourse.train import text2img

    torch.manual_seed(0)
    base = UNet2DConditionModel(**text2img.UNET_CONFIG).eval()
    wide = text2img.widen_conv_in(base, 5).eval()
    x, extra = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 8, 8)
    hidden = torch.randn(1, 77, 64)
    with torch.no_grad():
        a = base(x, 10, encoder_hidden_states=hidden).sample
        b = wide(torch.cat([x, extra], 1), 10, encoder_hidden_states=hidden).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_miscolor_names_another_colour_and_keeps_the_rest():
    import random

    from sdcourse import world
    from sdcourse.train.text2img import miscolor

    rng = random.Random(0)
    for seed in range(50):
        scene = world.random_scene(random.Random(seed))
        wrong = miscolor(scene.caption, rng).split()
        assert wrong[1] in world.COLORS and wrong[1] not in (scene.color, scene.background)
        assert wrong[2:] == scene.caption.split()[2:]  # shape and background unchanged


def test_text2img_fine_tune_from_init_keeps_the_text_encoder(tmp_path):
    """`--init` for text2img: the UNet trains on (here fully) noisy captions, the shared text
    encoder stays as it was."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdcourse.models import MINI_DIR
    from sdcourse.train import text2img

    vae_dir, init = tmp_path / "vae", tmp_path / "init"
    AutoencoderKL(**vae.VAE_CONFIG).save_pretrained(vae_dir)  # random weights: mechanics only
    torch.manual_seed(0)
    UNet2DConditionModel(**text2img.UNET_CONFIG).save_pretrained(init / "unet")
    CLIPTextModel(CLIPTextConfig(**text2img.TEXT_ENCODER_CONFIG)).save_pretrained(init / "text_encoder")
    out = tmp_path / "tuned"
    text2img.train(out, vae_path=vae_dir, tokenizer_path=MINI_DIR / "tokenizer", steps=2,
                   batch_size=4, n_images=16, save_every=1, eval_every=0, init=init,
                   caption_noise=0.99)
    before = CLIPTextModel.from_pretrained(init / "text_encoder")
    after = CLIPTextModel.from_pretrained(out / "checkpoint" / "text_encoder")
    assert all(torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
    unet_before = UNet2DConditionModel.from_pretrained(init / "unet")
    unet_after = UNet2DConditionModel.from_pretrained(out / "checkpoint" / "unet")
    assert any(not torch.equal(a, b) for a, b in zip(unet_before.parameters(), unet_after.parameters()))


def test_vae_stopped_and_resumed_is_the_uninterrupted_run(tmp_path, vae_steps):
    """posterior.sample() draws from the global RNG, seeded at each train() call: the
    checkpoint keeps its state, so a run continued with a later stop_at (or resumed after a
    kill) draws the same noise and ends with the same weights as one that never stopped."""
    args = dict(steps=4, batch_size=2, freeze_encoder_at=None, save_every=2, eval_every=100)
    vae.train(tmp_path / "resumed", stop_at=2, **args)
    vae_steps.clear()
    vae.train(tmp_path / "resumed", **args)
    assert vae_steps == [2, 2, 3, 3]  # resumed, not restarted
    vae.train(tmp_path / "whole", **args)
    a = AutoencoderKL.from_pretrained(tmp_path / "resumed" / "checkpoint" / "vae")
    b = AutoencoderKL.from_pretrained(tmp_path / "whole" / "checkpoint" / "vae")
    for (key, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), key


def test_vae_resumes_from_a_checkpoint_taken_at_the_freeze_step(tmp_path):
    """The checkpoint at ``freeze_encoder_at`` holds an optimizer over all parameters: the
    resumed run must freeze in its loop (and save the frozen encoder), not before loading."""
    out = tmp_path / "vae"
    vae.train(out, steps=4, stop_at=2, batch_size=2, freeze_encoder_at=2, save_every=2, eval_every=100)
    assert common.checkpoint_step(common.find_checkpoint(out)) == 2
    assert not (out / "frozen_encoder_vae").exists()
    vae.train(out, steps=4, batch_size=2, freeze_encoder_at=2, save_every=2, eval_every=100)
    assert common.checkpoint_step(common.find_checkpoint(out)) == 4
    snapshot = AutoencoderKL.from_pretrained(out / "frozen_encoder_vae")
    after = AutoencoderKL.from_pretrained(out / "checkpoint" / "vae")
    for a, b in zip(snapshot.encoder.parameters(), after.encoder.parameters()):
        assert torch.equal(a, b)  # frozen from step 2 on


def test_vae_resumes_from_checkpoint_old_left_by_a_kill_between_the_renames(tmp_path, vae_steps):
    """save_checkpoint renames checkpoint -> checkpoint.old, then checkpoint.tmp -> checkpoint:
    killed in between, only checkpoint.old is left. The next run resumes from it, exactly as
    from checkpoint (same weights, same optimizer), and once its own checkpoint is in place
    the superseded .old is gone."""
    args = dict(steps=4, batch_size=2, freeze_encoder_at=None, save_every=2, eval_every=100)
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    for out in (crashed, clean):
        vae.train(out, stop_at=2, **args)
    (crashed / "checkpoint").rename(crashed / "checkpoint.old")
    assert sorted(p.name for p in crashed.glob("checkpoint*")) == ["checkpoint.old"]
    assert common.checkpoint_step(common.find_checkpoint(crashed)) == 2

    vae_steps.clear()
    vae.train(crashed, **args)
    assert vae_steps == [2, 2, 3, 3]  # resumed at step 2, not restarted
    assert common.checkpoint_step(common.find_checkpoint(crashed)) == 4
    assert sorted(p.name for p in crashed.glob("checkpoint*")) == ["checkpoint"]
    vae.train(clean, **args)  # the same resume from an intact checkpoint
    a = AutoencoderKL.from_pretrained(crashed / "checkpoint" / "vae")
    b = AutoencoderKL.from_pretrained(clean / "checkpoint" / "vae")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("damage, reason", [
    ({"state.json": "{not json"}, "state.json: JSONDecodeError"),
    ({"state.json": '{"epoch": 3}'}, "state.json: KeyError"),
    ({"state.json": '{"step": "ten"}'}, "state.json: 'ten' is not a step number"),
    # the model's config gone (a half-copied run): not "couldn't connect to huggingface.co"
    ({"vae/config.json": None}, "(no vae/config.json in it)"),
    ({"vae/diffusion_pytorch_model.safetensors": "garbage"}, "Error"),
    ({"optimizer.safetensors": "garbage"}, "SafetensorError"),
])
def test_a_damaged_checkpoint_is_one_line_before_training(tmp_path, damage, reason, vae_steps):
    """Resuming from a checkpoint that a full disk or a hand edit damaged stops with one
    line naming the checkpoint and what to do, before any step, and keeps it as it was."""
    out = tmp_path / "vae"
    vae.train(out, steps=1, batch_size=2, save_every=1, eval_every=100)
    for name, text in damage.items():
        path = out / "checkpoint" / name
        path.unlink() if text is None else path.write_text(text)
    vae_steps.clear()
    with pytest.raises(common.CheckpointError) as info:
        vae.train(out, steps=3, batch_size=2, save_every=1, eval_every=100)
    message = str(info.value)
    assert message.startswith(f"the checkpoint {out / 'checkpoint'} cannot be resumed from (")
    assert reason in message and message.endswith("): delete it to train from the start, "
                                                  "or give another --out")
    assert "\n" not in message and vae_steps == []
    for name, text in damage.items():
        assert (text is None) != (out / "checkpoint" / name).exists()


def test_the_command_line_says_where_a_run_stands(tmp_path, capsys, vae_steps):
    """A finished run given the same command again trains nothing: the closing line says
    which step its checkpoint holds, as after training."""
    from sdcourse import cli

    for trains in (True, False):
        vae_steps.clear()
        assert cli.main(["train", "vae", "--out", str(tmp_path), "--steps", "1"]) == 0
        assert bool(vae_steps) is trains  # training pictures drawn the first time only
        assert capsys.readouterr().out.endswith(
            f"sdcourse train vae: step 1, checkpoint in {tmp_path / 'checkpoint'}\n")


def test_the_command_line_reports_a_damaged_checkpoint_in_one_line(tmp_path, capsys):
    from sdcourse import cli

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text("{")
    assert cli.main(["train", "vae", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sdcourse: error: the checkpoint {tmp_path / 'checkpoint'} cannot be "
                          "resumed from (state.json: JSONDecodeError") and err.count("\n") == 1


def _stored_dtypes(folder: Path) -> set:
    """The dtypes of the floating-point tensors in a folder's safetensors files."""
    from safetensors.torch import load_file

    return {t.dtype for f in folder.glob("*.safetensors") for t in load_file(f).values()
            if t.is_floating_point()}


def _close_to_fp16_copy(original, loaded) -> bool:
    """``loaded`` (float32) holds ``original``'s weights rounded to float16."""
    return all(torch.equal(a.detach().half().float(), b.detach())
               for a, b in zip(original.parameters(), loaded.parameters()))


def test_publishing_stores_fp16_that_loads_back_as_the_trained_weights(tmp_path):
    """What ships: common.publish writes float16 safetensors that from_pretrained loads back in
    float32 as the trained weights rounded to fp16; vae.publish also records the latent
    scaling factor it measured."""
    torch.manual_seed(0)
    model = AutoencoderKL(**vae.VAE_CONFIG)
    factor = vae.publish(model, tmp_path / "vae")
    assert _stored_dtypes(tmp_path / "vae") == {torch.float16}
    loaded = AutoencoderKL.from_pretrained(tmp_path / "vae", dtype=torch.float32, use_safetensors=True)
    assert _close_to_fp16_copy(model, loaded)
    assert loaded.config.scaling_factor == factor > 0


@pytest.mark.parametrize("task", ["text2img", "inpaint"])
def test_text2img_publish_ships_the_unet_and_for_text2img_its_text_encoder(tmp_path, task):
    """The text2img UNet ships with its text encoder and sampling scheduler; the inpainting
    (and depth) UNet alone, into its own folder, leaving the shared parts as they are."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdcourse.train import text2img

    torch.manual_seed(0)
    checkpoint, mini = tmp_path / "checkpoint", tmp_path / "mini"
    unet = UNet2DConditionModel(**text2img.UNET_CONFIG)
    unet.save_pretrained(checkpoint / "unet")
    encoder = CLIPTextModel(CLIPTextConfig(**text2img.TEXT_ENCODER_CONFIG))
    encoder.save_pretrained(checkpoint / "text_encoder")
    text2img.publish(checkpoint, mini, task=task)
    folder = mini / text2img.UNET_FOLDER[task]
    assert _stored_dtypes(folder) == {torch.float16}
    assert _close_to_fp16_copy(unet, UNet2DConditionModel.from_pretrained(folder, use_safetensors=True))
    if task == "text2img":
        assert sorted(p.name for p in mini.iterdir()) == ["scheduler", "text_encoder", "unet"]
        assert _stored_dtypes(mini / "text_encoder") == {torch.float16}
        shipped = CLIPTextModel.from_pretrained(mini / "text_encoder", dtype=torch.float32)
        assert _close_to_fp16_copy(encoder, shipped)
        assert isinstance(DDIMScheduler.from_pretrained(mini / "scheduler"), DDIMScheduler)
    else:
        assert sorted(p.name for p in mini.iterdir()) == ["unet_inpaint"]


def test_depth_estimator_publish_ships_the_model_and_its_processor(tmp_path):
    from transformers import DPTConfig, DPTForDepthEstimation

    from sdcourse.train import depth_estimator

    torch.manual_seed(0)
    model = DPTForDepthEstimation(DPTConfig(**depth_estimator.DPT_CONFIG))
    depth_estimator.publish(model, tmp_path)
    assert _stored_dtypes(tmp_path / "depth_estimator") == {torch.float16}
    loaded = DPTForDepthEstimation.from_pretrained(tmp_path / "depth_estimator", dtype=torch.float32)
    assert _close_to_fp16_copy(model, loaded)
    assert (tmp_path / "depth_processor" / "preprocessor_config.json").is_file()


def test_publish_keeps_the_previous_model_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    """Replacing a published folder never passes through a moment with nothing there: a crash
    while swapping leaves the previous model; a finished swap leaves no old copy behind."""
    target = tmp_path / "vae"
    torch.manual_seed(0)
    first = AutoencoderKL(**vae.VAE_CONFIG)
    common.publish(first, target, fp16=False)
    real_replace = os.replace

    def crash_on_swap(src, dst):
        if str(src).endswith(".tmp") and os.fspath(dst) == os.fspath(target):
            raise KeyboardInterrupt  # killed between taking the old folder away and the new in
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_swap)
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        common.publish(AutoencoderKL(**vae.VAE_CONFIG), target, fp16=False)
    monkeypatch.setattr(os, "replace", real_replace)
    kept = AutoencoderKL.from_pretrained(target)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), kept.parameters()))

    torch.manual_seed(1)
    second = AutoencoderKL(**vae.VAE_CONFIG)
    common.publish(second, target, fp16=False)
    new = AutoencoderKL.from_pretrained(target)
    assert all(torch.equal(a, b) for a, b in zip(second.parameters(), new.parameters()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]


def test_save_folder_leaves_the_old_config_whole_when_saving_fails(tmp_path):
    """The scheduler and image-processor configs are replaced like the weights: a save that
    fails half-way leaves the previous folder as it was and no temporary folder."""
    from diffusers import DDIMScheduler

    target = tmp_path / "scheduler"
    common.save_folder(DDIMScheduler(num_train_timesteps=1000), target)
    before = (target / "scheduler_config.json").read_text()

    class Broken:
        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "scheduler_config.json").write_text("{half")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        common.save_folder(Broken(), target)
    assert (target / "scheduler_config.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scheduler"]
    common.save_folder(DDIMScheduler(num_train_timesteps=500), target)
    assert DDIMScheduler.from_pretrained(target).config.num_train_timesteps == 500


def test_the_mini_trainers_run_on_the_cpu_even_where_a_gpu_is(monkeypatch):
    """Their loops keep batches on the CPU, and there the same seed gives the shipped weights:
    the accelerator they run under must not move the models to a GPU PyTorch sees."""
    from sdcourse.train import depth_estimator, text2img, vae

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert common.mini_accelerator().device.type == "cpu"
    for module in (vae, text2img, depth_estimator):  # and each trainer takes that one
        source = Path(module.__file__).read_text()
        assert "common.mini_accelerator()" in source and "Accelerator(" not in source, module


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """Killed after logging steps 10-30 with its checkpoint at 20, a run trains 21-30 again:
    the log keeps one row per step, the newer one; rows before the resume point stay."""
    for step in (10, 20, 25, 30):
        common.append_log(tmp_path, step, loss=1.0)
    common.trim_log(tmp_path, 20)  # the run resumes at its checkpoint, step 20
    common.append_log(tmp_path, 30, loss=0.25)
    assert (tmp_path / "log.csv").read_text() == "10,loss=1\n20,loss=1\n30,loss=0.25\n"
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]  # rewritten in place, atomically
    common.trim_log(tmp_path / "nothing_yet", 0)  # a run's first start: no log, nothing to do


def test_progress_bars_honour_tqdm_disable_in_a_notebook_too(monkeypatch):
    # in a kernel tqdm.auto is tqdm.notebook's widget bar, which ignores TQDM_DISABLE by itself:
    # the trainers' bars must go through common.progress to stay out of notebook outputs
    import tqdm.auto
    import tqdm.notebook

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.notebook.tqdm)  # what a kernel gets
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert tqdm.notebook.tqdm(range(3)).disable is False  # the library alone: a widget bar
    bar = common.progress(range(3), desc="dreambooth")
    assert bar.disable is True and list(bar) == [0, 1, 2]
    monkeypatch.delenv("TQDM_DISABLE")
    assert common.progress(range(3), disable=True).disable is True  # a caller's choice stays
    for name in ("dreambooth", "text2img", "vae", "depth_estimator"):
        source = (Path(common.__file__).parent / f"{name}.py").read_text()
        assert "tqdm" not in source.replace("common.progress", ""), name


def test_optimizer_state_goes_through_safetensors_and_resumes_the_same_steps(tmp_path):
    """``save_optimizer``/``load_optimizer`` keep Adam's moments, step and groups exactly: an
    optimizer restored from the file takes the same next step as the one that wrote it."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW([{"params": [model.weight], "lr": 1e-2},
                                   {"params": [model.bias], "lr": 1e-3}], betas=(0.8, 0.9))

    def step(opt, params):
        opt.zero_grad()
        (params[0].sum() ** 2 + params[1].sum()).backward()
        opt.step()

    for _ in range(3):
        step(optimizer, [model.weight, model.bias])
    (tmp_path / "state.json").write_text(json.dumps({"step": 3}))
    common.save_optimizer(optimizer, tmp_path / common.OPTIMIZER)
    assert (tmp_path / common.OPTIMIZER).read_bytes()[8:9] == b"{"  # a safetensors header

    copy = torch.nn.Linear(3, 2)
    copy.load_state_dict(model.state_dict())
    restored = torch.optim.AdamW([{"params": [copy.weight], "lr": 5.0}, {"params": [copy.bias]}])
    assert common.load_optimizer(restored, tmp_path) == 3
    assert [g["lr"] for g in restored.param_groups] == [1e-2, 1e-3]
    assert list(restored.param_groups[0]["betas"]) == [0.8, 0.9]
    step(optimizer, [model.weight, model.bias])
    step(restored, [copy.weight, copy.bias])
    assert torch.equal(model.weight, copy.weight) and torch.equal(model.bias, copy.bias)


def test_a_truncated_training_set_file_is_one_line(tmp_path):
    """A ``dataset.safetensors`` cut short (a full disk) stops with one line naming it."""
    from sdcourse.train import text2img

    path = tmp_path / "dataset.safetensors"
    text2img.save_dataset({"mean": torch.zeros(2, 4, 8, 8), "captions": ["a", "b"]}, path)
    assert text2img.read_dataset(path)["captions"] == ["a", "b"]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(common.CheckpointError, match=rf"^{path} cannot be read \(\w+\): delete it "
                       "to encode the training set again$"):
        text2img.cached_dataset(path, vae=None, n=2, seed=0, task="text2img")


def test_a_training_set_of_another_seed_is_refused_not_trained_on(tmp_path):
    """A run killed before its first checkpoint (no settings recorded yet) and started again
    with another seed would have trained on the first seed's pictures: the set keeps its seed."""
    from sdcourse.train import text2img

    path = tmp_path / "dataset.safetensors"
    data = {"mean": torch.zeros(2, 4, 8, 8), "captions": ["a", "b"]}
    text2img.save_dataset(data, path, seed=1000)
    assert text2img.cached_dataset(path, vae=None, n=2, seed=1000, task="text2img")["captions"] == ["a", "b"]
    with pytest.raises(common.CheckpointError, match=rf"^{path} holds a training set drawn with "
                       r"another seed \(--seed\) than this run's: delete it or give another --out$"):
        text2img.cached_dataset(path, vae=None, n=2, seed=1005, task="text2img")
    text2img.save_dataset(data, path)  # a set saved before the seed was kept: taken as it is
    assert text2img.cached_dataset(path, vae=None, n=2, seed=1005, task="text2img")["captions"] == ["a", "b"]


def test_a_training_set_encoded_by_another_vae_is_refused(tmp_path):
    """A run resumed after the VAE was trained again would denoise latents of two VAEs: the
    set records which VAE encoded it, and the same weights read back from disk match."""
    from sdcourse.train import text2img

    torch.manual_seed(0)
    first = AutoencoderKL(**vae.VAE_CONFIG)
    first.save_pretrained(tmp_path / "first")
    torch.manual_seed(1)
    second = AutoencoderKL(**vae.VAE_CONFIG)
    path = tmp_path / "dataset.safetensors"
    data = {"mean": torch.zeros(2, 4, 8, 8), "captions": ["a", "b"]}
    text2img.save_dataset(data, path, seed=1000, vae=text2img.vae_fingerprint(first))
    reread = AutoencoderKL.from_pretrained(tmp_path / "first")
    assert text2img.cached_dataset(path, vae=reread, n=2, seed=1000, task="text2img")["captions"] == ["a", "b"]
    with pytest.raises(common.CheckpointError, match=rf"^{path} holds a training set encoded by "
                       r"another VAE than this run's \(was the VAE trained again\?\): its UNet "
                       r"learned those latents; give another --out$"):
        text2img.cached_dataset(path, vae=second, n=2, seed=1000, task="text2img")
    copy = AutoencoderKL(**vae.VAE_CONFIG)
    copy.load_state_dict(first.state_dict())
    assert text2img.vae_fingerprint(copy) == text2img.vae_fingerprint(first)
    copy.register_to_config(scaling_factor=0.5)  # the same weights, another factor: other latents
    assert text2img.vae_fingerprint(copy) != text2img.vae_fingerprint(first)


# ------------------------------------------------------------ resume: same run, same settings


def _contents(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (a refused run must change none of them)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_resuming_with_other_settings_is_refused_naming_them(tmp_path, vae_steps):
    """The checkpoint records the run's settings: a resume under others (another seed, rate,
    batch size...) is another run, refused in one line that names each change and what to
    do, before any step and without touching the run. Same settings: resumed as before."""
    out = tmp_path / "vae"
    args = dict(steps=2, batch_size=2, freeze_encoder_at=None, save_every=1, eval_every=100)
    vae.train(out, stop_at=1, **args)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    defaults = {k: v.default for k, v in inspect.signature(vae.train).parameters.items()}
    assert state["kind"] == "vae" and state["settings"] == {
        "steps": 2, "batch_size": 2, "lr": defaults["lr"], "seed": 0, "freeze_encoder_at": None,
        "kl_weight": defaults["kl_weight"]}
    before = _contents(out)
    vae_steps.clear()
    again = ": to resume it, give the settings it was trained with; for a new run, choose another --out"
    with pytest.raises(common.CheckpointError) as info:
        vae.train(out, seed=5, **args)
    assert str(info.value) == f"{out} holds a vae run with other settings: seed (--seed) was 0, now 5{again}"
    assert isinstance(info.value, common.RunMismatchError)  # the command line's usage error (status 2)
    with pytest.raises(common.CheckpointError) as info:
        vae.train(out, **(args | {"lr": 1e-3, "batch_size": 4}))
    assert str(info.value) == (f"{out} holds a vae run with other settings: batch_size was 2, "
                               f"now 4; lr was {defaults['lr']}, now 0.001{again}")
    # the learning rate follows a schedule over all its steps: not changed part-way
    with pytest.raises(common.CheckpointError) as info:
        vae.train(out, **(args | {"steps": 4}))
    assert str(info.value) == (
        f"{out} holds a vae run with other settings: steps (--steps) was 2, now 4 (the learning "
        "rate follows a schedule over all 2 steps, which cannot change before the run finishes: "
        f"it is at step 1; --stop-at is what ends a run early on its schedule){again}")
    assert vae_steps == [] and _contents(out) == before

    vae.train(out, **args)  # the same settings resume it
    assert vae_steps == [1, 1]
    vae_steps.clear()
    # a finished run may go on with more steps (as the shipped inpainting UNet did)...
    vae.train(out, **(args | {"steps": 3}))
    assert vae_steps == [2, 2] and common.checkpoint_step(common.find_checkpoint(out)) == 3
    # ...but fewer steps cannot undo it, where before the call returned without a word
    before = _contents(out)
    with pytest.raises(common.CheckpointError, match=r"steps \(--steps\) was 3, now 2 \(the run "
                       r"has finished its 3 steps: a larger --steps extends it, a smaller one "
                       r"cannot undo them\): to resume it"):
        vae.train(out, **args)
    assert _contents(out) == before


def test_checkpoints_from_before_the_settings_were_recorded_still_resume(tmp_path, vae_steps):
    """A checkpoint without ``kind`` and ``settings`` (an older run) is known as a VAE's by
    its contents and resumes as it did; its next checkpoint records both."""
    out = tmp_path / "vae"
    args = dict(steps=2, batch_size=2, freeze_encoder_at=None, save_every=1, eval_every=100)
    vae.train(out, stop_at=1, **args)
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({"step": state["step"], "rng": state["rng"]}))
    assert common.run_kind(out) == "vae"
    vae_steps.clear()
    vae.train(out, **args)
    assert vae_steps == [1, 1]
    assert json.loads(path.read_text())["settings"]["steps"] == 2


def test_a_folder_of_another_trainer_is_refused_before_anything_loads(tmp_path, capsys):
    """Every trainer records its kind: a run folder of another one (a VAE's given to the UNet
    trainer, a DreamBooth run to the VAE's) is one line saying whose it is, before any model
    loads, instead of a library's error about a file the other run does not have (or "delete
    it", which would destroy the other run). Older checkpoints are known by their contents."""
    from sdcourse import cli
    from sdcourse.train import depth_estimator, text2img

    out = tmp_path / "t1"
    vae.train(out, steps=1, batch_size=2, save_every=1, eval_every=100)
    before = _contents(out)
    expected = (f"{out} holds a vae training run, not text2img: choose another --out for "
                "text2img (training vae there resumes that run)")
    for old in (False, True):
        if old:  # as written before the kind was recorded
            state = json.loads((out / "checkpoint" / "state.json").read_text())
            (out / "checkpoint" / "state.json").write_text(json.dumps({"step": 1, "rng": state["rng"]}))
            before = _contents(out)
        with pytest.raises(common.CheckpointError) as info:  # no VAE there: nothing loads
            text2img.train(out, vae_path=tmp_path / "no_vae", tokenizer_path=tmp_path / "no_tok")
        assert str(info.value) == expected
        with pytest.raises(common.CheckpointError, match="holds a vae training run, not depth-estimator"):
            depth_estimator.train(out, steps=1)
        assert _contents(out) == before
    assert cli.main(["train", "text2img", "--out", str(out), "--steps", "1"]) == 2  # as for DreamBooth
    assert capsys.readouterr().err == f"sdcourse: error: {expected}\n"
    assert _contents(out) == before

    # a DreamBooth run (dreambooth.json, its checkpoint of trained weights only)
    dreambooth_run = tmp_path / "d6"
    (dreambooth_run / "checkpoint" / "unet").mkdir(parents=True)
    (dreambooth_run / "checkpoint" / "state.json").write_text(json.dumps({"step": 1, "kind": "dreambooth"}))
    (dreambooth_run / "dreambooth.json").write_text("{}")
    before = _contents(dreambooth_run)
    with pytest.raises(common.CheckpointError) as info:
        vae.train(dreambooth_run, steps=1)
    assert str(info.value) == (f"{dreambooth_run} holds a dreambooth training run, not vae: choose "
                               "another --out for vae (training dreambooth there resumes that run)")
    assert _contents(dreambooth_run) == before


def test_a_text2img_fine_tune_resumed_without_init_keeps_its_text_encoder_frozen(tmp_path):
    """``init`` only says where a new run starts; the checkpoint records it, so a fine-tune
    resumed without it (as `sdcourse train text2img` resumes) still trains the UNet alone."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdcourse.models import MINI_DIR
    from sdcourse.train import text2img

    vae_dir, init = tmp_path / "vae", tmp_path / "init"
    AutoencoderKL(**vae.VAE_CONFIG).save_pretrained(vae_dir)
    torch.manual_seed(0)
    UNet2DConditionModel(**text2img.UNET_CONFIG).save_pretrained(init / "unet")
    CLIPTextModel(CLIPTextConfig(**text2img.TEXT_ENCODER_CONFIG)).save_pretrained(init / "text_encoder")
    args = dict(vae_path=vae_dir, tokenizer_path=MINI_DIR / "tokenizer", steps=2, batch_size=4,
                n_images=16, save_every=1, eval_every=0)
    out = tmp_path / "tuned"
    text2img.train(out, init=init, stop_at=1, **args)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["init"] == str(init)
    text2img.train(out, **args)  # resumed without init
    before = CLIPTextModel.from_pretrained(init / "text_encoder")
    after = CLIPTextModel.from_pretrained(out / "checkpoint" / "text_encoder")
    assert all(torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
    # and a setting changed on resume is refused by the UNet trainer too
    with pytest.raises(common.CheckpointError, match=r"holds a text2img run with other settings: "
                       r"caption_noise \(--caption-noise\) was 0.0, now 0.35: to resume it"):
        text2img.train(out, caption_noise=0.35, **args)


def test_depth_estimator_killed_and_resumed_is_the_uninterrupted_run(tmp_path, monkeypatch):
    """The depth estimator's trainer checkpoints every ``save_every`` steps with its measured
    correlation in the log; killed after a checkpoint, the same call resumes there (drawing
    only the missing steps' pictures) and ends with the weights of a run never stopped."""
    from transformers import DPTForDepthEstimation

    from sdcourse.train import depth_estimator

    args = dict(steps=4, batch_size=2, save_every=2)
    drawn, real_batch = [], depth_estimator.batch

    def killed_at_step_3(seeds, processor):  # (seeds from 10**6 on: the correlation's pictures)
        step = seeds[0] // 2
        if step == 3:
            raise KeyboardInterrupt
        if seeds[0] < 10**6:
            drawn.append(step)
        return real_batch(seeds, processor)

    monkeypatch.setattr(depth_estimator, "batch", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        depth_estimator.train(tmp_path / "resumed", **args)
    assert drawn == [0, 1, 2] and common.checkpoint_step(common.find_checkpoint(tmp_path / "resumed")) == 2
    monkeypatch.setattr(depth_estimator, "batch", lambda seeds, processor: (
        seeds[0] < 10**6 and drawn.append(seeds[0] // 2), real_batch(seeds, processor))[1])
    drawn.clear()
    depth_estimator.train(tmp_path / "resumed", **args)
    assert drawn == [2, 3]  # resumed at the checkpoint, not restarted
    monkeypatch.setattr(depth_estimator, "batch", real_batch)
    depth_estimator.train(tmp_path / "whole", **args)
    a, b = (DPTForDepthEstimation.from_pretrained(tmp_path / run / "checkpoint" / "depth_estimator")
            for run in ("resumed", "whole"))
    for (key, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), key
    rows = [dict(field.split("=") for field in line.split(",")[1:]) | {"step": line.split(",")[0]}
            for line in (tmp_path / "resumed" / "log.csv").read_text().splitlines()]
    measured = [row for row in rows if "depth_corr" in row]
    assert [row["step"] for row in measured] == ["2", "4"]  # at each checkpoint, once
    assert all(-1 <= float(row["depth_corr"]) <= 1 for row in measured)


def test_a_logged_step_that_is_also_a_checkpoint_is_one_log_row(tmp_path, monkeypatch):
    """The depth estimator logs its loss every LOG_EVERY steps and loss + correlation at each
    checkpoint: where both fall on one step, one row (it wrote two before)."""
    from sdcourse.train import depth_estimator

    monkeypatch.setattr(depth_estimator, "LOG_EVERY", 1)
    depth_estimator.train(tmp_path, steps=2, batch_size=2, save_every=2)
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["1", "2"]
    assert "depth_corr=" not in rows[0] and "loss=" in rows[1] and "depth_corr=" in rows[1]


@pytest.mark.parametrize("call, message", [
    (lambda out: vae.train(out, save_every=0), r"save_every must be a whole number of at least 1, got 0"),
    (lambda out: vae.train(out, stop_at=0), r"stop_at must be .* at least 1, got 0"),
    (lambda out: vae.train(out, steps=2.5), r"steps must be .* got 2.5"),
    (lambda out: __import__("sdcourse.train.depth_estimator").train.depth_estimator.train(out, steps=0),
     r"steps must be .* at least 1, got 0"),
    (lambda out: __import__("sdcourse.train.text2img").train.text2img.train(
        out, vae_path=out, tokenizer_path=out, save_every=0), r"save_every must be"),
])
def test_the_trainers_refuse_bad_counts_before_any_work(tmp_path, call, message):
    """save_every=0 used to stop with a division by zero after the training set was encoded,
    stop_at=0 meant "no stop" and steps=0 returned an untrained model."""
    with pytest.raises(ValueError, match=message):
        call(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_stop_before_the_checkpoint_is_refused_not_passed_over(tmp_path, vae_steps, capsys):
    """A run at step 2 asked to stop at 1 would train nothing and return (or --publish) the
    model of step 2: refused in one line, in the API and on the command line (status 2)."""
    from sdcourse.cli import main

    args = dict(steps=4, batch_size=2, freeze_encoder_at=None, save_every=2, eval_every=100)
    vae.train(tmp_path, stop_at=2, **args)
    with pytest.raises(common.RunMismatchError, match=r"already at step 2, past --stop-at 1: .*another --out"):
        vae.train(tmp_path, stop_at=1, **args)
    vae.train(tmp_path, stop_at=2, **args)  # where it is: nothing to do, no error
    assert main(["train", "vae", "--out", str(tmp_path), "--steps", "4", "--stop-at", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdcourse: error: ") and "past --stop-at 1" in err and "\n" not in err


def test_a_checkpoint_folder_without_its_state_is_damaged_not_absent(tmp_path, vae_steps):
    """A checkpoint/ with no state.json (a partial copy) was taken for no checkpoint: training
    began again from step 0 and the whole log was dropped."""
    (tmp_path / "checkpoint" / "vae").mkdir(parents=True)
    (tmp_path / "log.csv").write_text("20,loss=0.1\n")
    with pytest.raises(common.CheckpointError, match=r"checkpoint cannot be resumed from \(no state.json"):
        vae.train(tmp_path, steps=2, batch_size=2, save_every=1)
    assert (tmp_path / "log.csv").read_text() == "20,loss=0.1\n"


def test_the_training_time_glance_measures_the_shipped_model_as_the_evaluation_does():
    """``quick_eval`` (logged during text2img training) scores prompt fidelity at guidance 7.5
    and 1.0: on the shipped model guidance must matter there too, and the text encoder goes
    back to the mode training had it in."""
    from sdcourse.models import load_pipeline
    from sdcourse.train import text2img

    pipe = load_pipeline("text2img", model="mini", device="cpu", verbose=False)
    pipe.text_encoder.train()
    glance = text2img.quick_eval(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, n=16)
    assert set(glance) == {f"{k}{s}" for k in ("color_acc", "shape_acc", "background_acc")
                           for s in ("", "_g1")}
    assert glance["color_acc"] >= 0.8 and glance["background_acc"] >= 0.9
    assert glance["color_acc"] > glance["color_acc_g1"]
    assert pipe.text_encoder.training


MINI = Path(__file__).resolve().parent.parent / "sdcourse" / "mini"


@pytest.fixture(scope="module")
def shipped_vae():
    return AutoencoderKL.from_pretrained(MINI / "vae", torch_dtype=torch.float32).eval()


@torch.no_grad()
def test_the_shipped_scaling_factor_gives_latents_unit_variance(shipped_vae):
    """What the factor is for: scaled latents of pictures it was not measured on have a
    standard deviation near 1, the noise's, so the scheduler's noise levels mean what they say."""
    x = world.images_to_tensor([s.image for s in world.dataset(128, seed=4242)])
    z = shipped_vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    std = float((z * shipped_vae.config.scaling_factor).std())
    assert 0.9 < std < 1.1, std


@torch.no_grad()
def test_depth_training_condition_is_what_the_depth2img_pipeline_feeds_its_unet():
    """The depth UNet learns from depth_condition(); at generation it gets the pipeline's
    prepare_depth_map() of the same map. Called here on real depth maps, they must agree."""
    from types import SimpleNamespace

    from diffusers import StableDiffusionDepth2ImgPipeline

    from sdcourse.train.text2img import depth_condition

    samples = world.dataset(4, seed=5)
    depth = torch.from_numpy(__import__("numpy").stack([s.depth for s in samples])).float()
    images = world.images_to_tensor([s.image for s in samples])
    pipeline_side = StableDiffusionDepth2ImgPipeline.prepare_depth_map(
        SimpleNamespace(vae_scale_factor=8), images, depth, 4, False, torch.float32, torch.device("cpu"))
    ours = depth_condition(depth, 8)
    assert ours.shape == pipeline_side.shape == (4, 1, 8, 8)
    torch.testing.assert_close(ours, pipeline_side)


@torch.no_grad()
def test_inpaint_training_condition_is_what_the_inpaint_pipeline_feeds_its_unet(shipped_vae):
    """The inpainting UNet's extra channels at training (mask, then the masked picture's
    latents) against StableDiffusionInpaintPipeline.prepare_mask_latents() on the same
    pictures and masks: the same mask, and latents that differ only by the VAE's sampling
    noise (the pipeline samples the posterior; training takes its mean)."""
    import random
    from types import SimpleNamespace

    from diffusers import StableDiffusionInpaintPipeline

    from sdcourse.train.text2img import encode_dataset, random_inpaint_mask

    data, scenes = encode_dataset(shipped_vae, 4, seed=5, task="inpaint")
    samples = world.dataset(4, seed=5)
    rng = random.Random(5)
    mask = torch.stack([random_inpaint_mask(s.scene, rng) for s in samples])[:, None]
    image = world.images_to_tensor([s.image for s in samples])
    pipe = SimpleNamespace(vae=shipped_vae, vae_scale_factor=8)
    pipe._encode_vae_image = lambda im, generator: StableDiffusionInpaintPipeline._encode_vae_image(
        pipe, im, generator)
    mask_in, latents_in = StableDiffusionInpaintPipeline.prepare_mask_latents(
        pipe, mask, image * (mask < 0.5), 4, 64, 64, torch.float32, torch.device("cpu"),
        torch.Generator().manual_seed(0), False)
    assert data["extra"].shape == (4, 5, 8, 8)
    torch.testing.assert_close(data["extra"][:, :1], mask_in)
    noise = shipped_vae.config.scaling_factor * shipped_vae.encode(image * (mask < 0.5)).latent_dist.std
    z = (latents_in - data["extra"][:, 1:]) / noise  # the pipeline's draw, in posterior stds
    assert float(z.abs().max()) < 5 and 0.8 < float(z.std()) < 1.2 and abs(float(z.mean())) < 0.2


def test_a_new_accelerator_with_other_settings_replaces_the_processs_one():
    """accelerate keeps one state per process: a mini trainer (CPU, no mixed precision) and
    then DreamBooth (fp16 on a GPU) in one notebook stopped with "restart your runtime".
    On a CPU the same happens with bf16; the second accelerator now gets its own settings."""
    from accelerate.state import AcceleratorState

    try:
        assert common.mini_accelerator().mixed_precision == "no"
        assert common.new_accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
        assert common.mini_accelerator().mixed_precision == "no"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_the_fp16_loss_scale_goes_through_the_checkpoint(tmp_path):
    """A run resumed on a GPU in fp16 goes on at the loss scale it had reached, not 2**16
    again (whose overflowing first steps would be skipped while the step count went on)."""
    from types import SimpleNamespace

    trained = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trained._growth_tracker = torch.tensor(37)  # (what steps without overflow count up)
    model, optimizer = torch.nn.Linear(2, 2), None
    optimizer = torch.optim.AdamW(model.parameters())
    common.save_checkpoint(tmp_path, 5, {}, optimizer,
                           {"kind": "dreambooth", **common.scaler_state(SimpleNamespace(scaler=trained))})
    resumed = torch.amp.GradScaler("cpu")  # a fresh one: 65536
    common.restore_scaler(SimpleNamespace(scaler=resumed), common.find_checkpoint(tmp_path))
    assert resumed.get_scale() == 1024.0 and resumed.state_dict()["_growth_tracker"] == 37
    assert common.scaler_state(SimpleNamespace(scaler=None)) == {}  # no fp16: nothing kept
    common.restore_scaler(SimpleNamespace(scaler=None), common.find_checkpoint(tmp_path))


def test_the_command_line_refuses_another_trainers_folder_before_torch_loads(tmp_path):
    """`sdcourse train depth-estimator --out` a VAE's run folder, and `--stop-at` a step the run
    is past, are one line (status 2) before torch, diffusers and transformers import: seconds
    saved on every mistake (15 s on a busy 2-core machine)."""
    import subprocess
    import sys

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps({"step": 5, "kind": "vae"}))
    check = ("import sys; from sdcourse.cli import main; status = main(sys.argv[1:]); "
             "print(status, 'torch' in sys.modules)")
    for argv, message in ((["depth-estimator"], "holds a vae training run, not depth-estimator"),
                          (["vae", "--stop-at", "3"], "already at step 5, past --stop-at 3")):
        done = subprocess.run([sys.executable, "-c", check, "train", *argv, "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
        assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------ one trainer per run folder

@pytest.mark.skipif(os.name != "posix", reason="run folders are locked on POSIX only")
def test_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path, hold_run_folder):
    """Two trainers in one folder would swap in each other's half-written checkpoints: the
    second stops with one line naming the first's pid, before any step; the lock ends with
    the trainer's call (here a finished run) or with its process (here a kill: nothing stale
    is left to remove by hand)."""
    out = tmp_path / "run"
    child = hold_run_folder(out)
    with pytest.raises(common.RunMismatchError, match=rf"^{out} is being trained by another "
                       rf"process \(pid {child.pid}\): wait for it to finish, or give another --out$"):
        vae.train(out, steps=1, batch_size=2, save_every=1, eval_every=0)
    assert common.find_checkpoint(out) is None
    child.kill()
    child.wait()
    vae.train(out, steps=1, batch_size=2, save_every=1, eval_every=0)  # the dead process's lock is gone
    assert common.checkpoint_step(common.find_checkpoint(out)) == 1
    child = hold_run_folder(out)  # and the finished call released it
    child.stdin.close()
    assert child.wait() == 0
