"""The `fli2moe` command line: `demo` (the README's main job)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _demo(args: argparse.Namespace) -> int:
    """Smoke run: train a tiny FL-I2MoE on random features for a few steps and save a checkpoint."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from . import FLI2MoEModel
    from .testing.models import tiny_config

    rng = np.random.default_rng(args.seed)
    n = 256
    labels = rng.integers(0, 2, size=n)
    text = rng.normal(size=(n, 8, 12)).astype(np.float32)
    text[:, :, 0] += np.where(labels == 1, 2.0, -2.0)[:, None]
    image = rng.normal(size=(n, 6, 20)).astype(np.float32)
    data = Dataset.from_dict({"text": text.tolist(), "image": image.tolist(), "label": labels.tolist()})

    def collate(rows):
        return {
            "features": {m: torch.tensor([r[m] for r in rows]) for m in ("text", "image")},
            "labels": torch.tensor([r["label"] for r in rows]),
        }

    torch.manual_seed(args.seed)
    model = FLI2MoEModel(tiny_config(num_labels=2, id2label={0: "negative", 1: "positive"}))
    out = Path(args.output_dir)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(out),
            per_device_train_batch_size=32,
            num_train_epochs=3,
            learning_rate=5e-3,
            logging_steps=4,
            save_strategy="no",
            report_to=[],
            remove_unused_columns=False,
            use_cpu=True,
            seed=args.seed,
        ),
        train_dataset=data,
        data_collator=collate,
    )
    result = trainer.train()
    trainer.save_model(str(out / "checkpoint"))
    print(f"smoke run: train loss {result.training_loss:.4f}; checkpoint saved to {out / 'checkpoint'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fli2moe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the README's main job on the embedded offline default")
    demo.add_argument("--output-dir", default="outputs/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
