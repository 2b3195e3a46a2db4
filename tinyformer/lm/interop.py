"""A run opened in interpretability libraries: TransformerLens (its `TransformerBridge`, which replaced
`HookedTransformer` in TransformerLens 4) and nnsight (`TransformersModel`, `LanguageModel` before 0.8). The
run is exported to a temporary HF folder (the files `tinyformer export --format hf` writes) and loaded from
there into memory, so the folder is gone when the call returns; an exported folder is loaded as it is.

Raw weights: the bridge is returned without `enable_compatibility_mode()` (which folds LayerNorm and centers
weights), so its logits and activations are ours. What has no HF twin (Abacus, coupled, FIRE positions,
qk_norm, logit_softcap, ...) is refused in one line by the export's own check; extra heads (n_predict > 1)
are training aids and are not exported: the libraries see the next-token head only.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from tinyformer.errors import TinyformerError
from tinyformer.lm.publish import check_text_run, export_run
from tinyformer.train.rundir import Run


def _need(module: str, what: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise TinyformerError(f"{what} needs {module}: pip install 'tinyformer[interp]'") from None


@contextlib.contextmanager
def hf_folder(source):
    """An HF folder of `source` (a run directory, a `Run`, or an exported HF folder, used as it is); a run is
    exported to a temporary folder, removed on leaving."""
    if not isinstance(source, Run) and (Path(source) / "config.json").is_file():
        yield Path(source)
        return
    run = source if isinstance(source, Run) else Run(source)
    model = run.load_model()
    check_text_run(run, model, "TransformerLens and nnsight")
    with tempfile.TemporaryDirectory(prefix="tinyformer-interop-") as tmp:
        yield export_run(run, model.float().cpu(), Path(tmp) / "hf")


def _load_hf(folder: Path):
    """(HF model in eval mode with eager attention, HF tokenizer) of an HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").float().eval()
    return hf, AutoTokenizer.from_pretrained(folder)


def to_transformer_lens(source, device: str = "cpu"):
    """A TransformerLens `TransformerBridge` over `source` (a run directory, a `Run`, or an exported HF
    folder): `bridge(ids)` gives our logits, `bridge.run_with_cache(ids)` every hook's activation."""
    _need("transformer_lens", "TransformerLens")
    _need("transformers", "TransformerLens")
    from transformer_lens.model_bridge import TransformerBridge

    with hf_folder(source) as folder:
        hf, tok = _load_hf(folder)
        return TransformerBridge.boot_transformers(str(folder), hf_model=hf, tokenizer=tok, device=device)


def to_nnsight(source, device: str = "cpu"):
    """An nnsight `TransformersModel` (`LanguageModel` before nnsight 0.8, which deprecates that name) over
    `source` (as for to_transformer_lens), loaded and on `device`:
    `with lm.trace(ids): x = lm.transformer.h[0].output.save()` (GPT-2; `lm.model.layers` for Llama)."""
    _need("nnsight", "nnsight")
    _need("transformers", "nnsight")
    try:
        from nnsight import TransformersModel as Model
    except ImportError:  # nnsight < 0.8
        from nnsight import LanguageModel as Model

    with hf_folder(source) as folder:
        hf, tok = _load_hf(folder)
    return Model(hf.to(device), tokenizer=tok)
