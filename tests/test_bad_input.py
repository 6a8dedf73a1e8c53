"""The bad-input catalogue: every mistake a user can make gives one line naming the problem and
the fix, exit code 2, no traceback, and leaves what was already written intact."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest
import torch

import tiny
from sftcore import hookimpl
from sftcore.api import Regularizer
from sftcore.cli import main

ROOT = Path(__file__).resolve().parent.parent


def cli(capsys, *args) -> tuple[int, str, str]:
    """``sft ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code or 0, out, err


def one_line_error(code: int, err: str, *needles: str, exit_code: int = 2) -> str:
    assert code == exit_code, err
    lines = tiny.without_epoch_lines(err)  # the error is the one line besides the progress lines
    assert len(lines) == 1, err
    assert lines[0].startswith("sft: "), err
    assert "Traceback" not in err and "internal error" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tiny_yaml(tmp_path: Path, **changes) -> Path:
    return tiny.write_yaml(tmp_path / "cfg.yaml", tiny.config(**changes))


class Exploit:
    """A pickle that would create ``marker`` when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_exploit(path: Path, marker: Path, raw: bool = False) -> Path:
    """A torch file (or with ``raw``, a plain pickle) that runs a command when fully unpickled."""
    if raw:
        with path.open("wb") as f:
            pickle.dump({"model": Exploit(marker)}, f)
    else:
        torch.save({"model": Exploit(marker)}, path)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (lenet, finetune only), made once."""
    import sftcore

    out = tmp_path_factory.mktemp("finished") / "run"
    sftcore.run(tiny.config(pretrain=False, baseline=False, finetune={"epochs": 2}), out=out)
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    (dst / "summary.json").unlink()
    (dst / "checkpoints" / "finetune.pt").unlink()  # as if killed before the stage finished
    return dst


# --------------------------------------------------------------------------- the config file
CONFIG_CASES = {
    "malformed YAML, with its line": ("finetune:\n  epochs: [1, 2\n  batch_size: 4\n",
                                      ["not valid YAML", "line 3"]),
    "top level is a list": ("- pretrain\n- finetune\n", ["must hold a mapping"]),
    "a python tag is not evaluated": ("name: !!python/object/apply:os.system ['echo hacked']\n",
                                      ["not valid YAML"]),
    "unknown key, with a suggestion": ("finetune:\n  dataset: shapes\n  epoch: 3\n",
                                       ["unknown key 'finetune.epoch'", "did you mean 'epochs'"]),
    "wrong type": ("finetune:\n  dataset: shapes\n  batch_size: many\n",
                   ["finetune.batch_size must be an integer", "'many'"]),
    "unknown component": ("backbone: lenett\nfinetune:\n  dataset: shapes\n",
                          ["unknown backbone 'lenett'", "did you mean 'lenet'"]),
    "negative lr": ("finetune:\n  dataset: shapes\n  optimizer: {name: sgd, lr: -0.1}\n",
                    ["finetune.optimizer.lr must be a finite number > 0"]),
    "zero epochs": ("finetune:\n  dataset: shapes\n  epochs: 0\n", ["finetune.epochs must be >= 1"]),
    "batch size 0": ("finetune:\n  dataset: shapes\n  batch_size: 0\n", ["finetune.batch_size must be >= 1"]),
    "val_fraction out of range": ("finetune:\n  dataset: {name: shapes, val_fraction: 1.5}\n",
                                  ["val_fraction must be <="]),
    "both labels_per_class and fraction": (
        "finetune:\n  dataset: {name: shapes, labels_per_class: 5, fraction: 0.5}\n", ["keep one"]),
    "fp16 on the CPU": ("device: cpu\nprecision: fp16\nfinetune:\n  dataset: shapes\n", ["fp16 needs CUDA"]),
    "nothing to run": ("name: empty\n", ["nothing to run"]),
    "seeds 0": ("seeds: 0\nfinetune:\n  dataset: shapes\n", ["seeds must be >= 1", "got 0"]),
    "seeds negative in a list": ("seeds: [0, -1]\nfinetune:\n  dataset: shapes\n", ["seeds[1] must be >= 0"]),
    "seeds not integers": ("seeds: [0, 1.5]\nfinetune:\n  dataset: shapes\n", ["seeds[1] must be an integer"]),
    "seeds repeated": ("seeds: [2, 2]\nfinetune:\n  dataset: shapes\n", ["lists a seed twice"]),
    "seeds empty list": ("seeds: []\nfinetune:\n  dataset: shapes\n", ["at least one seed"]),
    "seeds a string": ("seeds: many\nfinetune:\n  dataset: shapes\n", ["seeds must be an integer", "'many'"]),
    "pretrain_per_seed not boolean": ("pretrain_per_seed: yes please\nfinetune:\n  dataset: shapes\n",
                                      ["pretrain_per_seed must be true or false"]),
    "epochs a word": ("finetune:\n  dataset: shapes\n  epochs: forever\n", ["epochs must be an integer or auto"]),
    "auto cap below 1": ("finetune:\n  dataset: shapes\n  epochs: auto\n  max_epochs: 0\n",
                         ["finetune.max_epochs must be >= 1"]),
    "baseline auto cap below 1": ("finetune:\n  dataset: shapes\nbaseline: {name: scratch, max_epochs: -3}\n",
                                  ["baseline.max_epochs must be >= 1"]),
    "patience 0": ("finetune:\n  dataset: shapes\n  patience: 0\n", ["finetune.patience must be >= 1"]),
    "select unknown": ("finetune:\n  dataset: shapes\n  select: bestest\n", ["select must be one of auto"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_file(case, tmp_path, capsys):
    text, needles = CONFIG_CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = cli(capsys, "run", path, "--out", tmp_path / "run")
    one_line_error(code, err, *needles)
    assert not (tmp_path / "run").exists()  # nothing is created for a config that cannot run


SET_CASES = {
    "--set without =": (["--set", "finetune.epochs"], ["must look like key.path=value"]),
    "--set unknown key": (["--set", "finetune.lr=0.1"], ["unknown key 'finetune.lr'"]),
    "--set wrong type": (["--set", "seed=abc"], ["seed must be an integer", "'abc'"]),
    "--set unknown head": (["--set", "finetune.head=linear_prob"], ["did you mean 'linear_probe'"]),
    "--set cuda without CUDA": (["--set", "device=cuda"], ["no CUDA device"]),
}


@pytest.mark.parametrize("value,needle", [("0", "seeds must be >= 1"), ("-2", "seeds must be >= 1"),
                                           ("two", "seeds must be an integer")])
def test_bad_seeds_option_is_one_line(value, needle, tmp_path, capsys):
    code, _, err = cli(capsys, "run", tiny_yaml(tmp_path), "--seeds", value, "--out", tmp_path / "run")
    one_line_error(code, err, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", SET_CASES)
def test_bad_override(case, tmp_path, capsys):
    args, needles = SET_CASES[case]
    if case == "--set cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = cli(capsys, "run", tiny_yaml(tmp_path), *args, "--out", tmp_path / "run")
    one_line_error(code, err, *needles)


def test_missing_config_file(tmp_path, capsys):
    code, _, err = cli(capsys, "run", tmp_path / "nope.yaml")
    one_line_error(code, err, "nope.yaml", "not found")


def test_yaml_python_tag_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "hacked"
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _, err = cli(capsys, "config", "show", path)
    one_line_error(code, err, "not valid YAML")
    assert not marker.exists()


# --------------------------------------------------------------------------- data
def test_labels_per_class_larger_than_available(tmp_path, capsys):
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    finetune={"dataset": tiny.shapes("target", train_per_class=4, labels_per_class=10)})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "labels_per_class is 10", "only 4 training examples", "4 or less")


def test_missing_cifar_files(tmp_path, capsys):
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    finetune={"dataset": {"name": "cifar10", "root": str(tmp_path / "data")}})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "CIFAR-10 not found", "download")


def test_cifar_download_impossible_offline(tmp_path, capsys, monkeypatch):
    # a proxy on a closed local port: the download fails at once, and no packet leaves the machine
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    finetune={"dataset": {"name": "cifar10", "root": str(tmp_path / "data"), "download": True}})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "could not download CIFAR-10")


def test_image_folder_missing(tmp_path, capsys):
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    finetune={"dataset": {"name": "image_folder", "root": str(tmp_path / "photos")}})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "photos")


def test_image_folder_empty(tmp_path, capsys):
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "photos" / "dog").mkdir()
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    finetune={"dataset": {"name": "image_folder", "root": str(tmp_path / "photos")}})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "photos")


def test_image_folder_unreadable_image(tmp_path, capsys):
    from torchvision.io import write_png

    for cls in ("cat", "dog"):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(3):
            write_png(torch.full((3, 16, 16), 40 * i, dtype=torch.uint8), str(tmp_path / "photos" / cls / f"{i}.png"))
    (tmp_path / "photos" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    finetune={"dataset": {"name": "image_folder", "root": str(tmp_path / "photos")}})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "broken.png")


def test_torchvision_dataset_missing(tmp_path, capsys):
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    finetune={"dataset": {"name": "torchvision", "dataset": "Flowers102", "root": str(tmp_path / "d")}})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "Flowers102", "imagelabels.mat", "download: true")


def test_torchvision_dataset_corrupt_image(tmp_path, capsys):
    from PIL import Image

    for c, cls in enumerate(("AnnualCrop", "Forest")):
        for i in range(3):
            Image.new("RGB", (16, 16), (60 * c, 90, 90)).save(_mkdir(tmp_path, cls) / f"{cls}_{i}.jpg")
    (_mkdir(tmp_path, "Forest") / "Forest_9.jpg").write_bytes(b"\xff\xd8\xffnot really a jpeg")
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    finetune={"dataset": {"name": "torchvision", "dataset": "EuroSAT", "root": str(tmp_path / "d")}})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "Forest_9.jpg")


def _mkdir(tmp_path: Path, cls: str) -> Path:
    folder = tmp_path / "d" / "eurosat" / "2750" / cls
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_manifest_path_escaping_its_folder(tmp_path, capsys):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.png").write_bytes(b"")
    (tmp_path / "t" / "train.csv").write_text("path,label\na.png,cat\n../secret.png,dog\n")
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    finetune={"dataset": {"name": "manifest", "train": str(tmp_path / "t" / "train.csv")}})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "train.csv line 3", "stay inside")


# --------------------------------------------------------------------------- weights and checkpoints
def test_weights_file_missing(tmp_path, capsys):
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    backbone={"name": "lenet", "img_size": 16, "weights": str(tmp_path / "w.pt")})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "w.pt", "not found")


@pytest.mark.slow
def test_weights_of_another_architecture(finished, tmp_path, capsys):
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    backbone={"name": "lenet", "img_size": 32,
                              "weights": str(finished / "checkpoints" / "finetune.pt")})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "does not fit lenet", "img_size=32")


def test_weights_crafted_to_run_code(tmp_path, capsys):
    marker = tmp_path / "hacked"
    weights = write_exploit(tmp_path / "w.pt", marker)
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    backbone={"name": "lenet", "img_size": 16, "weights": str(weights)})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "w.pt", "not loaded")
    assert not marker.exists()


def test_timm_weights_crafted_to_run_code(tmp_path, capsys):
    pytest.importorskip("timm")
    marker = tmp_path / "hacked"
    weights = write_exploit(tmp_path / "w.pth", marker)
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False,
                    backbone={"name": "timm", "model": "resnet18", "weights": str(weights)})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "w.pth", "could not be read")
    assert not marker.exists()


def _resume_with(capsys, run: Path, content: bytes | None = None, exploit: Path | None = None):
    last = run / "checkpoints" / "finetune-last.pt"
    if exploit is not None:
        write_exploit(last, exploit)
    else:
        last.write_bytes(content)
    before = last.read_bytes()
    code, _, err = cli(capsys, "run", "--resume", run)
    assert last.read_bytes() == before  # the bad file is left for the user to look at, not replaced
    return code, err


@pytest.mark.slow
def test_resume_truncated_checkpoint(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    good = (run / "checkpoints" / "finetune-last.pt").read_bytes()
    code, err = _resume_with(capsys, run, good[: len(good) // 2])
    one_line_error(code, err, "finetune-last.pt", "truncated or corrupt", "delete it")


@pytest.mark.slow
def test_resume_corrupt_checkpoint(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    code, err = _resume_with(capsys, run, os.urandom(4096))
    one_line_error(code, err, "finetune-last.pt", "truncated or corrupt")


@pytest.mark.slow
def test_resume_checkpoint_crafted_to_run_code(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    marker = tmp_path / "hacked"
    code, err = _resume_with(capsys, run, exploit=marker)
    one_line_error(code, err, "finetune-last.pt", "not loaded", "refers to posix.system", "could run code")
    assert not marker.exists()


@pytest.mark.slow
def test_resume_plain_pickle_crafted_to_run_code(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    marker = tmp_path / "hacked"
    write_exploit(run / "checkpoints" / "finetune-last.pt", marker, raw=True)
    code, _, err = cli(capsys, "run", "--resume", run)
    one_line_error(code, err, "finetune-last.pt", "not loaded")
    assert not marker.exists()


@pytest.mark.slow
def test_resume_checkpoint_of_another_model(finished, tmp_path, capsys):
    import sftcore

    other = tmp_path / "other"
    sftcore.run(tiny.config(pretrain=False, baseline=False, finetune={"epochs": 1},
                            backbone={"name": "lenet", "img_size": 20}), out=other)
    run = copy_run(finished, tmp_path / "run")
    code, err = _resume_with(capsys, run, (other / "checkpoints" / "finetune-last.pt").read_bytes())
    one_line_error(code, err, "finetune-last.pt", "another model", "run's own config.yaml")


def test_resume_not_a_run_directory(tmp_path, capsys):
    code, _, err = cli(capsys, "run", "--resume", tmp_path)
    one_line_error(code, err, "not a run directory", "config.yaml")


@pytest.mark.slow
def test_resume_takes_no_overrides(finished, capsys):
    code, _, err = cli(capsys, "run", "--resume", finished, "--set", "finetune.epochs=5")
    one_line_error(code, err, "drop CONFIG, --set")


@pytest.mark.slow
def test_resume_without_checkpoints(tmp_path, capsys):
    import sftcore

    sftcore.run(tiny.config(pretrain=False, baseline=False, finetune={"epochs": 1}, checkpoints=False),
                out=tmp_path / "run")
    code, _, err = cli(capsys, "run", "--resume", tmp_path / "run")
    one_line_error(code, err, "checkpoints: false")


# --------------------------------------------------------------------------- run directories
@pytest.mark.slow
def test_existing_run_is_not_overwritten(finished, tmp_path, capsys):
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    code, _, err = cli(capsys, "run", tiny_yaml(tmp_path), "--out", finished)
    one_line_error(code, err, "already holds a run", "--resume", "--force")
    assert {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()} == before


def test_non_empty_directory_is_not_used(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "run", tiny_yaml(tmp_path), "--out", tmp_path / "out")
    one_line_error(code, err, "is not empty", "--force")
    assert os.listdir(tmp_path / "out") == ["notes.txt"]


@pytest.mark.slow
def test_force_replaces_the_run_and_keeps_other_files(finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "notes.txt").write_text("mine")
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False, finetune={"epochs": 1}, name="again")
    code, out, err = cli(capsys, "run", cfg, "--out", run, "--force")
    assert code == 0, err
    assert (run / "notes.txt").read_text() == "mine"
    assert "name: again" in (run / "config.yaml").read_text()
    assert len(tiny.read_metrics(run)) == 1  # the old run's epochs are gone


# --------------------------------------------------------------------------- during training
def test_nan_loss_stops_names_the_step_and_keeps_the_good_checkpoint(plugin, tmp_path, capsys):
    state = {"epoch": None}

    class Bad(Regularizer):
        def setup(self, ctx):
            self.batch = 0

        def penalty(self, step):
            if step.epoch != state["epoch"]:
                state["epoch"], self.batch = step.epoch, 0
            self.batch += 1
            nan = (step.epoch, self.batch) >= (1, 2)  # epoch 2, batch 2 (both from 1)
            return step.logits.sum() * (float("nan") if nan else 0.0)

    class P:
        @hookimpl
        def register_regularizers(self, register):
            register("t_nan", lambda: Bad(), "NaN from epoch 2, batch 2")

    plugin(P(), "t-nan")
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False, finetune={"epochs": 3, "regularizers": ["t_nan"]})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "NaN or infinite", "epoch 2, batch 2", "finetune.optimizer.lr", "last good checkpoint")
    last = torch.load(tmp_path / "run" / "checkpoints" / "finetune-last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["batch"] == 0  # the end of epoch 1, the last good state
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in tiny.read_metrics(tmp_path / "run")] == [1]


@pytest.mark.slow
def test_a_nan_in_the_first_epoch_keeps_the_run_marked_failed(plugin, tmp_path, capsys):
    """Nothing saved yet (checkpoints off, no epoch finished): the run directory stays, with failed.json, as the
    evidence; before, the whole folder was deleted as if the config had been wrong."""
    import json

    class Bad(Regularizer):
        def penalty(self, step):
            return step.logits.sum() * float("nan")

    class P:
        @hookimpl
        def register_regularizers(self, register):
            register("t_nan_first", lambda: Bad(), "NaN at once")

    plugin(P(), "t-nan-first")
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False, checkpoints=False,
                    finetune={"epochs": 2, "regularizers": ["t_nan_first"]})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "NaN or infinite")
    failed = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert "NaN or infinite" in failed["error"] and (tmp_path / "run" / "config.yaml").is_file()


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    from sftcore._fileio import storage

    saves = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if "finetune-last.pt" in name:
            saves["n"] += 1
            if saves["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name the file being synced")
    monkeypatch.setattr(storage.os, "fsync", fsync)
    cfg = tiny_yaml(tmp_path, pretrain=False, baseline=False, finetune={"epochs": 3})
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "finetune-last.pt", "disk is full", "unchanged")
    monkeypatch.undo()
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["finetune-last.pt"]  # no temporary file left
    assert torch.load(folder / "finetune-last.pt", weights_only=True)["epoch"] == 1
