"""Top-K% faithfulness, concentration, specificity, pair masking and the paired test."""

import json
import math

import numpy as np
import pytest
import torch

from modeling_fli2moe.explain.attribution import attribute
from modeling_fli2moe.explain.faithfulness import (
    concentration,
    faithfulness,
    faithfulness_for_maps,
    specificity,
    top_k_count,
)
from modeling_fli2moe.explain.game import ExplainedExample, FeatureGame
from modeling_fli2moe.explain.pair_masking import pair_masking, paired_test
from modeling_fli2moe.explain.results import FaithfulnessResult, PairMaskingResult

from .test_attribution import PLANTED_POSITION, planted_examples, planted_model


pytestmark = pytest.mark.usefixtures("one_thread")


class CountingGame:
    """Wraps a game and records the shape of every batch it is asked for."""

    def __init__(self, game):
        self._game = game
        self.calls = []

    def __call__(self, coalitions):
        self.calls.append(tuple(coalitions.shape))
        return self._game(coalitions)

    def __getattr__(self, name):
        return getattr(self._game, name)


@pytest.fixture(scope="module")
def planted():
    model = planted_model("interaction")
    example = ExplainedExample(model, planted_examples(1)[0])
    maps = attribute(example, method="integrated_gradients", heads=["mixture"])
    return model, example, maps


def test_top_k_count():
    assert [top_k_count(k, 6) for k in (5, 10, 15, 20, 25)] == [1, 1, 1, 2, 2]
    assert [top_k_count(k, 49) for k in (5, 10, 15, 20, 25)] == [3, 5, 8, 10, 13]
    assert top_k_count(10, 10) == 1 and top_k_count(100, 3) == 3


def test_faithfulness_on_the_planted_model(planted):
    model, example, maps = planted
    game = CountingGame(FeatureGame(example, head="mixture", output="probability"))
    result = faithfulness(game, maps["mixture"], n_random=10, random_state=0)
    # every variant in one batch: full input + per group (text, image, all) 2 x 5 K x 11 orders
    assert game.calls == [(1 + 3 * 2 * 5 * 11, game.n_players)]
    assert result.evaluations == game.evaluations == 1 + 3 * 110
    assert result.p_full == pytest.approx(game.value_full, abs=1e-6)
    text = result.per_modality["text"]
    assert text.n_tokens == [1, 1, 1, 2, 2] and text.n_players == 6
    # the planted token is ranked first: removing it destroys the prediction, keeping it keeps it
    assert min(text.comprehensiveness) > 0.3
    assert text.comprehensiveness_gap > 0.1 and text.sufficiency_gap > 0.1
    assert text.aopc_comprehensiveness == pytest.approx(np.mean(text.comprehensiveness))
    assert result.per_modality["all"].comprehensiveness_gap > 0.1
    # the image carries no evidence: the map's image ranking is no better than random by much
    assert abs(result.per_modality["image"].aopc_comprehensiveness) < 0.1
    # one value recomputed by hand: comprehensiveness at K = 25 %
    without = torch.ones(1, game.n_players, dtype=torch.bool)
    without[0, PLANTED_POSITION] = False  # text players are positions 0..5
    ranked = game.player_scores(maps["mixture"])[:6].argsort(descending=True)[:2]
    without[0, ranked] = False
    assert text.comprehensiveness[-1] == pytest.approx(result.p_full - game(without).item(), abs=1e-6)


def test_faithfulness_is_deterministic_and_serialises(planted):
    model, example, maps = planted
    game = FeatureGame(example, output="probability")
    a = faithfulness(game, maps["mixture"], n_random=3, random_state=5, include_all=False)
    b = faithfulness(game, maps["mixture"], n_random=3, random_state=np.random.default_rng(5))
    c = faithfulness(game, maps["mixture"], n_random=3, random_state=6, include_all=False)
    assert a.per_modality["text"] == b.per_modality["text"]
    assert a.per_modality["image"].random_comprehensiveness != c.per_modality["image"].random_comprehensiveness
    assert set(a.per_modality) == {"text", "image"}
    data = json.loads(json.dumps(a.to_dict()))
    curve = data["per_modality"]["text"]
    for key in ("k_percent", "comprehensiveness", "sufficiency", "random_comprehensiveness", "random_sufficiency"):
        assert len(curve[key]) == 5
    assert FaithfulnessResult.from_dict(data) == a
    # per-player scores work as the map too
    d = faithfulness(game, game.player_scores(maps["mixture"]), n_random=3, random_state=5, include_all=False)
    assert d.per_modality == a.per_modality


def test_faithfulness_for_maps_and_errors(planted):
    model, example, maps = planted
    results = faithfulness_for_maps(example, maps, n_random=2, random_state=0, k_percents=(10, 50))
    assert list(results) == ["mixture"] and results["mixture"].output == "probability"
    assert results["mixture"].per_modality["text"].n_tokens == [1, 3]
    game = FeatureGame(example, output="probability")
    with pytest.raises(ValueError, match="k_percents"):
        faithfulness(game, maps["mixture"], k_percents=(0, 10))
    with pytest.raises(ValueError, match="n_random"):
        faithfulness(game, maps["mixture"], n_random=0)
    with pytest.raises(ValueError, match="one score per player"):
        faithfulness(game, torch.ones(3))
    with pytest.raises(ValueError, match="no entry for modality"):
        faithfulness(game, {"text": torch.ones(6)})


def test_concentration():
    uniform = concentration({"text": torch.ones(10), "image": torch.ones(20)})
    assert uniform.entropy["text"] == pytest.approx(1.0) and uniform.entropy["all"] == pytest.approx(1.0)
    assert uniform.top_mass["text"] == pytest.approx(0.1) and uniform.top_mass["all"] == pytest.approx(3 / 30)
    peaked = concentration({"text": torch.tensor([0.0, 5.0, 0.0, 0.0]), "image": torch.zeros(4)})
    assert peaked.entropy["text"] == pytest.approx(0.0) and peaked.top_mass["text"] == 1.0
    assert math.isnan(peaked.entropy["image"])  # no mass
    assert peaked.entropy["all"] == pytest.approx(0.0)
    # the player mask restricts the support (padding zeros do not count as players)
    masked = concentration({"text": torch.tensor([1.0, 1.0, 0.0, 0.0])},
                           player_mask={"text": torch.tensor([1, 1, 0, 0])})
    assert masked.entropy["text"] == pytest.approx(1.0) and masked.n_players["text"] == 2
    two_levels = concentration({"text": torch.tensor([3.0, 1.0, 1.0, 1.0])})
    p = np.array([0.5, 1 / 6, 1 / 6, 1 / 6])
    assert two_levels.entropy["text"] == pytest.approx(-(p * np.log(p)).sum() / np.log(4))
    assert two_levels.to_dict()["top_fraction"] == 0.1
    with pytest.raises(ValueError, match="negative"):
        concentration({"text": torch.tensor([1.0, -1.0])})


def test_specificity():
    maps = {
        "uniqueness_text": {"text": torch.tensor([4.0, 1, 0, 0, 0]), "image": torch.zeros(5)},
        "uniqueness_image": {"text": torch.zeros(5), "image": torch.tensor([0.0, 0, 0, 3, 1])},
        "synergy": {"text": torch.tensor([4.0, 1, 0, 0, 0]), "image": torch.tensor([0.0, 0, 0, 0, 5])},
        "mixture": {"text": torch.tensor([4.0, 1, 0, 0, 0]), "image": torch.tensor([0.0, 0, 0, 3, 1])},
    }
    result = specificity(maps, k_percent=20)
    assert result.mass_share["uniqueness_text"] == {"text": 1.0, "image": 0.0}
    assert result.mass_share["uniqueness_image"] == {"text": 0.0, "image": 1.0}
    assert result.mass_share["synergy"] == {"text": 0.5, "image": 0.5}
    text = result.jaccard["text"]
    assert text["uniqueness_text"]["synergy"] == 1.0 and text["uniqueness_text"]["uniqueness_text"] == 1.0
    assert result.jaccard["image"]["uniqueness_image"]["synergy"] == 0.0
    # "all": top-20 % of 10 players = 2 players each
    assert result.jaccard["all"]["uniqueness_text"]["uniqueness_image"] == 0.0
    assert result.jaccard["all"]["uniqueness_text"]["synergy"] == pytest.approx(1 / 3)
    # the mean over expert pairs leaves the mixture out
    assert result.mean_jaccard["all"] == pytest.approx((0 + 1 / 3 + 1 / 3) / 3)
    json.dumps(result.to_dict())


def test_specificity_of_attribution_maps_uses_their_player_mask(planted):
    model, example, _ = planted
    maps = attribute(example, method="gradient_x_input")
    result = specificity(maps)
    assert result.heads == maps.heads
    for head in maps.heads:
        assert sum(result.mass_share[head].values()) == pytest.approx(1.0)
    assert concentration(maps["mixture"], maps.player_mask).n_players == {"text": 6, "image": 8, "all": 14}


# --------------------------------------------------------------------------------------------- pairs
class ToyGame:
    """8 players (4 per modality); losing both of players 0 and 4 costs 0.6, every lost player 0.01."""

    n_players = 8
    modality_of_player = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    head, output = "toy", "probability"

    def __init__(self):
        self.calls = []
        self.value_full = 1.0

    def __call__(self, coalitions):
        self.calls.append(tuple(coalitions.shape))
        c = coalitions.double()
        return 1.0 - 0.6 * (1 - c[:, 0]) * (1 - c[:, 4]) - 0.01 * (1 - c).sum(1)


CROSS_POOL = [(i, j) for i in range(4) for j in range(4, 8)]


def test_pair_masking_ranked_beats_random():
    game = ToyGame()
    scores = [1.0 if (i, j) == (0, 4) else 0.1 * ((i * 7 + j) % 5) / 5 for i, j in CROSS_POOL]
    result = pair_masking(game, CROSS_POOL, scores, n_random=10, random_state=0, score_name="sii")
    assert game.calls == [(1 + 4 * 11, 8)] and result.evaluations == 45
    assert result.pair_counts == [1, 2, 4, 8]
    first = result.steps[0]
    assert first.pairs == [[0, 4]] and first.n_tokens == 2
    assert first.ranked_drop == pytest.approx(0.62)
    assert first.random_mean < first.ranked_drop and first.n_unmatched == 0
    for step in result.steps:
        assert step.random_n_tokens == [step.n_tokens] * 10
        assert len(step.random_drops) == 10 and step.random_std == pytest.approx(float(np.std(step.random_drops)))
        assert step.ranked_drop >= step.random_mean
    assert any(step.random_std > 0 for step in result.steps)  # the random control does vary
    back = PairMaskingResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back == result
    again = pair_masking(ToyGame(), CROSS_POOL, scores, n_random=10, random_state=0)
    assert [s.random_drops for s in again.steps] == [s.random_drops for s in result.steps]


def test_pair_masking_matches_shared_tokens():
    # the top pairs share player 0: 2 pairs, 3 distinct tokens; so must every random selection
    scores = [3.0 if p == (0, 4) else 2.0 if p == (0, 5) else 2.5 if p == (0, 6) else 0.0 for p in CROSS_POOL]
    result = pair_masking(ToyGame(), CROSS_POOL, scores, pair_counts=(2, 3, 100), n_random=10, random_state=1)
    assert result.pair_counts == [2, 3]  # 100 > 16 pairs: skipped
    assert result.steps[0].pairs == [[0, 4], [0, 6]] and result.steps[0].n_tokens == 3
    assert result.steps[1].n_tokens == 4
    for step in result.steps:
        assert step.random_n_tokens == [step.n_tokens] * 10 and step.n_unmatched == 0


def test_pair_masking_errors():
    game = ToyGame()
    with pytest.raises(ValueError, match="cross-modal"):
        pair_masking(game, [(0, 1)], [1.0])
    with pytest.raises(ValueError, match="one score per pair"):
        pair_masking(game, [(0, 4), (1, 5)], [1.0])
    with pytest.raises(ValueError, match="player indices"):
        pair_masking(game, [(0, 9)], [1.0])
    with pytest.raises(ValueError, match="duplicate"):
        pair_masking(game, [(0, 4), (4, 0)], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        pair_masking(game, [], [])
    with pytest.raises(ValueError, match="NaN"):
        pair_masking(game, [(0, 4)], [float("nan")])


def test_pair_masking_on_a_feature_game(planted):
    model, example, _ = planted
    game = FeatureGame(example, output="probability")
    text, image = game.players_of("text").tolist(), game.players_of("image").tolist()
    pool = torch.tensor([(t, i) for t in text[:4] for i in image[:4]])
    scores = torch.tensor([1.0 if t == PLANTED_POSITION else 0.0 for t, _ in pool.tolist()]) + torch.linspace(0, 0.1, 16)
    result = pair_masking(game, pool, scores, n_random=4, random_state=torch.Generator().manual_seed(0))
    assert game.evaluations == 1 + 4 * 5 and result.head == "mixture" and result.output == "probability"
    # masking the planted text token (in every top pair) hurts far more than random pairs on average
    assert result.steps[0].ranked_drop > 0.3
    assert result.steps[0].ranked_drop > result.steps[0].random_mean


def test_paired_test():
    rng = np.random.default_rng(0)
    random_drops = rng.normal(0.1, 0.05, size=(30, 10))
    ranked = random_drops.mean(1) + 0.2 + rng.normal(0, 0.02, 30)
    for method in ("wilcoxon", "ttest"):
        out = paired_test(ranked, random_drops, method=method)
        assert out["method"] == method and out["n"] == 30 and out["p_value"] < 1e-4
        assert out["mean_difference"] == pytest.approx(0.2, abs=0.02)
    worse = paired_test(random_drops.mean(1) - 0.1, random_drops.mean(1))
    assert worse["p_value"] > 0.99
    zeros = paired_test(np.ones(5), np.ones(5))
    assert math.isnan(zeros["p_value"])
    with pytest.raises(ValueError, match="pair them"):
        paired_test(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="method"):
        paired_test(np.ones(3), np.ones(3), method="sign")
