"""``import sdcourse`` is cheap: sdcourse/__init__.py promises its helpers are imported lazily,
so the import "costs nothing until a helper is used" (time to first image matters)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers")

CODE = f"""
import json, sys
loaded = lambda: sorted(m for m in sys.modules
                        if m.split('.')[0] in {HEAVY!r} or m.startswith('sdcourse.'))
import sdcourse
after_import = loaded()
sdcourse.pick_device  # a helper is used: only now does its module (and torch) come in
print(json.dumps({{"after_import": after_import, "after_use": loaded()}}))
"""


def test_import_sdcourse_loads_no_heavy_library_until_a_helper_is_used():
    # a fresh interpreter: in this one, other tests have long imported torch
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, check=True).stdout
    found = json.loads(out.splitlines()[-1])
    assert found["after_import"] == []  # no torch, diffusers, transformers, nor a helper module
    # the check does see imports: using one helper brings in its module and torch
    assert "sdcourse.device" in found["after_use"] and "torch" in found["after_use"]


def test_a_training_command_with_bad_options_answers_before_torch_loads(tmp_path):
    """`sdcourse train dreambooth` without its pictures (or `train vae --stop-at 0`) is refused
    by the option checks alone: no torch, diffusers or transformers (seconds) before the line."""
    code = f"""
import json, sys
from sdcourse import cli
statuses = [cli.main(['train', 'dreambooth', '--out', {str(tmp_path / 'a')!r}]),
            cli.main(['train', 'vae', '--stop-at', '0', '--out', {str(tmp_path / 'b')!r}])]
print(json.dumps({{"statuses": statuses,
                   "heavy": sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=True)
    found = json.loads(done.stdout.splitlines()[-1])
    assert found == {"statuses": [2, 2], "heavy": []}
    assert "train dreambooth needs --instance-dir DIR and --instance-prompt PROMPT" in done.stderr


def test_the_depth_pipelines_mps_autocast_notice_is_dropped_and_nothing_else(caplog):
    """On any Mac with an Apple GPU diffusers' depth2img pipeline logs, at every call, that it
    cannot autocast there; sdcourse drops that line only, from that logger only."""
    import logging

    import sdcourse  # noqa: F401  (installs the filter)

    name = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_depth2img"
    notice = ("The DPT-Hybrid model uses batch-norm layers which are not compatible with fp16, "
              "but autocast is not yet supported on MPS.")
    with caplog.at_level(logging.WARNING):
        logging.getLogger(name).warning(notice)
        logging.getLogger(name).warning("something else went wrong")
        logging.getLogger("diffusers.other").warning(notice)
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert messages == [(name, "something else went wrong"), ("diffusers.other", notice)]


def test_the_hub_argument_warning_of_diffusers_load_config_is_dropped_and_nothing_else():
    """Loading one component by its Hub id makes diffusers pass huggingface_hub a deprecated
    argument; that warning would land in notebook 01. sdcourse ignores that message only."""
    import importlib
    import warnings

    import sdcourse

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.reload(sdcourse)  # its filters go on top of "always", as at a real import
        warnings.warn("The `local_dir_use_symlinks` argument is deprecated and ignored in "
                      "`hf_hub_download`. Downloading to a local directory does not use symlinks anymore.")
        warnings.warn("some other deprecation", DeprecationWarning)
    assert [str(w.message) for w in caught] == ["some other deprecation"]
