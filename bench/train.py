"""Training throughput against HF transformers in one run: ours with train.precision=auto (chosen by
`tinyformer.train.autotune`, as a real run chooses it) and ours in float32, each through the real
`Trainer.train_step` (our model, `build_optimizer`'s AdamW, clipping, autocast and attention kernel), against
HF's `GPT2LMHeadModel` / `LlamaForCausalLM` of the same shape with `torch.optim.AdamW` as its defaults give it,
in float32 and in bf16 autocast (HF's faster one counts); same batch, sequence length and threads. HF's steps
run in a process of their own, as a user's script runs them (our runtime sets glibc's malloc to reuse freed
memory, `train.reuse_memory`, process-wide, which a plain HF process does not have); the same HF steps in a
third process given that setting too are reported beside ("memory reuse"). The processes take turns.

Variants are interleaved (a block of steps each, round after round) and tokens/s is the median step, so load
from other processes weighs on all of them alike. MFU is against the bf16 (and float32) matmul ceilings
measured in the same run, the highest of several measurements. Targets (CPU): ours auto / HF best >= 1.3x on
each shape, ours auto / ours float32 >= 1.0x.

    .venv/bin/python bench/train.py [--steps 10] [--rounds 3] [--threads N] [--shapes shakespeare,tinystories]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tinyformer.config import to_dict
from tinyformer.model import Transformer
from tinyformer.model.hf_config import hf_config
from tinyformer.train.config import load_run_config
from tinyformer.train.metrics import matmul_ceiling
from tinyformer.train.runtime import autocast, reuse_freed_memory, setup_runtime
from tinyformer.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # shape -> the shipped config whose model and batch it takes
    "shakespeare": ROOT / "configs" / "shakespeare-char.yaml",
    "tinystories": ROOT / "configs" / "tinystories.yaml",
    "tinystories-llama": ROOT / "configs" / "tinystories-llama.yaml",
}


class FixedBatches:
    """A batch source that hands out the same batch every step: the benchmark times compute, not data."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def next_batch(self) -> dict[str, torch.Tensor]:
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def ours(run, batch: dict[str, torch.Tensor], precision: str, sdpa: str, run_dir: Path):
    """One step of our real training loop (Trainer.train_step) with the given precision and kernel."""
    train = dataclasses.replace(run.train, device="cpu", precision=precision, sdpa_backend=sdpa, threads=None)
    rt = setup_runtime(train)
    rt.precision, rt.sdpa = precision, sdpa
    torch.manual_seed(0)
    model = Transformer(run.model)
    trainer = Trainer(model, train, run_dir, FixedBatches(batch), rt, model_config=to_dict(run.model),
                      seq_len=batch["ids"].shape[1])
    return lambda: trainer.train_step(train.lr)


def hf(run, batch: dict[str, torch.Tensor], precision: str):
    """One step of HF transformers' model of the same shape, as a user trains it: torch.optim.AdamW with its
    defaults, the loss from `labels`, gradient clipping at the config's value (HF Trainer's default is 1.0)."""
    import transformers

    cfg = run.model
    if cfg.position == "learned" and not cfg.bias:
        cfg = dataclasses.replace(cfg, bias=True)  # GPT-2 always has biases: HF does slightly more work
    fields = hf_config(cfg)
    family = fields.pop("model_type")
    arch = getattr(transformers, fields.pop("architectures")[0])
    fields.pop("dtype", None)
    torch.manual_seed(0)
    model = arch(transformers.AutoConfig.for_model(family, **fields)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=run.train.lr, weight_decay=run.train.weight_decay,
                            betas=(run.train.beta1, run.train.beta2), eps=run.train.eps)
    ids, device = batch["ids"], torch.device("cpu")
    clip = run.train.grad_clip if run.train.grad_clip > 0 else float("inf")

    def step():
        with autocast(device, precision):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def auto_choice(run, batch: dict[str, torch.Tensor], fresh: bool) -> tuple[str, str, dict]:
    """What train.precision=auto picks for this shape: autotune.choose on the run's model and first batch,
    by default measured afresh (a temporary cache), as the first run of a shape on a machine does."""
    from tinyformer.train import autotune

    old = os.environ.get("TINYFORMER_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        if fresh:
            os.environ["TINYFORMER_CACHE"] = tmp
        try:
            torch.manual_seed(0)
            model = Transformer(run.model)
            return autotune.choose(model, to_dict(run.model), batch, "auto", run.train.sdpa_backend,
                                   torch.device("cpu"))
        finally:
            if old is None:
                os.environ.pop("TINYFORMER_CACHE", None)
            else:
                os.environ["TINYFORMER_CACHE"] = old


def timed_steps(step, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def shape_batch(run) -> dict[str, torch.Tensor]:
    """The benchmark's fixed batch of a shape (seeded: the same in every process)."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, run.model.vocab_size, (run.train.batch_size, run.model.max_seq_len + 1), generator=gen)
    return {"ids": rows[:, :-1].contiguous(), "targets": rows[:, 1:].contiguous()}


def _hf_worker(conn, shape: str, threads: int | None, reuse: bool) -> None:
    """HF's steps in a process of their own: (precision, n) in, n step times out, until None."""
    import transformers

    if reuse:
        reuse_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    run = load_run_config(SHAPES[shape], ["train.precision=auto"])
    batch = shape_batch(run)
    steps = {p: hf(run, batch, p) for p in ("fp32", "bf16")}
    conn.send("ready")
    while (job := conn.recv()) is not None:
        conn.send(timed_steps(steps[job[0]], job[1]))


class HFProcess:
    """HF's training steps in a fresh interpreter of their own (spawned, not forked), as a user's script runs
    them: glibc's malloc has its defaults there (or, with `reuse`, the setting our runtime applies to the
    process it trains in, `train.reuse_memory`). Sharing our process would also slow our steps: with HF's
    models in it, ours measured about 9% slower (heap and cache shared with HF's 160 MB logits). The
    processes take turns, so they never compete for the cores."""

    def __init__(self, shape: str, threads: int | None, reuse: bool = False) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_hf_worker, args=(child, shape, threads, reuse), daemon=True)
        self.proc.start()
        assert self.conn.recv() == "ready"

    def steps(self, precision: str):
        def run(n: int) -> list[float]:
            self.conn.send((precision, n))
            return self.conn.recv()
        return run

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=30)


def bench_shape(shape: str, args, ceilings: dict[str, float]) -> dict[str, float]:
    run = load_run_config(SHAPES[shape], ["train.precision=auto"])
    batch_size, seq_len = run.train.batch_size, run.model.max_seq_len
    batch = shape_batch(run)

    precision, sdpa, report = auto_choice(run, batch, not args.use_cache)
    times = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in report.get("seconds_per_step", {}).items())
    print(f"\n{shape} ({SHAPES[shape].name}): batch {batch_size} x {seq_len}, vocab {run.model.vocab_size}, "
          f"{run.model.n_layers} layers, d_model {run.model.d_model}; precision=auto -> {precision} with {sdpa} "
          f"attention ({report['source']}{': ' + times if times else ''})")
    own, own_reuse = HFProcess(shape, args.threads), HFProcess(shape, args.threads, reuse=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = {
                f"ours auto ({precision}/{sdpa})": ours(run, batch, precision, sdpa, Path(tmp) / "auto"),
                f"ours fp32 ({run.train.sdpa_backend})": ours(run, batch, "fp32", run.train.sdpa_backend,
                                                              Path(tmp) / "fp32"),
            }
            variants = {name: (lambda n, step=step: timed_steps(step, n)) for name, step in local.items()}
            variants.update({"HF fp32": own.steps("fp32"), "HF bf16": own.steps("bf16"),
                             "HF fp32, memory reuse": own_reuse.steps("fp32"),
                             "HF bf16, memory reuse": own_reuse.steps("bf16")})
            for measure in variants.values():  # warm-up: allocation, kernel selection
                measure(2)
            samples: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, measure in variants.items():
                    samples[name] += measure(args.steps)
                measure_ceilings(ceilings)
    finally:
        own.close()
        own_reuse.close()
    tokens = batch_size * seq_len
    tps = {name: tokens / statistics.median(t) for name, t in samples.items()}
    fpt = Transformer(run.model).flops_per_token(seq_len)
    print(f"{'variant':28} {'tokens/s':>10} {'ms/step':>8} {'MFU bf16 ceil':>13} {'MFU fp32 ceil':>13}")
    for name, value in tps.items():
        print(f"{name:28} {value:10,.0f} {tokens / value * 1000:8.1f} {value * fpt / ceilings['bf16']:13.1%} "
              f"{value * fpt / ceilings['fp32']:13.1%}")
    auto_name, fp32_name = list(variants)[:2]
    hf_best = max(("HF fp32", "HF bf16"), key=tps.get)
    same_best = max(("HF fp32, memory reuse", "HF bf16, memory reuse"), key=tps.get)
    vs_hf, vs_fp32 = tps[auto_name] / tps[hf_best], tps[auto_name] / tps[fp32_name]
    vs_same = tps[auto_name] / tps[same_best]
    print(f"{shape}: ours auto / {hf_best} (HF's faster, in its own process) = {vs_hf:.2f}x (target >= 1.3), "
          f"ours auto / ours fp32 = {vs_fp32:.2f}x (target >= 1.0); {fpt / 1e6:.2f} MFLOP/token\n"
          f"{' ' * len(shape)}  ours auto / {same_best} = {vs_same:.2f}x (HF given our allocator setting too)")
    return {"vs_hf": vs_hf, "vs_fp32": vs_fp32, "vs_hf_reuse": vs_same}


def measure_ceilings(ceilings: dict[str, float]) -> None:
    """The highest matmul FLOP/s seen so far: a burst of load during one measurement cannot inflate MFU."""
    for dtype in ("fp32", "bf16"):
        ceilings[dtype] = max(ceilings.get(dtype, 0.0), matmul_ceiling("cpu", dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round (median over all)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of interleaved variants")
    parser.add_argument("--threads", type=int, help="torch CPU threads for every variant (default: torch's choice)")
    parser.add_argument("--shapes", default="shakespeare,tinystories,tinystories-llama")
    parser.add_argument("--use-cache", action="store_true",
                        help="precision=auto from the machine's autotune cache (default: measured afresh)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # A run on a CPU starts with this (`train.reuse_memory`, the default); HF's steps run in processes of
    # their own, one as a plain script has it, one given the same setting.
    reused = reuse_freed_memory()
    import transformers

    transformers.logging.set_verbosity_error()  # a config note per HF model, not about speed
    load = os.getloadavg()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"CPU; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; freed memory reused (ours): "
          f"{'yes' if reused else 'no (not glibc)'}")
    ceilings: dict[str, float] = {}
    measure_ceilings(ceilings)
    results = {shape: bench_shape(shape, args, ceilings) for shape in args.shapes.split(",")}
    load = os.getloadavg()
    print(f"\nmatmul ceilings (highest seen): fp32 {ceilings['fp32'] / 1e9:.1f}, bf16 {ceilings['bf16'] / 1e9:.1f} "
          f"GFLOP/s; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for shape, r in results.items():
        print(f"{shape:18} ours auto / HF best {r['vs_hf']:.2f}x   ours auto / ours fp32 {r['vs_fp32']:.2f}x   "
              f"(HF given memory reuse too: {r['vs_hf_reuse']:.2f}x)")


if __name__ == "__main__":
    main()
