"""Build Stable Diffusion 1.x's CLIP tokenizer offline, from the real CLIP BPE vocabulary.

OpenAI's CLIP ships its byte-pair-encoding merges as ``bpe_simple_vocab_16e6.txt.gz`` (it is
inside the ``open-clip-torch`` wheel). The vocabulary is built from it exactly as CLIP does:
the 256 byte symbols, the same with the end-of-word mark ``</w>``, one token per merge
(48,894 of them), then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408 tokens, the same ids
as ``openai/clip-vit-large-patch14`` (so "a photo of a cat" -> 49406 320 1125 539 320 2368 49407).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from transformers import CLIPTokenizer

N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's map from the 256 byte values to printable characters (BPE works on these)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def vocab_and_merges(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's token -> id table and its merges, from the gzipped merges file."""
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:N_MERGES + 1]  # line 0 is a version header
    symbols = list(bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols]
    symbols += ["".join(m.split()) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}, merges


def build_tokenizer(bpe_gz: Path, out: Path) -> CLIPTokenizer:
    """Write vocab.json + merges.txt + config to ``out`` and load them as SD 1.x's tokenizer."""
    vocab, merges = vocab_and_merges(bpe_gz)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # transformers 5 ignores vocab_file=/merges_file= keywords: load the folder instead
    tok = CLIPTokenizer.from_pretrained(out, model_max_length=77, pad_token="<|endoftext|>")
    tok.save_pretrained(out)
    (out / "tokenizer.json").unlink()  # 3.6 MB that vocab.json + merges.txt rebuild in 0.1 s
    return CLIPTokenizer.from_pretrained(out)
