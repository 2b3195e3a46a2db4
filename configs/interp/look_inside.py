"""docs/look-inside.md: a tinyformer run opened in TransformerLens and nnsight; prints each library's largest
logit difference from tinyformer's own forward pass and block 0's residual-stream norm read through its hooks.
Usage: python configs/interp/look_inside.py RUN [TEXT]"""

import sys

import torch

from tinyformer.lm.interop import to_nnsight, to_transformer_lens
from tinyformer.train.rundir import Run

run = Run(sys.argv[1])
text = sys.argv[2] if len(sys.argv) > 2 else "ROMEO: But soft, what light"
ids = torch.tensor([run.tokenizer().encode(text)])
with torch.no_grad():
    ours = run.load_model()(ids)[0]

bridge = to_transformer_lens(run)  # TransformerLens 4: a TransformerBridge with raw (unfolded) weights
with torch.no_grad():
    logits, cache = bridge.run_with_cache(ids)
resid = cache["blocks.0.hook_resid_post"]
print(f"TransformerLens: max |logit difference| {(logits - ours).abs().max().item():.2e}, "
      f"block 0 residual norm {resid.norm().item():.4f}")

lm = to_nnsight(run)
layers = lm.transformer.h if hasattr(lm, "transformer") else lm.model.layers  # GPT-2 / Llama
with torch.no_grad(), lm.trace(ids):
    block0 = layers[0].output.save()
    logits = lm.output.logits.save()
block0 = block0[0] if isinstance(block0, tuple) else block0
print(f"nnsight: max |logit difference| {(logits - ours).abs().max().item():.2e}, "
      f"block 0 residual norm {block0.norm().item():.4f}")
