"""FL-I2MoE in the shape of transformers' model tests: a ModelTester with a tiny config and
`create_and_check_*` methods, common checks (save/load, return_dict, attention implementations,
initialisation, unknown arguments) and an integration test with a pinned logits slice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeling_fli2moe import FLI2MoEConfig, FLI2MoEModel
from modeling_fli2moe import kernels
from modeling_fli2moe.kernels import ChunkedAttention, coalition_logits
from modeling_fli2moe.modeling_fli2moe import (
    FLI2MoEOutput,
    ModalityMeans,
    StackedLayerNorm,
    StackedLinear,
    eager_attention_forward,
)


class FLI2MoEModelTester:
    """Builds a tiny config and random inputs, and checks a model's outputs against them."""

    def __init__(
        self,
        batch_size: int = 3,
        tokens: tuple[int, int] = (5, 7),
        dims: tuple[int, int] = (12, 20),
        hidden_size: int = 16,
        num_layers: int = 2,
        num_heads: int = 4,
        num_labels: int = 3,
        mixture: str = "interaction",
        problem_type: str = "single_label_classification",
        seed: int = 0,
    ) -> None:
        self.batch_size, self.tokens, self.dims = batch_size, tokens, dims
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.num_labels, self.mixture, self.problem_type = num_labels, mixture, problem_type
        self.seed = seed
        self.names = ("text", "image")

    def get_config(self, **overrides) -> FLI2MoEConfig:
        kwargs = dict(
            modalities=[{"name": n, "input_dim": d} for n, d in zip(self.names, self.dims)],
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            dropout=0.0,
            router_hidden_size=16,
            num_labels=self.num_labels,
            mixture=self.mixture,
            problem_type=self.problem_type,
        )
        kwargs.update(overrides)
        return FLI2MoEConfig(**kwargs)

    def prepare_config_and_inputs(self) -> tuple[FLI2MoEConfig, dict, dict, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        features = {n: torch.randn(self.batch_size, t, d, generator=g) for n, t, d in zip(self.names, self.tokens, self.dims)}
        masks = {n: torch.ones(self.batch_size, t, dtype=torch.long) for n, t in zip(self.names, self.tokens)}
        masks["text"][0, -2:] = 0  # trailing padding in one row
        if self.problem_type == "multi_label_classification":
            labels = (torch.rand(self.batch_size, self.num_labels, generator=g) > 0.5).float()
        elif self.problem_type == "regression":
            labels = torch.randn(self.batch_size, generator=g)
        else:
            labels = torch.randint(0, self.num_labels, (self.batch_size,), generator=g)
        return self.get_config(), features, masks, labels

    def prepare_config_and_inputs_for_common(self) -> tuple[FLI2MoEConfig, dict]:
        config, features, masks, _ = self.prepare_config_and_inputs()
        return config, {"features": features, "attention_mask": masks}

    @property
    def num_experts(self) -> int:
        return 1 if self.mixture == "dense" else len(self.names) + 2

    def create_and_check_model(self, config, features, masks, labels) -> None:
        model = FLI2MoEModel(config).eval()
        with torch.no_grad():
            out = model(features, masks)
        b, e, c = self.batch_size, self.num_experts, self.num_labels
        assert isinstance(out, FLI2MoEOutput) and out.loss is None
        assert out.logits.shape == (b, c)
        assert out.expert_logits.shape == (b, e, c)
        assert out.expert_weights.shape == (b, e)
        assert out.latents.shape == (b, e, len(self.names) * self.hidden_size)
        torch.testing.assert_close(out.expert_weights.sum(-1), torch.ones(b))
        # the mixture is the router-weighted sum of the experts
        torch.testing.assert_close(out.logits, torch.einsum("be,bec->bc", out.expert_weights, out.expert_logits))

    def create_and_check_loss(self, config, features, masks, labels) -> None:
        """The task loss is transformers' sequence-classification loss of the mixture's logits."""
        model = FLI2MoEModel(config).train()
        out = model(features, masks, labels=labels, generator=torch.Generator().manual_seed(1))
        logits = out.logits.float()
        if self.problem_type == "single_label_classification":
            expected = F.cross_entropy(logits, labels)
        elif self.problem_type == "multi_label_classification":
            expected = F.binary_cross_entropy_with_logits(logits, labels)
        else:
            expected = F.mse_loss(logits.squeeze(-1), labels)
        torch.testing.assert_close(out.task_loss, expected)
        if self.mixture == "interaction":
            torch.testing.assert_close(out.loss, out.task_loss + config.interaction_loss_weight * out.interaction_loss)
            assert out.expert_interaction_losses.shape == (self.num_experts,)
        else:
            assert out.interaction_loss is None and torch.equal(out.loss, out.task_loss)
        out.loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)

    def create_and_check_coalition_logits(self, config, features, masks, labels, monkeypatch) -> None:
        """`coalition_logits` on coalitions of one example equals `head_logits_from_projected` on the
        coalitions built token by token, for every head, in fp32 and under bf16 autocast."""
        model = FLI2MoEModel(config).eval()
        g = torch.Generator().manual_seed(self.seed + 1)
        model.set_modality_means({n: torch.randn(d, generator=g) for n, d in zip(self.names, self.dims)})
        one = {n: features[n][:1] for n in self.names}
        mask = {n: masks[n][:1].bool() for n in self.names}
        k = 6
        present = {n: torch.rand(k, t, generator=g) < 0.5 for n, t in zip(self.names, self.tokens)}
        present["text"][0] = True  # the whole example and, below, an empty text modality
        present["text"][1] = False
        with torch.no_grad():
            projected, fill = model.project(one), model.projected_modality_means()
            built = {n: torch.where(present[n][..., None], projected[n], fill[n]) for n in self.names}
            for head in ["mixture", *range(self.num_experts)]:
                for dtype in (None, torch.bfloat16):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                        expected = model.head_logits_from_projected(built, {n: mask[n].expand(k, -1) for n in self.names}, head)
                        got = coalition_logits(model, projected, fill, present, mask, head)
                    tol = dict(atol=1e-6, rtol=1e-5) if dtype is None else dict(atol=2e-2, rtol=2e-2)
                    torch.testing.assert_close(got.float(), expected.float(), **tol)
            full = coalition_logits(model, projected, fill, {n: torch.ones(1, t, dtype=torch.bool) for n, t in zip(self.names, self.tokens)}, mask)
            torch.testing.assert_close(full, model.head_logits(one, mask), atol=1e-6, rtol=1e-5)
            whole = coalition_logits(model, projected, fill, present, mask)
            monkeypatch.setattr(kernels, "CHUNK_BYTES", 1)  # one coalition per chunk
            torch.testing.assert_close(coalition_logits(model, projected, fill, present, mask), whole, atol=1e-6, rtol=1e-5)

    def create_and_check_expert_heads(self, config, features, masks, labels) -> None:
        model = FLI2MoEModel(config).eval()
        with torch.no_grad():
            out = model(features, masks)
            for e, name in enumerate(config.expert_names):
                torch.testing.assert_close(model.head_logits(features, masks, head=name), out.expert_logits[:, e], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model.head_logits(features, masks, head="mixture"), out.logits, atol=1e-6, rtol=1e-5)


@pytest.fixture(params=[
    {"mixture": "interaction", "problem_type": "single_label_classification"},
    {"mixture": "interaction", "problem_type": "multi_label_classification", "num_labels": 4},
    {"mixture": "dense", "problem_type": "regression", "num_labels": 1},
], ids=["interaction-single", "interaction-multi", "dense-regression"])
def tester(request) -> FLI2MoEModelTester:
    return FLI2MoEModelTester(**request.param)


def test_model(tester):
    tester.create_and_check_model(*tester.prepare_config_and_inputs())


def test_loss(tester):
    tester.create_and_check_loss(*tester.prepare_config_and_inputs())


def test_expert_heads(tester):
    tester.create_and_check_expert_heads(*tester.prepare_config_and_inputs())


@pytest.mark.parametrize("max_pad_fraction", [0.0, 1.0], ids=["unpadded", "padded"])
def test_coalition_logits(tester, max_pad_fraction, monkeypatch):
    monkeypatch.setattr(kernels, "MAX_PAD_FRACTION", max_pad_fraction)
    tester.create_and_check_coalition_logits(*tester.prepare_config_and_inputs(), monkeypatch)


# -------------------------------------------------------------------------------------- common
def test_save_load_keeps_outputs_and_state_dict_keys(tmp_path):
    tester = FLI2MoEModelTester()
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = FLI2MoEModel(config).eval()
    model.set_modality_means({"text": torch.randn(12), "image": torch.randn(20)})
    model.save_pretrained(tmp_path)
    loaded = FLI2MoEModel.from_pretrained(tmp_path).eval()
    assert list(loaded.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


def test_state_dict_keys_are_those_of_saved_checkpoints():
    """Checkpoints saved by earlier versions load: the parameter and buffer names do not change."""
    model = FLI2MoEModel(FLI2MoEModelTester(num_layers=1).get_config())
    assert sorted(model.state_dict()) == sorted([
        "projections.text.weight", "projections.text.bias", "projections.image.weight", "projections.image.bias",
        "modality_embeddings.weight", "modality_means.text", "modality_means.image",
        *(f"experts.layers.0.{m}.{p}" for m in ("attn_norm", "qkv", "attn_out", "ffn_norm") for p in ("weight", "bias")),
        *(f"experts.layers.0.{m}.{i}.{p}" for m in ("ffn_in", "ffn_out") for i in (0, 1) for p in ("weight", "bias")),
        "experts.final_norm.weight", "experts.final_norm.bias", "experts.head.weight", "experts.head.bias",
        "router.mlp.0.weight", "router.mlp.0.bias", "router.mlp.3.weight", "router.mlp.3.bias",
    ])


def test_return_dict_false_gives_the_fields_as_a_tuple():
    tester = FLI2MoEModelTester()
    config, features, masks, labels = tester.prepare_config_and_inputs()
    model = FLI2MoEModel(config).eval()
    out = model(features, masks, labels=labels, generator=torch.Generator().manual_seed(0))
    as_tuple = model(features, masks, labels=labels, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(out.to_tuple())
    for a, b in zip(as_tuple, out.to_tuple()):
        torch.testing.assert_close(a, b)
    config.return_dict = False
    assert isinstance(model(features, masks), tuple)


@pytest.mark.parametrize("name", ["input_ids", "output_hidden_states", "num_items_in_batch"])
def test_unknown_keyword_arguments_raise(name):
    config, inputs = FLI2MoEModelTester().prepare_config_and_inputs_for_common()
    with pytest.raises(TypeError, match=rf"unexpected keyword argument\(s\) \['{name}'\].*FLI2MoEProcessor"):
        FLI2MoEModel(config)(**inputs, **{name: True})


def test_trainer_does_not_pass_loss_kwargs():
    assert FLI2MoEModel.accepts_loss_kwargs is False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_implementations_agree(dtype):
    """`sdpa` (the default; ChunkedAttention for 16-bit on CPU) and `eager` give the same outputs and
    gradients; the choice is the config's, and only `eager` returns attention probabilities."""
    tester = FLI2MoEModelTester()
    config, features, masks, labels = tester.prepare_config_and_inputs()
    torch.manual_seed(0)
    model = FLI2MoEModel(config).train()
    assert model.config._attn_implementation == "sdpa"
    results = {}
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = model(features, masks, labels=labels, generator=torch.Generator().manual_seed(3))
        out.loss.backward()
        results[implementation] = (out.logits.float(), {n: p.grad.clone() for n, p in model.named_parameters()})
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(results["sdpa"][0], results["eager"][0], **tol)
    for name, grad in results["sdpa"][1].items():
        torch.testing.assert_close(grad, results["eager"][1][name], msg=name, **tol)
    model.eval()
    with torch.no_grad():
        eager = model(features, masks, output_attentions=True)
    t = sum(tester.tokens)
    assert len(eager.attentions) == config.num_layers
    assert eager.attentions[0].shape == (4, tester.batch_size, config.num_heads, t, t)
    torch.testing.assert_close(eager.attentions[0].sum(-1), torch.ones(4, tester.batch_size, config.num_heads, t))


def test_output_attentions_needs_eager_attention():
    """`output_attentions` does not pick the kernel: under `sdpa` it is refused, naming the fix."""
    config, inputs = FLI2MoEModelTester().prepare_config_and_inputs_for_common()
    model = FLI2MoEModel(config).eval()
    with pytest.raises(ValueError, match=r"needs the eager attention implementation.*'sdpa'.*set_attn_implementation"):
        model(**inputs, output_attentions=True)
    model.set_attn_implementation("eager")
    assert len(model(**inputs, output_attentions=True).attentions) == config.num_layers


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flex_attention"])
def test_unsupported_attention_implementation_is_refused(implementation):
    model = FLI2MoEModel(FLI2MoEModelTester().get_config())
    with pytest.raises(ValueError, match="does not support"):
        model.set_attn_implementation(implementation)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("saved_probs_bytes", [64 << 20, 0], ids=["probs kept", "probs recomputed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_chunked_attention_matches_eager_forward_and_backward(dtype, saved_probs_bytes, monkeypatch):
    """ChunkedAttention (several chunks, masked keys) equals the written-out softmax attention, with the
    probabilities kept for backward or recomputed there."""
    monkeypatch.setattr(ChunkedAttention, "saved_probs_bytes", saved_probs_bytes)
    g = torch.Generator().manual_seed(0)
    n, heads, t, d = 5, 2, 6, 4
    q, k, v = (torch.randn(n, heads, t, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(3))
    mask = torch.rand(n, 1, 1, t, generator=g) > 0.3
    mask[..., 0] = True
    bias = torch.zeros(n, 1, t, dtype=dtype).masked_fill(~mask.view(n, 1, t), float("-inf"))
    grad_out = torch.randn(n, t, heads, d, generator=g, dtype=torch.float64).to(dtype)
    chunked = ChunkedAttention.apply(q, k, v, bias, 2)
    grads = torch.autograd.grad(chunked, (q, k, v), grad_out)
    eager, _ = eager_attention_forward(torch.nn.Identity(), q, k, v, mask, scaling=d**-0.5)
    expected = torch.autograd.grad(eager, (q, k, v), grad_out)
    tol = {} if dtype == torch.float64 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(chunked, eager, **tol)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_short_attention_matches_eager_forward(dtype):
    """short_attention (all heads in one batched matmul, masked keys, a transposed input as the model passes it)
    equals the written-out softmax attention."""
    g = torch.Generator().manual_seed(0)
    n, heads, t, d = 5, 3, 7, 4
    q, k, v = (torch.randn(n, t, heads, d, generator=g, dtype=torch.float64).to(dtype).transpose(1, 2) for _ in range(3))
    mask = torch.rand(n, 1, 1, t, generator=g) > 0.3
    mask[..., 0] = True
    eager, _ = eager_attention_forward(torch.nn.Identity(), q, k, v, mask, scaling=d**-0.5)
    tol = {} if dtype == torch.float64 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(kernels.short_attention(q, k, v, mask, d**-0.5), eager, **tol)


def test_init_weights_is_the_only_initialisation():
    """Every parameter and buffer gets its value in `_init_weights`, with the config's initializer range."""
    config = FLI2MoEModelTester(hidden_size=32).get_config(initializer_range=0.05)
    torch.manual_seed(0)
    model = FLI2MoEModel(config)
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, StackedLinear)):
            assert abs(float(module.weight.detach().std()) - 0.05) < 0.01, name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        elif isinstance(module, StackedLayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        elif isinstance(module, ModalityMeans):
            assert all(torch.equal(b, torch.zeros_like(b)) for b in module.buffers()), name
    # `_init_weights` alone gives every parameter and buffer a value
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(float("nan"))
    model.apply(model._init_weights)
    assert all(torch.isfinite(t).all() for t in [*model.parameters(), *model.buffers()])


# --------------------------------------------------------------------------------- integration
# logits of FLI2MoEModelTester's config and inputs, initialised under torch.manual_seed(0)
EXPECTED_LOGITS = torch.tensor([
    [0.027622, -0.160523, 0.021014],
    [0.007859, -0.132619, 0.037405],
    [0.002722, -0.138491, 0.032765],
])
EXPECTED_EXPERT_LOGITS_CLASS_0 = torch.tensor([
    [0.057696, -0.186597, 0.240783, -0.001303],
    [0.045635, -0.203256, 0.186043, 0.002887],
    [0.018305, -0.201509, 0.192598, 0.001564],
])


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_inference_in_chunks_of_rows_gives_the_outputs_of_one_pass(dtype, monkeypatch):
    """Without an autograd graph the experts run a few rows at a time (cache-sized activations); any chunk
    size gives the logits and latents of one pass over the whole batch, and those of the graph-building pass
    (in bf16 up to rounding: with AMX, inference takes torch's flash-attention kernel instead)."""
    tester = FLI2MoEModelTester(batch_size=5)
    config, features, masks, _ = tester.prepare_config_and_inputs()
    model = FLI2MoEModel(config).eval()
    per_row = config.num_experts * sum(tester.tokens) * 3 * config.hidden_size * (4 if dtype is None else 2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        graph = model(features, masks)  # gradients enabled: one pass
        assert kernels.rows_per_chunk(config.hidden_size, config.num_experts, sum(tester.tokens), 2 if dtype else 4) >= 5
        with torch.no_grad():
            whole = model(features, masks)  # one chunk
        for name in ("logits", "expert_logits", "latents"):
            tol = {} if dtype is None else {"atol": 2e-2, "rtol": 2e-2}
            torch.testing.assert_close(getattr(whole, name), getattr(graph, name).detach(), **tol)
        for chunk_bytes in (1, 2 * per_row):  # 1 row per chunk; 2 rows (the last chunk shorter)
            monkeypatch.setattr(kernels, "CHUNK_BYTES", chunk_bytes)
            with torch.no_grad():
                chunked = model(features, masks)
            for name in ("logits", "expert_logits", "latents"):
                torch.testing.assert_close(getattr(chunked, name), getattr(whole, name).detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_logits_are_pinned(implementation):
    """Seeded initialisation and inputs give these logits: a change to the forward pass, the
    initialisation or the order in which parameters are drawn shows here."""
    config, features, masks, _ = FLI2MoEModelTester().prepare_config_and_inputs()
    torch.manual_seed(0)
    model = FLI2MoEModel(config).eval()
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        out = model(features, masks)
    torch.testing.assert_close(out.logits, EXPECTED_LOGITS, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.expert_logits[:, :, 0], EXPECTED_EXPERT_LOGITS_CLASS_0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("max_pad_fraction", [0.0, 1.0], ids=["unpadded", "padded"])
def test_fast_paths_match_the_reference_implementation(dtype, max_pad_fraction, monkeypatch):
    """The package's fast experts (`kernels.experts_forward`) and the model file's own plain implementation (what
    remote code runs without the package) give the same logits, losses and gradients, in training and inference
    (with and without the inference padding of the sequence); the plain implementation also runs with the
    registered `fli2moe_cpu` attention."""
    from modeling_fli2moe.modeling_fli2moe import StackedExperts

    monkeypatch.setattr(kernels, "MAX_PAD_FRACTION", max_pad_fraction)

    tester = FLI2MoEModelTester(batch_size=4)
    config, features, masks, labels = tester.prepare_config_and_inputs()
    torch.manual_seed(0)
    model = FLI2MoEModel(config)
    model.set_modality_means({n: torch.randn(d) for n, d in zip(tester.names, tester.dims)})

    def run(implementation="sdpa"):
        model.set_attn_implementation(implementation)
        model.train().zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = model(features, masks, labels=labels, generator=torch.Generator().manual_seed(1))
            out.loss.backward()
            with torch.no_grad():
                inference = model.eval()(features, masks).logits.float()
        return out.loss.float(), out.logits.float(), inference, {n: p.grad.float().clone() for n, p in model.named_parameters()}

    assert StackedExperts.forward is kernels.experts_forward
    fast = run()
    monkeypatch.setattr(StackedExperts, "forward", kernels.reference_experts_forward)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for implementation in ("sdpa", kernels.ATTENTION_NAME):
        reference = run(implementation)
        for a, b in zip(fast[:3], reference[:3]):
            torch.testing.assert_close(a, b, **tol)
        for name, grad in fast[3].items():
            torch.testing.assert_close(grad, reference[3][name], msg=name, **tol)
