"""Helpers for the course's one-line errors: what kind of number a value is, and an exception
in one line."""
from __future__ import annotations

import numbers


#: How a notebook cell says it did not run its lesson or check here (no GPU, no Hub, a real
#: model where the pixel reader knows only the mini world): a line of its output starting so,
#: e.g. "SKIPPED: needs a CUDA GPU". `sdcourse run` lists such cells; under pytest they are
#: reported as skipped with that reason (conftest.py), not as passed.
SKIP_MARK = "SKIPPED:"


def skip_reason(outputs) -> str | None:
    """The reason of the first ``SKIPPED: reason`` line in a notebook cell's ``outputs``
    (nbformat output dicts), or None when the cell printed none."""
    for output in outputs or ():
        if output.get("output_type") != "stream":
            continue
        for line in "".join(output.get("text", "")).splitlines():
            if line.startswith(SKIP_MARK):
                return line[len(SKIP_MARK):].strip() or "no reason given"
    return None


#: What a trainer's ``--init`` (``init=``) folder must hold, for the errors that find it does not.
INIT_HINT = ("give a folder holding the text2img unet and text_encoder as safetensors, e.g. "
             "runs/text2img/at_text_encoder_freeze")


def is_whole(value) -> bool:
    """An int (numpy's too), not a bool: True is no count, 400.0 and "400" are no whole numbers."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number (int, float, numpy's), not a bool and not a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def first_line(error: BaseException, default: str | None = None, limit: int = 200,
               named: bool = False) -> str:
    """An exception in one line for our messages: the first line of its text, cut to ``limit``
    characters with "…" (the libraries' messages run to paragraphs), or ``default`` when it has no text
    (its type's name unless given). ``named``: led by the type's name, ``KeyError: 'x'`` (the
    type alone when there is no text), where the text alone would not say what failed."""
    lines = str(error).strip().splitlines()
    name = type(error).__name__
    if named:
        return f"{name}: {_cut(lines[0], limit)}" if lines else name
    if not lines:
        return name if default is None else default
    return _cut(lines[0], limit)


def _cut(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else cut at the last space before it with
    "…" (a message cut mid-word reads as garbled, one cut without a mark as complete)."""
    if len(text) <= limit:
        return text
    head = text[:limit - 1]
    return (head.rsplit(" ", 1)[0] if " " in head else head).rstrip(" ,;:(") + "…"
