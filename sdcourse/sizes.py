"""Check an image size before any work: Stable Diffusion needs multiples of 8.

The VAE halves the picture's width and height three times (512 px -> 64 latents), so a
size that is not a multiple of 8 has no exact latent size. diffusers then fails deep inside
the UNet (a shape mismatch when the up-sampled features meet their skip connections) or
silently rounds down; :func:`check_size` says so in one line, before anything runs::

    >>> check_size(512, 768)
    (512, 768)
    >>> check_size(500, 512)
    Traceback (most recent call last):
    ValueError: width 500 is not a multiple of 8: use 496 or 504 (the VAE halves the size 3 times)
"""
from __future__ import annotations

from .messages import is_whole


def _why(multiple: int) -> str:
    halvings = multiple.bit_length() - 1
    if multiple > 1 and multiple == 1 << halvings:
        return f" (the VAE halves the size {halvings} times)"
    return ""


def check_size(width: int, height: int, multiple: int = 8) -> tuple[int, int]:
    """Return ``(width, height)`` when both are positive multiples of ``multiple``.

    Otherwise raise a one-line ``ValueError`` naming the side and the nearest valid sizes,
    e.g. ``width 500 is not a multiple of 8: use 496 or 504 (the VAE halves the size 3
    times)``. ``multiple`` is the pipeline's ``vae_scale_factor`` (8 for Stable Diffusion).
    """
    if not is_whole(multiple) or multiple < 1:
        raise ValueError(f"multiple must be a positive whole number, got {multiple!r}")
    multiple = int(multiple)
    for side, value in (("width", width), ("height", height)):
        if not is_whole(value):
            raise ValueError(f"{side} must be a whole number of pixels, got {value!r}")
        value = int(value)
        if value < multiple:
            raise ValueError(f"{side} {value} is too small: use {multiple} or more, "
                             f"a multiple of {multiple}{_why(multiple)}")
        if value % multiple:
            lower, upper = value - value % multiple, value - value % multiple + multiple
            raise ValueError(f"{side} {value} is not a multiple of {multiple}: "
                             f"use {lower} or {upper}{_why(multiple)}")
    return int(width), int(height)
