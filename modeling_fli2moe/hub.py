"""Model cards and pushing checkpoints to the Hugging Face Hub (with `huggingface_hub`).

`make_model_card` / `write_model_card` build the card (YAML metadata with a `model-index`, and a body describing
the experts, usage, training, evaluation, limitations and citations); `push_checkpoint` validates a checkpoint
folder and uploads it in one commit (`HfApi.create_commit`, the boundary tests patch).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, HFValidationError, filter_repo_objects, validate_repo_id

from .integrity import verify_checkpoint

logger = logging.getLogger(__name__)

TAGS = ["fl-i2moe", "multimodal", "mixture-of-experts", "interpretability", "custom_code"]
IGNORE_PATTERNS = [
    "checkpoint-*",  # Trainer's intermediate checkpoints (fnmatch's * also matches '/')
    "runs/*",
    "*/runs/*",  # TensorBoard logs
    "optimizer.*",
    "scheduler.*",
    "scaler.*",
    "rng_state*",
    "*.pt",
    "*.pth",
    "global_step*",  # DeepSpeed states
    "trainer_state.json",
    "run.json",  # the local run record (command, host, pid)
    ".fli2moe.lock",
    ".tmp-checkpoint-*",
    "training_args.bin",  # a pickle: not loaded by from_pretrained, flagged by the Hub's scanner
    "__pycache__/*",
    "*.pyc",
    ".ipynb_checkpoints/*",
]
DEFAULT_COMMIT_MESSAGE = "Upload FL-I2MoE checkpoint"

CITATIONS = """\
```bibtex
@article{kim2026flinteractions,
  title   = {Feature-level Interaction Explanations in Multimodal Transformers},
  author  = {Kim and Babiker and Kim and Goebel},
  journal = {arXiv preprint arXiv:2603.13326},
  year    = {2026}
}

@inproceedings{xin2025i2moe,
  title     = {{I2MoE}: Interpretable Multimodal Interaction-aware Mixture-of-Experts},
  author    = {Xin and others},
  booktitle = {Proceedings of the International Conference on Machine Learning (ICML)},
  year      = {2025}
}
```"""

# Known datasets: a display name and one line about the data.
DATASETS = {
    "mmimdb": ("MM-IMDb", "movie posters and plot summaries, 23 genres, multi-label; official split "
               "15,552 / 2,608 / 7,799 (train / dev / test)"),
    "enrico": ("ENRICO", "mobile UI screenshots and wireframes (two image modalities), 20 design topics; split "
               "65 / 15 / 20 % after shuffling the screen ids with random.Random(42)"),
    "mmhs150k": ("MMHS150K", "tweets (text, image and optional OCR text), hateful or not (hate when at least two "
                 "of the three annotators marked a hate class); official split files"),
    "planted": ("planted-interaction benchmark", "the project's synthetic benchmark whose labels depend on known "
                "cross-modal evidence (ground-truth tokens and regions recorded)"),
}

# Metric keys (as returned by modeling_fli2moe.metrics) -> (model-index type, display name, args).
_METRIC_INFO: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "accuracy": ("accuracy", "Accuracy", None),
    "f1": ("f1", "F1", {"average": "binary"}),
    "micro_f1": ("f1", "F1 (micro)", {"average": "micro"}),
    "macro_f1": ("f1", "F1 (macro)", {"average": "macro"}),
    "weighted_f1": ("f1", "F1 (weighted)", {"average": "weighted"}),
    "samples_f1": ("f1", "F1 (samples)", {"average": "samples"}),
    "roc_auc": ("roc_auc", "ROC-AUC (macro)", {"average": "macro"}),
    "roc_auc_micro": ("roc_auc", "ROC-AUC (micro)", {"average": "micro"}),
}
# Trainer bookkeeping: kept out of the model-index and the metrics table.
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "loss")
_TEXT_ENCODERS = ("hf-text",)
_IMAGE_ENCODERS = ("hf-vision", "efficientnet-lite0")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ----------------------------------------------------------------------------------------------- helpers
def _config_dict(config: Any, checkpoint_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The config as a plain dict (a `PreTrainedConfig`, a dict, or `config.json` of the checkpoint)."""
    if config is None:
        if checkpoint_dir is None or not (Path(checkpoint_dir) / "config.json").is_file():
            raise ValueError(
                "make_model_card: no config given and no config.json in the checkpoint folder; pass config=model.config"
            )
        return json.loads((Path(checkpoint_dir) / "config.json").read_text(encoding="utf-8"))
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"make_model_card: config must be a dict or a PreTrainedConfig, got {type(config).__name__}")


def _modality_kind(modality: Mapping[str, Any]) -> str:
    """'text', 'image' or 'features' from the encoder type (or, failing that, the modality's name)."""
    enc_type = (modality.get("encoder") or {}).get("type")
    if enc_type in _TEXT_ENCODERS:
        return "text"
    if enc_type in _IMAGE_ENCODERS:
        return "image"
    name = str(modality.get("name", "")).lower()
    if any(k in name for k in ("text", "plot", "tweet", "ocr", "caption")):
        return "text"
    if any(k in name for k in ("image", "screenshot", "wireframe", "poster", "img", "photo")):
        return "image"
    return "features"


def _base_models(modalities: list[dict[str, Any]]) -> list[str]:
    """The encoders' `name_or_path` that look like Hub model ids (local paths are left out)."""
    out: list[str] = []
    for m in modalities:
        name = (m.get("encoder") or {}).get("name_or_path")
        if not isinstance(name, str) or not name:
            continue
        if not _HUB_ID.match(name) or Path(name).expanduser().exists():
            logger.info("model card: encoder %r is a local path, not listed as a base_model", name)
            continue
        if name not in out:
            out.append(name)
    return out


def _clean_metrics(test_metrics: Mapping[str, Any] | None) -> dict[str, float | int]:
    """Numeric metrics with the Trainer's `test_` / `eval_` prefix removed and its bookkeeping dropped."""
    out: dict[str, float | int] = {}
    for key, value in (test_metrics or {}).items():
        name = key.removeprefix("test_").removeprefix("eval_")
        if name.endswith(_NOT_METRICS) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[name] = value
    return out


def _example_value(modality: Mapping[str, Any], kind: str) -> str:
    """The usage snippet's raw input for one modality (Python source)."""
    if kind == "text":
        return '"a short example text"'
    if kind == "image":
        return '"' + str(modality.get("name")) + '.png"'
    return f"[[0.0] * {modality.get('input_dim')}]"


def _fmt(value: Any, float_format: str) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else format(value, float_format)
    return str(value)


def _table(rows: Mapping[str, Any], header: tuple[str, str], float_format: str = "g") -> str:
    if not rows:
        return "_None recorded._"
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v, float_format)} |" for k, v in rows.items()]
    return "\n".join(lines)


def _eval_results(
    metrics: Mapping[str, float | int], *, task_type: str, task_name: str, dataset_type: str, dataset_name: str
) -> list[EvalResult]:
    """One `EvalResult` per finite score metric (counts such as `roc_auc_labels_skipped` stay in the table)."""
    results = []
    for key, value in metrics.items():
        if "skipped" in key or "scored" in key or not math.isfinite(float(value)):
            continue
        metric_type, metric_name, metric_args = _METRIC_INFO.get(key, (key, key, None))
        results.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split="test",
                metric_type=metric_type,
                metric_name=metric_name,
                metric_args=metric_args,
                metric_value=float(value),
            )
        )
    return results


# -------------------------------------------------------------------------------------------- model card
def make_model_card(
    checkpoint_dir: str | os.PathLike | None,
    *,
    config: Any = None,
    test_metrics: Mapping[str, Any] | None = None,
    dataset_name: str,
    repo_id: str | None = None,
    base_models: list[str] | None = None,
    training_args: Mapping[str, Any] | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """A `ModelCard` for an FL-I2MoE checkpoint: YAML metadata (library, tags, datasets, base models, pipeline tag,
    model-index of the test metrics) and a body (experts, usage, training, evaluation, limitations, citations).

    `config` defaults to the checkpoint's `config.json`; `test_metrics` (a Trainer metrics dict, `test_` prefixes
    allowed) defaults to the checkpoint's `test_results.json` when there is one; `base_models` defaults to the
    Hub ids of the encoders in `config.modalities[i]["encoder"]["name_or_path"]`.
    """
    if not dataset_name:
        raise ValueError("make_model_card: dataset_name is empty; pass the dataset's name, e.g. 'mmimdb'")
    cfg = _config_dict(config, checkpoint_dir)
    if test_metrics is None and checkpoint_dir is not None and (Path(checkpoint_dir) / "test_results.json").is_file():
        test_metrics = json.loads((Path(checkpoint_dir) / "test_results.json").read_text(encoding="utf-8"))
        logger.info("model card: test metrics read from %s/test_results.json", checkpoint_dir)

    modalities: list[dict[str, Any]] = list(cfg.get("modalities") or [])
    names = [str(m.get("name")) for m in modalities]
    kinds = [_modality_kind(m) for m in modalities]
    multi_label = cfg.get("problem_type") == "multi_label_classification"
    dense = cfg.get("mixture", "interaction") == "dense"
    if base_models is None:
        base_models = _base_models(modalities)
    pipeline_tag = "text-classification" if "text" in kinds else "image-classification" if "image" in kinds else None
    task_name = ("Multi-label" if multi_label else "Single-label") + " multimodal classification"
    ds_display, ds_about = DATASETS.get(dataset_name.lower(), (dataset_name, ""))
    model_name = (repo_id or f"fl-i2moe-{dataset_name}").split("/")[-1]
    metrics = _clean_metrics(test_metrics)
    eval_results = _eval_results(
        metrics,
        task_type=pipeline_tag or "other",
        task_name=task_name,
        dataset_type=dataset_name,
        dataset_name=ds_display,
    )

    data = ModelCardData(
        library_name="transformers",
        license=license,
        tags=TAGS + (["dense-baseline"] if dense else []) + sorted({k for k in kinds if k != "features"}),
        datasets=[dataset_name],
        base_model=base_models or None,
        pipeline_tag=pipeline_tag,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    body = _card_body(
        cfg,
        names=names,
        kinds=kinds,
        dense=dense,
        multi_label=multi_label,
        repo=repo_id or f"<user>/{model_name}",
        model_name=model_name,
        dataset=(ds_display, ds_about),
        metrics=metrics,
        training_args=dict(training_args or {}),
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


#: the model card's hyper-parameter row for `token_masking` (shown for dense models too)
_TOKEN_MASKING_ROW = "token masking (largest per-example rate)"


def _card_body(
    cfg: dict[str, Any],
    *,
    names: list[str],
    kinds: list[str],
    dense: bool,
    multi_label: bool,
    repo: str,
    model_name: str,
    dataset: tuple[str, str],
    metrics: dict[str, float | int],
    training_args: dict[str, Any],
) -> str:
    """The Markdown body of the card."""
    modalities = cfg.get("modalities") or []
    encoders = _table(
        {
            f"{m.get('name')} ({kind})": " / ".join(
                str(x)
                for x in (
                    (m.get("encoder") or {}).get("type", "precomputed"),
                    (m.get("encoder") or {}).get("name_or_path"),
                    f"{m.get('input_dim')}-d",
                    f"up to {m['max_tokens']} tokens" if m.get("max_tokens") else None,
                )
                if x
            )
            for m, kind in zip(modalities, kinds)
        },
        ("modality", "frozen encoder / features"),
    )
    if dense:
        experts = (
            "This checkpoint is the **dense baseline**: the same projection and Transformer backbone as FL-I2MoE, "
            "with one expert, no router and no interaction loss."
        )
    else:
        roles = {f"uniqueness_{n}": f"relies on the **{n}** modality alone (uniqueness)" for n in names}
        roles["synergy"] = (
            "captures information that needs the modalities together: it must change when any modality is removed"
        )
        roles["redundancy"] = (
            "captures information the modalities share: it must survive the loss of any one modality"
        )
        experts = (
            f"It has **{len(names) + 2} experts** over the joined token sequence of all modalities, each a small "
            f"pre-LayerNorm Transformer ({cfg.get('num_layers', 2)} layers, hidden size {cfg.get('hidden_size', 256)}, "
            f"{cfg.get('num_heads', 4)} heads):\n\n"
            + _table(roles, ("expert", "role"))
            + f"\n\nA **router** (an MLP over the L2-normalised mean token of each modality, softmax temperature "
            f"{cfg.get('router_temperature', 2.0)}) weighs the experts per example; the prediction is the weighted "
            "sum of the experts' logits. Every expert's logits and the router weights are returned with the "
            "prediction (`expert_logits`, `expert_weights`), so each expert can be explained on its own."
        )
    labels = list((cfg.get("id2label") or {}).values())
    label_line = (
        f"Labels ({len(labels)}): {', '.join(map(str, labels))}." if labels and len(labels) <= 40 else ""
    )
    example = "{" + ", ".join(f'"{n}": {_example_value(m, kind)}' for n, m, kind in zip(names, modalities, kinds)) + "}"
    ds_name, ds_about = dataset
    hyper = {
        "interaction loss weight (lambda_int)": cfg.get("interaction_loss_weight"),
        "knock-out fill": cfg.get("fill", cfg.get("replacement")),
        "interaction space": cfg.get("interaction_space"),
        _TOKEN_MASKING_ROW: cfg.get("token_masking"),
        "dropout": cfg.get("dropout"),
        "router layers": cfg.get("router_layers"),
    }
    dense_keys = ("dropout", _TOKEN_MASKING_ROW)  # the others shape the mixture only
    hyper = {k: v for k, v in hyper.items() if v is not None and not (dense and k not in dense_keys)}
    hyper.update(training_args)
    loss = (
        "The loss is the task loss (" + ("binary cross-entropy with logits" if multi_label else "cross-entropy") + ")"
        + (
            "."
            if dense
            else " plus lambda_int times the mean of the experts' interaction losses: every expert is also run with "
            "each modality knocked out; the uniqueness experts get a triplet loss, the synergy expert is pushed to "
            "change and the redundancy expert to stay the same."
        )
    )
    decision = "a label is predicted when its sigmoid probability is at least 0.5" if multi_label else \
        "the predicted class is the arg-max of the logits"
    return f"""# {model_name}

An **FL-I2MoE** classifier ({'dense baseline' if dense else 'interaction-aware mixture of experts'}) trained on
**{ds_name}**. FL-I2MoE is a feature-level, interaction-aware mixture-of-experts layer on top of frozen pretrained
encoders: the encoders turn each modality into a token sequence, and this model owns everything trainable
(one projection per modality, the experts and the router).

## Model description

Modalities and their frozen encoders:

{encoders}

{experts}

{label_line}

## Usage

The model reads frozen-encoder features; the processor rebuilds the encoders named in the config
(`pip install fl-i2moe` for the processor and the explanation tools).

```python
from transformers import AutoModel
from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True).eval()
processor = FLI2MoEProcessor.from_pretrained("{repo}")  # rebuilds the frozen encoders
example = {example}  # one raw example per modality
inputs = processor(example)
out = model(**inputs.model_inputs())
out.logits, out.expert_logits, out.expert_weights  # mixture logits, (B, E, C) per expert, (B, E) router weights

# explain: expert-wise token attributions, synergistic and redundant cross-modal token pairs
from modeling_fli2moe.explain import Explainer
explainer = Explainer(model, processor)
explanation = explainer.explain(explainer.prepare(example), random_state=0)
print(explanation.summary())
```

Text modalities take a string, image modalities an image path or a PIL image, precomputed-feature
modalities a `(T, D)` array.

Decision rule: {decision}.

## Training data

**{ds_name}**{': ' + ds_about if ds_about else ''}. Features were computed once with the frozen encoders and cached;
training read the cache.

## Training procedure

Trained with `transformers.Trainer`. {loss} The checkpoint kept is the best on the validation split.

{_table(hyper, ("setting", "value"))}

## Evaluation

Test split:

{_table(metrics, ("metric", "value"), ".4f")}

## Limitations

- The encoders are frozen: the explanations describe how this layer combines their tokens, not the encoders.
- Expert roles are encouraged by training losses, not guaranteed; check the router weights and the expert-wise
  explanations before reading an expert as "the synergy of this example".
- Shapley interaction values are Monte Carlo estimates: read them with their standard errors.
- The redundancy gap is this project's definition (the FL-I2MoE paper names the score without a formula).
- Probabilities are not calibrated, and data unlike {ds_name} may be predicted poorly.

## Citation

{CITATIONS}
"""


def write_model_card(checkpoint_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Build the card with `make_model_card(checkpoint_dir, **kwargs)` and save it as `README.md` there."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"write_model_card: checkpoint folder {root} does not exist; save the model first")
    path = root / "README.md"
    make_model_card(root, **kwargs).save(path)
    logger.info("model card written to %s", path)
    return path


# ------------------------------------------------------------------------------------------------- push
def _remote_code_files(auto_map: Mapping[str, Any]) -> list[str]:
    """The `.py` files named by `auto_map` (`"module.Class"`, `"repo--module.Class"` or lists of them)."""
    files: set[str] = set()
    for ref in auto_map.values():
        for item in ref if isinstance(ref, (list, tuple)) else [ref]:
            if not isinstance(item, str) or "." not in item:
                continue
            module = item.split("--")[-1].rsplit(".", 1)[0]
            files.add(module.replace(".", "/") + ".py")
    return sorted(files)


def check_checkpoint_dir(checkpoint_dir: str | os.PathLike) -> list[str]:
    """Check that a folder is a pushable checkpoint; return the required files it has.

    Required: `config.json` (with an `auto_map`), `model.safetensors` (or a sharded
    `model.safetensors.index.json` and its shards), `README.md` (a model card with valid YAML) and the
    remote-code `.py` files that `auto_map` names. Raises `FileNotFoundError` / `ValueError` naming every
    problem and how to fix it.
    """
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"checkpoint folder {root} does not exist; train one with `fli2moe train` or save a model with "
            "model.save_pretrained(folder)"
        )
    problems: list[str] = []
    present: list[str] = []
    resave = "re-save the model with model.save_pretrained(folder) after `import modeling_fli2moe`"

    config_path = root / "config.json"
    auto_map: Mapping[str, Any] = {}
    if not config_path.is_file():
        problems.append(f"config.json is missing: {resave}")
    else:
        present.append("config.json")
        try:
            auto_map = json.loads(config_path.read_text(encoding="utf-8")).get("auto_map") or {}
        except json.JSONDecodeError as err:
            problems.append(f"config.json is not valid JSON ({err}): {resave}")
        else:
            if not auto_map:
                problems.append(
                    "config.json has no auto_map, so the checkpoint would not load with trust_remote_code=True: "
                    + resave
                )

    if (root / "model.safetensors").is_file():
        present.append("model.safetensors")
    elif (root / "model.safetensors.index.json").is_file():
        present.append("model.safetensors.index.json")
        index = json.loads((root / "model.safetensors.index.json").read_text(encoding="utf-8"))
        shards = sorted(set((index.get("weight_map") or {}).values()))
        lost = [s for s in shards if not (root / s).is_file()]
        if lost:
            problems.append(f"weight shards {lost} named in model.safetensors.index.json are missing: {resave}")
        present += [s for s in shards if s not in lost]
    else:
        other = sorted(p.name for p in root.glob("*.bin") if p.name.startswith("pytorch_model"))
        hint = f" (found {other}: save with safe_serialization=True, the default)" if other else ""
        problems.append(f"model.safetensors is missing{hint}: {resave}")

    readme = root / "README.md"
    if not readme.is_file():
        problems.append(
            "README.md (the model card) is missing: write it with modeling_fli2moe.hub.write_model_card(folder, "
            "config=model.config, test_metrics=..., dataset_name=...)"
        )
    else:
        present.append("README.md")
        try:
            ModelCard.load(readme)
        except Exception as err:  # noqa: BLE001 - any parse failure means the card's YAML is unusable
            problems.append(f"README.md has invalid YAML metadata ({err}): rewrite it with write_model_card")

    for name in _remote_code_files(auto_map):
        if (root / name).is_file():
            present.append(name)
        else:
            problems.append(f"remote-code file {name} (named in config.json auto_map) is missing: {resave}")

    if problems:
        raise FileNotFoundError(
            f"checkpoint folder {root} cannot be pushed:\n- " + "\n- ".join(problems)
        )
    verify_checkpoint(root)  # weights intact (framing, recorded checksum) and config.json as saved
    return present


def checkpoint_files(checkpoint_dir: str | os.PathLike) -> list[str]:
    """The files of a checkpoint folder that `push_checkpoint` uploads (relative paths, `IGNORE_PATTERNS` applied)."""
    root = Path(checkpoint_dir).expanduser().resolve()
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS + list(DEFAULT_IGNORE_PATTERNS)))


def push_checkpoint(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    api: HfApi | None = None,
) -> str:
    """Validate a checkpoint folder, create the model repo if needed and upload the folder in one commit.

    Weights, config, remote code, processor files and the model card are uploaded; optimizer / scheduler /
    RNG states, `checkpoint-*` folders and `runs/` logs are not (`IGNORE_PATTERNS`). The folder goes up as a
    single `HfApi.create_commit` (the same file selection as `upload_folder`; the card's YAML is checked
    locally, not by the Hub's validation endpoint). Returns the commit URL.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"push_checkpoint: invalid repo_id {repo_id!r} ({err}); use 'user-or-org/model-name'") from err
    check_checkpoint_dir(checkpoint_dir)
    root = Path(checkpoint_dir).expanduser().resolve()
    files = checkpoint_files(root)
    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(root / rel)) for rel in files]
    api = api if api is not None else HfApi(token=token)
    repo_url = api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
    logger.info("pushing %d files of %s to %s", len(files), root, repo_url)
    info = api.create_commit(
        repo_id=repo_id,
        operations=operations,
        commit_message=commit_message,
        repo_type="model",
        token=token,
    )
    return str(getattr(info, "commit_url", info))


__all__ = [
    "CITATIONS",
    "IGNORE_PATTERNS",
    "check_checkpoint_dir",
    "checkpoint_files",
    "make_model_card",
    "push_checkpoint",
    "write_model_card",
]
