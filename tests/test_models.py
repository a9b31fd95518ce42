import json

import pytest

from sdcourse import models


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SDCOURSE_MODEL", raising=False)
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path / "cache"))


def test_argument_beats_environment_beats_auto(monkeypatch):
    monkeypatch.setenv("SDCOURSE_MODEL", "real")
    assert models.choose_model("text2img", model="mini", device="cpu").kind == "mini"
    choice = models.choose_model("text2img", device="cpu")
    assert choice.kind == "real" and "SDCOURSE_MODEL" in choice.reason
    assert choice.source == models.REAL_MODELS["text2img"][0]


def test_auto_is_mini_without_gpu():
    choice = models.choose_model("inpaint", device="cpu")
    assert choice.kind == "mini" and "no GPU" in choice.reason


def test_auto_with_gpu_depends_on_hub_and_cache(monkeypatch):
    monkeypatch.setattr(models, "in_local_cache", lambda repo: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    assert models.choose_model("text2img", device="cuda").kind == "mini"
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)
    assert models.choose_model("text2img", device="cuda").source == models.REAL_MODELS["text2img"][0]
    second = models.REAL_MODELS["inpaint"][1]
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr(models, "in_local_cache", lambda repo: repo == second)
    choice = models.choose_model("inpaint", device="mps")
    assert choice.source == second and "cache" in choice.reason


def test_registry_avoids_deleted_repositories():
    for task in models.TASKS:
        assert models.REAL_MODELS[task], task
        for repo in models.REAL_MODELS[task]:
            assert not repo.startswith(("stabilityai/stable-diffusion-2", "runwayml/")), repo


def test_explicit_id_or_path(tmp_path):
    assert models.choose_model("text2img", model="some/repo").source == "some/repo"
    with pytest.raises(models.ModelChoiceError, match="without model_index.json"):
        models.choose_model("text2img", model=str(tmp_path))
    with pytest.raises(models.ModelChoiceError, match="unknown task 'video'"):
        models.choose_model("video")


def test_offline_env_means_hub_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False


def test_mini_text2img_folder_is_a_diffusers_pipeline():
    if not (models.MINI_DIR / "unet").is_dir():
        pytest.skip("mini text2img checkpoints not trained yet")
    path = models.mini_model_path("text2img")
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert models.mini_model_path("text2img") == path  # built once, reused
