"""The `tinyformer` command itself: the executable starts and answers --help, an unknown verb or option is
refused, a user's mistake is one line from the real process, and a bug is one line naming its report."""

from __future__ import annotations

from pathlib import Path


def test_the_executable_prints_help_and_a_mistake_in_one_line(cli_process, tmp_path, one_line_error):
    proc = cli_process("--help")
    assert proc.returncode == 0 and "tokenizer" in proc.stdout and "lengen" in proc.stdout
    proc = cli_process("lengen", "train", "--task", "NRlast", "--pe", "ape", "--out", tmp_path / "run")
    one_line_error(proc, "tinyformer: error: unknown task 'NRlast'; did you mean 'NRLast'? valid tasks: UF, UB, NF, "
                   "NB, UL, UR, NLFirst, NRFirst, NLLast, NRLast, NLFirst-ref, NRFirst-ref, NLLast-ref, NRLast-ref, "
                   "sort, parity, majority")
    assert proc.stdout == "" and not (tmp_path / "run").exists()


def test_an_unknown_verb_or_option_is_refused(cli):
    proc = cli("no-such-verb")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = cli("eval", "--ckpt", "run", "--no-such-option")
    assert proc.returncode == 2 and "--no-such-option" in proc.stderr


def test_an_internal_error_is_one_line_naming_its_report(cli, tiny_lm_run, monkeypatch):
    import tinyformer.verbs.eval as eval_cli

    run = tiny_lm_run("train.max_steps=2", "train.eval_every=0")

    def bug(*args):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(eval_cli, "_eval_lm", bug)
    proc = cli("eval", "--ckpt", run)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinyformer: internal error: ZeroDivisionError: a bug deep inside")
    report = Path(lines[0].split("full report in ")[1].split(";")[0])
    text = report.read_text()
    assert "Traceback" in text and "a bug deep inside" in text and "eval --ckpt" in text
    report.unlink()
