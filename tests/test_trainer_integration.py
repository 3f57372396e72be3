"""A plain `transformers.Trainer` trains FL-I2MoE on an in-memory `datasets.Dataset`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from modeling_fli2moe import FLI2MoEModel
from modeling_fli2moe.testing.models import tiny_config


def _random_dataset(n: int, seed: int) -> Dataset:
    """Label = which of two planted directions the text tokens' mean points to (learnable)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    text = rng.normal(size=(n, 6, 12)).astype(np.float32)
    text[:, :, 0] += np.where(labels == 1, 2.5, -2.5)[:, None]
    image = rng.normal(size=(n, 4, 20)).astype(np.float32)
    return Dataset.from_dict({"text": text.tolist(), "image": image.tolist(), "label": labels.tolist()})


def _collate(rows: list[dict]) -> dict:
    return {
        "features": {m: torch.tensor([r[m] for r in rows], dtype=torch.float32) for m in ("text", "image")},
        "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
    }


@pytest.mark.parametrize("mixture", ["interaction", "dense"])
def test_plain_trainer_reduces_the_loss(tmp_path, mixture):
    torch.manual_seed(0)
    model = FLI2MoEModel(tiny_config(num_labels=2, mixture=mixture, dropout=0.1))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        num_train_epochs=8,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_random_dataset(96, 0), eval_dataset=_random_dataset(32, 1),
                      data_collator=_collate)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"])
    pred = trainer.predict(_random_dataset(16, 2))
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    assert logits.shape == (16, 2)
