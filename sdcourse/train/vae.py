"""Train the mini model's VAE: 64x64x3 pixels <-> 4x8x8 latents, as Stable Diffusion's 8x.

Read it like a lesson: build an ``AutoencoderKL``, show it batches of the synthetic world,
minimise reconstruction error plus a tiny KL term (as SD's VAE does, so latents stay close
to a Gaussian), and finally measure the latents' spread to set ``scaling_factor`` so that
scaled latents have unit variance (SD 1.x's 0.18215 was found the same way on its data).

After ``freeze_encoder_at`` steps only the decoder keeps learning: the latent space no
longer moves, so the text-to-image UNet can already train on it (the encoder is saved with
its scaling factor in ``<out>/frozen_encoder_vae``) while the decoder gets sharper.
"""
from __future__ import annotations

import base64
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from .. import world
from . import common

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=world.SIZE,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 64), layers_per_block=1,
    norm_num_groups=4,  # 4 groups, not 16 (= one channel each): per-channel norm erases flat colours
)
EVAL_SEED = 7  # fresh images for PSNR: seeds far from the training stream


def tensor_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of image tensors in [-1, 1] (peak-to-peak range 2), as
    the trainer sees them; :func:`sdcourse.evaluate.psnr` is the same for 8-bit pictures."""
    mse = F.mse_loss(a.clamp(-1, 1), b.clamp(-1, 1)).item()
    return 10 * math.log10(4 / max(mse, 1e-12))


@torch.no_grad()
def evaluate_psnr(vae: AutoencoderKL, n: int = 64, seed: int = EVAL_SEED, batch: int = 32) -> float:
    """Mean reconstruction PSNR over ``n`` fresh images (posterior mean, no sampling)."""
    x = world.images_to_tensor([s.image for s in world.dataset(n, seed)])
    recon = torch.cat([vae(x[i:i + batch], sample_posterior=False).sample for i in range(0, n, batch)])
    return tensor_psnr(recon, x)


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, n: int = 512, seed: int = 11) -> float:
    """1 / std of latents over fresh images: scaled latents then have unit variance."""
    x = world.images_to_tensor([s.image for s in world.dataset(n, seed)])
    g = torch.Generator().manual_seed(seed)
    z = torch.cat([vae.encode(x[i:i + 64]).latent_dist.sample(generator=g) for i in range(0, n, 64)])
    return float(1.0 / z.std())


def freeze_encoder(vae: AutoencoderKL) -> None:
    """Stop the encoder (and its quant_conv) from learning: the latent space is fixed."""
    for module in (vae.encoder, vae.quant_conv):
        module.requires_grad_(False)


def rng_state() -> dict:
    """The global RNG states (CPU, and CUDA when there is one) as text for ``state.json``.

    ``posterior.sample()`` draws its noise from the global RNG of the VAE's device, seeded once
    per :func:`train` call: saved with each checkpoint and restored on resume, a run stopped
    and resumed draws the same noise as one that never stopped."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return {k: base64.b64encode(v.numpy().tobytes()).decode("ascii") for k, v in states.items()}


def restore_rng_state(checkpoint: Path) -> None:
    """Put back the RNG states :func:`rng_state` saved in ``checkpoint`` (older checkpoints
    have none: their run goes on with fresh noise, as before)."""
    saved = common.checkpoint_state(checkpoint).get("rng", {})
    for device, setter in (("cpu", torch.set_rng_state),
                           ("cuda", torch.cuda.set_rng_state if torch.cuda.is_available() else None)):
        if device in saved and setter is not None:
            setter(torch.frombuffer(bytearray(base64.b64decode(saved[device])), dtype=torch.uint8))


@common.releases_run
def train(out: Path, steps: int = 4000, batch_size: int = 16, lr: float = 5e-4, seed: int = 0,
          freeze_encoder_at: int | None = 1200, save_every: int = 200,
          eval_every: int = 200, kl_weight: float = 1e-6,
          stop_at: int | None = None) -> AutoencoderKL:
    """Train (or resume) the VAE in ``out``; returns it in eval mode.

    The learning rate warms up over 100 steps, then decays along a cosine to 10% at
    ``steps``. ``stop_at``: end early, at this step of that schedule (the shipped VAE is step
    2000 of the default 4000: PSNR 30.6 dB on fresh images, already past the 28 dB target);
    running again with a later ``stop_at`` continues the same schedule, exactly: the
    checkpoint keeps the RNG state too, so stopped and resumed is the uninterrupted run.

    The checkpoint records the run's settings (all but ``save_every``, ``eval_every`` and
    ``stop_at``): resuming with others, or in a folder another trainer wrote, stops at once
    with one line (:func:`common.resume_point`); a finished run may go on with more ``steps``."""
    out = Path(out)
    settings = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                    freeze_encoder_at=freeze_encoder_at, kl_weight=kl_weight)
    common.check_counts(steps=steps, batch_size=batch_size, freeze_encoder_at=freeze_encoder_at,
                        save_every=save_every, eval_every=eval_every, stop_at=stop_at)
    ckpt = common.resume_point(out, "vae", settings, stop_at)  # before out is made or anything loads
    common.claim_run(out)  # makes out; one trainer at a time
    torch.manual_seed(seed)
    accelerator = common.mini_accelerator()
    with common.resuming(ckpt):
        vae = (AutoencoderKL.from_pretrained(ckpt / "vae", use_safetensors=True) if ckpt
               else AutoencoderKL(**VAE_CONFIG))
    start = common.checkpoint_step(ckpt) if ckpt else 0
    # a checkpoint taken at exactly freeze_encoder_at still trains every parameter: the loop
    # freezes (and saves frozen_encoder_vae) at that step, after its optimizer state is loaded
    frozen = freeze_encoder_at is not None and start > freeze_encoder_at
    if frozen:
        freeze_encoder(vae)
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=lr)
    if ckpt is not None:
        with common.resuming(ckpt):
            common.load_optimizer(optimizer, ckpt)
            restore_rng_state(ckpt)

    def lr_at(step):  # warm up for 100 steps, then cosine decay to 10%
        warm = min(1.0, (step + 1) / 100)
        return lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))

    vae, optimizer = accelerator.prepare(vae, optimizer)
    vae.train()
    end = min(steps, stop_at if stop_at is not None else steps)
    common.trim_log(out, start)
    bar = common.progress(range(start, end), initial=start, total=end, desc="vae", mininterval=5)
    for step in bar:
        if not frozen and step == freeze_encoder_at:  # from here on only the decoder learns
            frozen = True
            plain = accelerator.unwrap_model(vae)
            snapshot = out / "frozen_encoder_vae"
            plain.eval()
            plain.register_to_config(scaling_factor=round(latent_scaling_factor(plain), 5))
            common.publish(plain, snapshot, fp16=False)
            plain.train()
            freeze_encoder(plain)
            optimizer = accelerator.prepare(torch.optim.AdamW(
                [p for p in plain.parameters() if p.requires_grad], lr=lr))
            bar.write(f"step {step}: encoder frozen, latent space saved in {snapshot}")
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        seeds = range(seed * 10**9 + step * batch_size, seed * 10**9 + (step + 1) * batch_size)
        x = world.images_to_tensor([world.sample(s).image for s in seeds]).to(accelerator.device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + kl_weight * posterior.kl().mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.5f}")
        done = step + 1
        values = {"loss": loss.item()}
        if (eval_every and done % eval_every == 0) or done == end:
            vae.eval()
            values["psnr"] = evaluate_psnr(accelerator.unwrap_model(vae))
            vae.train()
            bar.write(f"step {done}: psnr {values['psnr']:.2f} dB")
        if done % 20 == 0 or "psnr" in values:
            common.append_log(out, done, **values)
        if done % save_every == 0 or done == end:
            common.save_checkpoint(out, done, {"vae": accelerator.unwrap_model(vae)}, optimizer,
                                   common.run_record("vae", settings, rng=rng_state()))
    vae = accelerator.unwrap_model(vae).eval()
    return vae


def publish(vae: AutoencoderKL, target: Path) -> float:
    """Ship a trained VAE (fp16 safetensors) with its latent scaling factor measured on data."""
    factor = round(latent_scaling_factor(vae.eval()), 5)
    vae.register_to_config(scaling_factor=factor)
    common.publish(vae, target, fp16=True)
    return factor
