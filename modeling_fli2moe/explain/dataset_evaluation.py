"""`fli2moe explain`: dataset-level explanation report for a checkpoint.

For every example of a split: per-head attribution maps, top-K% faithfulness against random tokens,
concentration and specificity, and pair masking by SII and by RG against random pairs. Examples are
sharded across processes under `accelerate launch`; the main process gathers, aggregates (means,
paired Wilcoxon tests) and writes `explain_report.json`, `per_example.json` and `pair_masking.png`. With `dense_checkpoint` the dense
baseline is evaluated on the same examples, side by side.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .faithfulness import concentration, specificity
from .pair_masking import paired_test

logger = logging.getLogger(__name__)


def _load(checkpoint: str | os.PathLike):
    from transformers import AutoModel

    import modeling_fli2moe  # noqa: F401  (registers the Auto classes)

    from ..integrity import verify_checkpoint

    verify_checkpoint(checkpoint)  # a broken or missing folder is named before transformers sees it
    return AutoModel.from_pretrained(checkpoint).eval()


def _cached_split(model, split: str, data_dir: str | None, cache_dir: str | None):
    from ..data import get_loader
    from ..feature_cache import cache_features
    from ..training import _default_cache_dir, run_dataset_section

    ds_cfg = run_dataset_section(model.name_or_path)
    loader = ds_cfg.get("loader")
    if not loader:
        raise ValueError("the checkpoint folder records no dataset loader (its run.json from `fli2moe train`); cannot load a split")
    root = data_dir or ds_cfg.get("data_dir")
    if root is not None and not Path(root).exists():
        raise FileNotFoundError(f"data directory {root} does not exist; pass --data-dir")
    raw = get_loader(loader)(root, **(ds_cfg.get("options") or {}))
    if split not in raw:
        raise ValueError(f"split {split!r} not in the dataset; splits: {list(raw)}")
    cached = cache_features(raw.__class__({split: raw[split]}), model.config, cache_dir or _default_cache_dir())
    return cached[split]


def explain_example(model, row: dict[str, Any], budget: int, n_candidates: int, random_state: int) -> dict[str, Any]:
    """All dataset-level measurements of one cached example (by `Explainer.explain`), as plain numbers."""
    from ..feature_cache import feature_columns
    from .explainer import Explainer

    names = model.modality_names
    feats, masks, players = {}, {}, {}
    for n in names:
        f, mk, pm = feature_columns(n)
        feats[n] = torch.as_tensor(row[f]).float()[None]
        masks[n] = torch.as_tensor(row[mk]).bool()[None]
        players[n] = torch.as_tensor(row[pm]).bool()
    exp = Explainer(model).explain(features=feats, attention_mask=masks, player_mask=players, budget=budget,
                                   n_candidates=n_candidates, random_state=random_state)
    keys = ("comprehensiveness_gap", "sufficiency_gap", "aopc_comprehensiveness", "aopc_sufficiency",
            "random_aopc_comprehensiveness", "random_aopc_sufficiency")
    maps = {h: {m: torch.tensor(v) for m, v in by_mod.items()} for h, by_mod in exp.maps.items()}
    out: dict[str, Any] = {
        "faithfulness": {
            h: {m: {k: c[k] for k in keys} for m, c in r["per_modality"].items()} for h, r in exp.faithfulness.items()
        },
        "concentration": {h: concentration(maps[h], players).to_dict() for h in maps},
        "specificity": specificity(maps, players).to_dict(),
        "pair_masking": {
            key: {str(s["budget"]): {"ranked": s["ranked_drop"], "random": s["random_mean"]} for s in r["steps"]}
            for key, r in exp.pair_masking.items()
        },
        "feature_locality": exp.feature_locality,
        "prediction": exp.label_index,
    }
    if "label" in row:
        out["label"] = int(row["label"])
    return out


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def aggregate(per_example: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over examples, and paired tests of ranked against random pair masking."""
    if not per_example:
        return {}
    agg: dict[str, Any] = {"n_examples": len(per_example), "faithfulness": {}, "concentration": {}, "pair_masking": {}}
    heads = list(per_example[0]["faithfulness"])
    for h in heads:
        agg["faithfulness"][h] = {
            m: {k: _mean([e["faithfulness"][h][m][k] for e in per_example]) for k in per_example[0]["faithfulness"][h][m]}
            for m in per_example[0]["faithfulness"][h]
        }
        conc = [e["concentration"][h] for e in per_example]
        agg["concentration"][h] = json.loads(json.dumps(conc[0]))  # structure
        for m in conc[0].get("entropy", {}):
            agg["concentration"][h]["entropy"][m] = _mean([c["entropy"][m] for c in conc])
            agg["concentration"][h]["top_mass"][m] = _mean([c["top_mass"][m] for c in conc])
    jac = [e["specificity"].get("mean_jaccard") or {} for e in per_example]
    agg["specificity_mean_jaccard"] = {m: _mean([j.get(m) for j in jac]) for m in jac[0]}
    share = [e["specificity"].get("mass_share") for e in per_example]
    if share[0]:
        agg["specificity_mass_share"] = {h: {m: _mean([s[h][m] for s in share]) for m in share[0][h]} for h in share[0]}
    for key in ("sii", "redundancy_gap"):
        agg["pair_masking"][key] = {}
        for b in per_example[0]["pair_masking"][key]:
            ranked = [e["pair_masking"][key][b]["ranked"] for e in per_example if b in e["pair_masking"][key]]
            random = [e["pair_masking"][key][b]["random"] for e in per_example if b in e["pair_masking"][key]]
            row = {"ranked_drop": _mean(ranked), "random_drop": _mean(random), "n": len(ranked)}
            if len(ranked) >= 2:
                row["test"] = paired_test(ranked, random)
            agg["pair_masking"][key][b] = row
    return agg


def run_dataset_explanation(
    checkpoint: str | os.PathLike,
    *,
    split: str = "test",
    limit: int | None = None,
    output_dir: str | os.PathLike | None = None,
    budget: int = 2048,
    n_candidates: int = 6,
    random_state: int = 0,
    dense_checkpoint: str | os.PathLike | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
) -> Path | None:
    """Explain a split of the checkpoint's dataset; returns the report path (on the main process)."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    models = {"fl_i2moe": _load(checkpoint)}
    if dense_checkpoint:
        models["dense"] = _load(dense_checkpoint)
    with state.main_process_first():
        data = _cached_split(models["fl_i2moe"], split, data_dir, cache_dir)
    n = len(data) if limit is None else min(limit, len(data))
    indices = list(range(n))
    results: dict[str, list] = {}
    with state.split_between_processes(indices) as mine:
        for name, model in models.items():
            model.to(state.device)
            rows = []
            for i in tqdm(mine, desc=f"explaining {split} ({name})", disable=not state.is_local_main_process):
                rows.append(explain_example(model, data[i], budget, n_candidates, random_state + i))
            results[name] = rows
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        results = {k: gather_object(v) for k, v in results.items()}
    if not state.is_main_process:
        return None
    report = {"checkpoint": str(checkpoint), "split": split, "n_examples": n, "budget": budget,
              "models": {name: aggregate(rows) for name, rows in results.items()}}
    out = Path(output_dir or Path(checkpoint) / "explain")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "explain_report.json"
    path.write_text(json.dumps(report, indent=1))
    (out / "per_example.json").write_text(json.dumps(results))
    _plot(report, out)
    logger.info("explanation report written to %s", path)
    return path


def _plot(report: dict[str, Any], out: Path) -> None:
    """`pair_masking.png`: drop in target probability against pairs masked, ranked by SII and by RG vs random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, agg in report["models"].items():
        for ax, key in zip(axes, ("sii", "redundancy_gap")):
            rows = agg.get("pair_masking", {}).get(key, {})
            bs = sorted(rows, key=int)
            ax.plot([int(b) for b in bs], [rows[b]["ranked_drop"] for b in bs], "-o", label=f"{name}: by {key}")
            ax.plot([int(b) for b in bs], [rows[b]["random_drop"] for b in bs], "--", label=f"{name}: random")
            ax.set_xlabel("pairs masked")
            ax.set_ylabel("drop in target probability")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pair_masking.png", dpi=120)
    plt.close(fig)
