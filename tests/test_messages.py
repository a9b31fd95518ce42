"""first_line: a library's paragraph of an error becomes one line of ours."""
from sdcourse.messages import first_line


def test_first_line_keeps_the_first_line_cut_at_the_limit():
    error = OSError("  no file named model.safetensors found\n\nsee the docs for ...")
    assert first_line(error) == "no file named model.safetensors found"
    assert first_line(ValueError("x" * 300), limit=10) == "x" * 9 + "…"


def test_a_cut_line_ends_at_a_word_and_says_it_was_cut():
    text = "We couldn't connect to 'https://huggingface.co' to load this model, couldn't find it"
    assert first_line(OSError(text), limit=60) == "We couldn't connect to 'https://huggingface.co' to load…"
    assert len(first_line(OSError(text), limit=60)) <= 60
    assert first_line(OSError(text), limit=len(text)) == text  # what fits is kept whole


def test_an_error_without_text_gives_its_type_or_the_default():
    assert first_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert first_line(TimeoutError(""), default="") == ""


def test_named_leads_with_the_type():
    assert first_line(KeyError("unet.weight"), named=True) == "KeyError: 'unet.weight'"
    assert first_line(ValueError("bad\nmore"), limit=2, named=True) == "ValueError: b…"
    assert first_line(EOFError(), named=True) == "EOFError"


def test_whole_numbers_and_numbers_exclude_bools_and_strings():
    """The one predicate behind every "must be a whole number" / "a number" check."""
    import numpy as np

    from sdcourse.messages import is_number, is_whole

    assert [is_whole(v) for v in (3, np.int64(3), 3.0, "3", True, None)] == [True, True, False, False, False, False]
    assert [is_number(v) for v in (3, 2.5, np.float32(2.5), "2.5", False, None)] == [True, True, True, False, False, False]
