"""Build Stable Diffusion 1.x's CLIP tokenizer offline, from the real CLIP BPE vocabulary.

OpenAI's CLIP ships its byte-pair-encoding merges as ``bpe_simple_vocab_16e6.txt.gz`` (it is
inside the ``open-clip-torch`` wheel). The vocabulary is built from it exactly as CLIP does:
the 256 byte symbols, the same with the end-of-word mark ``</w>``, one token per merge
(48,894 of them), then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408 tokens, the same ids
as ``openai/clip-vit-large-patch14`` (so "a photo of a cat" -> 49406 320 1125 539 320 2368 49407).

The shipped ``sdcourse/mini/tokenizer`` was built by this module (it is not imported by the
course; open-clip-torch is not a dependency: download its wheel and unzip that one file)::

    python -m sdcourse.train.tokenizer open_clip/bpe_simple_vocab_16e6.txt.gz sdcourse/mini/tokenizer
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from transformers import CLIPTokenizer

from .common import new_folder

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
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as f:
        lines = f.read().rstrip("\n").split("\n")
    merges = lines[1:N_MERGES + 1]  # line 0 is a version header
    bad = next((m for m in merges if len(m.split()) != 2), None)
    if len(merges) < N_MERGES or bad is not None:
        found = f"a line {bad[:40]!r} that is no pair" if bad is not None else f"{len(merges)} merges"
        raise ValueError(f"{found} where CLIP's file has {N_MERGES} pairs after its header")
    symbols = list(bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols]
    symbols += ["".join(m.split()) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}, merges


def build_tokenizer(bpe_gz: Path, out: Path) -> CLIPTokenizer:
    """Write vocab.json + merges.txt + config to ``out`` and load them as SD 1.x's tokenizer.

    The folder is built beside ``out`` (``<out>.tmp``) and then swapped in whole: a failure
    half-way leaves the previous tokenizer as it was."""
    vocab, merges = vocab_and_merges(bpe_gz)
    out = Path(out)
    with new_folder(out) as tmp:
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        # transformers 5 ignores vocab_file=/merges_file= keywords: load the folder instead
        tok = CLIPTokenizer.from_pretrained(tmp, model_max_length=77, pad_token="<|endoftext|>")
        tok.save_pretrained(tmp)
        (tmp / "tokenizer.json").unlink()  # 3.6 MB that vocab.json + merges.txt rebuild in 0.1 s
    return CLIPTokenizer.from_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m sdcourse.train.tokenizer BPE_GZ OUT``: build the tokenizer into ``OUT``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m sdcourse.train.tokenizer PATH/bpe_simple_vocab_16e6.txt.gz OUT_DIR",
              file=sys.stderr)
        return 2
    bpe_gz, out = map(Path, args)
    if not bpe_gz.is_file():
        print(f"tokenizer: error: no file {bpe_gz}: give CLIP's bpe_simple_vocab_16e6.txt.gz "
              "(open_clip/ inside the open-clip-torch wheel)", file=sys.stderr)
        return 1
    from ..files import unwritable

    problem = unwritable(out)
    if problem:
        print(f"tokenizer: error: {out}: {problem}: give a folder you can write to", file=sys.stderr)
        return 1
    try:
        tok = build_tokenizer(bpe_gz, out)
    except (gzip.BadGzipFile, EOFError, UnicodeDecodeError) as error:
        print(f"tokenizer: error: {bpe_gz} is not a gzipped UTF-8 merges file "
              f"({type(error).__name__}): give CLIP's bpe_simple_vocab_16e6.txt.gz", file=sys.stderr)
        return 1
    except ValueError as error:  # gzipped text, but not CLIP's merges
        print(f"tokenizer: error: {bpe_gz}: {error}: give CLIP's bpe_simple_vocab_16e6.txt.gz",
              file=sys.stderr)
        return 1
    print(f"wrote {out} ({len(tok)} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
