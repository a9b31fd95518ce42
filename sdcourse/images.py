"""Getting pictures in and out: download an image, show a few side by side, look at latents.

The seed article loads its example pictures with three lines (``requests.get`` then
``Image.open``). That works until it doesn't: no timeout (a dead server hangs the notebook),
no cache (every run downloads again), a web page or an error page saved as if it were the
picture, and a stack trace nobody can read. :func:`download_image` does the same job with a
timeout, a local cache, one-line errors that say what went wrong and what to do, and a
bundled stand-in picture for the course's own examples when there is no network.

The display helpers are thin: :func:`image_grid` pastes pictures into one (like diffusers'
``make_image_grid``), :func:`show_images` draws them with titles in matplotlib, and
:func:`plot_latent_channels` draws each channel of a latent tensor as its own little map.

Regenerate the bundled sample pictures with ``python -m sdcourse.images``.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from .files import atomic_path, cache_root, write_atomic
from .messages import is_number, is_whole
from .models import offline_mode, offline_setting, offline_variable

__all__ = [
    "download_image", "DownloadError", "StandInWarning", "image_grid", "show_images",
    "plot_latent_channels", "sample_image_path", "make_samples", "STAND_INS", "SAMPLES_DIR",
]

#: Where the bundled sample pictures live (PNG files made by :func:`make_samples`).
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

#: The seed article's inpainting example (a dog on a bench) and its mask (white over the dog).
INPAINT_URL = ("https://raw.githubusercontent.com/CompVis/latent-diffusion/main/data/"
               "inpainting_examples/overture-creations-5sI6fQgYIuo.png")
INPAINT_MASK_URL = INPAINT_URL[: -len(".png")] + "_mask.png"

#: URL -> bundled sample file used in its place when there is no network.
STAND_INS: dict[str, str] = {
    INPAINT_URL: "inpaint_image.png",
    INPAINT_MASK_URL: "inpaint_mask.png",
}

_NO_NETWORK = {"offline", "dns", "refused", "connection"}  # reasons that allow a stand-in

#: Largest ``size`` (pixels per side) to resize to: SD pipelines use 512 to 1024, and a typo
#: like ``size=10**6`` would otherwise allocate gigabytes (it got a notebook OOM-killed).
MAX_SIZE = 4096


class DownloadError(Exception):
    """A picture could not be downloaded. The message is one line: the URL, the cause, what to do.

    ``reason`` is a short code for programs (``"http-404"``, ``"timeout"``, ``"truncated"``,
    ``"not-image"``, ``"too-large"``, ``"redirect-loop"``, ``"refused"``, ``"dns"``, ...).
    """

    def __init__(self, url: str, cause: str, advice: str, reason: str):
        self.url, self.cause, self.advice, self.reason = url, cause, advice, reason
        message = f"Could not download {url}: {cause}. {advice}"
        super().__init__(" ".join(message.split()))  # one line, whatever the cause said


class StandInWarning(UserWarning):
    """A bundled synthetic picture was returned instead of the one at the URL."""


# --------------------------------------------------------------------------------------------
# download_image


def download_image(url, size=None, *, timeout: float = 10, max_bytes: int | None = 20_000_000,
                   cache_dir=None) -> Image.Image:
    """Download a picture (or open a local file) and return it as an RGB PIL image.

    - ``size``: resize the result, an int for a square (``512``) or a ``(width, height)`` pair,
      at most :data:`MAX_SIZE` (4096) pixels per side: more than any SD pipeline uses.
    - ``timeout``: seconds to wait for the server to connect or to send more data.
    - ``max_bytes``: refuse bigger downloads (``None`` for no limit): a wrong link to a huge
      file should fail fast instead of filling the memory. (A local file is opened as it is.)
    - ``cache_dir``: where downloads are kept; default ``~/.cache/sdcourse/images``, or
      ``$SDCOURSE_CACHE/images`` when that environment variable is set. A second call with the
      same URL reads the file from there: no network, same picture.

    Errors raise :class:`DownloadError` with a one-line message. When there is no network
    (``HF_HUB_OFFLINE=1``, a refused connection, a DNS failure) and the URL is one of the
    course's examples (:data:`STAND_INS`), a bundled synthetic stand-in is returned instead,
    with a :class:`StandInWarning`, so the notebook still runs.
    """
    if not isinstance(url, (str, os.PathLike)):
        raise TypeError(f"download_image needs a URL or a file path as text, got "
                        f"{type(url).__name__} {url!r:.60}")
    url = os.fspath(url).strip()  # (a space copied along with a link)
    _check_download_args(size, timeout, max_bytes)  # before any file, cache or network access
    if not url.lower().startswith(("http://", "https://")):
        return _finish(_open_local(os.path.expanduser(url)), size)

    cache_file = _cache_file(url, cache_dir)
    cached = _read_cache(cache_file)
    if cached is not None:
        return _finish(cached, size)

    try:
        if offline_mode():
            raise DownloadError(url, f"offline mode is on ({offline_setting()}) and it is not cached",
                                f"Unset {offline_variable()} and connect to the internet, or use "
                                "a local file.", "offline")
        data = _fetch(url, timeout, max_bytes)
        image = _decode(url, data)
    except DownloadError as error:
        if error.reason in _NO_NETWORK and url in STAND_INS:
            name = STAND_INS[url]
            warnings.warn(f"Using the bundled stand-in {name} (a synthetic picture, not the "
                          f"original) for {url}: {error.cause}.", StandInWarning, stacklevel=2)
            path = sample_image_path(name)
            return _finish(_decode(str(path), path.read_bytes()), size)
        raise
    try:
        write_atomic(cache_file, data)
    except OSError:
        pass  # a cache that cannot be written (read-only disk, ...) should not fail the download
    return _finish(image, size)


def _check_download_args(size, timeout, max_bytes) -> None:
    """One-line ValueError for a bad ``size``, ``timeout`` or ``max_bytes``, before any work."""
    if size is not None:
        _as_wh(size)
    # requests also takes a (connect, read) pair; each must be a positive, finite number
    parts = timeout if isinstance(timeout, tuple) and len(timeout) == 2 else (timeout,)
    if any(not is_number(t) or not 0 < t < math.inf for t in parts):
        raise ValueError(f"timeout must be a positive number of seconds, e.g. 10 (or a "
                         f"(connect, read) pair of them), got {timeout!r}")
    if max_bytes is not None and (not is_number(max_bytes) or not 0 < max_bytes < math.inf):
        raise ValueError(f"max_bytes must be a positive number of bytes, e.g. 20_000_000, "
                         f"or None for no limit, got {max_bytes!r}")


def _fetch(url: str, timeout, max_bytes: int | None) -> bytes:
    """GET ``url`` and return the whole body, or raise DownloadError saying why not."""
    import requests

    try:
        with requests.Session() as session:
            session.max_redirects = 10
            with session.get(url, stream=True, timeout=timeout,
                             headers={"User-Agent": "sdcourse (course notebooks)"}) as response:
                _check_headers(url, response, max_bytes)
                return _read_body(url, response, max_bytes)
    except requests.exceptions.TooManyRedirects:
        raise DownloadError(url, "the server keeps redirecting in a loop",
                            "The link is broken: find a direct link to the image.",
                            "redirect-loop") from None
    except requests.exceptions.RequestException as exc:
        raise _network_error(url, exc, timeout) from None


def _check_headers(url: str, response, max_bytes: int | None) -> None:
    """Refuse error pages, web pages and files that say they are too big, before reading them."""
    status = response.status_code
    if status == 404:
        raise DownloadError(url, "the server says there is no such file (HTTP 404)",
                            "Check the URL for typos, or whether the file has moved.", "http-404")
    if status >= 500:
        raise DownloadError(url, f"the server failed (HTTP {status} {response.reason})",
                            "The problem is on the server's side: try again later.",
                            f"http-{status}")
    if status >= 400:
        raise DownloadError(url, f"the server refused (HTTP {status} {response.reason})",
                            "Check the URL, or whether the file needs a login.", f"http-{status}")
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type.startswith("text/") or content_type in ("application/json",
                                                            "application/xml"):
        raise DownloadError(url, f"the server sent {content_type}, not an image",
                            "This looks like a web page: use the direct link to the picture file.",
                            "not-image")
    declared = _content_length(response)
    if max_bytes is not None and declared is not None and declared > max_bytes:
        raise DownloadError(url, f"the file is {declared:,} bytes, over max_bytes={max_bytes:,}",
                            "Check the link, or pass a larger max_bytes.", "too-large")


def _read_body(url: str, response, max_bytes: int | None) -> bytes:
    """Read the body in chunks, stopping as soon as it grows past ``max_bytes``."""
    import requests

    declared = _content_length(response)
    chunks, received = [], 0
    try:
        for chunk in response.iter_content(chunk_size=64 * 1024):
            received += len(chunk)
            if max_bytes is not None and received > max_bytes:
                raise DownloadError(url, f"the file is over max_bytes={max_bytes:,} bytes",
                                    "Check the link, or pass a larger max_bytes.", "too-large")
            chunks.append(chunk)
    except requests.exceptions.ChunkedEncodingError:
        received = -1  # the connection broke mid-file: treat it as truncated below
    # A compressed body is counted after decompression, so it cannot be compared to the header.
    compressed = response.headers.get("Content-Encoding", "identity").lower() != "identity"
    if received < 0 or (declared is not None and not compressed and received < declared):
        got = sum(len(c) for c in chunks)
        expected = f" of the {declared:,} announced" if declared is not None else ""
        raise DownloadError(url, f"the download was cut short ({got:,} bytes{expected})",
                            "The connection dropped: try again.", "truncated")
    return b"".join(chunks)


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length", "").strip()
    return int(value) if value.isdigit() else None


#: How resolvers say that a host name has no address (glibc, macOS, Windows, urllib3).
_DNS_WORDS = ("name or service not known", "nodename nor servname", "getaddrinfo failed",
              "temporary failure in name resolution", "no address associated with hostname",
              "failed to resolve")


def _network_error(url: str, exc: Exception, timeout) -> DownloadError:
    """Turn a requests exception into a DownloadError that names the cause in plain words."""
    import socket

    import requests
    from urllib3.exceptions import NameResolutionError, ReadTimeoutError

    causes = _exception_chain(exc)
    text = " ".join(str(c) for c in causes)
    connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return DownloadError(url, f"could not connect within {connect} s",
                             "Check your internet connection, or try again later.", "connection")
    if isinstance(exc, requests.exceptions.Timeout) or any(
            isinstance(c, ReadTimeoutError) for c in causes):
        return DownloadError(url, f"the server did not answer within {read} s (timeout)",
                             "Try again later, or pass a larger timeout.", "timeout")
    # by type, else by the resolver's and the socket's own words ("resolve" alone would match
    # every Hugging Face file URL, whose path holds /resolve/main/)
    if any(isinstance(c, (NameResolutionError, socket.gaierror)) for c in causes) or any(
            words in text.lower() for words in _DNS_WORDS):
        return DownloadError(url, "the host name could not be found (DNS failure)",
                             "Check the URL and your internet connection.", "dns")
    if any(isinstance(c, ConnectionRefusedError) for c in causes) or "connection refused" in text.lower():
        return DownloadError(url, "the connection was refused (nothing is serving there)",
                             "Check the URL and port, or whether the server is running.",
                             "refused")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return DownloadError(url, f"the connection failed ({type(exc).__name__})",
                             "Check your internet connection and try again.", "connection")
    return DownloadError(url, f"the request failed ({type(exc).__name__}: {exc})",
                         "Check the URL and try again.", "request")


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (requests and urllib3 nest them several deep)."""
    seen, todo = [], [exc]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend([current.__cause__, current.__context__, getattr(current, "reason", None),
                     *current.args])
    return seen


def _decode(url: str, data: bytes) -> Image.Image:
    """Bytes -> fully loaded PIL image; anything PIL cannot read is "not an image", and one
    with more pixels than PIL allows (``Image.MAX_IMAGE_PIXELS``: a small file can unpack to
    gigabytes) is "too large", where PIL would warn first and then fail."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DownloadError(url, f"the picture has more than {Image.MAX_IMAGE_PIXELS:,} "
                            "pixels, too many to unpack safely",
                            "Use a smaller picture (Stable Diffusion works at 512 to 1024 px).",
                            "too-large") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DownloadError(url, f"the file is not an image PIL can read ({type(exc).__name__})",
                            "Check that the link points to a picture (PNG, JPEG, ...).",
                            "not-image") from None
    return image


def _open_local(path: str) -> Image.Image:
    if not Path(path).is_file():
        raise DownloadError(path, "it is neither an http(s) URL nor an existing file",
                            "Pass a URL starting with https:// or the path of a picture.",
                            "not-found")
    return _decode(path, Path(path).read_bytes())


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit grey picture (depth maps are often saved so) as 8-bit grey ("L");
    other pictures as they are. Why: PIL's ``convert("RGB")`` clips such values at 255, so a
    16-bit PNG comes out almost all white. 16-bit ("I;16") is divided by 257 (65535 -> 255);
    32-bit whole numbers ("I") likewise when they lie in 0..65535 (as they are when over 255),
    floats ("F") in [0, 1] are multiplied by 255; anything else is stretched from its minimum
    to its maximum."""
    if not image.mode.startswith(("I", "F")):
        return image
    array = np.nan_to_num(np.asarray(image, dtype=np.float64))
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and 0 <= low and 255 < high <= 65535):
        array = array / 257
    elif image.mode == "F" and 0 <= low and high <= 1:
        array = array * 255
    elif not (image.mode == "I" and 0 <= low and high <= 255):
        array = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")


def _finish(image: Image.Image, size) -> Image.Image:
    """Upright, RGB (transparent parts on white; 16-bit grey as :func:`to_8bit`), resized if asked."""
    image = to_8bit(ImageOps.exif_transpose(image))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    image = image.convert("RGB")
    if size is not None:
        image = image.resize(_as_wh(size), Image.Resampling.LANCZOS)
    return image


def _as_wh(size) -> tuple[int, int]:
    """``512`` -> ``(512, 512)``; ``(w, h)`` stays (each 1 to :data:`MAX_SIZE`); else ValueError."""
    pair = size if isinstance(size, (tuple, list)) else None  # not a string: "12" is no (1, 2)
    if is_whole(size):
        width = height = int(size)
    elif pair is not None and len(pair) == 2 and all(is_whole(v) for v in pair):
        width, height = int(pair[0]), int(pair[1])
    else:
        raise ValueError(f"size must be an int for a square (512) or a (width, height) pair of "
                         f"ints, got {size!r}")
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    if width > MAX_SIZE or height > MAX_SIZE:
        raise ValueError(f"size must be at most {MAX_SIZE} pixels per side (SD pipelines use "
                         f"512 to 1024), got {size!r}")
    return width, height


# --------------------------------------------------------------------------------------------
# the cache


def _cache_file(url: str, cache_dir) -> Path:
    """Cache path for a URL: a hash of the URL, keeping a short extension for humans."""
    if cache_dir is None:
        cache_dir = cache_root() / "images"
    suffix = Path(url.split("?")[0].split("#")[0]).suffix.lower()
    if not (suffix[1:].isalnum() and len(suffix) <= 5):
        suffix = ".img"
    return Path(cache_dir) / (hashlib.sha256(url.encode("utf-8")).hexdigest() + suffix)


def _read_cache(path: Path) -> Image.Image | None:
    """The cached picture, or None if absent (or unreadable: then it is removed)."""
    if not path.is_file():
        return None
    try:
        return _decode(str(path), path.read_bytes())
    except (DownloadError, OSError):
        path.unlink(missing_ok=True)
        return None


# --------------------------------------------------------------------------------------------
# bundled samples


def sample_image_path(name: str) -> Path:
    """Path of a bundled sample picture, e.g. ``sample_image_path("inpaint_image")``."""
    if not isinstance(name, str):
        raise TypeError(f"sample_image_path needs a sample name as text, got "
                        f"{type(name).__name__} {name!r:.40}: choose one of {_sample_names()}.")
    path = SAMPLES_DIR / (name if name.endswith(".png") else f"{name}.png")
    if not path.is_file():
        raise FileNotFoundError(f"No bundled sample {name!r}: choose one of {_sample_names()}.")
    return path


def _sample_names() -> str:
    """The bundled samples' names, for error messages: "inpaint_image, inpaint_mask, ..."."""
    return ", ".join(sorted(p.stem for p in SAMPLES_DIR.glob("*.png")))


def make_samples(out_dir=SAMPLES_DIR, size: int = 512) -> list[Path]:
    """Draw the bundled sample pictures (deterministic: same code, same pixels).

    They come from the course's synthetic world (:mod:`sdcourse.world`), enlarged with
    NEAREST so each 64x64 pixel becomes a crisp block:

    - ``inpaint_image.png``: a red circle on a blue background, the stand-in for the seed
      article's inpainting photo (a dog on a bench).
    - ``inpaint_mask.png``: white over the circle (grown by 2 pixels of the 64 so the edge is
      repainted too), black elsewhere: the stand-in for the article's mask.
    - ``shapes_img2img.png``: a yellow triangle on a green background, a start picture for
      img2img.
    - ``shapes_depth.png``: the depth map of ``inpaint_image.png`` (brighter = nearer).
    """
    from . import world

    def enlarge(image: Image.Image) -> Image.Image:
        return image.resize((size, size), Image.Resampling.NEAREST)

    def gray(values: np.ndarray) -> Image.Image:
        return Image.fromarray(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8), "L")

    inpaint = world.render(world.Scene("red", "circle", "blue", cx=30.0, cy=36.0, size=34.0))
    img2img = world.render(world.Scene("yellow", "triangle", "green", cx=32.0, cy=34.0, size=36.0))
    mask = gray((inpaint.mask > 0).astype(np.float32)).filter(ImageFilter.MaxFilter(5))
    pictures = {
        "inpaint_image.png": enlarge(inpaint.image),
        "inpaint_mask.png": enlarge(mask),
        "shapes_img2img.png": enlarge(img2img.image),
        "shapes_depth.png": enlarge(gray(inpaint.depth)),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, picture in pictures.items():
        with atomic_path(out_dir / name) as tmp:
            picture.save(tmp, format="PNG")
        paths.append(out_dir / name)
    return paths


# --------------------------------------------------------------------------------------------
# showing pictures


def image_grid(images, rows: int | None = None, cols: int | None = None, size=None) -> Image.Image:
    """Paste pictures into one grid picture, row by row.

    A thin wrapper around ``diffusers.utils.make_image_grid(images, rows, cols)`` (the
    function the diffusers docs use) that also:

    - chooses ``rows``/``cols`` when omitted (about square; left-over cells stay black, where
      diffusers wants exactly ``rows * cols`` pictures);
    - resizes every picture first with ``size`` (an int for squares, or ``(width, height)``),
      e.g. ``size=128`` to see 64x64 model outputs; enlarging uses NEAREST so pixels stay honest;
    - accepts PIL images, arrays or tensors, in a list or any iterable (see :func:`show_images`).
    """
    wh = _as_wh(size) if size is not None else None  # bad arguments fail before diffusers' import
    pictures = [_to_pil(x, i) for i, x in enumerate(_as_list(images))]
    if not pictures:
        raise ValueError("image_grid needs at least one image: pass a PIL image, an "
                         "array or tensor, or a non-empty list of them")
    rows, cols = _grid_shape(len(pictures), rows, cols)
    width, height = wh or pictures[0].size
    if cols * width > MAX_SIZE * 4 or rows * height > MAX_SIZE * 4:  # (10000 x 10000 cells: killed)
        raise ValueError(f"a grid of {rows}x{cols} pictures of {width}x{height} would be "
                         f"{cols * width}x{rows * height} pixels: more than {MAX_SIZE * 4} per side; "
                         "give fewer rows/cols or a smaller size")

    from diffusers.utils import make_image_grid

    pictures = [_resize_for_display(p, (width, height)) for p in pictures]
    pictures += [Image.new("RGB", (width, height))] * (rows * cols - len(pictures))  # black
    return make_image_grid(pictures, rows, cols)


def show_images(images, titles=None, cols: int | None = None, size: float = 2.5):
    """Draw pictures side by side with matplotlib (``size`` inches each); returns the figure.

    Accepts one picture or a list (or any iterable) of them: PIL images, numpy arrays or torch
    tensors, channels first (C, H, W) or last (H, W, C), floats in [0, 1] or [-1, 1] (the range
    the VAE uses; floats above 2, 0..255 ones, are refused rather than drawn white), or whole
    numbers 0..255 (uint8 or not; 0/1 ones as black and white). A 4-D batch (N, C, H, W)
    counts as N pictures, a pipeline's output as its ``.images``. One-channel pictures are drawn
    in gray.
    When the shape allows both layouts, the one with RGB channels wins (3x4x4 is CHW, 4x5x3 is
    HWC); if that does not decide, a tensor is read channels first and a numpy array last.

    ``titles``: None, a list or tuple with one title per picture (each drawn with ``str``), or a
    string for a single picture. ``cols`` is checked as in :func:`image_grid`.
    """
    _check_count("cols", cols)  # the same check as image_grid's: cols=0 is an error, not "choose"
    _check_inches(size)
    if isinstance(titles, str):
        titles = [titles]
    if titles is not None and not isinstance(titles, (list, tuple)):
        raise TypeError(f"titles must be a list of strings, one per image (or None), got "
                        f"{type(titles).__name__} {titles!r:.40}")
    import matplotlib.pyplot as plt

    arrays = [_to_display_array(x, i) for i, x in enumerate(_as_list(images))]
    if not arrays:
        raise ValueError("show_images needs at least one image: pass a PIL image, an "
                         "array or tensor, or a non-empty list of them")
    if titles is not None and len(titles) != len(arrays):
        raise ValueError(f"got {len(arrays)} images but {len(titles)} titles")
    rows, cols = _grid_shape(len(arrays), None, cols if cols is not None else min(len(arrays), 4))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < len(arrays):
            if arrays[i].ndim == 2:  # one channel: gray, on the full range (not stretched)
                ax.imshow(arrays[i], cmap="gray", vmin=0,
                          vmax=255 if arrays[i].dtype == np.uint8 else 1)
            else:
                ax.imshow(arrays[i])
            if titles is not None:
                ax.set_title(str(titles[i]))
    fig.tight_layout()
    return _shown_once(fig)


def plot_latent_channels(latents, title: str | None = None, size: float = 2.5):
    """Draw each channel of one latent, (C, H, W) or (1, C, H, W), as a colour map.

    SD's latents have 4 channels of 64x64 for a 512x512 picture; they are not colours, so each
    channel gets its own map (bright = high). Returns the figure.
    """
    _check_inches(size)
    import matplotlib.pyplot as plt

    if hasattr(latents, "latent_dist"):  # vae.encode(x), an AutoencoderKLOutput
        latents = latents.latent_dist
    if hasattr(latents, "mean") and hasattr(latents, "sample") and not hasattr(latents, "detach"):
        raise TypeError(f"{type(latents).__name__} is a distribution over latents, not a latent: "
                        "pass vae.encode(x).latent_dist.mean, or .sample() for a noisy draw")
    _refuse_non_picture(latents, "a latent tensor (C, H, W) or (1, C, H, W)")
    array = _to_numpy(latents).astype(np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected one latent of shape (C, H, W) or (1, C, H, W), got "
                         f"{tuple(array.shape)}: pick one, e.g. latents[0]")
    channels = array.shape[0]
    if 0 in array.shape:
        raise ValueError(f"the latent of shape {tuple(array.shape)} is empty: pass one with at "
                         "least one channel, row and column")
    if channels > 16:  # SD's latents have 4 channels, SD3's and Flux's 16
        raise ValueError(f"expected a latent of a few channels (SD: 4), got {channels} of shape "
                         f"{tuple(array.shape)}: a picture (H, W, C)? pass a latent (C, H, W)")
    fig, axes = plt.subplots(1, channels, figsize=(channels * size, size + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.imshow(array[i], cmap="viridis")
        ax.set_title(f"channel {i}")
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _shown_once(fig)


def _shown_once(fig):
    """In a Jupyter notebook, show the figure now, exactly once; elsewhere, do nothing.

    Left alone, Jupyter draws a returned figure twice when the call is a cell's last line: the
    notebook backend draws every new figure when the cell ends, and the cell's value (the
    figure) is drawn too. So here the figure is drawn right away and closed for the backend,
    and drawing the cell's value is skipped; ``fig`` in a later cell still shows it.
    """
    if "IPython" not in sys.modules:  # not in Jupyter: nothing to do
        return fig
    import matplotlib

    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or "inline" not in matplotlib.get_backend():
        return fig
    import matplotlib.pyplot as plt
    from IPython.display import display

    plt.close(fig)
    display(fig)
    shown_in = shell.execution_count

    def display_again():
        if shell.execution_count != shown_in:  # asked for in a later cell: show it normally
            del fig._ipython_display_
            display(fig)

    fig._ipython_display_ = display_again
    return fig


def _as_list(images) -> list:
    """One picture, a list (or other iterable) of them, a 4-D batch, or a pipeline's output
    (its ``.images``) -> list of pictures."""
    if hasattr(images, "images") and not hasattr(images, "__array__") and not hasattr(images, "detach"):
        images = images.images  # pipe(prompt) rather than pipe(prompt).images
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, Image.Image):
        return [images]
    if (isinstance(images, Iterable) and not isinstance(images, (str, bytes, dict))
            and not hasattr(images, "__array__") and not hasattr(images, "detach")):
        return list(images)  # a generator, a set, ...: arrays and tensors are pictures or batches
    _refuse_non_picture(images, "a picture or a list of pictures (PIL images, arrays or tensors)")
    array = _to_numpy(images)
    return list(array) if array.ndim == 4 else [array]


def _refuse_non_picture(x, wanted: str) -> None:
    """One clear line for what numpy would turn into a 0-d array and a puzzling shape error."""
    if x is None or isinstance(x, (str, bytes, int, float, dict)):
        raise TypeError(f"cannot show {type(x).__name__} {x!r:.40} as a picture: give {wanted}")


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (torch is not imported here: it is slow to load)
        x = x.detach().to("cpu")
        return x.float().numpy() if x.is_floating_point() else x.numpy()  # (bfloat16: no numpy)
    return np.asarray(x)


def _channels_first(shape, x) -> bool:
    """Whether a 3-D picture whose first size could be channels is laid out (C, H, W).

    When both ends could be channels (3x4x4: RGB 4x4 or RGBA 3x4), the reading with three
    (RGB) channels wins; if that does not decide, a torch tensor is read channels first (torch's
    layout) and a numpy array channels last.
    """
    first, last = shape[0], shape[-1]
    if last not in (1, 3, 4):
        return True
    if (first == 3) != (last == 3):
        return first == 3
    return hasattr(x, "detach")


def _to_display_array(x, index: int = 0) -> np.ndarray:
    """Picture number ``index`` -> (H, W) or (H, W, 3|4) array, uint8 or floats in [0, 1]."""
    if isinstance(x, Image.Image):
        _refuse_empty(index, (x.height, x.width))
        x = to_8bit(x)
        return np.asarray(x if x.mode in ("L", "RGB", "RGBA") else x.convert("RGB"))
    _refuse_non_picture(x, "PIL images, arrays or tensors")
    array = _to_numpy(x)
    _refuse_empty(index, array.shape)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and _channels_first(array.shape, x):
        array = array.transpose(1, 2, 0)  # channels first -> channels last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot show an array of shape {array.shape} as a picture: give "
                         "(H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4; a batch (N, C, H, W) "
                         "goes on its own, not in a list")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):  # 0..255 as uint8 is; a 0/1 mask as 0 and 1
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"image {index} holds whole numbers from {low} to {high}: pictures of "
                             "whole numbers take 0..255 (or floats in [0, 1] or [-1, 1])")
        return array.astype(np.uint8) if high > 1 else array.astype(np.float32)
    array = array.astype(np.float32)
    if array.max() > 2:  # 0..255 floats would all clip to white
        raise ValueError(f"image {index} has values up to {array.max():.1f}: floats are read as "
                         "[0, 1] or [-1, 1]; divide by 255, or convert to uint8")
    if array.min() < 0:  # [-1, 1], as the VAE and the pipelines' tensors use
        array = (array + 1) / 2
    return np.clip(array, 0, 1)


def _refuse_empty(index: int, shape) -> None:
    """One line naming the picture, instead of numpy's "zero-size array to reduction operation"."""
    if 0 in tuple(shape):
        raise ValueError(f"image {index} has shape {tuple(shape)}, with no pixels: every picture "
                         "needs a height and width of at least 1")


def _to_pil(x, index: int = 0) -> Image.Image:
    if isinstance(x, Image.Image):
        _refuse_empty(index, (x.height, x.width))
        return to_8bit(x).convert("RGB")
    array = _to_display_array(x, index)
    if array.dtype != np.uint8:
        array = np.round(array * 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _resize_for_display(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    enlarging = size[0] >= image.width and size[1] >= image.height
    return image.resize(size, Image.Resampling.NEAREST if enlarging else Image.Resampling.LANCZOS)


def _check_count(name: str, value) -> None:
    """A grid's rows or cols: None (choose for me) or a whole number >= 1."""
    if value is not None and (not is_whole(value) or value < 1):
        raise ValueError(f"{name} must be a whole number of 1 or more (or None to choose "
                         f"automatically), got {value!r}")


#: The most inches per picture a figure takes: far more than a screen shows, far less than
#: image_grid's pixels (size=128 there) taken as inches (a 12800 px wide figure per picture).
MAX_INCHES = 20


def _check_inches(size) -> None:
    """A figure's ``size`` per picture: a positive number of inches (0 made matplotlib fail
    with "Singular matrix"), at most :data:`MAX_INCHES`."""
    if not is_number(size) or not 0 < size < math.inf:
        raise ValueError(f"size must be a positive number of inches per picture, e.g. 2.5, "
                         f"got {size!r}")
    if size > MAX_INCHES:
        raise ValueError(f"size is in inches per picture (2.5 is typical), at most {MAX_INCHES}, "
                         f"got {size!r}: pixels are image_grid's size")


def _grid_shape(n: int, rows: int | None, cols: int | None) -> tuple[int, int]:
    """Rows and columns for ``n`` cells; omitted ones make the grid about square."""
    _check_count("rows", rows)
    _check_count("cols", cols)
    if rows is None and cols is None:
        cols = math.ceil(math.sqrt(n))
    if rows is None:
        rows = math.ceil(n / cols)
    if cols is None:
        cols = math.ceil(n / rows)
    if rows * cols < n:
        raise ValueError(f"a {rows}x{cols} grid cannot hold {n} images: give more rows or cols, "
                         "or only one of them (the other is then computed)")
    return rows, cols


if __name__ == "__main__":
    for written in make_samples():
        print(written)
