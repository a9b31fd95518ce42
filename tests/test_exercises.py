"""The exercises' self-check: done, not done yet, not checkable here, and wrong are four outcomes."""
import pytest

import sdcourse as sdc


def _check(answer):
    def check():
        value = answer()
        assert value == 4096, "attention work grows with the square of the number of positions"
        return f"{value} times cheaper"
    return check


def test_a_right_answer_passes(capsys):
    assert sdc.self_check(_check(lambda: (4096 // 64) ** 2), "exercise 2") is True
    assert capsys.readouterr().out.startswith("✓ 4096 times cheaper")


def test_an_untouched_stub_is_reported_not_done(capsys):
    def stub():
        raise NotImplementedError("exercise 2")

    assert sdc.self_check(_check(stub), "exercise 2") is False
    assert "exercise 2 is not done yet" in capsys.readouterr().out


def test_a_wrong_answer_fails_with_the_hint():
    with pytest.raises(AssertionError, match="square of the number of positions"):
        sdc.self_check(_check(lambda: 64), "exercise 2")


def test_a_check_returning_false_fails_and_a_result_is_no_check(capsys):
    """`return False` printed "✓ False" and counted as passed; passing check() instead of check
    was "'str' object is not callable"."""
    with pytest.raises(AssertionError, match="exercise 1: the check returned False"):
        sdc.self_check(lambda: False, "exercise 1")
    with pytest.raises(TypeError, match=r"self_check takes the check function itself, got str "
                       r"'done': write self_check\(check_exercise_1, ...\), without \(\)"):
        sdc.self_check("done", "exercise 1")
    assert capsys.readouterr().out == ""


def test_a_check_that_cannot_judge_here_says_so_without_a_tick(capsys):
    def check():
        raise sdc.CheckSkipped("the pixel reader knows the mini world only")

    assert sdc.self_check(check, "exercise 3") is False
    out = capsys.readouterr().out
    assert out.startswith("SKIPPED: exercise 3 not checked: the pixel reader knows the mini world only")
    assert "✓" not in out


def test_a_check_can_say_what_is_still_missing_and_where(capsys):
    """An exercise that changes a function met earlier has no stub: the check sees the old
    behaviour and says which change is missing and where, rather than "the cell above"."""
    def check():
        raise sdc.NotDoneYet("generate still gives one latent for two prompts: change it in section 1")

    assert sdc.self_check(check, "exercise 1") is False
    assert capsys.readouterr().out == ("○ exercise 1 is not done yet: generate still gives one latent "
                                       "for two prompts: change it in section 1, then run this cell again\n")


def test_empty_messages_still_read_as_sentences(capsys):
    """A NotDoneYet without a message points at the cell above, as an untouched stub does; a
    check that returns nothing prints that the exercise passed, not "✓ None"."""
    def not_done():
        raise sdc.NotDoneYet()

    assert sdc.self_check(not_done, "exercise 1") is False
    assert capsys.readouterr().out == ("○ exercise 1 is not done yet: complete it in the cell above, "
                                       "then run this cell again\n")
    for returned in (None, ""):
        assert sdc.self_check(lambda: returned, "exercise 2") is True
        assert capsys.readouterr().out == "✓ exercise 2 passed\n"


def test_a_librarys_not_implemented_error_is_no_stub(capsys):
    """PyTorch says "The operator ... is not currently implemented for the MPS device" with a
    NotImplementedError: inside a check, that is a failure to show, not "not done yet"."""
    import torch

    def check():  # torch raises NotImplementedError from its own code (a module without forward)
        torch.nn.Module()(torch.zeros(1))

    with pytest.raises(NotImplementedError):
        check()  # what torch raises, from torch's own frames
    with pytest.raises(NotImplementedError):
        sdc.self_check(check, "exercise 2")
    assert "not done yet" not in capsys.readouterr().out


def test_a_compiled_functions_not_implemented_error_is_no_stub(capsys):
    """A NotImplementedError raised in compiled code (a C++ operator) called straight from the
    learner's line has no library frame: the line that raised is a call, not a ``raise``, so
    it is a failure to show, not "not done yet"."""
    import io

    def check():
        io.RawIOBase().read(1)  # C code that raises NotImplementedError (no readinto)

    with pytest.raises(NotImplementedError):
        sdc.self_check(check, "exercise 2")
    assert "not done yet" not in capsys.readouterr().out
