"""Fast CPU paths for the experts, registered when the package is imported.

The model file (`modeling_fli2moe.py`, which checkpoints carry as remote code) holds the plain reference
implementation. This module holds the faster one and installs it on the package's own model classes
(`register`, called by the package's `__init__`); a checkpoint loaded as remote code without the package runs
the reference implementation and gives the same logits, only slower. What is faster here:

- the LayerNorms' scale and shift folded into the linear layers after them, weights prepared once per forward;
- at inference (no autograd graph): rows in cache-sized chunks, sequences padded to a multiple of 16 tokens,
  bias and residual as the matmuls' initial values, the first block's input shared by every expert;
- in training: dropout-plus-residual and GELU-plus-linear as autograd functions that keep less for backward;
- attention: `ChunkedAttention` for 16-bit tensors on CPU (forward and backward), transformers' `sdpa` elsewhere;
  also registered with transformers as the attention implementation `"fli2moe_cpu"`, which any FL-I2MoE model
  (remote code included) can select with `attn_implementation="fli2moe_cpu"`;
- `coalition_logits`: many coalitions of one example's tokens, where every token is the example's or the fill.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

from . import modeling_fli2moe as modeling
from .precision import cpu_flags

__all__ = [
    "ChunkedAttention", "cpu_attention_forward", "coalition_logits", "experts_forward", "reference_experts_forward", "register",
    "rows_per_chunk", "short_attention",
]

#: the attention implementation name registered with transformers
ATTENTION_NAME = "fli2moe_cpu"
#: at inference the joint sequence is padded to a multiple of this many tokens: the CPU attention kernels run
#: much faster on such lengths (bf16 flash attention on 111 tokens 5.0 ms, on 112 tokens 2.8 ms) ...
TOKEN_MULTIPLE = 16
#: ... unless that adds more than this fraction of the tokens, whose cost then outweighs the gain (81 tokens, the
#: planted model's: 700 coalitions in 0.51 s unpadded against 0.58 s padded to 96, avx512_bf16, 2 threads)
MAX_PAD_FRACTION = 1 / 16
#: bytes of the widest activation (query, key and value of every expert) of one chunk of rows at inference:
#: small enough to stay in cache and be reused by the allocator, large enough for full-speed matmuls
CHUNK_BYTES = 16 << 20


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the experts compute in: autocast's lower precision when autocast is on, else `x`'s."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def fold_norm(norm: nn.Module, linear: nn.Module, experts: torch.Tensor | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight `(E, in, out)` and bias `(E, out)` of `linear(norm(x))` as a function of the unit-normalised `x`:
    the LayerNorm's scale and shift folded into the linear layer (one pass less over the tokens)."""
    scale, shift, weight, bias = norm.weight, norm.bias, linear.weight, linear.bias
    if experts is not None:
        scale, shift, weight, bias = scale[experts], shift[experts], weight[experts], bias[experts]
    folded = scale.unsqueeze(-1) * weight
    bias = torch.baddbmm(bias.unsqueeze(1), shift.unsqueeze(1), weight).squeeze(1)
    return folded.to(dtype), bias.to(dtype)


def linear_weights(linear: nn.Module, experts: torch.Tensor | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A `StackedLinear`'s weight and bias for `experts`, in `dtype`."""
    weight, bias = linear.weight, linear.bias
    if experts is not None:
        weight, bias = weight[experts], bias[experts]
    return weight.to(dtype), bias.to(dtype)


def stacked_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, shared: bool = False) -> torch.Tensor:
    """`x (E, ..., in)` times `weight (E, in, out)` plus `bias (E, out)`, as `(E, N, out)`; with `shared`,
    `x (..., in)` is the same input for every expert (not copied)."""
    e, d_in = weight.shape[0], weight.shape[1]
    flat = x.reshape(1, -1, d_in).expand(e, -1, -1) if shared else x.reshape(e, -1, d_in)
    return torch.baddbmm(bias.unsqueeze(1), flat, weight)  # the bias as the initial value: one pass less


def keep_mask(like: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Bool mask shaped like `like`, true with probability 1 - p: 8 random bits per element where p is a
    multiple of 1/256, else 16, drawn 64 bits at a time (several times cheaper than one draw per element)."""
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
    """A bool mask as ones and zeros of `dtype`, converted from its bytes (faster than from bool on CPU)."""
    return mask.view(torch.uint8).to(dtype)


class DropoutAdd(torch.autograd.Function):
    """`x + dropout(y)` in one pass; backward reuses the keep mask, kept as one byte per element. `x` may lack
    the leading (expert) dimension of `y`."""

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
    """`gelu(h) @ weight + bias` for stacked `h (E, N, in)`; backward recomputes `gelu(h)` instead of keeping
    it (the widest activation of the block)."""

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
    """Softmax attention of `query, key, value (N, heads, T, d)` with an additive key bias `(N, 1, T)`, one head
    and one chunk of sequences at a time, as `(N, T, heads, d)`; backward recomputes the probabilities unless
    all of them together take at most `saved_probs_bytes`. q, k and v are laid out head-major once (the CPU
    bf16 matmuls copy strided operands on every call). Faster than CPU flash attention in bf16."""

    #: probabilities up to this size are kept for backward (short sequences); longer ones are recomputed
    saved_probs_bytes: int = 64 << 20
    #: bytes of one chunk's probabilities (one head): cache-sized (on 514 tokens, 8 MB chunks ran forward and
    #: backward about 20% faster than 32 MB ones)
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


def cpu_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """`sdpa` with the arguments and output of the model's `eager_attention_forward` (no probabilities), except
    for 16-bit tensors on CPU, where `ChunkedAttention` is faster and holds less: when gradients are needed, and
    at inference with heads of `CHUNKED_MIN_HEAD_DIM` or more on CPUs without AMX; narrower heads on short
    sequences use `short_attention` at inference on such CPUs (with AMX tiles, and for narrow heads on long
    sequences, torch's flash-attention kernel is the faster forward)."""
    batch_shape, (heads, t, d) = query.shape[:-3], query.shape[-3:]
    query, key, value = (x.reshape(-1, heads, t, d) for x in (query, key, value))
    mask = attention_mask.expand(*batch_shape, 1, 1, t).reshape(-1, 1, 1, t)
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (query, key, value))
    half = query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16) and dropout == 0.0
    if half and not grad and "amx_tile" not in cpu_flags() and d < CHUNKED_MIN_HEAD_DIM and t <= SHORT_MAX_TOKENS:
        out = short_attention(query, key, value, mask, scaling)
    elif half and (grad or ("amx_tile" not in cpu_flags() and d >= CHUNKED_MIN_HEAD_DIM)):
        bias = query.new_zeros(query.shape[0], 1, t).masked_fill(~mask.view(-1, 1, t), float("-inf"))
        chunk = max(1, ChunkedAttention.chunk_bytes // (t * t * query.element_size()))
        out = ChunkedAttention.apply(query, key, value, bias, chunk)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout if module.training else 0.0,
                                             scale=scaling).transpose(1, 2)
    return out.reshape(*batch_shape, t, heads, d), None


def short_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                    scaling: float) -> torch.Tensor:
    """Softmax attention of `query, key, value (N, heads, T, d)` with a bool key mask `(N, 1, 1, T)`, every head
    of every sequence in one batched matmul each way, as `(N, T, heads, d)`: for short sequences and narrow heads,
    where the whole score tensor is small and the batched matmuls beat the flash kernel's per-tile overhead."""
    n, heads, t, d = query.shape
    bias = query.new_zeros(n, 1, t).masked_fill_(~mask.view(n, 1, t), float("-inf"))
    bias = bias.repeat_interleave(heads, dim=0).expand(n * heads, t, t)  # one row per (sequence, head), not copied t times
    scores = torch.baddbmm(bias, query.reshape(n * heads, t, d),
                           key.reshape(n * heads, t, d).transpose(1, 2), alpha=scaling)
    return torch.bmm(scores.softmax(-1), value.reshape(n * heads, t, d)).view(n, heads, t, d).transpose(1, 2)


#: at inference without AMX, sequences up to this many tokens with heads narrower than `CHUNKED_MIN_HEAD_DIM` use
#: `short_attention`: the planted model's 81 tokens, d = 16, 700 coalitions: 0.46-0.59 s against 0.63-0.71 s with
#: torch's flash attention (bf16, 2 threads of a CPU with avx512_bf16)
SHORT_MAX_TOKENS = 128


#: the narrowest head for which `ChunkedAttention` beats torch's flash attention at inference without AMX. bf16
#: inference, 2 threads of a CPU with avx512_bf16: 4 x 256 rows, T = 128, d = 64: 0.19-0.22 s against 0.23; 4 x 32 rows,
#: T = 528, d = 64: 0.27-0.30 s against 0.36; but d = 32 (T = 80 or 128): 0.21-0.35 s against 0.15-0.31, and
#: d = 16 (the planted model's heads, T = 80): 0.12-0.13 s against 0.08-0.10
CHUNKED_MIN_HEAD_DIM = 64


#: the attention kernels of the fast path by `config._attn_implementation`: `sdpa` is `cpu_attention_forward`
ATTENTION_FUNCTIONS = AttentionInterface()
ATTENTION_FUNCTIONS["sdpa"] = cpu_attention_forward


def block_weights(block: nn.Module, experts: torch.Tensor | None, dtype: torch.dtype) -> dict[str, Any]:
    """An `ExpertBlock`'s weights `(E, in, out)` and biases for `experts` in `dtype`, LayerNorms folded in."""
    return {
        "qkv": fold_norm(block.attn_norm, block.qkv, experts, dtype),
        "attn_out": linear_weights(block.attn_out, experts, dtype),
        "ffn_in": [fold_norm(block.ffn_norm, fin, experts, dtype) for fin in block.ffn_in],
        "ffn_out": [linear_weights(fout, experts, dtype) for fout in block.ffn_out],
    }


def project_qkv(block: nn.Module, x: torch.Tensor, experts: torch.Tensor | None, weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Queries, keys and values `(E, N, 3H)` of the LayerNorm of `x (E, ..., H)` (or of `x (..., H)` shared by
    every expert), N the tokens per expert."""
    weight, bias = fold_norm(block.attn_norm, block.qkv, experts, x.dtype) if weights is None else weights
    normed = F.layer_norm(x, x.shape[-1:], eps=block.attn_norm.eps)
    return stacked_matmul(normed, weight, bias, shared=x.dim() == 3)


def block_forward(
    block: nn.Module,
    x: torch.Tensor,
    attention_mask: torch.Tensor,
    segments: Sequence[tuple[int, int]],
    experts: torch.Tensor | None,
    attention: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    qkv: torch.Tensor | None,
    weights: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`ExpertBlock.forward`, faster: `x (E, B, T, H)` or `(B, T, H)` shared by every expert; `qkv (E, B*T, 3H)`
    when the caller has it; `weights` from `block_weights`."""
    b, t, h = x.shape[-3:]
    p = block.dropout.p if block.training else 0.0
    if qkv is None:
        qkv = project_qkv(block, x, experts, weights["qkv"])
    e = qkv.shape[0]
    query, key, value = qkv.view(e, b, t, 3, block.num_heads, block.head_dim).permute(3, 0, 1, 4, 2, 5)
    ctx, probs = attention(block, query, key, value, attention_mask, scaling=block.head_dim**-0.5)
    out_weight, out_bias = weights["attn_out"]
    # without an autograd graph, the residual plus the bias is each output matmul's initial value
    inference = not torch.is_grad_enabled()
    if inference:
        x = (x + out_bias[:, None, None, :]).view(e, b * t, h).baddbmm_(ctx.reshape(e, b * t, h), out_weight).view(e, b, t, h)
    else:
        x = dropout_add(x, stacked_matmul(ctx.reshape(e, b, t, h), out_weight, out_bias).view(e, b, t, h), p, block.training)
    normed = F.layer_norm(x, (h,), eps=block.ffn_norm.eps)
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
    return dropout_add(x, torch.cat(ffn, dim=2), p, block.training), probs


def pad_tokens(token_mask: torch.Tensor, segments: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, list[tuple[int, int]], int]:
    """`token_mask (B, T)` and `segments` with masked tokens added at the end of the last segment, up to a
    multiple of `TOKEN_MULTIPLE` tokens where that adds at most `MAX_PAD_FRACTION` of them (pooled out, never
    attended to), and how many were added."""
    pad = -token_mask.shape[1] % TOKEN_MULTIPLE
    if pad > MAX_PAD_FRACTION * token_mask.shape[1]:
        pad = 0
    segments = list(segments)
    if pad:
        token_mask = torch.cat([token_mask, token_mask.new_zeros(token_mask.shape[0], pad)], dim=1)
        segments[-1] = (segments[-1][0], segments[-1][1] + pad)
    return token_mask, segments, pad


def rows_per_chunk(hidden_size: int, num_experts: int, tokens: int, element_size: int, rows: int | None = None) -> int:
    """Rows (sequences) per chunk of an inference pass; chunks give the same values. With `rows` (the batch),
    the chunks are made equal (32 rows as 16 + 16, not 23 + 9)."""
    per_row = num_experts * tokens * 3 * hidden_size * element_size
    most = max(1, CHUNK_BYTES // max(per_row, 1))
    if rows is None or rows <= most:
        return most if rows is None else max(rows, 1)
    return -(-rows // -(-rows // most))


def experts_forward(
    module: nn.Module,
    hidden: torch.Tensor,
    token_mask: torch.Tensor,
    segments: Sequence[tuple[int, int]],
    experts: torch.Tensor | None = None,
    output_attentions: bool = False,
    first_qkv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """`StackedExperts.forward`, faster (the same values); `first_qkv (E, B*T, 3H)`: the first block's
    `project_qkv(hidden)` when the caller has it (in the compute dtype)."""
    attention = ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, modeling.eager_attention_forward)
    e = module.num_experts if experts is None else int(experts.numel())
    dtype = compute_dtype(hidden)
    b, t = token_mask.shape
    rows = b
    if not torch.is_grad_enabled() and not output_attentions:
        token_mask, segments, pad = pad_tokens(token_mask, segments)
        if pad:
            hidden = torch.cat([hidden, hidden.new_zeros(b, pad, hidden.shape[-1])], dim=1)
            if first_qkv is not None:
                first_qkv = first_qkv.view(e, b, t, -1)
                first_qkv = torch.cat([first_qkv, first_qkv.new_zeros(e, b, pad, first_qkv.shape[-1])], dim=2).view(e, b * (t + pad), -1)
            t += pad
        rows = rows_per_chunk(module.config.hidden_size, e, t, torch.finfo(dtype).bits // 8, b)
    # a row without any valid token attends to everything (pooled to zero anyway): softmax never sees all -inf
    key_mask = token_mask | ~token_mask.any(dim=-1, keepdim=True)
    chunks = []
    with torch.autocast(hidden.device.type, enabled=False):  # explicit dtypes inside
        weights = [block_weights(layer, experts, dtype) for layer in module.layers]
        for start in range(0, max(b, 1), rows):  # an empty batch is one (empty) chunk
            part = slice(start, start + rows)
            qkv = None if first_qkv is None else first_qkv[:, start * t : (start + rows) * t]
            chunks.append(_forward_rows(module, hidden[part].to(dtype), token_mask[part], key_mask[part], segments,
                                        experts, e, attention, qkv, weights))
    if len(chunks) == 1:
        logits, latents, maps = chunks[0]
    else:
        logits, latents = (torch.cat([c[i] for c in chunks], dim=1) for i in (0, 1))
        maps = None
    return logits, latents, (tuple(maps) if output_attentions else None)


def _forward_rows(
    module: nn.Module,
    x: torch.Tensor,
    token_mask: torch.Tensor,
    key_mask: torch.Tensor,
    segments: Sequence[tuple[int, int]],
    experts: torch.Tensor | None,
    e: int,
    attention: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    first_qkv: torch.Tensor | None,
    weights: Sequence[Mapping[str, Any]],
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    """The experts on rows `x (B, T, H)` (compute dtype, autocast off): logits, latents, attention maps."""
    dtype = x.dtype
    attention_mask = key_mask[:, None, None, :]
    maps = []
    for i, layer in enumerate(module.layers):  # the first block reads the same input for every expert
        x, probs = block_forward(layer, x, attention_mask, segments, experts, attention, first_qkv if i == 0 else None, weights[i])
        maps.append(probs)
    if x.dim() == 3:
        x = x.expand(e, *x.shape)
    # masked mean of every modality in one matmul, (B, M, T) pooling weights @ (E, B, T, H), with the final
    # LayerNorm's scale and shift applied to the pooled means (fewer tokens than positions)
    x = F.layer_norm(x, x.shape[-1:], eps=module.final_norm.eps)
    pool = torch.zeros(token_mask.shape[0], len(segments), token_mask.shape[1], dtype=x.dtype, device=x.device)
    for m, (start, end) in enumerate(segments):
        pool[:, m, start:end] = token_mask[:, start:end].to(x.dtype)
    pool = pool / pool.sum(-1, keepdim=True).clamp_min(1.0)
    scale, shift = module.final_norm.weight, module.final_norm.bias
    if experts is not None:
        scale, shift = scale[experts], shift[experts]
    present = pool.sum(-1, keepdim=True)  # (B, M, 1): 1, or 0 for a modality without valid tokens
    latents = torch.addcmul(present * shift.to(dtype)[:, None, None, :], pool.unsqueeze(0) @ x, scale.to(dtype)[:, None, None, :]).flatten(-2)
    head_weight, head_bias = linear_weights(module.head, experts, dtype)
    logits = stacked_matmul(latents, head_weight, head_bias).view(*latents.shape[:2], -1)
    return logits, latents, maps


def coalition_logits(
    model: nn.Module,
    projected: Mapping[str, torch.Tensor],
    fill: Mapping[str, torch.Tensor],
    present: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    head: int | str | Sequence[int | str] = "mixture",
) -> torch.Tensor:
    """Logits `(k, C)` of one head of an FL-I2MoE `model` on k coalitions of ONE example's tokens: the values of
    `model.head_logits_from_projected({n: torch.where(present[n][..., None], projected[n], fill[n])}, masks,
    head)`, computed faster; for a list of heads, `(len(head), k, C)` from one pass of every expert.

    `projected {name: (1, T, H)}`: the example's projected tokens; `fill {name: (H,)}`: what stands in for an
    absent token; `present {name: (k, T)}` bool, true = the example's token; `masks {name: (1, T) or (k, T)}`
    bool (omitted = all valid). Every token has two possible inputs (its own or the fill, plus its position),
    so the router's pooled means and the first block's LayerNorm and query/key/value projection are computed
    once for those 2 T inputs and selected per coalition.
    """
    names = model.modality_names
    k = present[names[0]].shape[0]
    own = {n: projected[n].reshape(1, -1, projected[n].shape[-1]) for n in names}
    fills = {n: fill[n].reshape(1, 1, -1).to(own[n].dtype).expand_as(own[n]) for n in names}
    masks = {n: (torch.ones_like(present[n]) if masks is None else masks[n].bool()).expand(k, -1) for n in names}
    present = {n: present[n].bool() for n in names}
    many = not isinstance(head, (int, str))
    heads = [model.resolve_head(h) for h in (head if many else [head])]
    dense = model.config.mixture == "dense" or model.router is None  # the dense model's one expert is its output
    experts = None if dense or len(heads) > 1 or heads[0] == "mixture" else model.resolve_experts(heads[0])
    # the two candidate inputs of every token: (2, T, H), 0 = the example's, 1 = the fill
    candidates, segments = model.embed({n: torch.cat([own[n], fills[n]]) for n in names})
    select = torch.cat([present[n] for n in names], dim=1)  # (k, T): true = candidate 0
    token_mask = torch.cat([masks[n] for n in names], dim=1)
    dtype = compute_dtype(candidates)
    t = select.shape[1]
    e = model.experts.num_experts if experts is None else int(experts.numel())
    inference = not torch.is_grad_enabled()
    pad = 0
    if inference:  # the experts' padding at inference, done here by the row index below
        token_mask, segments, pad = pad_tokens(token_mask, segments)
    chunk = rows_per_chunk(model.config.hidden_size, e, t + pad, torch.finfo(dtype).bits // 8, k) if inference else k
    parts = []
    with torch.autocast(candidates.device.type, enabled=False):
        candidates = candidates.to(dtype)
        qkv = project_qkv(model.experts.layers[0], candidates, experts)  # (E, 2 T, 3H)
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
            parts.append(experts_forward(model.experts, hidden, token_mask[start : start + chunk], segments,
                                         experts=experts, first_qkv=qkv.index_select(1, part))[0])
    logits = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    names_of_experts = list(model.config.expert_names)
    out = []
    for h in heads:
        if dense or experts is not None:
            out.append(logits[0])
        elif h != "mixture":
            out.append(logits[names_of_experts.index(h)])
        else:
            out.append(torch.einsum("be,ebc->bc", _coalition_routing(model, own, fills, present, masks).to(logits.dtype), logits))
    return torch.stack(out) if many else out[0]


def _coalition_routing(model: nn.Module, own: Mapping[str, torch.Tensor], fills: Mapping[str, torch.Tensor],
                       present: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The router's weights `(k, E)` of the coalitions, from the masked means of their projected tokens: the own
    tokens' share plus the fill's."""
    pooled = []
    for n in model.modality_names:
        valid = masks[n].to(own[n].dtype)
        own_share = present[n].to(own[n].dtype) * valid
        with torch.autocast(valid.device.type, enabled=False):  # as exact as the masked mean
            total = own_share @ own[n][0] + (valid.sum(-1, keepdim=True) - own_share.sum(-1, keepdim=True)) * fills[n][0, :1]
        pooled.append(total / valid.sum(-1, keepdim=True).clamp_min(1.0))
    return model.router(pooled)


#: the model file's own `StackedExperts.forward`: the reference implementation the fast path must match
reference_experts_forward = modeling.StackedExperts.__dict__["forward"]
if reference_experts_forward is experts_forward:  # this module reloaded after `register`
    raise ImportError("modeling_fli2moe.kernels was reloaded after register(); restart the interpreter")


def register() -> None:
    """Install the fast paths: `"fli2moe_cpu"` in transformers' attention implementations (for any FL-I2MoE
    model, remote code included) and `experts_forward` as the package's own `StackedExperts.forward`."""
    AttentionInterface.register(ATTENTION_NAME, cpu_attention_forward)
    modeling.StackedExperts.forward = experts_forward
