"""The workflow guides in docs/ are run as a newcomer would paste them: every command of every ```bash
block, in a fresh directory with the project's configs/. Lines marked `# (network)` (downloads, the Hub)
are skipped; the test puts Tiny Shakespeare in place of the download (the shared copy, else stand-in text).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDES = ["bring-your-corpus.md", "compare-positions.md", "evaluate-with-the-harness.md", "look-inside.md",
          "number-sequences.md", "publishing.md"]


def commands(guide: str) -> list[str]:
    """The shell commands of a guide, continuation lines joined, network lines left out."""
    text = (ROOT / "docs" / guide).read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and "# (network)" not in line:
                out.append(line.strip())
    return out


@pytest.mark.parametrize("guide", GUIDES)
def test_every_guide_command_names_a_verb_that_exists(guide):
    from tinyformer.cli import VERBS

    cmds = commands(guide)
    assert cmds
    for cmd in cmds:
        if cmd.startswith("tinyformer "):
            assert cmd.split()[1] in VERBS, cmd


def stand_in_shakespeare(path: Path) -> None:
    shared = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    if shared.is_file():
        shutil.copyfile(shared, path)
        return
    lines = ["First Citizen:", "Before we proceed any further, hear me speak.", "", "All:", "Speak, speak.", "",
             "ROMEO:", "But soft, what light through yonder window breaks?", ""]
    path.write_text("\n".join(lines * 4000), encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("guide", GUIDES)
def test_guide_runs_as_written(guide, tmp_path):
    if guide == "evaluate-with-the-harness.md":
        pytest.importorskip("lm_eval", reason="the harness guide needs lm-eval: pip install 'tinyformer[harness]'")
    if guide == "look-inside.md":
        for lib in ("transformer_lens", "nnsight"):
            pytest.importorskip(lib, reason="the guide needs the interp extra: pip install 'tinyformer[interp]'")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    stand_in_shakespeare(tmp_path / "input.txt")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    outputs = {}
    for cmd in commands(guide):
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=1800)
        assert proc.returncode == 0, f"{guide}: `{cmd}` failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs[cmd] = proc.stdout
    if guide == "compare-positions.md":
        out = tmp_path / "runs" / "positions"
        for name in ("results.md", "training-loss.png", "validation.png", "context-length.png"):
            assert (out / name).is_file()
        assert "learned positions end at 64" in (out / "results.md").read_text()
    elif guide == "bring-your-corpus.md":
        record = json.loads((tmp_path / "data" / "speeches" / "prepare.json").read_text())
        assert record["split_kind"] == "seeded" and record["val_documents"] > 0
        assert (tmp_path / "data" / "speeches-jsonl" / "train.bin").read_bytes() == \
            (tmp_path / "data" / "speeches" / "train.bin").read_bytes()
        assert (tmp_path / "runs" / "speeches" / "summary.json").is_file()
    elif guide == "evaluate-with-the-harness.md":
        # our verb and the harness's own CLI on the export score the same model on the same ids: equal accuracy
        ours = json.loads((tmp_path / "runs" / "speeches" / "harness" / "shakespeare_choice.json").read_text())
        theirs = json.loads(next((tmp_path / "harness-out").rglob("results_*.json")).read_text())
        acc = ours["results"]["shakespeare_choice"]["acc,none"]
        assert acc == theirs["results"]["shakespeare_choice"]["acc,none"]
        assert 0 <= acc <= 1
    elif guide == "look-inside.md":
        printed = next(out for cmd, out in outputs.items() if "look_inside.py" in cmd)
        diffs = [float(d) for d in re.findall(r"max \|logit difference\| (\S+),", printed)]
        norms = re.findall(r"block 0 residual norm (\S+)", printed)
        assert len(diffs) == 2 and max(diffs) < 1e-4, printed  # both libraries give the run's own logits
        assert len(norms) == 2 and norms[0] == norms[1], printed  # and the same activation through their hooks
    elif guide == "publishing.md":
        assert (tmp_path / "shakespeare-hf" / "README.md").is_file()
    else:
        assert (tmp_path / "runs" / "seq-hex" / "summary.json").is_file()
        # the accuracy the guide promises, with the shipped defaults (train.precision=auto included)
        scored = next(out for cmd, out in outputs.items() if "--prompts-file sums.txt" in cmd)
        right, total = map(int, re.search(r"exact match: (\d+)/(\d+)", scored).groups())
        assert total == 200 and right >= 0.8 * total, scored[-500:]


def test_readme_tokenizer_section_points_to_prepare_for_a_split_with_flags_that_exist(cli):
    # a newcomer with one text file needs the train/validation split; every flag named there must be real
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Tokenizer"):readme.index("\n## ", readme.index("## Tokenizer") + 1)]
    assert "data prepare tinystories --source" in section and "data prepare shakespeare --source" in section
    help_text = cli("data", "prepare", "--help").stdout
    for flag in set(re.findall(r"(--[a-z][a-z-]+)", section[section.index("data prepare"):])):
        assert flag in help_text, flag
