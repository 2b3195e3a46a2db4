"""The output head and its cross-entropy in one pass, a block of rows at a time, for large vocabularies.

The plain path (`lm_head(x)` -> float32 logits -> `cross_entropy`) writes the whole [tokens, vocab] logits
tensor, its float32 copy, the log-softmax, and in backward a zero-filled gradient of the same size: at a
10k vocabulary and 4k tokens per batch that is several 160 MB tensors streamed through memory, more time
than the head's matmul itself on a CPU. Here each block of rows makes its logits, log-sum-exp, loss and
gradient (softmax minus one-hot, over the number of counted targets; one exp pass for both) while they are
in cache; the gradients of the hidden states and of the head's weight are computed in the forward pass and
scaled by the incoming gradient in backward (the loss is a scalar, so nothing else is needed). The matmuls are the same
three as the plain path's, in the autocast dtype when autocast is on; the softmax is always float32.

`Transformer` uses it for training steps (`forward(..., return_logits=False)`) when the vocabulary is at
least `FUSED_MIN_VOCAB`; small vocabularies (characters, the lab's tasks) keep the plain path, which is as
fast there and whose numbers earlier runs recorded.
"""

from __future__ import annotations

import torch

from tinyformer.batch import IGNORE_INDEX

FUSED_MIN_VOCAB = 1024
BLOCK_ELEMENTS = 1 << 22  # logits per block (16 MB in float32, the fastest measured on a CPU): rows = this / vocab


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    device = t.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return t.dtype


class LinearCrossEntropy(torch.autograd.Function):
    """mean over counted rows of cross_entropy(hidden @ weight.T, targets); rows whose target is
    IGNORE_INDEX do not count; `count` (a tensor, or None for this call's own count) is what the sum is
    divided by. Returns (loss, 1.0 if count > 0 else 0.0)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows_per_block: int,
                count: torch.Tensor | None = None):
        dtype = _compute_dtype(hidden)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            valid = targets != IGNORE_INDEX
            if count is None:
                count = valid.sum()
            inv = 1.0 / count.clamp(min=1).float()
            total = torch.zeros((), device=hidden.device, dtype=torch.float32)
            grad_hidden = torch.empty_like(hidden) if need_grad else None
            grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_grad else None
            for start in range(0, hidden.shape[0], rows_per_block):
                stop = min(start + rows_per_block, hidden.shape[0])
                h = hidden[start:stop].to(dtype)
                t = targets[start:stop]
                ok = valid[start:stop]
                logits = (h @ w.t()).float()
                picked = logits.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1)
                top = logits.amax(dim=-1, keepdim=True)
                exps = logits.sub_(top).exp_()  # one exp pass serves the log-sum-exp and the softmax
                sums = exps.sum(dim=-1, keepdim=True)
                lse = (top + sums.log()).squeeze(1)
                total += torch.where(ok, lse - picked, 0.0).sum()
                if need_grad:
                    probs = exps.div_(sums)  # softmax, in place of the logits
                    probs.scatter_add_(1, t.clamp(min=0).unsqueeze(1), -ok.float().unsqueeze(1))
                    probs.mul_((ok.float() * inv).unsqueeze(1))  # ignored rows: zero gradient
                    g = probs.to(dtype)
                    grad_hidden[start:stop] = g @ w
                    grad_weight += (g.t() @ h).float()
            loss = total * inv
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss, (count > 0).float()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_has: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype),
                None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                         targets: torch.Tensor, count: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy of `hidden @ weight.T` against `targets` over non-ignored rows, or its sum over
    `count` when given; 1.0 if any row counted else 0.0); hidden [..., d], weight [V, d], targets [...].
    Never materializes all the logits."""
    rows = max(1, BLOCK_ELEMENTS // weight.shape[0])
    return LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), rows, count)
