"""A plain, readable, sequential FL-I2MoE: one expert at a time, one knocked-out modality at a time.

It reads the batched model's weights and recomputes SPEC sections 2-3 with Python loops, so the tests
can check that the stacked implementation computes the same thing. It is also the baseline of
`bench/train_step.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from modeling_fli2moe import FLI2MoEModel


def _linear(stacked, e: int, x: torch.Tensor) -> torch.Tensor:
    return x @ stacked.weight[e] + stacked.bias[e]


def _layer_norm(stacked, e: int, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], stacked.weight[e], stacked.bias[e], eps=stacked.eps)


def _positions(length: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sinusoidal codes, counted inside one modality: sin on even, cos on odd channels."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe.to(device)


def _dropout(model: FLI2MoEModel, x: torch.Tensor) -> torch.Tensor:
    return F.dropout(x, p=model.config.dropout, training=model.training)


def run_expert(model: FLI2MoEModel, e: int, projected: dict, masks: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert `e` on one (possibly knocked-out) batch: returns (logits (B, C), latent (B, M*H))."""
    cfg = model.config
    names = model.modality_names
    parts, segments, start = [], [], 0
    for i, n in enumerate(names):
        p = projected[n]
        parts.append(p + _positions(p.shape[1], p.shape[2], p.device) + model.modality_embeddings.weight[i])
        segments.append((start, start + p.shape[1]))
        start += p.shape[1]
    x = torch.cat(parts, dim=1)
    mask = torch.cat([masks[n] for n in names], dim=1).bool()
    b, t, h = x.shape
    heads, d = cfg.num_heads, h // cfg.num_heads
    for layer in model.experts.layers:
        y = _layer_norm(layer.attn_norm, e, x)
        q, k, v = _linear(layer.qkv, e, y).split(h, dim=-1)
        # rows without any valid token attend to everything (their outputs are pooled away)
        valid = mask | ~mask.any(dim=1, keepdim=True)
        q, k, v = (z.view(b, t, heads, d).transpose(1, 2) for z in (q, k, v))  # (B, heads, T, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h)
        x = x + _dropout(model, _linear(layer.attn_out, e, out))
        y = _layer_norm(layer.ffn_norm, e, x)
        ffn = []
        for m, (s0, s1) in enumerate(segments):
            ffn.append(_linear(layer.ffn_out[m], e, F.gelu(_linear(layer.ffn_in[m], e, y[:, s0:s1]))))
        x = x + _dropout(model, torch.cat(ffn, dim=1))
    x = _layer_norm(model.experts.final_norm, e, x)
    pooled = []
    for s0, s1 in segments:
        mk = mask[:, s0:s1].float().unsqueeze(-1)
        pooled.append((x[:, s0:s1] * mk).sum(1) / mk.sum(1).clamp_min(1.0))
    latent = torch.cat(pooled, dim=-1)
    return _linear(model.experts.head, e, latent), latent


def sequential_forward(model: FLI2MoEModel, features: dict, masks: dict, labels=None, generator=None) -> dict:
    """Loop over experts and knocked-out modalities; the same noise draws, in the same order, as the model."""
    cfg = model.config
    names = model.modality_names
    masks = {n: masks[n].bool() for n in names}
    projected = {n: model.projections[n](features[n]) for n in names}
    if model.router is None:
        weights = torch.ones(features[names[0]].shape[0], 1, device=features[names[0]].device)
    else:
        pooled = []
        for n in names:
            mk = masks[n].float().unsqueeze(-1)
            pooled.append(F.normalize((projected[n] * mk).sum(1) / mk.sum(1).clamp_min(1.0), dim=-1))
        weights = torch.softmax(model.router.mlp(torch.cat(pooled, -1)) / cfg.router_temperature, dim=-1)

    expert_logits, latents = [], []
    for e in range(cfg.num_experts):
        lg, lt = run_expert(model, e, projected, masks)
        expert_logits.append(lg)
        latents.append(lt)
    logits = sum(weights[:, e : e + 1] * expert_logits[e] for e in range(cfg.num_experts))
    result = {"logits": logits, "expert_logits": torch.stack(expert_logits, 1), "expert_weights": weights}
    if labels is None:
        return result
    task = F.cross_entropy(logits, labels) if labels.dim() == 1 else F.binary_cross_entropy_with_logits(logits, labels)
    result["task_loss"] = task
    if cfg.mixture == "dense":
        result["loss"] = task
        return result

    knocked = {}  # knocked[j][e] = (logits, latent) of expert e with modality j replaced
    for j in names:
        if cfg.fill == "noise":
            fill = torch.randn(projected[j].shape, generator=generator, device=projected[j].device)
        elif cfg.fill == "zero":
            fill = torch.zeros_like(projected[j])
        else:
            fill = model.projections[j](getattr(model.modality_means, j)).expand_as(projected[j])
        perturbed = dict(projected, **{j: fill})
        knocked[j] = [run_expert(model, e, perturbed, masks) for e in range(cfg.num_experts)]
    pick = 1 if cfg.interaction_space == "latent" else 0
    clean = [latents[e] if pick else expert_logits[e] for e in range(cfg.num_experts)]
    losses = []
    m = len(names)
    for i, name_i in enumerate(names):  # uniqueness experts: triplet loss
        z = clean[i]
        neg = (z - knocked[name_i][i][pick]).norm(dim=-1)
        terms = [
            F.relu((z - knocked[j][i][pick]).norm(dim=-1) - neg + cfg.triplet_margin).mean()
            for j in names
            if j != name_i
        ]
        losses.append(sum(terms) / len(terms))
    syn, red = m, m + 1
    losses.append(sum(F.cosine_similarity(clean[syn], knocked[j][syn][pick], dim=-1).mean() for j in names) / m)
    losses.append(sum((1 - F.cosine_similarity(clean[red], knocked[j][red][pick], dim=-1)).mean() for j in names) / m)
    interaction = sum(losses) / len(losses)
    result["interaction_loss"] = interaction
    result["expert_interaction_losses"] = torch.stack(losses)
    result["loss"] = task + cfg.interaction_loss_weight * interaction
    return result
