"""The output head and its cross-entropy in one pass, a block of rows at a time, for large vocabularies.

The plain path (`lm_head(x)` -> float32 logits -> `cross_entropy`) writes the whole [tokens, vocab] logits
tensor, its float32 copy, the log-softmax, and in backward a zero-filled gradient of the same size: at a
10k vocabulary and 4k tokens per batch that is several 160 MB tensors streamed through memory, more time
than the head's matmul itself on a CPU. Here each block of rows makes its logits, log-sum-exp, loss and
gradient (softmax minus one-hot, over the number of counted targets; torch's softmax kernel serves both: the
log-sum-exp is the row's top logit minus the log of its largest probability) while they are in cache; the
gradients of the hidden states and of the head's weight are computed in the forward pass and scaled by the
incoming gradient in backward (the loss is a scalar, so nothing else is needed). The matmuls are the same
three as the plain path's, in the autocast dtype when autocast is on (the weight's gradient one matmul per
chunk of up to CHUNK_BYTES of logits' gradients, not per block); the softmax is always float32. A soft cap
(`model.logit_softcap`) is applied to each block's float32 logits, its derivative folded into their gradient.

`Transformer` uses it for training steps (`forward(..., return_logits=False)`) when the vocabulary is at
least `FUSED_MIN_VOCAB`; small vocabularies (characters, the lab's tasks) keep the plain path, which is as
fast there and whose numbers earlier runs recorded.
"""

from __future__ import annotations

import torch

from tinyformer.batch import IGNORE_INDEX

FUSED_MIN_VOCAB = 1024
BLOCK_ELEMENTS = 1 << 22  # logits per block (16 MB in float32, the fastest measured on a CPU): rows = this / vocab
CHUNK_BYTES = 24 << 20  # logits' gradients kept for one weight-gradient matmul: under glibc's 32 MB mmap
# threshold, so the buffer is reused from the heap (`train.reuse_memory`) rather than mapped afresh each step


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    device = t.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return t.dtype


class LinearCrossEntropy(torch.autograd.Function):
    """mean over counted rows of cross_entropy(hidden @ weight.T, targets); rows whose target is
    IGNORE_INDEX do not count; `count` (a tensor, or None for this call's own count) is what the sum is
    divided by; `softcap` (a number, or None) caps the logits to softcap * tanh(logits / softcap) first, the
    chain rule's 1 - tanh**2 folded into the logits' gradient. Returns (loss, 1.0 if count > 0 else 0.0)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows_per_block: int,
                count: torch.Tensor | None = None, softcap: float | None = None):
        dtype = _compute_dtype(hidden)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        n, vocab = hidden.shape[0], weight.shape[0]
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            valid = targets != IGNORE_INDEX
            if count is None:
                count = valid.sum()
            inv = 1.0 / count.clamp(min=1).float()
            total = torch.zeros((), device=hidden.device, dtype=torch.float32)
            grad_hidden = torch.empty_like(hidden) if need_grad else None
            grad_weight = None
            # the logits' gradients of several blocks are kept (in the compute dtype) for one weight-gradient
            # matmul per chunk: fewer, larger matmuls and far fewer [vocab, d] casts and sums than one per block
            chunk_rows = max(rows_per_block, CHUNK_BYTES // (vocab * w.element_size())) if need_grad else max(n, 1)
            for c0 in range(0, n, chunk_rows):
                c1 = min(c0 + chunk_rows, n)
                h_chunk = hidden[c0:c1].to(dtype)
                g_chunk = torch.empty((c1 - c0, vocab), device=hidden.device, dtype=dtype) if need_grad else None
                for start in range(c0, c1, rows_per_block):
                    stop = min(start + rows_per_block, c1)
                    h = h_chunk[start - c0:stop - c0]
                    t = targets[start:stop]
                    ok = valid[start:stop]
                    logits = (h @ w.t()).float()
                    if softcap is not None:
                        capped = torch.tanh(logits / softcap)  # kept for the gradient: d logits = 1 - capped**2
                        logits = capped * softcap
                    picked = logits.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1)
                    top = logits.amax(dim=-1)
                    probs = torch.softmax(logits, dim=-1)
                    # log-sum-exp = top + log(sum exp(logits - top)), and the largest probability is
                    # exp(0) / that sum: no target's probability enters, so a target the model all but rules
                    # out (probability below float32's range) keeps its exact loss
                    lse = top - probs.amax(dim=-1).log()
                    total += torch.where(ok, lse - picked, 0.0).sum()
                    if need_grad:
                        probs.scatter_add_(1, t.clamp(min=0).unsqueeze(1), -ok.float().unsqueeze(1))
                        probs.mul_((ok.float() * inv).unsqueeze(1))  # ignored rows: zero gradient
                        if softcap is not None:
                            probs.mul_(1.0 - capped.square_())
                        g = g_chunk[start - c0:stop - c0]
                        g.copy_(probs)
                        grad_hidden[start:stop] = g @ w
                if need_grad:
                    part = (g_chunk.t() @ h_chunk).float()
                    grad_weight = part if grad_weight is None else grad_weight.add_(part)
            loss = total * inv
        if need_grad:
            if grad_weight is None:  # no rows
                grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss, (count > 0).float()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_has: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype),
                None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                         targets: torch.Tensor, count: torch.Tensor | None = None,
                         softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy of `hidden @ weight.T` (soft-capped to softcap * tanh(. / softcap) when given)
    against `targets` over non-ignored rows, or its sum over `count` when given; 1.0 if any row counted else
    0.0); hidden [..., d], weight [V, d], targets [...]. Never materializes all the logits."""
    rows = max(1, BLOCK_ELEMENTS // weight.shape[0])
    return LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), rows, count,
                                    softcap)
