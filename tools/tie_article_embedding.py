"""Give the shipped mini text encoder's token "an" the embedding of "a" (a one-off step).

Why: the mini model was trained on captions that read "a orange circle on a orange
background"; the world now writes "an orange ...". The encoder never saw "an" in training,
so that token's embedding was still its random start, and a prompt saying "an" put noise
where the model expects its article. "an" is the same word as "a" before a vowel: with the
same embedding, "an orange circle" encodes exactly as "a orange circle" did, so every
picture and every measurement of the shipped model stays what it was. (A model retrained
from scratch learns "an" from the captions and needs no such step.)

Usage: ``python tools/tie_article_embedding.py [TEXT_ENCODER_DIR]`` (default: the package's
``sdcourse/mini/text_encoder``). Only that one row of the embedding table changes; the file
is replaced atomically. Running it again changes nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sdcourse.files import atomic_path
from sdcourse.models import MINI_DIR

EMBEDDING = "embeddings.token_embedding.weight"  # "text_model." before it in older saves
A, AN = 320, 550  # CLIP's ids of "a" and "an" (the tokenizer checks them below)


def tie(folder: Path) -> bool:
    """Copy the embedding of "a" into "an" in ``folder/model.safetensors``; False when they
    were equal already."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(MINI_DIR / "tokenizer")
    ids = [tokenizer(word).input_ids[1:-1] for word in ("a", "an")]
    if ids != [[A], [AN]]:
        sys.exit(f"the tokenizer gives {ids} for 'a' and 'an', not [[{A}], [{AN}]]: not CLIP's vocabulary")
    path = Path(folder) / "model.safetensors"
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    table = next(t for key, t in tensors.items() if key.endswith(EMBEDDING))
    if torch.equal(table[AN], table[A]):
        return False
    table[AN] = table[A]
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return True


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else MINI_DIR / "text_encoder"
    print(f"{target}: 'an' now has the embedding of 'a'" if tie(target) else f"{target}: already tied")
