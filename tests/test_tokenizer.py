import pytest
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


def clip_merges_gz(folder):
    """CLIP's ``bpe_simple_vocab_16e6.txt.gz`` as the builder reads it (its header line, then
    the merges), remade from the shipped merges.txt: open-clip-torch is not a dependency."""
    import gzip

    merges = (MINI_DIR / "tokenizer" / "merges.txt").read_text(encoding="utf-8").split("\n", 1)[1]
    path = folder / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + merges)
    return path


def test_the_builder_reproduces_the_shipped_tokenizer(tmp_path):
    """`python -m sdcourse.train.tokenizer` on CLIP's merges writes the shipped files byte for
    byte, replacing what was in the folder (a stale tokenizer.json would take precedence)."""
    from sdcourse.train import tokenizer as builder

    out = tmp_path / "tokenizer"
    out.mkdir()
    (out / "tokenizer.json").write_text("{stale")
    assert builder.main([str(clip_merges_gz(tmp_path)), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    for name in ("vocab.json", "merges.txt"):
        assert (out / name).read_bytes() == (MINI_DIR / "tokenizer" / name).read_bytes(), name
    tok = CLIPTokenizer.from_pretrained(out)
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe_simple_vocab_16e6.txt.gz", "tokenizer"]


def test_a_failed_build_leaves_the_previous_tokenizer_whole(tmp_path, monkeypatch):
    from sdcourse.train import tokenizer as builder

    out = tmp_path / "tokenizer"
    out.mkdir()
    (out / "vocab.json").write_text('{"old": 0}')

    def no_space(self, folder, **kwargs):
        (folder / "tokenizer_config.json").write_text("{half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(builder.CLIPTokenizer, "save_pretrained", no_space)
    gz = clip_merges_gz(tmp_path)
    with pytest.raises(OSError, match="No space left"):
        builder.build_tokenizer(gz, out)
    assert sorted(p.name for p in out.iterdir()) == ["vocab.json"]
    assert (out / "vocab.json").read_text() == '{"old": 0}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [gz.name, "tokenizer"]  # no .tmp left


def test_the_builder_says_in_one_line_what_is_wrong_with_its_input(tmp_path, capsys):
    from sdcourse.train import tokenizer as builder

    out = tmp_path / "tokenizer"
    assert builder.main([str(tmp_path / "missing.gz"), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tokenizer: error: no file {tmp_path / 'missing.gz'}: ")
    assert err.count("\n") == 1
    (tmp_path / "plain.txt").write_text("i n\n")
    assert builder.main([str(tmp_path / "plain.txt"), str(out)]) == 1
    err = capsys.readouterr().err
    assert "is not a gzipped UTF-8 merges file (BadGzipFile)" in err and err.count("\n") == 1
    assert builder.main([str(out)]) == 2 and capsys.readouterr().err.startswith("usage: ")
    import gzip

    with gzip.open(tmp_path / "other.txt.gz", "wt") as f:  # gzipped text, not CLIP's merges
        f.write("#version: 0.2\ni n\nt h\n")
    assert builder.main([str(tmp_path / "other.txt.gz"), str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'other.txt.gz'}: 2 merges where CLIP's file has 48894 pairs" in err
    assert err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "tokenizer.tmp").exists()
    (tmp_path / "a file").write_text("")
    assert builder.main([str(clip_merges_gz(tmp_path)), str(tmp_path / "a file" / "tok")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tokenizer: error: {tmp_path / 'a file' / 'tok'}: ") and err.count("\n") == 1


def test_the_shipped_text_encoder_reads_an_as_a():
    """The mini model learned its captions when they said "a orange circle"; the shipped
    encoder's "an" has the embedding of "a" (tools/tie_article_embedding.py), so the world's
    "an orange circle" encodes exactly as the captions it was trained on, while "the", which
    it never learned, does not."""
    import torch
    from transformers import CLIPTextModel

    tok = tokenizer()
    encoder = CLIPTextModel.from_pretrained(MINI_DIR / "text_encoder")

    def encode(prompt):
        with torch.no_grad():
            return encoder(tok(prompt, return_tensors="pt").input_ids).last_hidden_state

    trained = encode("a orange circle on a orange background")
    assert torch.equal(encode("an orange circle on an orange background"), trained)
    assert not torch.allclose(encode("the orange circle on the orange background"), trained, atol=1e-3)
