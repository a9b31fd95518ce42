# %% [markdown]
# # 07 · DreamBooth: teaching the model a new subject
#
# **What you will learn**
# - the DreamBooth idea: a few pictures of *your* subject, bound to a **rare token**, with a
#   **class prior** so the model does not forget what an ordinary member of the class looks
#   like (*language drift*);
# - how to run it: here on the mini model on a CPU in a few minutes, and the same call as a
#   LoRA on a free Colab GPU with a real checkpoint;
# - measured: the subject appears in contexts it was never shown in, and prior preservation
#   keeps the class intact.
#
# **What you need**: CPU with the mini model: 3 to 4 minutes, depending on the CPU (100 class
# pictures, 10 to 30 seconds; a 450-step training run with prior preservation, one to two
# minutes; a 150-step run without it, under half a minute; then the measurements, under a
# minute).
# GPU with a real model (SD 2.1-base at 512 px): 5 minutes on an H200 (100 class pictures in 41 s,
# 400 + 133 LoRA steps in 3.6 minutes); a free Colab T4 is many times slower: expect about half
# an hour, plus the download (an estimate: not timed on a T4).

# %% [colab]

# %%
import re
import time

import torch

import sdcourse as sdc
from sdcourse import dreambooth_subject as subject
from sdcourse.train.dreambooth import DreamBoothError, load_dreambooth, train_dreambooth

device = sdc.pick_device()
# training a real checkpoint needs a CUDA GPU (on a CPU or an Apple GPU it would take hours):
# anywhere else this lesson trains the mini model
model = None if device.startswith("cuda") else "mini"
choice = sdc.choose_model("text2img", model=model, device=device)
on_mini = choice.kind == "mini"
base = sdc.load_pipeline("text2img", model=choice, device=device)
thumb = 64 if on_mini else 128  # pixels per picture in the grids below

# %% [markdown]
# ## 1. The subject
# The mini world only has one-colour shapes. Our subject is *one particular* circle: white on
# its left half, black on its right — like "my dog" among dogs. Five pictures of it, on
# backgrounds that are never green. On a real checkpoint the cells below train on these same
# 64 px pictures, enlarged to 512 px: enough to run the whole code path on a GPU; for a result
# worth keeping, use photos of your own (section 7).

# %%
# NBVAL_CHECK_OUTPUT
instance_images = subject.make_instance_images(5)
instance_prompts = subject.instance_prompts(5)
print(len(instance_images), "pictures of", instance_images[0].size, "| prompts:", instance_prompts[:2], "...")
sdc.show_images(instance_images, titles=[re.sub(r"^a sks circle on an? ", "", p) for p in instance_prompts],
                size=2.2);

# %% [markdown]
# The base model has never seen it. Asked for "a sks circle on a green background" it draws
# an ordinary circle, mostly a purple one: "sks" has an embedding the mini text encoder never
# trained, and the model still reads it as some colour. Training has to override that
# reading. `subject.detect_subject` recognises the two-tone circle from pixels:

# %%
unseen = subject.subject_prompt("green")
before = base([unseen] * 8, num_inference_steps=25, generator=sdc.make_generator(0)).images
if on_mini:  # the detector reads the mini world's pixels
    print(f"'{unseen}': subject found in {sum(map(subject.detect_subject, before))}/8 pictures")
else:
    print("SKIPPED: the subject's detector reads the mini world's pixels (judge the row by eye).")
sdc.image_grid(before, rows=1, size=thumb)

# %% [markdown]
# ## 2. A rare token
# The subject is bound to a token that has (almost) no meaning yet: "sks" is one token of
# CLIP's vocabulary, rarely seen (the mini model never trained its embedding, which still
# pulls towards purple, as above; real Stable Diffusion gives it a weak pull of its own —
# towards a rifle). Training overrides either. A common word would carry its own meaning, which
# fine-tuning would have to overwrite. The trainer refuses, before doing any work, a list of
# about 180 common words, any word the tokenizer splits into several pieces, and any single
# token among the first 30,000 of CLIP's vocabulary (its byte-pair encoding learned the
# frequent pieces first: "apple" is 3055, "pikachu" 28107). A rule of thumb, not a
# dictionary: choosing the token stays your job (exercise 3):

# %%
# NBVAL_CHECK_OUTPUT
print("sks ->", base.tokenizer("sks").input_ids[1:-1], "(one token)")
try:
    train_dreambooth(instance_images, "a dog circle on a red background", "a red circle",
                     out="runs/never", token="dog")
except DreamBoothError as error:
    print("refused:", error)

# %% [markdown]
# ## 3. Prior preservation
# Trained on five pictures alone, the model soon answers *every* circle prompt with the
# subject: "circle" drifts towards "sks circle". DreamBooth's remedy: before training, the
# *base* model draws pictures of the class ("a red circle on a blue background", …), and
# every training step also fits a batch of them with their own prompts. Their loss, weighted
# by `prior_loss_weight`, keeps the class as the base model knew it.
#
# The class prompt is the instance prompt without the rare token: "a photo of a dog" for
# "a photo of sks dog". The mini world's captions always name a colour, so "a sks circle on
# a red background" becomes, say, "a black circle on a red background": an ordinary colour
# drawn at random, on each instance picture's background in turn. (Class prompts on every
# background, green included, did worse: measured with an earlier recipe, the prior at half
# weight in both variants, the
# subject's fidelity on green was 0.84, 0, 0, 0 and 0.18 with training seeds 0–4, against
# 1.00, 0.72, 0.62, 0.34 and 0.96 with these class prompts; `benchmarks/RESULTS.md`.)
#
# `train_dreambooth` draws them itself when they are missing; here we draw them first, to see
# them (and to keep their time apart from the training's). The run with the prior below reads
# them from `class_dir`, where `prompts.json` records the prompts, the seed and the model that
# drew them (a run from another base model draws its own):

# %%
import shutil
from pathlib import Path

from sdcourse.train.dreambooth import generate_class_images

class_dir = Path("runs/07_class_images")
shutil.rmtree(class_dir, ignore_errors=True)  # draw them afresh every time the notebook runs
class_prompts = subject.class_prompts(100)
for instance_prompt, class_prompt in zip(instance_prompts, class_prompts):
    print(f"{instance_prompt!r:40} -> {class_prompt!r}")
start = time.perf_counter()
class_images = generate_class_images(base, class_prompts, class_dir, seed=0)
print(f"{len(class_images)} class pictures in {time.perf_counter() - start:.0f} s, e.g.:")
sdc.image_grid(class_images[:8], rows=1, size=thumb)

# %% [markdown]
# ## 4. Training
# On the mini model we fine-tune every weight of the UNet, as the original DreamBooth does,
# and here the text encoder too: "sks" starts as an embedding the mini encoder never learned, and letting it
# move is what carries the subject to backgrounds it was never shown on. We give it a
# head start, as textual inversion does with its "initializer token": `token_init="white
# black"` sets the embedding of "sks" to the mean of the embeddings of two words that
# describe the subject (with it, the subject reached green in at least 80% of the pictures
# with 8 of 9 training seeds instead of 5). The class pictures' loss counts as much as the subject's (`prior_loss_weight=1.0`,
# the paper's choice; at half weight the subject reached green less often). The rate peaks at 4e-4 and decays to zero
# over 450 steps. Two runs from the same base model: the full recipe with prior
# preservation, and one without it that is only a third as long — language drift does not
# need a long run to show. The cell deletes each run's folder first, so the notebook always
# trains from scratch (call `train_dreambooth` again without deleting and it resumes, or
# returns the finished run). On a real checkpoint the cell trains a LoRA instead: text encoder
# frozen, rate 1e-4, 400 steps with one picture per step (section 7 says why).
#
# First, what one training step computes, written out on the base model (nothing changes
# here): the VAE encodes a subject picture and a class picture, noise is added at a random
# timestep, the UNet predicts that noise from each picture's own prompt, and the two squared
# errors add up, the class picture's weighted by `prior_loss_weight`. The trainer repeats
# this with an optimizer step after each, in batches, and saves checkpoints on the way.

# %%
# NBVAL_CHECK_OUTPUT
import torch.nn.functional as F
from diffusers import DDPMScheduler

from sdcourse.train.dreambooth import training_target

noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)  # the schedule it was trained on
side = base.unet.config.sample_size * base.vae_scale_factor  # 64 px on the mini model, 512+ on SD
pictures = [instance_images[0].resize((side, side)), class_images[0].resize((side, side))]
prompts = [instance_prompts[0], class_prompts[0]]
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    pixels = base.image_processor.preprocess(pictures).to(device, base.vae.dtype)  # in [-1, 1]
    latents = base.vae.encode(pixels).latent_dist.sample(generator=g) * base.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=g).to(device, latents.dtype)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (2,), generator=g).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    ids = base.tokenizer(prompts, padding="max_length", max_length=base.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(device)
    prediction = base.unet(noisy, t, encoder_hidden_states=base.text_encoder(ids)[0]).sample
target = training_target(noise_scheduler, latents, noise, t)  # the noise (or, on v-prediction models, the velocity)
instance_loss = F.mse_loss(prediction[:1].float(), target[:1].float())  # the subject, with "sks"
prior_loss = F.mse_loss(prediction[1:].float(), target[1:].float())  # the class, as the base drew it
loss = instance_loss + 1.0 * prior_loss  # prior_loss_weight = 1.0
print("latents:", tuple(latents.shape), "| timesteps:", t.tolist(), "| prompts:", prompts)
print(f"loss = {instance_loss:.3f} (subject) + 1.0 × {prior_loss:.3f} (class) = {loss:.3f}")

# %%
if on_mini:  # the whole mini UNet and its text encoder, as `sdcourse evaluate dreambooth` trains
    settings = dict(lora=False, train_text_encoder=True, prior_loss_weight=1.0, lr=4e-4, token_init="white black")
    full_steps = 450
else:  # a real checkpoint on a GPU: a LoRA (see section 7)
    real = base.name_or_path  # the checkpoint that loaded (after any fallback in the registry)
    # one picture per step (plus one class picture) and gradient checkpointing fit a 15 GiB T4
    settings = dict(base=real, lora=True, lr=1e-4, batch_size=1, gradient_checkpointing=True)
    full_steps = 400
steps = {True: full_steps, False: full_steps // 3}  # without the prior, the class drifts fast
runs, trained = {}, 0.0
for prior in (True, False):
    out = f"runs/07_dreambooth_{'prior' if prior else 'no_prior'}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    runs[prior] = train_dreambooth(
        instance_images, instance_prompts, class_prompts, out=out, class_dir=class_dir,
        num_class_images=len(class_prompts), prior_preservation=prior, steps=steps[prior],
        validate_every=0, seed=0, **settings)
    seconds = time.perf_counter() - start
    trained += seconds
    print(f"prior preservation {prior}: {steps[prior]} steps in {seconds:.0f} s -> {runs[prior]}")
print(f"training in this notebook: {trained:.0f} s")

# %% [markdown]
# ## 5. Before and after, in a new context
# A full fine-tune is a complete diffusers folder, loaded with `from_pretrained`
# (`load_dreambooth` does that; for a LoRA it loads the base model and calls
# `pipe.load_lora_weights(folder)`). The subject on a green background — a context no instance
# picture had — and, for comparison, on orange, one it had; then ordinary circles, which
# should stay ordinary:

# %%
tuned = {prior: load_dreambooth(path, device=device, dtype=base.dtype) for prior, path in runs.items()}
prompts = [subject.subject_prompt("green"), subject.subject_prompt("orange"),
           "a red circle on a green background", "a blue circle on a white background"]
rows = []
for pipe in (base, tuned[True], tuned[False]):
    rows += pipe(prompts, num_inference_steps=25, generator=sdc.make_generator(1)).images
short = [re.sub(r" circle on an? ", " on ", p.removeprefix("a ")).replace(" background", "")
         for p in prompts]  # "sks on green"
sdc.show_images(rows, titles=[f"{who}: {p}" for who in ("base", "prior", "no prior") for p in short],
                cols=4, size=2);

# %% [markdown]
# ## 6. Measure: subject fidelity and the class prior
# - `subject_fidelity`: share of "a sks circle on a <unseen colour> background" pictures that
#   show the subject;
# - `prior_kept`: share of class prompts without the token ("a red circle on a green
#   background") that still give an ordinary circle of the asked colour.
#
# The run without the prior had a third of the steps, so less time to drift than the run with
# it. `sdcourse evaluate dreambooth` compares runs of equal length (450 steps each, 50
# prompts): `prior_kept` 0.96 with the prior, 0.22 without.
#
# Both measures read the mini world's pixels, so on a real checkpoint this section is skipped
# (judge the grids above instead).

# %%
if on_mini:
    scores = {name: subject.measure(pipe, n=50) for name, pipe in
              (("base", base), ("with prior", tuned[True]), ("without prior", tuned[False]))}
    for name, s in scores.items():
        print(f"{name:>13}: subject_fidelity {s['subject_fidelity']:.2f}   prior_kept {s['prior_kept']:.2f}")
else:
    print("SKIPPED: these measures read the mini model's world (you are on a real model).")

# %%
# NBVAL_CHECK_OUTPUT
if on_mini:
    print("the subject is learned:", scores["with prior"]["subject_fidelity"] > scores["base"]["subject_fidelity"])
    print("prior preservation keeps the class better, by at least 0.1 (5 of 50 pictures):",
          scores["with prior"]["prior_kept"] - scores["without prior"]["prior_kept"] >= 0.1)
else:
    print("SKIPPED: these measures read the mini model's world (you are on a real model).")

# %% [markdown]
# The run without the prior is short (150 steps), and already most of the class has drifted
# towards the subject; the subject, helped by the token's start, reaches green only some of
# the time. Trained the full 450 steps
# without the prior (`sdcourse evaluate dreambooth`), the class is mostly gone (`prior_kept`
# 0.22) and the subject never shows on green (`subject_fidelity` 0.00): trained on its five
# pictures alone, the model ties the subject to their five backgrounds as well as to "sks".
# The class pictures show ordinary circles on those same backgrounds, so with them only the
# token is left to carry the subject.

# %% [markdown]
# ## 7. LoRA or full fine-tune, and what changes on a real GPU
# - **Full fine-tune** (`lora=False`, what the mini model's run did) updates every UNet
#   weight: the original DreamBooth, the strongest binding, but a whole new UNet to store
#   (3.4 GB for SD 1.5 in fp32) and ≥ 14 GB of GPU memory to train with Adam.
# - **LoRA** (`lora=True`, the default) trains small low-rank matrices beside the frozen
#   attention projections, fits a free T4 (about 15 GiB usable) in fp16 mixed precision
#   with one picture per step and gradient checkpointing, and the result is a few MB that
#   loads onto the base model. Measured with this trainer on the SD 2.1 architecture at
#   512 px (`benchmarks/dreambooth_memory.py`, on an H100): at most 6.6 GiB of GPU memory
#   while training (7.9 GiB without gradient checkpointing), 13.1 GiB while the base model
#   draws the class pictures, four at a time. On a real checkpoint it is the usual choice. On the mini
#   model it binds the subject less reliably: the same recipe as a rank-16 LoRA (text encoder
#   too, lr 3e-3, no `token_init`, which is for full fine-tunes) put the subject on green
#   1.00 / 0.42 / 0.74 of the time with training seeds 0 / 1 / 2, against the full
#   fine-tune's 1.00 / 0.94 / 0.82, and kept the class 0.86 / 0.86 / 0.82 (full: 0.96 / 0.84 /
#   0.82; `benchmarks/results/eval_dreambooth_lora.json`): three seeds, so a tendency, not a
#   verdict. Try it in exercise 1 with and without `train_text_encoder=True`.
# - On Colab, the same call with a real checkpoint and your own pictures (512 px):
#
#   ```python
#   train_dreambooth("my_dog/", "a photo of sks dog", "a photo of a dog",
#                    base="stable-diffusion-v1-5/stable-diffusion-v1-5", lora=True,
#                    lr=1e-4, steps=400, num_class_images=200, out="runs/my_dog",
#                    batch_size=1, gradient_checkpointing=True)
#   ```
#   It runs in fp16 mixed precision on the GPU. Start it in a fresh runtime (or first
#   `del base, tuned, pipe`, `gc.collect()` and `torch.cuda.empty_cache()`): drawing 200 class pictures takes up to
#   13 GiB, which the pipelines this notebook keeps on the GPU would not leave. On several GPUs, start the same trainer from
#   a terminal with `accelerate launch -m sdcourse train dreambooth --instance-dir my_dog
#   --instance-prompt "a photo of sks dog" --class-prompt "a photo of a dog" --base …`.
#
# How much smaller is what a LoRA trains? Counted on this notebook's UNet:

# %%
# NBVAL_CHECK_OUTPUT
from diffusers import UNet2DConditionModel

from sdcourse.train.dreambooth import UNET_LORA_TARGETS, add_lora

unet_params = sum(p.numel() for p in base.unet.parameters())
text_params = sum(p.numel() for p in base.text_encoder.parameters())
with torch.device("meta"):  # the UNet's architecture alone: shapes, no memory for weights
    lora_unet = UNet2DConditionModel.from_config(base.unet.config)
    add_lora(lora_unet, 16, UNET_LORA_TARGETS)
lora_params = sum(p.numel() for p in lora_unet.parameters() if p.requires_grad)
print(f"full fine-tune: {unet_params / 1e6:.2f} M UNet weights change (and the text encoder's "
      f"{text_params / 1e6:.2f} M); a rank-16 LoRA on the UNet would train "
      f"{lora_params / 1e6:.2f} M ({lora_params / unet_params:.1%} of the UNet)")

# %% [markdown]
# ## Exercises
# 1. Train a LoRA (`lora=True`, 450 steps) with and without `train_text_encoder=True` and
#    compare `subject_fidelity` on the green background with the full fine-tune's. Start from
#    `settings` without `token_init` (full fine-tune only) and, on the mini model, without
#    `lr` (a LoRA's default is 3e-3; on a real checkpoint keep 1e-4). (No self-check: compare
#    the printed scores.)
# 2. Train with `prior_loss_weight=0.3` and compare `prior_kept`. (No self-check: the
#    measurement cell of section 6 is the check.)
# 3. Complete `is_rare`: a token is usable when the tokenizer keeps it as a single token and
#    it is not an everyday word. Hint: CLIP's vocabulary lists its BPE merges most frequent
#    first, so a word's id says roughly how common it is ("the" 518, "dog" 1929, "sks" 48136
#    of 49408). A heuristic: some ordinary words came late too ("starfish" 44283, "honeycomb"
#    48583), which is why the trainer also keeps a list of common words. Use the trainer's
#    cut from section 2: ids below 30,000 count as common.
# 4. Train again with `seed=6` instead of `seed=0` and measure. Five pictures are very
#    little: on the mini model the same recipe learns the subject on its five backgrounds
#    with every seed, but how well it carries it to green depends on the seed (`sdcourse
#    evaluate dreambooth --train-seed N`: fidelity 1.00 with seed 0; 0.94, 0.82, 1.00,
#    1.00, 0.88, 0.34, 1.00 and 0.98 with seeds 1 to 8). Then train seed 6 without
#    `token_init`: does the token's start matter there? Judge a recipe over several seeds;
#    `benchmarks/dreambooth_sweep.py` compares recipes that way. (No self-check: the
#    measurement is the answer.)


# %%
def is_rare(token: str) -> bool:
    raise NotImplementedError  # your code


# %%
# NBVAL_CHECK_OUTPUT
# Self-check for exercise 3
def check_exercise_3() -> str:
    assert is_rare("sks") and is_rare("ohwx"), "'sks' and 'ohwx' are single tokens learned late"
    assert not is_rare("dog") and not is_rare("red"), "'dog' and 'red' already mean something"
    assert not is_rare("bitcoin") and not is_rare("pikachu"), "single tokens, but words everyone knows (ids 6366, 28107)"
    assert not is_rare("skskq"), "'skskq' splits into pieces ('sk', 'sk', 'q') that spell other words"
    return "'sks' is a single, rare token; 'dog', 'red' and 'pikachu' already mean something"


passed = sdc.self_check(check_exercise_3, "exercise 3")

# %% [markdown]
# **A solution** (try it yourself first):


# %%
# NBVAL_CHECK_OUTPUT
def is_rare(token: str) -> bool:
    ids = base.tokenizer(token).input_ids[1:-1]  # without the start and end tokens
    return len(ids) == 1 and ids[0] >= 30_000  # one piece, not among the first 30,000 merges (the trainer's rule)


assert sdc.self_check(check_exercise_3, "exercise 3")
