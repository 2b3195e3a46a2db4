"""CPU kernels the model uses where torch's are slow: GPT-2's tanh-approximation GELU (`_kernels.c`).

`gelu_tanh(x)` is `F.gelu(x, approximate="tanh")`: the C kernel for bfloat16 CPU tensors outside
`torch.compile` (the activations of a CPU run under `train.precision=bf16` or `auto`), torch's own everywhere
else (float32, CUDA, or when the extension was not built). The kernel computes in float32 and rounds once, so
every bfloat16 result is the exact value correctly rounded (torch's tanh form loses low bits for negative x);
it is about 2.3x faster than torch's on the CPUs measured (bench/RESULTS.md).

Float32 keeps torch's kernel on purpose: a float32 form of this one (2-3x torch's, within float32 rounding of
it) was tried, but float32 results are recorded bit for bit (the demo's table, bench/lengen.md,
bench/arithmetic.md), and a different last bit in an activation sent a small model's training down another,
equally valid, path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # a C extension: absent when tinyformer was installed without a C compiler
    from tinyformer.model import _kernels
except ImportError:
    _kernels = None

def _native(x: torch.Tensor) -> bool:
    return (_kernels is not None and x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.layout == torch.strided
            and not torch.compiler.is_compiling())


class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        _kernels.gelu_tanh(x.data_ptr(), y.data_ptr(), x.numel(), torch.get_num_threads())
        ctx.save_for_backward(x)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        grad = grad.to(x.dtype).contiguous()
        out = torch.empty_like(x)
        _kernels.gelu_tanh_backward(grad.data_ptr(), x.data_ptr(), out.data_ptr(), x.numel(), torch.get_num_threads())
        return out


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (GPT-2's `gelu_new`)."""
    if _native(x):
        return _GeluTanh.apply(x)
    return F.gelu(x, approximate="tanh")
