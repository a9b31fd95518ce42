"""Does a DreamBooth LoRA on Stable Diffusion fit a free Colab T4? Measure its GPU memory.

Notebook 07 claims that `train_dreambooth(..., lora=True, batch_size=1,
gradient_checkpointing=True)` on a real checkpoint fits a T4's 15 GiB. The Hub is not
reachable where the course is built, so this script builds the real SD 2.1-base architecture
(the registry's first text2img checkpoint: 866 M-parameter UNet, 340 M text encoder, 84 M
VAE) with random weights from its published configs (`sdcourse.bench`), saves it as an
ordinary diffusers folder with fp16 files (as the Hub serves it), and runs the course's own
trainer on it at 512 px with prior preservation, in several settings:

- the first run draws the class pictures with the base model (a peak of its own);
- then LoRA training with 1 or 2 pictures per step (each plus as many class pictures), with
  and without gradient checkpointing.

For each it reports the peak of `torch.cuda.max_memory_allocated` (bytes in tensors) and of
`torch.cuda.max_memory_reserved` (what PyTorch's allocator held from the GPU: the figure to
compare with a card's memory) over the whole run: loading, encoding the pictures, training. Memory does not depend on
the weights' values, so random weights give the real figure; the losses are meaningless.

    python benchmarks/dreambooth_memory.py --json benchmarks/results/dreambooth-memory-h100.json

Needs a CUDA GPU (a minute or two on an H100). `--base mini` runs the same plumbing on the
mini model on any device, to check the script itself in seconds.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

#: (pictures per step, gradient checkpointing) for each timed run; each step also trains on
#: as many class pictures (prior preservation)
SETTINGS = [(1, True), (1, False), (2, True), (4, True)]


def build_sd21_folder(folder: Path) -> Path:
    """Save a random-weight SD 2.1-base pipeline to ``folder`` in fp16 files (variant fp16)."""
    import torch

    from sdcourse.bench import _real_pipeline

    pipe = _real_pipeline(torch.float16)
    pipe.save_pretrained(folder, variant="fp16")
    return folder


def peak(device) -> dict:
    import torch

    if device != "cuda":
        return {"allocated_gib": None, "reserved_gib": None}
    gib = 1024 ** 3
    return {"allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 2),
            "reserved_gib": round(torch.cuda.max_memory_reserved() / gib, 2)}


def reset(device) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", choices=("sd21", "mini"), default="sd21",
                        help="sd21: the real architecture, random weights (GPU); mini: a quick check")
    parser.add_argument("--steps", type=int, default=10, help="training steps per setting")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.base == "sd21" and device != "cuda":
        parser.error("--base sd21 needs a CUDA GPU (on a CPU one step takes minutes); "
                     "use --base mini to check the script")

    from sdcourse import dreambooth_subject as subject
    from sdcourse.train.dreambooth import train_dreambooth

    work = Path(tempfile.mkdtemp(prefix="dreambooth_memory_"))
    results = {"base": args.base, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "torch": torch.__version__, "steps": args.steps, "runs": []}
    try:
        base = build_sd21_folder(work / "sd21") if args.base == "sd21" else None
        instance = subject.make_instance_images(5)  # the trainer resizes them to the model's 512 px
        prompts = subject.instance_prompts(5)
        common = dict(base=base, lora=True, lr=1e-4, class_dir=work / "class_images",
                      num_class_images=4, validate_every=0, seed=0)
        class_prompt = subject.class_prompts(4)

        def run(name: str, batch: int, checkpointing: bool, steps: int) -> dict:
            reset(device)
            start = time.perf_counter()
            train_dreambooth(instance, prompts, class_prompt, out=work / name, steps=steps,
                             save_every=steps, batch_size=batch, gradient_checkpointing=checkpointing,
                             **common)
            return {"seconds": time.perf_counter() - start, **peak(device)}

        # 1. class pictures (4, drawn by the base model at 512 px) and one training step
        first = run("class_pictures", 1, True, 1)
        results["runs"].append({"what": "draw 4 class pictures + 1 LoRA step (batch 1, checkpointing)",
                                **first})
        print(json.dumps(results["runs"][-1]), flush=True)
        # 2. each setting: a short run from scratch (the class pictures are reused). Only
        #    memory is reported: each run's time is mostly loading the model, whose time
        #    varies more between runs than ten training steps take
        for batch, checkpointing in SETTINGS:
            name = f"b{batch}{'_ckpt' if checkpointing else ''}"
            result = run(name, batch, checkpointing, args.steps)
            results["runs"].append({
                "what": f"LoRA rank 16, {batch} + {batch} class picture(s) per step, "
                        f"gradient checkpointing {'on' if checkpointing else 'off'}",
                "pictures_per_step": 2 * batch, "gradient_checkpointing": checkpointing,
                "allocated_gib": result["allocated_gib"], "reserved_gib": result["reserved_gib"]})
            print(json.dumps(results["runs"][-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
