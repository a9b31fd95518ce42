import random
import re

import numpy as np
import pytest

from sdcourse import world


def test_same_seed_same_picture_and_different_seeds_differ():
    a, b, c = world.sample(3), world.sample(3), world.sample(4)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.caption == b.caption
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_sample_has_caption_mask_and_depth_that_agree():
    s = world.sample(0, color="red", shape="square", background="blue")
    assert s.caption == "a red square on a blue background"
    assert s.image.size == (64, 64) and s.image.mode == "RGB"
    px = np.asarray(s.image)
    inside, outside = s.mask > 0.99, s.mask < 0.01
    assert np.all(px[inside] == world.COLORS["red"])
    assert np.all(px[outside] == world.COLORS["blue"])
    # the object stands in front: nearer (larger depth) than any background pixel
    assert s.depth[inside].min() > s.depth[outside].max()
    # a square fills its box; its area matches its size
    assert abs(s.mask.sum() - s.scene.size ** 2) / s.scene.size ** 2 < 0.1


def test_world_covers_all_colours_shapes_and_varies_layout():
    scenes = [s.scene for s in world.dataset(400, seed=1)]
    assert {s.color for s in scenes} == set(world.COLORS) and len(world.COLORS) >= 8
    assert {s.shape for s in scenes} == set(world.SHAPES) and len(world.SHAPES) >= 3
    assert all(s.color != s.background for s in scenes)
    assert len({(round(s.cx), round(s.cy)) for s in scenes}) > 100
    assert max(s.size for s in scenes) - min(s.size for s in scenes) > 10


def test_a_fixed_background_gets_an_object_of_another_colour():
    """Only the background pinned: every seed draws, the object never in the background's
    colour (it used to raise for about one seed in nine), and seeds that drew another colour
    before draw the same scene as before (the redraw only replaces the clash)."""
    import random

    scenes = [world.sample(seed, background="red").scene for seed in range(200)]
    assert all(s.background == "red" and s.color != "red" for s in scenes)
    assert len({s.color for s in scenes}) == len(world.COLORS) - 1
    first = random.Random(7).choice(list(world.COLORS))  # seed 7's object colour, drawn freely
    pinned = "blue" if first != "blue" else "green"
    assert world.sample(7, background=pinned).scene.color == first


def test_bad_requests_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="both 'red'"):
        world.sample(0, color="red", background="red")
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        world.sample(0, shape="hexagon")


def test_images_to_tensor_range_and_shape():
    x = world.images_to_tensor([world.sample(i).image for i in range(3)])
    assert tuple(x.shape) == (3, 3, 64, 64)
    assert x.min() >= -1 and x.max() <= 1


def test_images_to_tensor_maps_each_colour_to_its_value_per_channel():
    """Pixel value v in channel c of image n lands at x[n, c, :, :] as exactly v / 127.5 - 1."""
    import torch
    from PIL import Image

    names = ["red", "yellow", "black"]
    # a non-square size tells (H, W) from (W, H); an RGBA picture must become RGB first
    images = [Image.new("RGB", (5, 3), world.COLORS[n]) for n in names[:2]]
    images.append(Image.new("RGBA", (5, 3), world.COLORS[names[2]] + (128,)))
    x = world.images_to_tensor(images)
    assert tuple(x.shape) == (3, 3, 3, 5) and x.dtype == torch.float32
    for i, name in enumerate(names):
        for c, value in enumerate(world.COLORS[name]):
            assert torch.equal(x[i, c], torch.full((3, 5), value / 127.5 - 1.0)), (name, c)
    # the ends of the byte range are the ends of [-1, 1]
    ends = world.images_to_tensor([Image.new("RGB", (2, 2), (0, 255, 0))])
    assert ends[0, 0].eq(-1).all() and ends[0, 1].eq(1).all() and ends[0, 2].eq(-1).all()


def test_unknown_names_are_refused_where_the_scene_is_made():
    """Not later, as a KeyError in render: a one-line ValueError listing the valid names."""
    for fixed, words in (({"color": "pink"}, "unknown colour 'pink': choose one of red, green"),
                         ({"background": "grey"}, "unknown background 'grey': choose one of red"),
                         ({"shape": "hexagon"}, "unknown shape 'hexagon': choose one of circle")):
        with pytest.raises(ValueError, match=words) as info:
            world.random_scene(random.Random(0), **fixed)
        assert "\n" not in str(info.value)
        assert "black" in str(info.value) or "triangle" in str(info.value)
    with pytest.raises(ValueError, match="unknown colour 'Red'"):
        world.Scene("Red", "circle", "blue")
    with pytest.raises(ValueError, match="unknown background 'sky'"):
        world.Scene("red", "circle", "sky")
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        world.Scene("red", "star", "blue")
    assert world.render(world.Scene("red", "circle", "blue")).caption == "a red circle on a blue background"


@pytest.mark.parametrize("call, error, message", [
    # None drew a new picture each call; 1.5 and "abc" were seeds of their own
    (lambda: world.sample(None), TypeError, "seed None is not a whole number: pass an int, e.g. seed=0"),
    (lambda: world.sample(1.5), TypeError, "seed 1.5 is not a whole number: pass an int, e.g. seed=0"),
    (lambda: world.sample("abc"), TypeError, "seed 'abc' is not a whole number: pass an int, e.g. seed=0"),
    (lambda: world.sample(True), TypeError, "seed True is not a whole number: pass an int, e.g. seed=0"),
    (lambda: world.dataset(2, seed=None), TypeError, "seed None is not a whole number: pass an int, e.g. seed=0"),
    # -1 gave [] and True one sample
    (lambda: world.dataset(-1), ValueError, "n=-1 is not a number of samples: pass n=0 or more"),
    (lambda: world.dataset(True), TypeError, "n True is not a whole number: pass an int, e.g. n=0"),
    (lambda: world.dataset(2.0), TypeError, "n 2.0 is not a whole number: pass an int, e.g. n=0"),
    # random.Random(-1) is Random(1): seed -1 drew seed 1's picture
    (lambda: world.sample(-1), ValueError, "seed -1 is negative: pass 0 or more (seed -1 would draw "
     "seed 1's picture again)"),
    (lambda: world.dataset(3, seed=-2), ValueError, "seed -2 is negative: pass 0 or more (seed -1 "
     "would draw seed 1's picture again)"),
])
def test_seeds_and_counts_must_be_whole_numbers(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


def test_images_to_tensor_takes_one_picture_and_names_what_it_cannot_stack():
    """A single picture was "'Image' object is not iterable", an array "no attribute 'convert'",
    two sizes numpy's "all input arrays must have the same shape"."""
    picture = world.sample(0).image
    assert tuple(world.images_to_tensor(picture).shape) == (1, 3, 64, 64)
    for given, error, message in (
            ([], ValueError, "images_to_tensor needs at least one PIL image"),
            ([picture, np.asarray(picture)], TypeError, "image 1 is ndarray, not a PIL image"),
            ([picture, picture.resize((32, 32))], ValueError, "image 1 is 32x32, image 0 64x64")):
        with pytest.raises(error, match=re.escape(message)):
            world.images_to_tensor(given)


def test_a_scene_off_the_picture_is_refused_and_a_sample_renders_again():
    """size=-5 was PIL's "x1 must be greater than or equal to x0", NaN or cx=1000 a picture
    with no object; render(sample) an AttributeError."""
    for kwargs, shown in (({"size": -5}, "size must be a number from 1 to 64"),
                          ({"cx": 1000}, "cx must be a number from 0 to 64"),
                          ({"cy": float("nan")}, "cy must be a number from 0 to 64"),
                          ({"size": "30"}, "size must be a number from 1 to 64")):
        with pytest.raises(ValueError, match=re.escape(shown)):
            world.Scene("red", "circle", "blue", **kwargs)
    drawn = world.sample(3)
    assert world.render(drawn).image.tobytes() == drawn.image.tobytes()


def test_numpy_integer_seeds_give_the_int_seeds_picture():
    assert world.sample(np.int64(7)).image.tobytes() == world.sample(7).image.tobytes()
    assert world.dataset(0) == []


def test_captions_use_an_before_a_vowel():
    assert world.caption("orange", "circle", "blue") == "an orange circle on a blue background"
    assert world.caption("red", "square", "orange") == "a red square on an orange background"
    assert world.render(world.Scene("orange", "triangle", "white")).caption.startswith("an orange triangle")


def test_evaluation_scenes_are_never_training_pictures():
    """The trainers draw from whole-number seeds (the VAE: samples 0 to 31,999); evaluations
    seeded the same way started on a training picture (``Random(1234)`` is ``sample(1234)``'s
    stream). Evaluation scenes come from a seed space of their own: reproducible, different
    per seed, and none of them among the first 32,000 training scenes."""
    def key(scene):
        return (scene.color, scene.shape, scene.background, scene.cx, scene.cy, scene.size)

    first = world.evaluation_scenes(64, 1234)
    assert world.evaluation_scenes(64, 1234) == first
    assert world.evaluation_scenes(64, 1235) != first
    trained = {key(world.random_scene(random.Random(k))) for k in range(32_000)}
    assert key(world.random_scene(random.Random(1234))) in trained  # (how evaluations drew before)
    for seed in (0, 77, 1234):
        assert not trained & {key(s) for s in world.evaluation_scenes(256, seed)}
    from sdcourse import evaluate  # what the evaluation suites draw their cases from

    assert evaluate.random_scenes(64, 1234) == first
    with pytest.raises(ValueError, match="seed -1 is negative"):
        world.evaluation_scenes(1, -1)


def test_a_scene_of_one_colour_and_an_oversized_dataset_are_refused():
    """An object on a background of its own colour cannot be seen (the reader finds nothing);
    a dataset longer than the stride between seeds would repeat the next seed's samples."""
    with pytest.raises(ValueError, match="^object and background are both 'red': pick two different colours$"):
        world.Scene("red", "circle", "red")
    with pytest.raises(ValueError, match=r"^n=1000004 is more samples than one seed holds: pass "
                       r"at most 1,000,003 \(more would repeat the next seed's samples\)$"):
        world.dataset(world.DATASET_STRIDE + 1)
