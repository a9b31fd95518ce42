"""One helper for the course's one-line error messages."""
from __future__ import annotations


def first_line(error: BaseException, default: str | None = None, limit: int = 200,
               named: bool = False) -> str:
    """An exception in one line for our messages: the first line of its text, cut at ``limit``
    characters (the libraries' messages run to paragraphs), or ``default`` when it has no text
    (its type's name unless given). ``named``: led by the type's name, ``KeyError: 'x'`` (the
    type alone when there is no text), where the text alone would not say what failed."""
    lines = str(error).strip().splitlines()
    name = type(error).__name__
    if named:
        return f"{name}: {lines[0][:limit]}" if lines else name
    if not lines:
        return name if default is None else default
    return lines[0][:limit]
