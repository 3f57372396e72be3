"""Hugging Face integration: Auto classes, remote code in a fresh process, strict loading, plain Trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from modeling_fli2moe import FLI2MoEModel
from modeling_fli2moe.testing.models import random_inputs, tiny_config


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = FLI2MoEModel(tiny_config(id2label={0: "neg", 1: "neu", 2: "pos"})).eval()
    model.set_modality_means({"text": torch.randn(12), "image": torch.randn(20)})
    feats, masks = random_inputs(model.config, batch_size=3, generator=torch.Generator().manual_seed(3))
    model.save_pretrained(tmp_path / "ckpt")
    torch.save({"features": feats, "masks": masks}, tmp_path / "inputs.pt")
    return model, tmp_path, feats, masks


def test_save_pretrained_writes_remote_code_and_auto_map(saved):
    _, tmp, _, _ = saved
    files = set(os.listdir(tmp / "ckpt"))
    assert {"config.json", "model.safetensors", "configuration_fli2moe.py", "modeling_fli2moe.py"} <= files
    cfg = json.loads((tmp / "ckpt" / "config.json").read_text())
    assert cfg["auto_map"] == {
        "AutoConfig": "configuration_fli2moe.FLI2MoEConfig",
        "AutoModel": "modeling_fli2moe.FLI2MoEModel",
    }
    assert cfg["model_type"] == "fl_i2moe"
    # the remote-code files import only torch, transformers and each other
    for name in ("configuration_fli2moe.py", "modeling_fli2moe.py"):
        for line in (tmp / "ckpt" / name).read_text().splitlines():
            if line.startswith(("import ", "from ")):
                module = line.split()[1]
                assert module.split(".")[0] in {"torch", "transformers", "__future__", "logging", "math", "copy",
                                                "typing", "collections", "dataclasses", "warnings", "operator", ""}, line


def test_remote_code_in_a_fresh_process_without_the_package(saved):
    """Without the package, a checkpoint's own two code files run the plain implementation: the logits of the
    package's fast paths within float rounding, in fp32 and under bf16 autocast."""
    model, tmp, feats, masks = saved
    with torch.no_grad():
        expected = model(feats, masks).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected_bf16 = model(feats, masks).logits.float()
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "modeling_fli2moe" or name.startswith("modeling_fli2moe."):
                    raise ImportError("package blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        import torch
        from transformers import AutoModel
        try:
            import modeling_fli2moe  # noqa
            raise SystemExit("the package must not be importable here")
        except ImportError:
            pass
        model = AutoModel.from_pretrained({str(tmp / 'ckpt')!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load({str(tmp / 'inputs.pt')!r})
        with torch.no_grad():
            fp32 = model(inputs["features"], inputs["masks"]).logits
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = model(inputs["features"], inputs["masks"]).logits.float()
        torch.save({{"fp32": fp32, "bf16": bf16}}, {str(tmp / 'remote_logits.pt')!r})
        print(model.config.id2label)
        """
    )
    env = dict(os.environ, PYTHONPATH="", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(tmp / "remote_logits.pt")
    torch.testing.assert_close(remote["fp32"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(remote["bf16"], expected_bf16, atol=3e-2, rtol=3e-2)
    assert not torch.equal(remote["fp32"], torch.zeros_like(remote["fp32"]))


def test_remote_code_is_two_small_files(saved):
    """What a `trust_remote_code` user downloads: the config file and the model file, 700 lines together."""
    _, tmp, _, _ = saved
    code = sorted(p.name for p in (tmp / "ckpt").glob("*.py"))
    assert code == ["configuration_fli2moe.py", "modeling_fli2moe.py"]
    lines = sum(len((tmp / "ckpt" / name).read_text().splitlines()) for name in code)
    assert lines <= 700, lines


def test_auto_classes_with_the_package_imported(saved):
    model, tmp, feats, masks = saved
    config = AutoConfig.from_pretrained(tmp / "ckpt")
    assert config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    loaded = AutoModel.from_pretrained(tmp / "ckpt").eval()
    assert isinstance(loaded, FLI2MoEModel)
    assert torch.equal(loaded(feats, masks).logits, model(feats, masks).logits)
    torch.testing.assert_close(loaded.get_modality_means()["image"], model.get_modality_means()["image"])


@pytest.mark.parametrize("edit", ["missing", "extra"])
def test_loading_is_strict(saved, edit):
    _, tmp, _, _ = saved
    path = tmp / "ckpt" / "model.safetensors"
    tensors = load_file(path)
    if edit == "missing":
        tensors.pop("router.mlp.0.weight")
    else:
        tensors["experts.extra_tensor"] = torch.zeros(3)
    save_file(tensors, path, metadata={"format": "pt"})
    (tmp / "ckpt" / "checksums.json").unlink(missing_ok=True)  # edited by hand: no recorded checksum to refuse it
    key = "router.mlp.0.weight" if edit == "missing" else "experts.extra_tensor"
    with pytest.raises(ValueError, match=rf"does not match its config.*{key}.*strict=False"):
        AutoModel.from_pretrained(tmp / "ckpt")
    loaded = FLI2MoEModel.from_pretrained(tmp / "ckpt", strict=False)
    assert isinstance(loaded, FLI2MoEModel)


def test_checkpoint_with_another_shape_is_refused(saved):
    _, tmp, _, _ = saved
    cfg = json.loads((tmp / "ckpt" / "config.json").read_text())
    cfg["hidden_size"] = 32
    (tmp / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((ValueError, RuntimeError), match=r"(?i)size|shape|mismatch"):
        AutoModel.from_pretrained(tmp / "ckpt")


def test_a_checkpoint_written_before_the_remote_code_split_loads_with_the_same_logits():
    """`tests/data/checkpoint_921e1de`: a tiny checkpoint saved by the package at commit 921e1de (three remote-code
    files, the kernels inside the model file; the code files are left out here), with its inputs and outputs."""
    from pathlib import Path

    data = Path(__file__).parent / "data"
    saved = torch.load(data / "checkpoint_921e1de_outputs.pt")
    model = FLI2MoEModel.from_pretrained(data / "checkpoint_921e1de").eval()
    with torch.no_grad():
        out = model(saved["features"], saved["masks"])
    # the same weights and the same arithmetic up to float32 round-off (inference no longer pads these 12 tokens to
    # 16, which changes the order of the sums in the attention)
    torch.testing.assert_close(out.logits, saved["logits"], atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(out.expert_logits, saved["expert_logits"], atol=1e-7, rtol=1e-6)
