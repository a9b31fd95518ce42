from transformers import CLIPTokenizer

from sdcourse.models import MINI_DIR


def tokenizer():
    return CLIPTokenizer.from_pretrained(MINI_DIR / "tokenizer")


def test_ids_match_stable_diffusion_1x():
    tok = tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_padding_and_truncation_to_77():
    tok = tokenizer()
    ids = tok("a red circle on a blue background", padding="max_length", max_length=77,
              truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == tok.pad_token_id == 49407
    long = tok(" ".join(["red"] * 200), padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[-1] == 49407  # truncated, still ends with end-of-text
