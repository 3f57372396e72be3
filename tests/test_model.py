"""The FL-I2MoE config and model: shapes, equivalence with the sequential reference, masking, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_fli2moe import FLI2MoEConfig, FLI2MoEModel
from modeling_fli2moe.testing.models import random_inputs, tiny_config

from .sequential_reference import sequential_forward


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "field, value, match",
    [
        ("fill", "gauss", r"fill: expected one of \['noise', 'zero', 'mean', 'remove'\]"),
        ("interaction_space", "hidden", r"interaction_space: expected one of \['latent', 'logits'\]"),
        ("mixture", "sparse", r"mixture: expected one of \['interaction', 'dense'\]"),
        ("num_heads", 5, r"num_heads: must divide hidden_size"),
        ("dropout", 1.5, r"dropout: expected a float in \[0, 1\)"),
        ("token_masking", 1.5, r"token_masking: expected a float in \[0, 1\]"),
        ("token_masking", True, r"token_masking: expected a float in \[0, 1\]"),
        ("router_layers", 0, r"router_layers"),
        ("router_temperature", 0.0, r"router_temperature"),
        ("problem_type", "ranking", r"problem_type: expected one of"),
        ("modalities", [], r"modalities: expected a non-empty list"),
        ("modalities", [{"name": "a", "input_dim": 4}, {"name": "a", "input_dim": 4}], r"duplicate modality name"),
        ("modalities", [{"name": "a"}], r"modalities\[0\].input_dim"),
        ("modalities", [{"name": "a", "input_dim": 3, "encoder": {"type": "bert"}}], r"modalities\[0\].encoder"),
    ],
)
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**{field: value})


def test_config_roundtrip_and_derived(tmp_path):
    cfg = tiny_config(id2label={0: "a", 1: "b", 2: "c"})
    assert cfg.num_experts == 4
    assert cfg.expert_names == ["uniqueness_text", "uniqueness_image", "synergy", "redundancy"]
    assert cfg.label2id == {"a": 0, "b": 1, "c": 2}
    cfg.save_pretrained(tmp_path)
    again = FLI2MoEConfig.from_pretrained(tmp_path)
    assert again.modalities == cfg.modalities and again.id2label == cfg.id2label
    assert tiny_config(mixture="dense").num_experts == 1


# ------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("mixture, experts", [("interaction", 4), ("dense", 1)])
def test_output_shapes(mixture, experts, generator):
    cfg = tiny_config(mixture=mixture)
    model = FLI2MoEModel(cfg)
    feats, masks = random_inputs(cfg, batch_size=3, generator=generator)
    out = model(feats, masks, labels=torch.tensor([0, 2, 1]))
    assert out.logits.shape == (3, 3)
    assert out.expert_logits.shape == (3, experts, 3)
    assert out.expert_weights.shape == (3, experts)
    assert out.latents.shape == (3, experts, 2 * cfg.hidden_size)
    assert torch.allclose(out.expert_weights.sum(-1), torch.ones(3))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    if mixture == "interaction":
        assert out.expert_interaction_losses.shape == (4,)
        expected = out.task_loss + cfg.interaction_loss_weight * out.interaction_loss
        assert torch.allclose(out.loss, expected)
    else:
        assert out.interaction_loss is None and torch.allclose(out.loss, out.task_loss)
    # per-expert outputs at inference too, without labels
    model.eval()
    inf = model(feats, masks)
    assert inf.loss is None and inf.expert_logits.shape == (3, experts, 3)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"fill": "zero"},
        {"fill": "mean", "interaction_space": "logits"},
        {"mixture": "dense"},
        {"names": ("a", "b", "c"), "dims": (6, 8, 10)},
    ],
)
def test_batched_model_equals_sequential_reference(overrides):
    cfg = tiny_config(**overrides)
    torch.manual_seed(0)
    model = FLI2MoEModel(cfg).eval()
    model.set_modality_means({n: torch.randn(m["input_dim"]) for n, m in zip(cfg.modality_names, cfg.modalities)})
    feats, masks = random_inputs(cfg, batch_size=5, generator=torch.Generator().manual_seed(1))
    masks[cfg.modality_names[0]][2] = 0  # one all-padding row
    labels = torch.tensor([0, 1, 2, 1, 0])
    batched = model(feats, masks, labels=labels, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference = sequential_forward(model, feats, masks, labels=labels, generator=torch.Generator().manual_seed(7))
    for key in ("logits", "expert_logits", "expert_weights", "task_loss", "loss"):
        torch.testing.assert_close(getattr(batched, key), reference[key], atol=1e-5, rtol=1e-4, msg=key)
    if cfg.mixture == "interaction":
        torch.testing.assert_close(batched.expert_interaction_losses, reference["expert_interaction_losses"], atol=1e-5, rtol=1e-4)


def test_token_masking_replaces_tokens_by_the_projected_mean_in_training_only(generator):
    """Each token is its own projection or its modality's projected mean token (the explanations' fill), at a
    rate drawn per example from U(0, token_masking); eval mode and token_masking=0 leave every token."""
    cfg = tiny_config(token_masking=1.0)
    torch.manual_seed(0)
    model = FLI2MoEModel(cfg)
    model.set_modality_means({n: torch.randn(m["input_dim"]) for n, m in zip(cfg.modality_names, cfg.modalities)})
    feats, masks = random_inputs(cfg, batch_size=64, tokens={"text": 40, "image": 40}, generator=generator)
    projected = model.project(feats)
    means = model.projected_modality_means()
    bool_masks = {n: m.bool() for n, m in masks.items()}
    masked, kept = model.mask_tokens(projected, bool_masks, torch.Generator().manual_seed(3))
    assert all(torch.equal(kept[n], bool_masks[n]) for n in cfg.modality_names)  # the mean fill keeps every token
    rates = []
    for n in cfg.modality_names:
        own = (masked[n] == projected[n]).all(-1)
        fill = (masked[n] == means[n]).all(-1)
        assert bool((own | fill).all())
        rates.append(fill.float().mean(1))
    # one rate per example, shared by the modalities: U(0, 1) has mean 1/2 and spreads over [0, 1]
    per_example = (rates[0] + rates[1]) / 2
    assert 0.4 < float(per_example.mean()) < 0.6 and float(per_example.min()) < 0.15 and float(per_example.max()) > 0.85
    assert float(torch.corrcoef(torch.stack(rates))[0, 1]) > 0.8
    labels = torch.zeros(64, dtype=torch.long)
    train_out = model(feats, masks, labels=labels, generator=torch.Generator().manual_seed(3)).logits
    model.config.token_masking = 0.0
    plain = model(feats, masks, labels=labels).logits
    assert not torch.allclose(train_out, plain)
    model.config.token_masking = 1.0
    model.eval()
    torch.testing.assert_close(model(feats, masks).logits, plain)


def test_token_masking_with_the_remove_fill_masks_tokens_out(generator):
    """With `fill="remove"` token masking drops tokens from the masks (the same draws as the mean fill's
    replacements) and leaves the projections as they are."""
    cfg = tiny_config(token_masking=1.0, fill="remove")
    torch.manual_seed(0)
    model = FLI2MoEModel(cfg)
    feats, masks = random_inputs(cfg, batch_size=64, tokens={"text": 40, "image": 40}, generator=generator)
    projected = model.project(feats)
    bool_masks = {n: m.bool() for n, m in masks.items()}
    same, kept = model.mask_tokens(projected, bool_masks, torch.Generator().manual_seed(3))
    mean_model = FLI2MoEModel(tiny_config(token_masking=1.0))
    mean_model.load_state_dict(model.state_dict())
    replaced, _ = mean_model.mask_tokens(projected, bool_masks, torch.Generator().manual_seed(3))
    for n in cfg.modality_names:
        assert torch.equal(same[n], projected[n])
        dropped = bool_masks[n] & ~kept[n]
        assert not bool((kept[n] & ~bool_masks[n]).any())  # padding stays padding
        assert 0.3 < float(dropped.float().sum() / bool_masks[n].float().sum()) < 0.7
        torch.testing.assert_close(dropped, bool_masks[n] & (replaced[n] != projected[n]).any(-1))
    labels = torch.zeros(64, dtype=torch.long)
    train_out = model(feats, masks, labels=labels, generator=torch.Generator().manual_seed(3)).logits
    model.eval()
    assert not torch.allclose(train_out, model(feats, masks).logits)


def test_interaction_loss_gradients_flow_through_knocked_out_passes(generator):
    cfg = tiny_config(interaction_loss_weight=1.0)
    model = FLI2MoEModel(cfg)
    feats, masks = random_inputs(cfg, generator=generator)
    out = model(feats, masks, labels=torch.tensor([0, 1, 2, 0]))
    out.interaction_loss.backward()
    # latent space: everything but the classification heads is trained by the interaction loss
    grads = [p.grad for name, p in model.experts.named_parameters() if not name.startswith("head.")]
    assert all(g is not None for g in grads) and all(g.abs().sum() > 0 for g in grads)
    assert model.projections["image"].weight.grad.abs().sum() > 0


def test_padded_positions_never_change_the_output(generator):
    cfg = tiny_config()
    model = FLI2MoEModel(cfg).eval()
    feats, masks = random_inputs(cfg, batch_size=4, tokens={"text": 6, "image": 5}, generator=generator)
    masks["text"][:, 4:] = 0
    masks["image"][1, 3:] = 0
    base = model(feats, masks).logits
    # new values at padded positions
    noisy = {n: f.clone() for n, f in feats.items()}
    noisy["text"][:, 4:] = 1e3 * torch.randn_like(noisy["text"][:, 4:])
    noisy["image"][1, 3:] = -7.0
    torch.testing.assert_close(model(noisy, masks).logits, base)
    # more padding tokens appended (longer text padding must not shift the image positions)
    longer = dict(feats, text=torch.cat([feats["text"], torch.randn(4, 9, 12)], dim=1))
    longer_masks = dict(masks, text=torch.cat([masks["text"], torch.zeros(4, 9, dtype=torch.long)], dim=1))
    torch.testing.assert_close(model(longer, longer_masks).logits, base, atol=1e-5, rtol=1e-5)


def test_all_padding_rows_are_finite(generator):
    cfg = tiny_config()
    model = FLI2MoEModel(cfg)
    feats, masks = random_inputs(cfg, batch_size=3, generator=generator)
    masks["image"][0] = 0  # one modality all padding
    masks["text"][1] = 0
    masks["image"][2] = 0
    masks["text"][2] = 0  # everything padding
    out = model(feats, masks, labels=torch.tensor([0, 1, 2]))
    for key in ("logits", "expert_logits", "expert_weights", "latents", "loss"):
        assert torch.isfinite(getattr(out, key)).all(), key
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_attention_maps_recorded_on_request(generator):
    cfg = tiny_config()
    model = FLI2MoEModel(cfg).eval()
    feats, masks = random_inputs(cfg, batch_size=2, generator=generator)
    fast = model(feats, masks)
    assert fast.attentions is None
    model.set_attn_implementation("eager")
    slow = model(feats, masks, output_attentions=True)
    t = sum(f.shape[1] for f in feats.values())
    assert len(slow.attentions) == cfg.num_layers
    assert slow.attentions[0].shape == (4, 2, cfg.num_heads, t, t)
    torch.testing.assert_close(slow.logits, fast.logits, atol=1e-5, rtol=1e-5)
    # gradients with respect to the recorded maps exist (needed by gradient-weighted rollout)
    slow = model(feats, masks, output_attentions=True)
    grads = torch.autograd.grad(slow.logits[:, 0].sum(), slow.attentions)
    assert all(g.abs().sum() > 0 for g in grads)


def test_single_expert_head_matches_full_model(generator):
    cfg = tiny_config()
    model = FLI2MoEModel(cfg).eval()
    feats, masks = random_inputs(cfg, generator=generator)
    out = model(feats, masks)
    for e, name in enumerate(cfg.expert_names):
        torch.testing.assert_close(model.head_logits(feats, masks, head=name), out.expert_logits[:, e], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.head_logits(feats, masks, head="mixture"), out.logits)
    for bad in ("synergyy", 4, -1, True, 1.0):
        with pytest.raises(ValueError, match=rf"unknown head {bad!r}; use 'mixture', one of this model's experts"):
            model.head_logits(feats, masks, head=bad)
    assert [model.resolve_head(h) for h in ("mixture", "synergy", 0, np.int64(3))] == [
        "mixture", "synergy", "uniqueness_text", "redundancy"]
    assert model.resolve_experts(["synergy", 1]).tolist() == [2, 1]
    with pytest.raises(ValueError, match="'mixture' is not an expert"):
        model.resolve_experts("mixture")


def test_multi_label_and_regression_losses(generator):
    cfg = tiny_config(problem_type="multi_label_classification", num_labels=4)
    model = FLI2MoEModel(cfg)
    feats, masks = random_inputs(cfg, batch_size=2, generator=generator)
    out = model(feats, masks, labels=torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0]]))
    assert torch.isfinite(out.loss)
    reg = FLI2MoEModel(tiny_config(num_labels=1, mixture="dense"))
    out = reg(feats, masks, labels=torch.tensor([0.5, -1.0]))
    assert reg.config.problem_type == "regression" and torch.isfinite(out.loss)


# -------------------------------------------------------------------------------------- bad input
def _bad(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def test_bad_inputs_name_the_problem(generator):
    cfg = tiny_config()
    model = FLI2MoEModel(cfg)
    feats, masks = random_inputs(cfg, batch_size=2, generator=generator)
    _bad(lambda: model({"text": feats["text"]}), r"missing modality 'image'.*\['text', 'image'\]")
    _bad(lambda: model(dict(feats, audio=feats["text"])), r"unknown modality 'audio'")
    _bad(lambda: model(dict(feats, image=torch.randn(2, 7, 21))), r"features\['image'\] has feature dimension 21.*input_dim=20")
    _bad(lambda: model(dict(feats, image=torch.randn(7, 20))), r"features\['image'\] must be a tensor of shape \(B, T, 20\)")
    _bad(lambda: model(dict(feats, image=torch.randn(3, 7, 20))), r"batch size 3")
    _bad(lambda: model(dict(feats, text=torch.randn(2, 0, 12))), r"features\['text'\] has no tokens")
    _bad(lambda: model(feats, dict(masks, image=torch.ones(2, 3))), r"attention_mask\['image'\] has shape \(2, 3\), expected \(2, 7\)")
    # problem_type None: a row of labels per example is multi-hot; a wrong call does not fix problem_type
    _bad(lambda: model(feats, masks, labels=torch.tensor([[0, 1]])), r"multi_label_classification must be multi-hot of shape \(2, 3\)")
    assert model.config.problem_type is None
    single = FLI2MoEModel(tiny_config(problem_type="single_label_classification"))
    _bad(lambda: single(feats, masks, labels=torch.tensor([[0, 1]])), r"single_label_classification must be class indices of shape \(2,\)")
    _bad(lambda: model(feats, masks, labels=torch.tensor([0, 3])), r"class indices in \[0, 3\)")
    multi = FLI2MoEModel(tiny_config(problem_type="multi_label_classification"))
    _bad(lambda: multi(feats, masks, labels=torch.ones(2, 5)), r"multi-hot of shape \(2, 3\)")
    with pytest.raises(TypeError, match="features must be a dict"):
        model(torch.randn(2, 3, 12))
    with pytest.raises(ValueError, match="set_modality_means: missing modality 'image'"):
        model.set_modality_means({"text": torch.zeros(12)})
