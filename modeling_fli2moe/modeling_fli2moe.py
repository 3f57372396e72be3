"""FL-I2MoE: a feature-level, interaction-aware mixture of experts over frozen-encoder tokens.

Each modality (e.g. text and image) arrives as the token features of a frozen pretrained encoder,
`(B, T_m, D_m)`. A linear projection per modality maps them to width H; within-modality sinusoidal
positions and a learned modality embedding are added, and the modalities are joined into one sequence.
E expert Transformers (pre-LayerNorm blocks: joint self-attention, then a feed-forward layer per
modality) read that sequence; each pools every modality by a masked mean and classifies the
concatenated means. With `mixture="interaction"` there are M + 2 experts: one *uniqueness* expert per
modality, a *synergy* and a *redundancy* expert, and a router (an MLP over the pooled projected
modalities, softmax with temperature) whose weights mix the experts' logits. In training, each
modality in turn is knocked out (its tokens filled by `config.fill`: noise, zeros or its dataset-mean token) and the
experts' interaction losses compare the clean and replaced passes: a uniqueness expert must move most
when its own modality is knocked out (triplet loss), the synergy expert must change under any knock-out,
the redundancy expert must not. `mixture="dense"` is one expert and no router (the baseline).

The experts' weights carry a leading expert dimension, so that all experts, and the clean and replaced
copies of a batch, run as a few large batched kernels instead of Python loops.

This file travels with checkpoints as remote code: it imports only torch, transformers and the
standard library (and `integrity.py` beside it).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as TRANSFORMERS_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_fli2moe import FLI2MoEConfig, infer_problem_type
from .integrity import record_checkpoint, verify_checkpoint


@dataclass
class FLI2MoEOutput(ModelOutput):
    r"""Output of [`FLI2MoEModel`].

    Args:
        loss (`torch.Tensor` of shape `()`, *optional*): task loss + lambda_int * interaction loss
            (only when `labels` are given).
        logits (`torch.Tensor` of shape `(B, C)`): the mixture's logits `sum_e w_e * logits_e`.
        expert_logits (`torch.Tensor` of shape `(B, E, C)`): every expert's logits (also at inference).
        expert_weights (`torch.Tensor` of shape `(B, E)`): router weights (ones for the dense model).
        latents (`torch.Tensor` of shape `(B, E, M * H)`): pooled per-expert latents of the clean input.
        task_loss (`torch.Tensor` of shape `()`, *optional*): the task loss alone.
        interaction_loss (`torch.Tensor` of shape `()`, *optional*): mean of the experts' interaction losses.
        expert_interaction_losses (`torch.Tensor` of shape `(E,)`, *optional*): each expert's interaction loss.
        attentions (`tuple[torch.Tensor]`, *optional*): with `output_attentions=True` (which needs the `eager`
            attention implementation), one tensor per layer of shape `(E, B, num_heads, T, T)` over the joined
            token sequence (modalities in config order).
            These are the tensors used in the computation, so gradients with respect to them are defined.
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


# --------------------------------------------------------------------------------------------- layers
class StackedLinear(nn.Module):
    """`num_experts` independent linear layers applied in one batched matmul.

    Input `(E, ..., in_features)` -> `(E, ..., out_features)`. `experts` selects a subset of the experts
    (then the input's leading dimension is `len(experts)`).
    """

    def __init__(self, num_experts: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(num_experts, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_experts, out_features))

    def forward(self, x: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if experts is not None:
            weight, bias = weight[experts], bias[experts]
        e = x.shape[0]
        flat = x.reshape(e, -1, self.in_features)
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
        weight, bias = self.weight, self.bias
        if experts is not None:
            weight, bias = weight[experts], bias[experts]
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


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the experts compute in: autocast's lower precision when autocast is on, else `x`'s."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def fold_norm(
    norm: StackedLayerNorm, linear: StackedLinear, experts: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight `(E, in, out)` and bias `(E, out)` of `linear(norm(x))` as a function of the unit-normalised
    `x`: the LayerNorm's scale and shift folded into the linear layer (one pass less over the tokens)."""
    scale, shift, weight, bias = norm.weight, norm.bias, linear.weight, linear.bias
    if experts is not None:
        scale, shift, weight, bias = scale[experts], shift[experts], weight[experts], bias[experts]
    folded = scale.unsqueeze(-1) * weight
    bias = torch.baddbmm(bias.unsqueeze(1), shift.unsqueeze(1), weight).squeeze(1)
    return folded.to(dtype), bias.to(dtype)


def stacked_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, shared: bool = False) -> torch.Tensor:
    """`x (E, ..., in)` times `weight (E, in, out)` plus `bias (E, out)`, as `(E, N, out)`; with `shared`,
    `x (..., in)` is the same input for every expert (not copied)."""
    e, d_in = weight.shape[0], weight.shape[1]
    flat = x.reshape(1, -1, d_in).expand(e, -1, -1) if shared else x.reshape(e, -1, d_in)
    # the bias as the matmul's initial value: one pass over the output less than bmm then add
    return torch.baddbmm(bias.unsqueeze(1), flat, weight)


def keep_mask(like: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Bool mask shaped like `like`, true with probability 1 - p: 8 random bits per element where p is a
    multiple of 1/256 (e.g. 0.5, 0.25: exact), else 16 (p resolved to 1/65536), drawn 64 bits at a time
    (several times cheaper than one draw per element)."""
    n = like.numel()
    bits = 8 if float(p * 256).is_integer() else 16
    per_draw = 64 // bits
    generator = torch.Generator(like.device).manual_seed(seed)
    draws = torch.empty((n + per_draw - 1) // per_draw, dtype=torch.int64, device=like.device)
    draws.random_(-(2**63), 2**63 - 1, generator=generator)
    levels = 1 << bits
    small = draws.view(torch.int8 if bits == 8 else torch.int16)[:n].view(like.shape)
    return small >= round(p * levels) - levels // 2


def as_ones(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as ones and zeros of `dtype`, converted from its bytes (bool to a float type directly is
    several times slower on CPU)."""
    return mask.view(torch.uint8).to(dtype)


class DropoutAdd(torch.autograd.Function):
    """`x + dropout(y)` in one pass; backward reuses the keep mask, kept as one byte per element (drawing it
    again from its seed costs more than keeping it). `x` may lack the leading (expert) dimension of `y`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
        seed = int(torch.randint(2**62, (1,)))  # from the global generator: reproducible under manual_seed
        ctx.p, ctx.broadcast = p, x.dim() < y.dim()
        keep = keep_mask(y, p, seed)
        ctx.save_for_backward(keep)
        return torch.addcmul(x, y, as_ones(keep, y.dtype), value=1.0 / (1.0 - p))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        grad_y = grad * as_ones(keep, grad.dtype)
        grad_y.mul_(1.0 / (1.0 - ctx.p))
        return (grad.sum(0) if ctx.broadcast else grad), grad_y, None


def dropout_add(x: torch.Tensor, y: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`x + dropout(y)` (`x` may lack the leading expert dimension)."""
    if not training or p == 0.0:
        return x + y
    if y.device.type != "cpu":
        return x + F.dropout(y, p, True)
    return DropoutAdd.apply(x, y, p)


class GeluLinear(torch.autograd.Function):
    """`gelu(h) @ weight + bias` for stacked `h (E, N, in)`, `weight (E, in, out)`, `bias (E, out)`; backward
    recomputes `gelu(h)` instead of keeping it (the widest activation of the block)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        return torch.baddbmm(bias.unsqueeze(1), F.gelu(h), weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, weight = ctx.saved_tensors
        grad_weight = torch.bmm(F.gelu(h).transpose(1, 2), grad)
        grad_h = torch.ops.aten.gelu_backward(torch.bmm(grad, weight.transpose(1, 2)), h)
        return grad_h, grad_weight, grad.sum(1)


class ChunkedAttention(torch.autograd.Function):
    """Softmax attention of `query, key, value (N, heads, T, d)` with an additive key bias `(N, 1, T)`, one
    head and one chunk of sequences at a time, as `(N, T, heads, d)`; backward recomputes the probabilities,
    so nothing of size T x T outlives a chunk, except where all the probabilities together take at most
    `saved_probs_bytes`: then they are kept for backward instead. q, k and v are laid out head-major once (the
    CPU bf16 matmuls copy strided operands on every call). Faster than CPU flash attention in bf16, forward
    and backward."""

    #: probabilities up to this size are kept for backward (short sequences); longer ones are recomputed
    saved_probs_bytes: int = 64 << 20
    #: bytes of one chunk's probabilities (one head): cache-sized (on 514 tokens, 8 MB chunks ran the
    #: forward and backward about 20% faster than 32 MB ones; on 111 tokens the size made no difference)
    chunk_bytes: int = 8 << 20

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, chunk: int) -> torch.Tensor:
        n, num_heads, t, d = query.shape
        heads = query.new_empty(3, num_heads, n, t, d)
        for i, x in enumerate((query, key, value)):
            heads[i].copy_(x.transpose(0, 1))
        out = query.new_empty(n, t, num_heads, d)
        keep = any(ctx.needs_input_grad[:3]) and num_heads * n * t * t * query.element_size() <= ChunkedAttention.saved_probs_bytes
        saved = query.new_empty(num_heads, n, t, t) if keep else query.new_empty(0)
        for rows in (slice(s, s + chunk) for s in range(0, n, chunk)):
            for i in range(num_heads):
                q, k, v = heads[:, i, rows]
                probs = torch.baddbmm(bias[rows], q, k.transpose(1, 2), alpha=d**-0.5).softmax(-1)
                out[rows, :, i] = torch.bmm(probs, v)
                if keep:
                    saved[i, rows] = probs
        ctx.save_for_backward(heads, bias, saved)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        heads, bias, saved = ctx.saved_tensors
        num_heads, n, t, d = heads.shape[1:]
        grad_heads = grad_out.permute(2, 0, 1, 3).to(heads.dtype).contiguous()
        grad = torch.empty_like(heads)
        for rows in (slice(s, s + ctx.chunk) for s in range(0, n, ctx.chunk)):
            for i in range(num_heads):
                q, k, v = heads[:, i, rows]
                go = grad_heads[i, rows]
                if saved.numel():
                    probs = saved[i, rows]
                else:
                    probs = torch.baddbmm(bias[rows], q, k.transpose(1, 2), alpha=d**-0.5).softmax(-1)
                torch.bmm(probs.transpose(1, 2), go, out=grad[2, i, rows])
                scores = torch._softmax_backward_data(torch.bmm(go, v.transpose(1, 2)), probs, -1, probs.dtype)
                scores.mul_(d**-0.5)
                torch.bmm(scores, k, out=grad[0, i, rows])
                torch.bmm(scores.transpose(1, 2), q, out=grad[1, i, rows])
        grad_q, grad_k, grad_v = grad.transpose(1, 2)
        return grad_q, grad_k, grad_v, None, None


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (torch's own check; False where torch cannot tell)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out: `query, key, value (..., heads, T, d)` and a boolean `attention_mask` that
    broadcasts to `(..., 1, 1, T)` (true = attend). Returns the output `(..., T, heads, d)` and the
    probabilities `(..., heads, T, T)` it was computed from (so gradients with respect to them are defined)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    probs = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min).softmax(dim=-1)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(-3, -2), probs


def sdpa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' `sdpa` attention with the arguments and output of `eager_attention_forward` (no
    probabilities), except for 16-bit tensors on CPU where `ChunkedAttention` is faster and holds less: when
    gradients are needed, and at inference on CPUs without AMX (with AMX tiles, torch's flash-attention
    kernel is the faster forward)."""
    batch_shape, (heads, t, d) = query.shape[:-3], query.shape[-3:]
    query, key, value = (x.reshape(-1, heads, t, d) for x in (query, key, value))
    mask = attention_mask.expand(*batch_shape, 1, 1, t).reshape(-1, 1, 1, t)
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (query, key, value))
    if (query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16) and dropout == 0.0
            and (grad or not cpu_has_amx())):
        bias = query.new_zeros(query.shape[0], 1, t).masked_fill(~mask.view(-1, 1, t), float("-inf"))
        chunk = max(1, ChunkedAttention.chunk_bytes // (t * t * query.element_size()))
        out = ChunkedAttention.apply(query, key, value, bias, chunk)
    else:
        out, _ = TRANSFORMERS_ATTENTION_FUNCTIONS["sdpa"](
            module, query, key, value, mask, dropout=dropout, scaling=scaling, is_causal=False
        )
    return out.view(*batch_shape, t, heads, d), None


#: the attention kernels by `config._attn_implementation`: `"eager"` (returns the probabilities, needed for
#: `output_attentions=True`) or `"sdpa"` (the default)
ATTENTION_FUNCTIONS = AttentionInterface()
ATTENTION_FUNCTIONS["sdpa"] = sdpa_attention_forward


class ExpertBlock(nn.Module):
    """One pre-LayerNorm block for all experts: joint self-attention, then a per-modality feed-forward."""

    def __init__(self, config: FLI2MoEConfig, num_experts: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = h // config.num_heads
        self.attn_norm = StackedLayerNorm(num_experts, h)
        self.qkv = StackedLinear(num_experts, h, 3 * h)
        self.attn_out = StackedLinear(num_experts, h, h)
        self.ffn_norm = StackedLayerNorm(num_experts, h)
        # the feed-forward block is applied to each modality's segment: one FFN per modality
        self.ffn_in = nn.ModuleList(
            StackedLinear(num_experts, h, config.ffn_multiplier * h) for _ in range(config.num_modalities)
        )
        self.ffn_out = nn.ModuleList(
            StackedLinear(num_experts, config.ffn_multiplier * h, h) for _ in range(config.num_modalities)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor,
        segments: Sequence[tuple[int, int]],
        experts: torch.Tensor | None,
        attention_interface: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
        qkv: torch.Tensor | None = None,
        weights: Mapping[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`x (E, B, T, H)`, or `(B, T, H)` when every expert gets the same input; boolean `attention_mask
        (B, 1, 1, T)` (true = attend); `attention_interface` one of `ATTENTION_FUNCTIONS`; `qkv (E, B*T, 3H)`:
        `project_qkv(x)` when the caller has it already; `weights`: `compute_weights(experts, x.dtype)` when
        the caller has them. Returns the new `x (E, B, T, H)` and the attention probabilities
        `(E, B, heads, T, T)` if the interface returns them (`eager`), else None."""
        b, t, h = x.shape[-3:]
        p = self.dropout.p if self.training else 0.0
        if weights is None:
            weights = self.compute_weights(experts, x.dtype)
        if qkv is None:
            qkv = self.project_qkv(x, experts, weights["qkv"])
        e = qkv.shape[0]
        # strided views, no copies: (E, B, heads, T, d)
        query, key, value = qkv.view(e, b, t, 3, self.num_heads, self.head_dim).permute(3, 0, 1, 4, 2, 5)
        ctx, probs = attention_interface(self, query, key, value, attention_mask, scaling=self.head_dim**-0.5)
        out_weight, out_bias = weights["attn_out"]
        # without an autograd graph (inference), the residual plus the bias is each output matmul's initial
        # value: fewer passes over the activations than matmul, bias, residual
        inference = not torch.is_grad_enabled()
        if inference:
            x = (x + out_bias[:, None, None, :]).view(e, b * t, h).baddbmm_(ctx.reshape(e, b * t, h), out_weight)
            x = x.view(e, b, t, h)
        else:
            x = dropout_add(x, stacked_matmul(ctx.reshape(e, b, t, h), out_weight, out_bias).view(e, b, t, h), p, self.training)

        normed = F.layer_norm(x, (h,), eps=self.ffn_norm.eps)
        # split (not slicing): its backward is one concatenation instead of zero-filled full-size gradients
        parts = normed.split([end - start for start, end in segments], dim=2)
        out = torch.empty_like(x) if inference else None
        ffn = []
        for (start, end), part, (w_in, b_in), (w_out, b_out) in zip(segments, parts, weights["ffn_in"], weights["ffn_out"]):
            hidden = stacked_matmul(part, w_in, b_in)
            if inference:
                residual = (x[:, :, start:end] + b_out[:, None, None, :]).view(e, -1, h)
                out[:, :, start:end] = residual.baddbmm_(F.gelu(hidden), w_out).view(e, b, end - start, h)
            else:
                ffn.append(GeluLinear.apply(hidden, w_out, b_out).view(e, b, part.shape[2], h))
        if inference:
            return out, probs
        return dropout_add(x, torch.cat(ffn, dim=2), p, self.training), probs

    def compute_weights(self, experts: torch.Tensor | None, dtype: torch.dtype) -> dict[str, Any]:
        """The block's weights `(E, in, out)` and biases `(E, out)` for `experts` in `dtype`, the LayerNorms'
        scale and shift folded into the linear layers after them: made once per forward, not per chunk."""
        return {
            "qkv": fold_norm(self.attn_norm, self.qkv, experts, dtype),
            "attn_out": self._weights(self.attn_out, experts, dtype),
            "ffn_in": [fold_norm(self.ffn_norm, fin, experts, dtype) for fin in self.ffn_in],
            "ffn_out": [self._weights(fout, experts, dtype) for fout in self.ffn_out],
        }

    def project_qkv(
        self, x: torch.Tensor, experts: torch.Tensor | None, weights: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Queries, keys and values `(E, N, 3H)` of the LayerNorm of `x (E, ..., H)` (or of `x (..., H)`
        shared by every expert), N the number of tokens per expert; `weights`: `compute_weights(...)["qkv"]`."""
        weight, bias = fold_norm(self.attn_norm, self.qkv, experts, x.dtype) if weights is None else weights
        normed = F.layer_norm(x, x.shape[-1:], eps=self.attn_norm.eps)
        return stacked_matmul(normed, weight, bias, shared=x.dim() == 3)

    @staticmethod
    def _weights(linear: StackedLinear, experts: torch.Tensor | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = linear.weight, linear.bias
        if experts is not None:
            weight, bias = weight[experts], bias[experts]
        return weight.to(dtype), bias.to(dtype)


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
        self,
        hidden: torch.Tensor,
        token_mask: torch.Tensor,
        segments: Sequence[tuple[int, int]],
        experts: torch.Tensor | None = None,
        output_attentions: bool = False,
        first_qkv: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """`hidden (B, T, H)` shared input, `token_mask (B, T)` bool. Returns expert logits `(E, B, C)`,
        latents `(E, B, M*H)` and, with `output_attentions`, each layer's attention probabilities. The
        attention kernel is `config._attn_implementation`'s. `first_qkv (E, B*T, 3H)`: the first block's
        `project_qkv(hidden)` when the caller has it (in the compute dtype). Without an autograd graph the rows
        run in chunks of `rows_per_chunk` (the same values, activations that stay cache-sized), on sequences padded
        to a multiple of `token_multiple` tokens."""
        attention_interface = ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        e = self.num_experts if experts is None else int(experts.numel())
        dtype = compute_dtype(hidden)
        b, t = token_mask.shape
        rows = b
        if not torch.is_grad_enabled() and not output_attentions:
            token_mask, segments, pad = self.pad_tokens(token_mask, segments)
            if pad:
                hidden = torch.cat([hidden, hidden.new_zeros(b, pad, hidden.shape[-1])], dim=1)
                if first_qkv is not None:
                    first_qkv = first_qkv.view(e, b, t, -1)
                    first_qkv = torch.cat([first_qkv, first_qkv.new_zeros(e, b, pad, first_qkv.shape[-1])], dim=2)
                    first_qkv = first_qkv.view(e, b * (t + pad), -1)
                t += pad
            rows = self.rows_per_chunk(e, t, torch.finfo(dtype).bits // 8, b)
        # a row with no valid token at all attends to everything (its outputs are pooled to zero anyway),
        # so that softmax never sees an all-masked row (no NaN)
        key_mask = token_mask | ~token_mask.any(dim=-1, keepdim=True)
        chunks = []
        # explicit dtypes inside (autocast would cast every activation again before every matmul)
        with torch.autocast(hidden.device.type, enabled=False):
            weights = [layer.compute_weights(experts, dtype) for layer in self.layers]
            for start in range(0, max(b, 1), rows):  # an empty batch is one (empty) chunk
                part = slice(start, start + rows)
                qkv = None if first_qkv is None else first_qkv[:, start * t : (start + rows) * t]
                chunks.append(self._forward_rows(
                    hidden[part].to(dtype), token_mask[part], key_mask[part], segments, experts, e,
                    attention_interface, qkv, weights,
                ))
        if len(chunks) == 1:
            logits, latents, maps = chunks[0]
        else:
            logits, latents = (torch.cat([c[i] for c in chunks], dim=1) for i in (0, 1))
            maps = None
        return logits, latents, (tuple(maps) if output_attentions else None)

    #: at inference the joint sequence is padded to a multiple of this many tokens: the CPU attention kernels
    #: run much faster on such lengths (bf16 flash attention on 111 tokens 5.0 ms, on 112 tokens 2.8 ms)
    token_multiple: int = 16

    #: bytes of the widest activation (query, key and value of every expert) of one chunk of rows at
    #: inference: small enough to stay in the CPU's cache and to be reused by the allocator instead of
    #: being mapped afresh (page faults) on every call, large enough for full-speed matmuls
    chunk_bytes: int = 16 << 20

    def pad_tokens(
        self, token_mask: torch.Tensor, segments: Sequence[tuple[int, int]]
    ) -> tuple[torch.Tensor, list[tuple[int, int]], int]:
        """`token_mask (B, T)` and `segments` with masked tokens added at the end of the last segment, up to a
        multiple of `token_multiple` tokens (pooled out, never attended to), and how many were added."""
        pad = -token_mask.shape[1] % self.token_multiple
        segments = list(segments)
        if pad:
            token_mask = torch.cat([token_mask, token_mask.new_zeros(token_mask.shape[0], pad)], dim=1)
            segments[-1] = (segments[-1][0], segments[-1][1] + pad)
        return token_mask, segments, pad

    def rows_per_chunk(self, num_experts: int, tokens: int, element_size: int, rows: int | None = None) -> int:
        """Rows (sequences) per chunk of an inference pass (no autograd graph); chunks give the same values.
        With `rows` (the batch), the chunks are made equal (32 rows as 16 + 16, not 23 + 9)."""
        per_row = num_experts * tokens * 3 * self.config.hidden_size * element_size
        most = max(1, self.chunk_bytes // max(per_row, 1))
        if rows is None or rows <= most:
            return most if rows is None else max(rows, 1)
        return -(-rows // -(-rows // most))

    def _forward_rows(
        self,
        x: torch.Tensor,
        token_mask: torch.Tensor,
        key_mask: torch.Tensor,
        segments: Sequence[tuple[int, int]],
        experts: torch.Tensor | None,
        e: int,
        attention_interface: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
        first_qkv: torch.Tensor | None,
        weights: Sequence[Mapping[str, Any]],
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
        """The experts on rows `x (B, T, H)` (in the compute dtype, autocast off), `weights` every layer's
        `compute_weights`: logits, latents and each layer's attention probabilities (None where the kernel
        gives none)."""
        dtype = x.dtype
        attention_mask = key_mask[:, None, None, :]  # (B, 1, 1, T), the same for every expert
        maps = []
        for i, layer in enumerate(self.layers):  # the first block reads the same input for every expert
            x, probs = layer(
                x, attention_mask, segments, experts, attention_interface, first_qkv if i == 0 else None, weights[i]
            )
            maps.append(probs)
        if x.dim() == 3:
            x = x.expand(e, *x.shape)
        # masked mean of every modality in one matmul, (B, M, T) pooling weights @ (E, B, T, H), with the
        # final LayerNorm's scale and shift applied to the pooled means (fewer tokens than positions)
        x = F.layer_norm(x, x.shape[-1:], eps=self.final_norm.eps)
        pool = torch.zeros(token_mask.shape[0], len(segments), token_mask.shape[1], dtype=x.dtype, device=x.device)
        for m, (start, end) in enumerate(segments):
            pool[:, m, start:end] = token_mask[:, start:end].to(x.dtype)
        pool = pool / pool.sum(-1, keepdim=True).clamp_min(1.0)
        scale, shift = self.final_norm.weight, self.final_norm.bias
        if experts is not None:
            scale, shift = scale[experts], shift[experts]
        present = pool.sum(-1, keepdim=True)  # (B, M, 1): 1, or 0 for a modality without valid tokens
        latents = torch.addcmul(
            present * shift.to(dtype)[:, None, None, :], pool.unsqueeze(0) @ x, scale.to(dtype)[:, None, None, :]
        ).flatten(-2)  # (E, B, M*H)
        head_weight, head_bias = ExpertBlock._weights(self.head, experts, dtype)
        logits = stacked_matmul(latents, head_weight, head_bias).view(*latents.shape[:2], -1)
        return logits, latents, maps


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


# ---------------------------------------------------------------------------------------------- model
class FLI2MoEPreTrainedModel(PreTrainedModel):
    """Loading, saving and weight initialisation shared by FL-I2MoE models.

    Attention runs in one of two implementations, chosen by `config._attn_implementation` (set it with
    `from_pretrained(..., attn_implementation=...)` or `set_attn_implementation`): `"sdpa"` (the default,
    fused kernels) or `"eager"` (written out; the only one that returns attention probabilities).
    """

    config_class = FLI2MoEConfig
    base_model_prefix = "fli2moe"
    # main_input_name stays the library default: `features` is a dict, and Trainer's FLOP counter calls
    # `.numel()` on the main input
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    # the loss mixes a task loss and a per-expert interaction loss, both batch means: Trainer must not pass
    # num_items_in_batch (it averages over gradient-accumulation steps itself)
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: bool = True, **kwargs):
        """Load a checkpoint; with `strict=True` (default) refuse one whose tensors do not match the config.

        (Loading with `strict=False` would silently keep randomly initialised weights for missing tensors.)
        """
        want_info = kwargs.pop("output_loading_info", False)
        if strict and not kwargs.get("subfolder"):  # clear errors for broken folders, checksums when recorded
            given = kwargs.get("config")
            verify_checkpoint(pretrained_model_name_or_path, lambda: (
                given if hasattr(given, "to_dict") else cls.config_class.from_pretrained(pretrained_model_name_or_path)
            ).to_dict())
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        if strict:
            bad = [k for k, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
            if bad:
                raise ValueError(
                    f"checkpoint {pretrained_model_name_or_path!s} has NaN or inf values in {bad[:8]}: the weights "
                    "are corrupt; restore them from the original run or the Hub, or retrain."
                )
        problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if strict and any(problems.values()):
            details = "; ".join(f"{k.replace('_', ' ')}: {v[:8]}{' ...' if len(v) > 8 else ''}" for k, v in problems.items() if v)
            raise ValueError(
                f"checkpoint {pretrained_model_name_or_path!s} does not match its config ({details}). "
                "It was saved from a different model or edited; re-save it with save_pretrained, or pass "
                "strict=False to load it anyway (missing tensors stay randomly initialised)."
            )
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs) -> None:
        """Save as transformers does, plus `checksums.json` (the weights' SHA-256 and the model config),
        which `from_pretrained` checks."""
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            record_checkpoint(save_directory, self.config.to_dict())

    def _init_weights(self, module: nn.Module) -> None:
        """Every parameter and buffer's initial value: linear and embedding weights from
        N(0, `config.initializer_range`), biases and the dataset-mean tokens zero, LayerNorm scales one."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, StackedLinear)):
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, StackedLayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ModalityMeans):
            for buffer in module.buffers(recurse=False):
                init.zeros_(buffer)


class FLI2MoEModel(FLI2MoEPreTrainedModel):
    """FL-I2MoE classifier (or its dense baseline) over frozen-encoder token features.

    Call it as `model(features={name: (B, T, D)}, attention_mask={name: (B, T)}, labels=...)`; the
    masks may be omitted (all tokens valid). It returns an [`FLI2MoEOutput`]: the mixture's logits, each
    expert's logits and latents, the router weights and, with labels, the task loss (cross-entropy,
    binary cross-entropy or mean squared error, by `config.problem_type`) plus `interaction_loss_weight`
    times the mean interaction loss. `head_logits` runs one expert alone (or the mixture).
    """

    def __init__(self, config: FLI2MoEConfig) -> None:
        super().__init__(config)
        h = config.hidden_size
        self.modality_names = list(config.modality_names)
        self.projections = nn.ModuleDict({m["name"]: nn.Linear(m["input_dim"], h) for m in config.modalities})
        self.modality_embeddings = nn.Embedding(config.num_modalities, h)
        # per-modality dataset-mean feature token: the "mean" fill of knocked-out modalities and of absent players
        self.modality_means = ModalityMeans(config)
        self.experts = StackedExperts(config, config.num_experts)
        self.router = Router(config) if config.mixture == "interaction" else None
        self.loss_type = "ForSequenceClassification"  # self.loss_function: transformers' classifier losses
        self.post_init()

    # ---------------------------------------------------------------- helpers
    def set_modality_means(self, means: Mapping[str, torch.Tensor]) -> None:
        """Store the per-modality dataset-mean feature tokens `(D_m,)` (computed on the train split)."""
        for name in self.modality_names:
            if name not in means:
                raise ValueError(f"set_modality_means: missing modality {name!r}; expected {self.modality_names}")
            buf = getattr(self.modality_means, name)
            value = torch.as_tensor(means[name], dtype=buf.dtype, device=buf.device).reshape(-1)
            if value.shape != buf.shape:
                raise ValueError(
                    f"set_modality_means: modality {name!r} needs a mean of shape {tuple(buf.shape)}, got {tuple(value.shape)}"
                )
            buf.copy_(value)

    def get_modality_means(self) -> dict[str, torch.Tensor]:
        """The dataset-mean feature tokens `{name: (D_m,)}` (zeros until `set_modality_means`)."""
        return {name: getattr(self.modality_means, name) for name in self.modality_names}

    def resolve_head(self, head: int | str) -> str:
        """The canonical name of a head: `"mixture"` or an expert name (`config.expert_names`; `"dense"` for
        the dense baseline), from that name or an expert index. Raises `ValueError` for any other value."""
        names = list(self.config.expert_names)
        if head == "mixture" or (isinstance(head, str) and head in names):
            return head
        if not isinstance(head, (str, bool)):
            try:
                index = operator.index(head)  # int or numpy integer
            except TypeError:
                index = None
            if index is not None and 0 <= index < len(names):
                return names[index]
        raise ValueError(
            f"unknown head {head!r}; use 'mixture', one of this model's experts {names} or an expert index in "
            f"[0, {len(names)})"
        )

    def resolve_experts(self, experts: int | str | Sequence[int | str] | None) -> torch.Tensor | None:
        """Expert names or indices (see `resolve_head`) as an index tensor (None = all experts)."""
        if experts is None:
            return None
        items = [experts] if isinstance(experts, (int, str)) else list(experts)
        names = self.config.expert_names
        idx = []
        for item in items:
            name = self.resolve_head(item)
            if name == "mixture":
                raise ValueError("'mixture' is not an expert; name experts by config.expert_names or index")
            idx.append(names.index(name))
        return torch.tensor(idx, dtype=torch.long, device=self.device)

    def check_inputs(
        self,
        features: Mapping[str, torch.Tensor],
        attention_mask: Mapping[str, torch.Tensor] | None,
        labels: torch.Tensor | None = None,
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """Validate the inputs at the model's boundary; errors name the modality (and the row) and the fix.

        Features must be floating point and finite everywhere (a NaN or inf in any position, padding
        included, turns that row's logits into NaN); an empty batch cannot have labels (its loss is NaN).
        Returns the batch size and the boolean masks.
        """
        if not isinstance(features, Mapping):
            raise TypeError(
                f"features must be a dict {{modality name: tensor (B, T, D)}} with keys {self.modality_names}, "
                f"got {type(features).__name__}"
            )
        missing = [n for n in self.modality_names if n not in features]
        if missing:
            raise ValueError(
                f"features is missing modality {missing[0]!r}: this model expects features for {self.modality_names}"
            )
        extra = [n for n in features if n not in self.modality_names]
        if extra:
            raise ValueError(f"features has unknown modality {extra[0]!r}: this model expects {self.modality_names}")
        batch = None
        masks = {}
        for m in self.config.modalities:
            name, dim = m["name"], m["input_dim"]
            x = features[name]
            if not torch.is_tensor(x) or x.dim() != 3:
                shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
                raise ValueError(f"features[{name!r}] must be a tensor of shape (B, T, {dim}), got {shape}")
            if x.shape[-1] != dim:
                raise ValueError(
                    f"features[{name!r}] has feature dimension {x.shape[-1]}, but modality {name!r} expects "
                    f"input_dim={dim} (the frozen encoder's output size); shape (B, T, {dim}) expected"
                )
            if x.shape[1] == 0:
                raise ValueError(f"features[{name!r}] has no tokens (T = 0); pass at least one (padding) token")
            if not x.is_floating_point():
                raise TypeError(
                    f"features[{name!r}] has dtype {x.dtype}; frozen-encoder features are floating point "
                    "(float32, float16 or bfloat16). Pass the encoder's output, or .float() it if these integers "
                    "really are feature values."
                )
            # a finite sum means every value is finite (one pass, no mask); an overflowing sum is checked exactly
            finite = None if bool(torch.isfinite(x.sum())) else torch.isfinite(x)
            if finite is not None and not bool(finite.all()):
                rows = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
                raise ValueError(
                    f"features[{name!r}] has NaN or inf values in row(s) {rows[:10]}{' ...' if len(rows) > 10 else ''} "
                    f"of the batch; the model would return NaN logits for them. Check the encoder output or the "
                    "feature cache for that example."
                )
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ValueError(f"features[{name!r}] has batch size {x.shape[0]}, but other modalities have {batch}")
            mask = None if attention_mask is None else attention_mask.get(name)
            if mask is None:
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            else:
                if tuple(mask.shape) != tuple(x.shape[:2]):
                    raise ValueError(
                        f"attention_mask[{name!r}] has shape {tuple(mask.shape)}, expected {tuple(x.shape[:2])} "
                        f"(batch, tokens) to match features[{name!r}]"
                    )
                mask = mask.to(device=x.device).bool()
            masks[name] = mask
        if attention_mask is not None:
            extra = [n for n in attention_mask if n not in self.modality_names]
            if extra:
                raise ValueError(f"attention_mask has unknown modality {extra[0]!r}: expected {self.modality_names}")
        if labels is not None:
            if batch == 0:
                raise ValueError("the batch is empty (B = 0) but labels were given: its loss would be NaN; skip empty "
                                 "batches, or call the model without labels")
            if torch.is_tensor(labels) and labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
                rows = (~torch.isfinite(labels)).reshape(labels.shape[0], -1).any(1).nonzero().flatten().tolist()
                raise ValueError(f"labels have NaN or inf values in row(s) {rows[:10]}; the loss would be NaN")
        return batch, masks

    @staticmethod
    def trim_padding(
        features: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Drop trailing positions that are padding in every row of the batch (they cannot change the output)."""
        out_f, out_m = {}, {}
        for name, mask in masks.items():
            valid = mask.any(dim=0)
            length = max(int(valid.nonzero().max()) + 1 if bool(valid.any()) else 1, 1)
            out_f[name], out_m[name] = features[name][:, :length], mask[:, :length]
        return out_f, out_m

    def project(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Trainable per-modality projection `(B, T, D_m) -> (B, T, H)`."""
        dtype = self.projections[self.modality_names[0]].weight.dtype
        return {n: self.projections[n](features[n].to(dtype)) for n in self.modality_names}

    def embed(self, projected: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Add within-modality positions and modality-type embeddings, join the modalities `(B, T, H)`."""
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

    def fill_tokens(
        self, name: str, like: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The projected tokens that fill knocked-out modality `name` in the interaction losses (`config.fill`),
        shaped like `like`."""
        mode = self.config.fill
        if mode == "noise":
            return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        if mode == "zero":
            return torch.zeros_like(like)
        mean = self.projections[name](getattr(self.modality_means, name).to(like.dtype))
        return mean.expand_as(like)

    def mask_tokens(
        self, projected: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Training-time token masking (`config.token_masking`): each example draws a rate from
        `U(0, token_masking)` (shared by its modalities) and each of its projected tokens becomes its
        modality's projected mean token with that probability: what an explanation's absent token is."""
        any_x = projected[self.modality_names[0]]
        device = any_x.device
        rate = torch.rand(any_x.shape[0], 1, generator=generator, device=device) * self.config.token_masking
        means = self.projected_modality_means()
        out = {}
        for name, tokens in projected.items():
            drop = torch.rand(tokens.shape[:2], generator=generator, device=device) < rate
            out[name] = torch.where(drop.unsqueeze(-1), means[name].to(tokens.dtype), tokens)
        return out

    def _task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The classification (or regression) loss of transformers' sequence classifiers, in float32, after
        checking the labels' shape and values against `config.problem_type` (inferred on the first call when
        `None`, as transformers does)."""
        c = self.config.num_labels
        pt = self.config.problem_type
        if pt is None:
            pt = infer_problem_type(c, labels.dim(), not labels.is_floating_point() and labels.dtype != torch.bool)
        b = logits.shape[0]
        if pt == "single_label_classification":
            if labels.dim() != 1 or labels.shape[0] != b:
                raise ValueError(
                    f"labels for single_label_classification must be class indices of shape ({b},), got "
                    f"{tuple(labels.shape)}; for multi-hot labels set config.problem_type='multi_label_classification'"
                )
            if labels.is_floating_point():
                raise ValueError("labels for single_label_classification must be integers (class indices), got floats")
            if labels.numel() and (labels.min() < 0 or labels.max() >= c):
                raise ValueError(
                    f"labels must be class indices in [0, {c}); got values in [{int(labels.min())}, {int(labels.max())}]"
                    " (unknown label: check the dataset's label names against config.id2label)"
                )
            labels = labels.long()
        elif pt == "multi_label_classification":
            if tuple(labels.shape) != (b, c):
                raise ValueError(
                    f"labels for multi_label_classification must be multi-hot of shape ({b}, {c}), got {tuple(labels.shape)}"
                )
            labels = labels.float()
        else:
            allowed = ((b,), (b, 1)) if c == 1 else ((b, c),)
            if tuple(labels.shape) not in allowed:
                raise ValueError(
                    f"labels for regression must have shape {' or '.join(map(str, allowed))}, got {tuple(labels.shape)}"
                )
            labels = labels.float()
        self.config.problem_type = pt  # kept once labels of that kind were accepted
        return self.loss_function(labels=labels, pooled_logits=logits.float(), config=self.config)

    def interaction_losses(self, clean: torch.Tensor, knocked_out: torch.Tensor) -> torch.Tensor:
        """Per-expert interaction losses `(E,)`.

        `clean (E, B, D)`: each expert's clean latent (or logits); `knocked_out (E, M, B, D)`: the same with
        modality j replaced. Experts are ordered: uniqueness per modality, synergy, redundancy.
        """
        m = self.config.num_modalities
        clean, knocked_out = clean.float(), knocked_out.float()
        dist = (clean.unsqueeze(1) - knocked_out).norm(dim=-1)  # (E, M, B)
        cos = F.cosine_similarity(clean.unsqueeze(1).expand_as(knocked_out), knocked_out, dim=-1)  # (E, M, B)
        losses = []
        if m > 1:
            d_uni = dist[:m]  # (M uniqueness experts, M knocked-out modalities, B)
            negative = torch.diagonal(d_uni, dim1=0, dim2=1).T  # (M, B): expert i with its own modality removed
            triplet = F.relu(d_uni - negative.unsqueeze(1) + self.config.triplet_margin)
            off_diag = ~torch.eye(m, dtype=torch.bool, device=clean.device)
            losses.append((triplet * off_diag.unsqueeze(-1)).sum(dim=(1, 2)) / ((m - 1) * clean.shape[1]))
        else:
            losses.append(clean.new_zeros(m))
        losses.append(cos[m].mean().unsqueeze(0))  # synergy: any knock-out must change it
        losses.append((1.0 - cos[m + 1]).mean().unsqueeze(0))  # redundancy: must survive any knock-out
        return torch.cat(losses)

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        features: Mapping[str, torch.Tensor],
        attention_mask: Mapping[str, torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
        compute_interaction_loss: bool | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> FLI2MoEOutput | tuple[torch.Tensor, ...]:
        r"""
        Args:
            features: `{modality name: (B, T_m, D_m)}` frozen-encoder features, every modality of the config.
            attention_mask: `{modality name: (B, T_m)}`, 1 = real token; omitted = all valid.
            labels: `(B,)` class indices (single-label), `(B, C)` multi-hot (multi-label), or `(B,)` targets
                (regression with one output; `(B, C)` with C outputs).
            output_attentions: return every layer's attention probabilities. They come from the `eager`
                attention implementation: load the model with `attn_implementation="eager"` (or call
                `model.set_attn_implementation("eager")`); the default `sdpa` does not compute them.
            compute_interaction_loss: run the knocked-out passes and add the interaction loss; default: when
                `labels` are given and the mixture is `interaction`.
            generator: random generator for the `noise` fill and for token masking in training (global RNG
                when None).
            return_dict: return an `FLI2MoEOutput` (default, `config.return_dict`) or a tuple of its
                non-`None` fields in order.

        Any other keyword argument raises `TypeError` (nothing is silently ignored).
        """
        if kwargs:
            raise TypeError(
                f"FLI2MoEModel.forward() got unexpected keyword argument(s) {sorted(kwargs)}; it takes features, "
                "attention_mask, labels, output_attentions, compute_interaction_loss, generator and return_dict. "
                "Raw text or images become features with FLI2MoEProcessor: model(**processor(...).model_inputs())."
            )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions=True needs the eager attention implementation (the only one that computes the "
                f"probabilities), and this model uses {self.config._attn_implementation!r}: load it with "
                "attn_implementation='eager' or call model.set_attn_implementation('eager') first"
            )
        batch, masks = self.check_inputs(features, attention_mask, labels)
        if not output_attentions:  # attention maps keep every given position, for the explainers
            features, masks = self.trim_padding(features, masks)
        projected = self.project(features)
        if self.training and self.config.token_masking > 0:
            projected = self.mask_tokens(projected, generator)
        weights = self.route(projected, masks)
        if compute_interaction_loss is None:
            compute_interaction_loss = labels is not None
        compute_interaction_loss = compute_interaction_loss and self.config.mixture == "interaction"

        names = self.modality_names
        if compute_interaction_loss:
            # stack the clean batch and one copy per knocked-out modality along the batch dimension
            copies = {n: [projected[n]] for n in names}
            for j in names:
                for n in names:
                    copies[n].append(self.fill_tokens(n, projected[n], generator) if n == j else projected[n])
            stacked = {n: torch.cat(copies[n], dim=0) for n in names}
            stacked_masks = {n: masks[n].repeat(len(names) + 1, 1) for n in names}
        else:
            stacked, stacked_masks = projected, masks

        hidden, segments = self.embed(stacked)
        token_mask = torch.cat([stacked_masks[n] for n in names], dim=1)
        expert_logits, latents, attentions = self.experts(
            hidden, token_mask, segments, output_attentions=output_attentions
        )
        if output_attentions and compute_interaction_loss:
            attentions = tuple(a[:, :batch] for a in attentions)

        clean_logits, clean_latents = expert_logits[:, :batch], latents[:, :batch]
        logits = torch.einsum("be,ebc->bc", weights.to(clean_logits.dtype), clean_logits)

        loss = task_loss = interaction_loss = per_expert = None
        if compute_interaction_loss:
            space = latents if self.config.interaction_space == "latent" else expert_logits
            e, d = space.shape[0], space.shape[-1]
            knocked = space[:, batch:].reshape(e, len(names), batch, d)
            per_expert = self.interaction_losses(space[:, :batch], knocked)
            interaction_loss = per_expert.mean()
        if labels is not None:
            task_loss = self._task_loss(logits, labels)
            loss = task_loss
            if interaction_loss is not None:
                loss = task_loss + self.config.interaction_loss_weight * interaction_loss

        output = FLI2MoEOutput(
            loss=loss,
            logits=logits,
            expert_logits=clean_logits.transpose(0, 1),
            expert_weights=weights,
            latents=clean_latents.transpose(0, 1),
            task_loss=task_loss,
            interaction_loss=interaction_loss,
            expert_interaction_losses=per_expert,
            attentions=attentions,
        )
        return output if return_dict else output.to_tuple()

    def head_logits(
        self,
        features: Mapping[str, torch.Tensor],
        attention_mask: Mapping[str, torch.Tensor] | None = None,
        head: int | str = "mixture",
    ) -> torch.Tensor:
        """Logits `(B, C)` of one head: `"mixture"` (the model's output) or one expert (name or index).

        A single expert runs only that expert's weights (about E times cheaper than the mixture).
        """
        _, masks = self.check_inputs(features, attention_mask)
        features, masks = self.trim_padding(features, masks)
        return self.head_logits_from_projected(self.project(features), masks, head)

    def head_logits_from_projected(
        self,
        projected: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor],
        head: int | str = "mixture",
    ) -> torch.Tensor:
        """Like `head_logits`, from already projected tokens `{name: (B, T, H)}` and bool masks.

        Probes project one example once and build their coalitions in the projected space.
        """
        names = self.modality_names
        hidden, segments = self.embed(projected)
        token_mask = torch.cat([masks[n].bool() for n in names], dim=1)
        head = self.resolve_head(head)
        if head == "mixture" or self.config.mixture == "dense":  # the dense model's one expert is its output
            weights = self.route(projected, {n: masks[n].bool() for n in names})
            logits, _, _ = self.experts(hidden, token_mask, segments)
            return torch.einsum("be,ebc->bc", weights.to(logits.dtype), logits)
        logits, _, _ = self.experts(hidden, token_mask, segments, experts=self.resolve_experts(head))
        return logits[0]

    def coalition_logits(
        self,
        projected: Mapping[str, torch.Tensor],
        fill: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
        head: int | str = "mixture",
    ) -> torch.Tensor:
        """Logits `(k, C)` of one head on k coalitions of ONE example's tokens: the same values as
        `head_logits_from_projected({n: torch.where(present[n][..., None], projected[n], fill[n])}, masks,
        head)`, computed faster.

        `projected {name: (1, T, H)}`: the example's projected tokens; `fill {name: (H,)}`: what stands in for
        an absent token (e.g. `projected_modality_means()`); `present {name: (k, T)}` bool, true = the token
        is the example's; `masks {name: (1, T) or (k, T)}` bool (omitted = all valid). Every token has only
        two possible inputs (its own or the fill, plus its position), so the router's pooled means and the
        first block's LayerNorm and query/key/value projection are computed once for those 2 T inputs and
        selected per coalition instead of once per coalition and token.
        """
        names = self.modality_names
        k = present[names[0]].shape[0]
        own = {n: projected[n].reshape(1, -1, projected[n].shape[-1]) for n in names}
        fills = {n: fill[n].reshape(1, 1, -1).to(own[n].dtype).expand_as(own[n]) for n in names}
        masks = {n: (torch.ones_like(present[n]) if masks is None else masks[n].bool()).expand(k, -1) for n in names}
        present = {n: present[n].bool() for n in names}
        head = self.resolve_head(head)
        mixture = head == "mixture" or self.config.mixture == "dense"
        experts = None if mixture else self.resolve_experts(head)
        # the two candidate inputs of every token: (2, T, H), 0 = the example's, 1 = the fill
        candidates, segments = self.embed({n: torch.cat([own[n], fills[n]]) for n in names})
        select = torch.cat([present[n] for n in names], dim=1)  # (k, T): true = candidate 0
        token_mask = torch.cat([masks[n] for n in names], dim=1)
        dtype = compute_dtype(candidates)
        t = select.shape[1]
        e = self.experts.num_experts if experts is None else int(experts.numel())
        pad = 0
        if not torch.is_grad_enabled():  # the experts' padding at inference, done here by the row index below
            token_mask, segments, pad = self.experts.pad_tokens(token_mask, segments)
        chunk = self.experts.rows_per_chunk(e, t + pad, torch.finfo(dtype).bits // 8, k) if not torch.is_grad_enabled() else k
        parts = []
        with torch.autocast(candidates.device.type, enabled=False):
            candidates = candidates.to(dtype)
            qkv = self.experts.layers[0].project_qkv(candidates, experts)  # (E, 2 T, 3H)
            candidates = candidates.flatten(0, 1)
            # row of every (coalition, token) among the 2 T candidates: whole rows copied, no arithmetic
            rows = torch.arange(t, device=select.device) + t * (~select)  # (k, T)
            if pad:  # one zero row more, masked: the padding tokens
                candidates = torch.cat([candidates, candidates.new_zeros(1, candidates.shape[-1])])
                qkv = torch.cat([qkv, qkv.new_zeros(qkv.shape[0], 1, qkv.shape[-1])], dim=1)
                rows = torch.cat([rows, rows.new_full((k, pad), 2 * t)], dim=1)
                t += pad
            for start in range(0, max(k, 1), chunk):  # one chunk at a time: the gathered rows stay in cache
                part = rows[start : start + chunk].flatten()
                hidden = candidates.index_select(0, part).view(-1, t, candidates.shape[-1])  # (k', T, H)
                first_qkv = qkv.index_select(1, part)  # (E, k' T, 3H)
                parts.append(self.experts(
                    hidden, token_mask[start : start + chunk], segments, experts=experts, first_qkv=first_qkv
                )[0])
        logits = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if not mixture:
            return logits[0]
        if self.router is None:
            return logits[0]
        # masked means of the coalitions' projected tokens: the own tokens' share plus the fill's
        pooled = []
        for n in names:
            valid = masks[n].to(own[n].dtype)
            own_share = (present[n].to(own[n].dtype) * valid)
            with torch.autocast(valid.device.type, enabled=False):  # as exact as the masked mean
                total = own_share @ own[n][0] + (valid.sum(-1, keepdim=True) - own_share.sum(-1, keepdim=True)) * fills[n][0, :1]
            pooled.append(total / valid.sum(-1, keepdim=True).clamp_min(1.0))
        weights = self.router(pooled)
        return torch.einsum("be,ebc->bc", weights.to(logits.dtype), logits)

    def projected_modality_means(self) -> dict[str, torch.Tensor]:
        """The dataset-mean tokens after projection `{name: (H,)}`: the fill for absent players."""
        return {n: self.projections[n](getattr(self.modality_means, n)) for n in self.modality_names}


__all__ = ["FLI2MoEModel", "FLI2MoEOutput", "FLI2MoEPreTrainedModel", "StackedLinear", "StackedLayerNorm"]
