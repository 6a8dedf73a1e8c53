"""Warnings raised while a command checks its input are held: a user error is one line, not that line behind a
library's UserWarning; once the checks pass they are shown (sftcore/_runtime/held_warnings.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest

import tiny
from sftcore._runtime.held_warnings import held, release
from sftcore.errors import ConfigError


@pytest.fixture
def shown(monkeypatch):
    out: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kw: out.append(str(message)))
        yield out


def test_held_until_release_then_passed_through(shown):
    with held():
        warnings.warn("while checking", UserWarning)
        assert shown == []
        release()
        assert shown == ["while checking"]
        warnings.warn("while training", UserWarning)
        assert shown == ["while checking", "while training"]
    warnings.warn("after", UserWarning)
    assert shown[-1] == "after"


def test_dropped_on_a_user_error_shown_on_success_debug_or_a_bug(shown):
    with pytest.raises(ConfigError), held():
        warnings.warn("dropped", UserWarning)
        raise ConfigError("config: finetune.epochs must be ...")
    assert shown == []
    with held():
        warnings.warn("kept", UserWarning)
    assert shown == ["kept"]
    with pytest.raises(ConfigError), held(show_on_error=lambda: True):
        warnings.warn("debug", UserWarning)
        raise ConfigError("bad")
    with pytest.raises(ZeroDivisionError), held():
        warnings.warn("bug", UserWarning)
        1 / 0  # noqa: B018
    from sftcore.errors import TrainingError

    with pytest.raises(TrainingError), held():  # not a mistake in the input: the warning may explain it
        warnings.warn("diverged", UserWarning)
        raise TrainingError("the loss became NaN")
    assert shown == ["kept", "debug", "bug", "diverged"]
    with held(), held():  # nested: the outer one decides
        warnings.warn("inner", UserWarning)
        assert shown[-1] == "diverged"
    assert shown[-1] == "inner"


_SCRIPT = """
import sys, warnings
from sftcore import hookimpl
from sftcore.testing import registered, tiny_backbone

class Warns:
    @staticmethod
    @hookimpl
    def register_backbones(register):
        def make(ctx, **options):
            warnings.warn("a library warns while the backbone is built", UserWarning)
            return tiny_backbone()
        register("warns", make, "warns while it is built")

with registered(Warns, "warns"):
    from sftcore.cli import main
    main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sft_run_says_one_line_for_a_user_error_and_shows_the_warning_when_it_runs(tmp_path):
    bad = tiny.config(backbone={"name": "warns"}, pretrain=False, baseline=False,
                      finetune={"dataset": {"name": "image_folder", "root": str(tmp_path / "missing")}})
    good = tiny.config(backbone={"name": "warns"}, pretrain=False, baseline=False, finetune={"epochs": 1})
    script = tmp_path / "sft_with_plugin.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    run = lambda cfg, out: subprocess.run(  # noqa: E731
        [sys.executable, str(script), "run", str(tiny.write_yaml(tmp_path / f"{out}.yaml", cfg)), "--out",
         str(tmp_path / out), "--no-progress"], capture_output=True, text=True, timeout=300)
    failed = run(bad, "bad")
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert failed.stderr.startswith("sft: error: ") and "missing" in failed.stderr
    passed = run(good, "good")
    assert passed.returncode == 0, passed.stderr
    assert "UserWarning: a library warns while the backbone is built" in passed.stderr
