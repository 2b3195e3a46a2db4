"""A run opened in TransformerLens (its TransformerBridge) and nnsight (tinyformer.lm.interop) gives our
logits within 1e-4 and, through each library's own hooks, our residual stream (a block's output read by a
torch forward hook on our Transformer). Offline: the run is exported to a temporary folder."""

from __future__ import annotations

import pytest
import torch

from tinyformer.errors import TinyformerError
from tinyformer.model import ModelConfig

pytest.importorskip("transformers", reason="the interop loads the export with transformers")
from test_harness import EOT, run_of  # noqa: E402

SHAPES = {"gpt2": {}, "llama": {"n_kv_heads": 1}}  # Llama with grouped-query attention


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shaped(request, tmp_path_factory, tiny_corpus, randomised):
    tok = tiny_corpus(specials=(EOT,)).tokenizer
    cfg = ModelConfig.preset(request.param, vocab_size=tok.vocab_size, n_layers=2, n_heads=2, d_model=32,
                             max_seq_len=64, **SHAPES[request.param])
    model = randomised(cfg)
    folder = run_of(model, tok, tmp_path_factory.mktemp("interop") / request.param)
    ids = torch.tensor([tok.encode("the cat sat on the mat and the dog ran")])
    seen = {}
    hook = model.layers[0].register_forward_hook(lambda m, i, o: seen.__setitem__("block0", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        logits = model(ids)[0]
    hook.remove()
    return request.param, folder, ids, logits, seen["block0"]


def test_transformer_lens_logits_and_cache_equal_ours(shaped):
    pytest.importorskip("transformer_lens", reason="needs transformer-lens: pip install 'tinyformer[interp]'")
    from tinyformer.lm.interop import to_transformer_lens

    _, folder, ids, logits, block0 = shaped
    bridge = to_transformer_lens(folder)
    with torch.no_grad():
        theirs, cache = bridge.run_with_cache(ids)
    assert (theirs - logits).abs().max() < 1e-4
    assert (cache["blocks.0.hook_resid_post"] - block0).abs().max() < 1e-4


def test_nnsight_logits_and_trace_equal_ours(shaped):
    pytest.importorskip("nnsight", reason="needs nnsight: pip install 'tinyformer[interp]'")
    from tinyformer.lm.interop import to_nnsight

    family, folder, ids, logits, block0 = shaped
    lm = to_nnsight(folder)
    layers = lm.transformer.h if family == "gpt2" else lm.model.layers
    with torch.no_grad(), lm.trace(ids):
        out = layers[0].output.save()
        theirs = lm.output.logits.save()
    out = out[0] if isinstance(out, tuple) else out
    assert (theirs - logits).abs().max() < 1e-4
    assert (out - block0).abs().max() < 1e-4


def test_refusals_are_one_line(tiny_lm_run, tiny_task_run, tmp_path):
    from tinyformer.lm.interop import to_nnsight, to_transformer_lens

    fire = tiny_lm_run("model.position=fire", "train.max_steps=1")
    task = tmp_path / "task"
    tiny_task_run(task)
    for load in (to_transformer_lens, to_nnsight):
        with pytest.raises(TinyformerError, match="position='fire' has no HF equivalent") as err:
            load(fire)
        assert "\n" not in str(err.value)
        with pytest.raises(TinyformerError, match="is a task run"):
            load(task)


@pytest.mark.parametrize("missing", ["transformer_lens", "nnsight"])
def test_a_missing_library_is_one_line_naming_the_extra(missing, monkeypatch, tmp_path):
    # a None entry in sys.modules makes `import` raise ImportError, as when the package is not installed
    import sys

    from tinyformer.lm.interop import to_nnsight, to_transformer_lens

    monkeypatch.setitem(sys.modules, missing, None)
    load = to_transformer_lens if missing == "transformer_lens" else to_nnsight
    with pytest.raises(TinyformerError) as err:
        load(tmp_path / "never-read")  # refused before the run is opened
    assert f"needs {missing}" in str(err.value) and "pip install 'tinyformer[interp]'" in str(err.value)
    assert "\n" not in str(err.value)
