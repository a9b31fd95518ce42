import gc
import json
import os
import re
import shutil
import weakref

import pytest
import torch

from sdcourse import models


ON_HUB = models.on_hub  # the real one, for its own test


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SDCOURSE_MODEL", raising=False)
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path / "cache"))
    # no test asks the Hub: where a test says it is reachable, every registry entry is on it
    monkeypatch.setattr(models, "on_hub", lambda repo: True)


def test_argument_beats_environment_beats_auto(monkeypatch):
    # nothing in the local cache, whatever this machine's Hugging Face cache holds: "real"
    # then means the registry's first checkpoint
    monkeypatch.setattr(models, "in_local_cache", lambda repo: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setenv("SDCOURSE_MODEL", "real")
    assert models.choose_model("text2img", model="mini", device="cpu").kind == "mini"
    choice = models.choose_model("text2img", device="cpu")
    assert choice.kind == "real" and "SDCOURSE_MODEL" in choice.reason
    assert choice.source == models.REAL_MODELS["text2img"][0]


def test_mini_and_real_are_words_in_any_case(monkeypatch):
    """"Mini" or " REAL" (a typo's capital, a stray space) are the course's words, not Hub ids."""
    monkeypatch.setattr(models, "in_local_cache", lambda repo: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    assert models.choose_model("text2img", model="Mini ").kind == "mini"
    monkeypatch.setenv("SDCOURSE_MODEL", " REAL")
    choice = models.choose_model("text2img", device="cpu")
    assert (choice.kind, choice.source) == ("real", models.REAL_MODELS["text2img"][0])


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


def test_auto_and_real_skip_registry_checkpoints_deleted_from_the_hub(monkeypatch):
    # the Hub is reachable but the first choice is gone: everything that reads choice.source
    # (load_pipeline, and notebooks 01 and 08 loading one component) gets the next one
    first, second = models.REAL_MODELS["text2img"][:2]
    asked = []
    monkeypatch.setattr(models, "in_local_cache", lambda repo: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setattr(models, "on_hub", lambda repo: asked.append(repo) or repo != first)
    assert models.choose_model("text2img", device="cuda").source == second
    assert asked == [first, second]
    assert models.choose_model("text2img", model="real", device="cpu").source == second
    monkeypatch.setattr(models, "on_hub", lambda repo: False)  # every one deleted
    choice = models.choose_model("text2img", device="cuda")
    assert choice.kind == "mini" and "none of the course's text2img checkpoints" in choice.reason
    # asked for by name, it stays real: loading it then says what is wrong
    assert models.choose_model("text2img", model="real", device="cpu").source == first


def test_on_hub_says_no_only_for_a_missing_repository(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def file_exists(repo_id, filename):
        assert filename == "model_index.json"
        if repo_id == "gone/repo":
            return False  # what huggingface_hub answers for a deleted repository
        if repo_id == "gated/repo":
            gated = GatedRepoError.__new__(GatedRepoError)  # its __init__ wants an HTTP response
            Exception.__init__(gated, "403: access to gated/repo is restricted")
            raise gated
        raise ConnectionError("network hiccup")

    monkeypatch.setattr(huggingface_hub, "file_exists", file_exists)
    assert ON_HUB("gone/repo") is False
    assert ON_HUB("gated/repo") is True
    assert ON_HUB("flaky/repo") is True


def test_registry_avoids_deleted_repositories():
    for task in models.TASKS:
        assert models.REAL_MODELS[task], task
        for repo in models.REAL_MODELS[task]:
            assert not repo.startswith(("stabilityai/stable-diffusion-2", "runwayml/")), repo


def test_explicit_id_or_path(tmp_path):
    assert models.choose_model("text2img", model="some/repo").source == "some/repo"
    with pytest.raises(models.ModelChoiceError, match="without model_index.json"):
        models.choose_model("text2img", model=str(tmp_path))
    for typo in (str(tmp_path / "no_such_folder"), "not an id"):
        with pytest.raises(models.ModelChoiceError, match="neither a folder nor a Hub id"):
            models.choose_model("text2img", model=typo)
    with pytest.raises(models.ModelChoiceError, match="unknown task 'video'"):
        models.choose_model("video")


def test_a_folder_whose_unet_is_another_tasks_is_refused_for_that_task(tmp_path):
    """A text-to-image folder given for inpainting would load, then fail minutes later on the
    mask's channels: its UNet config says so first. The shipped mini model's folders agree."""
    folder = tmp_path / "t2i"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "config.json").write_text('{"in_channels": 4}')
    for task in ("text2img", "img2img"):
        assert models.choose_model(task, model=str(folder)).source == str(folder)
    with pytest.raises(models.ModelChoiceError, match=r"is a text-to-image checkpoint \(its UNet takes 4 "
                       r"input channels, inpaint needs 9\): give a checkpoint made for inpaint"):
        models.choose_model("inpaint", model=str(folder))
    (folder / "unet" / "config.json").write_text('{"in_channels": 9}')
    assert models.choose_model("inpaint", model=str(folder)).kind == "real"
    with pytest.raises(models.ModelChoiceError, match="is an inpainting checkpoint"):
        models.choose_model("depth2img", model=str(folder))
    (folder / "unet" / "config.json").unlink()  # unreadable: loading it says what is missing
    assert models.choose_model("depth2img", model=str(folder)).kind == "real"
    for task in models.TASKS:
        assert models.unet_in_channels(models.mini_model_path(task)) == models.UNET_INPUTS[task]


def test_a_file_given_as_the_model_is_named_a_file_not_a_hub_id(tmp_path, monkeypatch):
    """A single-file checkpoint ("model.safetensors") once got 'not in the local Hugging Face
    cache and offline mode is on': it was taken for a Hub id."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a pipeline")
    assert models._is_hub_id("model.safetensors") is False
    assert models._is_hub_id("someone/other.safetensors") is True  # no such file here: spelled like an id
    for given in ("model.safetensors", str(tmp_path / "model.safetensors")):
        with pytest.raises(models.ModelChoiceError, match=r"is a file, not a diffusers pipeline "
                           r"folder: give the folder that holds model_index.json"):
            models.choose_model("text2img", model=given)
    monkeypatch.setenv("SDCOURSE_MODEL", "model.safetensors")
    with pytest.raises(models.ModelChoiceError, match="is a file"):
        models.load_pipeline("text2img")


def test_offline_env_means_hub_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False


@pytest.mark.parametrize("env, address", [
    ({}, ("huggingface.co", 443)),
    ({"HF_ENDPOINT": "https://hf-mirror.com/"}, ("hf-mirror.com", 443)),  # a mirror
    ({"HTTPS_PROXY": "http://proxy.school:3128"}, ("proxy.school", 3128)),
    ({"https_proxy": "proxy.school:8080"}, ("proxy.school", 8080)),
    ({"HTTPS_PROXY": "http://proxy.school:3128", "NO_PROXY": "huggingface.co"}, ("huggingface.co", 443)),
    ({"HF_ENDPOINT": "http://localhost:8000", "HTTPS_PROXY": "http://proxy:3128"}, ("localhost", 8000)),
])
def test_the_hub_probe_knocks_where_a_download_would_connect(monkeypatch, env, address):
    """Behind a proxy huggingface.co itself never answers, and with HF_ENDPOINT downloads go
    to a mirror: the probe asks the proxy, or the endpoint, as the download libraries would."""
    for name in ("HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                 "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert models.hub_address() == address


@pytest.mark.parametrize("env, setting", [
    ({"HTTPS_PROXY": "::::"}, "HTTPS_PROXY='::::'"),
    ({"https_proxy": "proxy.school:port"}, "HTTPS_PROXY='proxy.school:port'"),
    ({"HF_ENDPOINT": "https://hf-mirror.com:abc"}, "HF_ENDPOINT='https://hf-mirror.com:abc'"),
])
def test_a_malformed_proxy_or_endpoint_is_one_line_naming_the_variable(monkeypatch, env, setting):
    """A port that is no number was urllib's traceback ("Port could not be cast to integer")."""
    for name in ("HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(models.ModelChoiceError) as info:
        models.hub_address()
    assert str(info.value) == f"{setting} is not a web address (host[:port]): fix it or unset it"


def test_a_bare_word_is_no_hub_id_and_a_near_miss_of_mini_or_real_is_named(tmp_path, monkeypatch):
    """SDCOURSE_MODEL=mni was taken for a Hub id, and the user sent to the network."""
    monkeypatch.chdir(tmp_path)
    for typo, hint in (("mni", "did you mean mini?"), ("Reall", "did you mean real?"),
                       ("sd15", "check the path")):
        assert models._is_hub_id(typo) is False
        with pytest.raises(models.ModelChoiceError) as info:
            models.choose_model("text2img", model=typo)
        assert str(info.value) == (f"{typo!r} is neither a folder nor a Hub id like "
                                   f"'stable-diffusion-v1-5/stable-diffusion-v1-5': {hint}")
    (tmp_path / "sd15").mkdir()  # a folder of that name is a folder
    with pytest.raises(models.ModelChoiceError, match="is a folder without model_index.json"):
        models.choose_model("text2img", model="sd15")


def test_hub_probe_is_reused_for_a_while_then_asked_again(monkeypatch):
    """One pipeline load asks hub_reachable several times; behind a firewall that drops
    packets each probe would wait its whole timeout, so one answer serves for HUB_PROBE_TTL."""
    import socket

    probes, clock = [], [1000.0]
    answer = {"up": False}

    class Connection:
        def close(self):
            pass

    def connect(address, timeout=None):
        probes.append(address)
        if not answer["up"]:
            raise OSError("unreachable")
        return Connection()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_probe", None)
    monkeypatch.setattr(models.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(socket, "create_connection", connect)
    assert models.hub_reachable() is False
    answer["up"] = True
    clock[0] += models.HUB_PROBE_TTL - 1
    assert models.hub_reachable() is False and len(probes) == 1  # the same answer, no new probe
    clock[0] += 2
    assert models.hub_reachable() is True and len(probes) == 2  # stale: asked again
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode wins over a remembered "reachable"
    assert models.hub_reachable() is False and len(probes) == 2


def test_mini_text2img_folder_is_a_diffusers_pipeline():
    # the weights ship in sdcourse/mini: without them the package is broken, not "untrained"
    # (reusing the folder without rebuilding it: tests/test_mini_cache.py)
    assert (models.MINI_DIR / "unet").is_dir(), f"no text2img UNet in {models.MINI_DIR}"
    path = models.mini_model_path("text2img")
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_real_prefers_a_registry_checkpoint_already_downloaded(monkeypatch):
    second = models.REAL_MODELS["text2img"][1]
    monkeypatch.setattr(models, "in_local_cache", lambda repo: repo == second)
    choice = models.choose_model("text2img", model="real")
    assert choice.source == second and "local cache" in choice.reason
    monkeypatch.setattr(models, "in_local_cache", lambda repo: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)  # no network asked
    assert models.choose_model("text2img", model="real").source == models.REAL_MODELS["text2img"][0]


class FakePipeline:
    """Stands in for a diffusers pipeline class: records what was loaded, fails on request."""

    missing: set = set()  # repositories that fail to load
    no_fp16: set = set()  # repositories without fp16 files
    broken: set = set()  # repositories that fail for a reason other than missing fp16 files
    loaded: list = []
    collector_running: list = []  # gc.isenabled() at each load

    @classmethod
    def from_pretrained(cls, repo, **kwargs):
        if repo in cls.missing:
            raise OSError(f"{repo} is not a valid model identifier\nmore detail")
        if repo in cls.no_fp16 and kwargs.get("variant") == "fp16":
            raise OSError(f"{repo} has no file with variant fp16")
        if repo in cls.broken:
            cls.loaded.append((repo, kwargs))
            raise ValueError(f"{repo}: a component failed")
        cls.loaded.append((repo, kwargs))
        cls.collector_running.append(gc.isenabled())
        return cls()

    @classmethod
    def index(cls, repo, offline=False):  # stands in for models.model_index
        if repo in cls.missing:
            raise OSError(f"{repo} is not a valid model identifier")
        return {"unet": ["diffusers", "UNet2DConditionModel"]}

    def to(self, device):
        return self

    def set_progress_bar_config(self, **kwargs):
        pass


@pytest.fixture
def fake_pipeline(monkeypatch):
    import diffusers

    monkeypatch.setattr(FakePipeline, "missing", set())
    monkeypatch.setattr(FakePipeline, "no_fp16", set())
    monkeypatch.setattr(FakePipeline, "broken", set())
    monkeypatch.setattr(FakePipeline, "loaded", [])
    monkeypatch.setattr(FakePipeline, "collector_running", [])
    monkeypatch.setattr(diffusers, "StableDiffusionInpaintPipeline", FakePipeline)
    monkeypatch.setattr(models, "model_index", FakePipeline.index)
    return FakePipeline


def test_real_checkpoint_offline_and_not_downloaded_fails_before_loading(monkeypatch, fake_pipeline):
    monkeypatch.setattr(models, "in_local_cache", lambda repo: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(models.ModelChoiceError, match=r"not in the local Hugging Face cache .*"
                                                      r"\(SDCOURSE_MODEL=mini\)"):
        models.load_pipeline("inpaint", model="real", device="cpu", verbose=False)
    assert fake_pipeline.loaded == []


def test_a_registry_checkpoint_that_fails_to_load_falls_back_to_the_next(monkeypatch, capsys,
                                                                         fake_pipeline):
    first, second = models.REAL_MODELS["inpaint"]
    monkeypatch.setattr(models, "in_local_cache", lambda repo: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)
    fake_pipeline.missing = {first}
    models.load_pipeline("inpaint", model="real", device="cpu", verbose=False)
    assert [repo for repo, _ in fake_pipeline.loaded] == [second]
    assert capsys.readouterr().out.strip() == (f"sdcourse: could not load {first} ({first} is not a "
                                               f"valid model identifier); trying {second}")
    fake_pipeline.missing = {first, second}  # the last one failing too: one line, no traceback
    with pytest.raises(models.ModelChoiceError, match=f"could not load {second} "):
        models.load_pipeline("inpaint", model="real", device="cpu", verbose=False)
    fake_pipeline.missing = {"some/repo"}  # an id of the user's own: no registry fallback
    with pytest.raises(models.ModelChoiceError, match="could not load some/repo "):
        models.load_pipeline("inpaint", model="some/repo", device="cpu", verbose=False)


def test_offline_a_cached_checkpoint_loads_from_the_cache_without_asking_the_hub(monkeypatch, fake_pipeline):
    """Offline (a classroom that downloaded the checkpoints beforehand), diffusers would ask
    the Hub first and print that it cannot reach it, in every notebook: load from the cache."""
    asked = []
    monkeypatch.setattr(models, "in_local_cache", lambda repo: True)
    monkeypatch.setattr(models, "model_index", lambda repo, offline=False: asked.append(offline) or {})
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    models.load_pipeline("inpaint", model="real", device="cpu", verbose=False)
    assert fake_pipeline.loaded[-1][1].get("local_files_only") is True and asked == [True]
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)  # online: as usual
    models.load_pipeline("inpaint", model="real", device="cpu", verbose=False)
    assert "local_files_only" not in fake_pipeline.loaded[-1][1] and asked == [True, False]


def test_hub_offline_asks_the_network_only_about_hub_ids(monkeypatch, tmp_path):
    """A folder loads without the Hub: no probe (up to 2 s when the network is down)."""
    probes = []
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: probes.append(1) or False)
    assert models.hub_offline(str(tmp_path)) is False and probes == []
    assert models.hub_offline("some/repo") is True and probes == [1]


def test_model_index_reads_a_folder_without_diffusers_load_config(tmp_path):
    """model_index.json read directly, whatever class is being loaded (a component's
    load_config would look for its own config.json); a folder without one is an OSError, as a
    load's."""
    (tmp_path / "model_index.json").write_text('{"unet": ["diffusers", "UNet2DConditionModel"]}')
    assert models.model_index(str(tmp_path)) == {"unet": ["diffusers", "UNet2DConditionModel"]}
    missing = tmp_path / "unet" / "model_index.json"
    with pytest.raises(FileNotFoundError, match=re.escape(f"No such file or directory: '{missing}'")):
        models.model_index(str(tmp_path / "unet"))


def test_half_precision_asks_for_the_fp16_variant_then_full_files(monkeypatch, fake_pipeline):
    import torch

    monkeypatch.setattr(models, "in_local_cache", lambda repo: True)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # where float16 runs
    half = {"dtype": torch.float16, "use_safetensors": True}
    models.load_pipeline("inpaint", model="real", device="cuda", dtype=torch.float16, verbose=False)
    assert fake_pipeline.loaded == [(models.REAL_MODELS["inpaint"][0], half | {"variant": "fp16"})]
    fake_pipeline.loaded.clear()
    fake_pipeline.no_fp16 = {"some/repo"}  # a mirror with full-precision files only
    models.load_pipeline("inpaint", model="some/repo", device="cuda", dtype=torch.float16, verbose=False)
    assert fake_pipeline.loaded == [("some/repo", half)]
    fake_pipeline.loaded.clear()
    fake_pipeline.no_fp16, fake_pipeline.broken = set(), {"some/repo"}  # an error that is not about fp16 files: no second download
    with pytest.raises(ValueError, match="a component failed"):
        models.from_pretrained(fake_pipeline, "some/repo", torch.float16)
    assert fake_pipeline.loaded == [("some/repo", half | {"variant": "fp16"})]


def test_an_indexed_cuda_device_counts_as_a_gpu(monkeypatch, fake_pipeline):
    """SDCOURSE_DEVICE=cuda:1 makes pick_device() return "cuda:1": still a GPU."""
    import torch

    from sdcourse import device

    monkeypatch.setattr(models, "in_local_cache", lambda repo: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)
    assert models.choose_model("text2img", device="cuda:1").kind == "real"
    assert models.choose_model("text2img", device=torch.device("cuda", 1)).kind == "real"
    monkeypatch.setattr(device, "pick_device", lambda: "cuda:1")
    assert models.choose_model("text2img").kind == "real"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # load_pipeline checks it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    models.load_pipeline("inpaint", model="mini", device="cuda:1", verbose=False)
    assert fake_pipeline.loaded[-1][1]["dtype"] == torch.float16  # half precision on any GPU
    models.load_pipeline("inpaint", model="mini", device="cpu", verbose=False)
    assert fake_pipeline.loaded[-1][1]["dtype"] == torch.float32


def test_a_choice_made_before_is_loaded_without_deciding_again(monkeypatch, fake_pipeline):
    """Notebooks choose first (to know mini or real), then load that choice: the Hub is not
    asked a second time, so the pipeline is always the model the notebook announced."""
    monkeypatch.setattr(models, "in_local_cache", lambda repo: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)
    real = models.choose_model("inpaint", device="cuda")
    mini = models.choose_model("inpaint", model="mini")
    monkeypatch.setattr(models, "choose_model", lambda *a, **k: pytest.fail("chose again"))
    models.load_pipeline("inpaint", model=real, device="cpu", verbose=False)
    assert fake_pipeline.loaded[-1][0] == real.source == models.REAL_MODELS["inpaint"][0]
    models.load_pipeline("inpaint", model=mini, device="cpu", verbose=False)
    assert fake_pipeline.loaded[-1][0] == models.mini_model_path("inpaint")
    text2img = models.Choice("text2img", "mini", str(models.MINI_DIR), "asked for by argument")
    with pytest.raises(models.ModelChoiceError, match=r"^this model choice is for text2img, not "
                                                      r"inpaint: call choose_model\('inpaint'\)"):
        models.load_pipeline("inpaint", model=text2img, device="cpu", verbose=False)
    pipe = models.load_pipeline("img2img", model=text2img, device="cpu", verbose=False)
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"  # the same checkpoints


def test_two_installs_do_not_share_a_mini_model_folder(monkeypatch, tmp_path):
    """Another install's package (another venv) with the same files gets a folder of its own,
    linking into its own package, not the first install's."""
    first = models.mini_model_path("text2img")
    other = tmp_path / "other_venv" / "sdcourse" / "mini"
    other.mkdir(parents=True)
    for component in models.MINI_DIR.iterdir():
        (other / component.name).symlink_to(component, target_is_directory=component.is_dir())
    monkeypatch.setattr(models, "MINI_DIR", other)
    second = models.mini_model_path("text2img")
    assert second != first
    assert str(other) in str((second / "unet").readlink())


def test_load_pipeline_rejects_bad_input_before_importing_diffusers(tmp_path):
    """A bad task or model id fails in one line before diffusers' slow import; so does a Hub
    id that is not downloaded while offline (it once printed its choice and imported first)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from sdcourse.models import load_pipeline, ModelChoiceError\n"
            "for kwargs in ({'task': 'bogus'}, {'task': 'text2img', 'model': 'not an id', 'device': 'cpu'},\n"
            "               {'task': 'text2img', 'model': 'someone/never-downloaded', 'device': 'cpu'}):\n"
            "    try:\n"
            "        load_pipeline(**kwargs)\n"
            "    except ModelChoiceError as error:\n"
            "        print(str(error).splitlines()[0])\n"
            "print('diffusers' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SDCOURSE_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1",
                              "HF_HOME": str(tmp_path / "hf")}, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("unknown task 'bogus': choose one of text2img"), out
    assert "neither a folder nor a Hub id" in lines[1], out
    assert lines[2].startswith("someone/never-downloaded is not in the local Hugging Face cache"), out
    assert lines[-1] == "False" and len(lines) == 4, out


@pytest.mark.parametrize("call, error, message", [
    (lambda: models.load_pipeline("text2img", dtype=torch.int8), ValueError,
     "dtype torch.int8 is not a precision the pipelines run in: pass torch.float16"),
    (lambda: models.choose_model("text2img", 5), TypeError,
     "model 5 is not a model name: pass 'mini', 'real', a Hub id or a folder path (a string)"),
    (lambda: models.choose_model("text2img", models.choose_model("text2img", "mini")), TypeError,
     "model is already a choice ("),
])
def test_model_and_dtype_of_the_wrong_kind_are_one_line_before_any_load(call, error, message,
                                                                       monkeypatch):
    """torch.int8 failed inside diffusers after loading began; 5 was an AttributeError."""
    monkeypatch.setattr(models, "mini_model_path", lambda *a, **k: pytest.fail("loading began"))
    with pytest.raises(error) as info:
        call()
    assert str(info.value).startswith(message), str(info.value)


def test_sdcourse_model_errors_name_the_variable_and_a_blank_one_is_unset(monkeypatch):
    """A learner who never typed 'mnii' could not tell where it came from."""
    monkeypatch.setenv("SDCOURSE_MODEL", "mnii")
    with pytest.raises(models.ModelChoiceError) as info:
        models.choose_model("text2img")
    assert str(info.value) == ("SDCOURSE_MODEL=mnii: 'mnii' is neither a folder nor a Hub id like "
                               "'stable-diffusion-v1-5/stable-diffusion-v1-5': did you mean mini?; "
                               "or unset it")
    monkeypatch.setenv("SDCOURSE_MODEL", "  ")
    assert models.choose_model("text2img", device="cpu").reason == "no GPU: the embedded mini model runs on CPU"



def test_garbage_collector_paused_for_the_mini_load_only_and_restored(monkeypatch, fake_pipeline):
    """load_pipeline pauses Python's cyclic collector while the libraries import and the mini
    model loads (full passes over a growing heap that free nothing), not while a real
    checkpoint downloads, and gives the collector back as it was, also after an error."""
    assert gc.isenabled()
    models.load_pipeline("inpaint", model="mini", device="cpu", verbose=False)
    monkeypatch.setattr(models, "in_local_cache", lambda repo: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)
    models.load_pipeline("inpaint", model="real", device="cpu", verbose=False)
    assert fake_pipeline.collector_running == [False, True]
    assert gc.isenabled()
    fake_pipeline.missing = set(models.REAL_MODELS["inpaint"])
    with pytest.raises(models.ModelChoiceError):
        models.load_pipeline("inpaint", model="real", device="cpu", verbose=False)
    assert gc.isenabled()
    gc.disable()  # a learner who switched it off keeps it off
    try:
        models.load_pipeline("inpaint", model="mini", device="cpu", verbose=False)
        assert not gc.isenabled()
    finally:
        gc.enable()
    monkeypatch.setattr(models, "mini_model_path", lambda task: 1 / 0)  # fails inside the pause
    with pytest.raises(ZeroDivisionError):
        models.load_pipeline("inpaint", model="mini", device="cpu", verbose=False)
    assert gc.isenabled()


class Node:
    """An object the collector tracks."""


def test_objects_made_during_the_pause_go_to_the_oldest_generation_unscanned():
    """What the pause made joins the oldest generation (the collector's first pass afterwards
    would otherwise scan all of it), and garbage among it is still freed by a full collection."""
    if gc.get_freeze_count():
        pytest.skip(f"this Python starts with {gc.get_freeze_count()} frozen objects (3.12 does): "
                    "the pause leaves frozen objects alone, so it skips this step")
    with models._gc_paused():
        kept, cycle = Node(), Node()
        cycle.me = cycle
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert not any(o is kept for o in gc.get_objects(generation=0))  # not left to the young pass
    assert gc.get_count()[0] < 100  # the young generation starts (nearly) empty
    gone = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert gone() is None


def test_objects_someone_else_froze_stay_frozen():
    """A process that froze its objects (a server before it forks workers, or Python 3.12 at
    start) keeps them frozen: the pause then leaves the young generation as it is.

    (Frozen objects that reference counting frees meanwhile leave the frozen count, so it
    may only shrink a little: unfreezing would have emptied it, freezing the young objects
    would have moved ``young`` out of generation 0.)"""
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with models._gc_paused():
            young = Node()
        assert gc.isenabled() and frozen // 2 < gc.get_freeze_count() <= frozen
        assert any(o is young for o in gc.get_objects(generation=0))
    finally:
        gc.unfreeze()


@pytest.mark.filterwarnings("ignore:In CPU autocast")  # diffusers on a CPU; filtered for notebooks by sdcourse
def test_a_checkpoint_naming_a_processor_class_transformers_removed_still_loads(tmp_path):
    """SD 2 depth's model_index.json names DPTFeatureExtractor, which transformers 5 removed:
    from_pretrained loads that component with DPTImageProcessor instead, and the pipeline
    draws exactly what one saved with the new name draws."""
    import diffusers
    import numpy as np
    import torch

    from sdcourse import world

    new = models.mini_model_path("depth2img")
    old = tmp_path / "depth2img-old-index"
    shutil.copytree(new, old, symlinks=True)
    index = json.loads((old / "model_index.json").read_text())
    index["feature_extractor"] = ["transformers", "DPTFeatureExtractor"]
    (old / "model_index.json").write_text(json.dumps(index))
    (old / "feature_extractor").unlink()  # a link into the package: replaced by an old-style copy
    shutil.copytree(new / "feature_extractor", old / "feature_extractor")
    config_file = old / "feature_extractor" / "preprocessor_config.json"
    config = json.loads(config_file.read_text())
    del config["image_processor_type"]
    config_file.write_text(json.dumps(config | {"feature_extractor_type": "DPTFeatureExtractor"}))
    cls = diffusers.StableDiffusionDepth2ImgPipeline
    # diffusers alone: 0.42 says "has no class `DPTFeatureExtractor`", 0.41 lets transformers'
    # AttributeError through (a later diffusers that loads it itself leaves ours to check)
    try:
        cls.from_pretrained(old)
    except (ValueError, AttributeError) as error:
        assert "DPTFeatureExtractor" in str(error)

    pipes = [models.from_pretrained(cls, str(folder), torch.float32) for folder in (old, new)]
    assert type(pipes[0].feature_extractor) is type(pipes[1].feature_extractor)
    picture = world.sample(3).image
    drawn = [pipe("a red circle on a blue background", image=picture, num_inference_steps=3,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
             for pipe in pipes]
    assert np.array_equal(drawn[0], drawn[1])


def test_under_tqdm_disable_the_loaded_pipeline_has_its_progress_bar_off(monkeypatch):
    """Under `sdcourse run` and the tests (TQDM_DISABLE set) the pipeline's own progress bar is
    switched off, so no bar lands in an executed notebook's outputs; otherwise load_pipeline
    leaves the pipeline's bar as diffusers makes it, for the learner to watch."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    pipe = models.load_pipeline("text2img", model="mini", device="cpu", verbose=False)
    assert getattr(pipe, "_progress_bar_config", {}).get("disable") is not True
    monkeypatch.setenv("TQDM_DISABLE", "1")
    pipe = models.load_pipeline("text2img", model="mini", device="cpu", verbose=False)
    assert pipe._progress_bar_config.get("disable") is True


def test_a_dtype_name_is_converted_and_anything_else_refused_before_loading(monkeypatch, fake_pipeline):
    """diffusers took dtype="fp16" with a warning only and loaded float32: twice the memory of
    the half-precision pipeline asked for. Names are converted; other values fail in one line."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU, for float16
    for name, dtype in (("fp16", torch.float16), ("float16", torch.float16), ("half", torch.float16),
                        ("bf16", torch.bfloat16), ("FP32", torch.float32), (torch.float16, torch.float16)):
        models.load_pipeline("inpaint", model="mini", device="cuda", dtype=name, verbose=False)
        assert fake_pipeline.loaded[-1][1]["dtype"] == dtype, name
    fake_pipeline.loaded.clear()
    monkeypatch.setattr(models, "choose_model", lambda *a, **k: pytest.fail("went on to choose"))
    for bad in (16, "int8", "float64"):
        with pytest.raises(ValueError) as info:
            models.load_pipeline("inpaint", model="mini", device="cpu", dtype=bad, verbose=False)
        assert str(info.value) == (f"dtype {bad!r} is not a dtype: pass torch.float16, torch.bfloat16 "
                                   f"or torch.float32 (or a name: 'fp16', 'bf16', 'fp32'), or None to choose")
    assert fake_pipeline.loaded == []


def test_float16_on_the_cpu_is_refused_before_loading(monkeypatch, fake_pipeline):
    """diffusers loads a float16 pipeline onto the CPU, then warns at every move that it cannot
    run there: the course says so once, before anything loads, and names the CPU's half type,
    which loads there as asked."""
    import torch

    for half in ("fp16", torch.float16):
        with pytest.raises(ValueError) as info:
            models.load_pipeline("inpaint", model="mini", device="cpu", dtype=half, verbose=False)
        assert str(info.value) == ("dtype float16 on the CPU: diffusers does not run half-precision "
                                   "pipelines there; use torch.bfloat16 (the CPU's half type) or "
                                   "torch.float32, or dtype=None to choose")
    assert fake_pipeline.loaded == []
    models.load_pipeline("inpaint", model="mini", device="cpu", dtype="bf16", verbose=False)
    assert fake_pipeline.loaded[-1][1]["dtype"] == torch.bfloat16


def test_in_local_cache_reads_the_hugging_face_cache(tmp_path, monkeypatch):
    """What the automatic choice and offline loading rest on (the other tests replace it): a
    checkpoint counts as cached when the Hub cache's snapshot of main holds its
    model_index.json and the weights of its UNet, VAE and text encoder (full or fp16); a
    download cut short (model_index.json, some weights), or none, does not."""
    import json

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    index = json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
                        "tokenizer": ["transformers", "CLIPTokenizer"], "safety_checker": [None, None]})
    weights = ["unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors",
               "text_encoder/model.fp16.safetensors"]
    for repo, files in (("a/b", ["model_index.json", *weights]),
                        ("a/cut", ["model_index.json", *weights[:2], "text_encoder/config.json"]),
                        ("a/c", ["unet/config.json"])):
        folder = tmp_path / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text("0123abc")
        for name in files:
            (folder / "snapshots" / "0123abc" / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / "snapshots" / "0123abc" / name).write_text(index if name == "model_index.json" else "{}")
    assert models.in_local_cache("a/b") is True
    assert models.in_local_cache("a/cut") is False
    assert models.in_local_cache("a/c") is False
    assert models.in_local_cache("a/d") is False
