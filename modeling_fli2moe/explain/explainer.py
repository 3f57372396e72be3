"""`Explainer(model).explain(...)`: one example, explained expert by expert and pair by pair."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .attribution import attribute
from .explanation import Explanation, InteractionPair, grid_shape
from .game import FeatureGame
from .shapley import shapley_interactions

Progress = Callable[[float, str], None]


class Explainer:
    """Explains FL-I2MoE (or the dense baseline) predictions.

    Args:
        model: an `FLI2MoEModel`.
        processor: an `FLI2MoEProcessor`, needed only to explain raw inputs (strings, images).
        method: attribution method (`attn_rollout_grad`, `integrated_gradients`, `gradient_x_input`).
        autocast_dtype: evaluate coalitions under autocast (e.g. `torch.bfloat16` on CPUs with AMX or GPUs).
        chunk_size: coalitions per forward pass.
    """

    def __init__(
        self,
        model: Any,
        processor: Any = None,
        method: str = "attn_rollout_grad",
        autocast_dtype: torch.dtype | None = None,
        chunk_size: int = 512,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.method = method
        self.autocast_dtype = autocast_dtype
        self.chunk_size = chunk_size

    # ----------------------------------------------------------------- inputs
    def _prepare(self, inputs, features, attention_mask, player_mask, tokens):
        if inputs is not None:
            if self.processor is None:
                raise ValueError("raw inputs need a processor: Explainer(model, FLI2MoEProcessor.from_pretrained(ckpt))")
            enc = self.processor(inputs)
            features, attention_mask, player_mask = enc["features"], enc["attention_mask"], enc["player_mask"]
            tokens = {n: t[0] for n, t in (enc.get("tokens") or {}).items() if t}
            truncated = [n for n, flags in enc.get("truncated", {}).items() if any(flags)]
        else:
            truncated = []
            if features is None:
                raise ValueError("give either raw `inputs` or `features` (with attention_mask / player_mask)")
        names = self.model.modality_names
        features = {n: (f if f.dim() == 3 else f.unsqueeze(0)) for n, f in features.items()}
        if any(f.shape[0] != 1 for f in features.values()):
            raise ValueError("Explainer.explain explains one example at a time: pass tensors with batch size 1")
        if attention_mask is not None:
            attention_mask = {n: (m if m.dim() == 2 else m.unsqueeze(0)) for n, m in attention_mask.items()}
        tokens = dict(tokens or {})
        for n in names:
            if n in features and not tokens.get(n):
                t = features[n].shape[1]
                rows, cols = grid_shape(t)
                tokens[n] = [f"{n} {i // cols},{i % cols}" if rows > 1 else f"{n} {i}" for i in range(t)]
        return features, attention_mask, player_mask, tokens, truncated

    # ---------------------------------------------------------------- explain
    def explain(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        features: Mapping[str, torch.Tensor] | None = None,
        attention_mask: Mapping[str, torch.Tensor] | None = None,
        player_mask: Mapping[str, torch.Tensor] | None = None,
        tokens: Mapping[str, list[str]] | None = None,
        budget: int = 1024,
        n_candidates: int = 8,
        random_state: int | None = None,
        heads: Sequence[str] | None = None,
        expert_pairs: bool = False,
        expert_budget: int | None = None,
        faithfulness: bool = True,
        pair_masking: bool = True,
        top_k: int = 5,
        progress: Progress | None = None,
    ) -> Explanation:
        """Explain one example: prediction, routing, attribution maps, top synergistic and redundant pairs.

        `budget` bounds the coalition evaluations of the pair estimates on the mixture; `n_candidates`
        tokens per modality (by the mixture's attribution) form the candidate cross-modal pairs;
        `expert_pairs=True` also estimates SII/RG with each expert as the value function.
        """
        t0 = time.perf_counter()
        step = progress or (lambda frac, desc: None)
        model = self.model
        cfg = model.config
        names = model.modality_names
        features, attention_mask, player_mask, tokens, truncated = self._prepare(
            inputs, features, attention_mask, player_mask, tokens
        )
        notes = [f"the {n} input was truncated to the encoder's max tokens" for n in truncated]

        with torch.inference_mode():
            out = model(features, attention_mask)
        logits = out.logits[0].float()
        multi = cfg.problem_type == "multi_label_classification"
        probs = torch.sigmoid(logits) if multi else torch.softmax(logits, -1)
        labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        label_index = int(probs.argmax())
        expert_names = list(cfg.expert_names)
        routing = {e: float(w) for e, w in zip(expert_names, out.expert_weights[0].tolist())}
        expert_probs = torch.sigmoid(out.expert_logits[0]) if multi else torch.softmax(out.expert_logits[0].float(), -1)
        expert_predictions = {e: {labels[c]: float(expert_probs[i, c]) for c in range(len(labels))}
                              for i, e in enumerate(expert_names)}

        step(0.05, "attribution maps (per expert and mixture)")
        head_list = list(heads) if heads is not None else (
            ["mixture"] + (expert_names if cfg.mixture == "interaction" else []))
        maps = attribute(model, features, attention_mask, player_mask, method=self.method, heads=head_list)

        step(0.25, "Shapley interactions of the candidate pairs")
        game = self._game(features, attention_mask, player_mask, "mixture")
        pairs = self.candidate_pairs(game, maps.maps["mixture"], n_candidates)
        result = shapley_interactions(game, game.n_players, pairs, budget, random_state=random_state,
                                      batch_size=self.chunk_size)
        synergy, redundancy = self._ranked_pairs(game, result, tokens, "mixture", top_k)
        evaluations = int(result.evaluations)

        per_expert: dict[str, dict[str, list[InteractionPair]]] = {}
        if expert_pairs and cfg.mixture == "interaction":
            for i, e in enumerate(expert_names):
                step(0.45 + 0.2 * i / len(expert_names), f"pairs of the {e} expert")
                g = self._game(features, attention_mask, player_mask, e)
                r = shapley_interactions(g, g.n_players, pairs, expert_budget or budget, random_state=random_state,
                                         batch_size=self.chunk_size)
                syn_e, red_e = self._ranked_pairs(g, r, tokens, e, top_k)
                per_expert[e] = {"synergy": syn_e, "redundancy": red_e}
                evaluations += int(r.evaluations)

        faith: dict[str, Any] = {}
        if faithfulness:
            step(0.7, "faithfulness: top-K% masking against random tokens")
            faith = self._faithfulness(features, attention_mask, player_mask, maps, head_list, random_state)
        masking: dict[str, Any] = {}
        if pair_masking:
            step(0.85, "masking the top pairs against random pairs")
            prob_game = FeatureGame(model, features, attention_mask, player_mask, head="mixture", output="probability",
                                    chunk_size=self.chunk_size, autocast_dtype=self.autocast_dtype)
            masking = self._pair_masking(prob_game, result, random_state)

        step(1.0, "done")
        return Explanation(
            label=labels[label_index],
            label_index=label_index,
            probabilities={labels[c]: float(probs[c]) for c in range(len(labels))},
            expert_names=expert_names,
            routing_weights=routing,
            expert_predictions=expert_predictions,
            method=self.method,
            tokens={n: list(tokens[n]) for n in names},
            grids={n: grid_shape(features[n].shape[1]) for n in names},
            maps={h: {n: [float(v) for v in maps.maps[h][n].tolist()] for n in names} for h in maps.maps},
            synergy_pairs=synergy,
            redundancy_pairs=redundancy,
            expert_pairs=per_expert,
            faithfulness=faith,
            pair_masking=masking,
            budget=int(budget),
            evaluations=evaluations,
            seconds=time.perf_counter() - t0,
            notes=notes,
        )

    # ---------------------------------------------------------------- pieces
    def _game(self, features, attention_mask, player_mask, head: str) -> FeatureGame:
        return FeatureGame(self.model, features, attention_mask, player_mask, head=head, chunk_size=self.chunk_size,
                           autocast_dtype=self.autocast_dtype)

    @staticmethod
    def candidate_pairs(game: FeatureGame, token_map: Mapping[str, torch.Tensor], n_candidates: int) -> np.ndarray:
        """Cross-modal pairs among the top `n_candidates` players of each modality by attribution."""
        scores = game.player_scores(token_map)
        tops = []
        for n in game.modality_names:
            idx = game.players_of(n)
            if idx.numel() == 0:
                continue
            order = torch.argsort(scores[idx], descending=True)[:n_candidates]
            tops.append(idx[order].tolist())
        if len(tops) < 2:
            raise ValueError("cross-modal pairs need players in at least two modalities; this example has one")
        pairs = [(a, b) for i in range(len(tops)) for j in range(i + 1, len(tops)) for a in tops[i] for b in tops[j]]
        return np.asarray(pairs, dtype=np.int64)

    @staticmethod
    def _ranked_pairs(game, result, tokens, head: str, top_k: int) -> tuple[list[InteractionPair], list[InteractionPair]]:
        def make(k: int) -> InteractionPair:
            a, b = (int(x) for x in result.pairs[k])
            (ma, pa), (mb, pb) = game.players[a], game.players[b]
            return InteractionPair(
                modality_a=ma, position_a=pa, token_a=_token(tokens, ma, pa),
                modality_b=mb, position_b=pb, token_b=_token(tokens, mb, pb),
                sii=float(result.sii[k]), sii_se=float(result.sii_se[k]),
                redundancy_gap=float(result.redundancy_gap[k]), redundancy_gap_se=float(result.redundancy_gap_se[k]),
                head=head,
            )

        syn = [make(k) for k in np.argsort(-result.sii, kind="stable")[:top_k]]
        red = [make(k) for k in np.argsort(-result.redundancy_gap, kind="stable")[:top_k]]
        return syn, red

    def _faithfulness(self, features, attention_mask, player_mask, maps, heads, random_state) -> dict[str, Any]:
        from .faithfulness import faithfulness_for_maps

        results = faithfulness_for_maps(self.model, features, maps, attention_mask, heads=heads,
                                        random_state=random_state, chunk_size=self.chunk_size,
                                        autocast_dtype=self.autocast_dtype)
        return {head: _plain(r) for head, r in results.items()}

    def _pair_masking(self, game: FeatureGame, result, random_state) -> dict[str, Any]:
        from .pair_masking import pair_masking as pair_masking_fn

        return {
            key: _plain(pair_masking_fn(game, result.pairs, getattr(result, key), random_state=random_state,
                                        score_name=key))
            for key in ("sii", "redundancy_gap")
        }


def _token(tokens: Mapping[str, list[str]], modality: str, position: int) -> str:
    seq = tokens.get(modality) or []
    return seq[position] if position < len(seq) else f"{modality}[{position}]"


def _plain(value: Any) -> Any:
    """JSON-safe copy of a result (dataclasses with to_dict, tensors, numpy arrays)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
