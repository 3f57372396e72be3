"""FeatureGame: batched coalition values against an independent one-at-a-time reference."""

import numpy as np
import pytest
import torch

from modeling_fli2moe import FLI2MoEModel
from modeling_fli2moe.explain._utils import select_target
from modeling_fli2moe.explain.game import ExplainedExample, FeatureGame
from modeling_fli2moe.explain.players import patch_cell_groups, word_groups
from modeling_fli2moe.random_state import check_random_state
from modeling_fli2moe.testing.models import tiny_config


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(**overrides) -> FLI2MoEModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = FLI2MoEModel(tiny_config(**overrides)).eval()
        model.set_modality_means({m["name"]: torch.randn(m["input_dim"]) for m in model.config.modalities})
    return model


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def example():
    g = torch.Generator().manual_seed(1)
    features = {"text": torch.randn(1, 7, 12, generator=g), "image": torch.randn(1, 9, 20, generator=g)}
    mask = {"text": torch.tensor([[1, 1, 1, 1, 1, 0, 0]]), "image": torch.ones(1, 9, dtype=torch.long)}
    player_mask = {"text": torch.tensor([0, 1, 1, 1, 1, 1, 1])}  # position 0 plays [CLS]
    return features, mask, player_mask


def game_of(model, features, mask=None, player_mask=None, **options) -> FeatureGame:
    """The game of one example given as raw features: made from its `ExplainedExample`."""
    return FeatureGame(ExplainedExample(model, features, mask, player_mask), **options)


def reference_value(model, features, mask, game, coalition, fill):
    """One coalition through the raw-feature path: mean feature tokens (projection is affine) or masking."""
    feats = {n: x.clone() for n, x in features.items()}
    masks = {n: m.clone().bool() for n, m in mask.items()}
    means = model.get_modality_means()
    for p, present in enumerate(coalition.tolist()):
        name = game.players[p][0]
        for pos in game.player_positions[p]:
            if present:
                continue
            if fill == "mean":
                feats[name][0, pos] = means[name]
            else:
                masks[name][0, pos] = False
    with torch.no_grad():
        logits = model.head_logits(feats, masks, game.head)[0]
    return logits[game.target].mean()


def random_coalitions(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(k, n, generator=g) < torch.rand(k, 1, generator=g)
    c[0], c[1] = True, False
    return c


@pytest.mark.parametrize("fill", ["mean", "remove"])
@pytest.mark.parametrize("head", ["mixture", "synergy", 0])
def test_batched_equals_one_at_a_time(model, example, fill, head):
    features, mask, player_mask = example
    game = game_of(model, features, mask, player_mask, head=head, fill=fill)
    assert game.n_players == 4 + 9
    assert game.players[:4] == [("text", 1), ("text", 2), ("text", 3), ("text", 4)]
    assert game.modality_of_player.tolist() == [0] * 4 + [1] * 9
    coalitions = random_coalitions(game.n_players, 24)
    values = game(coalitions)
    assert values.shape == (24,) and values.dtype == torch.float32
    assert game.evaluations == 24
    reference = torch.stack([reference_value(model, features, mask, game, c, fill) for c in coalitions])
    torch.testing.assert_close(values, reference, atol=1e-5, rtol=1e-4)
    assert values[0].item() == pytest.approx(game.value_full, abs=1e-6)
    assert values[1].item() == pytest.approx(game.value_empty, abs=1e-6)


def test_full_coalition_is_the_models_own_target_logit(model, example):
    features, mask, player_mask = example
    with torch.no_grad():
        out = model(features=features, attention_mask=mask)
    for head in ["mixture"] + model.config.expert_names:
        game = game_of(model, features, mask, player_mask, head=head)
        logits = out.logits[0] if head == "mixture" else out.expert_logits[0, model.config.expert_names.index(head)]
        assert game.target == [int(logits.argmax())]
        assert game.value_full == pytest.approx(float(logits.max()), abs=1e-5)
        assert game(game.grand_coalition).item() == pytest.approx(float(logits.max()), abs=1e-5)
    prob = game_of(model, features, mask, head="mixture", output="probability")
    assert prob.value_full == pytest.approx(float(out.logits[0].softmax(-1).max()), abs=1e-6)
    fixed = game_of(model, features, mask, target=1)
    assert fixed.target == [1] and fixed.value_full == pytest.approx(float(out.logits[0, 1]), abs=1e-5)


def test_chunking_does_not_change_values(model, example):
    features, mask, player_mask = example
    coalitions = random_coalitions(13, 40, seed=3)
    whole = game_of(model, features, mask, player_mask, chunk_size=512)(coalitions)
    chunked_game = game_of(model, features, mask, player_mask, chunk_size=7)
    chunked = chunked_game(coalitions)
    torch.testing.assert_close(whole, chunked, atol=1e-6, rtol=1e-5)
    assert chunked_game.evaluations == 40
    as_numpy = chunked_game(coalitions.numpy())
    torch.testing.assert_close(as_numpy, chunked)
    assert chunked_game.evaluations == 80
    assert chunked_game(torch.zeros(0, 13, dtype=torch.bool)).shape == (0,)


def test_remove_mode_masks_tokens(model, example):
    features, mask, player_mask = example
    game = game_of(model, features, mask, player_mask, fill="remove")
    # removing a player changes the value; it equals running the model without that token
    c = torch.ones(1, game.n_players, dtype=torch.bool)
    c[0, 2] = False
    masks = {n: m.clone().bool() for n, m in mask.items()}
    masks["text"][0, 3] = False
    with torch.no_grad():
        expected = model.head_logits(features, masks)[0, game.target[0]]
    assert game(c).item() == pytest.approx(float(expected), abs=1e-5)
    # an empty coalition (every player removed) is finite
    assert np.isfinite(game.value_empty)


def test_groups(model, example):
    features, mask, player_mask = example
    cells = patch_cell_groups((3, 3), (2, 2))
    assert cells == [[0, 1, 3, 4], [2, 5], [6, 7], [8]]
    assert patch_cell_groups((2, 2), (1, 2), offset=1) == [[1, 2], [3, 4]]
    assert word_groups([None, 0, 0, 1, None, 2, 2]) == [[1, 2], [3], [5, 6]]
    words = word_groups([None, 0, 0, 1, 2, None, None])
    game = game_of(model, features, mask, player_mask, groups={"text": words, "image": cells})
    assert game.n_players == 3 + 4
    assert game.player_positions == [[1, 2], [3], [4], [0, 1, 3, 4], [2, 5], [6, 7], [8]]
    assert game.players[3] == ("image", 0)
    flat = game_of(model, features, mask, player_mask)
    coalitions = random_coalitions(game.n_players, 12, seed=5)
    # the same coalitions on the ungrouped game: every member follows its group
    group_of = {(game.players[g][0], pos): g for g, members in enumerate(game.player_positions) for pos in members}
    column = torch.tensor([group_of[player] for player in flat.players])
    expanded = coalitions[:, column]
    torch.testing.assert_close(game(coalitions), flat(expanded), atol=1e-6, rtol=1e-5)
    # the same grouping by ungrouped player indices (text players 0..3, image players 4..12)
    by_index = game_of(model, features, mask, player_mask, groups=[[0, 1], [4, 5, 7, 8], [6, 9], [10, 11]])
    assert by_index.player_positions == [[1, 2], [3], [4], [0, 1, 3, 4], [2, 5], [6, 7], [8]]
    # maps: player scores sum the members, token maps spread back
    token_map = {"text": torch.arange(7.0), "image": torch.ones(9)}
    assert game.player_scores(token_map).tolist() == [3.0, 3.0, 4.0, 4.0, 2.0, 2.0, 1.0]
    spread = game.token_map(torch.arange(7.0))
    assert spread["text"].tolist() == [0, 0, 0, 1, 2, 0, 0]
    assert spread["image"].tolist() == [3, 3, 4, 3, 3, 4, 5, 5, 6]


def test_multilabel_target_and_dense_model(example):
    features, mask, player_mask = example
    model = make_model(problem_type="multi_label_classification", num_labels=4)
    with torch.no_grad():
        logits = model.head_logits(features, mask)[0]
    game = game_of(model, features, mask, player_mask)
    positive = (logits > 0).nonzero().flatten().tolist()
    assert game.target == (positive or [int(logits.argmax())])
    assert game.value_full == pytest.approx(float(logits[game.target].mean()), abs=1e-5)
    assert select_target(torch.tensor([-1.0, -0.5, -2.0]), "multi_label_classification") == [1]
    assert select_target(torch.tensor([1.0, -0.5, 2.0]), "multi_label_classification") == [0, 2]
    prob = game_of(model, features, mask, player_mask, output="probability")
    assert prob.value_full == pytest.approx(float(torch.sigmoid(logits[game.target]).mean()), abs=1e-6)

    dense = make_model(mixture="dense")
    for head in ("mixture", "dense"):
        game = game_of(dense, features, mask, player_mask, head=head)
        with torch.no_grad():
            expected = dense(features=features, attention_mask=mask).logits[0].max()
        assert game.value_full == pytest.approx(float(expected), abs=1e-5)


def test_autocast_bf16_is_close(model, example):
    features, mask, player_mask = example
    coalitions = random_coalitions(13, 8, seed=2)
    fp32 = game_of(model, features, mask, player_mask)(coalitions)
    bf16 = game_of(model, features, mask, player_mask, autocast_dtype=torch.bfloat16)(coalitions)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0.05)


def test_errors(model, example):
    features, mask, player_mask = example
    game = game_of(model, features, mask, player_mask)
    with pytest.raises(TypeError, match="BoolTensor"):
        game(torch.ones(2, game.n_players))
    with pytest.raises(TypeError, match="boolean"):
        game(np.ones((2, game.n_players), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\(k, n_players\)"):
        game(torch.ones(2, game.n_players + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="coalition\\[None\\]"):
        game(torch.ones(game.n_players, dtype=torch.bool))
    assert game.evaluations == 0
    batch = {n: x.expand(2, -1, -1) for n, x in features.items()}
    with pytest.raises(ValueError, match="batch size 2"):
        game_of(model, batch)
    with pytest.raises(TypeError, match=r"FeatureGame takes an ExplainedExample, got FLI2MoEModel: prepare"):
        FeatureGame(model, features, mask, player_mask)
    with pytest.raises(TypeError, match="got dict"):
        FeatureGame(features)
    with pytest.raises(ValueError, match="no players"):
        game_of(model, features, mask, player_mask={"text": torch.zeros(7), "image": torch.zeros(9)})
    with pytest.raises(ValueError, match="unknown head"):
        game_of(model, features, mask, head="nope")
    with pytest.raises(ValueError, match=r"fill must be one of \['mean', 'remove'\] for a game"):
        game_of(model, features, mask, fill="zero")
    with pytest.raises(ValueError, match="output"):
        game_of(model, features, mask, output="prob")
    with pytest.raises(ValueError, match="target"):
        game_of(model, features, mask, target=7)
    with pytest.raises(ValueError, match="overlap"):
        game_of(model, features, mask, groups={"image": [[0, 1], [1, 2]]})
    with pytest.raises(ValueError, match="one modality"):
        game_of(model, features, mask, player_mask, groups=[[0, 5]])
    with pytest.raises(ValueError, match="player index"):
        game_of(model, features, mask, player_mask, groups=[[99]])
    with pytest.raises(ValueError, match="player_mask\\['text'\\] has 3 entries"):
        game_of(model, features, mask, player_mask={"text": torch.ones(3)})


def test_check_random_state():
    a = check_random_state(3).integers(0, 1000, 5)
    assert (a == check_random_state(3).integers(0, 1000, 5)).all()
    g = np.random.default_rng(0)
    assert check_random_state(g) is g
    t1 = check_random_state(torch.Generator().manual_seed(4)).integers(0, 1000, 5)
    t2 = check_random_state(torch.Generator().manual_seed(4)).integers(0, 1000, 5)
    assert (t1 == t2).all()
    with pytest.raises(TypeError, match="random_state"):
        check_random_state("seed")


def test_heads_of_one_example_share_a_forward_pass(model, example, monkeypatch):
    """`shared_values` and `ExplainedExample.occlusion_effects_of` give every head's own values from one pass of
    the experts per chunk (the mixture's pass computes every expert), and each game still counts its rows."""
    from modeling_fli2moe import kernels
    from modeling_fli2moe.explain.game import shared_values

    features, mask, player_mask = example
    heads = ["mixture", *model.config.expert_names]
    fresh = ExplainedExample(model, features, mask, player_mask)
    games = [fresh.game_for(h, output="log_odds", chunk_size=16) for h in heads]
    rows = torch.rand(40, games[0].n_players, generator=torch.Generator().manual_seed(0)) < 0.5
    alone = [g(rows) for g in games]
    passes = []
    coalition_logits = kernels.coalition_logits
    monkeypatch.setattr(kernels, "coalition_logits", lambda *a, **k: passes.append(1) or coalition_logits(*a, **k))
    together = shared_values(games, rows)
    assert len(passes) == 3  # 40 rows in chunks of 16, every head at once
    for a, b in zip(alone, together):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert all(g.evaluations == 80 for g in games)
    [g.value_empty for g in games]  # the reference values are one pass each, computed once
    passes.clear()
    effects = fresh.occlusion_effects_of(games)
    assert len(passes) == -(-2 * games[0].n_players // 16)
    for g, e in zip(games, effects):
        reference = fresh.game_for(g.head, output="log_odds", chunk_size=16)
        torch.testing.assert_close(e.removal, float(reference.value_full) - reference(~torch.eye(g.n_players, dtype=torch.bool)).double(),
                                   atol=1e-5, rtol=1e-5)
    assert fresh.occlusion_effects(games[1]) is effects[1]  # cached


def test_games_that_cannot_share_a_pass_are_evaluated_one_by_one(model, example):
    from modeling_fli2moe.explain.game import shared_values

    features, mask, player_mask = example
    fresh = ExplainedExample(model, features, mask, player_mask)
    games = [fresh.game_for("mixture", fill="mean"), fresh.game_for("synergy", fill="remove")]
    assert not games[0].shares_forward_with(games[1])
    assert fresh.game_for("mixture", fill="remove").shares_forward_with(games[1])  # same fill: one pass
    rows = torch.ones(3, games[0].n_players, dtype=torch.bool)
    for g, values in zip(games, shared_values(games, rows)):
        torch.testing.assert_close(values, g(rows))


def test_context_effects_catch_both_tokens_of_an_and_pair_and_of_an_or_pair():
    """In each antithetic pair of half-full contexts a pair's partner is present in exactly one: every token of
    an AND pair (worth 1 together) and of an OR pair (worth 1 if either) has the effect 1 in exactly one
    of the two, and a player without a term has none; the cost is one batch of 2 (n + 1) rows per pair."""
    from modeling_fli2moe.explain.occlusion import context_effects
    from modeling_fli2moe.testing.games import PlantedGame

    game = PlantedGame(8, and_pair=(0, 1), or_pair=(2, 3), noise_scale=0.0, n_noise_pairs=0, random_state=0)
    for seed in range(5):
        before = game.evaluations
        effects = context_effects(game, n_pairs=2, random_state=seed)
        assert effects.shape == (4, 8) and game.evaluations - before == 4 * 9
        for first, second in ((effects[0], effects[2]), (effects[1], effects[3])):  # S and its complement
            torch.testing.assert_close(first[:4] + second[:4], torch.ones(4, dtype=torch.float64))
            assert set(first[:4].tolist()) <= {0.0, 1.0}
        assert not effects[:, 4:].any()
    torch.testing.assert_close(context_effects(game, random_state=3), context_effects(game, random_state=3))
