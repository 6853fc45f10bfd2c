"""The tiny base model's parts: tokenizer, configs and a few steps of pretraining."""

from __future__ import annotations

import numpy as np
import torch

from stages.common.params import TinyModelParams
from stages.models.tiny_model import (
    MAX_TOKENS,
    assemble,
    build_components,
    build_tokenizer,
    caption_for,
    make_corpus,
    pretrain,
    pretrain_unet,
    pretrain_vae,
)


def test_tokenizer_knows_its_words_and_spells_out_the_instance_token():
    tokenizer = build_tokenizer()
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a water type pokemon").input_ids)
    assert tokens == [
        "<|startoftext|>",
        "a</w>",
        "water</w>",
        "type</w>",
        "pokemon</w>",
        "<|endoftext|>",
    ]
    spelled = tokenizer.convert_ids_to_tokens(tokenizer("pkmnlora").input_ids)[1:-1]
    assert "".join(spelled).replace("</w>", "") == "pkmnlora" and len(spelled) == 8
    assert tokenizer.model_max_length == MAX_TOKENS


def test_tokenizer_round_trips_through_save_and_load(tmp_path):
    from transformers import CLIPTokenizer

    build_tokenizer().save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert loaded("a fire pokemon").input_ids == build_tokenizer()("a fire pokemon").input_ids


def test_components_have_stable_diffusion_shapes():
    parts = build_components(seed=0)
    assert parts["vae"].config.latent_channels == 4
    assert 2 ** (len(parts["vae"].config.block_out_channels) - 1) == 4  # 64 px -> 16x16 latents
    assert parts["unet"].config.cross_attention_dim == parts["text_encoder"].config.hidden_size
    unet_params = sum(p.numel() for p in parts["unet"].parameters())
    assert 0.5e6 < unet_params < 3e6
    pipe = assemble(parts)
    assert pipe.vae_scale_factor == 4


def test_components_are_deterministic_by_seed():
    a, b = build_components(seed=3), build_components(seed=3)
    for name in ("unet", "vae", "text_encoder"):
        for (_, x), (_, y) in zip(
            a[name].state_dict().items(), b[name].state_dict().items(), strict=True
        ):
            assert torch.equal(x, y)


def test_captions_name_the_type_or_a_made_up_word():
    rng = np.random.default_rng(0)
    captions = [caption_for(2, rng) for _ in range(400)]  # Water
    assert sum("water" in c for c in captions) > 250
    assert all(c.startswith("a ") and c.endswith(" pokemon") for c in captions)
    made_up = [c for c in captions if "water" not in c and c != "a pokemon"]
    assert len(made_up) > 20


def test_a_few_pretraining_steps_reduce_the_loss():
    parts = build_components(seed=0)
    corpus = make_corpus(36, 64, seed=0)
    assert corpus.images.shape == (36, 3, 64, 64) and corpus.images.min() >= -1
    first = pretrain_vae(parts["vae"], corpus, 1, 4, 1e-3, 0)["vae_loss"]
    later = pretrain_vae(parts["vae"], corpus, 25, 4, 1e-3, 0)["vae_loss"]
    assert later < first
    stats = pretrain_unet(parts, corpus, 3, 4, 1e-3, 0)
    assert stats["unet_steps"] == 3 and np.isfinite(stats["unet_loss"])
    assert parts["vae"].config.scaling_factor == stats["scaling_factor"]


def weights(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{name}": tensor.clone()
        for part in ("unet", "vae", "text_encoder")
        for name, tensor in getattr(pipe, part).state_dict().items()
    }


def test_pretraining_is_decided_by_its_step_counts_not_the_clock():
    """Two runs of one recipe give the same weights bit for bit, and every step is run (the
    old time budget stopped early on a busy machine and wrote a different model)."""
    recipe = TinyModelParams(
        corpus_size=18,
        vae_steps=2,
        unet_steps=3,
        vae_batch_size=2,
        unet_batch_size=2,
        ema_decay=0.9,
    )
    first, stats = pretrain(recipe, seed=5)
    second, _ = pretrain(recipe, seed=5)
    assert stats["vae_steps"] == 2 and stats["unet_steps"] == 3
    one, two = weights(first), weights(second)
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    third, _ = pretrain(recipe.model_copy(update={"unet_steps": 4}), seed=5)
    assert not torch.equal(weights(third)["unet.conv_in.weight"], one["unet.conv_in.weight"])


def test_ema_keeps_an_average_of_the_trained_weights():
    """With ema_decay the UNet kept is not the last step's: the same run without it differs."""
    corpus = make_corpus(8, 64, seed=0)
    kept = {}
    for decay in (0.0, 0.9):
        parts = build_components(seed=0)
        pretrain_unet(parts, corpus, 4, 2, 1e-3, 0, ema_decay=decay)
        kept[decay] = parts["unet"].conv_in.weight.detach().clone()
    assert not torch.equal(kept[0.0], kept[0.9])
