"""sdcourse: the helpers the course notebooks share.

The whole public surface is the handful of names below. They are imported lazily, so
``import sdcourse`` costs nothing until a helper is used (time to first image matters).
"""
from __future__ import annotations

import importlib
import logging
import warnings

__version__ = "0.1.0"


class _DropNotice(logging.Filter):
    """Drop a library's log records containing ``text``; everything else passes."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# transformers says it uses the PIL image processors without torchvision: the course runs
# without torchvision on purpose (PyPI's build does not import beside the CPU torch wheel), and
# the PIL processors give the same results.
logging.getLogger("transformers.utils.import_utils").addFilter(
    _DropNotice("requires torchvision (not installed)"))
# StableDiffusionDepth2ImgPipeline says, at every call on any Mac with an Apple GPU, that it
# cannot run its depth estimator under autocast there: nothing a learner can act on (the mini
# model runs in float32 anyway).
logging.getLogger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_depth2img").addFilter(
    _DropNotice("autocast is not yet supported on MPS"))
# StableDiffusionDepth2ImgPipeline runs its depth estimator under torch.autocast even on a
# CPU in float32, where autocast has nothing to do and says so at every call.
warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")
# diffusers' load_config passes huggingface_hub an argument that huggingface_hub 1.x ignores and
# warns about, whenever one component is loaded by its Hub id (`AutoencoderKL.from_pretrained(
# "org/repo", subfolder="vae")`): the library's call, not the learner's.
warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")

_NAMES = {
    # device.py: where to run, in which precision, with which random generator
    "pick_device": "device", "pick_dtype": "device", "make_generator": "device",
    # images.py: getting and showing pictures
    "download_image": "images", "show_images": "images", "image_grid": "images",
    "plot_latent_channels": "images", "sample_image_path": "images",
    # models.py: which checkpoint each lesson loads
    "load_pipeline": "models", "choose_model": "models", "mini_model_path": "models",
    # sizes.py: width/height checks before any work
    "check_size": "sizes",
    # exercises.py: the exercises' self-checks
    "self_check": "exercises", "CheckSkipped": "exercises", "NotDoneYet": "exercises",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        module = importlib.import_module(f".{_NAMES[name]}", __name__)
        return getattr(module, name)
    if name in ("world", "evaluate", "models", "device", "images"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sdcourse' has no attribute {name!r}")
