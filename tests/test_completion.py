"""Shell completion: click's scripts for bash, zsh and fish, and `sft list` completing kinds and names.

Each check runs `sft` as a whole process the way the shell's completion function does (click's
``_SFT_COMPLETE=bash_complete`` protocol). Completing must not import torch: it runs on every TAB.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchvision", "timm")
_COMPLETE = f"""
import sys
from sftcore.cli import main
try:
    main(prog_name="sft")
except SystemExit:
    pass
sys.stderr.write(repr(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
"""


def complete(words: str) -> list[str]:
    """What `sft` offers for the last of ``words`` (an empty last word: a TAB after a space)."""
    env = {**os.environ, "_SFT_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1)}
    proc = subprocess.run([sys.executable, "-c", _COMPLETE], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "[]", f"completion imported {proc.stderr} or warned"
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if line]


@pytest.mark.slow
@pytest.mark.parametrize("shell,marker", [("bash", "complete -o nosort -F _sft_completion sft"),
                                          ("zsh", "#compdef sft"), ("fish", "complete --no-files --command sft")])
def test_the_documented_completion_scripts_are_generated(shell, marker):
    env = {**os.environ, "_SFT_COMPLETE": f"{shell}_source"}
    proc = subprocess.run([sys.executable, "-m", "sftcore"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and marker in proc.stdout


@pytest.mark.slow
def test_commands_and_options_complete():
    assert complete("sft li") == ["list"]
    assert complete("sft config ") == ["init", "show"]
    assert complete("sft run --se") == ["--set", "--seeds"]


@pytest.mark.slow
def test_list_completes_kinds_then_names_of_that_kind():
    assert complete("sft list ") == ["datasets", "backbones", "regularizers", "heads", "param_groups", "optimizers",
                                     "schedules", "callbacks", "augmentations", "adapters", "scores"]
    assert complete("sft list he") == ["heads"]
    assert complete("sft list heads lp") == ["lp_ft"]
    assert complete("sft list backbone ") == ["lenet", "timm"]


@pytest.mark.slow
def test_a_word_that_starts_no_kind_completes_component_names():
    # `sft list 'l2*'` takes a pattern in the KIND position, so names are offered there
    assert complete("sft list l2") == ["l2", "l2_sp"]
    assert complete("sft list zz") == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_really_completes_with_the_generated_script(tmp_path):
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "sft").exists():
        pytest.skip("the sft script is not installed beside this Python")
    script = tmp_path / "sft-complete.bash"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    script.write_text(subprocess.run(["sft"], env={**env, "_SFT_COMPLETE": "bash_source"}, capture_output=True,
                                     text=True, timeout=60, check=True).stdout)
    probe = f'source {script}; COMP_WORDS=(sft list heads ""); COMP_CWORD=3; _sft_completion sft; ' \
            'echo "${COMPREPLY[*]}"'
    out = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["gradual_unfreeze", "imprint", "linear_probe", "logistic", "lp_ft",
                                  "match_classes", "ncm", "reinit"], out.stderr
