"""Model cards and pushing checkpoints to the Hugging Face Hub (with huggingface_hub)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

logger = logging.getLogger(__name__)

CITATIONS = """```bibtex
@article{kim2026flinteractions,
  title   = {Feature-level Interaction Explanations in Multimodal Transformers},
  author  = {Kim and Babiker and Kim and Goebel},
  journal = {arXiv preprint arXiv:2603.13326},
  year    = {2026}
}

@inproceedings{xin2025i2moe,
  title     = {I2MoE: Interpretable Multimodal Interaction-aware Mixture-of-Experts},
  author    = {Xin and others},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2025}
}
```"""

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

An **FL-I2MoE** classifier: a feature-level, interaction-aware mixture-of-experts layer over frozen
pretrained encoders ({{ encoders }}). {{ experts_text }}

## Usage

```python
from transformers import AutoModel
from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor  # pip install fl-i2moe

model = AutoModel.from_pretrained("{{ repo_id }}", trust_remote_code=True)
processor = FLI2MoEProcessor.from_pretrained("{{ repo_id }}")  # rebuilds the frozen encoders
inputs = processor({{ example_inputs }})
out = model(inputs["features"], inputs["attention_mask"])
out.logits, out.expert_logits, out.expert_weights

# explain one example: expert-wise attributions, synergistic and redundant cross-modal token pairs
from modeling_fli2moe.explain import Explainer
explanation = Explainer(model, processor).explain(inputs={{ example_inputs }})
print(explanation.summary())
```

## Training data and procedure

Dataset: **{{ dataset_name }}**. Features come from the frozen encoders above, computed once and cached.
The model was trained with `transformers.Trainer`; the loss is the task loss plus
{{ interaction_weight }} x the mean of the experts' interaction losses (each expert is run on the clean
input and with each modality knocked out, replacement `{{ replacement }}`).

{{ training_table }}

## Evaluation

Test-split metrics:

{{ metrics_table }}

## Limitations

- The encoders are frozen; the explanations are about how this layer combines their tokens, not about
  the encoders themselves.
- Shapley interaction values are Monte Carlo estimates: read them with their standard errors.
- The redundancy gap is this project's definition (the FL-I2MoE paper names the score without a formula).
- Predictions on data unlike the training set are not calibrated.

## Citation

{{ citations }}
"""


def _as_dict(config: Any) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _table(rows: dict[str, Any], header: tuple[str, str]) -> str:
    if not rows:
        return "_none recorded_"
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def make_model_card(
    checkpoint_dir: str | os.PathLike | None,
    *,
    config: Any,
    test_metrics: dict[str, Any] | None,
    dataset_name: str,
    repo_id: str | None = None,
    base_models: list[str] | None = None,
    training_args: dict[str, Any] | None = None,
) -> ModelCard:
    """A model card with YAML metadata (library, tags, datasets, base models, model-index) and usage."""
    cfg = _as_dict(config)
    modalities = cfg.get("modalities", [])
    if base_models is None:
        base_models = [m["encoder"]["name_or_path"] for m in modalities
                       if (m.get("encoder") or {}).get("name_or_path")]
    encoders = ", ".join(
        f"{m['name']}: {(m.get('encoder') or {}).get('name_or_path') or (m.get('encoder') or {}).get('type', 'precomputed')}"
        for m in modalities
    )
    names = [m["name"] for m in modalities]
    if cfg.get("mixture", "interaction") == "dense":
        experts_text = "This is the **dense baseline**: one expert, no router, no interaction loss."
    else:
        experts_text = (
            f"It has {len(names) + 2} experts: one **uniqueness** expert per modality ({', '.join(names)}), which "
            "must rely on its own modality; a **synergy** expert, which must change when any modality is removed; "
            "and a **redundancy** expert, which must survive the loss of any one modality. A router weighs them "
            "per example, and the prediction is the weighted sum of the experts' logits."
        )
    metrics = {k.removeprefix("test_"): v for k, v in (test_metrics or {}).items()
               if isinstance(v, (int, float)) and not k.endswith(("runtime", "per_second", "loss", "skipped", "epoch"))}
    repo = repo_id or f"fl-i2moe-{dataset_name}"
    task_type = "text-classification" if cfg.get("problem_type") != "multi_label_classification" else "multi-label-classification"
    eval_results = [
        EvalResult(task_type=task_type, dataset_type=dataset_name, dataset_name=dataset_name, dataset_split="test",
                   metric_type=k, metric_name=k, metric_value=float(v))
        for k, v in metrics.items()
    ]
    data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=["fl-i2moe", "multimodal", "mixture-of-experts", "interpretability", "custom_code"],
        datasets=[dataset_name],
        base_model=base_models or None,
        model_name=repo,
        eval_results=eval_results or None,
        metrics=list(metrics) or None,
    )
    example = ", ".join(f'"{n}": ...' for n in names)
    return ModelCard.from_template(
        data,
        template_str=CARD_TEMPLATE,
        model_name=repo,
        repo_id=repo,
        encoders=encoders,
        experts_text=experts_text,
        example_inputs="{" + example + "}",
        dataset_name=dataset_name,
        interaction_weight=cfg.get("interaction_loss_weight", 0.5),
        replacement=cfg.get("replacement", "noise"),
        training_table=_table(training_args or {}, ("hyper-parameter", "value")),
        metrics_table=_table(metrics, ("metric", "value")),
        citations=CITATIONS,
    )


def write_model_card(checkpoint_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Write the model card as `README.md` in the checkpoint folder."""
    path = Path(checkpoint_dir) / "README.md"
    make_model_card(checkpoint_dir, **kwargs).save(path)
    return path


IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.pt", "optimizer*", "scheduler*", "rng_state*",
                   "trainer_state.json", "training_args.bin"]


def check_checkpoint_dir(checkpoint_dir: str | os.PathLike) -> list[str]:
    """The files a pushable checkpoint needs; a clear error naming what is missing and how to make it."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint folder {root} does not exist; train one with `fli2moe train`")
    required = ["config.json", "model.safetensors", "README.md"]
    if (root / "config.json").is_file():
        auto_map = json.loads((root / "config.json").read_text()).get("auto_map") or {}
        required += sorted({ref.split(".")[0] + ".py" for ref in auto_map.values()})
        if not auto_map:
            raise ValueError(
                f"{root}/config.json has no auto_map, so the checkpoint would not load with trust_remote_code; "
                "re-save it with model.save_pretrained after `import modeling_fli2moe`"
            )
    missing = [f for f in required if not (root / f).is_file()]
    if missing:
        hint = "write the model card with modeling_fli2moe.hub.write_model_card" if missing == ["README.md"] else \
            "re-save it with model.save_pretrained (after `import modeling_fli2moe`), or train it with `fli2moe train`"
        raise FileNotFoundError(f"checkpoint folder {root} is missing {missing}; {hint}")
    return required


def push_checkpoint(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload FL-I2MoE checkpoint",
    api: HfApi | None = None,
) -> str:
    """Upload a checkpoint folder (weights, config, remote code, processor files, model card); returns the commit URL."""
    check_checkpoint_dir(checkpoint_dir)
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(checkpoint_dir),
        commit_message=commit_message,
        ignore_patterns=IGNORE_PATTERNS,
        repo_type="model",
    )
    return str(getattr(info, "commit_url", info))
