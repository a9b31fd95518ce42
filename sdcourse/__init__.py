"""sdcourse: the helpers the course notebooks share.

The whole public surface is the handful of names below. They are imported lazily, so
``import sdcourse`` costs nothing until a helper is used (time to first image matters).
"""
from __future__ import annotations

import importlib
import logging
import warnings

__version__ = "0.1.0"


class _NoTorchvisionNotice(logging.Filter):
    """Drop transformers' notice that it uses the PIL image processors without torchvision.

    The course deliberately runs without torchvision (PyPI's build does not import beside the
    CPU torch wheel); the PIL processors give the same results. Everything else passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


class _NoMpsAutocastNotice(logging.Filter):
    """Drop StableDiffusionDepth2ImgPipeline's notice, at every call on any Mac with an Apple
    GPU, that it cannot run the depth estimator under autocast there: nothing a learner can act
    on (the mini model runs in float32 anyway). Everything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "autocast is not yet supported on MPS" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())
logging.getLogger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_depth2img").addFilter(
    _NoMpsAutocastNotice())
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
    "self_check": "exercises",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        module = importlib.import_module(f".{_NAMES[name]}", __name__)
        return getattr(module, name)
    if name in ("world", "evaluate", "models", "device", "images"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sdcourse' has no attribute {name!r}")
