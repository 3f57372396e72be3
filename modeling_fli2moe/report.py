"""`report.html`: the dataset-level explanation report of `fli2moe explain`, one self-contained page.

The page reads the files `fli2moe explain` writes (`explain_report.json`, `examples.json` and the drawn
examples' images under `examples/`) and shows FL-I2MoE and the dense baseline side by side:

- faithfulness curves: comprehensiveness and sufficiency of each modality's map against K, with the
  random-token control as a band, and the AOPC numbers of every head;
- concentration (normalised entropy, top-10 % mass) and specificity (expert overlap, mass shares);
- pair masking by SII and by RG against random pairs, with 95 % confidence intervals and the paired test;
- the router's weights per expert (by kind where the data has kinds);
- a few examples drawn: token highlights, image heatmaps per head, lines from tokens to regions.

Every figure is a PNG embedded as base64 (`data:` URL), so the file opens anywhere, offline. Every number
on the page says in words what it measures and in which unit.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MODEL_TITLES", "OUTPUT_UNITS", "feature_locality_note", "render_report", "write_report"]

MODEL_TITLES = {"fl_i2moe": "FL-I2MoE", "dense": "Dense baseline"}
#: the unit of SII and RG: the explanation games' value (`Explanation.output`), in words
OUTPUT_UNITS = {"log_odds": "log-odds of the predicted label", "logit": "logit of the predicted label",
                "probability": "probability of the predicted label"}
_HEAD_ROLES = {
    "mixture": "the router-weighted mixture, i.e. the model's prediction",
    "uniqueness_text": "the expert trained to rely on the text alone",
    "uniqueness_image": "the expert trained to rely on the image alone",
    "synergy": "the expert trained to need both modalities together",
    "redundancy": "the expert trained on evidence both modalities carry",
    "dense": "the dense baseline's single expert",
}


# ------------------------------------------------------------------------------------------ wording
def feature_locality_note(locality: dict[str, str]) -> str:
    """One paragraph (plain text) on whether each modality's features are local or contextual, saying
    where evidence leaks between tokens (then masking a token's feature does not remove its evidence)."""
    if not locality:
        return ""
    kinds = ", ".join(f"{m}: {k}" for m, k in locality.items())
    text = (f"Features ({kinds}). Local: a token's feature depends on that token alone, so masking it removes "
            "its evidence. Contextual: every token has seen the whole input, so evidence leaks between tokens.")
    leaky = [m for m, k in locality.items() if k == "contextual"]
    if leaky:
        text += (f" Here the {' and '.join(leaky)} features are contextual: masking a token's feature leaves its "
                 "evidence in the other tokens, so maps, pair scores and masking drops understate it.")
    unknown = [m for m, k in locality.items() if k == "unknown"]
    if unknown:
        text += f" For {' and '.join(unknown)} the encoder does not say, so leaking cannot be ruled out."
    return text


def _num(value: Any, digits: int = 3) -> str:
    """`digits` decimals; small values keep two significant digits (0.00042, not 0.000)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if value != 0 and abs(value) < 10 ** -digits * 5:
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def _signed(value: float) -> str:
    text = _num(value)
    return text if text.startswith("-") or text == "n/a" else "+" + text


def _ci(ci: Any, digits: int = 3) -> str:
    return f"[{_num(ci[0], digits)}, {_num(ci[1], digits)}]" if ci else "n/a (fewer than 2 examples)"


def _p(value: Any) -> str:
    if value is None or not math.isfinite(value):
        return "n/a (no test: fewer than 2 examples, or no difference)"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _e(text: Any) -> str:
    return html.escape(str(text))


def _title(name: str) -> str:
    return MODEL_TITLES.get(name, name)


# ------------------------------------------------------------------------------------------ figures
def _figure(fig, alt: str, caption: str) -> str:
    """A matplotlib figure as an embedded PNG with its caption; closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure><img class="figure" alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _faithfulness_figure(name: str, curves: dict[str, Any], head: str) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.0))
    titles = {"comprehensiveness": "comprehensiveness (top-K% removed)", "sufficiency": "sufficiency (only top-K% kept)"}
    for ax, key in zip(axes, ("comprehensiveness", "sufficiency")):
        for j, (modality, c) in enumerate(curves.items()):
            ks = np.asarray(c["k_percent"], dtype=float)
            rand = np.asarray(c[f"random_{key}"], dtype=float)
            band = np.asarray(c[f"random_{key}_std"], dtype=float)
            color = f"C{j}"
            ax.plot(ks, c[key], "-o", color=color, ms=4, label=f"{modality}: map")
            ax.plot(ks, rand, "--", color=color, label=f"{modality}: random")
            ax.fill_between(ks, rand - band, rand + band, color=color, alpha=0.15, lw=0)
        ax.set_title(titles[key], fontsize=10)
        ax.set_xlabel("K (% of the modality's tokens)")
        ax.set_ylabel("drop in target probability")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(f"{_title(name)}: {head} head", fontsize=10)
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=3, fontsize=7, frameon=False)
    return _figure(
        fig, f"faithfulness curves of {_title(name)}",
        f"{_e(_title(name))}, {_e(head)} head, mean over examples. Solid: masking by the map; dashed: masking random "
        "tokens, with the shaded band one standard deviation of the 10 random orders (averaged over examples). "
        "Both axes: the drop in the predicted label's probability (0 to 1) when the top K % of a modality's tokens "
        "are removed (left; higher than random = faithful) or are the only ones kept (right; lower than random = "
        "faithful); the other modality stays intact; \"all\" ranks both modalities' tokens jointly.",
    )


def _pair_masking_figure(name: str, rows: dict[str, dict[str, Any]]) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.0), sharey=True)
    for ax, (key, label) in zip(axes, (("sii", "top pairs by SII"), ("redundancy_gap", "top pairs by RG"))):
        steps = rows.get(key, {})
        bs = sorted(steps, key=int)
        x = np.asarray([int(b) for b in bs], dtype=float)
        for field, style, text, color in (("ranked", "-o", label, "C3"), ("random", "--s", "random pairs", "0.45")):
            mean = np.asarray([steps[b][f"{field}_drop"] for b in bs], dtype=float)
            cis = [steps[b].get(f"{field}_ci") for b in bs]
            lo = np.asarray([c[0] if c else m for c, m in zip(cis, mean)], dtype=float)
            hi = np.asarray([c[1] if c else m for c, m in zip(cis, mean)], dtype=float)
            ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt=style, color=color, capsize=3, ms=4, label=text)
        ax.set_xscale("log", base=2)
        ax.set_xticks(x if len(x) else [1])
        ax.set_xticklabels([str(int(b)) for b in x] if len(x) else ["1"])
        ax.set_xlabel("pairs masked (B)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("drop in target probability")
    fig.suptitle(_title(name), fontsize=10)
    fig.tight_layout()
    return _figure(
        fig, f"pair masking of {_title(name)}",
        f"{_e(_title(name))}: mean drop in the predicted label's probability (0 to 1) when both tokens of the top B "
        "cross-modal pairs are masked (ranked by Shapley interaction, left, or by redundancy gap, right) against "
        "B random candidate pairs with the same number of distinct tokens; bars: 95 % confidence intervals of the "
        "mean over examples (Student t).",
    )


def _routing_figure(name: str, agg: dict[str, Any]) -> str:
    plt = _pyplot()
    weights = agg.get("routing_weights") or {}
    experts = list(weights)
    groups = {"all examples": {x: weights[x]["mean"] for x in experts}}
    if len(experts) > 1:  # one expert always has weight 1
        groups.update(agg.get("routing_weights_by_kind") or {})
    fig, ax = plt.subplots(figsize=(max(3.6, 1.1 * len(experts) + 2), 2.8))
    width = 0.8 / len(groups)
    x = np.arange(len(experts))
    for j, (group, values) in enumerate(groups.items()):
        ax.bar(x + j * width - 0.4 + width / 2, [values[e] if values[e] is not None else 0 for e in experts], width,
               label=group, color=f"C{j}" if j else "0.3")
    ax.set_xticks(x)
    ax.set_xticklabels(experts, rotation=15, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean router weight (0 to 1)")
    ax.grid(alpha=0.3, axis="y")
    if len(groups) > 1:
        ax.legend(fontsize=7, ncols=2)
    ax.set_title(_title(name), fontsize=10)
    fig.tight_layout()
    return _figure(
        fig, f"routing weights of {_title(name)}",
        f"{_e(_title(name))}: the router's weight on each expert (its share of the prediction, the weights of one "
        "example sum to 1), averaged over all examples (dark) and over the examples of each kind.",
    )


def _heatmap_figure(name: str, exp, image, modality: str) -> str:
    plt = _pyplot()
    heads = list(exp.maps)
    cols = min(len(heads), 3)
    rows = math.ceil(len(heads) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[len(heads):]:
        ax.set_axis_off()
    for ax, head in zip(axes.flat, heads):
        if image is not None:
            exp.plot_heatmap(image, modality=modality, head=head, ax=ax)
        else:
            ax.imshow(exp.heatmap_array(modality, head), cmap="jet", interpolation="nearest")
            ax.set_title(f"{head}: {modality}", fontsize=9)
            ax.set_axis_off()
    fig.tight_layout()
    return _figure(
        fig, f"{modality} heatmaps of {_title(name)}",
        f"Each head's importance of each {_e(modality)} region (grid cell), laid over the input: red = the head's "
        "most important region, blue = unimportant (scaled so the top region of each head is 1).",
    )


def _pairs_figure(name: str, exp, image, kind: str, text_mod: str, image_mod: str) -> str:
    score = "Shapley interaction index (SII)" if kind == "synergy" else "redundancy gap (RG)"
    fig = exp.plot_pairs(image, kind=kind, k=3, text_modality=text_mod, image_modality=image_mod)
    return _figure(
        fig, f"{kind} pairs of {_title(name)}",
        f"The top 3 {kind} pairs: a line from the caption token to the image region; the label on each region is the "
        f"pair's {score}, in {_e(_output_unit(exp))}.",
    )


def _output_unit(exp) -> str:
    return OUTPUT_UNITS.get(exp.output, exp.output)


# ------------------------------------------------------------------------------------------ tables
def _table(headers: list[tuple[str, str]], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; each header is (short name, what it measures in words) and shows the words under the name."""
    head = "".join(f'<th>{_e(h)}<div class="unit">{_e(u)}</div></th>' for h, u in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _aopc_table(agg: dict[str, Any]) -> str:
    rows = []
    for head, by_mod in (agg.get("faithfulness") or {}).items():
        for modality, c in by_mod.items():
            rows.append([_e(head), _e(modality), _num(c.get("aopc_comprehensiveness")),
                         _num(c.get("random_aopc_comprehensiveness")), _num(c.get("comprehensiveness_gap")),
                         _num(c.get("aopc_sufficiency")), _num(c.get("random_aopc_sufficiency")),
                         _num(c.get("sufficiency_gap"))])
    return _table(
        [("head", "whose map and output"), ("modality", "tokens ranked (all = jointly)"),
         ("comp. AOPC", "mean drop in target probability over K, top tokens removed (0 to 1)"),
         ("random", "the same, random tokens removed"),
         ("comp. gap", "map minus random; > 0: the map beats random"),
         ("suff. AOPC", "mean drop in target probability over K, only top tokens kept (0 to 1)"),
         ("random", "the same, only random tokens kept"),
         ("suff. gap", "random minus map; > 0: the map beats random")],
        rows,
    )


def _concentration_table(agg: dict[str, Any]) -> str:
    rows = []
    for head, c in (agg.get("concentration") or {}).items():
        for modality in c.get("entropy", {}):
            rows.append([_e(head), _e(modality), _num(c["entropy"][modality]), _num(c["top_mass"][modality]),
                         str(c.get("n_players", {}).get(modality, "n/a"))])
    top = next(iter((agg.get("concentration") or {}).values()), {}).get("top_fraction", 0.1)
    return _table(
        [("head", "whose map"), ("modality", "players counted (all = jointly)"),
         ("entropy", "normalised entropy of the map: 0 = all mass on one token, 1 = uniform"),
         (f"top-{100 * top:.0f} % mass", f"share of the map's mass on its top {100 * top:.0f} % of tokens (0 to 1)"),
         ("tokens", "players in the first example (words and regions)")],
        rows,
    )


def _specificity_table(agg: dict[str, Any]) -> str:
    jac = agg.get("specificity_mean_jaccard") or {}
    share = agg.get("specificity_mass_share") or {}
    rows = [["expert overlap", _e(m), _num(jac.get(m)) if jac.get(m) is not None and math.isfinite(jac.get(m))
             else "n/a (one expert: nothing to compare)"] for m in jac]
    for head, by_mod in share.items():
        for m, v in by_mod.items():
            rows.append([f"mass share of {_e(head)}", _e(m), _num(v)])
    return _table(
        [("measure", "expert overlap: mean Jaccard overlap of two experts' top-10 % token sets (0 = disjoint, "
                     "1 = identical; lower = more specific); mass share: the head's share of its map on the modality"),
         ("modality", "tokens compared"), ("value", "0 to 1")],
        rows,
    )


def _pair_table(agg: dict[str, Any]) -> str:
    rows = []
    for key, label in (("sii", "SII"), ("redundancy_gap", "RG")):
        for b, r in sorted((agg.get("pair_masking") or {}).get(key, {}).items(), key=lambda kv: int(kv[0])):
            test = r.get("test") or {}
            rows.append([label, b, f"{_num(r['ranked_drop'])} {_ci(r.get('ranked_ci'))}",
                         f"{_num(r['random_drop'])} {_ci(r.get('random_ci'))}", _num(test.get("mean_difference")),
                         _p(test.get("p_value")), str(r["n"])])
    return _table(
        [("ranked by", "SII: Shapley interaction; RG: redundancy gap"), ("B", "pairs masked"),
         ("ranked drop [95 % CI]", "mean drop in target probability (0 to 1), top B pairs masked"),
         ("random drop [95 % CI]", "the same, B random pairs with as many distinct tokens"),
         ("difference", "mean over examples of ranked minus random drop"),
         ("p-value", "one-sided Wilcoxon signed-rank test, paired by example: the chance of a difference this large "
                     "if ranked pairs hurt no more than random ones"),
         ("n", "examples")],
        rows,
    )


def _routing_table(agg: dict[str, Any]) -> str:
    rows = []
    for expert, w in (agg.get("routing_weights") or {}).items():
        rows.append([_e(expert), _num(w.get("mean")), _ci(w.get("ci")), _e(_HEAD_ROLES.get(expert, ""))])
    return _table(
        [("expert", "one of the mixture's experts"), ("mean weight", "the router's weight on the expert, 0 to 1 (an example's weights sum to 1)"),
         ("95 % CI", "confidence interval of the mean over examples"), ("role", "what the expert was trained for")],
        rows,
    )


# ------------------------------------------------------------------------------------------ examples
def _token_highlights(exp, modality: str) -> str:
    from .explain.results import shown_tokens

    rows = []
    tokens = exp.tokens.get(modality, [])
    for head, by_mod in exp.maps.items():
        scores = np.asarray(by_mod.get(modality, []), dtype=float)
        top = float(scores.max()) if scores.size and scores.max() > 0 else 1.0
        spans = []
        for _, tok, s in shown_tokens(tokens, scores):
            shade = max(float(s), 0.0) / top
            spans.append(f'<span class="tok" style="background: rgba(215, 48, 39, {0.85 * shade:.2f})" '
                         f'title="importance {s:.4g} ({100 * shade:.0f} % of the top token)">{_e(tok)}</span>')
        rows.append(f'<div class="tokrow"><span class="head">{_e(head)}</span>{" ".join(spans)}</div>')
    return (f'<div class="tokens">{"".join(rows)}</div><p class="unit">Caption tokens per head: the darker the red, '
            "the more important the token to that head (scaled so the head's top token is darkest; hover for the "
            "value).</p>")


def _example_pairs_table(exp) -> str:
    unit = _output_unit(exp)
    regions = "token position in the other modality"
    grids = [g for p in exp.synergy_pairs[:1] + exp.redundancy_pairs[:1] if (g := exp.grids.get(p.modality_b))]
    if grids and grids[0][0] > 1:
        regions = f"region index on the {grids[0][0]} x {grids[0][1]} grid (row x {grids[0][1]} + column, from 0)"
    rows = []
    for kind, pairs in (("synergy", exp.synergy_pairs), ("redundancy", exp.redundancy_pairs)):
        for p in pairs[:3]:
            rows.append([kind, _e(p.token_a), f"{_e(p.modality_b)} {p.position_b}",
                         f"{_signed(p.sii)} ± {_num(p.sii_se)}", f"{_signed(p.redundancy_gap)} ± {_num(p.redundancy_gap_se)}"])
    return _table(
        [("kind", "top synergistic or redundant pair"), ("token", "caption token"),
         ("region", regions),
         ("SII ± s.e.", f"Shapley interaction, {unit}; > 0: the pair is worth more together"),
         ("RG ± s.e.", f"redundancy gap, {unit}; > 0: either token alone carries the evidence")],
        rows, cls="small",
    )


def _example_column(name: str, exp, images: dict[str, Any]) -> str:
    prob = exp.probabilities.get(exp.label)
    parts = [f"<h4>{_e(_title(name))}</h4>",
             f"<p>Prediction: <b>{_e(exp.label)}</b> (probability {_num(prob)}, 0 to 1). Router weights (share of the "
             "prediction, 0 to 1): " + ", ".join(f"{_e(k)} {_num(v, 2)}" for k, v in exp.routing_weights.items())
             + f". Spent {exp.evaluations} of {exp.budget} coalition evaluations (forward passes on masked "
             f"inputs) in {exp.seconds:.1f} s.</p>"]
    grids = {m: g for m, g in exp.grids.items() if len(g) == 2 and g[0] > 1}
    text_mods = [m for m in exp.tokens if m not in grids]
    for m in text_mods:
        parts.append(_token_highlights(exp, m))
    for m in grids:
        parts.append(_heatmap_figure(name, exp, images.get(m), m))
    if text_mods and grids:
        text_mod, image_mod = text_mods[0], next(iter(grids))
        if images.get(image_mod) is not None:
            for kind, pairs in (("synergy", exp.synergy_pairs), ("redundancy", exp.redundancy_pairs)):
                if pairs:
                    parts.append(_pairs_figure(name, exp, images[image_mod], kind, text_mod, image_mod))
    parts.append(_example_pairs_table(exp))
    return '<div class="col">' + "".join(parts) + "</div>"


def _example_section(entry: dict[str, Any], label_names: dict[int, str], root: Path | None) -> str:
    from PIL import Image

    from .explain.results import Explanation

    images, texts = {}, []
    for m, value in (entry.get("inputs") or {}).items():
        if "image" in value and root is not None and (root / value["image"]).is_file():
            with Image.open(root / value["image"]) as img:
                images[m] = img.convert("RGB")
        elif "text" in value:
            texts.append(f"<b>{_e(m)}</b>: “{_e(value['text'])}”")
    label = entry.get("label")
    truth = f", true label <b>{_e(label_names.get(label, label))}</b>" if label is not None else ""
    kind = f" (kind <b>{_e(entry['kind'])}</b>)" if entry.get("kind") else ""
    cols = [_example_column(name, Explanation.from_dict(d), images) for name, d in entry["explanations"].items()]
    return (f'<section class="example"><h3>Example {entry["index"]}{kind}{truth}</h3><p>{" ".join(texts)}</p>'
            f'<div class="side">{"".join(cols)}</div></section>')


# ------------------------------------------------------------------------------------------ page
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
.side { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 1.5em; }
.col { min-width: 0; }
figure { margin: .5em 0; } img.figure { max-width: 100%; height: auto; }
figcaption, .unit { font-size: .82em; color: #555; }
th .unit { font-weight: normal; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
table.small { font-size: .8em; }
.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: .5em .8em; }
.tokrow { margin: .2em 0; line-height: 1.9; } .tokrow .head { display: inline-block; width: 10.5em; font-size: .8em; color: #555; }
.tok { padding: .1em .25em; border-radius: 3px; }
.example { border-top: 1px dashed #bbb; margin-top: 1.2em; }
"""


def _k_list(models: dict[str, Any]) -> str:
    for agg in models.values():
        for curve in ((agg.get("faithfulness_curves") or {}).get("mixture") or {}).values():
            return ", ".join(f"{k:g}" for k in curve["k_percent"])
    return "5, 10, 15, 20, 25"


def _side(blocks: list[str]) -> str:
    """The models' blocks in columns, side by side."""
    return '<div class="side">' + "".join(f'<div class="col">{b}</div>' for b in blocks) + "</div>"


def _summary_table(models: dict[str, Any]) -> str:
    """The headline numbers of every model in one table (mixture head, all modalities jointly)."""
    def faith(agg, key):
        return ((agg.get("faithfulness") or {}).get("mixture") or {}).get("all", {}).get(key)

    def conc(agg):
        return ((agg.get("concentration") or {}).get("mixture") or {}).get("entropy", {}).get("all")

    def overlap(agg):
        value = (agg.get("specificity_mean_jaccard") or {}).get("all")
        return _num(value) if value is not None and math.isfinite(value) else "n/a (one expert)"

    def pairs(agg, key):
        step = ((agg.get("pair_masking") or {}).get(key) or {}).get("1") or {}
        test = step.get("test") or {}
        return f"{_num(test.get('mean_difference'))} (p = {_p(test.get('p_value'))})" if step else "n/a"

    measures = [
        ("comprehensiveness gap", "map minus random, mean drop in target probability (0 to 1) over K; > 0: faithful",
         lambda a: _num(faith(a, "comprehensiveness_gap"))),
        ("sufficiency gap", "random minus map, mean drop in target probability (0 to 1) over K; > 0: faithful",
         lambda a: _num(faith(a, "sufficiency_gap"))),
        ("map entropy", "normalised entropy of the mixture's map: 0 = one token, 1 = uniform", lambda a: _num(conc(a))),
        ("expert overlap", "mean Jaccard overlap of the experts' top-10 % tokens: 0 = disjoint, 1 = identical",
         overlap),
        ("top SII pair vs random", "ranked minus random drop in target probability when masking 1 pair, one-sided "
                                   "Wilcoxon p-value", lambda a: pairs(a, "sii")),
        ("top RG pair vs random", "the same, the pair ranked by redundancy gap", lambda a: pairs(a, "redundancy_gap")),
    ]
    rows = [[f"<b>{_e(m)}</b>", *[f(models[n]) for n in models], _e(words)] for m, words, f in measures]
    return _table([("measure", "mixture head, both modalities"), *[(_title(n), "this model") for n in models],
                   ("meaning", "what the number measures, in which unit")], rows)


def render_report(report: dict[str, Any], examples: list[dict[str, Any]] | None = None,
                  root: str | os.PathLike | None = None) -> str:
    """The report page as one HTML string. `report`: the dict of `explain_report.json`; `examples`: the list of
    `examples.json`, whose image paths are relative to `root`."""
    models = report.get("models") or {}
    names = list(models)
    root = Path(root) if root is not None else None
    label_names = {int(k): v for k, v in (report.get("id2label") or {}).items()}

    header = [f"<h1>Explanation report: {' and '.join(_e(_title(n)) for n in names)}</h1>",
              "<p>" + "<br>".join(filter(None, [
                  f"Checkpoint: <code>{_e(report.get('checkpoint'))}</code>",
                  f"Dense baseline: <code>{_e(report['dense_checkpoint'])}</code>" if report.get("dense_checkpoint") else "",
                  f"Split <b>{_e(report.get('split'))}</b>: {report.get('n_examples')} examples explained, each with a "
                  f"budget of {report.get('budget')} coalition evaluations (forward passes of the model on masked "
                  "inputs) per model.",
              ])) + "</p>"]
    for name, locality in (report.get("feature_locality") or {}).items():
        note = feature_locality_note(locality)
        if note:
            header.append(f'<p class="note">{_e(_title(name))}: {_e(note)}</p>')
    header.append('<p>Contents: <a href="#summary">summary</a> · <a href="#faithfulness">faithfulness</a> · <a href="#concentration">concentration and '
                  'specificity</a> · <a href="#pairs">pair masking</a> · <a href="#routing">routing</a> · '
                  '<a href="#examples">examples</a></p>')

    sections = ['<h2 id="summary">Summary</h2>', _summary_table(models),
                '<h2 id="faithfulness">Faithfulness: masking the top-K % tokens of each map</h2>',
                "<p>Does a head's map point at the tokens its prediction depends on? Remove the map's top K % of a "
                "modality's tokens (comprehensiveness: the probability should drop more than when removing random "
                "tokens) or keep only them (sufficiency: it should drop less than with random tokens kept), for "
                f"K = {_k_list(models)} %. AOPC is the mean over K.</p>"]
    sections.append(_side([_faithfulness_figure(n, (models[n].get("faithfulness_curves") or {}).get("mixture", {}),
                                               "mixture") for n in names]))
    sections.append(_side([f"<h4>{_e(_title(n))}: AOPC of every head</h4>" + _aopc_table(models[n]) for n in names]))

    sections += ['<h2 id="concentration">Concentration and specificity of the maps</h2>',
                 "<p>Means over examples. A concentrated map puts its mass on few tokens; specific experts look at "
                 "different tokens from each other.</p>"]
    sections.append(_side([f"<h4>{_e(_title(n))}: concentration</h4>" + _concentration_table(models[n]) for n in names]))
    sections.append(_side([f"<h4>{_e(_title(n))}: specificity</h4>" + _specificity_table(models[n]) for n in names]))

    sections += ['<h2 id="pairs">Pair masking: ranked pairs against random pairs</h2>',
                 "<p>Mask both tokens of the B cross-modal pairs ranked highest by their Shapley interaction (SII) or "
                 "redundancy gap (RG), and compare the drop with B random candidate pairs (10 draws per example, as "
                 "many distinct tokens). If the ranking finds pairs that matter, the ranked drop is above the random "
                 "one and the paired test's p-value is small.</p>"]
    sections.append(_side([_pair_masking_figure(n, models[n].get("pair_masking") or {}) for n in names]))
    sections.append(_side([f"<h4>{_e(_title(n))}</h4>" + _pair_table(models[n]) for n in names]))

    sections += ['<h2 id="routing">Routing: the weight of each expert</h2>']
    sections.append(_side([_routing_figure(n, models[n]) + _routing_table(models[n]) if models[n].get("routing_weights")
                          else f"<p>{_e(_title(n))}: no routing weights recorded.</p>" for n in names]))

    sections += ['<h2 id="examples">Examples explained</h2>']
    if examples:
        sections += [_example_section(entry, label_names, root) for entry in examples]
    else:
        sections.append("<p>No examples were drawn.</p>")

    title = f"FL-I2MoE explanation report ({_e(report.get('split'))})"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{_CSS}</style></head><body>"
            + "".join(header) + "".join(sections) + "</body></html>\n")


def write_report(output_dir: str | os.PathLike) -> Path:
    """Write `report.html` into a folder holding `fli2moe explain`'s `explain_report.json` (and `examples.json`)."""
    out = Path(output_dir)
    source = out / "explain_report.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: run `fli2moe explain` with --output-dir {out} first")
    report = json.loads(source.read_text())
    examples_file = out / "examples.json"
    examples = json.loads(examples_file.read_text()) if examples_file.is_file() else []
    path = out / "report.html"
    path.write_text(render_report(report, examples, out), encoding="utf-8")
    return path
