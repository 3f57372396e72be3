"""Attribution maps: planted ground truth, zeros at non-players, batching of heads, serialisation."""

import functools
import json

import pytest
import torch

from modeling_fli2moe import FLI2MoEModel
from modeling_fli2moe.explain.attribution import (
    ATTRIBUTION_METHODS,
    AttentionRolloutGrad,
    GradientXInput,
    IntegratedGradients,
    Occlusion,
    attribute,
    rollout,
)
from modeling_fli2moe.explain.game import ExplainedExample
from modeling_fli2moe.explain.results import AttributionMaps
from modeling_fli2moe.testing.models import random_inputs, tiny_config

PLANTED_TEXT, PLANTED_IMAGE, PLANTED_POSITION = 6, 8, 2


pytestmark = pytest.mark.usefixtures("one_thread")


def planted_batch(n: int, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random features where text token 2 alone decides the label: its feature 0 is +3 (label 1) or -3
    (label 2), and every other token has feature 0 = 0. Label 0: no evidence, token 2 is the all-zero
    dataset-mean token, i.e. exactly what masking it with fill="mean" gives."""
    features = {
        "text": torch.randn(n, PLANTED_TEXT, 12, generator=generator),
        "image": torch.randn(n, PLANTED_IMAGE, 20, generator=generator),
    }
    labels = torch.randint(0, 3, (n,), generator=generator)
    features["text"][:, :, 0] = 0.0
    features["text"][:, PLANTED_POSITION, 0] = torch.tensor([0.0, 3.0, -3.0])[labels]
    features["text"][labels == 0, PLANTED_POSITION] = 0.0
    return features, labels


@functools.cache
def planted_model(mixture: str = "interaction", steps: int = 60) -> FLI2MoEModel:
    """A tiny model trained (task loss only, fixed seeds, one thread) on `planted_batch`; cached."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = FLI2MoEModel(tiny_config(num_labels=3, mixture=mixture))
        generator = torch.Generator().manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(steps):
            features, labels = planted_batch(32, generator)
            loss = model(features=features, labels=labels, compute_interaction_loss=False).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
    finally:
        torch.set_num_threads(before)
    return model


def planted_examples(n: int = 4) -> list[dict[str, torch.Tensor]]:
    """`n` test examples that carry evidence (label 1 or 2)."""
    features, labels = planted_batch(4 * n, torch.Generator().manual_seed(123))
    rows = (labels > 0).nonzero().flatten()[:n].tolist()
    return [{k: v[i : i + 1] for k, v in features.items()} for i in rows]


def top_token(maps: AttributionMaps, head: str) -> tuple[str, int]:
    best = max(((m, int(t.argmax()), float(t.max())) for m, t in maps[head].items()), key=lambda r: r[2])
    return best[0], best[1]


# where each method is reliable on these tiny planted models (checked on more examples than tested):
# IG on both (on the interaction mixture, every example for each of 6 init seeds). Gradient x input is
# not: on the dense model it saturates (LayerNorm flattens the gradient along the planted token's large
# feature), and on the interaction mixture it misranks the planted token in some example for 3 of 6 init
# seeds (a local gradient); it is checked against its definition below instead. Rollout is not reliable
# here: the evidence reaches the pooled latent through the token's own residual stream, which the "+ I"
# of every layer credits to all tokens alike, so its maps stay within ~1e-3 of uniform; it is checked
# against a per-expert reference and a hand-made case below instead.
@pytest.mark.parametrize(
    "mixture, method",
    [("interaction", "integrated_gradients"), ("dense", "integrated_gradients")],
)
def test_planted_token_is_top(mixture, method):
    model = planted_model(mixture)
    features, labels = planted_batch(96, torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert (model(features=features).logits.argmax(-1) == labels).float().mean() > 0.95
    for example in planted_examples():
        maps = attribute(ExplainedExample(model, example), method=method)
        expected_heads = ["mixture"] if mixture == "dense" else model.config.expert_names + ["mixture"]
        assert maps.heads == expected_heads
        assert top_token(maps, "mixture") == ("text", PLANTED_POSITION), maps["mixture"]


@pytest.mark.parametrize("method", ATTRIBUTION_METHODS)
def test_maps_are_zero_at_padding_and_non_players(method):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = FLI2MoEModel(tiny_config()).eval()
    features, mask = random_inputs(model.config, batch_size=1, tokens={"text": 7, "image": 9},
                                   generator=torch.Generator().manual_seed(2))
    mask["text"][0, 5:] = 0
    player_mask = {"text": torch.tensor([0, 1, 1, 1, 1, 1, 1])}
    maps = attribute(ExplainedExample(model, features, mask, player_mask), method=method)
    players = {"text": torch.tensor([0, 1, 1, 1, 1, 0, 0], dtype=torch.bool), "image": mask["image"][0].bool()}
    assert not players["image"].all()  # the image has padding too
    for head in maps.heads:
        for name, length in (("text", 7), ("image", 9)):
            values = maps[head][name]
            assert values.shape == (length,)
            assert (values[~players[name]] == 0).all() and (values[players[name]] > 0).all()
    assert maps.player_mask["text"].tolist() == players["text"].tolist()
    # serialisation round trip through JSON
    back = AttributionMaps.from_dict(json.loads(json.dumps(maps.to_dict())))
    assert back.method == method and back.targets == maps.targets
    for head in maps.heads:
        torch.testing.assert_close(back[head]["text"], maps[head]["text"])
    assert back.expert_weights == pytest.approx(maps.expert_weights)


def test_gradient_x_input_matches_a_per_head_backward():
    """The replicated batch gives every head its own gradient (checked against one backward per head)."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = FLI2MoEModel(tiny_config()).eval()
        model.set_modality_means({"text": torch.randn(12), "image": torch.randn(20)})
    features, mask = random_inputs(model.config, batch_size=1, generator=torch.Generator().manual_seed(4))
    maps = attribute(ExplainedExample(model, features, mask), method="gradient_x_input")
    means = model.get_modality_means()
    names = model.config.expert_names
    for head in maps.heads:
        leaves = {n: x.clone().requires_grad_(True) for n, x in features.items()}
        out = model(features=leaves, attention_mask=mask)
        logits = out.logits[0] if head == "mixture" else out.expert_logits[0, names.index(head)]
        assert maps.targets[head] == [int(logits.argmax())]
        grads = torch.autograd.grad(logits[maps.targets[head][0]], list(leaves.values()))
        for (n, x), g in zip(features.items(), grads):
            expected = ((g * (x - means[n]))[0].sum(-1).abs()) * mask[n][0]
            torch.testing.assert_close(maps[head][n], expected, atol=1e-6, rtol=1e-4)


def test_rollout_matches_a_per_expert_reference():
    """One shared backward for all experts equals one backward per expert, rolled out in a plain loop."""
    model = planted_model("interaction")
    example = planted_examples(1)[0]
    maps = attribute(ExplainedExample(model, example), heads=model.config.expert_names)
    assert model.config._attn_implementation == "sdpa"  # attribute switched to eager for the maps and back
    model.set_attn_implementation("eager")
    try:
        out = model(features=example, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    lengths = [example[n].shape[1] for n in model.modality_names]
    for e, head in enumerate(model.config.expert_names):
        logit = out.expert_logits[0, e, maps.targets[head][0]]
        grads = torch.autograd.grad(logit, out.attentions, retain_graph=True)
        t = sum(lengths)
        relevance = torch.eye(t)
        for a, g in zip(out.attentions, grads):
            layer = (a[e, 0].clamp_min(0) * g[e, 0].clamp_min(0)).mean(0) + torch.eye(t)
            layer = layer / layer.sum(-1, keepdim=True)
            relevance = layer @ relevance
        expected = relevance.mean(0).split(lengths)
        for n, values in zip(model.modality_names, expected):
            torch.testing.assert_close(maps[head][n], values.detach(), atol=1e-6, rtol=1e-5)


def test_mixture_rollout_is_the_router_weighted_sum_of_expert_rollouts():
    model = planted_model("interaction")
    example = planted_examples(1)[0]
    prepared = ExplainedExample(model, example)
    mixture = attribute(prepared, heads=["mixture"])
    target = mixture.targets["mixture"]
    experts = attribute(prepared, heads=model.config.expert_names, target=target)
    for n in model.modality_names:
        combined = sum(mixture.expert_weights[e] * experts[e][n] for e in model.config.expert_names)
        torch.testing.assert_close(mixture["mixture"][n], combined, atol=1e-6, rtol=1e-5)


def test_rollout_function():
    t = 4
    valid = torch.tensor([True, True, True, False])
    attn = torch.full((1, 2, 2, t, t), 0.25)
    # no positive gradient: every layer is the identity, importance = 1 / n_valid on valid tokens
    flat = rollout(attn, torch.zeros_like(attn), valid)
    torch.testing.assert_close(flat[0, :3], torch.full((3,), 1 / 3))
    assert flat[0, 3] == 0
    # positive gradient on attention to token 1 only: token 1 gains importance
    grads = torch.zeros_like(attn)
    grads[..., 1] = 4.0
    peaked = rollout(attn, grads, valid)[0]
    assert int(peaked.argmax()) == 1 and peaked.sum().item() == pytest.approx(1.0)


def test_attribute_errors():
    model = planted_model("interaction")
    features = planted_examples(1)[0]
    example = ExplainedExample(model, features)
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(example, method="lime")
    with pytest.raises(ValueError, match="unknown head"):
        attribute(example, heads=["nope"])
    with pytest.raises(ValueError, match="batch size 2"):
        ExplainedExample(model, {k: v.expand(2, -1, -1) for k, v in features.items()})
    with pytest.raises(TypeError, match=r"attribute takes an ExplainedExample, got FLI2MoEModel: prepare"):
        attribute(model, example)
    with pytest.raises(TypeError, match=r"GradientXInput.attribute takes an ExplainedExample, got dict"):
        GradientXInput().attribute(features)
    with pytest.raises(ValueError, match="target"):
        attribute(example, target=5)
    maps = attribute(example, heads=["synergy", 1], method="gradient_x_input")
    assert maps.heads == ["synergy", "uniqueness_image"]
    with pytest.raises(KeyError, match="no map for head"):
        maps["mixture"]


def test_one_class_per_method_behind_the_names():
    """`attribute(example, method=name)` is the class registered under that name, with the options it takes."""
    assert ATTRIBUTION_METHODS == {"occlusion": Occlusion, "attn_rollout_grad": AttentionRolloutGrad,
                                   "integrated_gradients": IntegratedGradients, "gradient_x_input": GradientXInput}
    assert all(cls.name == name for name, cls in ATTRIBUTION_METHODS.items())
    model = planted_model("interaction")
    example = ExplainedExample(model, planted_examples(1)[0])
    for by_name, by_class in [
        (attribute(example, method="integrated_gradients", heads=["mixture"], n_steps=4),
         IntegratedGradients(n_steps=4).attribute(example, heads=["mixture"])),
        (attribute(example, method="occlusion", heads=["synergy"], output="probability", chunk_size=7),
         Occlusion(output="probability", chunk_size=7).attribute(example, heads=["synergy"])),
        (attribute(example, method="gradient_x_input"), GradientXInput().attribute(example)),
    ]:
        assert by_name.method == by_class.method and by_name.targets == by_class.targets
        for head in by_name.heads:
            for name in model.modality_names:
                torch.testing.assert_close(by_name[head][name], by_class[head][name], rtol=0, atol=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):  # occlusion's games check them
        attribute(example, method="occlusion", colour="red")
