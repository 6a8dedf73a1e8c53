"""The `sft` command line: `config show`, `config init`, `run`, and how errors reach the user.

Most checks use click's CliRunner in-process (fast); a few run `python -m sftcore` as a real
process (the ``sft`` fixture) for exit codes and stderr exactly as a shell sees them.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

import tiny
from sftcore._config import resolve as cfgmod
from sftcore.cli import cli
from sftcore._plugins.manager import get_registry


def invoke(*args, **kwargs):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=True, **kwargs)


def one_error_line(result, code=2, prefix="sft: error: ") -> str:
    """The command failed with ``code`` and said so in exactly one stderr line, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # handled, not propagated
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def show(*args) -> dict:
    result = invoke("config", "show", *args)
    assert result.exit_code == 0, (result.output, result.exception)
    return yaml.safe_load(result.stdout)


@pytest.fixture
def tiny_yaml(tmp_path):
    return tiny.write_yaml(tmp_path / "tiny.yaml", tiny.config())


# --------------------------------------------------------------------------- config show
def test_config_show_default_is_resolved_yaml():
    cfg = show()
    assert cfg == cfgmod.resolve(cfgmod.load(None), get_registry())
    assert cfg["finetune"]["optimizer"]["momentum"] == 0.9
    assert cfg["finetune"]["dataset"]["val_fraction"] == 0.1
    # the baseline: finetune's data, budget and optimizer; a new head and no regularizers
    f, b = cfg["finetune"], cfg["baseline"]
    assert b["name"] == "scratch"
    assert b["dataset"] == f["dataset"] and b["epochs"] == f["epochs"] and b["optimizer"] == f["optimizer"]
    assert b["head"] == {"name": "reinit"} and b["regularizers"] == [] and b["backbone_lr_mult"] == 1.0
    assert f["head"]["name"] == "lp_ft" and f["regularizers"][0]["name"] == "l2_sp"


def test_config_show_fills_head_reinit_when_unset(tmp_path):
    path = tiny.write_yaml(tmp_path / "c.yaml", {"finetune": {"dataset": "shapes"}})
    cfg = show(path)
    assert cfg["finetune"]["head"] == {"name": "reinit"}
    assert cfg["finetune"]["optimizer"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
                                            "nesterov": False}
    assert cfg["pretrain"] is None and cfg["baseline"] is None


def test_config_show_with_sets(tiny_yaml):
    cfg = show(tiny_yaml, "--set", "finetune.epochs=9", "--set", "seed=3", "--set", "finetune.optimizer=adamw")
    assert cfg["finetune"]["epochs"] == 9 and cfg["seed"] == 3
    assert cfg["finetune"]["optimizer"] == {"name": "adamw", "lr": 0.001, "weight_decay": 0.01, "betas": [0.9, 0.999]}
    assert cfg["baseline"]["optimizer"] == cfg["finetune"]["optimizer"]  # the baseline follows finetune
    assert cfg["baseline"]["epochs"] == 2  # but for its own budget


def test_config_show_set_list_index():
    cfg = show("--set", "finetune.regularizers.0.alpha=0.5")
    assert cfg["finetune"]["regularizers"] == [{"name": "l2_sp", "alpha": 0.5, "beta": 0.01}]


def test_config_show_set_shorthand_then_option():
    cfg = show("--set", "backbone=lenet", "--set", "backbone.img_size=16")
    assert cfg["backbone"] == {"name": "lenet", "img_size": 16}


def test_config_show_output_round_trips(tiny_yaml):
    cfg = show(tiny_yaml)
    assert cfgmod.resolve(cfg, get_registry()) == cfg
    assert cfg == cfgmod.resolve(cfgmod.load(tiny_yaml), get_registry())


# --------------------------------------------------------------------------- config init
def test_config_init_writes_the_commented_default(tmp_path):
    path = tmp_path / "mine.yaml"
    result = invoke("config", "init", path)
    assert result.exit_code == 0, result.output
    assert str(path) in result.stdout and "sft run" in result.stdout
    text = path.read_text()
    assert text == cfgmod.DEFAULT_CONFIG.read_text()
    assert text.lstrip().startswith("#") and text.count("#") > 5  # commented
    # the written file is the built-in default, resolved identically
    registry = get_registry()
    assert cfgmod.resolve(cfgmod.load(path), registry) == cfgmod.resolve(cfgmod.load(None), registry)
    assert show(path) == show()


def test_config_init_default_path_is_sft_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("config", "init").exit_code == 0
    assert (tmp_path / "sft.yaml").read_text() == cfgmod.DEFAULT_CONFIG.read_text()


def test_config_init_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: keep me\n")
    line = one_error_line(invoke("config", "init", path))
    assert "already exists" in line and "--force" in line
    assert path.read_text() == "name: keep me\n"
    result = invoke("config", "init", path, "--force")
    assert result.exit_code == 0
    assert path.read_text() == cfgmod.DEFAULT_CONFIG.read_text()


def test_config_init_into_a_missing_folder(tmp_path):
    result = invoke("config", "init", tmp_path / "new" / "sft.yaml")
    if result.exit_code == 0:
        assert (tmp_path / "new" / "sft.yaml").read_text() == cfgmod.DEFAULT_CONFIG.read_text()
    else:
        assert "new" in one_error_line(result)


def test_config_init_file_runs(tmp_path):
    """The starter file, shrunk with --set, runs all three stages."""
    path = tmp_path / "sft.yaml"
    invoke("config", "init", path)
    result = invoke("run", path, "--out", tmp_path / "r", "--set", "device=cpu",
                    "--set", "pretrain.epochs=1", "--set", "finetune.epochs=1", "--set", "baseline.max_epochs=2",
                    "--set", "pretrain.dataset.train_per_class=10", "--set", "pretrain.dataset.test_per_class=4",
                    "--set", "finetune.dataset.train_per_class=10", "--set", "finetune.dataset.test_per_class=4")
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["name"] == "shapes-demo" and summary["verdict"]


# --------------------------------------------------------------------------- run
def test_run_prints_the_table_and_the_verdict_at_the_end(tiny_yaml, tmp_path):
    out = tmp_path / "r"
    result = invoke("run", tiny_yaml, "--out", out, "--no-progress")
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads((out / "summary.json").read_text())
    lines = result.stdout.rstrip("\n").splitlines()
    assert lines[-1] == f"run directory: {out}"
    assert lines[-2] == summary["verdict"]
    header = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    for word in ("dataset", "classes", "train", "val", "test", "epochs", "test acc", "seconds"):
        assert word in lines[header]
    assert set(lines[header + 1]) == {"-"}
    rows = lines[header + 2:-2]
    assert [row.split()[0] for row in rows] == ["pretrain", "finetune", "baseline"]
    for row, stage in zip(rows, ("pretrain", "finetune", "baseline")):
        assert f"{100 * summary[stage]['test_accuracy']:.1f}%" in row
        assert f"  {summary[stage]['epochs']}  " in row  # epochs trained
        select = summary[stage]["select"]
        kept = f"best: {summary[stage]['selected_epoch']}" if select == "best" else select
        assert f"{kept} (val {summary[stage]['val_examples']})" in row
    assert "Traceback" not in result.output


def test_run_without_baseline_says_how_to_add_one(tmp_path):
    path = tiny.write_yaml(tmp_path / "c.yaml", tiny.config(baseline=False))
    result = invoke("run", path, "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "baseline: scratch" in result.stdout.splitlines()[-2]


def test_run_writes_what_the_python_api_writes(tiny_yaml, tmp_path):
    assert invoke("run", tiny_yaml, "--out", tmp_path / "r", "--set", "finetune.epochs=1").exit_code == 0
    out = tmp_path / "r"
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"}
    assert yaml.safe_load((out / "config.yaml").read_text())["finetune"]["epochs"] == 1
    assert len(tiny.read_metrics(out)) == 1 + 1 + 2  # the tiny baseline has its own 2 epochs


def test_run_out_holding_a_run_is_refused(tiny_yaml, tmp_path):
    out = tmp_path / "r"
    assert invoke("run", tiny_yaml, "--out", out, "--set", "finetune.epochs=1").exit_code == 0
    before = (out / "summary.json").read_text()
    line = one_error_line(invoke("run", tiny_yaml, "--out", out))
    assert "already holds a run" in line and str(out) in line
    assert (out / "summary.json").read_text() == before


def test_run_default_out_under_runs(tiny_yaml, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("run", tiny_yaml, "--set", "finetune.epochs=1", "--set", "checkpoints=false")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("tiny-") and (run_dir / "summary.json").is_file()
    assert result.stdout.splitlines()[-1] == f"run directory: runs/{run_dir.name}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_run_device_cuda_without_cuda(tiny_yaml, tmp_path):
    line = one_error_line(invoke("run", tiny_yaml, "--out", tmp_path / "r", "--set", "device=cuda"))
    assert "cuda" in line and "device" in line


# --------------------------------------------------------------------------- errors: exit code 2, one line
CONFIG_ERRORS = {
    "unknown top-level key": ({**tiny.config(), "backbones": "lenet"}, (), ["backbones", "did you mean 'backbone'"]),
    "unknown stage key": (tiny.config(), ["finetune.epoch=3"], ["finetune.epoch", "did you mean 'epochs'"]),
    "unknown optimizer option": (tiny.config(), ["finetune.optimizer.momentun=0.5"], ["did you mean 'momentum'"]),
    "unknown schedule option": (tiny.config(), ["finetune.schedule=step", "finetune.schedule.gama=0.5"],
                                ["finetune.schedule:", "no option 'gama'", "did you mean 'gamma'"]),
    "unknown dataset option": (tiny.config(), ["finetune.dataset.sise=16"], ["no option 'sise'", "'size'"]),
    "unknown head option": (tiny.config(), ["finetune.head=lp_ft", "finetune.head.probe_epoch=1"],
                            ["no option 'probe_epoch'", "'probe_epochs'"]),
    "unknown backbone option": (tiny.config(), ["backbone.img_sise=16"], ["no option 'img_sise'", "'img_size'"]),
    "unknown regularizer": (tiny.config(), ["finetune.regularizers=[l2sp]"], ["unknown regularizer 'l2sp'", "'l2_sp'"]),
    "unknown regularizer option": (tiny.config(), ["finetune.regularizers=[l2_sp]", "finetune.regularizers.0.alph=1"],
                                   ["no option 'alph'", "'alpha'"]),
    "wrong type": (tiny.config(), ["finetune.epochs=ten"], ["finetune.epochs must be an integer", "'ten'"]),
    "negative lr": (tiny.config(), ["finetune.optimizer.lr=-0.1"], ["finetune.optimizer.lr must be"]),
    "val_fraction 1.5": (tiny.config(), ["finetune.dataset.val_fraction=1.5"], ["val_fraction must be <="]),
    "labels and fraction": (tiny.config(), ["finetune.dataset.fraction=0.5"], ["both labels_per_class and fraction"]),
    "missing dataset": (tiny.config(), ["finetune.dataset=null"], ["finetune.dataset is required"]),
    "nothing to run": ({"name": "x"}, (), ["nothing to run"]),
    "baseline without finetune": (tiny.config(finetune=False), ["baseline=scratch"], ["baseline needs a finetune"]),
    "set without equals": (tiny.config(), ["finetune.epochs"], ["key.path=value"]),
    "set list index": (tiny.config(), ["finetune.regularizers=[l2]", "finetune.regularizers.2.alpha=1"],
                       ["not an index of a list of 1"]),
}


@pytest.mark.parametrize("command", ["run", "show"])
@pytest.mark.parametrize("raw, sets, expected", list(CONFIG_ERRORS.values()), ids=list(CONFIG_ERRORS))
def test_config_errors_exit_2_with_one_line(tmp_path, command, raw, sets, expected):
    path = tiny.write_yaml(tmp_path / "c.yaml", raw)
    args = ["run", path, "--out", tmp_path / "r"] if command == "run" else ["config", "show", path]
    for item in sets:
        args += ["--set", item]
    line = one_error_line(invoke(*args))
    for part in expected:
        assert part in line, (part, line)
    assert not (tmp_path / "r").exists()  # nothing ran


def test_missing_config_file(tmp_path):
    for args in (["run", tmp_path / "nope.yaml"], ["config", "show", tmp_path / "nope.yaml"]):
        line = one_error_line(invoke(*args))
        assert "nope.yaml" in line and "not found" in line


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nseed: 0\nfinetune: {dataset: shapes\n")
    line = one_error_line(invoke("config", "show", path))
    assert "not valid YAML" in line and "line " in line


def test_internal_errors_are_one_line_and_debug_shows_them(plugin, tmp_path):
    def broken(ctx):
        """A dataset that breaks (t_broken, for tests)."""
        raise RuntimeError("boom")

    plugin(tiny.dataset_plugin(t_broken=broken), "t-tiny-broken")
    path = tiny.write_yaml(tmp_path / "c.yaml", tiny.config(pretrain=False, finetune={"dataset": "t_broken"}))
    line = one_error_line(invoke("run", path, "--out", tmp_path / "r"), code=1, prefix="sft: internal error: ")
    assert "RuntimeError: boom" in line and "--debug" in line
    result = invoke("--debug", "run", path, "--out", tmp_path / "r2")
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "boom"


def test_debug_lets_config_errors_through(tmp_path):
    result = invoke("--debug", "config", "show", tmp_path / "nope.yaml")
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "ConfigError"


# --------------------------------------------------------------------------- as a real process
def _stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.slow
def test_process_config_error_exit_2_one_line(sft, tmp_path):
    proc = sft("config", "show", "--set", "finetune.epochs=ten", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert _stderr_lines(proc) == ["sft: error: config: finetune.epochs must be an integer or auto, got 'ten'"]
    assert proc.stdout == ""


@pytest.mark.slow
def test_process_missing_file_exit_2_one_line(sft, tmp_path):
    proc = sft("run", "nope.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = _stderr_lines(proc)
    assert line.startswith("sft: error: ") and "nope.yaml" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_process_debug_shows_a_traceback(sft, tmp_path):
    proc = sft("--debug", "run", "nope.yaml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


@pytest.mark.slow
def test_process_run_end_to_end(sft, tmp_path):
    path = tiny.write_yaml(tmp_path / "c.yaml", tiny.config())
    proc = sft("run", path, "--out", tmp_path / "r", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    lines = proc.stdout.rstrip("\n").splitlines()
    assert lines[-2] == summary["verdict"] and lines[-1] == f"run directory: {tmp_path / 'r'}"
    assert "Traceback" not in proc.stderr
