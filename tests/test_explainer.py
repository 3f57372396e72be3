"""Explainer: one prepared example feeds every game; the explanation is pinned and round-trips as JSON."""

import json
from pathlib import Path

import pytest
import torch

from modeling_fli2moe import FLI2MoEModel, kernels
from modeling_fli2moe.explain import Explainer, Explanation, ExplainedExample, FeatureGame
from modeling_fli2moe.explain.results import FaithfulnessResult, PairMaskingResult
from modeling_fli2moe.testing.compare import assert_same_values
from modeling_fli2moe.testing.models import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

PINNED = Path(__file__).parent / "data" / "explanation_tiny.json"


def tiny_model() -> FLI2MoEModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = FLI2MoEModel(tiny_config()).eval()
        model.set_modality_means({m["name"]: torch.randn(m["input_dim"]) for m in model.config.modalities})
    return model


def tiny_inputs() -> dict:
    """One example: 7 text tokens ([CLS], three words of 2 + 1 + 2 pieces, padding) and 9 image patches."""
    g = torch.Generator().manual_seed(1)
    return {
        "features": {"text": torch.randn(1, 7, 12, generator=g), "image": torch.randn(1, 9, 20, generator=g)},
        "attention_mask": {"text": torch.tensor([[1, 1, 1, 1, 1, 1, 0]]), "image": torch.ones(1, 9, dtype=torch.long)},
        "player_mask": {"text": torch.tensor([0, 1, 1, 1, 1, 1, 0])},
        "tokens": {"text": ["[CLS]", "fl", "##ower", "red", "ro", "##se", "[PAD]"]},
        "groups": {"text": [[1, 2], [3], [4, 5]]},
    }


def tiny_explanation(**options) -> Explanation:
    """The tiny model's explanation at the Explainer's defaults (fp32, so that it is the same on every CPU)."""
    explainer = Explainer(tiny_model(), autocast_dtype=None)
    return explainer.explain(explainer.prepare(**tiny_inputs()), random_state=0, **options)


def assert_same(got, want, where="explanation"):
    """Equal structure, keys, strings and ints; floats equal up to float32 round-off across CPUs."""
    assert_same_values(got, want, where, rel_tol=1e-5, abs_tol=1e-6)


def test_explanation_is_the_pinned_one():
    """The explanation (maps, pairs, SII/RG, faithfulness, pair masking, costs) equals the pinned one, with the
    whole budget spent and every head's faithfulness curves. The maps and the full-input values were pinned from the
    pipeline that built every game from the raw features (one game per head and question); the pair estimates and
    the random draws after them were re-pinned when the estimator began to spend its budget on distinct coalitions
    (2048 evaluations instead of 1486), and again when the candidate search added effects in half-full contexts
    (the maps and full-input values unchanged)."""
    got = json.loads(tiny_explanation(stop_z=None, faithfulness=True).to_json())
    want = json.loads(PINNED.read_text())
    got.pop("seconds"), want.pop("seconds")
    assert_same(got, want)


def test_typed_results_and_json_round_trip(tmp_path):
    exp = tiny_explanation(faithfulness=True)
    assert set(exp.faithfulness) == {"mixture", *exp.expert_names}
    assert set(tiny_explanation().faithfulness) == {"mixture"}  # by default the mixture's map only
    assert set(tiny_explanation(faithfulness=["uniqueness_text"]).faithfulness) == {"uniqueness_text"}
    assert tiny_explanation(faithfulness=False).faithfulness == {}
    with pytest.raises(ValueError, match="faithfulness names \\['nope'\\], which have no map"):
        tiny_explanation(faithfulness=["nope"])
    assert all(isinstance(r, FaithfulnessResult) for r in exp.faithfulness.values())
    assert set(exp.pair_masking) == {"sii", "redundancy_gap"}
    assert all(isinstance(r, PairMaskingResult) for r in exp.pair_masking.values())
    assert exp.pair_masking["sii"].pair_counts == [1, 2, 4, 8]
    # faithfulness ranks the five text tokens ([CLS] and [PAD] are no players), the pairs the three words
    assert exp.faithfulness["mixture"].per_modality["text"].n_players == 5 and len(exp.candidate_players["text"]) == 3
    back = Explanation.from_json(exp.to_json(tmp_path / "exp.json"))
    assert back == exp and back.to_json() == exp.to_json()
    assert isinstance(back.pair_masking["redundancy_gap"], PairMaskingResult)
    assert back.pair_masking["sii"].steps[0] == exp.pair_masking["sii"].steps[0]


def test_one_example_serves_every_game(monkeypatch):
    """One projection, one full forward, and two reference forwards (full and empty coalition) per head."""
    calls = {"project": 0, "forward": 0, "batch_of_one": 0}
    project, forward, logits = FLI2MoEModel.project, FLI2MoEModel.forward, FLI2MoEModel.head_logits_from_projected
    coalitions = kernels.coalition_logits

    def counting(name, fn):
        def wrapped(self, *args, **kwargs):
            calls[name] += 1
            return fn(self, *args, **kwargs)
        return wrapped

    def counting_logits(self, projected, masks, head="mixture"):
        calls["batch_of_one"] += next(iter(projected.values())).shape[0] == 1
        return logits(self, projected, masks, head)

    def counting_coalitions(model, projected, fill, present, masks=None, head="mixture"):  # the mean-fill games
        calls["batch_of_one"] += next(iter(present.values())).shape[0] == 1
        return coalitions(model, projected, fill, present, masks, head)

    monkeypatch.setattr(FLI2MoEModel, "project", counting("project", project))
    monkeypatch.setattr(FLI2MoEModel, "forward", counting("forward", forward))
    monkeypatch.setattr(FLI2MoEModel, "head_logits_from_projected", counting_logits)
    monkeypatch.setattr(kernels, "coalition_logits", counting_coalitions)
    exp = tiny_explanation()
    heads = len(exp.maps)  # the mixture and every expert
    assert calls["forward"] == 1  # the prediction, routing and the maps' targets
    assert calls["project"] == 2  # the example once, and inside that forward
    assert calls["batch_of_one"] == 2 * heads


def test_prepared_example_and_its_games():
    model = tiny_model()
    inputs = tiny_inputs()
    explainer = Explainer(model, autocast_dtype=None)
    example = explainer.prepare(**inputs)
    assert isinstance(example, ExplainedExample)
    assert example.tokens["text"][1] == "fl" and example.tokens["image"][4] == "image 1,1"  # 9 patches: a 3 x 3 grid
    assert example.player_mask["text"].tolist() == [False, True, True, True, True, True, False]
    # explain takes the prepared example, and only that: anything else is refused, naming prepare
    with pytest.raises(TypeError, match=r"Explainer.explain takes an ExplainedExample, got dict: prepare"):
        explainer.explain(inputs["features"], random_state=0)
    with pytest.raises(ValueError, match="prepared for another model"):
        Explainer(tiny_model(), autocast_dtype=None).explain(example, random_state=0)
    # a game made from the example equals the game made from a fresh example of the same features, and shares
    # its references with the example's other games
    fresh = ExplainedExample(model, inputs["features"], inputs["attention_mask"], inputs["player_mask"])
    own = FeatureGame(fresh, head="synergy", groups=inputs["groups"], output="probability")
    shared = example.game_for("synergy", output="probability")
    assert shared.example is example and shared.players == own.players and shared.target == own.target
    assert shared.value_full == pytest.approx(own.value_full, abs=1e-7)
    assert shared.value_empty == pytest.approx(own.value_empty, abs=1e-7)
    coalitions = torch.rand(6, own.n_players, generator=torch.Generator().manual_seed(0)) > 0.5
    torch.testing.assert_close(shared(coalitions), own(coalitions), rtol=0, atol=0)
    logit_game = example.game_for("synergy", output="logit", target=shared.target)
    assert logit_game.full_logits.tolist() == shared.full_logits.tolist()  # one reference forward for both


def test_faithfulness_for_maps_refuses_maps_of_other_players():
    from modeling_fli2moe.explain import attribute, faithfulness_for_maps

    model = tiny_model()
    inputs = tiny_inputs()
    example = ExplainedExample(model, inputs["features"], inputs["attention_mask"], inputs["player_mask"])
    every_token = ExplainedExample(model, inputs["features"], inputs["attention_mask"])  # [CLS] a player too
    maps = attribute(every_token, method="gradient_x_input", heads=["mixture"])
    with pytest.raises(ValueError, match="other players"):
        faithfulness_for_maps(example, maps)
    with pytest.raises(TypeError, match="faithfulness_for_maps takes an ExplainedExample, got FLI2MoEModel"):
        faithfulness_for_maps(model, example, maps)
    same = attribute(example, method="gradient_x_input", heads=["mixture"])
    results = faithfulness_for_maps(example, same, n_random=2, random_state=0)
    assert set(results) == {"mixture"} and results["mixture"].per_modality["text"].n_players == 5
