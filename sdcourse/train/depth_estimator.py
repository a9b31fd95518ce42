"""Train the mini depth estimator: a small DPT (the architecture SD 2's depth model uses).

``StableDiffusionDepth2ImgPipeline`` estimates depth with a ``DPTForDepthEstimation`` fed by a
DPT image processor. Ours is the same architecture, tiny (a 4-layer ViT on 8x8 patches of a
64x64 picture), trained to regress the synthetic world's depth maps (larger = nearer, like
the relative inverse depth DPT predicts).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DPTConfig, DPTForDepthEstimation
from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

from .. import world
from . import common

DPT_CONFIG = dict(
    image_size=world.SIZE, patch_size=8, hidden_size=64, num_hidden_layers=4,
    num_attention_heads=4, intermediate_size=128, backbone_out_indices=(0, 1, 2, 3),
    neck_hidden_sizes=(16, 32, 64, 64), reassemble_factors=(2, 1, 0.5, 0.25),
    fusion_hidden_size=32, use_auxiliary_head=False, readout_type="project",
)


LOG_EVERY = 25  # steps between the loss log's rows (and a row at each checkpoint)


def image_processor() -> DPTImageProcessorPil:
    """DPT's preprocessing at 64x64 (the PIL backend: it needs no torchvision)."""
    return DPTImageProcessorPil(size={"height": world.SIZE, "width": world.SIZE},
                                keep_aspect_ratio=False, ensure_multiple_of=1)


def batch(seeds, processor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training pictures of these seeds: :func:`as_tensors` of ``world.sample(seed)``."""
    return as_tensors([world.sample(s) for s in seeds], processor)


def as_tensors(samples, processor) -> tuple[torch.Tensor, torch.Tensor]:
    """World samples -> (the estimator's input pixels, their true depth maps)."""
    pixels = processor([s.image for s in samples], return_tensors="pt").pixel_values
    depth = torch.from_numpy(np.stack([s.depth for s in samples]))
    return pixels, depth


def depth_correlation(model, processor, n: int = 128, seed: int = 77) -> float:
    """Mean per-image Pearson correlation of predicted and true depth on fresh pictures
    (:func:`world.evaluation_scenes`: none of them a training picture, whatever the seed)."""
    pixels, depth = as_tensors([world.render(s) for s in world.evaluation_scenes(n, seed)], processor)
    with torch.no_grad():
        pred = model(pixel_values=pixels).predicted_depth
    pred = F.interpolate(pred[:, None], size=depth.shape[-2:], mode="bilinear")[:, 0]
    p, d = pred.flatten(1), depth.flatten(1)
    p, d = p - p.mean(1, keepdim=True), d - d.mean(1, keepdim=True)
    return float(((p * d).sum(1) / (p.norm(dim=1) * d.norm(dim=1) + 1e-8)).mean())


@common.releases_run
def train(out: Path, steps: int = 1500, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
          save_every: int = 250) -> DPTForDepthEstimation:
    """Train (or resume) the depth estimator in ``out``: a warm-up over 100 steps, then a
    cosine decay over ``steps``. The checkpoint records the run's settings (all but
    ``save_every``): resuming with others, or in a folder another trainer wrote, stops at
    once with one line (:func:`common.resume_point`); a finished run may go on with more
    ``steps``."""
    out = Path(out)
    settings = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    common.check_counts(steps=steps, batch_size=batch_size, save_every=save_every)
    ckpt = common.resume_point(out, "depth-estimator", settings)  # before out is made
    common.claim_run(out)  # makes out; one trainer at a time
    torch.manual_seed(seed)
    accelerator = common.mini_accelerator()
    processor = image_processor()
    with common.resuming(ckpt):
        model = (DPTForDepthEstimation.from_pretrained(ckpt / "depth_estimator", use_safetensors=True)
                 if ckpt else DPTForDepthEstimation(DPTConfig(**DPT_CONFIG)))
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        start = common.load_optimizer(optimizer, ckpt) if ckpt else 0
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    common.trim_log(out, start)
    bar = common.progress(range(start, steps), initial=start, total=steps, desc="depth estimator",
                          mininterval=5)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        pixels, depth = batch(range(seed * 10**9 + step * batch_size,
                                    seed * 10**9 + (step + 1) * batch_size), processor)
        pred = model(pixel_values=pixels.to(accelerator.device)).predicted_depth
        loss = F.mse_loss(pred, depth.to(pred.device))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.5f}")
        done = step + 1
        values = {"loss": loss.item()}
        checkpoint = done % save_every == 0 or done == steps
        if checkpoint:
            model.eval()
            values["depth_corr"] = depth_correlation(accelerator.unwrap_model(model), processor)
            model.train()
        if done % LOG_EVERY == 0 or checkpoint:  # one row per step
            common.append_log(out, done, **values)
        if checkpoint:
            common.save_checkpoint(out, done, {"depth_estimator": accelerator.unwrap_model(model)},
                                   optimizer, common.run_record("depth-estimator", settings))
    return accelerator.unwrap_model(model).eval()


def publish(model: DPTForDepthEstimation, mini_dir: Path) -> None:
    """Ship the estimator (fp16 safetensors) and its image processor config."""
    common.publish(model, Path(mini_dir) / "depth_estimator", fp16=True)
    common.save_folder(image_processor(), Path(mini_dir) / "depth_processor")
