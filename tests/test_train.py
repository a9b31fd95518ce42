"""The trainers' mechanics on a few steps: freezing, checkpoints, resume (no quality here)."""
import torch
from diffusers import AutoencoderKL

from sdcourse.train import common, vae


def test_vae_freezes_encoder_and_resumes_from_checkpoint(tmp_path):
    out = tmp_path / "vae"
    vae.train(out, steps=4, batch_size=2, freeze_encoder_at=2, save_every=2, eval_every=100)
    assert common.checkpoint_step(common.find_checkpoint(out)) == 4
    snapshot = AutoencoderKL.from_pretrained(out / "frozen_encoder_vae")
    assert snapshot.config.scaling_factor != 0.18215  # measured on data, not copied from SD
    after = AutoencoderKL.from_pretrained(out / "checkpoint" / "vae")
    for a, b in zip(snapshot.encoder.parameters(), after.encoder.parameters()):
        assert torch.equal(a, b)  # the latent space did not move after the freeze
    assert any(not torch.equal(a, b) for a, b in zip(snapshot.decoder.parameters(),
                                                         after.decoder.parameters()))
    # a second call resumes at step 4 and runs only the missing steps
    vae.train(out, steps=6, batch_size=2, freeze_encoder_at=2, save_every=2, eval_every=100)
    assert common.checkpoint_step(common.find_checkpoint(out)) == 6
    lines = (out / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines if "psnr" in line] == ["4", "6"]
    assert not (out / "checkpoint.tmp").exists() and not (out / "checkpoint.old").exists()
