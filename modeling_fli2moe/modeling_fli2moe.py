"""FL-I2MoE: a feature-level, interaction-aware mixture of experts over frozen-encoder tokens.

Each modality arrives as a frozen encoder's token features `(B, T_m, D_m)`, is projected to width H, gets
within-modality sinusoidal positions and a modality embedding, and joins one sequence. E expert Transformers
(pre-LayerNorm: joint self-attention, then a feed-forward layer per modality) pool every modality by a masked mean
and classify the concatenated means; their weights carry a leading expert dimension, so all experts run as batched
matmuls. With `mixture="interaction"`: one uniqueness expert per modality, a synergy and a redundancy expert, and a
router whose softmax weights mix their logits; in training each modality in turn is knocked out (`config.fill`) and
interaction losses ask a uniqueness expert to move most under its own modality's knock-out, the synergy expert to
change under any, the redundancy expert under none. `mixture="dense"` is one expert and no router.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_fli2moe import FLI2MoEConfig, infer_problem_type


@dataclass
class FLI2MoEOutput(ModelOutput):
    r"""Output of [`FLI2MoEModel`].

    Args:
        loss (`torch.Tensor` of shape `()`, *optional*): task loss + lambda_int * interaction loss (with `labels`).
        logits (`torch.Tensor` of shape `(B, C)`): the mixture's logits `sum_e w_e * logits_e`.
        expert_logits (`torch.Tensor` of shape `(B, E, C)`): every expert's logits (also at inference).
        expert_weights (`torch.Tensor` of shape `(B, E)`): router weights (ones for the dense model).
        latents (`torch.Tensor` of shape `(B, E, M * H)`): pooled per-expert latents of the clean input.
        task_loss (`torch.Tensor` of shape `()`, *optional*): the task loss alone.
        interaction_loss (`torch.Tensor` of shape `()`, *optional*): mean of the experts' interaction losses.
        expert_interaction_losses (`torch.Tensor` of shape `(E,)`, *optional*): each expert's interaction loss.
        attentions (`tuple[torch.Tensor]`, *optional*): with `output_attentions=True` (`eager` attention), one tensor
            per layer of shape `(E, B, num_heads, T, T)` over the joined token sequence (modalities in config order).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    expert_logits: torch.Tensor | None = None
    expert_weights: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    task_loss: torch.Tensor | None = None
    interaction_loss: torch.Tensor | None = None
    expert_interaction_losses: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class StackedLinear(nn.Module):
    """`num_experts` independent linear layers applied in one batched matmul: `(E, ..., in) -> (E, ..., out)`.

    `experts` selects a subset of the experts (then the input's leading dimension is `len(experts)`).
    """

    def __init__(self, num_experts: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.num_experts, self.in_features, self.out_features = num_experts, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_experts, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_experts, out_features))

    def forward(self, x: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = (self.weight, self.bias) if experts is None else (self.weight[experts], self.bias[experts])
        flat = x.reshape(x.shape[0], -1, self.in_features)
        out = torch.baddbmm(bias.unsqueeze(1).to(flat.dtype), flat, weight.to(flat.dtype))
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, in_features={self.in_features}, out_features={self.out_features}"


class StackedLayerNorm(nn.Module):
    """`num_experts` independent LayerNorms over the last dimension of `(E, ..., H)`."""

    def __init__(self, num_experts: int, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.bias = nn.Parameter(torch.empty(num_experts, hidden_size))

    def forward(self, x: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = (self.weight, self.bias) if experts is None else (self.weight[experts], self.bias[experts])
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        y = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return torch.addcmul(bias.view(shape).to(y.dtype), y, weight.view(shape).to(y.dtype))


def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed sinusoidal position codes `(length, dim)`, counted inside one modality."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div[: dim // 2])
    return pe.to(dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim -2 of `x (..., T, H)` where `mask (..., T)` is true; zeros for an all-padding row."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(-2) / m.sum(-2).clamp_min(1.0)


def eager_attention_forward(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor,
    scaling: float, dropout: float = 0.0, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out: `query, key, value (..., heads, T, d)`, boolean `attention_mask` broadcasting to
    `(..., 1, 1, T)` (true = attend). Returns the output `(..., T, heads, d)` and the probabilities."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    probs = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min).softmax(dim=-1)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(-3, -2), probs


class ExpertBlock(nn.Module):
    """One pre-LayerNorm block for all experts: joint self-attention, then a per-modality feed-forward."""

    def __init__(self, config: FLI2MoEConfig, num_experts: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.config = config
        self.num_heads = config.num_heads
        self.head_dim = h // config.num_heads
        self.is_causal = False
        self.attn_norm = StackedLayerNorm(num_experts, h)
        self.qkv = StackedLinear(num_experts, h, 3 * h)
        self.attn_out = StackedLinear(num_experts, h, h)
        self.ffn_norm = StackedLayerNorm(num_experts, h)
        # one feed-forward layer per modality, applied to that modality's segment of the sequence
        self.ffn_in = nn.ModuleList(StackedLinear(num_experts, h, config.ffn_multiplier * h) for _ in config.modalities)
        self.ffn_out = nn.ModuleList(StackedLinear(num_experts, config.ffn_multiplier * h, h) for _ in config.modalities)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor, segments: Sequence[tuple[int, int]],
        experts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`x (E, B, T, H)`, boolean `attention_mask (B, 1, 1, T)` (true = attend): the new `x` and, where the
        implementation gives them (`eager`), the attention probabilities `(E, B, heads, T, T)`."""
        e, b, t, h = x.shape
        qkv = self.qkv(self.attn_norm(x, experts), experts)
        query, key, value = qkv.view(e * b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        mask = attention_mask.expand(b, 1, 1, t).repeat(e, 1, 1, 1)
        out, probs = attention(self, query, key, value, mask, scaling=self.head_dim**-0.5, dropout=0.0)
        x = x + self.dropout(self.attn_out(out.reshape(e, b, t, h), experts))
        normed = self.ffn_norm(x, experts)
        ffn = [fout(F.gelu(fin(normed[:, :, start:end], experts)), experts)
               for (start, end), fin, fout in zip(segments, self.ffn_in, self.ffn_out)]
        x = x + self.dropout(torch.cat(ffn, dim=2))
        return x, None if probs is None else probs.view(e, b, self.num_heads, t, t)


class StackedExperts(nn.Module):
    """`num_experts` expert Transformers with stacked weights, plus their classification heads."""

    def __init__(self, config: FLI2MoEConfig, num_experts: int) -> None:
        super().__init__()
        self.config = config
        self.num_experts = num_experts
        self.layers = nn.ModuleList(ExpertBlock(config, num_experts) for _ in range(config.num_layers))
        self.final_norm = StackedLayerNorm(num_experts, config.hidden_size)
        self.head = StackedLinear(num_experts, config.num_modalities * config.hidden_size, config.num_labels)

    def forward(
        self, hidden: torch.Tensor, token_mask: torch.Tensor, segments: Sequence[tuple[int, int]],
        experts: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """`hidden (B, T, H)` (the same input for every expert), `token_mask (B, T)` bool. Returns expert logits
        `(E, B, C)`, latents `(E, B, M*H)` and, with `output_attentions`, each layer's attention probabilities."""
        e = self.num_experts if experts is None else int(experts.numel())
        # a row without any valid token attends to everything (pooled to zero anyway): no all-masked softmax
        key_mask = (token_mask | ~token_mask.any(dim=-1, keepdim=True))[:, None, None, :]
        x = hidden.unsqueeze(0).expand(e, *hidden.shape)
        maps = []
        for layer in self.layers:
            x, probs = layer(x, key_mask, segments, experts)
            maps.append(probs)
        x = self.final_norm(x, experts)
        pooled = [masked_mean(x[:, :, start:end], token_mask[:, start:end]) for start, end in segments]
        latents = torch.cat(pooled, dim=-1)  # (E, B, M*H)
        return self.head(latents, experts), latents, (tuple(maps) if output_attentions else None)


class Router(nn.Module):
    """MLP from the L2-normalised, masked-mean-pooled projected modalities to softmax(scores / tau)."""

    def __init__(self, config: FLI2MoEConfig) -> None:
        super().__init__()
        dims = [config.num_modalities * config.hidden_size] + [config.router_hidden_size] * (config.router_layers - 1)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(config.dropout)]
        layers.append(nn.Linear(dims[-1], config.num_experts))
        self.mlp = nn.Sequential(*layers)
        self.temperature = config.router_temperature

    def forward(self, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        z = torch.cat([F.normalize(p, dim=-1) for p in pooled], dim=-1)
        return torch.softmax(self.mlp(z) / self.temperature, dim=-1)


class ModalityMeans(nn.Module):
    """One buffer per modality, named after it: the dataset-mean feature token `(D_m,)`."""

    def __init__(self, config: FLI2MoEConfig) -> None:
        super().__init__()
        for m in config.modalities:
            self.register_buffer(m["name"], torch.empty(m["input_dim"]))


class FLI2MoEPreTrainedModel(PreTrainedModel):
    """Weight initialisation shared by FL-I2MoE models; attention by `config._attn_implementation` (`"sdpa"`
    default, `"eager"` the only one returning probabilities, or one registered with `AttentionInterface`)."""

    config_class = FLI2MoEConfig
    base_model_prefix = "fli2moe"
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    # the loss mixes a task loss and a per-expert interaction loss, both batch means
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        """Linear and embedding weights N(0, `initializer_range`); biases and mean tokens zero; LayerNorm scales one."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, StackedLinear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, StackedLayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ModalityMeans):
            for buffer in module.buffers(recurse=False):
                init.zeros_(buffer)


class FLI2MoEModel(FLI2MoEPreTrainedModel):
    """FL-I2MoE classifier (or its dense baseline) over frozen-encoder token features: `model(features={name: (B, T,
    D)}, attention_mask={name: (B, T)}, labels=...)` returns an [`FLI2MoEOutput`]."""

    def __init__(self, config: FLI2MoEConfig) -> None:
        super().__init__(config)
        h = config.hidden_size
        self.modality_names = list(config.modality_names)
        self.projections = nn.ModuleDict({m["name"]: nn.Linear(m["input_dim"], h) for m in config.modalities})
        self.modality_embeddings = nn.Embedding(config.num_modalities, h)
        self.modality_means = ModalityMeans(config)  # the dataset-mean feature tokens: the "mean" fill
        self.experts = StackedExperts(config, config.num_experts)
        self.router = Router(config) if config.mixture == "interaction" else None
        self.loss_type = "ForSequenceClassification"
        self.post_init()

    def set_modality_means(self, means: Mapping[str, torch.Tensor]) -> None:
        """Store the per-modality dataset-mean feature tokens `(D_m,)` (computed on the train split)."""
        for name in self.modality_names:
            buf = getattr(self.modality_means, name)
            value = torch.as_tensor(means[name], dtype=buf.dtype, device=buf.device).reshape(-1) if name in means else None
            if value is None or value.shape != buf.shape:
                raise ValueError(f"set_modality_means: {'missing' if value is None else 'wrong shape for'} modality {name!r}: "
                                 f"expected one mean of shape {tuple(buf.shape)} for each of {self.modality_names}")
            buf.copy_(value)

    def get_modality_means(self) -> dict[str, torch.Tensor]:
        """The dataset-mean feature tokens `{name: (D_m,)}` (zeros until `set_modality_means`)."""
        return {n: getattr(self.modality_means, n) for n in self.modality_names}

    def projected_modality_means(self) -> dict[str, torch.Tensor]:
        """The dataset-mean tokens after projection `{name: (H,)}`."""
        return {n: self.projections[n](getattr(self.modality_means, n)) for n in self.modality_names}

    def resolve_head(self, head: int | str) -> str:
        """`"mixture"` or an expert name (`config.expert_names`), from that name or an expert index."""
        names = list(self.config.expert_names)
        if isinstance(head, str) and (head == "mixture" or head in names):
            return head
        index = None if isinstance(head, (str, bool)) or not hasattr(head, "__index__") else operator.index(head)
        if index is not None and 0 <= index < len(names):
            return names[index]
        raise ValueError(f"unknown head {head!r}; use 'mixture', one of this model's experts {names} or an expert index in [0, {len(names)})")

    def resolve_experts(self, experts: int | str | Sequence[int | str] | None) -> torch.Tensor | None:
        """Expert names or indices (see `resolve_head`) as an index tensor (None = all experts)."""
        if experts is None:
            return None
        names = [self.resolve_head(item) for item in ([experts] if isinstance(experts, (int, str)) else experts)]
        if "mixture" in names:
            raise ValueError("'mixture' is not an expert; name experts by config.expert_names or index")
        return torch.tensor([self.config.expert_names.index(n) for n in names], dtype=torch.long, device=self.device)

    def check_inputs(
        self, features: Mapping[str, torch.Tensor], attention_mask: Mapping[str, torch.Tensor] | None,
        labels: torch.Tensor | None = None
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """Validate the inputs (errors name the modality, the row and the fix); the batch size and bool masks."""
        names = self.modality_names
        if not isinstance(features, Mapping):
            raise TypeError(f"features must be a dict {{modality name: tensor (B, T, D)}} with keys {names}, got {type(features).__name__}")
        for given, what in ((features, "features"), (attention_mask or {}, "attention_mask")):
            if what == "features" and set(names) - set(given):
                raise ValueError(f"features is missing modality {sorted(set(names) - set(given))[0]!r}: this model expects {names}")
            if set(given) - set(names):
                raise ValueError(f"{what} has unknown modality {sorted(set(given) - set(names))[0]!r}: this model expects {names}")
        batch, masks = None, {}
        for m in self.config.modalities:
            name, dim, x = m["name"], m["input_dim"], features[m["name"]]
            if not torch.is_tensor(x) or x.dim() != 3:
                shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
                raise ValueError(f"features[{name!r}] must be a tensor of shape (B, T, {dim}), got {shape}")
            if x.shape[-1] != dim:
                raise ValueError(f"features[{name!r}] has feature dimension {x.shape[-1]}, but modality {name!r} expects input_dim={dim} "
                                 f"(the frozen encoder's output size); shape (B, T, {dim}) expected")
            if x.shape[1] == 0:
                raise ValueError(f"features[{name!r}] has no tokens (T = 0); pass at least one (padding) token")
            if not x.is_floating_point():
                raise TypeError(f"features[{name!r}] has dtype {x.dtype}; frozen-encoder features are floating point: pass the "
                                "encoder's output, or .float() it if these integers really are feature values")
            if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):  # one pass when all is finite
                rows = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
                raise ValueError(f"features[{name!r}] has NaN or inf values in row(s) {rows[:10]} of the batch; the model would "
                                 "return NaN logits for them. Check the encoder output or the feature cache for that example.")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"features[{name!r}] has batch size {x.shape[0]}, but other modalities have {batch}")
            batch, mask = x.shape[0], (attention_mask or {}).get(name)
            if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"attention_mask[{name!r}] has shape {tuple(mask.shape)}, expected {tuple(x.shape[:2])} "
                                 f"(batch, tokens) to match features[{name!r}]")
            masks[name] = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.to(x.device).bool()
        if labels is not None and batch == 0:
            raise ValueError("the batch is empty (B = 0) but labels were given: its loss would be NaN; skip empty batches, "
                             "or call the model without labels")
        if labels is not None and labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
            rows = (~torch.isfinite(labels)).reshape(labels.shape[0], -1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"labels have NaN or inf values in row(s) {rows[:10]}; the loss would be NaN")
        return batch, masks

    @staticmethod
    def trim_padding(features: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
        """Drop trailing positions that are padding in every row (they cannot change the output)."""
        lengths = {n: int(m.any(dim=0).nonzero().max()) + 1 if bool(m.any()) else 1 for n, m in masks.items()}
        return {n: features[n][:, :k] for n, k in lengths.items()}, {n: masks[n][:, :k] for n, k in lengths.items()}

    def project(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Trainable per-modality projection `(B, T, D_m) -> (B, T, H)`."""
        dtype = self.projections[self.modality_names[0]].weight.dtype
        return {n: self.projections[n](features[n].to(dtype)) for n in self.modality_names}

    def embed(self, projected: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Add within-modality positions and modality embeddings, join the modalities `(B, T, H)`."""
        parts, segments, start = [], [], 0
        for i, name in enumerate(self.modality_names):
            p = projected[name]
            pos = sinusoidal_positions(p.shape[1], p.shape[2], p.device, p.dtype)
            parts.append(p + pos + self.modality_embeddings.weight[i].to(p.dtype))
            segments.append((start, start + p.shape[1]))
            start += p.shape[1]
        return torch.cat(parts, dim=1), segments

    def route(self, projected: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Router weights `(B, E)` (ones for the dense model)."""
        any_x = projected[self.modality_names[0]]
        if self.router is None:
            return torch.ones(any_x.shape[0], 1, dtype=any_x.dtype, device=any_x.device)
        return self.router([masked_mean(projected[n], masks[n]) for n in self.modality_names])

    def fill_tokens(self, name: str, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The projected tokens of knocked-out modality `name` (`config.fill`; `remove` also masks them out)."""
        if self.config.fill == "noise":
            return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        if self.config.fill == "mean":
            return self.projections[name](getattr(self.modality_means, name).to(like.dtype)).expand_as(like)
        return torch.zeros_like(like)

    def mask_tokens(self, projected: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                    generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Training-time token masking (`config.token_masking`): each example draws a rate from `U(0, token_masking)` and
        each of its tokens becomes absent with it (masked out if `config.fill` is `remove`, else its projected mean token)."""
        any_x = projected[self.modality_names[0]]
        rate = torch.rand(any_x.shape[0], 1, generator=generator, device=any_x.device) * self.config.token_masking
        drop = {n: torch.rand(x.shape[:2], generator=generator, device=x.device) < rate for n, x in projected.items()}
        if self.config.fill == "remove":
            return dict(projected), {n: masks[n] & ~drop[n] for n in projected}
        means = self.projected_modality_means()
        return {n: torch.where(drop[n].unsqueeze(-1), means[n].to(x.dtype), x) for n, x in projected.items()}, dict(masks)

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """transformers' sequence-classification loss in float32, after checking the labels against
        `config.problem_type` (inferred on the first call when `None`, as transformers does)."""
        b, c, pt = logits.shape[0], self.config.num_labels, self.config.problem_type
        if pt is None:
            pt = infer_problem_type(c, labels.dim(), not labels.is_floating_point() and labels.dtype != torch.bool)
        if pt == "single_label_classification":
            if labels.dim() != 1 or labels.shape[0] != b or labels.is_floating_point():
                raise ValueError(f"labels for single_label_classification must be class indices of shape ({b},) (integers), got "
                                 f"{labels.dtype} {tuple(labels.shape)}; for multi-hot labels set problem_type='multi_label_classification'")
            if labels.numel() and (labels.min() < 0 or labels.max() >= c):
                raise ValueError(f"labels must be class indices in [0, {c}); got values in [{int(labels.min())}, "
                                 f"{int(labels.max())}] (unknown label: check the dataset's label names against config.id2label)")
        allowed = {"single_label_classification": [labels.shape], "multi_label_classification": [(b, c)]}.get(pt, [(b, c)] if c > 1 else [(b,), (b, 1)])
        if tuple(labels.shape) not in [tuple(a) for a in allowed]:
            kind = "multi-hot" if pt == "multi_label_classification" else "targets"
            raise ValueError(f"labels for {pt} must be {kind} of shape {' or '.join(map(str, allowed))}, got {tuple(labels.shape)}")
        self.config.problem_type = pt  # kept once labels of that kind were accepted
        labels = labels.long() if pt == "single_label_classification" else labels.float()
        return self.loss_function(labels=labels, pooled_logits=logits.float(), config=self.config)

    def interaction_losses(self, clean: torch.Tensor, knocked_out: torch.Tensor) -> torch.Tensor:
        """Per-expert interaction losses `(E,)` from `clean (E, B, D)` and `knocked_out (E, M, B, D)` (modality j
        knocked out). Experts are ordered: uniqueness per modality, synergy, redundancy."""
        m = self.config.num_modalities
        clean, knocked_out = clean.float(), knocked_out.float()
        dist = (clean.unsqueeze(1) - knocked_out).norm(dim=-1)  # (E, M, B)
        cos = F.cosine_similarity(clean.unsqueeze(1).expand_as(knocked_out), knocked_out, dim=-1)
        losses = [clean.new_zeros(m)]
        if m > 1:  # uniqueness expert i: its own modality's knock-out must move it most (triplet)
            negative = torch.diagonal(dist[:m], dim1=0, dim2=1).T  # (M, B)
            triplet = F.relu(dist[:m] - negative.unsqueeze(1) + self.config.triplet_margin)
            off_diag = ~torch.eye(m, dtype=torch.bool, device=clean.device)
            losses[0] = (triplet * off_diag.unsqueeze(-1)).sum(dim=(1, 2)) / ((m - 1) * clean.shape[1])
        losses.append(cos[m].mean().unsqueeze(0))  # synergy: any knock-out must change it
        losses.append((1.0 - cos[m + 1]).mean().unsqueeze(0))  # redundancy: must survive any knock-out
        return torch.cat(losses)

    def forward(
        self, features: Mapping[str, torch.Tensor], attention_mask: Mapping[str, torch.Tensor] | None = None,
        labels: torch.Tensor | None = None, output_attentions: bool = False, compute_interaction_loss: bool | None = None,
        generator: torch.Generator | None = None, return_dict: bool | None = None, **kwargs: Any
    ) -> FLI2MoEOutput | tuple[torch.Tensor, ...]:
        r"""
        Args:
            features: `{modality name: (B, T_m, D_m)}` frozen-encoder features, every modality of the config.
            attention_mask: `{modality name: (B, T_m)}`, 1 = real token; omitted = all valid.
            labels: `(B,)` class indices (single-label), `(B, C)` multi-hot (multi-label), `(B,)` / `(B, C)` targets.
            output_attentions: return every layer's attention probabilities (needs `attn_implementation="eager"`).
            compute_interaction_loss: add the interaction loss (default: with `labels` and the `interaction` mixture).
            generator: random generator for the `noise` fill and token masking (global RNG when None).
            return_dict: an `FLI2MoEOutput` (default, `config.return_dict`) or a tuple of its non-`None` fields.

        Any other keyword argument raises `TypeError` (nothing is silently ignored).
        """
        if kwargs:
            raise TypeError(f"FLI2MoEModel.forward() got unexpected keyword argument(s) {sorted(kwargs)}; it takes features, "
                            "attention_mask, labels, output_attentions, compute_interaction_loss, generator and return_dict. Raw "
                            "text or images become features with FLI2MoEProcessor: model(**processor(...).model_inputs()).")
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(f"output_attentions=True needs the eager attention implementation (the only one that computes "
                             f"the probabilities), and this model uses {self.config._attn_implementation!r}: load it with "
                             "attn_implementation='eager' or call model.set_attn_implementation('eager') first")
        batch, masks = self.check_inputs(features, attention_mask, labels)
        if not output_attentions:  # attention maps keep every given position
            features, masks = self.trim_padding(features, masks)
        projected = self.project(features)
        if self.training and self.config.token_masking > 0:
            projected, masks = self.mask_tokens(projected, masks, generator)
        weights = self.route(projected, masks)
        compute_interaction_loss = labels is not None if compute_interaction_loss is None else compute_interaction_loss
        compute_interaction_loss = compute_interaction_loss and self.config.mixture == "interaction"

        names = self.modality_names
        stacked, stacked_masks = projected, masks
        if compute_interaction_loss:  # the clean batch and one copy per knocked-out modality, along the batch
            removed = self.config.fill == "remove"
            stacked = {n: torch.cat([projected[n]] + [self.fill_tokens(n, projected[n], generator) if n == j else projected[n]
                                                       for j in names]) for n in names}
            stacked_masks = {n: torch.cat([masks[n]] + [masks[n] & (not (removed and n == j)) for j in names]) for n in names}
        hidden, segments = self.embed(stacked)
        token_mask = torch.cat([stacked_masks[n] for n in names], dim=1)
        expert_logits, latents, attentions = self.experts(hidden, token_mask, segments, output_attentions=output_attentions)
        if output_attentions and compute_interaction_loss:
            attentions = tuple(a[:, :batch] for a in attentions)
        clean_logits, clean_latents = expert_logits[:, :batch], latents[:, :batch]
        logits = torch.einsum("be,ebc->bc", weights.to(clean_logits.dtype), clean_logits)

        loss = task_loss = interaction_loss = per_expert = None
        if compute_interaction_loss:
            space = latents if self.config.interaction_space == "latent" else expert_logits
            knocked = space[:, batch:].reshape(space.shape[0], len(names), batch, space.shape[-1])
            per_expert = self.interaction_losses(space[:, :batch], knocked)
            interaction_loss = per_expert.mean()
        if labels is not None:
            loss = task_loss = self.task_loss(logits, labels)
            if interaction_loss is not None:
                loss = task_loss + self.config.interaction_loss_weight * interaction_loss
        output = FLI2MoEOutput(
            loss=loss, logits=logits, expert_logits=clean_logits.transpose(0, 1), expert_weights=weights,
            latents=clean_latents.transpose(0, 1), task_loss=task_loss, interaction_loss=interaction_loss,
            expert_interaction_losses=per_expert, attentions=attentions,
        )
        return output if return_dict else output.to_tuple()

    def head_logits(
        self, features: Mapping[str, torch.Tensor], attention_mask: Mapping[str, torch.Tensor] | None = None,
        head: int | str = "mixture"
    ) -> torch.Tensor:
        """Logits `(B, C)` of one head: `"mixture"` or one expert (name or index; runs only that expert's weights)."""
        _, masks = self.check_inputs(features, attention_mask)
        features, masks = self.trim_padding(features, masks)
        return self.head_logits_from_projected(self.project(features), masks, head)

    def head_logits_from_projected(
        self, projected: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], head: int | str = "mixture"
    ) -> torch.Tensor:
        """Like `head_logits`, from already projected tokens `{name: (B, T, H)}` and bool masks."""
        names = self.modality_names
        hidden, segments = self.embed(projected)
        token_mask = torch.cat([masks[n].bool() for n in names], dim=1)
        head = self.resolve_head(head)
        if head == "mixture" or self.config.mixture == "dense":  # the dense model's one expert is its output
            weights = self.route(projected, {n: masks[n].bool() for n in names})
            logits, _, _ = self.experts(hidden, token_mask, segments)
            return torch.einsum("be,ebc->bc", weights.to(logits.dtype), logits)
        return self.experts(hidden, token_mask, segments, experts=self.resolve_experts(head))[0][0]


__all__ = ["FLI2MoEModel", "FLI2MoEOutput", "FLI2MoEPreTrainedModel"]
