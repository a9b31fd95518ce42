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
# about 2 minutes (download included).

# %%
# On Google Colab, install the course first: run the first code cell of 00_setup.ipynb.
import numpy as np
import torch
import torch.nn.functional as F

import sdcourse as sdc

device = sdc.pick_device()
pipe = sdc.load_pipeline("text2img", device=device)
on_mini = sdc.choose_model("text2img", device=device).kind == "mini"
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
# The text encoder always sees 77 positions: shorter prompts are padded (SD 1.x pads with the
# end-of-text token, id 49407), longer ones are cut.

# %%
# NBVAL_CHECK_OUTPUT
padded = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                   truncation=True, return_tensors="pt")
print("input_ids:", tuple(padded.input_ids.shape), "| first 12:", padded.input_ids[0, :12].tolist())

# %% [markdown]
# What happens to a prompt that is too long? Everything after token 77 is silently dropped
# (the pipeline warns you when it does this):

# %%
# NBVAL_CHECK_OUTPUT
long_prompt = ", ".join(f"a {c} circle on a blue background" for c in
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
# Inside the UNet, every `Transformer2DModel` block has two attention layers: `attn1` (the
# picture attends to itself) and `attn2`, **cross-attention**: each latent position (a query)
# attends to the 77 token vectors (keys and values). The attention weights say how much each
# position listens to each token.
#
# diffusers lets us swap an attention layer's *processor*. This one computes attention the
# textbook way — softmax(QKᵀ/√d)·V — and keeps the weights:


# %%
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
print("same output as the default processor:", torch.allclose(ours, theirs, atol=1e-3))

# %% [markdown]
# Now generate an image while storing every cross-attention map of every step.

# %%
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
def token_heatmaps(maps: list, side: int) -> torch.Tensor:
    """Average cross-attention per token: (77, side, side), from maps of any resolution."""
    total = 0
    for m in maps:
        cond = m[m.shape[0] // 2:].mean(dim=(0, 1))  # (positions, 77)
        res = int(cond.shape[0] ** 0.5)
        grid = cond.T.reshape(77, 1, res, res).float()
        total = total + F.interpolate(grid, size=(side, side), mode="bilinear")[:, 0]
    return total / len(maps)


heat = token_heatmaps(maps, side=image.size[0]).cpu()
tokens = tokenizer.convert_ids_to_tokens(ids)
words = [(i, t.replace("</w>", "")) for i, t in enumerate(tokens) if 0 < i < len(ids) - 1]
sdc.show_images([image] + [heat[i] / heat[i].max() for i, _ in words],
                titles=["image"] + [w for _, w in words], cols=len(words) + 1, size=1.6);

# %% [markdown]
# ## 4. Measure: which tokens look at the object?
# If cross-attention ties a token to a place, that token puts more of its attention on the
# object than the object's share of the picture. For 16 prompts we find the object with the
# evaluator and compute, per token position, *attention share on the object ÷ object area*
# (1 = no preference; above 1 = the token looks at the object).

# %%
import random

from sdcourse.evaluate import read_image
from sdcourse.world import random_scene

capture_cross_attention(True)
ratios = []
for i in range(16):
    scene = random_scene(random.Random(100 + i))
    maps.clear()
    img = pipe(scene.caption, num_inference_steps=25, generator=sdc.make_generator(i)).images[0]
    mask = torch.from_numpy(read_image(img).mask).float()
    if mask.sum() == 0:
        continue
    h = token_heatmaps(maps, side=img.size[0]).cpu()  # (77, H, W)
    share = (h * mask).sum(dim=(1, 2)) / h.sum(dim=(1, 2))
    ratios.append(share / mask.mean())
capture_cross_attention(False)
mean_ratio = torch.stack(ratios).mean(0)
names = ["<start>", "a", "<colour>", "<shape>", "on", "a", "<bg colour>", "background", "<end>"]
for pos, name in enumerate(names):
    print(f"{pos:>2} {name:<12} {mean_ratio[pos]:.2f}")
print(f"padding (positions 9-76): {mean_ratio[9:].mean():.2f}")

# %% [markdown]
# Read the table: a ratio well above 1 marks the tokens whose keys the object's positions
# match. In Stable Diffusion the object's noun and its adjectives light up (the basis of
# prompt-to-prompt editing). In the mini model the text encoder is causal (each token sees
# only the words before it), so the *later* positions — the shape word, the end-of-text and
# padding tokens — carry the whole description, and that is where the UNet tends to look.

# %%
# NBVAL_CHECK_OUTPUT
print("measured on", len(ratios), "pictures; every token's ratio computed:", tuple(mean_ratio.shape))

# %% [markdown]
# ## Exercises
# 1. Which token does the shape word ("circle") attend to most? Plot its heatmap for a
#    triangle and for a square.
# 2. Count the tokens of a prompt of your own and check it fits in 77 (self-check below).

# %%
my_prompt = "a small orange triangle on a white background, flat colours, centred"
my_tokens = len(tokenizer(my_prompt).input_ids)

# %%
# Self-check for exercise 2
assert my_tokens == len(tokenizer.tokenize(my_prompt)) + 2, "remember the start and end tokens"
assert my_tokens <= tokenizer.model_max_length, "too long: the end of the prompt would be cut"
print(f"✓ {my_tokens} tokens: fits in {tokenizer.model_max_length}")
