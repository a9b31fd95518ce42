"""Train one DreamBooth variant on the mini model and measure it: the recipe's robustness.

`sdcourse evaluate dreambooth [--train-seed N]` measures the shipped recipe (with and without
prior preservation). This script measures *other* settings, one run with prior preservation
each, to compare recipes across training seeds without editing the package:

    python benchmarks/dreambooth_sweep.py lora_s1 '{"seed": 1, "lora": true, "lr": 0.003}'
    python benchmarks/dreambooth_sweep.py ohwx_s0 '{"seed": 0, "token": "ohwx"}'

SETTINGS (JSON) override `EVAL_SETTINGS` of `sdcourse.dreambooth_subject`, plus "token" (the
rare token) and "prior" (false: without prior preservation). The run goes to
`runs/dreambooth_sweep/NAME` (`--root`); it prints one JSON line (also in `result.json`
there) and saves `grid.png`: eight "a TOKEN circle on a green background" pictures over
eight on red (a background the instance pictures had). About 4 minutes on one CPU thread.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the run's folder name")
    parser.add_argument("settings", nargs="?", default="{}", help="JSON object of overrides")
    parser.add_argument("--root", type=Path, default=Path("runs/dreambooth_sweep"))
    parser.add_argument("--n", type=int, default=50, help="evaluation pictures per measure")
    args = parser.parse_args(argv)
    try:
        over = json.loads(args.settings)
    except json.JSONDecodeError as error:
        parser.error(f"SETTINGS is not JSON ({error}): write it like '{{\"seed\": 1}}'")
    if not isinstance(over, dict):
        parser.error("SETTINGS must be a JSON object, e.g. '{\"seed\": 1}'")

    import torch
    from diffusers.utils import make_image_grid

    from sdcourse import dreambooth_subject as ds
    from sdcourse.train.dreambooth import load_dreambooth

    token, prior = over.pop("token", ds.TOKEN), over.pop("prior", True)
    out = args.root / args.name
    start = time.perf_counter()
    ds.train_subject(out, prior=prior, token=token, class_dir=args.root / "class_images", **over)
    seconds = time.perf_counter() - start
    pipe = load_dreambooth(out)
    pipe.set_progress_bar_config(disable=True)
    result = ds.measure(pipe, args.n, 1234, token=token)
    result.update(train_s=round(seconds, 1), token=token, prior=prior, settings=over)
    pictures = []
    for background in ("green", "red"):
        pictures += pipe([ds.subject_prompt(background, token)] * 8, num_inference_steps=25,
                         generator=torch.Generator().manual_seed(1234)).images
    make_image_grid(pictures, 2, 8).save(out / "grid.png")
    (out / "result.json").write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
