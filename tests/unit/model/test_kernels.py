"""The model's C GELU kernel (tinyformer/model/_kernels.c) against float64 math and torch's own kernel."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from tinyformer.model import kernels
from tinyformer.model.kernels import gelu_tanh

needs_kernel = pytest.mark.skipif(kernels._kernels is None, reason="the C extension was not built (no compiler)")

K0, K1 = math.sqrt(2 / math.pi), 0.044715


def reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-2's GELU 0.5 x (1 + tanh(u)) and its derivative in float64, written with 1 + tanh(u) = 2 sigmoid(2u)
    and 1 - tanh(u)^2 = 4 sigmoid(2u) sigmoid(-2u) so that no digits cancel for negative x."""
    x = x.double()
    u = K0 * (x + K1 * x**3)
    s, s_neg = torch.sigmoid(2 * u), torch.sigmoid(-2 * u)
    return x * s, s + 2 * x * s * s_neg * K0 * (1 + 3 * K1 * x * x)


def inputs(dtype: torch.dtype, n: int = 300_000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    edges = torch.tensor([0.0, -0.0, 1e-6, -1e-6, 0.5, -0.5, -0.75, 3.0, -3.0, 8.0, -8.0, 12.0, -12.0])
    return torch.cat([torch.randn(n, generator=gen) * 4, edges]).to(dtype)


def bf16_ulp(v: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.floor(torch.log2(v.abs().clamp(min=1e-30))) - 7)


def test_the_kernel_is_built_where_a_compiler_is():
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the torch fallback is used")
    assert kernels._kernels is not None, "tinyformer/model/_kernels.c did not build: reinstall with `make install`"


@needs_kernel
def test_bfloat16_results_are_the_exact_value_rounded_once():
    x = inputs(torch.bfloat16).requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    y = gelu_tanh(x)
    y.backward(g)
    assert y.dtype == x.grad.dtype == torch.bfloat16
    ref_y, slope = reference(x.detach())
    ref_g = g.double() * slope
    for got, want in ((y, ref_y), (x.grad, ref_g)):
        err = (got.double() - want).abs()
        assert bool((err <= bf16_ulp(want) * 0.5 * (1 + 1e-3) + 1e-30).all())  # round to nearest of ~exact
    torch_x = x.detach().clone().requires_grad_()
    torch_y = F.gelu(torch_x, approximate="tanh")
    torch_y.backward(g)
    assert (y.double() - ref_y).abs().max() <= (torch_y.double() - ref_y).abs().max()


@needs_kernel
def test_non_contiguous_input_and_thread_count_give_the_same_bits():
    x = torch.randn(512, 384, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    assert torch.equal(gelu_tanh(x.t()), gelu_tanh(x.t().contiguous()))
    y1, y2 = torch.empty_like(x), torch.empty_like(x)
    kernels._kernels.gelu_tanh(x.data_ptr(), y1.data_ptr(), x.numel(), 1)
    kernels._kernels.gelu_tanh(x.data_ptr(), y2.data_ptr(), x.numel(), 4)
    assert torch.equal(y1, y2)


@needs_kernel
def test_special_values():
    x = torch.tensor([float("nan"), float("inf"), -40.0, 40.0, 0.0])
    y = gelu_tanh(x.to(torch.bfloat16)).float()
    assert math.isnan(y[0]) and y[1] == float("inf") and abs(y[2]) < 1e-30 and y[3] == 40.0 and y[4] == 0.0


def test_float32_and_other_dtypes_are_torchs_own_bit_for_bit():
    """Float32 runs keep torch's kernel, so recorded float32 results (the demo's table) reproduce exactly."""
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        x = (torch.randn(4096, generator=gen) * 4).to(dtype).requires_grad_()
        g = torch.randn(4096, generator=gen).to(dtype)
        y = gelu_tanh(x)
        y.backward(g)
        ref_x = x.detach().clone().requires_grad_()
        ref = F.gelu(ref_x, approximate="tanh")
        ref.backward(g)
        assert torch.equal(y, ref) and torch.equal(x.grad, ref_x.grad)
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gelu_tanh, (x,))


@needs_kernel
def test_the_mlp_uses_it_under_autocast():
    from tinyformer.model import ModelConfig, Transformer

    model = Transformer(ModelConfig(vocab_size=64, n_layers=1, n_heads=2, d_model=32, max_seq_len=16))
    ids = torch.randint(0, 64, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(ids, targets=ids)
    loss.backward()
    names = {type(fn).__name__ for fn in _graph_nodes(loss.grad_fn)}
    assert "_GeluTanhBackward" in names
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _graph_nodes(fn, seen=None):
    seen = set() if seen is None else seen
    stack = [fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return seen
