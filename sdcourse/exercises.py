"""Self-checks for the notebooks' exercises.

An exercise cell starts as a stub that raises ``NotImplementedError``; its self-check cell
calls :func:`self_check`. While the stub is untouched the check says "not done yet" instead of
failing (so the notebook still runs top to bottom); a wrong answer fails with the check's hint;
a right one prints ✓. A check that cannot judge here (it reads the mini model's world and a
real model is loaded) raises :class:`CheckSkipped`: the cell says so instead of printing ✓.
"""
from __future__ import annotations

from typing import Callable

from .messages import SKIP_MARK


class CheckSkipped(Exception):
    """Raised by a check that cannot judge the answer here; its message says why."""


class NotDoneYet(NotImplementedError):
    """Raised by a check that finds the exercise's code still as it was given, where that code
    is not a stub of its own (the exercise changes a function met earlier); its message says
    what is missing and where to change it."""


def self_check(check: Callable[[], str], exercise: str) -> bool:
    """Run ``check`` (which asserts, and returns the message to show on success).

    Returns True when it passed, False when the exercise is not done yet (``check`` raised
    ``NotImplementedError`` from the notebook's code, as the stubs do, or :class:`NotDoneYet`
    saying what is missing and where) or could not be checked here (``CheckSkipped``); an
    ``AssertionError`` (a wrong answer) propagates with its hint, and so does a
    ``NotImplementedError`` raised inside an installed library (PyTorch's "operator ... not
    implemented for the MPS device"): that is no stub. A :class:`NotDoneYet` without a
    message says "complete it in the cell above", like the stub; a check that returns
    nothing (None or "") prints "✓ <exercise> passed"; one that returns False failed, like
    a failed assert (a check asserts: its False would otherwise read as passed).
    """
    if not callable(check):
        raise TypeError(f"self_check takes the check function itself, got {type(check).__name__} "
                        f"{check!r:.40}: write self_check(check_exercise_1, ...), without ()")
    try:
        message = check()
    except NotImplementedError as missing:
        if not isinstance(missing, NotDoneYet) and not _raised_by_a_stub(missing):
            raise
        what = str(missing).strip() if isinstance(missing, NotDoneYet) else ""
        print(f"○ {exercise} is not done yet: {what or 'complete it in the cell above'}, "
              f"then run this cell again")
        return False
    except CheckSkipped as reason:
        print(f"{SKIP_MARK} {exercise} not checked: {reason}")  # (pytest reports the cell as skipped)
        return False
    if message is False:
        raise AssertionError(f"{exercise}: the check returned False (not passed): look again at "
                             "what the exercise asks")
    text = "" if message is None else str(message)
    print(f"✓ {text if text.strip() else f'{exercise} passed'}")
    return True


def _raised_by_a_stub(error: BaseException) -> bool:
    """Whether ``error`` comes from a stub: raised by a ``raise`` statement in the notebook's
    (or the course's) own code. Not a stub: an error raised inside an installed package
    (site-packages), nor one raised by a compiled function called from the notebook's code
    (PyTorch's operators are C++: the innermost Python frame is then the line that called
    it, not a ``raise``). Where the line cannot be read, the frame's file decides alone."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return True
    last = frames[-1]
    if any(part in last.filename for part in ("site-packages", "dist-packages")):
        return False
    return not last.line or last.line.lstrip().startswith("raise")
