"""`Explainer(model).explain(...)`: one example, explained expert by expert and pair by pair."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..encoders import feature_locality
from ..precision import autocast_dtype_for
from ..random_state import RandomState, check_random_state
from ._utils import check_int, eval_mode
from .attribution import ATTRIBUTION_METHODS, attribute
from .faithfulness import faithfulness_for_maps
from .game import GAME_FILLS, OUTPUTS, ExplainedExample, FeatureGame, require_example
from .occlusion import context_effects
from .pair_masking import pair_masking as pair_masking_fn
from .players import word_groups
from .results import Explanation, FaithfulnessResult, InteractionPair, PairMaskingResult, grid_shape
from .shapley import PairInteractionApproximator

Progress = Callable[[float, str], None]
PLAYER_KINDS = ("words", "tokens")


class Explainer:
    """Explains FL-I2MoE (or the dense baseline) predictions, one example at a time.

    The pipeline: the example prepared once (`prepare`: checked, projected, its players words and image
    regions by default), a game per head made from it whose value is the target's log-odds, candidate
    players per modality by their first-order occlusion effects, Monte Carlo SII and redundancy gap of
    the cross-modal candidate pairs (`PairInteractionApproximator`), attribution maps per head (`method`),
    top-K% faithfulness and pair masking against random pairs, on probability games of the same example.

    Args:
        model: an `FLI2MoEModel`; explained in eval mode whatever mode it is in.
        processor: an `FLI2MoEProcessor`, needed only to explain raw inputs (strings, images).
        method: attribution method of the maps (`occlusion`, `attn_rollout_grad`, `integrated_gradients`,
            `gradient_x_input`).
        candidates: how candidate players are chosen: `occlusion` (the game's own first-order effects:
            removal from the full input, which finds synergistic tokens, plus the effects in an antithetic
            pair of half-full contexts, which find redundant ones too, away from the nearly empty inputs
            a model seldom sees) or an attribution method name (the mixture's map of that method).
        output: the games' value: `log_odds` (shift-invariant for softmax heads), `logit` or `probability`.
        players: `words` (word-pieces of one word form one player, from the processor's `word_ids`) or
            `tokens` (every token is a player).
        autocast_dtype: evaluate coalitions under autocast: `"auto"` (the default: bf16 where it is native
            on the model's device, i.e. CUDA or a CPU with avx512_bf16 or AMX; fp32 elsewhere), a dtype
            such as `torch.bfloat16`, or None for fp32.
        chunk_size: coalitions per forward pass.
        fill: what an absent player is in every game: `"mean"` (its modality's mean token) or `"remove"`
            (masked out); default: the model's own absence, `"remove"` when `config.fill` is `remove` (it was
            trained to see absent tokens masked out), else `"mean"`.
    """

    def __init__(
        self,
        model: Any,
        processor: Any = None,
        method: str = "occlusion",
        candidates: str = "occlusion",
        output: str = "log_odds",
        players: str = "words",
        autocast_dtype: torch.dtype | str | None = "auto",
        chunk_size: int = 512,
        fill: str | None = None,
    ) -> None:
        if method not in ATTRIBUTION_METHODS:
            raise ValueError(f"method must be one of {list(ATTRIBUTION_METHODS)}, got {method!r}")
        if candidates not in ATTRIBUTION_METHODS:
            raise ValueError(f"candidates must be one of {list(ATTRIBUTION_METHODS)}, got {candidates!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
        if players not in PLAYER_KINDS:
            raise ValueError(f"players must be one of {list(PLAYER_KINDS)}, got {players!r}")
        check_int("chunk_size", chunk_size)
        if fill is not None and fill not in GAME_FILLS:
            raise ValueError(f"fill must be one of {list(GAME_FILLS)} or None (the model's own absence), got {fill!r}")
        self.model = model.eval()
        self.processor = processor
        self.method = method
        self.candidates = candidates
        self.output = output if model.config.problem_type != "regression" else "logit"
        self.players = players
        if autocast_dtype == "auto":
            autocast_dtype = autocast_dtype_for(model.device)
        elif autocast_dtype is not None and not isinstance(autocast_dtype, torch.dtype):
            raise ValueError(f"autocast_dtype must be 'auto', a torch.dtype or None, got {autocast_dtype!r}")
        self.autocast_dtype = autocast_dtype
        self.chunk_size = chunk_size
        self.fill = fill or absence_fill(model.config)

    # ----------------------------------------------------------------- inputs
    def prepare(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        features: Mapping[str, torch.Tensor] | None = None,
        attention_mask: Mapping[str, torch.Tensor] | None = None,
        player_mask: Mapping[str, torch.Tensor] | None = None,
        tokens: Mapping[str, list[str]] | None = None,
        groups: Mapping[str, Sequence[Sequence[int]]] | None = None,
    ) -> ExplainedExample:
        """One example as the explanation sees it: raw `inputs` (through the processor) or `features` with
        their masks, validated and projected once, with its tokens and players (words, by the processor's
        `word_ids`, when `players="words"`; `groups` overrides them). Pass it to `explain`, or make games
        of it (`example.game_for(head, output=...)`)."""
        word_ids: dict[str, list[int]] = {}
        truncated: list[str] = []
        if inputs is not None:
            if self.processor is None:
                raise ValueError("raw inputs need a processor: Explainer(model, FLI2MoEProcessor.from_pretrained(ckpt))")
            enc = self.processor(inputs)
            features, attention_mask, player_mask = enc["features"], enc["attention_mask"], enc["player_mask"]
            tokens = {n: t[0] for n, t in (enc.get("tokens") or {}).items() if t}
            word_ids = {n: w[0] for n, w in (enc.get("word_ids") or {}).items() if w}
            truncated = [n for n, flags in enc.get("truncated", {}).items() if any(flags)]
        elif features is None:
            raise ValueError("give either raw `inputs` or `features` (with attention_mask / player_mask)")
        if any((f if f.dim() == 3 else f.unsqueeze(0)).shape[0] != 1 for f in features.values()):
            raise ValueError("Explainer.explain explains one example at a time: pass tensors with batch size 1")
        if groups is None and self.players == "words" and word_ids:
            groups = {n: word_groups(w) for n, w in word_ids.items() if any(x is not None and x >= 0 for x in w)}
        return ExplainedExample(self.model, features, attention_mask, player_mask, tokens=tokens,
                                groups=groups or None, truncated=truncated)

    def feature_locality(self) -> dict[str, str]:
        """`local`, `contextual` or `unknown` per modality, from the config's encoder specs."""
        return {m["name"]: feature_locality(m.get("encoder")) for m in self.model.config.modalities}

    # ---------------------------------------------------------------- explain
    def explain(
        self,
        example: ExplainedExample,
        *,
        budget: int = 2048,
        n_candidates: int = 6,
        stop_z: float | None = 3.0,
        random_state: RandomState = None,
        heads: Sequence[str] | None = None,
        expert_pairs: bool = False,
        expert_budget: int | None = None,
        faithfulness: bool | str | Sequence[str] | None = None,
        pair_masking: bool = True,
        top_k: int = 5,
        progress: Progress | None = None,
    ) -> Explanation:
        """Explain one example: prediction, routing, attribution maps, top synergistic and redundant pairs.

        The example is the `ExplainedExample` that `prepare` makes of raw inputs or of features with their
        masks (`explainer.explain(explainer.prepare(inputs))`). `budget` bounds the coalition evaluations of
        the pair search on the mixture (the candidates' occlusion effects and the SII / RG estimates; maps,
        faithfulness and masking come on top); `n_candidates` players per modality (by `candidates`) form the
        candidate cross-modal pairs; the pair estimates stop before the budget is spent once the top pair by SII
        and the top pair by RG each lead the runner-up by `stop_z` standard errors (None: spend it all);
        `expert_pairs=True` also estimates SII/RG with each expert as the value
        function. `faithfulness` names the heads whose maps get top-K% masking curves (default: the mixture's,
        or every requested head's when `heads` leaves the mixture out; `True`: every head's, as the dataset
        evaluation does; `False`: none).
        """
        example = require_example(example, "Explainer.explain")
        if example.model is not self.model:
            raise ValueError("this ExplainedExample was prepared for another model; prepare it with this "
                             "Explainer's prepare(...)")
        check_int("budget", budget)
        check_int("n_candidates", n_candidates)
        check_int("top_k", top_k)
        if expert_budget is not None:
            check_int("expert_budget", expert_budget)
        rng = check_random_state(random_state)
        with eval_mode(self.model):
            t0 = time.perf_counter()
            return self._explain(example, t0, budget, n_candidates, stop_z, rng, heads, expert_pairs, expert_budget,
                                 faithfulness, pair_masking, top_k, progress)

    def _explain(self, example: ExplainedExample, t0: float, budget, n_candidates, stop_z, rng, heads, expert_pairs,
                 expert_budget, faithfulness, pair_masking, top_k, progress) -> Explanation:
        step = progress or (lambda frac, desc: None)
        model = self.model
        cfg = model.config
        names = model.modality_names
        tokens, groups = example.tokens, example.groups
        notes = [f"the {n} input was truncated to the encoder's max tokens" for n in example.truncated]
        locality = self.feature_locality()
        contextual = [n for n, kind in locality.items() if kind == "contextual"]
        if contextual:
            notes.append(
                f"the {' and '.join(contextual)} features are contextual (each token's feature has seen the whole "
                "input): masking one token's feature need not remove its evidence, so these scores describe the "
                "features, not the raw input"
            )

        notes.append(absence_note(cfg, self.fill))

        out = example.model_output()
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

        game_options = {"chunk_size": self.chunk_size, "autocast_dtype": self.autocast_dtype, "fill": self.fill}
        step(0.05, "attribution maps (per expert and mixture)")
        head_list = list(heads) if heads is not None else (
            ["mixture"] + (expert_names if cfg.mixture == "interaction" else []))
        # first: occlusion maps of every head come from one pass, the mixture's effects among them
        maps = attribute(example, method=self.method, heads=head_list, output=self.output, **game_options)

        step(0.15, "first-order occlusion effects of every player")
        game = example.game_for("mixture", output=self.output, **game_options)
        effects = example.occlusion_effects(game)

        step(0.3, "Shapley interactions of the candidate pairs")
        search = effects.evaluations
        if self.candidates == "occlusion":  # removal from the full input, and effects in half-full contexts
            before = game.evaluations
            context = context_effects(game, random_state=rng)
            search += game.evaluations - before
            candidate_scores = effects.removal.abs() + context.abs().mean(0)
        elif self.candidates == self.method:
            candidate_scores = game.player_scores(maps.maps["mixture"])
        else:
            other = attribute(example, method=self.candidates, heads=["mixture"], output=self.output,
                              **game_options)
            candidate_scores = game.player_scores(other.maps["mixture"])
        pairs = self.candidate_pairs(game, candidate_scores, n_candidates)
        if budget <= search:
            raise ValueError(
                f"budget={budget} does not cover the candidate search ({search} evaluations for "
                f"{game.n_players} players) and the pair estimates; raise budget (the default is 2048)"
            )
        approximator = PairInteractionApproximator(game.n_players, pairs, random_state=rng, batch_size=self.chunk_size,
                                                   stop_z=stop_z)
        result = approximator.approximate(budget - search, game)
        synergy, redundancy = self._ranked_pairs(game, result, tokens, "mixture", top_k)
        evaluations = int(result.evaluations) + search

        per_expert: dict[str, dict[str, list[InteractionPair]]] = {}
        if expert_pairs and cfg.mixture == "interaction":
            for i, e in enumerate(expert_names):
                step(0.45 + 0.2 * i / len(expert_names), f"pairs of the {e} expert")
                g = example.game_for(e, output=self.output, **game_options)
                r = PairInteractionApproximator(g.n_players, pairs, random_state=rng, batch_size=self.chunk_size,
                                                stop_z=stop_z).approximate(expert_budget or budget, g)
                syn_e, red_e = self._ranked_pairs(g, r, tokens, e, top_k)
                per_expert[e] = {"synergy": syn_e, "redundancy": red_e}
                evaluations += int(r.evaluations)

        faith: dict[str, FaithfulnessResult] = {}
        faith_heads = _faithfulness_heads(faithfulness, head_list)
        if faith_heads:
            step(0.7, "faithfulness: top-K% masking against random tokens")
            # the faithfulness games rank single tokens (a map's K% is of tokens, not of words)
            faith = faithfulness_for_maps(example, maps, heads=faith_heads, random_state=rng, groups=None,
                                          **game_options)
        masking: dict[str, PairMaskingResult] = {}
        if pair_masking:
            step(0.85, "masking the top pairs against random pairs")
            prob_game = example.game_for("mixture", output="probability", **game_options)
            masking = {key: pair_masking_fn(prob_game, result.pairs, getattr(result, key), random_state=rng,
                                            score_name=key)
                       for key in ("sii", "redundancy_gap")}

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
            grids={n: grid_shape(example.lengths[n]) for n in names},
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
            feature_locality=locality,
            players=self.players if groups else "tokens",
            candidates=self.candidates,
            output=self.output,
            n_contexts=int(result.n_contexts),
            candidate_players={n: [game.players[int(p)][1] for p in pairs_of(pairs, game, n)] for n in names},
        )

    # ---------------------------------------------------------------- pieces
    @staticmethod
    def candidate_pairs(
        game: FeatureGame, scores: torch.Tensor | Mapping[str, torch.Tensor], n_candidates: int
    ) -> np.ndarray:
        """Cross-modal pairs among the top `n_candidates` players of each modality by `scores` (one score
        per player, or a token map `{modality: (T_m,)}` summed over each player's tokens)."""
        if isinstance(scores, Mapping):
            scores = game.player_scores(scores)
        scores = torch.as_tensor(scores).double().reshape(-1)
        tops = []
        for n in game.modality_names:
            idx = game.players_of(n)
            if idx.numel() == 0:
                continue
            order = torch.argsort(scores[idx], descending=True, stable=True)[:n_candidates]
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
                modality_a=ma, position_a=pa, token_a=_token(tokens, ma, game.player_positions[a]),
                modality_b=mb, position_b=pb, token_b=_token(tokens, mb, game.player_positions[b]),
                sii=float(result.sii[k]), sii_se=float(result.sii_se[k]),
                redundancy_gap=float(result.redundancy_gap[k]), redundancy_gap_se=float(result.redundancy_gap_se[k]),
                head=head,
            )

        syn = [make(k) for k in np.argsort(-result.sii, kind="stable")[:top_k]]
        red = [make(k) for k in np.argsort(-result.redundancy_gap, kind="stable")[:top_k]]
        return syn, red


def _faithfulness_heads(faithfulness: bool | str | Sequence[str] | None, heads: list[str]) -> list[str]:
    """The heads whose maps get faithfulness curves: all for True, none for False, the named ones, or by default
    the mixture's (every head's when the mixture has no map)."""
    if faithfulness is None:
        return ["mixture"] if "mixture" in heads else list(heads)
    if faithfulness is True or faithfulness is False:
        return list(heads) if faithfulness else []
    named = [faithfulness] if isinstance(faithfulness, str) else list(faithfulness)
    unknown = [h for h in named if h not in heads]
    if unknown:
        raise ValueError(f"faithfulness names {unknown}, which have no map in this explanation; name heads among "
                         f"{heads}, or pass True for all of them or False for none")
    return named


def pairs_of(pairs: np.ndarray, game: FeatureGame, modality: str) -> list[int]:
    """The distinct players of `modality` among `pairs`, in first-seen order."""
    members = set(game.players_of(modality).tolist())
    return list(dict.fromkeys(int(p) for p in pairs.reshape(-1) if int(p) in members))


def _token(tokens: Mapping[str, list[str]], modality: str, positions: Sequence[int]) -> str:
    """The display text of a player: its token, or its word-pieces joined into the word."""
    seq = tokens.get(modality) or []
    pieces = [seq[p] if p < len(seq) else f"{modality}[{p}]" for p in positions]
    if len(pieces) == 1:
        return pieces[0]
    return pieces[0].lstrip("\u0120\u2581") + "".join(
        p[2:] if p.startswith("##") else p.lstrip("\u0120\u2581") for p in pieces[1:]
    )


def absence_fill(config: Any) -> str:
    """The game fill that matches how the model saw absent tokens in training: `remove` for a model whose
    knock-outs and token masking removed them (`config.fill == "remove"`), else `mean`."""
    return "remove" if getattr(config, "fill", None) == "remove" else "mean"


def absence_note(config: Any, fill: str = "mean") -> str:
    """What an absent player means to this model under the games' `fill`: a model trained with token masking
    (`config.token_masking`) in the same absence has learned to read it as "unknown"; any other model (trained
    before token masking, without it, or with the other absence) may read it as a value."""
    rate = float(getattr(config, "token_masking", 0.0) or 0.0)
    what = "masked out of attention and pooling" if fill == "remove" else "the modality's mean token"
    if rate > 0 and fill == absence_fill(config):
        return (f"absent tokens are {what}, which this model was trained to read as unknown "
                f"(token masking at rates up to {rate:g})")
    trained = ("trained without token masking" if rate == 0 else
               f"trained with token masking by {'the mean token' if fill == 'remove' else 'removal'}, not this absence")
    return (f"absent tokens are {what}, and this model was {trained}: it may read "
            f"{'a missing token' if fill == 'remove' else 'the mean token'} as a value rather than as unknown, so "
            "scores from sparse contexts can differ from what the model does at the real input")
