"""The LoRA where people use it: the kohya file and the model card that train_lora writes beside
the diffusers file, read back by diffusers' own loader (which reads kohya files through its own
converter), on the tiny model and on Stable Diffusion 1.5's architecture (random weights)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig
from safetensors import safe_open

from bench.train_throughput import build_pipe
from stages.common import paths
from stages.common.params import TrainLoraParams
from stages.models.diffusion import tokenize
from stages.models.export import kohya_metadata, kohya_state_dict, save_kohya, trigger_phrase
from stages.models.lora import lora_state, save_lora
from stages.train_lora import TEXT_ENCODER_TARGETS
from tests.conftest import TINY, TINY_PIPELINE_SCRIPT, Workdir

KOHYA_KEY = re.compile(r"lora_(unet|te)_([a-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)")
# The diffusers module names that AUTOMATIC1111 maps to its own (LDM) names for SD 1.x
# (extensions-builtin/Lora: convert_diffusers_name_to_compvis).
A1111_UNET = re.compile(
    r"(down_blocks_[0-3]_attentions_[0-1]|mid_block_attentions_0|up_blocks_[1-3]_attentions_[0-2])"
    r"_transformer_blocks_0_attn[12]_(to_q|to_k|to_v|to_out_0)"
)
A1111_TEXT = re.compile(r"text_model_encoder_layers_\d+_self_attn_(q_proj|k_proj|v_proj|out_proj)")


def read_kohya(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, file.metadata()  # noqa: SIM118


def modules(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{kohya module name: {"lora_down.weight": ..., "lora_up.weight": ..., "alpha": ...}}"""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = KOHYA_KEY.fullmatch(key)
        assert match, f"{key} is not a kohya LoRA key"
        grouped.setdefault(key.split(".", 1)[0], {})[match.group(3)] = tensor
    return grouped


# ----- what the stage writes -------------------------------------------------------------------
def test_train_lora_writes_the_kohya_file_and_a_model_card_beside_the_diffusers_file(
    pipeline_run: Workdir,
):
    out = pipeline_run.path / paths.LORA
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [paths.LORA_WEIGHTS, paths.LORA_KOHYA, paths.LORA_CARD, paths.LORA_SAMPLES, "params.json"]
    )
    tensors, metadata = read_kohya(out / paths.LORA_KOHYA)
    grouped = modules(tensors)
    train = TINY["train_lora"]
    rank = TrainLoraParams().rank
    for name, parts in grouped.items():
        assert name.startswith("lora_unet_"), name  # the text encoder was not trained
        assert parts.keys() == {"lora_down.weight", "lora_up.weight", "alpha"}, name
        assert parts["lora_down.weight"].shape[0] == rank == parts["lora_up.weight"].shape[1]
        assert parts["alpha"].shape == () and float(parts["alpha"]) == TrainLoraParams().alpha
    # as many modules as the diffusers file has LoRA layers
    diffusers_file = read_kohya(out / paths.LORA_WEIGHTS)[0]
    assert len(grouped) == sum(".lora.down." in key for key in diffusers_file)

    saved = json.loads((out / "params.json").read_text())
    card = (out / paths.LORA_CARD).read_text()
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == str(rank)
    assert metadata["ss_network_alpha"] == str(TrainLoraParams().alpha)
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["ss_max_train_steps"] == str(train["max_steps"])
    assert metadata["ss_learning_rate"] == str(saved["train_lora"]["learning_rate"])
    assert metadata["ss_resolution"] == "(32, 32)"
    assert metadata["ss_seed"] == "42"
    assert metadata["ss_num_train_images"] == str(saved["training_images"])
    assert metadata["modelspec.trigger_phrase"] == "a pkmnlora pokemon"
    assert metadata["ss_sd_model_name"] == "pokemon-lora tiny (shipped)"
    assert metadata["ss_sd_model_fingerprint"] == saved["base_model"]["fingerprint"]
    assert f"fingerprint `{saved['base_model']['fingerprint']}`" in card
    assert re.fullmatch(r"[0-9a-f]{64}", metadata["ss_dataset_sha256"])
    assert json.loads(metadata["ss_tag_frequency"]) == {
        "lora_dataset": {"a pkmnlora pokemon": saved["training_images"]}
    }

    front = yaml.safe_load(card.split("---\n")[1])
    assert front["instance_prompt"] == "a pkmnlora pokemon"
    assert front["library_name"] == "diffusers" and "lora" in front["tags"]
    assert "base_model" not in front  # the shipped tiny model is no hub id
    samples = [entry["output"]["url"] for entry in front["widget"]]
    assert samples == [f"images/sample-{seed}.png" for seed in range(4)]
    for sample in samples:
        assert (out / sample).is_file() and f"]({sample})" in card
    assert "<lora:pokemon_lora:1> a pkmnlora pokemon" in card
    assert f'weight_name="{paths.LORA_WEIGHTS}"' in card


ROUND_TRIP = (
    TINY_PIPELINE_SCRIPT
    + """
base = draw(4)
images = {}
for name in ("pytorch_lora_weights.safetensors", "pokemon_lora.safetensors"):
    pipe.load_lora_weights("outputs/lora", weight_name=name)
    images[name] = draw(4)
    pipe.unload_lora_weights()
diffusers, kohya = images.values()
print(json.dumps({"lora": float((diffusers - base).abs().max()),
                  "kohya_vs_diffusers": float((kohya - diffusers).abs().max())}))
"""
)


def test_the_kohya_file_draws_what_the_diffusers_file_draws(pipeline_run: Workdir):
    """diffusers' own loader reads the kohya file (through its kohya converter) into a fresh
    pipeline in a fresh process: the same images as the diffusers file, within 1e-4."""
    figures = pipeline_run.script(ROUND_TRIP)
    print(figures)
    assert figures["lora"] > 1e-3  # the LoRA changes the images
    assert figures["kohya_vs_diffusers"] < 1e-4


# ----- both files against the trained model, alpha != rank, text encoder too -----------------
def round_trip(pipe, folder: Path, rank: int, alpha: float) -> dict[str, float]:
    """Put random LoRAs (rank, alpha) on the UNet's attention and the text encoder, write both
    files as train_lora does, load each into the bare model with load_lora_weights: the largest
    difference of the UNet's output from the trained model's, per file."""
    unet, text_encoder = pipe.unet, pipe.text_encoder
    torch.manual_seed(1)
    config = {"r": rank, "lora_alpha": alpha, "init_lora_weights": False}
    unet.add_adapter(LoraConfig(**config, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    text_encoder.add_adapter(LoraConfig(**config, target_modules=TEXT_ENCODER_TARGETS))
    latents = torch.randn(
        1, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(2)
    )
    ids = tokenize(pipe.tokenizer, ["a pkmnlora pokemon"])

    @torch.inference_mode()
    def output() -> torch.Tensor:
        hidden = pipe.text_encoder(ids)[0]
        return pipe.unet(latents, 500, encoder_hidden_states=hidden).sample

    trained = output()
    save_lora(folder, unet, text_encoder)
    train = TrainLoraParams(rank=rank, alpha=alpha, train_text_encoder=True).model_dump()
    metadata = kohya_metadata(train, 0, {"kind": "tiny", "fingerprint": "0"}, ["x"] * 3, 64, "0")
    weights = kohya_state_dict(lora_state(unet), lora_state(text_encoder), alpha)
    save_kohya(folder, weights, metadata)
    unet.delete_adapters("default")
    text_encoder.delete_adapter("default")
    bare = output()
    differences = {"trained vs bare": float((trained - bare).abs().max())}
    for name in (paths.LORA_WEIGHTS, paths.LORA_KOHYA):
        pipe.load_lora_weights(str(folder), weight_name=name)
        differences[name] = float((output() - trained).abs().max())
        pipe.unload_lora_weights()
    assert float((output() - bare).abs().max()) == 0.0  # unloaded exactly
    return differences


def test_both_files_load_as_trained_with_alpha_other_than_rank_on_the_tiny_model(
    pipeline_run: Workdir, tmp_path: Path
):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        pipeline_run.path / paths.TINY_PIPELINE, safety_checker=None, requires_safety_checker=False
    )
    differences = round_trip(pipe, tmp_path, rank=2, alpha=8.0)
    print(differences)
    assert differences["trained vs bare"] > 1e-2
    assert differences[paths.LORA_WEIGHTS] < 1e-5 * max(1.0, differences["trained vs bare"])
    assert differences[paths.LORA_KOHYA] < 1e-5 * max(1.0, differences["trained vs bare"])


@pytest.fixture(scope="module")
def sd15_pipe():
    """Stable Diffusion 1.5's UNet, VAE and text encoder from their published configs
    (bench/sd15), random weights: nothing downloaded."""
    return build_pipe(sd15=True)


def test_on_sd15s_architecture_the_kohya_names_are_a1111s_and_both_files_load_as_trained(
    sd15_pipe, tmp_path: Path
):
    differences = round_trip(sd15_pipe, tmp_path, rank=4, alpha=2.0)
    print(differences)
    assert differences["trained vs bare"] > 1e-2
    for name in (paths.LORA_WEIGHTS, paths.LORA_KOHYA):
        assert differences[name] < 1e-4, (name, differences)
    grouped = modules(read_kohya(tmp_path / paths.LORA_KOHYA)[0])
    unet = [n.removeprefix("lora_unet_") for n in grouped if n.startswith("lora_unet_")]
    text = [n.removeprefix("lora_te_") for n in grouped if n.startswith("lora_te_")]
    assert len(unet) == 16 * 2 * 4  # 16 transformer blocks x (self, cross attention) x q k v out
    assert len(text) == 12 * 4  # 12 CLIP layers x q k v out
    assert all(A1111_UNET.fullmatch(name) for name in unet), unet[:3]
    assert all(A1111_TEXT.fullmatch(name) for name in text), text[:3]
    assert all(float(parts["alpha"]) == 2.0 for parts in grouped.values())


def test_the_trigger_phrase_is_what_every_caption_starts_with():
    assert trigger_phrase(["a pkmnlora pokemon"] * 3) == "a pkmnlora pokemon"
    captions = ["a pkmnlora pokemon named Psyduck", "a pkmnlora pokemon named Golduck"]
    assert trigger_phrase(captions) == "a pkmnlora pokemon named"
    assert trigger_phrase(["pkmnlora Psyduck, water", "pkmnlora Golduck, water"]) == "pkmnlora"
