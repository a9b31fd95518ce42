import numpy as np

from sdcourse import evaluate, world


def test_evaluator_reads_ground_truth_pictures():
    samples = world.dataset(300, seed=42)
    scores = evaluate.score([s.image for s in samples], [s.scene for s in samples])
    assert min(scores.values()) >= 0.98, scores


def test_evaluator_is_near_chance_on_noise():
    scenes = [s.scene for s in world.dataset(300, seed=43)]
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in scenes]
    scores = evaluate.score(noise, scenes)
    assert scores["color_acc"] < 0.3 and scores["background_acc"] < 0.3
    assert scores["shape_acc"] < 0.5


def test_empty_picture_has_no_object():
    plain = np.zeros((64, 64, 3), np.uint8) + np.array(world.COLORS["green"], np.uint8)
    reading = evaluate.read_image(plain)
    assert reading.background == "green" and reading.color is None and reading.shape is None


def test_object_mask_matches_truth_and_iou():
    s = world.sample(5)
    reading = evaluate.read_image(s.image)
    assert evaluate.mask_iou(reading.mask, s.mask > 0.5) > 0.9
    assert evaluate.mask_iou(reading.mask, ~reading.mask) == 0.0
