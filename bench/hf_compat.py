"""Our HF exports (GPT-2, Llama with GQA and linear RoPE scaling, MPT) and tokenizer export, loaded by
whichever transformers is importable: logits, greedy generation and ids must match ours.

Run with the installed transformers 5.x, and with a 4.x beside it:
    pip install --target /tmp/tf4 "transformers==4.46.3" "tokenizers==0.20.3"
    PYTHONPATH=/tmp/tf4 .venv/bin/python bench/hf_compat.py
"""
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinyformer.model import ModelConfig, Transformer
from tinyformer.model.hf import export_hf
from tinyformer.tokenizer import train_bpe
from tinyformer.tokenizer.export import to_hf

print("transformers", transformers.__version__)
torch.manual_seed(0)
out = Path(tempfile.mkdtemp())
cases = {
    "gpt2": ModelConfig.preset("gpt2", vocab_size=300, n_layers=2, d_model=64, n_heads=4, max_seq_len=64),
    "llama": ModelConfig.preset("llama", vocab_size=300, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, max_seq_len=64, rope_theta=500.0, rope_scaling=4.0),
    "mpt": ModelConfig(vocab_size=300, n_layers=2, d_model=64, n_heads=4, max_seq_len=64, position="alibi", norm="layernorm", mlp="gelu", bias=False, d_ff=256),
}
ids = torch.randint(0, 300, (2, 20))
worst = 0.0
for name, cfg in cases.items():
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 else 0.0) * 0.1)
    export_hf(m, out / name)
    hf, info = AutoModelForCausalLM.from_pretrained(out / name, output_loading_info=True)
    hf.eval()
    with torch.no_grad():
        d = (hf(ids).logits - m(ids)[0]).abs().max().item()
        g_hf = hf.generate(ids[:1, :5], max_new_tokens=10, do_sample=False, pad_token_id=0)
        g_us = m.generate(ids[:1, :5], max_new_tokens=10, temperature=0)
    missing = {k: v for k, v in info.items() if v}
    print(f"{name}: {type(hf).__name__} loading issues {missing or 'none'}; max |dlogits| {d:.2e}; greedy equal {torch.equal(g_hf, g_us)}")
    worst = max(worst, d)
tok = train_bpe(["Hello world, hello tinyformer! It's 2026.\r\n\tdon't"] * 50, vocab_size=300, special_tokens=["<|endoftext|>"])
to_hf(tok, out)
hft = AutoTokenizer.from_pretrained(out)
s = "Hello world<|endoftext|> it's 123 héllo 日本 \r\n\t x"
print("tokenizer:", type(hft).__name__, "ids equal:", hft.encode(s) == tok.encode(s, allowed_special="all"))
sys.exit(0 if worst < 1e-4 else 1)
