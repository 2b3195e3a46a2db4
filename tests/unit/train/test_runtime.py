"""train.reuse_memory (tinyformer.train.runtime): on glibc the memory a CPU step frees serves the next step."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

REUSE_CHILD = r"""
import resource, sys, torch
from tinyformer.model import Transformer
from tinyformer.model.config import ModelConfig
from tinyformer.train.config import TrainConfig
from tinyformer.train.runtime import setup_runtime
setup_runtime(TrainConfig(device="cpu", reuse_memory=sys.argv[1] == "1"))
torch.manual_seed(0)
model = Transformer(ModelConfig(vocab_size=4096, n_layers=2, n_heads=4, d_model=256, max_seq_len=256))
ids = torch.randint(0, 4096, (16, 256))  # at half this size glibc's adaptive threshold can keep even the default heap warm
def step():
    _, loss = model(ids, targets=ids, return_logits=False)
    loss.backward()
    model.zero_grad(set_to_none=True)
step()  # the heap grows to the step's peak
counts = []
for _ in range(3):  # the fewest of three steps: a stray fault (another process's pressure) does not count
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(counts))
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="the allocator setting is glibc's (mallopt)")
def test_cpu_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    """train.reuse_memory (the default): the memory a training step frees serves the next step; with it off
    glibc gives it back to the OS and every step faults it in again (zero-filled pages)."""
    def faults(reuse: bool) -> float:
        out = subprocess.run([sys.executable, "-c", REUSE_CHILD, "1" if reuse else "0"], capture_output=True,
                             text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    kept, default = faults(True), faults(False)  # page faults per training step (0-3k and 9-45k here)
    assert kept * 5 < default, (kept, default)


