"""CPU kernels the model uses where torch's are slow: GPT-2's tanh-approximation GELU (`_kernels.c`).

`gelu_tanh(x)` is `F.gelu(x, approximate="tanh")`: the C kernel for contiguous float32/bfloat16 CPU tensors
outside `torch.compile`, torch's own everywhere else (CUDA, other dtypes, or when the extension was not
built). The kernel computes in float32 like torch's and agrees with it to float32 rounding (bfloat16 results
are the float32 value rounded once, so they match torch's to the last bit but for rare ties); it is 2-3x
faster on the CPUs measured (bench/RESULTS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # a C extension: absent when tinyformer was installed without a C compiler
    from tinyformer.model import _kernels
except ImportError:
    _kernels = None

_DTYPES = (torch.float32, torch.bfloat16)


def _native(x: torch.Tensor) -> bool:
    return (_kernels is not None and x.device.type == "cpu" and x.dtype in _DTYPES and x.layout == torch.strided
            and not torch.compiler.is_compiling())


class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        _kernels.gelu_tanh(x.data_ptr(), y.data_ptr(), x.numel(), x.dtype == torch.bfloat16, torch.get_num_threads())
        ctx.save_for_backward(x)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        grad = grad.to(x.dtype).contiguous()
        out = torch.empty_like(x)
        _kernels.gelu_tanh_backward(grad.data_ptr(), x.data_ptr(), out.data_ptr(), x.numel(),
                                    x.dtype == torch.bfloat16, torch.get_num_threads())
        return out


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (GPT-2's `gelu_new`)."""
    if _native(x):
        return _GeluTanh.apply(x)
    return F.gelu(x, approximate="tanh")
