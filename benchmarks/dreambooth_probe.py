"""Where does a DreamBooth run keep its subject? Swap parts of the text encoder's output.

The mini UNet reads a caption through cross-attention over the text encoder's 77 output
vectors. Because the encoder is causal, the vectors at and after the end-of-text token sum up
the whole sentence. This script takes a trained run (e.g. one of `dreambooth_sweep.py`'s)
and draws "a sks circle on a green / red background" from mixed encoder outputs:

- the red prompt with its background words' own vectors taken from the green prompt;
- the green prompt with its end-of-text vectors taken from the red prompt, and the reverse;

then reports, for each, the share of pictures showing the subject and the background drawn.
It also prints how far "sks" moves the end-of-text vectors away from an ordinary colour word
("purple", the base model's reading of "sks") on each background: the tuned encoder's shift on
the instance backgrounds against the unseen green one.

    python benchmarks/dreambooth_probe.py runs/dreambooth_sweep/s450lr4_s1

About a minute on one CPU thread; prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a DreamBooth run folder (or its pipeline folder)")
    parser.add_argument("--n", type=int, default=16, help="pictures per variant")
    parser.add_argument("--reference", default="purple", help="the colour word to measure against")
    args = parser.parse_args(argv)
    if not args.run.exists():
        parser.error(f"{args.run} does not exist: give a folder written by train_dreambooth")

    import torch

    from sdcourse import dreambooth_subject as ds
    from sdcourse.evaluate import read_image
    from sdcourse.train.dreambooth import DreamBoothError, load_dreambooth

    try:
        pipe = load_dreambooth(args.run)  # the run folder or its pipeline folder
    except DreamBoothError as error:
        parser.error(str(error))
    pipe.set_progress_bar_config(disable=True)
    eos = pipe.tokenizer.eos_token_id

    def encode(prompt: str) -> tuple[torch.Tensor, int]:
        """The encoder's output (1, 77, width) and the end-of-text token's position."""
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        with torch.no_grad():
            return pipe.text_encoder(ids.to(pipe.device))[0], int((ids[0] == eos).nonzero()[0])

    def draw(hidden: torch.Tensor) -> dict:
        images = pipe(prompt_embeds=hidden.expand(args.n, -1, -1), num_inference_steps=25,
                      generator=torch.Generator().manual_seed(1234)).images
        backgrounds = Counter(read_image(im).background for im in images)
        return {"subject": round(sum(map(ds.detect_subject, images)) / args.n, 2),
                "background": backgrounds.most_common(1)[0][0]}

    def swapped(hidden: torch.Tensor, donor: torch.Tensor, positions: slice) -> torch.Tensor:
        """``hidden`` with the vectors at ``positions`` taken from ``donor``."""
        mixed = hidden.clone()
        mixed[:, positions] = donor[:, positions]
        return mixed

    green, end = encode(ds.subject_prompt("green"))
    red, _ = encode(ds.subject_prompt("red"))  # one-token colour words: the same positions
    words, summary = slice(end - 2, end), slice(end, None)  # "... <colour> background" | "<end> ..."
    result = {"run": str(args.run), "green": draw(green), "red": draw(red),
              "red, background words from green": draw(swapped(red, green, words)),
              "green, end-of-text vectors from red": draw(swapped(green, red, summary)),
              "red, end-of-text vectors from green": draw(swapped(red, green, summary))}

    shift = {}
    for background in ds.INSTANCE_BACKGROUNDS + ds.UNSEEN_BACKGROUNDS:
        token, at = encode(ds.subject_prompt(background))
        plain, _ = encode(ds.subject_prompt(background, token=args.reference))
        shift[background] = round(float((token - plain)[0, at:].norm(dim=-1).mean()), 2)
    result[f"end-of-text shift from '{args.reference}'"] = shift
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
