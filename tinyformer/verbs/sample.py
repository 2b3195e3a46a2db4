"""`tinyformer sample --ckpt RUN`: text from a language-model run with its own tokenizer, or a task run's
answers (greedy) to its task's inputs: `--prompt` in the task's symbols, or examples drawn from a bin.
`--prompts-file` of `INPUT = ANSWER` lines scores greedy answers by exact match on either kind of run."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="run directory (language-model or task run) or checkpoint")
    parser.add_argument("--which", choices=("best", "latest"), help="checkpoint of a run (default: best, else latest)")
    parser.add_argument("--prompt", default="", help="text to continue (default: start from <|endoftext|>); for a "
                        "task run its natural input: 1342+879 (addition, in the task's base), 3 1 4 (copy, sort), "
                        "0 3 1 4 ? 3 (retrieval: context ? query)")
    parser.add_argument("--prompts-file", metavar="FILE", help="one input per line, optionally INPUT = ANSWER: "
                        "prints each greedy answer and the exact match; task run: natural inputs (1342+879=2221); "
                        "language-model run: INPUT as the model saw such text (+2431+b34+ = d771+), the answer "
                        "its continuation up to the line's end")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (task runs always decode greedily)")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--bin", help="task run without --prompt: draw examples from this length bin "
                        "(default: the run's first eval bin); refused on a language-model run")
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from tinyformer.errors import TinyformerError
    from tinyformer.train.rundir import Run
    from tinyformer.train.runtime import resolve_device

    if not 0 <= args.temperature < float("inf") or (args.top_p is not None and not 0 < args.top_p <= 1):
        raise TinyformerError("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise TinyformerError("--num-samples and --max-new-tokens must be at least 1")
    if args.top_k is not None and args.top_k < 1:
        raise TinyformerError(f"--top-k must be at least 1, got {args.top_k}")
    if not 0 <= args.seed < 2**62:
        raise TinyformerError(f"--seed must be an integer from 0 to 2**62 - 1, got {args.seed}")
    device = resolve_device(args.device)
    run = Run(args.ckpt, args.which)
    model = run.load_model(device)
    if run.kind == "task":
        return _sample_task(run, model, args, device)
    return _sample_text(run, model, args, device)


def _sample_text(run, model, args, device) -> int:
    import torch

    from tinyformer.errors import TinyformerError
    from tinyformer.lm.abacus import generate_kwargs, run_positions_of

    tok = run.tokenizer()
    if tok is None:
        raise TinyformerError(f"{run.given} has no tokenizer/ directory; sampling text needs the run's tokenizer")
    if tok.vocab_size > model.config.vocab_size:
        raise TinyformerError(f"{run.given}: its tokenizer has {tok.vocab_size} ids but the model only "
                              f"{model.config.vocab_size}; the run directory is damaged")
    if args.bin:
        raise TinyformerError(f"--bin draws examples from a task run's length bins; {run.given} is a language-model "
                              "run: give --prompt TEXT, or --prompts-file with INPUT = ANSWER lines")
    if args.prompts_file:
        return _answer_text_prompts(run, model, tok, args, device)
    prompt = tok.encode(args.prompt, allowed_special="all") if args.prompt else [tok.eot_id or 0]
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    stop = [tok.eot_id] if tok.eot_id is not None else None
    positions = generate_kwargs(run_positions_of(run, model), ids)  # Abacus ids on text, else none
    for i in range(args.num_samples):
        # a vocabulary padded past the tokenizer's (the 50,304 convention) must never yield a padding id
        out = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, stop_tokens=stop, seed=args.seed + i, vocab_limit=tok.vocab_size,
                             **positions)
        new = out[0].tolist()[len(prompt) :]
        if tok.eot_id in new:  # the story ends at its end-of-text token
            new = new[: new.index(tok.eot_id)]
        text = tok.decode(new)
        print((args.prompt + text) if args.prompt else text)
        if i + 1 < args.num_samples:
            print("---")
    return 0


def _sample_task(run, model, args, device) -> int:
    import numpy as np

    from tinyformer.lab.setup import TaskSetup
    from tinyformer.tasks import make_eval_set, parse_range

    setup = TaskSetup(run.config)
    task = setup.task
    if args.prompt or args.prompts_file:
        return _answer_prompts(setup, model, args, device)
    lo, hi = parse_range(args.bin) if args.bin else setup.bins[0]
    examples = make_eval_set(task, lo, hi, args.num_samples, seed=args.seed).examples
    right = 0
    for tokens, supervised, n in zip(examples.tokens, examples.supervised, examples.seq_lens):
        tokens, supervised = tokens[: int(n)], supervised[: int(n)]
        # scored as `eval` scores: every supervised token, generated greedily from the prompt before them
        start, stop = int(np.argmax(supervised)), len(supervised) - int(np.argmax(supervised[::-1]))
        prompt = tokens[:start].tolist()
        want = task.answer_text(tokens[start:stop])
        out = _answer_ids(setup, model, prompt, device, stop - start)
        ok = len(out) == stop - start and bool((np.asarray(out) == tokens[start:stop])[supervised[start:stop]].all())
        right += ok
        print(f"{task.prompt_text(prompt)} -> {task.answer_text(out)}   {'correct' if ok else 'wrong, expected ' + want}")
    print(f"{right}/{len(examples)} correct (task {task.name}, lengths {lo}-{hi}, checkpoint {run.checkpoint.name})")
    return 0


def _answer_ids(setup, model, prompt: list[int], device, n_new: int) -> list[int]:
    """The model's `n_new` greedy tokens after `prompt` (the task's own ids), fewer where learned positions end."""
    import numpy as np

    from tinyformer.lab.evaluate import greedy_continuation

    n_new = _within_positions(model, len(prompt), n_new)
    return greedy_continuation(model, np.asarray([prompt]), n_new, setup.eval_positions, device)[0].tolist()


def _within_positions(model, n_prompt: int, n_new: int) -> int:
    """`n_new`, or fewer so that a learned position table is not overrun; a one-line error when no room is left."""
    from tinyformer.errors import TinyformerError

    if not model.config.scheme.limits_context:
        return n_new
    n_new = min(n_new, model.config.position_table_size - n_prompt)
    if n_new < 1:
        raise TinyformerError(f"the input has {n_prompt} tokens; the run's {model.config.position} positions end at "
                              f"{model.config.position_table_size}: give a shorter input")
    return n_new


def _answer(setup, model, prompt: list[int], device, max_new_tokens: int | None = None) -> str:
    """The model's greedy answer to `prompt` (the task's own ids), in the human-readable form: exactly the
    task's answer length (`Task.answer_length`), or `max_new_tokens` when fewer."""
    task = setup.task
    n_new = task.answer_length(prompt)
    if max_new_tokens is not None:
        n_new = min(n_new, max_new_tokens)
    return task.answer_text(_answer_ids(setup, model, prompt, device, n_new))


def _answer_prompts(setup, model, args, device) -> int:
    """--prompt or --prompts-file on a task run: natural inputs in, natural answers out; exact match when the
    file gives answers (`INPUT = ANSWER`)."""
    task = setup.task
    items = _prompt_lines(args)
    answers = [(text, _answer(setup, model, task.prompt_ids(text), device, args.max_new_tokens), want)
               for text, want in items]
    return _print_scored(answers, task.same_answer)


def _prompt_lines(args) -> list[tuple[str, str]]:
    """(input, expected answer or "") of `--prompt`, or of each `--prompts-file` line (`INPUT = ANSWER` split
    at its last `=`, or `INPUT` alone; blank lines and `#` comments skipped)."""
    from tinyformer.errors import TinyformerError
    from tinyformer.fileio import require_file

    if args.prompts_file:
        lines = require_file(args.prompts_file, "--prompts-file").read_text(encoding="utf-8").splitlines()
        items = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not items:
            raise TinyformerError(f"--prompts-file {args.prompts_file} has no inputs; write one per line")
    else:
        items = [args.prompt]
    out = []
    for item in items:
        text, _, want = item.rpartition("=") if "=" in item else (item, "", "")
        out.append((text.strip(), want.strip()))
    return out


def _print_scored(answers: list[tuple[str, str, str]], same) -> int:
    """`INPUT -> ANSWER` per (input, answer, expected), `correct` / `wrong, expected ...` where an answer was
    expected, then the exact match over those."""
    checked = right = 0
    for text, got, want in answers:
        line = f"{text} -> {got}"
        if want:
            ok = same(got, want)
            checked, right = checked + 1, right + ok
            line += "   correct" if ok else f"   wrong, expected {want}"
        print(line)
    if checked:
        print(f"exact match: {right}/{checked} ({right / checked:.1%})")
    return 0


def _answer_text_prompts(run, model, tok, args, device) -> int:
    """--prompts-file on a language-model run: each INPUT exactly as the model read such text in training
    (`+2431+b34+` for the rows of docs/number-sequences.md), continued greedily up to the line's end
    (a newline or end-of-text), at most --max-new-tokens; exact match of that continuation against ANSWER."""
    import torch

    from tinyformer.errors import TinyformerError
    from tinyformer.lm.abacus import generate_kwargs, run_positions_of
    from tinyformer.lm.rows import line_end_ids

    ends = line_end_ids(tok)
    text_positions = run_positions_of(run, model)
    answers = []
    for text, want in _prompt_lines(args):
        prompt = tok.encode(text, allowed_special="all")
        if not prompt:
            raise TinyformerError(f"--prompts-file {args.prompts_file} has an empty input before '= {want}'")
        n_new = _within_positions(model, len(prompt), args.max_new_tokens)
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        out = model.generate(ids, n_new, temperature=0, stop_tokens=ends, vocab_limit=tok.vocab_size,
                             **generate_kwargs(text_positions, ids))[0].tolist()[len(prompt):]
        answers.append((text, _line_of(tok, out, ends), want))
    return _print_scored(answers, lambda got, want: got.strip() == want.strip())


def _line_of(tok, ids: list[int], ends: list[int]) -> str:
    """Generated ids -> their text up to the line's end: the first newline, or the end-of-text token."""
    cut = next((i for i, t in enumerate(ids) if t in ends), len(ids))
    keep = ids[:cut] if cut < len(ids) and ids[cut] == tok.eot_id else ids[: cut + 1]  # "5\n" keeps its "5"
    return tok.decode(keep).split("\n")[0]
