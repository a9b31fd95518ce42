"""One helper for the course's one-line error messages."""
from __future__ import annotations


def first_line(error: BaseException, default: str | None = None, limit: int = 200) -> str:
    """An exception in one line for our messages: the first line of its text, cut at ``limit``
    characters (the libraries' messages run to paragraphs), or ``default`` when it has no text
    (its type's name unless given)."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__ if default is None else default
    return lines[0][:limit]
