"""DreamBooth: teach a text-to-image model one new subject from 3 or more pictures (3–5 is typical).

The recipe (Ruiz et al., 2022), step by step as the code below runs it:

1. **Instance pictures + a rare token.** A few pictures of the subject are captioned with a
   prompt holding a token the model has no meaning for ("a sks circle on a red background").
   Fine-tuning on them binds the subject to that token.
2. **Prior preservation.** Trained on those few pictures alone, the model soon draws the
   subject for every prompt of its class ("a red circle" comes out as the subject too: the
   class word drifts). So before training, the *base* model draws ~100 pictures of the class
   ("a red circle on a blue background", ...), and every step also trains on a batch of
   those with their own prompts. Their loss, weighted by ``prior_loss_weight``, keeps the
   class as the base model knew it while the token takes on the subject.
3. **What is trained.** Either the whole UNet, or (``lora=True``, the default) a LoRA: small
   low-rank matrices added to the UNet's attention projections (``to_q``, ``to_k``,
   ``to_v``, ``to_out.0``) while every original weight stays frozen. The LoRA is a file of a
   few hundred kilobytes, ``pytorch_lora_weights.safetensors``, which any pipeline of the same
   base model loads with ``pipe.load_lora_weights(folder)``. The text encoder may be trained
   too (``train_text_encoder=True``, as a LoRA on its attention when ``lora=True``).

Everything else is the text-to-image training step of :mod:`sdcourse.train.text2img`: encode
pictures with the frozen VAE, add noise at a random timestep, make the UNet predict the noise
(or, for a v-prediction checkpoint such as SD 2.x at 768 px, the velocity: :func:`training_target`).
The learning rate decays to zero along a cosine, so the last weights are settled ones.

It runs on :mod:`accelerate`, so ``accelerate launch`` scales it unchanged, in fp16 mixed
precision on a CUDA GPU, where the frozen VAE (and the text encoder when it is not trained) is
held in float16 too (:func:`frozen_dtype`); with ``gradient_checkpointing`` too, a LoRA on
Stable Diffusion at 512 px is meant to fit a 16 GB GPU such as Colab's free T4. Inputs are
checked before anything expensive happens; checkpoints are written atomically, and running
the same call (or command) again resumes from the last one. On the mini model a run takes a
few minutes on a laptop CPU.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..files import atomic_path, remove_stale, unwritable, write_atomic
from ..messages import first_line, is_number, is_whole
from . import common

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MIN_IMAGES = 3
LORA_FILE = "pytorch_lora_weights.safetensors"  # what pipe.load_lora_weights(folder) looks for
#: How a run records the course's own mini model as its base, followed by "@" and a digest
#: of the shipped files' contents (:func:`mini_base`): the assembled folder's path changes with
#: the files' timestamps (a reinstall), the digest only with the model (a new --publish).
MINI_BASE = "sdcourse:mini"
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

#: CLIP's byte-pair vocabulary numbers its pieces in the order they were learned, most frequent
#: first: a single-token word below this id ("apple" 3055, "pikachu" 28107) is too common to be
#: a rare token. A rule of thumb, not a dictionary: some ordinary words have higher ids.
FREQUENT_IDS = 30_000

#: Words a rare token must not be: very common English words, and the mini world's own words.
#: A token the model already knows has a meaning that DreamBooth would have to overwrite.
COMMON_WORDS = frozenset("""
a an the and or but if of in on at to for from by with without about into over under after
before up down out off is are was were be been am do does did have has had it its this that
these those there here i you he she we they me him her us them my your his our their what
which who when where why how all any some no not yes one two three new old big small good bad
best little long great high low man woman person people boy girl child baby dog cat bird
horse cow car house tree flower sky sun water city street room table chair book photo picture
image painting drawing art style portrait face hand eye head body toy bag hat shoe shirt dress
cup bottle box ball love life time day night world home food light dark color colour shape
object thing background foreground red green blue yellow purple orange white black pink brown
gray grey circle square triangle rectangle star heart line round
""".split())


class DreamBoothError(ValueError):
    """Unusable DreamBooth inputs, found before any training starts (the message says why and
    what to do)."""


# ---------------------------------------------------------------------------------- checks


def load_instance_images(instance) -> tuple[list[Image.Image], list[str]]:
    """The subject's pictures, from a folder or a list of PIL images, with a name for each.

    Raises :class:`DreamBoothError` for a missing or empty folder, files in it that are not
    pictures, pictures of different sizes, and fewer than 3 pictures. There is no upper limit:
    3 or more pictures (3–5 is typical) are accepted, and DreamBooth users often give 5–20.
    """
    if isinstance(instance, (str, Path)):
        folder = Path(instance)
        if not folder.is_dir():
            problem = "is a file, not a folder" if folder.exists() else "does not exist"
            raise DreamBoothError(f"instance folder {folder} {problem}: give the folder that "
                                  f"holds {MIN_IMAGES} or more pictures (3–5 is typical) of the subject")
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))  # .ipynb_checkpoints
        if not entries:
            raise DreamBoothError(f"instance folder {folder} is empty: put {MIN_IMAGES} or more "
                                  "pictures (3–5 is typical) of the subject in it")
        other = [p.name + ("/" if p.is_dir() else "") for p in entries
                 if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file()]
        if other:
            raise DreamBoothError(
                f"instance folder {folder} holds {len(other)} "
                f"{'thing that is not a picture' if len(other) == 1 else 'things that are not pictures'} "
                f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): keep only the "
                f"subject's pictures ({', '.join(IMAGE_SUFFIXES)}) in it")
        images, names = [], []
        for path in entries:
            try:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
            except (UnidentifiedImageError, OSError) as error:
                raise DreamBoothError(f"{path} cannot be read as a picture ({error}): replace or "
                                      "remove it") from None
            names.append(path.name)
    else:
        try:
            images = list(instance)
        except TypeError:  # an int, None, one PIL image...: refused below, or too few
            images = [instance]
        odd = [im for im in images if not isinstance(im, Image.Image)]
        if odd:
            shown = " ".join(repr(odd[0]).split())[:40]  # one line, even for an array
            raise DreamBoothError(
                f"instance images must be a folder or a list of PIL images, got "
                f"{type(odd[0]).__name__} {shown}: give the folder's path, or a list of "
                "pictures opened with PIL.Image.open")
        images = [im.convert("RGB") for im in images]
        names = [f"image {i}" for i in range(len(images))]
    if len(images) < MIN_IMAGES:
        raise DreamBoothError(f"only {len(images)} instance picture(s): DreamBooth needs "
                              f"{MIN_IMAGES} or more pictures (3–5 is typical) of the subject, in "
                              "different places or backgrounds: add more")
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        first = images[0].size
        odd = next(i for i, im in enumerate(images) if im.size != first)
        raise DreamBoothError(
            f"instance pictures differ in size: {names[0]} is {first[0]}x{first[1]}, {names[odd]} "
            f"is {images[odd].size[0]}x{images[odd].size[1]}: crop or resize them all to one "
            "size (the model's own resolution is best)")
    return images, names


def check_token(token: str, tokenizer) -> None:
    """A rare token must not be a common word and must stay one piece for the tokenizer, a
    piece learned late (:data:`FREQUENT_IDS`)."""
    hint = 'use a rare token such as "sks" (the DreamBooth paper\'s choice) and put it in the instance prompt'
    if not token or not token.strip() or len(token.split()) != 1:
        raise DreamBoothError(f"rare token {token!r} must be one word: {hint}")
    if token.lower() in COMMON_WORDS:
        raise DreamBoothError(
            f"rare token {token!r} is a common English word: the model already knows what it "
            f"means and DreamBooth would overwrite it; {hint}")
    pieces = tokenizer.tokenize(token)
    if len(pieces) != 1:
        raise DreamBoothError(
            f"rare token {token!r} is split by the tokenizer into {len(pieces)} pieces "
            f"({' '.join(pieces)}): the subject would be spread over tokens that also spell "
            f"other words; {hint}")
    word = pieces[0].removesuffix("</w>").lower()
    if word in COMMON_WORDS:
        raise DreamBoothError(f"rare token {token!r} reads as the common word {word!r} to the "
                              f"tokenizer: {hint}")
    token_id = tokenizer.convert_tokens_to_ids(pieces[0])
    if token_id < FREQUENT_IDS:
        raise DreamBoothError(
            f"rare token {token!r} is token {token_id} of CLIP's vocabulary, one of the "
            f"{FREQUENT_IDS:,} pieces its byte-pair encoding learned first because they are "
            f"frequent: the model likely knows a meaning for it; {hint}")


def _as_prompts(prompt, n: int, what: str) -> list[str]:
    """One prompt per item: a single string for all, or a list of exactly ``n``."""
    if isinstance(prompt, str):
        return [prompt] * n
    prompts = list(prompt or [])
    if len(prompts) != n or not all(isinstance(p, str) for p in prompts):
        got = len(prompts) if len(prompts) != n else f"{n}, not all of them text"
        raise DreamBoothError(f"{what}: give one prompt for all the pictures, or one prompt per "
                              f"picture ({n} pictures); got {got}")
    return prompts


def check_prompts(instance_prompts: list[str], class_prompts: list[str], token: str) -> None:
    """The token is in every instance prompt and in no class prompt."""
    def words(prompt: str) -> list[str]:
        return re.findall(r"[\w'-]+", prompt.lower())

    for prompt in instance_prompts:
        if token.lower() not in words(prompt):
            raise DreamBoothError(f"instance prompt {prompt!r} lacks the rare token {token!r}: "
                                  f"write it where the subject's name goes, e.g. \"a {token} dog\"")
    for prompt in class_prompts:
        if token.lower() in words(prompt):
            raise DreamBoothError(f"class prompt {prompt!r} contains the rare token {token!r}: "
                                  "class prompts describe the ordinary class, without the token")


def check_token_init(words: list[str], token: str, tokenizer, lora: bool) -> None:
    """The words that start the rare token's embedding: single tokens, other than the token."""
    if not words:
        return
    if lora:
        raise DreamBoothError("token_init changes the text encoder's embedding of the rare token, "
                              "which a LoRA file does not carry: use it with a full fine-tune "
                              "(lora=False in Python, --full on the command line)")
    for word in words:
        if word.lower() == token.lower():
            raise DreamBoothError(f"token_init {word!r} is the rare token itself: give words that "
                                  "describe the subject, e.g. its colours")
        pieces = tokenizer.tokenize(word)
        if len(pieces) != 1:
            raise DreamBoothError(f"token_init word {word!r} is split by the tokenizer into "
                                  f"{len(pieces)} pieces ({' '.join(pieces)}): give everyday "
                                  "words that are one token each")


def set_token_embedding(text_encoder, tokenizer, token: str, words: list[str]) -> None:
    """Set the rare token's input embedding to the mean of ``words``' embeddings."""
    ids = tokenizer.convert_tokens_to_ids([tokenizer.tokenize(w)[0] for w in words])
    (token_id,) = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(token))
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[token_id] = table[ids].mean(dim=0)


# -------------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """Everything a run's result depends on (except ``steps``: a longer run continues a finished
    shorter one, :func:`check_same_schedule`), and how it trains (``gradient_checkpointing``).
    Kept in ``<out>/dreambooth.json``; a checkpoint only resumes under the same settings
    (:func:`check_same_run`)."""

    instance_prompts: list[str]
    class_prompts: list[str]
    token: str = "sks"
    base: str = ""
    lora: bool = True
    rank: int = 16
    train_text_encoder: bool = False
    prior_preservation: bool = True
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    batch_size: int = 4
    lr: float = 3e-3
    seed: int = 0
    images_digest: str = ""
    text_encoder_lr: float | None = None  # None: the same as ``lr``
    token_init: list[str] = field(default_factory=list)  # words whose embeddings start the token's
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def stored(cls, record: dict) -> dict:
        """The settings of a ``dreambooth.json`` record, with the default of each setting added
        since it was written (what every run had before that setting existed): runs made by an
        earlier version still resume, and are still returned at once when finished."""
        defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                    for f in fields(cls)
                    if f.default is not MISSING or f.default_factory is not MISSING}
        return defaults | record["settings"]


def mini_base() -> str:
    """``sdcourse:mini@<digest>``: the mini text2img model a run starts from, by its contents."""
    import hashlib

    from ..models import _MINI_COMPONENTS, MINI_DIR

    h = hashlib.sha256()
    for component in sorted(set(_MINI_COMPONENTS["text2img"].values())):
        for file in sorted(p for p in (MINI_DIR / component).rglob("*") if p.is_file()):
            h.update(file.relative_to(MINI_DIR).as_posix().encode() + b"\0" + file.read_bytes())
    return f"{MINI_BASE}@{h.hexdigest()[:12]}"


def _digest(images: list[Image.Image]) -> str:
    import hashlib

    h = hashlib.sha256()
    for im in images:
        h.update(repr(im.size).encode())
        h.update(im.tobytes())
    return h.hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def read_record(out: Path) -> dict | None:
    """The run's record ``<out>/dreambooth.json`` (its settings and progress); None when no
    run was started there. A damaged one is a :class:`DreamBoothError` saying what to do."""
    path = Path(out) / "dreambooth.json"
    try:
        record = _read_json(path)
        if record is not None and not (isinstance(record, dict) and isinstance(record.get("settings"), dict)):
            raise ValueError("no settings in it")
    except (OSError, ValueError) as error:
        raise DreamBoothError(f"{path} is damaged ({first_line(error, limit=100)}): delete "
                              f"{out} to start over, or give another out folder") from None
    return record


#: How the messages name each setting: its argument, with the option where the command has
#: one. (Names the command line rewrites itself, such as ``token_init``, stay bare: it turns
#: them into ``--token-init``.)
SETTING_NAMES = {
    "instance_prompts": "the instance prompts (instance_prompt)",
    "class_prompts": "the class prompts (class_prompt)", "token": "token (--token)",
    "base": "base (--base)", "lora": "lora (False with --full)",
    "train_text_encoder": "train_text_encoder (--train-text-encoder)",
    "prior_preservation": "prior_preservation (False with --no-prior)", "lr": "lr (--lr)",
    "seed": "seed (--seed)", "images_digest": "the instance pictures (instance, --instance-dir)",
    "gradient_checkpointing": "gradient_checkpointing (--gradient-checkpointing)",
}
_AGAIN = ("to resume it, give the settings it was trained with; for a new run, give another out "
          "folder (--out), or delete this one to start over")


def check_same_run(out: Path, record: dict, settings: Settings) -> None:
    """A run resumes only under the settings it started with: anything else is another run,
    refused in one line that names each setting changed, its old and new value."""
    old = Settings.stored(record)
    notes = {}
    if old["lora"] != settings.lora:  # say it as typed; the learning rate's default follows it
        notes["lora"] = " (the run is a LoRA: drop --full)" if old["lora"] else " (the run is a full fine-tune: add --full)"
        notes["lr"] = " (each kind's default, unless given)"
    differences = common.describe_changes(old, settings.to_json(), SETTING_NAMES, notes,
                                          hidden={"images_digest"})
    if differences:
        raise DreamBoothError(f"{out} holds a DreamBooth run with other settings: {differences}: "
                              f"{_AGAIN}")


def check_same_schedule(out: Path, record: dict, steps: int) -> None:
    """``steps`` may grow once a run has finished (a longer run continues a shorter one), not
    part-way: the learning rate decays over all of a run's steps, and a run resumed on another
    schedule would be neither run. Only a run with a checkpoint past its last finish has
    trained part of its schedule."""
    planned = record.get("steps")  # (runs recorded before it was kept: not checked)
    if planned is None or planned == steps:
        return
    checkpoint = common.find_checkpoint(out)
    done = common.checkpoint_step(checkpoint) if checkpoint is not None else 0
    if record.get("done_step", 0) < done < planned:  # (at `planned`: finished, result unwritten)
        raise DreamBoothError(
            f"{out} holds a DreamBooth run stopped at step {done} of {planned}: steps "
            f"(--steps) was {planned}, now {steps} (the learning rate decays over all of a run's "
            f"steps, which cannot change before it finishes): {_AGAIN}")


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2))


# ----------------------------------------------------------------------------- components


def load_components(base, vae_dtype: torch.dtype = torch.float32, fp16_files: bool = False) -> dict:
    """The base model's text encoder, VAE, UNet and schedulers, in float32; the VAE in
    ``vae_dtype`` (chosen when loading, as diffusers wants a model's precision chosen).

    ``fp16_files`` (on a GPU): read the weights from the checkpoint's fp16 files where it has
    them (``variant="fp16"``), the ones its pipeline was loaded from, rather than download
    its full-precision files as well (5 GB more for SD 2). They are then held in float32 all
    the same: under fp16 mixed precision, what learns needs float32 weights.
    """
    import diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from ..models import fp16_files_first

    base = str(base)

    def weights(cls, subfolder, **kwargs):
        load = functools.partial(cls.from_pretrained, base, subfolder=subfolder, use_safetensors=True,
                                 **kwargs)
        return fp16_files_first(load) if fp16_files else load()

    sampler = getattr(diffusers, diffusers.PNDMScheduler.load_config(base, subfolder="scheduler")["_class_name"])
    return {
        "text_encoder": weights(CLIPTextModel, "text_encoder").float(),
        "vae": weights(AutoencoderKL, "vae", dtype=vae_dtype).eval(),
        "unet": weights(UNet2DConditionModel, "unet").float(),
        "noise_scheduler": DDPMScheduler.from_pretrained(base, subfolder="scheduler"),  # for training
        "scheduler": sampler.from_pretrained(base, subfolder="scheduler"),  # for sampling
    }


def frozen_dtype(device) -> torch.dtype:
    """The precision of the parts that do not learn (the VAE, and the text encoder when it is
    not trained): float16 on a CUDA GPU, float32 elsewhere.

    Why: on CUDA the trainer computes in fp16 mixed precision anyway, and half precision halves
    these parts' memory, which Stable Diffusion needs on a 16 GB GPU. What learns stays float32
    (fp16 mixed precision needs float32 trainable weights for its scaled gradients). On a CPU
    there is no mixed precision and float32 keeps runs exactly as they were.
    """
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def check_hub_base(base) -> bool:
    """:func:`sdcourse.models.check_fetchable` for a base model's Hub id: True when it must be
    read from the local cache alone; one :class:`DreamBoothError` line when it cannot be had,
    before anything is loaded. A folder (the mini model's too) asks no network."""
    from ..models import ModelChoiceError, check_fetchable, hub_address

    try:  # a malformed HTTPS_PROXY or HF_ENDPOINT: its own line, not the base model's
        hub_address()
    except ModelChoiceError as error:
        raise DreamBoothError(str(error)) from None
    try:
        return check_fetchable(str(base), otherwise="give a local diffusers folder")
    except ModelChoiceError as error:
        raise DreamBoothError(f"base model {error}") from None


def load_tokenizer(base):
    """The base model's tokenizer; a ``base`` that is no usable model (a mistyped path, an
    invalid Hub id, one not on the Hub or not reachable and not cached: :func:`check_hub_base`,
    a folder without a tokenizer) raises a one-line :class:`DreamBoothError`, before any
    download."""
    from transformers import CLIPTokenizer

    from ..models import _is_hub_id

    base = str(base)
    hint = ("give a diffusers Stable Diffusion folder (with model_index.json) or a Hub id like "
            "'stable-diffusion-v1-5/stable-diffusion-v1-5'")
    cache_only = False
    if os.path.isdir(base):
        if not os.path.isdir(os.path.join(base, "tokenizer")):
            raise DreamBoothError(f"base model {base} is a folder without a tokenizer folder: {hint}")
        no_vocabulary = f"has no tokenizer files: {hint}"
    elif not _is_hub_id(base):
        raise DreamBoothError(f"base model {base!r} is neither a folder nor a Hub id: check the "
                              f"path, or {hint}")
    else:  # one line now if it cannot be fetched, rather than huggingface_hub's retries
        cache_only = check_hub_base(base)
        hint = "give a local diffusers folder"
        no_vocabulary = ("has no tokenizer files in the local cache (an interrupted download?): "
                         f"download it again while online, or {hint}" if cache_only else
                         "has no tokenizer files on the Hub: give a Stable Diffusion pipeline's "
                         f"id, or {hint}")
    try:  # the cache alone when the Hub is unreachable: nothing asked of it, nothing retried
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer",
                                                  **({"local_files_only": True} if cache_only else {}))
    except (OSError, ValueError) as error:
        raise DreamBoothError(f"could not load base model {base} ({first_line(error)}): check the id and "
                              f"your network, or {hint}") from None
    if len(tokenizer) <= len(tokenizer.all_special_tokens):  # transformers found no vocabulary
        raise DreamBoothError(f"base model {base} {no_vocabulary}")
    return tokenizer


def local_checkpoint(base, fp16_files: bool = False) -> str:
    """A folder with ``base``'s files: ``base`` itself, or the Hub checkpoint's local copy
    (downloaded into the Hugging Face cache the first time, with its fp16 files where it has
    them if ``fp16_files``; read from the cache alone when the Hub cannot be reached).

    Why: the trainer loads each component on its own, and diffusers 0.42, given a Hub id for
    a component, passes huggingface_hub an argument it deprecated: the warning would show
    once per component. From a folder nothing is asked of the Hub.
    """
    base = str(base)
    if os.path.isdir(base):
        return base
    from diffusers import DiffusionPipeline

    from ..models import fp16_files_first, hub_offline

    download = functools.partial(DiffusionPipeline.download, base, use_safetensors=True,
                                 local_files_only=hub_offline(base))
    try:
        return str(fp16_files_first(download) if fp16_files else download())
    except OSError as error:
        raise DreamBoothError(f"could not download base model {base} ({first_line(error)}): "
                              "check your network, or give a local diffusers folder") from None


#: What the trainer reads from each part's folder of a base model: its config file, and the
#: stem of its weights' file names (None: no weights), for ``<stem>.safetensors``, fp16
#: ``<stem>.fp16.safetensors``, and shards of either (``<stem>-00001-of-00002.safetensors``).
BASE_PARTS = {"unet": ("config.json", "diffusion_pytorch_model"),
              "vae": ("config.json", "diffusion_pytorch_model"),
              "text_encoder": ("config.json", "model"),
              "tokenizer": (None, None),
              "scheduler": ("scheduler_config.json", None)}


def check_base_folder(folder, fp16_files: bool = False) -> None:
    """The base model's folder holds all the trainer loads: ``model_index.json``, each part of
    :data:`BASE_PARTS` with its config, and the UNet's, VAE's and text encoder's weights as
    safetensors (their fp16 files count where they are what is read: ``fp16_files``, on a GPU);
    its UNet is a text-to-image one (4 input channels, not an inpainting or depth UNet's).

    Why: diffusers finds a missing part only when it loads it, after the run's folder is made,
    and says so in its own words ("Error no file named diffusion_pytorch_model.safetensors
    found"); a pickled ``.bin`` file is never loaded (unpickling can run code).
    Raises a one-line :class:`DreamBoothError` listing everything missing.
    """
    folder = Path(folder)
    missing = []
    try:
        if not (folder / "model_index.json").is_file():
            missing.append("model_index.json")
        for part, (config, stem) in BASE_PARTS.items():
            if not (folder / part).is_dir():
                missing.append(f"{part}/")
                continue
            if config and not (folder / part / config).is_file():
                missing.append(f"{part}/{config}")
            if stem is None:
                continue
            names = [p.name for p in (folder / part).iterdir()]
            matches = [re.fullmatch(rf"{stem}(\.fp16)?(-\d+-of-\d+)?\.safetensors", n) for n in names]
            variants = {m.group(1) for m in matches if m}  # None: full precision, ".fp16"
            if None in variants or (fp16_files and variants):
                continue
            have = ("only fp16 ones, which are read on a GPU" if variants else
                    "only pickled .bin files" if any(n.endswith(".bin") for n in names) else "none")
            missing.append(f"{part} weights as {stem}.safetensors ({have})")
    except OSError as error:
        raise DreamBoothError(f"base model {folder} cannot be read ({error.strerror or error}): "
                              "check its permissions, or give another base model") from None
    if missing:
        raise DreamBoothError(
            f"base model {folder} lacks {', '.join(missing)}: give a complete diffusers Stable "
            "Diffusion folder with safetensors weights (as pipe.save_pretrained(folder) writes "
            "it), or a Hub id")
    from ..models import ModelChoiceError, check_folder_serves

    try:  # an inpainting or depth UNet would fail on its first step, after the class pictures
        check_folder_serves("text2img", folder, otherwise="leave base (--base) out for the mini model")
    except ModelChoiceError as error:
        raise DreamBoothError(f"base model {error}") from None


PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_prediction_type(base) -> str:
    """What the base model's UNet predicts (its scheduler's ``prediction_type``); one line
    before any model loads if the trainer cannot train it."""
    from diffusers import DDPMScheduler

    try:
        config = DDPMScheduler.load_config(str(base), subfolder="scheduler")
    except (OSError, ValueError) as error:  # missing, or not JSON: diffusers' words, one line
        raise DreamBoothError(f"could not read the scheduler config of base model {base} "
                              f"({first_line(error)}): give a complete "
                              "diffusers Stable Diffusion folder, or a Hub id") from None
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise DreamBoothError(f"base model {base} predicts {kind!r}: the trainer trains UNets that "
                              f"predict {' or '.join(PREDICTION_TYPES)}; choose such a checkpoint")
    return kind


def training_target(scheduler, latents, noise, t):
    """What the UNet should output for ``latents`` noised with ``noise`` at steps ``t``: the
    noise itself (SD 1.x, SD 2.x base at 512 px), or the velocity ``alpha_t * noise -
    sigma_t * latents`` for v-prediction checkpoints (SD 2.x at 768 px)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    return noise


def make_pipeline(parts: dict, tokenizer, device=None):
    """A text-to-image pipeline around the given (possibly training) components."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                   tokenizer=tokenizer, unet=parts["unet"],
                                   scheduler=parts["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe


def resolution(parts: dict) -> int:
    """Picture side the model works at: latent side times the VAE's downsampling."""
    vae_scale = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    return parts["unet"].config.sample_size * vae_scale


def to_resolution(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` (a no-op for pictures already that size)."""
    w, h = image.size
    if (w, h) == (size, size):
        return image
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return image.crop(box).resize((size, size), Image.Resampling.BICUBIC)


def _class_manifest(folder: Path) -> dict | None:
    try:
        return _read_json(folder / "prompts.json")
    except (OSError, ValueError):  # unreadable or half-written: not a usable set of pictures
        return None


def check_class_dir(folder, prompts: list[str], seed: int, base: str) -> bool:
    """The class folder must be new, empty, or one the trainer wrote: its pictures for other
    prompts, seeds or base models are replaced, so a folder of anything else (the user's own
    photos given as ``class_dir``) is refused rather than deleted. True when it already holds
    the pictures that ``base`` drew for these prompts and seed (to be reused as they are):
    another model's pictures would teach this one a prior that is not its own."""
    folder = Path(folder)
    if not os.path.lexists(folder):
        return False
    hint = "give an empty or new folder for the class pictures (class_dir / --class-dir)"
    if not folder.is_dir():
        raise DreamBoothError(f"class folder {folder} is not a folder: {hint}")
    if _class_manifest(folder) == {"prompts": prompts, "seed": seed, "base": base}:
        return True
    names = {p.name for p in folder.iterdir()} - {".DS_Store"}  # macOS Finder's, not the user's
    if "prompts.json" in names:  # the trainer's folder: its pictures are 0000.png, 0001.png, ...
        names = {n for n in names if n != "prompts.json" and not re.fullmatch(r"\d{4}\.png", n)}
    foreign = sorted(names)
    if foreign:
        raise DreamBoothError(
            f"class folder {folder} holds {len(foreign)} file(s) the trainer did not write "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) and would replace "
            f"them: {hint}")
    return False


def class_base(base) -> str:
    """How class pictures record the model that drew them, one spelling per model: the mini
    model (``None``, or its assembled folder) as :func:`mini_base`; another folder by its
    resolved path (``./sd``, ``sd/`` and a link to it are one model); a Hub id as it is."""
    if base is None:
        return mini_base()
    path = Path(str(base))
    if not path.is_dir():
        return str(base)
    from ..files import cache_root
    from ..models import ModelChoiceError, mini_model_path

    if path.resolve().parent != (cache_root() / "mini").resolve():  # not where it is assembled
        return str(path.resolve())
    try:  # (there it exists already: only compared, not built)
        mini = Path(mini_model_path("text2img")).resolve()
    except (ModelChoiceError, OSError):
        mini = None
    return mini_base() if path.resolve() == mini else str(path.resolve())


def drawn_by(pipe) -> str:
    """The model a pipeline's class pictures are recorded as drawn by (:func:`class_base` of
    its ``name_or_path``), as :func:`train_dreambooth` records those of its ``base``."""
    name = str(getattr(pipe, "name_or_path", "") or "")
    return class_base(name) if name else ""


@torch.no_grad()
def generate_class_images(pipe, prompts: list[str], folder: Path, seed: int,
                          batch: int | None = None, steps: int = 25,
                          guidance: float = 7.5, base: str | None = None) -> list[Image.Image]:
    """Prior preservation's pictures: the base model's own answers to the class prompts.

    ``base`` names the model ``pipe`` is (default: :func:`drawn_by`), recorded with the
    pictures so that a run from another base draws its own.
    Saved as PNG in ``folder`` (with ``prompts.json``) and reused by later runs; written to a
    temporary folder of this process first, so an interrupted generation leaves nothing half
    done and two runs sharing ``folder`` do not write into each other's pictures. ``batch``
    pictures are drawn per call: by default 50 for a model of the mini model's size, 4 for
    a real one (512 px pictures in batches that a 16 GB GPU holds).
    """
    folder = Path(folder)
    base = drawn_by(pipe) if base is None else base
    if check_class_dir(folder, prompts, seed, base):  # (and never replace pictures it did not draw)
        return [Image.open(folder / f"{i:04d}.png").convert("RGB") for i in range(len(prompts))]
    import shutil

    if batch is None:
        batch = 50 if pipe.unet.config.sample_size <= 16 else 4

    images = []
    for i in common.progress(range(0, len(prompts), batch), desc="class images", mininterval=5):
        generator = torch.Generator().manual_seed(seed + i)
        images += pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance,
                       generator=generator).images
    remove_stale(folder.parent, f"{folder.name}.tmp")  # (a run killed while saving its pictures)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # interrupted (Ctrl-C, a full disk) it leaves nothing: its name is this process's
        tmp.mkdir(parents=True)
        for i, image in enumerate(images):
            image.save(tmp / f"{i:04d}.png")
        (tmp / "prompts.json").write_text(json.dumps({"prompts": prompts, "seed": seed, "base": base}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:  # stale pictures of other prompts stay until the new ones are in place
        common.replace_dir(tmp, folder)
    except OSError:  # another run sharing the folder renamed its pictures into place first
        shutil.rmtree(tmp, ignore_errors=True)
    return images


@torch.no_grad()
def encode_images(vae, images: list[Image.Image], batch: int | None = None):
    """Latent mean and std of pictures (the VAE is frozen: done once, sampled every step).

    ``batch`` pictures go through the VAE at once: by default 64 of the mini model's size, 4 of
    Stable Diffusion's 512 px (64 of those would need tens of GB in the encoder's first layers).
    """
    from ..world import images_to_tensor

    if batch is None:
        batch = 64 if not images or images[0].width * images[0].height <= 64 * 64 else 4
    means, stds = [], []
    for i in range(0, len(images), batch):
        x = images_to_tensor(images[i:i + batch]).to(vae.device, vae.dtype)
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def add_lora(model, rank: int, targets: list[str]) -> None:
    """Freeze ``model`` and add trainable LoRA matrices (rank ``rank``) to the named layers."""
    from diffusers import ModelMixin
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets)
    if isinstance(model, ModelMixin):  # the UNet: diffusers' own LoRA support
        model.add_adapter(config)
    else:  # the text encoder: peft directly (transformers' add_adapter wants a newer peft)
        inject_adapter_in_model(config, model)
        model.peft_config = {"default": config}


class TrainedWeights:
    """What a checkpoint keeps of a model: its trainable parameters only (the LoRA matrices,
    or every weight of a fully fine-tuned model), in the ``save_pretrained`` form that
    :func:`sdcourse.train.common.save_checkpoint` expects."""

    FILE = "trained.safetensors"

    def __init__(self, model):
        self.model = model

    def save_pretrained(self, folder, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file({name: p.detach().float().cpu().contiguous()
                   for name, p in self.model.named_parameters() if p.requires_grad},
                  Path(folder) / self.FILE)

    @classmethod
    def load_into(cls, model, folder) -> None:
        from safetensors.torch import load_file

        missing, unexpected = model.load_state_dict(load_file(Path(folder) / cls.FILE), strict=False)
        if unexpected:
            raise RuntimeError(f"checkpoint {folder} does not fit the model: {unexpected[:3]}")


def lora_state_dicts(unet, text_encoder, train_text_encoder: bool) -> dict:
    """The LoRA weights in the diffusers format that ``load_lora_weights`` reads."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))}
    if train_text_encoder:
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(text_encoder))
    return layers


def save_result(out: Path, parts: dict, tokenizer, settings: Settings) -> Path:
    """Write what the run produced (atomically) and return the path to load it from:
    ``out`` with ``pytorch_lora_weights.safetensors`` for a LoRA, else ``out/pipeline``."""
    import shutil

    from diffusers import StableDiffusionPipeline

    if settings.lora:
        tmp = out / "lora.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        StableDiffusionPipeline.save_lora_weights(
            tmp, **lora_state_dicts(parts["unet"], parts["text_encoder"], settings.train_text_encoder))
        (tmp / LORA_FILE).replace(out / LORA_FILE)
        shutil.rmtree(tmp, ignore_errors=True)
        return out
    # saved in float32 like the base model, also the parts held in float16 (frozen_dtype)
    parts = parts | {"vae": parts["vae"].float(), "text_encoder": parts["text_encoder"].float()}
    with common.new_folder(out / "pipeline") as tmp:  # the previous one stays until then
        make_pipeline(parts, tokenizer).save_pretrained(tmp, safe_serialization=True)
    return out / "pipeline"


def load_dreambooth(out, device: str = "cpu", dtype: torch.dtype | None = None):
    """The pipeline a run produced: its base model, plus the LoRA or the fine-tuned weights.

    ``out``: the run folder, or the path :func:`train_dreambooth` returned. ``dtype``: the
    pipeline's precision (default: as saved, float32), e.g. ``torch.float16`` on a GPU, where
    a LoRA's base model then loads its fp16 files when it has them, as
    :func:`sdcourse.models.load_pipeline` loads real checkpoints. A device this machine lacks,
    or a LoRA's base model that is gone, is one line before anything loads."""
    from diffusers import StableDiffusionPipeline

    from ..device import check_device
    from ..models import _is_hub_id, from_pretrained, hub_offline

    device = check_device(device)
    out = Path(out)
    if out.name == "pipeline" and (out.parent / "dreambooth.json").exists():
        out = out.parent  # the path train_dreambooth returned for a full fine-tune
    record = read_record(out)
    if record is None or not record.get("done_step"):
        raise DreamBoothError(f"{out} holds no finished DreamBooth run: train it first")
    settings = record["settings"]
    if settings["lora"]:
        base = settings["base"]
        if base.startswith(MINI_BASE + "@"):
            now = mini_base()  # (reads the shipped files: once)
            if base != now:
                raise DreamBoothError(f"the LoRA in {out} was trained on another version of the "
                                      f"mini model ({base}; now {now}): train it again")
            from ..models import mini_model_path

            base = str(mini_model_path("text2img"))
        if not os.path.isdir(base) and (os.path.isabs(base) or not _is_hub_id(base)):
            raise DreamBoothError(f"the LoRA in {out} was trained on base model {base}, a folder "
                                  "that no longer exists: put the base model back there, or "
                                  "train the run again on one that exists")
        try:
            pipe = from_pretrained(StableDiffusionPipeline, base, dtype,
                                   safety_checker=None, requires_safety_checker=False,
                                   **({"local_files_only": True} if hub_offline(base) else {}))
        except OSError as error:  # a Hub id not reachable, or a relative folder that is gone
            raise DreamBoothError(f"could not load base model {base} of the LoRA in {out} "
                                  f"({first_line(error)}): check the "
                                  "folder or your network, or train the run again") from None
        from diffusers.utils import logging

        level = logging.get_verbosity()
        if not settings["train_text_encoder"]:  # "no LoRA for the text encoder": as intended
            logging.set_verbosity_error()
        try:
            pipe.load_lora_weights(out, weight_name=LORA_FILE)  # the safetensors file, never a .bin
        finally:
            logging.set_verbosity(level)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", dtype=dtype,
                                                       use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ---------------------------------------------------------------------------------- training


@torch.no_grad()
def save_validation(pipe, prompts: list[str], path: Path, seed: int, per_prompt: int = 4) -> None:
    """A grid of pictures: one row per validation prompt, ``per_prompt`` seeds each."""
    rows = []
    for prompt in prompts:
        rows.append(pipe([prompt] * per_prompt, num_inference_steps=25, guidance_scale=7.5,
                         generator=torch.Generator().manual_seed(seed)).images)
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * per_prompt, h * len(rows)))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image, (c * w, r * h))
    with atomic_path(path) as tmp:
        grid.save(tmp)


def train_dreambooth(instance, instance_prompt, class_prompt=None, out="runs/dreambooth", *,
                     token: str = "sks", base=None, lora: bool = True, rank: int = 16,
                     train_text_encoder: bool = False, prior_preservation: bool = True,
                     prior_loss_weight: float = 1.0, num_class_images: int = 100,
                     steps: int = 400, batch_size: int = 4, lr: float | None = None,
                     text_encoder_lr: float | None = None, class_dir=None,
                     seed: int = 0, save_every: int = 100, validate_every: int = 100,
                     validation_prompts: list[str] | None = None,
                     token_init: str | list[str] | None = None,
                     gradient_checkpointing: bool = False, cpu: bool = False) -> Path:
    """Fine-tune ``base`` on the subject in ``instance``; returns the path to load the result.

    ``instance``: a folder of 3 or more pictures (3–5 is typical), or a list of PIL images.
    ``instance_prompt``: one prompt with the rare ``token`` for all pictures, or one per
    picture. ``class_prompt``: the class without the token (one string, or a list cycled over
    ``num_class_images``); needed for prior preservation. ``lr`` (the peak of a cosine decay) defaults to 3e-3 for a LoRA and
    3e-4 for the full UNet, rates that suit the mini model (its evaluation recipe trains 450
    steps at 4e-4); for Stable Diffusion itself use about 1e-4 and 5e-6. ``text_encoder_lr``:
    the text encoder's own peak rate when it trains (default ``lr``). ``class_dir``: where the
    class pictures are kept (default ``out/class_images``); pictures already there for the
    same class prompts and seed are reused, so several runs can share one folder (as
    ``--class_data_dir`` does in diffusers' DreamBooth script).
    ``token_init``: words that describe the subject (e.g. ``"white black"``); the rare token's
    embedding starts as the mean of theirs instead of its own, as textual inversion starts
    from an initializer token. Full fine-tunes only: a LoRA file does not carry embeddings.
    ``gradient_checkpointing``: keep few activations and recompute the rest in the backward
    pass (the UNet's, and the text encoder's when it trains): far less memory for slower steps
    (one more forward pass each); the usual way to fit a LoRA on Stable Diffusion at 512 px
    into a 16 GB GPU. Like every setting it belongs to the run: a folder trained without it
    does not resume with it.
    ``cpu``: train on the CPU even where PyTorch sees a GPU (``sdcourse evaluate dreambooth``
    does, so that its numbers compare with the ones recorded on a CPU); otherwise a CUDA GPU
    trains it, in fp16 mixed precision.

    Returns ``out`` (holding ``pytorch_lora_weights.safetensors``) for a LoRA, else
    ``out/pipeline`` (a complete diffusers folder); :func:`load_dreambooth` loads either.
    Calling it again with the same arguments resumes an interrupted run, or returns at once
    when the run is finished.
    """
    # 1. check everything that can be wrong before anything expensive happens
    images, _ = load_instance_images(instance)
    instance_prompts = _as_prompts(instance_prompt, len(images), "instance_prompt")
    # named as both callers know them: the argument, and its option where the command has one
    for name, value, least in (("steps (--steps)", steps, 1), ("batch_size", batch_size, 1),
                               ("rank", rank, 1),
                               ("num_class_images", num_class_images, 1 if prior_preservation else 0),
                               ("save_every", save_every, 1), ("validate_every", validate_every, 0),
                               ("seed (--seed)", seed, 0)):
        if not is_whole(value):  # 400.0, "400"
            raise DreamBoothError(f"{name} must be a whole number, got {value!r}")
        if value < least:
            raise DreamBoothError(f"{name} must be at least {least}, got {value}")
    for name, value, optional in (("lr (--lr)", lr, True), ("text_encoder_lr", text_encoder_lr, True),
                                  ("prior_loss_weight", prior_loss_weight, False)):
        if (value is not None or not optional) and not is_number(value):
            raise DreamBoothError(f"{name} must be a number, got {value!r}")
    for name, value in (("lr (--lr)", lr), ("text_encoder_lr", text_encoder_lr)):
        if value is not None and not 0 < value < math.inf:  # also NaN
            raise DreamBoothError(f"{name} must be greater than 0 and finite, got {value}: give a "
                                  "learning rate such as 1e-4 (or leave it out for the default)")
    if not 0 <= prior_loss_weight < math.inf:
        raise DreamBoothError(f"prior_loss_weight must be at least 0 and finite, got {prior_loss_weight}: "
                              "1.0 weighs the class pictures like the subject's (DreamBooth's choice)")
    # plain Python numbers from here on (numpy's pass the checks but not the run's JSON record)
    steps, batch_size, rank, num_class_images, save_every, validate_every, seed = map(
        int, (steps, batch_size, rank, num_class_images, save_every, validate_every, seed))
    lr, text_encoder_lr = (None if v is None else float(v) for v in (lr, text_encoder_lr))
    prior_loss_weight = float(prior_loss_weight)
    if prior_preservation:
        if not class_prompt:
            raise DreamBoothError("prior preservation needs a class_prompt: the class of the "
                                  "subject without the rare token (e.g. \"a dog\"), or pass "
                                  "prior_preservation=False")
        cycle = [class_prompt] if isinstance(class_prompt, str) else list(class_prompt)
        odd = [p for p in cycle if not isinstance(p, str)]
        if odd:
            raise DreamBoothError(f"class_prompt must be a string or a list of strings, got "
                                  f"{type(odd[0]).__name__}: give the class of the subject "
                                  "without the rare token (e.g. \"a dog\")")
        blank = [p for p in cycle if not p.strip()]
        if blank:  # the base model would draw its class pictures from no prompt at all
            raise DreamBoothError(f"class_prompt {blank[0]!r} is empty: give the class of the "
                                  "subject without the rare token (e.g. \"a dog\"), or pass "
                                  "prior_preservation=False")
        class_prompts = [cycle[i % len(cycle)] for i in range(num_class_images)]
    else:
        class_prompts = []
    # the run's folders: before any model is loaded (or downloaded, for a Hub id)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DreamBoothError(f"out folder {out} is a file: give a folder for the run (a new "
                              "one, or the one an earlier call trained in)")
    try:  # another trainer's run (a VAE's, a UNet's) is left alone, before anything is written
        common.check_kind(out, "dreambooth", option="out folder (--out)")
    except common.CheckpointError as error:
        raise DreamBoothError(str(error)) from None
    class_dir = Path(class_dir) if class_dir is not None else out / "class_images"
    check_folders_apart(instance, out, class_dir if prior_preservation else None)
    if isinstance(base, str) and base.strip().lower() in ("mini", "real"):  # the course's words
        if base.strip().lower() == "real":
            from ..models import REAL_MODELS

            raise DreamBoothError(f"base model 'real': give a real checkpoint's Hub id, e.g. "
                                  f"'{REAL_MODELS['text2img'][0]}', or leave base (--base) out "
                                  "for the mini model")
        base = None
    # one spelling per model (a folder resolved: the run loads from any working folder, and
    # `sd`, `./sd/` resume each other), as the class pictures record the model that drew them
    recorded_base = drawer = class_base(base)
    drawn = prior_preservation and check_class_dir(class_dir, class_prompts, seed, drawer)
    if base is None:
        from ..models import mini_model_path

        base = mini_model_path("text2img")
    tokenizer = load_tokenizer(base)  # (its files alone: kilobytes)
    check_token(token, tokenizer)
    check_prompts(instance_prompts, class_prompts, token)
    init_words = token_init.split() if isinstance(token_init, str) else list(token_init or [])
    check_token_init(init_words, token, tokenizer, lora)

    settings = Settings(instance_prompts, class_prompts, token, recorded_base, lora, rank,
                        train_text_encoder, prior_preservation, prior_loss_weight,
                        num_class_images if prior_preservation else 0, batch_size,
                        lr if lr is not None else (3e-3 if lora else 3e-4), seed, _digest(images),
                        text_encoder_lr if train_text_encoder else None, init_words,
                        gradient_checkpointing)
    record = read_record(out)
    if record is not None:
        upgraded = recorded_base != str(base) and record["settings"].get("base") == str(base)
        if upgraded:  # recorded by the folder of this same package, before mini_base: the same
            record["settings"]["base"] = recorded_base
        check_same_run(out, record, settings)
        if upgraded:  # and loadable after a reinstall or a cleaned cache
            _write_json(out / "dreambooth.json", record)
        finished = record.get("done_step", 0)
        if finished == steps:
            return out if lora else out / "pipeline"  # already trained
        if finished > steps:  # its weights have taken more steps than asked: no shorter run in them
            raise DreamBoothError(
                f"{out} holds a DreamBooth run finished at step {finished}, more than steps "
                f"(--steps) {steps}: a shorter run is another run; give another out folder "
                f"(--out), delete this one to start over, or ask for {finished} steps to load it")
        check_same_schedule(out, record, steps)
    where = [("out folder (--out)", out, [out])]
    if prior_preservation and not drawn:  # the class pictures are swapped in from beside it
        where.append(("class folder (class_dir / --class-dir)", class_dir,
                      [class_dir, class_dir.absolute().parent]))
    for what, folder, written in where:
        problem = next(filter(None, map(unwritable, written)), None)
        if problem:
            raise DreamBoothError(f"{what} {folder}: {problem}: give a folder you can write to")
    # the base model's files (a Hub checkpoint's are downloaded now): fp16 ones on a GPU,
    # where the frozen parts run in float16 (frozen_dtype); all there before out is made
    fp16_files = torch.cuda.is_available()
    files = local_checkpoint(base, fp16_files=fp16_files)
    check_base_folder(files, fp16_files=fp16_files)
    check_prediction_type(files)
    record = {"done_step": 0, **(record or {}), "settings": settings.to_json(), "steps": steps}
    try:
        return _train(out, record, files, images, settings, tokenizer, steps, save_every,
                      validate_every, validation_prompts or instance_prompts[:1] + class_prompts[:1],
                      class_dir, drawer, cpu)
    finally:
        common.release_run(out)
        _release_models()


def _within(folder: Path, other: Path) -> bool:
    """Whether ``folder`` is ``other`` or lies inside it (links resolved)."""
    folder, other = Path(folder).resolve(), Path(other).resolve()
    return folder == other or other in folder.parents


def check_folders_apart(instance, out: Path, class_dir: Path | None) -> None:
    """The run's folders must keep out of the subject's pictures and of each other: a run
    writing into the instance folder would leave files there that the next run refuses as
    pictures, and the class pictures are swapped in as a whole folder, which would take a
    run folder inside it along."""
    if isinstance(instance, (str, Path)):
        for what, folder in (("out folder (--out)", out), ("class folder (class_dir / --class-dir)",
                                                           class_dir)):
            if folder is not None and _within(folder, instance):
                raise DreamBoothError(f"{what} {folder} is inside the instance folder {instance}, "
                                      "which holds the subject's pictures only: give a folder "
                                      "outside it")
    if class_dir is not None and _within(Path.cwd(), class_dir):
        raise DreamBoothError(f"class folder {class_dir} is the current folder or holds it, and is "
                              "replaced as a whole when its pictures are drawn: give class_dir / "
                              "--class-dir a folder of its own (default: out/class_images)")
    if class_dir is not None and _within(out, class_dir):
        raise DreamBoothError(f"class folder {class_dir} holds the run's out folder {out} and is "
                              "replaced as a whole when its pictures are drawn: give class_dir / "
                              "--class-dir a folder of its own (default: out/class_images)")


def _release_models() -> None:
    """Free a finished (or failed) run's models now, not whenever Python's collector next runs.

    Why: with mixed precision (on a GPU) accelerate's ``prepare`` replaces each model's
    ``forward`` with a method bound to the model, a reference cycle that reference counting
    never frees. A trained SD 2 UNet would keep its 3.5 GB of GPU memory while the notebook
    loads the tuned pipelines after it.
    """
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _train(out: Path, record: dict, files: str, images, s: Settings, tokenizer, steps: int,
           save_every: int, validate_every: int, validation_prompts: list[str], class_dir: Path,
           drawer: str, cpu: bool = False) -> Path:
    from .text2img import tokenize

    started, cpu_started = time.perf_counter(), time.process_time()
    cuda = torch.cuda.is_available() and not cpu
    accelerator = common.new_accelerator(cpu=not cuda, mixed_precision="fp16" if cuda else "no")
    torch.manual_seed(s.seed)
    frozen = frozen_dtype(accelerator.device)
    try:  # damaged weights (a cut download): one line, and no run folder claimed by this base
        parts = load_components(files, vae_dtype=frozen, fp16_files=frozen == torch.float16)
    except (OSError, ValueError, RuntimeError) as error:
        raise DreamBoothError(f"could not load base model {files} ({first_line(error)}): give a "
                              "complete diffusers Stable Diffusion folder, or a Hub id") from None
    if accelerator.is_main_process:  # (under `accelerate launch` the others share its folder)
        try:
            common.claim_run(out)  # makes out, locked for this process: one trainer at a time
        except common.CheckpointError as error:
            raise DreamBoothError(str(error)) from None
    out.mkdir(parents=True, exist_ok=True)  # the run's record: its settings, for a resume
    _write_json(out / "dreambooth.json", record)
    parts["vae"].to(accelerator.device)
    size = resolution(parts)
    images = [to_resolution(im, size) for im in images]

    # 2. prior preservation: the base model draws its class pictures (once; then reused)
    class_images = []
    if s.prior_preservation:
        if accelerator.is_main_process:
            pipe = make_pipeline(parts, tokenizer, accelerator.device)
            with accelerator.autocast():  # a float16 VAE decodes the float32 UNet's latents
                class_images = generate_class_images(pipe, s.class_prompts, class_dir, seed=s.seed,
                                                     base=drawer)
        accelerator.wait_for_everyone()
        if not class_images:
            class_images = generate_class_images(None, s.class_prompts, class_dir, seed=s.seed,
                                                 base=drawer)
        class_images = [to_resolution(im, size) for im in class_images]

    # 3. what learns: a LoRA on the attention projections, or every weight
    unet, text_encoder = parts["unet"], parts["text_encoder"]
    if s.token_init:  # start the rare token where words describing the subject are
        set_token_embedding(text_encoder, tokenizer, s.token, s.token_init)
    text_encoder.requires_grad_(s.train_text_encoder)
    if s.lora:
        add_lora(unet, s.rank, UNET_LORA_TARGETS)
        if s.train_text_encoder:
            add_lora(text_encoder, s.rank, TEXT_LORA_TARGETS)
    if s.gradient_checkpointing:  # activations recomputed in the backward pass: less memory
        unet.enable_gradient_checkpointing()
        if s.train_text_encoder:  # (transformers 5 renamed gradient_checkpointing_enable)
            getattr(text_encoder, "activation_checkpointing_enable",
                    text_encoder.gradient_checkpointing_enable)()
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "base_lr": s.lr},
              {"params": [p for p in text_encoder.parameters() if p.requires_grad],
               "base_lr": s.text_encoder_lr or s.lr}]
    groups = [g | {"lr": g["base_lr"]} for g in groups if g["params"]]
    params = [p for g in groups for p in g["params"]]
    # fused: one kernel for all parameters (on a CPU the default loops over them in Python)
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2, fused=True)
    ckpt = common.find_checkpoint(out)
    start = 0
    if ckpt is not None:
        with common.resuming(ckpt):
            TrainedWeights.load_into(unet, ckpt / "unet")
            if s.train_text_encoder:
                TrainedWeights.load_into(text_encoder, ckpt / "text_encoder")
            start = common.load_optimizer(optimizer, ckpt)
        accelerator.print(f"dreambooth: resuming from step {start} ({ckpt})")

    # the VAE is frozen: encode every picture once; the prompts too when the encoder is frozen
    inst_mean, inst_std = encode_images(parts["vae"], images)
    cls_mean, cls_std = encode_images(parts["vae"], class_images) if class_images else (None, None)
    prompts = s.instance_prompts + s.class_prompts
    ids = tokenize(tokenizer, prompts)
    frozen_hidden = None
    if not s.train_text_encoder:
        text_encoder.to(accelerator.device, frozen)
        with torch.no_grad():
            frozen_hidden = torch.cat([text_encoder(ids[i:i + 64].to(accelerator.device))[0]
                                       for i in range(0, len(ids), 64)])
    scale = parts["vae"].config.scaling_factor
    noise_scheduler = parts["noise_scheduler"]

    if s.train_text_encoder:
        unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    else:  # a frozen model must not be wrapped for distributed training
        unet, optimizer = accelerator.prepare(unet, optimizer)
        text_encoder.to(accelerator.device)
    if ckpt is not None:  # (fp16 on a GPU: the loss scale the run had reached)
        common.restore_scaler(accelerator, ckpt)
    unet.train()
    text_encoder.train(s.train_text_encoder)
    n_inst, n_cls = len(images), len(class_images)
    rank, world_size = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:  # (the one that writes the log)
        common.trim_log(out, start)
    bar = common.progress(range(start, steps), initial=start, total=steps, desc="dreambooth",
                          mininterval=2, **({} if accelerator.is_main_process else {"disable": True}))
    for step in bar:
        for group in optimizer.param_groups:  # cosine decay to 0: the last weights are settled
            group["lr"] = group["base_lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
        # 4. the batch of this step depends only on (seed, step): a resumed run sees the same
        g = torch.Generator().manual_seed(s.seed * 10**6 + step * world_size + rank)
        idx = torch.randint(0, n_inst, (s.batch_size,), generator=g)
        mean, std = inst_mean[idx], inst_std[idx]
        if n_cls:  # instance half + class half, one forward pass
            cidx = torch.randint(0, n_cls, (s.batch_size,), generator=g)
            mean, std = torch.cat([mean, cls_mean[cidx]]), torch.cat([std, cls_std[cidx]])
            idx = torch.cat([idx, n_inst + cidx])
        latents = (mean + std * torch.randn(mean.shape, generator=g)) * scale
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        device = accelerator.device
        if frozen_hidden is not None:
            hidden = frozen_hidden[idx.to(device)]
        else:
            hidden = text_encoder(ids[idx].to(device))[0]

        pred = unet(noisy.to(device), t.to(device), encoder_hidden_states=hidden).sample.float()
        target = training_target(noise_scheduler, latents, noise, t).to(device)
        instance_loss = F.mse_loss(pred[:s.batch_size], target[:s.batch_size])
        loss = instance_loss
        prior_loss = torch.zeros(())
        if n_cls:  # 5. prior preservation: the class pictures keep their meaning
            prior_loss = F.mse_loss(pred[s.batch_size:], target[s.batch_size:])
            loss = instance_loss + s.prior_loss_weight * prior_loss
        if not torch.isfinite(loss):  # diverged: every later step would train on NaN and save it
            raise DreamBoothError(f"the loss became {loss.item()} at step {step + 1}: training "
                                  f"diverged at a learning rate of {s.lr:g}; give a lower one (lr, "
                                  "--lr) in another out folder (this one resumes at its settings)")
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

        done = step + 1
        bar.set_postfix(loss=f"{instance_loss.item():.4f}", prior=f"{prior_loss.item():.4f}")
        if accelerator.is_main_process:
            if done % 10 == 0 or done == steps:
                common.append_log(out, done, loss=instance_loss.item(), prior_loss=prior_loss.item())
            if validate_every and (done % validate_every == 0 or done == steps):
                validate(parts, tokenizer, accelerator, unet, text_encoder, validation_prompts,
                         out / "validation" / f"step_{done:05d}.png", s)
            if done % save_every == 0 or done == steps:
                models = {"unet": TrainedWeights(accelerator.unwrap_model(unet))}
                if s.train_text_encoder:
                    models["text_encoder"] = TrainedWeights(accelerator.unwrap_model(text_encoder))
                common.save_checkpoint(out, done, models, optimizer,
                                       {"kind": "dreambooth", **common.scaler_state(accelerator)})
        accelerator.wait_for_everyone()
    bar.close()

    result = out if s.lora else out / "pipeline"
    if accelerator.is_main_process:
        parts["unet"] = accelerator.unwrap_model(unet)
        parts["text_encoder"] = accelerator.unwrap_model(text_encoder)
        result = save_result(out, parts, tokenizer, s)
        record = _read_json(out / "dreambooth.json")
        seconds = record.get("train_seconds", 0.0) + time.perf_counter() - started
        cpu = record.get("train_cpu_seconds", 0.0) + time.process_time() - cpu_started
        _write_json(out / "dreambooth.json", {"settings": s.to_json(), "done_step": steps, "steps": steps,
                                              "train_seconds": round(seconds, 2),
                                              "train_cpu_seconds": round(cpu, 2)})
    accelerator.wait_for_everyone()
    return result


def validate(parts, tokenizer, accelerator, unet, text_encoder, prompts, path: Path, s: Settings):
    """Draw the validation prompts with the model as it is now (then back to training)."""
    unet_m, te_m = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
    unet_m.eval()
    te_m.eval()
    pipe = make_pipeline({**parts, "unet": unet_m, "text_encoder": te_m}, tokenizer)
    with accelerator.autocast():
        save_validation(pipe, prompts, path, seed=s.seed)
    unet_m.train()
    te_m.train(s.train_text_encoder)
