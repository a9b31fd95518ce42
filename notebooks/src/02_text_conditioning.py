# %% [markdown]
# # 02 · Text conditioning: from a prompt to cross-attention
#
# **What you will learn**
# - how the CLIP tokenizer turns a prompt into 77 token ids (padding, truncation, what happens
#   to a prompt that is too long);
# - what the text encoder gives the UNet: one vector per token (768 numbers in SD 1.x, 1024 in
#   SD 2.x, 64 in the mini model);
# - how the UNet reads them through **cross-attention**, and — by capturing the attention maps
#   with a custom attention processor — *where in the picture each word is looked at*, and a
#   measurement of which tokens the object's positions attend to.
#
# **What you need**: CPU with the mini model: under a minute. Colab GPU with a real model:
# about 3 minutes (download included).

# %% [colab]

# %%
import numpy as np
import torch
import torch.nn.functional as F

import sdcourse as sdc

device = sdc.pick_device()
choice = sdc.choose_model("text2img", device=device)  # mini or real: see notebook 00
on_mini = choice.kind == "mini"
pipe = sdc.load_pipeline("text2img", model=choice, device=device)
tokenizer, text_encoder, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet

# %% [markdown]
# ## 1. The tokenizer
# Stable Diffusion uses CLIP's byte-pair-encoding tokenizer (49,408 tokens). The mini model
# uses exactly the same vocabulary, so ids are the same as in SD 1.x. A prompt becomes
# `<|startoftext|>`, its tokens, `<|endoftext|>`:

# %%
# NBVAL_CHECK_OUTPUT
prompt = "a red circle on a blue background"
ids = tokenizer(prompt).input_ids
print(ids)
print(tokenizer.convert_ids_to_tokens(ids))

# %% [markdown]
# The text encoder always sees 77 positions: shorter prompts are padded (SD 1.x and the mini
# model pad with the end-of-text token, id 49407; SD 2.x with `!`, id 0), longer ones are cut.

# %%
# NBVAL_CHECK_OUTPUT
padded = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                   truncation=True, return_tensors="pt")
print("input_ids:", tuple(padded.input_ids.shape), "| first 12:", padded.input_ids[0, :12].tolist())

# %% [markdown]
# What happens to a prompt that is too long? The tokenizer keeps the start token, the first 75
# tokens of the prompt and the end token, and drops the rest without a word (the pipeline
# logs a warning when it does this):

# %%
# NBVAL_CHECK_OUTPUT
long_prompt = ", ".join(sdc.world.caption(c, "circle", "blue") for c in
                        ["red", "green", "yellow", "purple", "orange", "white", "black", "red"] * 2)
n_tokens = len(tokenizer(long_prompt, truncation=True, max_length=1000).input_ids)  # no 77 limit
kept = tokenizer(long_prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
print(f"{n_tokens} tokens, {len(kept)} kept")
print("the encoder sees up to: ...", tokenizer.decode(kept[-8:-1]))

# %% [markdown]
# ## 2. The text encoder
# The CLIP text encoder turns the 77 ids into 77 vectors. Its width is what the UNet's
# cross-attention expects (`cross_attention_dim`).

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    hidden = text_encoder(padded.input_ids.to(device))[0]
print("encoder_hidden_states:", tuple(hidden.shape))
print("text encoder width:", text_encoder.config.hidden_size,
      "| UNet cross_attention_dim:", unet.config.cross_attention_dim)
print("SD 1.x: (1, 77, 768)   SD 2.x: (1, 77, 1024)")

# %% [markdown]
# ## 3. Cross-attention, captured
# Inside the UNet, every transformer block (a `BasicTransformerBlock`, inside each
# `Transformer2DModel`) has two attention layers: `attn1` (the
# picture attends to itself) and `attn2`, **cross-attention**: each latent position (a query)
# attends to the 77 token vectors (keys and values). The attention weights say how much each
# position listens to each token.
#
# diffusers lets us swap an attention layer's *processor*. This one computes attention the
# textbook way — softmax(QKᵀ/√d)·V — and keeps the weights:


# %%
# NBVAL_CHECK_OUTPUT
class StoreCrossAttention:
    """An attention processor that computes attention explicitly and stores the weights."""

    def __init__(self, store: list):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (batch*heads, positions, d)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (batch*heads, 77, d)
        value = attn.head_to_batch_dim(attn.to_v(context))
        weights = attn.get_attention_scores(query, key, attention_mask)  # softmax(QKᵀ/√d)
        self.store.append(weights.detach().reshape(-1, attn.heads, *weights.shape[1:]))
        out = attn.batch_to_head_dim(torch.bmm(weights, value))
        return attn.to_out[1](attn.to_out[0](out))  # output projection, dropout


maps: list = []
default_processors = unet.attn_processors


def capture_cross_attention(on: bool) -> None:
    """Swap our processor into every cross-attention layer (on) or restore the defaults (off)."""
    unet.set_attn_processor({name: StoreCrossAttention(maps) if on and "attn2" in name else proc
                             for name, proc in default_processors.items()})  # (a fresh dict: it is consumed)


capture_cross_attention(True)
print(sum("attn2" in name for name in default_processors), "cross-attention layers captured")

# %% [markdown]
# First, a check that our processor computes the same thing as the default one (which uses
# PyTorch's fused `scaled_dot_product_attention`):

# %%
# NBVAL_CHECK_OUTPUT
probe = torch.randn(2, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size,
                    generator=torch.Generator().manual_seed(0)).to(device, unet.dtype)
context = hidden.expand(2, -1, -1)
with torch.no_grad():
    ours = unet(probe, 500, encoder_hidden_states=context).sample
    capture_cross_attention(False)
    theirs = unet(probe, 500, encoder_hidden_states=context).sample
# the largest difference, relative to the largest output: half precision rounds at ~1e-3
tolerance = 1e-3 if unet.dtype == torch.float32 else 2e-2
difference = ((ours - theirs).abs().max() / theirs.abs().max()).item()
print("same output as the default processor:", difference <= tolerance)

# %% [markdown]
# Now generate an image while storing every cross-attention map of every step.

# %%
# NBVAL_CHECK_OUTPUT
capture_cross_attention(True)
maps.clear()
image = pipe(prompt, num_inference_steps=25, guidance_scale=7.5,
             generator=sdc.make_generator(0)).images[0]
capture_cross_attention(False)
print(len(maps), "maps stored; shapes:", sorted({tuple(m.shape) for m in maps}))

# %% [markdown]
# Each stored map is (batch, heads, positions, 77). The batch holds the unconditional and the
# conditional prediction (classifier-free guidance, notebook 03): we keep the conditional half,
# average the heads, bring every map to the same grid and average layers and steps.


# %%
# NBVAL_CHECK_OUTPUT
def token_heatmaps(maps: list, side: int) -> torch.Tensor:
    """Average cross-attention per token: (77, side, side), from maps of any resolution."""
    total = 0
    for m in maps:
        cond = m[m.shape[0] // 2:].mean(dim=(0, 1))  # (positions, 77)
        res = int(cond.shape[0] ** 0.5)
        grid = cond.T.reshape(77, 1, res, res).float()
        total = total + F.interpolate(grid, size=(side, side), mode="bilinear")[:, 0]
    return total / len(maps)


def minmax_normalize(m: torch.Tensor) -> torch.Tensor:
    """Min-max scale a heatmap to [0, 1]: where a token gets *more* attention shows bright."""
    return (m - m.min()) / (m.max() - m.min() + 1e-12)


heat = token_heatmaps(maps, side=image.size[0]).cpu()
tokens = tokenizer.convert_ids_to_tokens(ids)
words = [(i, t.replace("</w>", "")) for i, t in enumerate(tokens) if 0 < i < len(ids) - 1]
print("heatmaps:", tuple(heat.shape), "(token, height, width)")
sdc.show_images([image] + [minmax_normalize(heat[i]) for i, _ in words]
                + [minmax_normalize(heat[len(ids):].mean(0))],
                titles=["image"] + [w for _, w in words] + ["padding"], cols=len(words) + 2, size=1.6);

# %% [markdown]
# ## 4. Measure: which tokens does the object attend to?
# If cross-attention ties a token to a place, the positions of that place give the token more
# attention than the rest of the picture does. We ask for objects on a **white background**
# ("a red circle on a white background"; on a real model apples, cars, cups and chairs), so
# the object is every pixel that is clearly not white — no model needed to find it. Per token
# position we compute *the token's attention share on the object ÷ the object's share of the
# picture* (1 = no preference; above 1 = the object's positions attend to the token more than
# the background's do), averaged over the pictures.

# %%
import random


def object_mask(image) -> torch.Tensor:
    """1 where a pixel is clearly not white (some channel below 175 of 255), else 0."""
    rgb = np.asarray(image.convert("RGB"))
    return torch.from_numpy(rgb.min(axis=2) < 175).float()


colours = [c for c in sdc.world.COLORS if c != "white"]
things = list(sdc.world.SHAPES) if on_mini else ["apple", "car", "cup", "chair"]
rng = random.Random(100)
prompts = [sdc.world.caption(rng.choice(colours), rng.choice(things), "white")  # "a|an <colour> ..."
           for _ in range(16 if on_mini else 8)]
names = ["<start>", "a|an", "<colour>", "<object>", "on", "a", "white", "background", "<end>"]
assert all(len(tokenizer(p).input_ids) == len(names) for p in prompts)  # one token per word

capture_cross_attention(True)
ratios = []
for i, p in enumerate(prompts):
    maps.clear()
    img = pipe(p, num_inference_steps=25, generator=sdc.make_generator(i)).images[0]
    mask = object_mask(img)
    if not 0 < mask.mean() < 0.9:  # no object drawn, or no white left: nothing to compare
        continue
    h = token_heatmaps(maps, side=img.size[0]).cpu()  # (77, H, W)
    share = (h * mask).sum(dim=(1, 2)) / h.sum(dim=(1, 2))
    ratios.append(share / mask.mean())
capture_cross_attention(False)
if not ratios:
    raise RuntimeError("no picture showed an object on white to measure: try other seeds (the "
                       "generator arguments above) or other colours and objects")
mean_ratio = torch.stack(ratios).mean(0)
print(f"measured on {len(ratios)} of {len(prompts)} pictures, e.g. {prompts[0]!r}")
for pos, name in enumerate(names):
    print(f"{pos:>2} {name:<12} {mean_ratio[pos]:.2f}")
print(f"padding (positions 9-76): {mean_ratio[9:].mean():.2f}")

# %% [markdown]
# Read the table:
# - The **colour word** is looked at more from the object than from the background (ratio
#   above 1): it lights up the object. The word just before it, "a" (or "an"), sits at 1.00
#   like the start token: the same place in every prompt, but its vector has seen nothing of
#   what the picture shows. That pair is the contrast to watch. One picture's heatmaps, as
#   above, are noisy (there its map is diffuse); the check below counts in how many of the
#   pictures the colour word beats 1 and beats the word before it.
# - So does every word after it, most of them more strongly (the object word, "on", "a" and
#   "background").
#   CLIP's text encoder is causal — in Stable Diffusion too — so each position's vector sums
#   up the prompt *up to that word*:
#   "on" and "a", after "red circle", also carry "red circle". A token's map shows where its
#   position is read, not only where its own word matters: so the colour word is the first
#   token that lights up the object, not the only one.
# - One picture can disagree with the average. In section 3's picture (a blue background)
#   "blue" lit up the object and "background" the border around it; on these white
#   backgrounds the object reads "background" more than the white does (1.42). The later
#   words' vectors all carry the prompt so far, and where they are read changes from prompt
#   to prompt: that is why we average over pictures, and rest the lesson on the colour word.
# - The start token is the same vector for every prompt — it knows nothing of the picture —
#   and sits at 1: the baseline to compare with. The padding is below 1, but that is no
#   separate finding: each position's attention adds up to 1 over the 77 tokens, so positions
#   that give more to the words give less to the rest.
#
# On a real model the same cells measure apples, cars, cups and chairs: the numbers differ;
# the lesson is whether the colour word stays above 1, picture after picture.

# %%
# NBVAL_CHECK_OUTPUT
colour_ratio = torch.stack(ratios)[:, 2]  # per picture: the colour word's ratio
before_ratio = torch.stack(ratios)[:, 1]  # and the word before it, "a" or "an"
above_one = int((colour_ratio > 1).sum())
above_before = int((colour_ratio > before_ratio).sum())
print(f"the colour word lights up the object (ratio > 1) in {above_one} of {len(ratios)} pictures")
print(f"it gets more of the object's attention than the word before it does in {above_before} of {len(ratios)}")
print("in at least 80% of the pictures, both:", min(above_one, above_before) >= 0.8 * len(ratios))

# %% [markdown]
# ## Exercises
# 1. Where in the picture do the image's positions attend to the shape word? Draw "a red
#    triangle on a blue background" and "a red square on a blue background" and plot the
#    heatmap of the token "triangle" (and "square") for each, as in section 3. (No
#    self-check: the plots are the answer.)
# 2. Write a prompt of your own, count how many tokens it takes (with the tokenizer, start and
#    end tokens included, before padding) and check that it fits in 77.

# %%
# exercise 1, your code: capture_cross_attention(True), maps.clear(), pipe(...), then
# token_heatmaps(maps, side=image.size[0]) and the shape word's position in
# tokenizer(prompt).input_ids


# %%
my_prompt = "a small orange triangle on a white background, flat colours, centred"  # or yours
my_tokens = None  # your answer: how many tokens does your prompt take, start and end included?


# %%
# NBVAL_CHECK_OUTPUT
# Self-check for exercise 2
def check_exercise_2() -> str:
    if my_tokens is None:
        raise NotImplementedError
    assert my_tokens == len(tokenizer(my_prompt).input_ids), "count the words' tokens (some words take two), and two more"
    assert my_tokens <= tokenizer.model_max_length, "too long: the end of the prompt would be cut"
    return f"{my_tokens} tokens: fits in {tokenizer.model_max_length}"


passed = sdc.self_check(check_exercise_2, "exercise 2")

# %% [markdown]
# **A solution** (try it yourself first):

# %%
# NBVAL_CHECK_OUTPUT
my_tokens = len(tokenizer(my_prompt).input_ids)  # unpadded: start + the words' tokens + end
assert sdc.self_check(check_exercise_2, "exercise 2")
