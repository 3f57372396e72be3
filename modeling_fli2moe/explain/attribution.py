"""Expert-wise token attribution maps for one example.

One map per expert (from that expert's own target logit) and one for the mixture, by

- ``attn_rollout_grad`` (default): gradient-weighted attention rollout. Per layer
  ``mean_heads(relu(A) * relu(dA)) + I``, row-normalised, multiplied over layers; a token's importance
  is the mean over the (valid) query rows. ``A`` is the expert's own attention map and ``dA`` the
  gradient of the head's target logit with respect to it. Our choice for the mixture: the
  router-weighted sum ``sum_e w_e * rollout_e`` where ``rollout_e`` uses expert e's maps and the
  gradient of expert e's logit *at the mixture's target*; since the mixture logit is
  ``sum_e w_e logit_e`` and the router does not see the attention maps, this is the gradient of the
  mixture logit with respect to expert e's maps divided by ``w_e`` (so ``relu(dA)`` keeps its scale
  against the identity), then weighted by ``w_e`` at the end.
- ``integrated_gradients``: captum's `IntegratedGradients` on the raw features, baseline = the
  modality's dataset-mean token (the masking fill), summed over the feature dimension, absolute value.
- ``gradient_x_input``: `|sum_d grad_d * (x_d - mean_d)|` with the same mean-token reference as IG
  (with zero means it is the classical gradient x input; it is IG with a single step).
- ``occlusion``: each player's first-order effect on the head's own game (see `occlusion.py`):
  `(|v(N) - v(N without i)| + |v({i}) - v(empty)|) / 2`, absent tokens filled with the mean token as in every
  game, spread evenly over the player's tokens (`groups`: e.g. word-pieces into words). It measures
  what masking does, so it is what top-K% masking and pair search are checked against; it costs
  `2 * n_players` evaluations per head.

All heads are done together: rollout runs one forward with attention maps and two backward passes
(the experts' targets share one, since expert e's logit depends only on expert e's maps); the gradient
methods replicate the example once per head along the batch, so every head's gradient comes out of one
backward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._utils import check_target, eager_attention, eval_mode, resolve_head, select_target, target_values
from .game import ExplainedExample, require_example
from .results import AttributionMaps

__all__ = ["ATTRIBUTION_METHODS", "attribute", "default_heads", "rollout"]

ATTRIBUTION_METHODS = ("occlusion", "attn_rollout_grad", "integrated_gradients", "gradient_x_input")


def default_heads(model: Any) -> list[str]:
    """Every expert and the mixture (only the mixture for the dense baseline, whose one expert is it)."""
    if model.config.mixture == "dense":
        return ["mixture"]
    return list(model.config.expert_names) + ["mixture"]


def rollout(attentions: torch.Tensor, gradients: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """Gradient-weighted attention rollout, batched over a leading dimension.

    `attentions`, `gradients`: `(N, L, heads, T, T)`; `query_mask`: `(T,)` bool (rows averaged).
    Returns token importances `(N, T)`: per layer `mean_heads(relu(A) * relu(dA)) + I`, row-normalised,
    multiplied over layers (`R = Abar_L @ ... @ Abar_1`), then the mean over the masked query rows.
    """
    n, layers, _, t, _ = attentions.shape
    eye = torch.eye(t, dtype=attentions.dtype, device=attentions.device)
    relevance = eye.expand(n, t, t)
    for layer in range(layers):
        a = (attentions[:, layer].clamp_min(0) * gradients[:, layer].clamp_min(0)).mean(1) + eye
        a = a / a.sum(-1, keepdim=True)
        relevance = a @ relevance
    return relevance[:, query_mask].mean(1)


def _split(values: torch.Tensor, lengths: Sequence[int], names: Sequence[str]) -> dict[str, torch.Tensor]:
    return dict(zip(names, values.split(list(lengths), dim=-1)))


def attribute(
    example: ExplainedExample,
    method: str = "attn_rollout_grad",
    heads: Sequence[int | str] | None = None,
    target: int | Sequence[int] | None = None,
    n_steps: int = 32,
    internal_batch_size: int | None = None,
    groups: Mapping[str, Sequence[Sequence[int]]] | None = None,
    output: str = "logit",
    **game_kwargs: Any,
) -> AttributionMaps:
    """Token-importance maps of one example (B = 1) for every head in `heads`.

    Args:
        example: the `ExplainedExample` of one example (`ExplainedExample(model, features, attention_mask,
            player_mask)` or `Explainer.prepare`); its model (an `FLI2MoEModel`, interaction mixture or dense
            baseline) runs in eval mode, and `occlusion` shares its games' forwards.
        method: `"attn_rollout_grad"` (default), `"integrated_gradients"` or `"gradient_x_input"`.
        heads: `"mixture"`, expert names or indices; default: every expert and the mixture.
        target: labels to explain for every head; default: each head's own prediction (multi-label: its
            predicted-positive labels, top-1 if none).
        n_steps / internal_batch_size: integration steps and chunking of captum's IG.
        groups / output / game_kwargs: the players, value and options of the games `occlusion` runs
            (see `FeatureGame`; `groups` defaults to the example's); the gradient methods always explain
            the target logit.

    Returns `AttributionMaps` with non-negative maps `(T_m,)` per head and modality, zero at non-players.
    """
    example = require_example(example, "attribute")
    model = example.model
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {list(ATTRIBUTION_METHODS)}")
    head_names = [resolve_head(model, h) for h in (default_heads(model) if heads is None else heads)]
    if not head_names:
        raise ValueError("heads is empty; pass None for every expert and the mixture, or a list of heads")
    head_names = list(dict.fromkeys(head_names))
    names = list(model.modality_names)
    players = example.player_mask
    problem_type = model.config.problem_type
    expert_names = list(model.config.expert_names)

    with eval_mode(model):
        out = example.model_output()
        logits_by_head = {"mixture": out.logits[0]}
        logits_by_head.update({e: out.expert_logits[0, i] for i, e in enumerate(expert_names)})
        if target is None:
            targets = {h: select_target(logits_by_head[h], problem_type) for h in head_names}
        else:
            labels = check_target(target, out.logits.shape[-1])
            targets = {h: labels for h in head_names}
        weights = out.expert_weights[0].float()

        if method == "occlusion":
            raw = _occlusion_maps(example, head_names, targets, example.groups if groups is None else groups,
                                  output, game_kwargs)
        elif method == "attn_rollout_grad":
            raw = _rollout_maps(example, head_names, targets, weights)
        else:
            raw = _gradient_maps(example, head_names, targets, method, n_steps, internal_batch_size)

    maps = {}
    for h in head_names:
        maps[h] = {n: (raw[h][n].detach().float().cpu() * players[n]).clamp_min(0) for n in names}
    return AttributionMaps(
        method=method,
        maps=maps,
        player_mask=dict(players),
        targets=targets,
        expert_weights={e: float(weights[i]) for i, e in enumerate(expert_names)},
    )


def _occlusion_maps(
    example: ExplainedExample,
    head_names: list[str],
    targets: dict[str, list[int]],
    groups: Mapping[str, Sequence[Sequence[int]]] | None,
    output: str,
    game_kwargs: Mapping[str, Any],
) -> dict[str, dict[str, torch.Tensor]]:
    result = {}
    for h in head_names:
        game = example.game_for(h, target=targets[h], output=output, groups=groups, **game_kwargs)
        per_player = example.occlusion_effects(game).score / 2
        sizes = torch.tensor([len(p) for p in game.player_positions], dtype=torch.float64)
        result[h] = {n: m.float() for n, m in game.token_map(per_player / sizes).items()}
    return result


def _inputs(example: ExplainedExample) -> tuple[list[str], list[str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Modality names, expert names, float features and bool masks (on the model's device) of the gradient methods."""
    model = example.model
    feats = {n: example.features[n].float() for n in model.modality_names}
    return list(model.modality_names), list(model.config.expert_names), feats, example.attention_mask


def _rollout_maps(
    example: ExplainedExample, head_names: list[str], targets: dict[str, list[int]], weights: torch.Tensor
) -> dict[str, dict[str, torch.Tensor]]:
    model = example.model
    names, expert_names, feats, masks = _inputs(example)
    lengths = [feats[n].shape[1] for n in names]
    query_mask = torch.cat([masks[n][0] for n in names])
    with torch.enable_grad(), eager_attention(model):  # the implementation that returns the probabilities
        out = model(features=feats, attention_mask=masks, output_attentions=True)
        attentions = out.attentions  # L x (E, 1, heads, T, T)
        stacked = torch.stack([a[:, 0] for a in attentions], dim=1).detach()  # (E, L, heads, T, T)
        expert_logits = out.expert_logits[0]  # (E, C)
        objectives = []  # (kind, scalar): one backward per objective
        experts_wanted = [h for h in head_names if h != "mixture"]
        if experts_wanted:
            objectives.append(
                ("experts", sum(target_values(expert_logits[expert_names.index(h)][None], targets[h], "logit", None)[0]
                                for h in experts_wanted))
            )
        if "mixture" in head_names:
            # every expert's logit at the mixture's target: grad wrt expert e's maps = d(mixture)/dA_e / w_e
            objectives.append(("mixture", target_values(expert_logits, targets["mixture"], "logit", None).sum()))
        grads = {}
        for i, (kind, objective) in enumerate(objectives):
            g = torch.autograd.grad(objective, attentions, retain_graph=i + 1 < len(objectives))
            grads[kind] = torch.stack([x[:, 0] for x in g], dim=1)  # (E, L, heads, T, T)
    result = {}
    if "experts" in grads:
        per_expert = rollout(stacked, grads["experts"], query_mask)  # (E, T)
        for h in head_names:
            if h != "mixture":
                result[h] = _split(per_expert[expert_names.index(h)], lengths, names)
    if "mixture" in grads:
        per_expert = rollout(stacked, grads["mixture"], query_mask)  # (E, T)
        mixed = (weights.to(per_expert.dtype)[:, None] * per_expert).sum(0)
        result["mixture"] = _split(mixed, lengths, names)
    return result


def _gradient_maps(
    example: ExplainedExample,
    head_names: list[str],
    targets: dict[str, list[int]],
    method: str,
    n_steps: int,
    internal_batch_size: int | None,
) -> dict[str, dict[str, torch.Tensor]]:
    model = example.model
    names, expert_names, feats, masks = _inputs(example)
    h = len(head_names)
    means = model.get_modality_means()
    inputs = tuple(feats[n].expand(h, -1, -1).clone() for n in names)  # one row per head
    baselines = tuple(means[n].to(feats[n].dtype).expand_as(x).clone() for n, x in zip(names, inputs))
    mask_rows = tuple(masks[n].expand(h, -1).clone() for n in names)
    index = [(-1 if hd == "mixture" else expert_names.index(hd)) for hd in head_names]

    def head_values(*args: torch.Tensor) -> torch.Tensor:
        """`(N, heads)`: every head's target value for every row (captum picks column = row's head)."""
        xs, ms = args[: len(names)], args[len(names) :]
        out = model(features=dict(zip(names, xs)), attention_mask=dict(zip(names, ms)))
        columns = []
        for hd, i in zip(head_names, index):
            logits = out.logits if i < 0 else out.expert_logits[:, i]
            columns.append(target_values(logits, targets[hd], "logit", None))
        return torch.stack(columns, dim=-1)

    with torch.enable_grad():
        if method == "integrated_gradients":
            from captum.attr import IntegratedGradients

            attributions = IntegratedGradients(head_values).attribute(
                inputs,
                baselines=baselines,
                target=list(range(h)),
                additional_forward_args=mask_rows,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
            )
        else:
            leaves = tuple(x.requires_grad_(True) for x in inputs)
            values = head_values(*leaves, *mask_rows)  # (h, h)
            grads = torch.autograd.grad(values.diagonal().sum(), leaves)
            attributions = tuple(g * (x.detach() - b) for g, x, b in zip(grads, leaves, baselines))
    return {
        hd: {n: attributions[j][r].sum(-1).abs() for j, n in enumerate(names)} for r, hd in enumerate(head_names)
    }
