"""`fli2moe explain`: dataset-level explanation report for a checkpoint.

For every example of a split: per-head attribution maps, top-K% faithfulness against random tokens,
concentration and specificity, and pair masking by SII and by RG against random pairs. Examples are
sharded across processes under `accelerate launch`; the main process gathers, aggregates (means,
paired Wilcoxon tests) and writes `explain_report.json`, `per_example.json`, `pair_masking.png`, the full
explanations of a few examples (`examples.json`, their images under `examples/`) and `report.html` (every
figure embedded; see `modeling_fli2moe.report`). With `dense_checkpoint` the dense baseline is evaluated on
the same examples, side by side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .explain.explainer import Explainer
from .explain.faithfulness import concentration, specificity
from .explain.pair_masking import paired_test
from .locking import LOCK_FILE
from .run_record import run_dataset_section
from .stop_request import raise_if_requested

logger = logging.getLogger(__name__)


def _load(checkpoint: str | os.PathLike):
    from transformers import AutoModel  # the Auto classes are registered by this package's __init__

    from .integrity import verify_checkpoint

    verify_checkpoint(checkpoint)  # a broken or missing folder is named before transformers sees it
    return AutoModel.from_pretrained(checkpoint).eval()


def _cached_split(model, split: str, data_dir: str | None, cache_dir: str | None):
    """The split's raw rows (for the drawn examples' images) and its feature-cached rows."""
    from .data import get_loader
    from .feature_cache import cache_features, default_cache_dir

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
    cached = cache_features(raw.__class__({split: raw[split]}), model.config, cache_dir or default_cache_dir())
    return raw[split], cached[split]


#: per-K faithfulness lists kept per example (the report's curves)
CURVE_KEYS = ("k_percent", "comprehensiveness", "sufficiency", "random_comprehensiveness", "random_sufficiency",
              "random_comprehensiveness_std", "random_sufficiency_std")


def explain_example(model, row: dict[str, Any], budget: int, n_candidates: int, random_state: int,
                    keep_explanation: bool = False, tokens: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """All dataset-level measurements of one cached example (by `Explainer.explain`), as plain numbers;
    with `keep_explanation` also the whole `Explanation` as a dict (under ``"explanation"``, its tokens named
    by `tokens` where given)."""
    from .feature_cache import feature_columns

    names = model.modality_names
    feats, masks, players = {}, {}, {}
    for n in names:
        f, mk, pm = feature_columns(n)
        feats[n] = torch.as_tensor(row[f]).float()[None]
        masks[n] = torch.as_tensor(row[mk]).bool()[None]
        players[n] = torch.as_tensor(row[pm]).bool()
    explainer = Explainer(model)
    example = explainer.prepare(features=feats, attention_mask=masks, player_mask=players, tokens=tokens)
    exp = explainer.explain(example, budget=budget, n_candidates=n_candidates, random_state=random_state,
                            faithfulness=True)
    keys = ("comprehensiveness_gap", "sufficiency_gap", "aopc_comprehensiveness", "aopc_sufficiency",
            "random_aopc_comprehensiveness", "random_aopc_sufficiency")
    maps = {h: {m: torch.tensor(v) for m, v in by_mod.items()} for h, by_mod in exp.maps.items()}
    out: dict[str, Any] = {
        "faithfulness": {
            h: {m: {k: getattr(c, k) for k in keys} for m, c in r.per_modality.items()} for h, r in exp.faithfulness.items()
        },
        "faithfulness_curves": {
            h: {m: {k: getattr(c, k) for k in CURVE_KEYS} for m, c in r.per_modality.items()}
            for h, r in exp.faithfulness.items()
        },
        "routing_weights": dict(exp.routing_weights),
        "concentration": {h: concentration(maps[h], players).to_dict() for h in maps},
        "specificity": specificity(maps, players).to_dict(),
        "pair_masking": {
            key: {str(s.budget): {"ranked": s.ranked_drop, "random": s.random_mean} for s in r.steps}
            for key, r in exp.pair_masking.items()
        },
        "feature_locality": exp.feature_locality,
        "prediction": exp.label_index,
    }
    if "label" in row:
        out["label"] = int(row["label"])
    if "kind" in row:
        out["kind"] = str(row["kind"])
    if keep_explanation:
        out["explanation"] = exp.to_dict()
    return out


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, standard deviation and the `level` confidence interval of the mean (Student t) of finite values."""
    from scipy import stats

    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    out: dict[str, Any] = {"mean": float(vals.mean()) if vals.size else None, "n": int(vals.size), "level": level}
    if vals.size >= 2:
        sd = float(vals.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, vals.size - 1) * sd / np.sqrt(vals.size))
        out.update(sd=sd, ci=[out["mean"] - half, out["mean"] + half])
    else:
        out.update(sd=None, ci=None)
    return out


def _mean_curves(curves: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-K means over examples of one head's and modality's faithfulness lists; the random band is the mean
    over examples of the spread (standard deviation) of the random orders."""
    out = {"k_percent": curves[0]["k_percent"], "n": len(curves)}
    for key in CURVE_KEYS[1:]:
        out[key] = np.mean([c[key] for c in curves], axis=0).tolist()
    return out


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
    if "faithfulness_curves" in per_example[0]:
        agg["faithfulness_curves"] = {
            h: {m: _mean_curves([e["faithfulness_curves"][h][m] for e in per_example
                                 if m in e["faithfulness_curves"].get(h, {})])
                for m in per_example[0]["faithfulness_curves"][h]}
            for h in per_example[0]["faithfulness_curves"]
        }
    if "routing_weights" in per_example[0]:
        experts = list(per_example[0]["routing_weights"])
        agg["routing_weights"] = {x: mean_ci([e["routing_weights"][x] for e in per_example]) for x in experts}
        kinds = sorted({e["kind"] for e in per_example if "kind" in e})
        if kinds:
            agg["routing_weights_by_kind"] = {
                k: {x: _mean([e["routing_weights"][x] for e in per_example if e.get("kind") == k]) for x in experts}
                for k in kinds
            }
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
            row = {"ranked_drop": _mean(ranked), "random_drop": _mean(random), "n": len(ranked),
                   "ranked_ci": mean_ci(ranked)["ci"], "random_ci": mean_ci(random)["ci"]}
            if len(ranked) >= 2:
                row["test"] = paired_test(ranked, random)
            agg["pair_masking"][key][b] = row
    return agg


#: what an explanation run records about itself in its output folder, and its per-process result files
RUN_FILE = "explain_run.json"
RECORDS_FOLDER = "records"
#: identity field -> the option that sets it (named when a resumed run asks for something else)
IDENTITY_OPTIONS = {
    "weights": "--checkpoint (its weights)",
    "dense_weights": "--dense (its weights)",
    "split": "--split",
    "examples": "--limit (the number of examples)",
    "data": "--data-dir (the split's examples)",
    "budget": "--budget",
    "n_candidates": "n_candidates",
    "seed": "--seed",
    "drawn": "--draw",
}


def default_output_dir(checkpoint: str | os.PathLike) -> Path:
    """Where `fli2moe explain` writes when no output folder is given."""
    return Path(checkpoint) / "explain"


def _weights_digest(checkpoint: str | os.PathLike | None) -> str | None:
    if checkpoint is None:
        return None
    from .integrity import sha256_file, weight_files

    folder = Path(checkpoint)
    if not folder.is_dir():  # a Hub id: its name stands for it
        return str(checkpoint)
    digest = hashlib.sha256()
    for name in weight_files(folder):
        if (folder / name).is_file():
            digest.update(f"{name}:{sha256_file(folder / name)};".encode())
    return digest.hexdigest()


def _data_digest(data, n: int) -> str:
    """The examples a run explains: their ids (or row order) and labels."""
    cols = [c for c in ("id", "label", "labels", "kind") if c in data.column_names]
    part = data.select_columns(cols).select(range(n)).to_dict() if cols and n else {}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()


def run_identity(checkpoint, dense_checkpoint, split: str, data, n: int, budget: int, n_candidates: int,
                 random_state: int, n_drawn: int) -> dict[str, Any]:
    """Everything the numbers of an explanation run depend on; a resumed run must match it exactly."""
    return {"weights": _weights_digest(checkpoint), "dense_weights": _weights_digest(dense_checkpoint),
            "split": split, "examples": n, "data": _data_digest(data, n), "budget": budget,
            "n_candidates": n_candidates, "seed": random_state, "drawn": n_drawn}


def _start_or_check_run(out: Path, identity: dict[str, Any], paths: dict[str, Any]) -> None:
    """Record a new run's identity, or check that the folder's run is this one (a difference is refused, named)."""
    from .integrity import write_json_atomic
    from .records import repair_records

    path = out / RUN_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        before = saved.get("identity") or {}
        diffs = [k for k in sorted(set(before) | set(identity)) if before.get(k) != identity.get(k)]
        if diffs:
            named = "; ".join(f"{IDENTITY_OPTIONS.get(k, k)}: started with {before.get(k)!r}, now {identity.get(k)!r}"
                              for k in diffs)
            raise ValueError(
                f"{out} holds an explanation run started with other settings ({named}). Run the same command as "
                f"before to continue it, or choose another --output-dir (or delete {out} to start over)."
            )
        for file in sorted((out / RECORDS_FOLDER).glob("*.jsonl")):
            repair_records(file)
        return
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty and holds no explanation run ({RUN_FILE} is missing); choose an empty or new "
            "--output-dir"
        )
    write_json_atomic(path, {"identity": identity, **paths})


def saved_records(out: str | os.PathLike) -> dict[tuple[str, int], dict[str, Any]]:
    """The finished examples of the run in `out`, by (model, index): every process's records file."""
    from .records import read_records

    done: dict[tuple[str, int], dict[str, Any]] = {}
    for file in sorted((Path(out) / RECORDS_FOLDER).glob("*.jsonl")):
        for record in read_records(file):
            done.setdefault((record["model"], int(record["index"])), record)
    return done


def run_progress(out: str | os.PathLike) -> tuple[int, int] | None:
    """(examples saved, examples in the run) of the explanation run in `out`; None when there is none."""
    path = Path(out) / RUN_FILE
    if not path.is_file():
        return None
    identity = json.loads(path.read_text(encoding="utf-8"))["identity"]
    n_models = 1 + (identity.get("dense_weights") is not None)
    return len(saved_records(out)), identity["examples"] * n_models


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
    n_drawn: int = 4,
) -> Path | None:
    """Explain a split of the checkpoint's dataset; returns the report path (on the main process).

    Each finished example is appended to a records file in the output folder as it is done, so an
    interrupted run continues where it stopped when the same call is made again (its settings are checked
    against the ones the folder was started with; a difference is refused, named). The final files are
    built from the records alone: a resumed run writes the same numbers as an uninterrupted one.
    `n_drawn` examples (one of each kind first, where the data has a ``kind`` column) keep their whole
    explanation, drawn in `report.html`."""
    from accelerate import PartialState

    from .locking import output_lock
    from .records import RecordWriter

    state = PartialState(cpu=not torch.cuda.is_available())
    models = {"fl_i2moe": _load(checkpoint)}
    if dense_checkpoint:
        models["dense"] = _load(dense_checkpoint)
    with state.main_process_first():
        raw, data = _cached_split(models["fl_i2moe"], split, data_dir, cache_dir)
    n = len(data) if limit is None else min(limit, len(data))
    out = Path(output_dir) if output_dir is not None else default_output_dir(checkpoint)
    identity = run_identity(checkpoint, dense_checkpoint, split, data, n, budget, n_candidates, random_state, n_drawn)
    lock = output_lock(out).acquire() if state.is_main_process else None
    try:
        if state.is_main_process:
            _start_or_check_run(out, identity, {"checkpoint": str(checkpoint),
                                                "dense_checkpoint": str(dense_checkpoint) if dense_checkpoint else None})
        state.wait_for_everyone()
        done = saved_records(out)
        state.wait_for_everyone()  # every process has read the records before any appends
        drawn = drawn_indices(data, n, n_drawn)
        todo = [(name, i) for name in models for i in range(n) if (name, i) not in done]
        if done and state.is_main_process:
            logger.info("%s: %d of %d examples already explained; continuing with the other %d", out, len(done),
                        len(done) + len(todo), len(todo))
        tokens = _token_strings(models["fl_i2moe"].config, raw, sorted({i for _, i in todo} & set(drawn)))
        for model in models.values():
            model.to(state.device)
        single = state.num_processes == 1
        with state.split_between_processes(todo) as mine, \
                RecordWriter(out / RECORDS_FOLDER / f"process-{state.process_index}.jsonl") as writer:
            with tqdm(total=len(mine) + (len(done) if single else 0), initial=len(done) if single else 0,
                      desc=f"explaining {split}", unit="example", disable=not state.is_local_main_process) as bar:
                for name, i in mine:
                    raise_if_requested()
                    row = explain_example(models[name], data[i], budget, n_candidates, random_state + i,
                                          keep_explanation=i in drawn, tokens=tokens.get(i))
                    writer.append({"model": name, "index": i, **row})
                    bar.update()
        state.wait_for_everyone()
        if not state.is_main_process:
            return None
        return _write_outputs(out, saved_records(out), models, n, split, budget, checkpoint, dense_checkpoint, raw)
    finally:
        if lock is not None:
            lock.release()


def _write_outputs(out: Path, records: dict[tuple[str, int], dict[str, Any]], models: dict[str, Any], n: int,
                   split: str, budget: int, checkpoint, dense_checkpoint, raw) -> Path:
    """The run's final files, from its records: `explain_report.json`, `per_example.json`, examples, figures,
    `report.html`."""
    missing = [(name, i) for name in models for i in range(n) if (name, i) not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} examples have no record in {out / RECORDS_FOLDER} (first: {missing[0]}); "
                           "run the same command again to explain them")
    results = {name: [{k: v for k, v in records[(name, i)].items() if k != "model"} for i in range(n)]
               for name in models}
    examples = _pop_explanations(results, raw, models["fl_i2moe"].config)
    report = {"checkpoint": str(checkpoint), "dense_checkpoint": str(dense_checkpoint) if dense_checkpoint else None,
              "split": split, "n_examples": n, "budget": budget,
              "id2label": {str(k): v for k, v in models["fl_i2moe"].config.id2label.items()},
              "feature_locality": {name: rows[0]["feature_locality"] for name, rows in results.items() if rows},
              "models": {name: aggregate(rows) for name, rows in results.items()}}
    path = out / "explain_report.json"
    path.write_text(json.dumps(report, indent=1))
    (out / "per_example.json").write_text(json.dumps(results))
    _save_examples(examples, out)
    _plot(report, out)
    from .report import write_report

    html = write_report(out)
    logger.info("explanation report written to %s and %s", path, html)
    return path


def drawn_indices(data, n: int, k: int) -> list[int]:
    """Up to `k` of the first `n` examples to draw: the first of each kind (a ``kind`` column), then the next ones."""
    if k <= 0 or n <= 0:
        return []
    kinds = list(data.select_columns(["kind"]).select(range(n))["kind"]) if "kind" in data.column_names else [None] * n
    first = {}
    for i, kind in enumerate(kinds):
        first.setdefault(kind, i)
    chosen = sorted(first.values())[:k]
    chosen += [i for i in range(n) if i not in chosen][: k - len(chosen)]
    return sorted(chosen)


def _token_strings(config, raw, indices: list[int]) -> dict[int, dict[str, list[str]]]:
    """The token strings of the drawn examples' text modalities (the cache keeps features only), by the
    checkpoint's own encoders; `{index: {modality: tokens}}`, an entry for every drawn index."""
    out: dict[int, dict[str, list[str]]] = {i: {} for i in indices}
    texts = [m for m in config.modalities if indices and isinstance(raw[indices[0]].get(m.get("column") or m["name"]), str)]
    if not texts:
        return out
    from .processing_fli2moe import FLI2MoEProcessor

    encoders = FLI2MoEProcessor(config, load_encoders=False).encoders
    for m in texts:
        enc = encoders[m["name"]].encode([raw[i][m.get("column") or m["name"]] for i in indices], modality=m["name"])
        for i, toks in zip(indices, enc.get("tokens") or []):
            out[i][m["name"]] = list(toks)
    return out


def _pop_explanations(results: dict[str, list], raw, config) -> list[dict[str, Any]]:
    """Move the drawn examples' explanations out of the per-example rows, with the raw inputs they explain."""
    by_index: dict[int, dict[str, Any]] = {}
    for name, rows in results.items():
        for row in rows:
            if "explanation" not in row:
                continue
            i = row["index"]
            entry = by_index.setdefault(i, {"index": i, "explanations": {}, "inputs": {}})
            entry["explanations"][name] = row.pop("explanation")
            for key in ("label", "kind"):
                if key in row:
                    entry[key] = row[key]
    for i, entry in by_index.items():
        source = raw[i]
        for m in config.modalities:
            value = source.get(m.get("column") or m["name"])
            entry["inputs"][m["name"]] = value
    return [by_index[i] for i in sorted(by_index)]


def _save_examples(examples: list[dict[str, Any]], out: Path) -> None:
    """`examples.json` (explanations, texts, labels) and each drawn example's images as `examples/<index>_<modality>.png`."""
    folder = out / "examples"
    folder.mkdir(exist_ok=True)
    records = []
    for entry in examples:
        inputs = {}
        for name, value in entry["inputs"].items():
            if hasattr(value, "save"):  # a PIL image
                file = f"{entry['index']}_{name}.png"
                value.convert("RGB").save(folder / file)
                inputs[name] = {"image": f"examples/{file}"}
            elif isinstance(value, str):
                inputs[name] = {"text": value}
        records.append({**entry, "inputs": inputs})
    (out / "examples.json").write_text(json.dumps(records))


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
