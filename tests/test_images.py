"""Tests for sdcourse.images, against a real HTTP server on 127.0.0.1 started here."""
from __future__ import annotations

import io
import re
import socket
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import matplotlib

matplotlib.use("Agg")  # tests never open windows

import numpy as np
import pytest
from PIL import Image

from sdcourse import images
from sdcourse.images import DownloadError, StandInWarning, download_image

TIMEOUT = 10  # seconds: generous, so a loaded machine never turns an expected error into a timeout
SLOW_TIMEOUT = 0.5  # for the routes that test timeouts; they wait 5 s, much longer than this


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


VALID = Image.new("RGB", (8, 6), (10, 200, 30))
VALID_PNG = png_bytes(VALID)
RGBA_PNG = png_bytes(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))  # fully transparent red
GRAY_PNG = png_bytes(Image.new("L", (4, 4), 77))


class Handler(BaseHTTPRequestHandler):
    """One route per way a download can go right or wrong."""

    def log_message(self, *args):  # keep the test output quiet
        pass

    def send(self, status, body=b"", content_type="image/png", length=None, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not False:
            self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self):
        server = self.server
        with server.lock:
            server.counts[self.path] = server.counts.get(self.path, 0) + 1
        route = self.path.split("?")[0]
        if route == "/valid.png":
            self.send(200, VALID_PNG)
        elif route == "/rgba.png":
            self.send(200, RGBA_PNG)
        elif route == "/gray.png":
            self.send(200, GRAY_PNG)
        elif route == "/missing.png":
            self.send(404, b"not found", "text/plain")
        elif route == "/error.png":
            self.send(500, b"oops", "text/plain")
        elif route == "/forbidden.png":
            self.send(403, b"login first", "text/plain")
        elif route == "/slow.png":  # answers long after the client's timeout
            server.stop.wait(5)
            self.send(200, VALID_PNG)
        elif route == "/stall.png":  # starts the body, then stops sending
            self.send(200, VALID_PNG[:20], length=len(VALID_PNG))
            server.stop.wait(5)
        elif route == "/truncated.png":  # announces more than it sends, then closes
            self.send(200, VALID_PNG[: len(VALID_PNG) // 2], length=len(VALID_PNG))
            self.close_connection = True
        elif route == "/page.png":
            self.send(200, b"<html><body>a web page</body></html>", "text/html; charset=utf-8")
        elif route == "/garbage.png":  # claims to be binary but is not a picture
            self.send(200, b"\x00\x01 definitely not a png " * 10, "application/octet-stream")
        elif route == "/big.png":  # announces 100 kB
            self.send(200, b"\x00" * 100_000)
        elif route == "/big-unannounced.png":  # 1 MB without Content-Length: must be counted
            self.send(200, b"\x00" * 1_000_000, length=False)
            self.close_connection = True
        elif route == "/loop.png":
            self.send(302, headers=[("Location", "/loop.png")])
        elif route == "/moved.png":
            self.send(302, headers=[("Location", "/valid.png?from=moved")])
        else:
            self.send(404, b"no route", "text/plain")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients that hang up early are expected
        pass


@pytest.fixture(scope="module")
def server():
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.counts, httpd.lock, httpd.stop = {}, threading.Lock(), threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.stop.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh cache per test, online, no proxy between us and 127.0.0.1."""
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return tmp_path / "cache"


def cached_files(cache):
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def dead_url():
    """A URL on a port where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.png"


# -------------------------------------------------------------------------------------------
# successful downloads


def test_download_valid_png_and_cache_hit(server, cache):
    url = f"{server.url}/valid.png?test=cache"
    first = download_image(url)
    assert first.mode == "RGB" and first.size == (8, 6)
    assert first.getpixel((0, 0)) == (10, 200, 30)
    files = cached_files(cache)
    assert len(files) == 1 and files[0].parent == cache / "images"
    assert files[0].read_bytes() == VALID_PNG  # the whole file, no leftover temporary files

    second = download_image(url)
    assert server.counts["/valid.png?test=cache"] == 1  # served from the cache
    assert np.array_equal(np.asarray(first), np.asarray(second))


def test_explicit_cache_dir(server, tmp_path, cache):
    url = f"{server.url}/valid.png?test=cache_dir"
    download_image(url, cache_dir=tmp_path / "mine")
    assert len(cached_files(tmp_path / "mine")) == 1
    assert cached_files(cache) == []


def test_unwritable_cache_still_returns_the_image(server, tmp_path):
    """A cache folder that cannot be made (its parent is a regular file) does not fail the call."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"a regular file")
    url = f"{server.url}/valid.png?test=unwritable"
    for _ in range(2):  # nothing was cached: the second call downloads again, and works again
        image = download_image(url, cache_dir=blocker / "images")
        assert image.size == (8, 6) and image.getpixel((0, 0)) == (10, 200, 30)
    assert server.counts["/valid.png?test=unwritable"] == 2
    assert blocker.read_bytes() == b"a regular file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


def test_cache_write_failing_midway_leaves_no_partial_file(server, cache, monkeypatch):
    """The temporary file is made, then the final rename fails: the image comes back anyway
    and neither the temporary file nor a partial cache entry is left behind."""
    def refuse(*args, **kwargs):
        raise PermissionError("read-only cache")

    monkeypatch.setattr(images.os, "replace", refuse)
    url = f"{server.url}/valid.png?test=rename-fails"
    image = download_image(url)
    assert image.size == (8, 6) and image.getpixel((0, 0)) == (10, 200, 30)
    assert (cache / "images").is_dir()  # the write got as far as the folder
    assert cached_files(cache) == []


def test_size_resizes(server):
    assert download_image(f"{server.url}/valid.png?s=1", size=32).size == (32, 32)
    assert download_image(f"{server.url}/valid.png?s=2", size=(40, 20)).size == (40, 20)


def test_a_connect_and_read_timeout_pair_is_passed_on(server):
    """requests takes (connect, read) seconds; the argument check lets a good pair through."""
    assert download_image(f"{server.url}/valid.png?t=pair", timeout=(5, 10)).size == (8, 6)


def test_rgba_and_gray_become_rgb(server):
    rgba = download_image(f"{server.url}/rgba.png")
    assert rgba.mode == "RGB"
    assert rgba.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white background
    gray = download_image(f"{server.url}/gray.png")
    assert gray.mode == "RGB" and gray.getpixel((1, 1)) == (77, 77, 77)


def test_redirect_to_image_is_followed(server):
    image = download_image(f"{server.url}/moved.png")
    assert image.size == (8, 6)
    assert server.counts["/valid.png?from=moved"] == 1


def test_corrupt_cache_entry_is_downloaded_again(server, cache):
    url = f"{server.url}/valid.png?test=corrupt"
    path = images._cache_file(url, None)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    assert download_image(url).size == (8, 6)
    assert path.read_bytes() == VALID_PNG


@pytest.mark.parametrize("kwargs, words", [
    ({"size": 0}, "size must be positive"),
    ({"size": (64, -1)}, "size must be positive"),
    ({"size": "big"}, "size must be an int"),
    ({"size": (1, 2, 3)}, "size must be an int"),
    ({"size": 10**6}, "size must be at most 4096 pixels per side"),  # was OOM-killed (22 GB)
    ({"size": (512, 4097)}, "size must be at most 4096 pixels per side"),
    ({"size": "12"}, "size must be an int"),  # was read as the pair (1, 2)
    ({"size": (512.9, 300.2)}, "size must be an int"),  # was cut to (512, 300) without a word
    ({"size": True}, "size must be an int"),
    ({"timeout": 0}, "timeout must be a positive number"),
    ({"timeout": float("nan")}, "timeout must be a positive number"),
    ({"timeout": (0, -1)}, "timeout must be a positive number"),  # was requests' own traceback
    ({"max_bytes": -5}, "max_bytes must be a positive number"),
    ({"max_bytes": float("nan")}, "max_bytes must be a positive number"),  # was no limit at all
    ({"max_bytes": float("inf")}, "max_bytes must be a positive number"),  # (None says that)
])
def test_bad_arguments_fail_before_any_request(server, cache, tmp_path, kwargs, words):
    """A bad size (or timeout, max_bytes) is refused before the cache or the network is used."""
    url = f"{server.url}/valid.png?test=bad-args-{len(server.counts)}"
    path = images._cache_file(url, None)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")  # a corrupt entry: reading it would remove it
    for target in (url, dead_url()):
        with pytest.raises(ValueError, match=words) as info:
            download_image(target, **kwargs)
        assert not isinstance(info.value, DownloadError) and "\n" not in str(info.value)
    assert not any(key.startswith("/valid.png?test=bad-args") for key in server.counts)
    assert path.read_bytes() == b"half a file"  # the cache was not touched
    local = tmp_path / "local.png"
    local.write_bytes(GRAY_PNG)
    with pytest.raises(ValueError, match=words):
        download_image(local, **kwargs)


def test_local_file(tmp_path):
    path = tmp_path / "local.png"
    path.write_bytes(GRAY_PNG)
    assert download_image(path, size=8).size == (8, 8)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG" if mode != "F" else "TIFF")
    return buffer.getvalue()


def test_16_bit_and_float_grey_pictures_keep_their_levels(tmp_path):
    """A 16-bit PNG (how depth maps are often saved) used to come back almost all white: PIL's
    RGB conversion clips its values at 255. Its levels are scaled to 8 bits, in the picture
    returned and in the grids."""
    levels = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "depth16.png"
    path.write_bytes(_png(levels))
    assert Image.open(path).mode == "I;16"
    image = download_image(path)
    assert image.mode == "RGB"
    assert np.asarray(image)[..., 0].tolist() == [[0, 64], [128, 255]]
    assert np.asarray(images.image_grid([Image.open(path)], size=2))[..., 0].tolist() == [[0, 64], [128, 255]]
    floats = tmp_path / "depth.tiff"  # floats in [0, 1]; others are stretched to 0..255
    floats.write_bytes(_png(np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32), "F"))
    assert np.asarray(download_image(floats))[..., 0].tolist() == [[0, 128], [64, 255]]
    metres = Image.fromarray(np.array([[2.0, 4.0], [3.0, 6.0]], dtype=np.float32), "F")
    assert np.asarray(images.to_8bit(metres)).tolist() == [[0, 128], [64, 255]]


def test_a_picture_of_too_many_pixels_is_too_large_not_a_warning(tmp_path, monkeypatch):
    """PIL warns about a picture over ``Image.MAX_IMAGE_PIXELS`` (a small file can unpack to
    gigabytes) and fails over twice that, which used to be "not an image": both are one
    "too-large" line, and no warning leaks."""
    path = tmp_path / "wide.png"
    path.write_bytes(_png(np.zeros((30, 40, 3), dtype=np.uint8)))
    for limit in (1000, 700):  # 1200 pixels: PIL's warning band, then its error
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(DownloadError, match=rf"^Could not download {re.escape(str(path))}: "
                               rf"the picture has more than {limit:,} pixels, too many to unpack "
                               r"safely\. Use a smaller picture \(Stable Diffusion works at 512 "
                               r"to 1024 px\)\.$") as info:
                download_image(path)
        assert info.value.reason == "too-large"


def test_missing_local_file_says_what_to_pass(tmp_path, monkeypatch):
    """Neither a URL nor a file: one line naming it, the cause, and what to pass instead."""
    monkeypatch.chdir(tmp_path)
    for target in ("missing.png", tmp_path / "nope" / "cat.png"):
        with pytest.raises(DownloadError) as caught:
            download_image(target)
        message = str(caught.value)
        assert caught.value.reason == "not-found" and "\n" not in message
        assert str(target) in message and "neither an http(s) URL nor an existing file" in message
        assert "Pass a URL starting with https:// or the path of a picture" in message


# -------------------------------------------------------------------------------------------
# failures: the right error, a one-line message naming the URL and the cause, an empty cache


@pytest.mark.parametrize("route, reason, words", [
    ("/missing.png", "http-404", "404"),
    ("/error.png", "http-500", "HTTP 500"),
    ("/forbidden.png", "http-403", "the server refused (HTTP 403"),
    ("/slow.png", "timeout", "timeout"),
    ("/stall.png", "timeout", "timeout"),
    ("/truncated.png", "truncated", "cut short"),
    ("/page.png", "not-image", "text/html"),
    ("/garbage.png", "not-image", "not an image"),
    ("/big.png", "too-large", "max_bytes"),
    ("/big-unannounced.png", "too-large", "max_bytes"),
    ("/loop.png", "redirect-loop", "redirect"),
])
def test_failures(server, cache, route, reason, words):
    url = f"{server.url}{route}"
    with pytest.raises(DownloadError) as caught:
        download_image(url, timeout=SLOW_TIMEOUT if reason == "timeout" else TIMEOUT,
                       max_bytes=10_000)
    error = caught.value
    message = str(error)
    assert error.reason == reason
    assert url in message and words in message
    assert "\n" not in message
    assert cached_files(cache) == []  # no partial file, no temporary file


def test_forbidden_says_refused_and_what_to_check(server, cache):
    """HTTP 403 is neither 'no such file' nor 'try later': the server refused; check login/URL."""
    url = f"{server.url}/forbidden.png"
    with pytest.raises(DownloadError) as caught:
        download_image(url, timeout=TIMEOUT)
    message = str(caught.value)
    assert caught.value.reason == "http-403" and server.counts.get("/forbidden.png")
    assert "the server refused (HTTP 403 Forbidden)" in message
    advice = message.replace(url, "URL")  # (the server's random port may hold "404")
    assert "needs a login" in advice and "404" not in advice and "try again" not in advice
    assert cached_files(cache) == []


def test_connection_refused(cache):
    url = dead_url()
    with pytest.raises(DownloadError, match="refused") as caught:
        download_image(url, timeout=TIMEOUT)
    assert caught.value.reason == "refused" and url in str(caught.value)
    assert cached_files(cache) == []


def test_a_hub_file_url_that_is_refused_is_not_called_a_dns_failure(cache):
    """Hugging Face file URLs hold /resolve/main/ in their path: the word "resolve" in the
    error text (which quotes the URL) once made every failure there a DNS failure."""
    url = dead_url().replace("/gone.png", "/datasets/x/resolve/main/gone.png")
    with pytest.raises(DownloadError, match="refused") as caught:
        download_image(url, timeout=TIMEOUT)
    assert caught.value.reason == "refused"


def test_a_host_that_does_not_exist_is_a_dns_failure(cache, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)  # a proxy would answer for the host itself
    url = "http://no-such-host.invalid/picture.png"  # .invalid never resolves (RFC 2606)
    with pytest.raises(DownloadError, match=r"DNS failure") as caught:
        download_image(url, timeout=TIMEOUT)
    assert caught.value.reason == "dns"


# -------------------------------------------------------------------------------------------
# offline: bundled stand-ins


def test_offline_returns_stand_in_with_warning(monkeypatch, cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(StandInWarning, match="stand-in") as record:
        image = download_image(images.INPAINT_URL, size=256)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert "HF_HUB_OFFLINE" in str(record[0].message)
    expected = Image.open(images.sample_image_path("inpaint_image")).convert("RGB")
    assert image.mode == "RGB" and image.size == (256, 256)
    with pytest.warns(StandInWarning):
        full = download_image(images.INPAINT_URL)
    assert np.array_equal(np.asarray(full), np.asarray(expected))

    with pytest.warns(StandInWarning):
        mask = download_image(images.INPAINT_MASK_URL)
    assert mask.size == (512, 512)
    assert set(np.unique(np.asarray(mask))) == {0, 255}  # white on black
    assert cached_files(cache) == []  # stand-ins are not cached as if they were downloads


def test_offline_unknown_url_raises_without_contacting_server(server, monkeypatch, cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url = f"{server.url}/valid.png?test=offline"
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE") as caught:
        download_image(url, timeout=TIMEOUT)
    assert caught.value.reason == "offline" and url in str(caught.value)
    assert "/valid.png?test=offline" not in server.counts


def test_offline_uses_cache(server, monkeypatch):
    url = f"{server.url}/valid.png?test=offline-cache"
    download_image(url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert download_image(url).size == (8, 6)


def test_connection_error_falls_back_to_stand_in(monkeypatch, cache):
    url = dead_url()
    monkeypatch.setitem(images.STAND_INS, url, "shapes_img2img.png")
    with pytest.warns(StandInWarning, match="refused"):
        image = download_image(url, timeout=TIMEOUT)
    assert image.size == (512, 512)
    assert cached_files(cache) == []


def test_http_errors_do_not_fall_back(server, monkeypatch):
    url = f"{server.url}/missing.png?test=no-fallback"
    monkeypatch.setitem(images.STAND_INS, url, "inpaint_image.png")
    with pytest.raises(DownloadError, match="404"):
        download_image(url, timeout=TIMEOUT)


# -------------------------------------------------------------------------------------------
# bundled samples


def test_samples_are_bundled_and_reproducible(tmp_path):
    made = images.make_samples(tmp_path)
    assert {p.name for p in made} == {"inpaint_image.png", "inpaint_mask.png",
                                      "shapes_img2img.png", "shapes_depth.png"}
    for path in made:
        bundled = images.sample_image_path(path.stem)
        with Image.open(bundled) as a, Image.open(path) as b:
            assert a.size == (512, 512)
            assert np.array_equal(np.asarray(a), np.asarray(b)), path.name
    for name in images.STAND_INS.values():
        assert images.sample_image_path(name).is_file()


def test_mask_covers_the_object():
    image = np.asarray(Image.open(images.sample_image_path("inpaint_image")).convert("RGB"))
    mask = np.asarray(Image.open(images.sample_image_path("inpaint_mask.png")).convert("L")) > 127
    red = (image[..., 0] > 150) & (image[..., 2] < 100)
    assert red.any() and mask[red].all()  # every object pixel is masked
    assert mask.sum() > red.sum()  # a bit dilated
    assert mask.mean() < 0.5  # but not the whole picture


def test_unknown_sample_names_the_choices():
    with pytest.raises(FileNotFoundError, match="inpaint_image"):
        images.sample_image_path("dog_on_bench")


def test_sample_name_that_is_not_text_names_the_choices():
    """None gave "'NoneType' object has no attribute 'endswith'"."""
    with pytest.raises(TypeError, match=r"^sample_image_path needs a sample name as text, got "
                                        r"NoneType None: choose one of inpaint_image, ") as info:
        images.sample_image_path(None)
    assert "\n" not in str(info.value)


# -------------------------------------------------------------------------------------------
# grids and figures


def colored(color, size=64):
    return Image.new("RGB", (size, size), color)


def test_image_grid_sizes():
    tiles = [colored((i * 40, 0, 0)) for i in range(5)]
    grid = images.image_grid(tiles)  # 5 -> 2 rows x 3 cols
    assert grid.size == (3 * 64, 2 * 64) and grid.mode == "RGB"
    assert grid.getpixel((64 + 5, 5)) == (40, 0, 0)  # second tile, first row
    assert grid.getpixel((2 * 64 + 5, 64 + 5)) == (0, 0, 0)  # empty cell stays black
    assert images.image_grid(tiles, size=128).size == (3 * 128, 2 * 128)
    assert images.image_grid(tiles, rows=1).size == (5 * 64, 64)
    assert images.image_grid(tiles, cols=2, size=(32, 16)).size == (2 * 32, 3 * 16)
    with pytest.raises(ValueError, match=r"^a 2x2 grid cannot hold 5 images: give more rows or cols") as info:
        images.image_grid(tiles, rows=2, cols=2)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, words", [
    ({"cols": 0}, "cols must be a whole number of 1 or more"),
    ({"rows": 0}, "rows must be a whole number of 1 or more"),
    ({"rows": -1}, "rows must be a whole number of 1 or more"),
    ({"cols": -2}, "cols must be a whole number of 1 or more"),
    ({"cols": 2.5}, "cols must be a whole number of 1 or more"),
    ({"size": 0}, "size must be positive"),
    ({"size": 10**6}, "size must be at most 4096 pixels per side"),
])
def test_image_grid_rejects_bad_rows_cols_and_size(kwargs, words):
    """A clear one-line ValueError, not a ZeroDivisionError or an odd grid."""
    tiles = [colored((i * 40, 0, 0)) for i in range(5)]
    with pytest.raises(ValueError, match=words) as info:
        images.image_grid(tiles, **kwargs)
    assert "\n" not in str(info.value) and repr(next(iter(kwargs.values()))) in str(info.value)
    assert images.image_grid(tiles, rows=np.int64(1)).size == (5 * 64, 64)


@pytest.mark.parametrize("value, shown", [(None, "NoneType None"), ("cat.png", "str 'cat.png'"),
                                          ([colored((0, 0, 0)), 7], "int 7")])
def test_showing_what_is_not_a_picture_names_it(value, shown):
    """Not a 'cannot show an array of shape ()' from numpy: what was given, and what to give."""
    for show in (images.image_grid, images.show_images):
        with pytest.raises(TypeError, match=f"^cannot show {re.escape(shown)} as a picture: give ") as info:
            show(value)
        assert "PIL images, arrays or tensors" in str(info.value)


@pytest.mark.parametrize("value", [[], (), np.zeros((0, 3, 8, 8), np.float32)])
def test_no_pictures_says_what_to_pass(value):
    for show in (images.image_grid, images.show_images):
        start = f"^{show.__name__} needs at least one image: pass "
        with pytest.raises(ValueError, match=start) as info:
            show(value)
        message = str(info.value)
        assert "PIL image" in message and "list" in message and "\n" not in message


@pytest.mark.parametrize("shape", [(5,), (2, 5, 5), (5, 5, 2), (5, 5, 5), (2, 3, 4, 4, 4)])
def test_array_of_wrong_shape_says_which_shapes_work(shape):
    """1-D, 2 channels, 5 channels, 5-D (alone or in a list): one line with the shape given and
    the shapes accepted."""
    for show in (images.image_grid, images.show_images):
        for value in (np.zeros(shape, np.float32), [np.zeros(shape, np.float32)]):
            with pytest.raises(ValueError) as info:
                show(value)
            message = str(info.value)
            assert message.startswith(f"cannot show an array of shape {shape} as a picture: give ")
            assert "(H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4" in message
            assert "\n" not in message
    words = r"shape \(1, 3, 8, 8\).*batch \(N, C, H, W\) goes on its own"
    with pytest.raises(ValueError, match=words):
        images.image_grid([np.zeros((1, 3, 8, 8), np.float32)])  # a batch inside a list


@pytest.mark.parametrize("cols", [0, -2, 2.5, True])
def test_show_images_checks_cols_like_image_grid(cols):
    """cols=0 was taken as "choose" by show_images while image_grid refused it."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    for show in (images.image_grid, images.show_images):
        with pytest.raises(ValueError, match=rf"^cols must be a whole number of 1 or more \(or None "
                                             rf"to choose automatically\), got {cols!r}$"):
            show([colored((0, 0, 0))], cols=cols)
    assert plt.get_fignums() == before


@pytest.mark.parametrize("size", [0, -1, "big", True, float("nan"), float("inf")])
def test_figure_size_must_be_positive_inches(size):
    """size=0 gave matplotlib's "LinAlgError: Singular matrix" after drawing."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    words = rf"^size must be a positive number of inches per picture, e.g. 2.5, got {re.escape(repr(size))}$"
    with pytest.raises(ValueError, match=words):
        images.show_images(colored((0, 0, 0)), size=size)
    with pytest.raises(ValueError, match=words):
        images.plot_latent_channels(np.zeros((4, 8, 8), np.float32), size=size)
    assert plt.get_fignums() == before  # refused before any figure was made


def test_figure_size_in_pixels_is_refused_naming_the_unit():
    """size=128 (image_grid's pixels) would have made a figure 128 inches per picture."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    words = r"^size is in inches per picture \(2.5 is typical\), at most 20, got 128: pixels are image_grid's size$"
    with pytest.raises(ValueError, match=words):
        images.show_images(colored((0, 0, 0)), size=128)
    with pytest.raises(ValueError, match=words):
        images.plot_latent_channels(np.zeros((4, 8, 8), np.float32), size=128)
    assert plt.get_fignums() == before
    images.show_images(colored((0, 0, 0)), size=images.MAX_INCHES)  # the largest still draws
    plt.close("all")


def test_plot_latent_channels_refuses_a_picture_for_a_latent():
    """A (512, 512, 3) picture read as 512 channels made 512 subplots."""
    with pytest.raises(ValueError, match=r"^expected a latent of a few channels \(SD: 4\), got 512 "
                                         r"of shape \(512, 512, 3\): a picture"):
        images.plot_latent_channels(np.zeros((512, 512, 3), np.float32))


@pytest.mark.parametrize("titles, shown", [(5, "int 5"), ({"a": 1}, "dict {'a': 1}")])
def test_titles_must_be_a_list(titles, shown):
    """titles=5 gave "object of type 'int' has no len()"."""
    with pytest.raises(TypeError, match=rf"^titles must be a list of strings, one per image \(or "
                                        rf"None\), got {re.escape(shown)}$"):
        images.show_images([colored((0, 0, 0))], titles=titles)


def test_pictures_may_come_from_any_iterable():
    """A generator gave "cannot show an array of shape ()"."""
    import matplotlib.pyplot as plt

    tiles = [colored((i * 40, 0, 0), 8) for i in range(3)]
    grid = images.image_grid(t for t in tiles)
    assert grid.size == (2 * 8, 2 * 8) and grid.getpixel((8, 0)) == (40, 0, 0)
    fig = images.show_images((t for t in tiles), titles=("a", "b", "c"))
    try:
        assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    finally:
        plt.close(fig)


@pytest.mark.parametrize("empty, shape", [(np.zeros((0, 0, 3)), (0, 0, 3)),
                                          (np.zeros((3, 4, 0), np.float32), (3, 4, 0)),
                                          (Image.new("RGB", (0, 5)), (5, 0))])
def test_empty_picture_is_named(empty, shape):
    """Not numpy's "zero-size array to reduction operation minimum which has no identity"."""
    for show in (images.image_grid, images.show_images):
        with pytest.raises(ValueError, match=rf"^image 1 has shape {re.escape(str(shape))}, with "
                                             "no pixels: every picture needs a height and width"):
            show([colored((0, 0, 0), 8), empty])


@pytest.mark.parametrize("value", [None, 123, b"https://x"])
def test_download_image_needs_text(value):
    with pytest.raises(TypeError, match="^download_image needs a URL or a file path as text, got "):
        download_image(value)


def test_image_grid_accepts_tensors():
    import torch

    batch = torch.zeros(2, 3, 16, 16) - 1  # [-1, 1] range: all black
    batch[1] = 1  # all white
    grid = images.image_grid(batch, size=32)
    assert grid.size == (64, 32)
    assert grid.getpixel((5, 5)) == (0, 0, 0) and grid.getpixel((40, 5)) == (255, 255, 255)


def test_show_images_axes_and_titles():
    import matplotlib.pyplot as plt
    import torch

    pictures = [
        colored((255, 0, 0)),
        torch.rand(3, 16, 16) * 2 - 1,  # CHW in [-1, 1]
        np.zeros((16, 16, 3), dtype=np.uint8),  # HWC uint8
        torch.rand(16, 16, 3),  # HWC in [0, 1]
        np.ones((16, 16), dtype=np.float32),  # gray
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warnings from our code
        fig = images.show_images(pictures, titles=list("abcde"), cols=3)
        assert len(fig.axes) == 6  # 2 rows x 3 cols
        assert sum(len(ax.images) for ax in fig.axes) == 5
        assert [ax.get_title() for ax in fig.axes[:5]] == list("abcde")
        plt.close(fig)

        fig = images.show_images(torch.rand(4, 3, 8, 8))  # a batch counts as 4 pictures
        assert sum(len(ax.images) for ax in fig.axes) == 4
        plt.close(fig)
    with pytest.raises(ValueError, match="titles"):
        images.show_images(pictures, titles=["only one"])


def test_show_images_draws_the_promised_conversion():
    """CHW -> HWC, [-1, 1] -> [0, 1]; [0, 1] floats and uint8 drawn as they are; gray in gray."""
    import matplotlib.pyplot as plt
    import torch

    per_channel = torch.empty(3, 4, 5)  # CHW in [-1, 1], one value per channel
    per_channel[0], per_channel[1], per_channel[2] = -1.0, 0.0, 0.5
    hwc01 = torch.rand(4, 5, 3)
    u8 = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    gray = np.full((4, 5), 0.25, dtype=np.float32)
    pictures = [torch.full((3, 4, 5), -1.0), per_channel, hwc01, u8, gray, colored((9, 8, 7), 4)]
    fig = images.show_images(pictures, cols=3)
    try:
        shown = [np.asarray(ax.images[0].get_array()) for ax in fig.axes]
        assert shown[0].shape == (4, 5, 3) and np.array_equal(shown[0], np.zeros((4, 5, 3)))
        assert shown[1].shape == (4, 5, 3)
        for c, value in enumerate([0.0, 0.5, 0.75]):
            assert np.allclose(shown[1][..., c], value), c
        assert np.allclose(shown[2], hwc01.numpy())  # already [0, 1]: not rescaled
        assert shown[3].dtype == np.uint8 and np.array_equal(shown[3], u8)
        assert np.allclose(shown[4], 0.25)
        image = fig.axes[4].images[0]
        assert image.get_cmap().name == "gray" and image.get_clim() == (0, 1)  # not stretched
        assert np.array_equal(shown[5], np.full((4, 4, 3), (9, 8, 7), dtype=np.uint8))
    finally:
        plt.close(fig)


def test_whole_numbers_are_0_to_255_and_0_to_255_floats_are_refused():
    """int64 arrays, torch long tensors and 0..255 floats were all drawn plain white (clipped
    to [0, 1]); a pipeline's output is drawn as its .images."""
    import matplotlib.pyplot as plt
    import torch

    u8 = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    mask = np.eye(4, dtype=np.int64)

    class Output:  # what a diffusers pipeline returns
        images = [Image.fromarray(u8)]

    pictures = [u8.astype(np.int64), torch.from_numpy(u8.copy()).permute(2, 0, 1).long(), mask]
    fig = images.show_images(pictures)
    try:
        shown = [np.asarray(ax.images[0].get_array()) for ax in fig.axes]
        assert np.array_equal(shown[0], u8) and np.array_equal(shown[1], u8)
        assert np.array_equal(shown[2], np.eye(4))  # 0/1: black and white
    finally:
        plt.close(fig)
    assert np.array_equal(np.asarray(images.image_grid(u8.astype(np.int32))), u8)
    assert np.array_equal(np.asarray(images.image_grid(Output())), u8)
    with pytest.raises(ValueError, match=r"image 0 has values up to 235\.0: floats are read as "
                       r"\[0, 1\] or \[-1, 1\]; divide by 255, or convert to uint8"):
        images.show_images(u8.astype(np.float32))
    with pytest.raises(ValueError, match="image 1 holds whole numbers from 300 to 300: pictures of "
                       "whole numbers take 0..255"):
        images.image_grid([u8, np.full((4, 4, 3), 300)])


def test_latent_plots_and_grids_refuse_what_would_fail_deep_or_fill_the_memory():
    """vae.encode(x) (an output holding a distribution) was float()'s TypeError, an empty latent
    matplotlib's; a 10000 x 10000 grid got the process killed."""
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    dist = DiagonalGaussianDistribution(torch.zeros(1, 8, 2, 2))

    class Encoded:  # what vae.encode(x) returns
        latent_dist = dist

    for given in (dist, Encoded()):
        with pytest.raises(TypeError, match="DiagonalGaussianDistribution is a distribution over "
                           "latents, not a latent: pass vae.encode"):
            images.plot_latent_channels(given)
    with pytest.raises(ValueError, match=r"the latent of shape \(4, 0, 8\) is empty"):
        images.plot_latent_channels(torch.zeros(4, 0, 8))
    with pytest.raises(ValueError, match="a grid of 10000x10000 pictures of 4x4 would be 40000x40000 "
                       "pixels: more than 16384 per side; give fewer rows/cols or a smaller size"):
        images.image_grid([colored((1, 2, 3), 4)], rows=10000, cols=10000)


def test_a_link_with_spaces_and_a_home_path_are_read(tmp_path, monkeypatch):
    """' https://…' (copied with a space) was "neither an http(s) URL nor an existing file", as
    was '~/x.png'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    colored((9, 8, 7), 4).save(tmp_path / "x.png")
    assert download_image("~/x.png").getpixel((0, 0)) == (9, 8, 7)
    assert download_image("  ~/x.png\n").size == (4, 4)


def test_tiny_chw_tensor_is_read_channels_first():
    """A 3x4x4 tensor is a 4x4 RGB picture, not a 3-row RGBA one; a 4x5x3 tensor is HWC; when
    the channel count does not decide (4x4x4), a tensor is CHW and a numpy array HWC."""
    import matplotlib.pyplot as plt
    import torch

    square_tensor, square_array = torch.zeros(4, 4, 4), np.zeros((4, 4, 4), np.float32)
    square_tensor[0] = 1.0  # read CHW: channel 0 is 1 everywhere
    square_array[..., 0] = 1.0  # read HWC: the same
    fig = images.show_images([torch.full((3, 4, 4), -1.0), torch.zeros(4, 5, 3),
                              square_tensor, square_array])
    try:
        shown = [np.asarray(ax.images[0].get_array()) for ax in fig.axes]
        assert shown[0].shape == (4, 4, 3) and np.array_equal(shown[0], np.zeros((4, 4, 3)))
        assert shown[1].shape == (4, 5, 3)
        for drawn in shown[2:]:
            assert np.array_equal(drawn[..., 0], np.ones((4, 4)))
            assert np.array_equal(drawn[..., 1:], np.zeros((4, 4, 3)))
    finally:
        plt.close(fig)
    chw = torch.full((3, 4, 4), -1.0)
    chw[0] = 1.0  # red
    grid = images.image_grid([chw], size=4)
    assert grid.size == (4, 4) and grid.getpixel((0, 0)) == (255, 0, 0)


def test_plot_latent_channels():
    import matplotlib.pyplot as plt
    import torch

    latents = torch.randn(1, 4, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = images.plot_latent_channels(latents, title="latents")
        assert len(fig.axes) == 4 and fig.axes[3].get_title() == "channel 3"
        for i, ax in enumerate(fig.axes):  # panel i draws channel i, not the first one each time
            assert len(ax.images) == 1
            np.testing.assert_array_equal(ax.images[0].get_array(), latents[0, i].numpy())
        assert fig.get_suptitle() == "latents"
        plt.close(fig)
        array = np.random.randn(3, 8, 8).astype(np.float16)
        fig = images.plot_latent_channels(array)
        assert len(fig.axes) == 3 and fig.get_suptitle() == ""  # no title asked for, none drawn
        for i, ax in enumerate(fig.axes):
            np.testing.assert_array_equal(ax.images[0].get_array(), array[i].astype(np.float32))
        plt.close(fig)
    with pytest.raises(ValueError, match="latents\\[0\\]"):
        images.plot_latent_channels(torch.randn(2, 4, 8, 8))


@pytest.fixture
def jupyter(monkeypatch):
    """A Jupyter kernel as _shown_once sees one: an IPython shell (in cell 5) and the inline
    backend; IPython's display() records what it is given instead of drawing it."""
    import types

    import IPython
    import IPython.display
    import matplotlib.pyplot as plt

    plt.close(plt.figure())  # pyplot settles its backend first, outside the fake kernel
    shell = types.SimpleNamespace(execution_count=5, displayed=[])
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kwargs: shell.displayed.append(obj))
    monkeypatch.setattr(matplotlib, "get_backend",
                        lambda *args, **kwargs: "module://matplotlib_inline.backend_inline")
    return shell


@pytest.mark.parametrize("draw", [lambda: images.show_images([colored((255, 0, 0), 8)] * 2),
                                  lambda: images.plot_latent_channels(np.zeros((4, 8, 8), np.float32))],
                         ids=["show_images", "plot_latent_channels"])
def test_in_jupyter_a_figure_is_drawn_exactly_once(jupyter, draw):
    """The inline backend draws every open figure when the cell ends, and the cell's value is
    drawn too: the figure is displayed once now and closed (so the backend skips it); asked
    for again in the same cell nothing more is drawn, in a later cell it shows as usual."""
    import matplotlib.pyplot as plt

    fig = draw()
    try:
        assert jupyter.displayed == [fig]
        assert not plt.fignum_exists(fig.number)  # the backend will not draw it a second time
        fig._ipython_display_()  # the cell's value, in the cell that drew it: already shown
        assert jupyter.displayed == [fig]
        jupyter.execution_count = 6  # `fig` alone in a later cell
        fig._ipython_display_()
        assert jupyter.displayed == [fig, fig]
    finally:
        plt.close(fig)


def test_outside_the_inline_backend_a_figure_is_left_alone(jupyter, monkeypatch):
    """An IPython shell with another backend (a terminal, a script under ipython): the figure
    stays open for plt.show() and nothing is displayed."""
    import matplotlib.pyplot as plt

    monkeypatch.setattr(matplotlib, "get_backend", lambda *args, **kwargs: "agg")
    fig = images.show_images(colored((0, 255, 0), 8))
    try:
        assert jupyter.displayed == [] and plt.fignum_exists(fig.number)
        assert not hasattr(fig, "_ipython_display_")
    finally:
        plt.close(fig)
