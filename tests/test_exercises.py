"""The exercises' self-check: done, not done yet, and wrong are three different outcomes."""
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
