"""Expert-wise token attribution maps for one example: one class per method, captum style.

One map per expert (from that expert's own target logit) and one for the mixture, by
`Method(**options).attribute(example, heads=..., target=...)`, each method a class behind its name:

- ``attn_rollout_grad`` (`AttentionRolloutGrad`, `attribute`'s default): gradient-weighted attention rollout. Per layer
  ``mean_heads(relu(A) * relu(dA)) + I``, row-normalised, multiplied over layers; a token's importance
  is the mean over the (valid) query rows. ``A`` is the expert's own attention map and ``dA`` the
  gradient of the head's target logit with respect to it. Our choice for the mixture: the
  router-weighted sum ``sum_e w_e * rollout_e`` where ``rollout_e`` uses expert e's maps and the
  gradient of expert e's logit *at the mixture's target*; since the mixture logit is
  ``sum_e w_e logit_e`` and the router does not see the attention maps, this is the gradient of the
  mixture logit with respect to expert e's maps divided by ``w_e`` (so ``relu(dA)`` keeps its scale
  against the identity), then weighted by ``w_e`` at the end.
- ``integrated_gradients`` (`IntegratedGradients`): captum's `IntegratedGradients` on the raw features, baseline = the
  modality's dataset-mean token (the masking fill), summed over the feature dimension, absolute value.
- ``gradient_x_input`` (`GradientXInput`): `|sum_d grad_d * (x_d - mean_d)|` with the same mean-token reference as IG
  (with zero means it is the classical gradient x input; it is IG with a single step).
- ``occlusion`` (`Occlusion`): each player's first-order effect on the head's own game (see `occlusion.py`):
  `(|v(N) - v(N without i)| + |v({i}) - v(empty)|) / 2`, absent tokens filled with the mean token as in every
  game, spread evenly over the player's tokens (`groups`: e.g. word-pieces into words). It measures
  what masking does, so it is what top-K% masking and pair search are checked against; it costs
  `2 * n_players` evaluations per head.

All heads are done together: rollout runs one forward with attention maps and two backward passes
(the experts' targets share one, since expert e's logit depends only on expert e's maps); the gradient
methods replicate the example once per head along the batch, so every head's gradient comes out of one
backward pass.

`attribute(example, method=name, ...)` is the function form: it looks the class up by name in
`ATTRIBUTION_METHODS` (the registry `Explainer(method=...)` chooses from) and gives it the options it takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ._utils import check_target, eager_attention, eval_mode, resolve_head, select_target, target_values
from .game import ExplainedExample, require_example
from .results import AttributionMaps

__all__ = [
    "ATTRIBUTION_METHODS",
    "AttentionRolloutGrad",
    "AttributionMethod",
    "GradientXInput",
    "IntegratedGradients",
    "Occlusion",
    "attribute",
    "default_heads",
    "rollout",
]


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


# ------------------------------------------------------------------------------------------- methods
class AttributionMethod:
    """One attribution method: `attribute(example, heads=None, target=None)` gives the `AttributionMaps` of an
    `ExplainedExample` for every head in `heads`. A subclass sets `name` and computes the raw maps in `_maps`;
    its constructor takes the method's own options."""

    #: the method's name: `AttributionMaps.method`, and `method=` of `attribute` and `Explainer`
    name: ClassVar[str] = ""

    @classmethod
    def from_options(
        cls,
        *,
        n_steps: int,
        internal_batch_size: int | None,
        groups: Mapping[str, Sequence[Sequence[int]]] | None,
        output: str,
        game_options: Mapping[str, Any],
    ) -> AttributionMethod:
        """The method set up from `attribute`'s keyword arguments: each method takes the ones it uses."""
        return cls()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def attribute(
        self,
        example: ExplainedExample,
        heads: Sequence[int | str] | None = None,
        target: int | Sequence[int] | None = None,
    ) -> AttributionMaps:
        """Token-importance maps of `example` for every head in `heads`.

        Args:
            example: the `ExplainedExample` of one example; its model (an `FLI2MoEModel`, interaction mixture
                or dense baseline) runs in eval mode.
            heads: `"mixture"`, expert names or indices; default: every expert and the mixture.
            target: labels to explain for every head; default: each head's own prediction (multi-label: its
                predicted-positive labels, top-1 if none).

        Returns `AttributionMaps` with non-negative maps `(T_m,)` per head and modality, zero at non-players.
        """
        example = require_example(example, f"{type(self).__name__}.attribute")
        model = example.model
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
            raw = self._maps(example, head_names, targets, weights)

        maps = {}
        for h in head_names:
            maps[h] = {n: (raw[h][n].detach().float().cpu() * players[n]).clamp_min(0) for n in names}
        return AttributionMaps(
            method=self.name,
            maps=maps,
            player_mask=dict(players),
            targets=targets,
            expert_weights={e: float(weights[i]) for i, e in enumerate(expert_names)},
        )

    def _maps(
        self, example: ExplainedExample, head_names: list[str], targets: dict[str, list[int]], weights: torch.Tensor
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Raw maps `{head: {modality: (T_m,)}}` (masked to the players and clamped at 0 by `attribute`)."""
        raise NotImplementedError


class Occlusion(AttributionMethod):
    """Each player's first-order effect on the head's own game, spread evenly over its tokens.

    Args:
        groups: the players (see `FeatureGame`); default: the example's.
        output: the games' value (`logit`, `log_odds` or `probability`).
        game_options: the other options of the games (fill, chunk_size, autocast_dtype).
    """

    name = "occlusion"

    def __init__(
        self, groups: Mapping[str, Sequence[Sequence[int]]] | None = None, output: str = "logit", **game_options: Any
    ) -> None:
        self.groups = groups
        self.output = output
        self.game_options = dict(game_options)

    @classmethod
    def from_options(cls, *, n_steps, internal_batch_size, groups, output, game_options) -> Occlusion:
        return cls(groups=groups, output=output, **game_options)

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.game_options.items())
        return f"Occlusion(groups={self.groups!r}, output={self.output!r}{options})"

    def _maps(self, example, head_names, targets, weights):
        groups = example.groups if self.groups is None else self.groups
        result = {}
        games = [example.game_for(h, target=targets[h], output=self.output, groups=groups, **self.game_options)
                 for h in head_names]
        for h, game, effects in zip(head_names, games, example.occlusion_effects_of(games)):  # one pass for all heads
            per_player = effects.score / 2
            sizes = torch.tensor([len(p) for p in game.player_positions], dtype=torch.float64)
            result[h] = {n: m.float() for n, m in game.token_map(per_player / sizes).items()}
        return result


def _inputs(example: ExplainedExample) -> tuple[list[str], list[str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Modality names, expert names, float features and bool masks (on the model's device) of the gradient methods."""
    model = example.model
    feats = {n: example.features[n].float() for n in model.modality_names}
    return list(model.modality_names), list(model.config.expert_names), feats, example.attention_mask


class AttentionRolloutGrad(AttributionMethod):
    """Gradient-weighted attention rollout of every expert; the mixture's map is the router-weighted sum of the
    experts' rollouts at the mixture's target (see the module docstring)."""

    name = "attn_rollout_grad"

    def _maps(self, example, head_names, targets, weights):
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
                expert_values = (
                    target_values(expert_logits[expert_names.index(h)][None], targets[h], "logit", None)[0]
                    for h in experts_wanted
                )
                objectives.append(("experts", sum(expert_values)))
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


class _FeatureGradient(AttributionMethod):
    """A gradient method on the frozen features against the modality's dataset-mean token: the example is
    replicated once per head along the batch, so every head's gradient comes out of one backward pass; a
    subclass turns the per-head values into attributions (`_attributions`)."""

    def _attributions(
        self,
        head_values: Any,
        inputs: tuple[torch.Tensor, ...],
        baselines: tuple[torch.Tensor, ...],
        mask_rows: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _maps(self, example, head_names, targets, weights):
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
            attributions = self._attributions(head_values, inputs, baselines, mask_rows)
        return {
            hd: {n: attributions[j][r].sum(-1).abs() for j, n in enumerate(names)} for r, hd in enumerate(head_names)
        }


class IntegratedGradients(_FeatureGradient):
    """captum's Integrated Gradients on the frozen features, baseline the modality's dataset-mean token.

    Args:
        n_steps: integration steps.
        internal_batch_size: rows per forward pass inside captum (default: all at once).
    """

    name = "integrated_gradients"

    def __init__(self, n_steps: int = 32, internal_batch_size: int | None = None) -> None:
        self.n_steps = n_steps
        self.internal_batch_size = internal_batch_size

    @classmethod
    def from_options(cls, *, n_steps, internal_batch_size, groups, output, game_options) -> IntegratedGradients:
        return cls(n_steps=n_steps, internal_batch_size=internal_batch_size)

    def __repr__(self) -> str:
        return f"IntegratedGradients(n_steps={self.n_steps}, internal_batch_size={self.internal_batch_size})"

    def _attributions(self, head_values, inputs, baselines, mask_rows):
        from captum.attr import IntegratedGradients as CaptumIntegratedGradients

        return CaptumIntegratedGradients(head_values).attribute(
            inputs,
            baselines=baselines,
            target=list(range(inputs[0].shape[0])),  # row r is head r's copy of the example
            additional_forward_args=mask_rows,
            n_steps=self.n_steps,
            internal_batch_size=self.internal_batch_size,
        )


class GradientXInput(_FeatureGradient):
    """`|sum_d grad_d (x_d - mean_d)|`: the gradient times the input's difference from the mean-token reference."""

    name = "gradient_x_input"

    def _attributions(self, head_values, inputs, baselines, mask_rows):
        leaves = tuple(x.requires_grad_(True) for x in inputs)
        values = head_values(*leaves, *mask_rows)  # (h, h)
        grads = torch.autograd.grad(values.diagonal().sum(), leaves)
        return tuple(g * (x.detach() - b) for g, x, b in zip(grads, leaves, baselines))


#: the attribution methods by name: the registry `attribute` and `Explainer(method=..., candidates=...)` choose from
ATTRIBUTION_METHODS: dict[str, type[AttributionMethod]] = {
    method.name: method for method in (Occlusion, AttentionRolloutGrad, IntegratedGradients, GradientXInput)
}


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
    """Token-importance maps of one example for every head in `heads`, by the method named `method`.

    Args:
        example: the `ExplainedExample` of one example (`ExplainedExample(model, features, attention_mask,
            player_mask)` or `Explainer.prepare`); `occlusion` shares its games' forwards.
        method: a name in `ATTRIBUTION_METHODS`: `"attn_rollout_grad"` (default), `"integrated_gradients"`,
            `"gradient_x_input"` or `"occlusion"`.
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
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {list(ATTRIBUTION_METHODS)}")
    attributor = ATTRIBUTION_METHODS[method].from_options(
        n_steps=n_steps, internal_batch_size=internal_batch_size, groups=groups, output=output, game_options=game_kwargs
    )
    return attributor.attribute(example, heads=heads, target=target)
