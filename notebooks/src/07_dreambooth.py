# %% [markdown]
# # 07 · DreamBooth: teaching the model a new subject
#
# **What you will learn**
# - the DreamBooth idea: a few pictures of *your* subject, bound to a **rare token**, with a
#   **class prior** so the model does not forget what an ordinary member of the class looks
#   like (*language drift*);
# - how to run it: here on the mini model on a CPU in about a minute, and the same call as a
#   LoRA on a free Colab GPU with a real checkpoint;
# - measured: the subject appears in contexts it was never shown in, and prior preservation
#   keeps the class intact.
#
# **What you need**: CPU with the mini model: about 3 minutes (two short training runs).
# Colab GPU (T4) with a real model: about 15 minutes (download, class images, 400 LoRA steps).

# %%
# On Google Colab, install the course first: run the first code cell of 00_setup.ipynb.
import time

import torch

import sdcourse as sdc
from sdcourse import dreambooth_subject as subject
from sdcourse.train.dreambooth import DreamBoothError, load_dreambooth, train_dreambooth

device = sdc.pick_device()
base = sdc.load_pipeline("text2img", device=device)
on_mini = sdc.choose_model("text2img", device=device).kind == "mini"

# %% [markdown]
# ## 1. The subject
# The mini world only has one-colour shapes. Our subject is *one particular* circle: white on
# its left half, black on its right — like "my dog" among dogs. Four pictures of it, on
# backgrounds that are never green:

# %%
instance_images = subject.make_instance_images(4)
instance_prompts = subject.instance_prompts(4)
sdc.show_images(instance_images, titles=instance_prompts, size=2.2);

# %% [markdown]
# The base model has never seen it. Asked for "a sks circle on a green background" it draws
# some circle — the token means nothing to it yet. `subject.detect_subject` recognises the
# two-tone circle from pixels:

# %%
unseen = subject.subject_prompt("green")
before = base([unseen] * 8, num_inference_steps=25, generator=sdc.make_generator(0)).images
print(f"'{unseen}': subject found in {sum(map(subject.detect_subject, before))}/8 pictures")
sdc.image_grid(before, rows=1, size=64)

# %% [markdown]
# ## 2. A rare token
# The subject is bound to a token that has (almost) no meaning yet: "sks" is one token of
# CLIP's vocabulary, rarely seen. A common word would carry its own meaning, which
# fine-tuning would have to overwrite — the trainer refuses those before doing any work:

# %%
# NBVAL_CHECK_OUTPUT
print("sks ->", base.tokenizer("sks").input_ids[1:-1], "(one token)")
try:
    train_dreambooth(instance_images, "a dog circle on a red background", out="runs/never", token="dog")
except DreamBoothError as error:
    print("refused:", error)

# %% [markdown]
# ## 3. Prior preservation
# Trained on four pictures alone, the model soon answers *every* circle prompt with the
# subject: "circle" drifts towards "sks circle". DreamBooth's remedy: before training, the
# *base* model draws ~100 pictures of the class ("a red circle on a blue background", …), and
# every training step also fits a batch of them with their own prompts. Their loss, weighted
# by `prior_loss_weight`, keeps the class as the base model knew it.
#
# ## 4. Training (LoRA)
# The trainer fine-tunes a LoRA: small low-rank matrices added to the UNet's attention
# projections while the original weights stay frozen. Two runs: with and without prior
# preservation.

# %%
runs = {}
for prior in (True, False):
    start = time.perf_counter()
    runs[prior] = train_dreambooth(
        instance_images, instance_prompts, subject.class_prompts(100),
        out=f"runs/07_dreambooth_{'prior' if prior else 'no_prior'}",
        prior_preservation=prior, seed=0)
    print(f"prior preservation {prior}: trained in {time.perf_counter() - start:.0f} s -> {runs[prior].name}")

# %%
import os

lora_file = runs[True] / "pytorch_lora_weights.safetensors"
unet_mb = sum(p.numel() for p in base.unet.parameters()) * 2 / 1e6
print(f"LoRA file: {os.path.getsize(lora_file) / 1e3:.0f} kB, next to a {unet_mb:.0f} MB (fp16) UNet")

# %% [markdown]
# ## 5. Before and after, in new contexts
# The result loads like any LoRA: `pipe.load_lora_weights(folder)` on the base pipeline
# (`load_dreambooth` does exactly that). The subject on a green background — a context no
# instance picture had — and ordinary circles, which should stay ordinary:

# %%
tuned = {prior: load_dreambooth(path, device=device) for prior, path in runs.items()}
prompts = [subject.subject_prompt("green"), subject.subject_prompt("orange"),
           "a red circle on a green background", "a blue circle on a white background"]
rows = []
for pipe in (base, tuned[True], tuned[False]):
    rows += pipe(prompts, num_inference_steps=25, generator=sdc.make_generator(1)).images
sdc.show_images(rows, titles=[f"{who}: {p[:22]}…" for who in ("base", "prior", "no prior") for p in prompts],
                cols=4, size=2);

# %% [markdown]
# ## 6. Measure: subject fidelity and the class prior
# - `subject_fidelity`: share of "a sks circle on a <unseen colour> background" pictures that
#   show the subject;
# - `prior_kept`: share of class prompts without the token ("a red circle on a green
#   background") that still give an ordinary circle of the asked colour.

# %%
scores = {name: subject.measure(pipe, n=32) for name, pipe in
          (("base", base), ("with prior", tuned[True]), ("without prior", tuned[False]))}
for name, s in scores.items():
    print(f"{name:>13}: subject_fidelity {s['subject_fidelity']:.2f}   prior_kept {s['prior_kept']:.2f}")

# %%
# NBVAL_CHECK_OUTPUT
print("the subject is learned:", scores["with prior"]["subject_fidelity"] > scores["base"]["subject_fidelity"])
print("prior preservation keeps the class better:",
      scores["with prior"]["prior_kept"] >= scores["without prior"]["prior_kept"])

# %% [markdown]
# ## 7. LoRA or full fine-tune, and what changes on a real GPU
# - **Full fine-tune** (`lora=False`) updates every UNet weight: the original DreamBooth, the
#   strongest binding, but a whole new UNet to store (3.4 GB for SD 1.5 in fp32) and ≥ 14 GB of
#   GPU memory to train with Adam. **LoRA** trains ~1% of the weights, fits a free T4 (16 GB)
#   in fp16, and the result is a few MB that loads onto the base model.
# - On Colab, the same call with a real checkpoint and your own pictures (512 px):
#
# ```python
# train_dreambooth("my_dog/", "a photo of sks dog", "a photo of a dog",
#                  base="stable-diffusion-v1-5/stable-diffusion-v1-5", lora=True,
#                  steps=400, num_class_images=200, out="runs/my_dog")
# ```
#   It runs in fp16 mixed precision on the GPU; `accelerate launch` spreads it over several.
#
# ## Exercises
# 1. Train with `prior_loss_weight=0.3` and compare `prior_kept`.
# 2. Complete `is_rare` (a token is usable when the tokenizer keeps it as a single token and
#    it is not an everyday word) and run the self-check.


# %%
def is_rare(token: str) -> bool:
    ids = base.tokenizer(token).input_ids[1:-1]
    return len(ids) == 1 and token not in {"dog", "red", "circle", "photo"}


# %%
# Self-check for exercise 2
assert is_rare("sks") and not is_rare("dog") and not is_rare("red")
print("✓ 'sks' is a single, meaningless token; 'dog' and 'red' already mean something")
