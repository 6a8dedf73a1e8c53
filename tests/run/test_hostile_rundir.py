"""Hostile input to run directories: two writers at once, --force on someone's own files, an edited
config under --resume, a name that climbs out of runs/, a failed first run, a full disk, a file
where a directory belongs. Each gives one line and exit 2, and loses no file."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sftcore
import tiny
from sftcore._run import ownership
from sftcore._fileio import storage
from sftcore.errors import ConfigError
from test_bad_input import cli, one_line_error

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def small(**changes) -> dict:
    return tiny.config(pretrain=False, baseline=False, finetune={"epochs": 1}, **changes)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    sftcore.run(small(), out=out)
    return out


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sftcore", *map(str, args), "--no-progress"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(check, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()}"
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


def holds_lock(run: Path, pid: int):
    lock = run / ownership.LOCK
    return lambda: lock.is_file() and lock.read_text().strip() == str(pid)


# --------------------------------------------------------------------------- 1: one writer at a time
@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_owner(tmp_path, capsys):
    long = tiny.config(pretrain=False, baseline=False,
                       finetune={"epochs": 12, "dataset": tiny.shapes("target", train_per_class=60)})
    run = tmp_path / "run"
    proc = start("run", tiny.write_yaml(tmp_path / "long.yaml", long), "--out", run)
    try:
        wait_for(holds_lock(run, proc.pid), proc, "it held the lock")
        wait_for(lambda: (run / "config.yaml").is_file(), proc, "it wrote config.yaml")
        small_cfg = tiny.write_yaml(tmp_path / "small.yaml", small())
        code, _, err = cli(capsys, "run", small_cfg, "--out", run, "--force")
        one_line_error(code, err, "in use by another sft run", f"pid {proc.pid}")
        code, _, err = cli(capsys, "run", "--resume", run)
        one_line_error(code, err, "in use by another sft run", f"pid {proc.pid}")
        assert proc.poll() is None, "the owner finished before the second writer tried"
        _, err = proc.communicate(timeout=120)  # the owner is undisturbed
        assert proc.returncode == 0, err
    finally:
        proc.kill()
        proc.wait()
    assert json.loads((run / "summary.json").read_text())["finetune"]["epochs"] == 12
    assert "name: tiny" in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_a_sigkilled_owner_leaves_no_stale_lock(tmp_path):
    cfg = tiny.write_yaml(tmp_path / "cfg.yaml", tiny.config(
        pretrain=False, baseline=False, finetune={"epochs": 6, "dataset": tiny.shapes("target", train_per_class=40)}))
    run = tmp_path / "run"
    proc = start("run", cfg, "--out", run)
    try:
        wait_for(lambda: (run / "checkpoints" / "finetune-last.pt").is_file(), proc, "its first checkpoint")
        assert holds_lock(run, proc.pid)()
    finally:
        proc.kill()
        proc.wait()
    resumed = sftcore.run(resume=run)
    assert resumed["finetune"]["epochs"] == 6 and (run / "summary.json").is_file()


def test_wait_free_waits_for_a_held_lock_and_returns_once_it_is_released(tmp_path):
    held = ownership.lock(tmp_path)
    t0 = time.monotonic()
    assert ownership.wait_free(tmp_path, 0.3, poll=0.05) is False  # still held after the wait
    assert time.monotonic() - t0 >= 0.3
    with pytest.raises(ownership.Busy, match="in use by another sft run"):
        ownership.lock(tmp_path)
    held.release()
    assert ownership.wait_free(tmp_path, 0.3, poll=0.05) is True
    assert ownership.wait_free(tmp_path / "missing", 0.3) is True  # not a lock question: the run itself says


@pytest.mark.slow
def test_the_lock_is_held_for_the_run_and_released_after(tmp_path, monkeypatch):
    seen = {}
    original = storage.write_json

    def spy(path, data, **kw):
        if Path(path).name == "summary.json":
            with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
                ownership.lock(Path(path).parent)
            seen["locked"] = True
        return original(path, data, **kw)

    monkeypatch.setattr(storage, "write_json", spy)
    sftcore.run(small(), out=tmp_path / "run")
    assert seen == {"locked": True}
    ownership.lock(tmp_path / "run").release()  # free again


# --------------------------------------------------------------------------- 2: --force only on sftcore's runs
def test_force_refuses_a_directory_that_never_was_a_run(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "thesis.pt").write_text("precious")
    (mine / "config.yaml").write_text("my: own\n")
    code, _, err = cli(capsys, "run", tiny.write_yaml(tmp_path / "c.yaml", small()), "--out", mine, "--force")
    one_line_error(code, err, "holds no sftcore run", "--force replaces only")
    assert (mine / "checkpoints" / "thesis.pt").read_text() == "precious"
    assert sorted(os.listdir(mine)) == ["checkpoints", "config.yaml"]


@pytest.mark.slow
def test_force_unlinks_a_symlinked_checkpoints_folder_without_following_it(finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.pt").write_text("precious")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = cli(capsys, "run", tiny.write_yaml(tmp_path / "c.yaml", small()), "--out", run, "--force")
    assert code == 0, err
    assert (elsewhere / "keep.pt").read_text() == "precious"
    assert not (run / "checkpoints").is_symlink() and (run / "checkpoints" / "finetune.pt").is_file()


@pytest.mark.slow
def test_every_run_has_a_marker_and_a_legacy_run_is_still_replaceable(finished, tmp_path, capsys):
    import shutil

    marker = json.loads((finished / ownership.MARKER).read_text())
    assert marker["sftcore"] == sftcore.__version__ and marker["created"] and marker["config"]["name"] == "tiny"
    legacy = tmp_path / "legacy"
    shutil.copytree(finished, legacy)
    (legacy / ownership.MARKER).unlink()
    (legacy / ownership.LOCK).unlink()
    code, _, err = cli(capsys, "run", tiny.write_yaml(tmp_path / "c.yaml", small(name="new")), "--out", legacy,
                       "--force")
    assert code == 0, err
    assert "name: new" in (legacy / "config.yaml").read_text() and (legacy / ownership.MARKER).is_file()


# --------------------------------------------------------------------------- 3: --resume and an edited config
def edit_config(run: Path, **values) -> None:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for dotted, value in values.items():
        *parents, last = dotted.split("__")
        node = cfg
        for key in parents:
            node = node[key]
        node[last] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def cut_run(tmp_path: Path) -> Path:
    """A run killed after its first epoch (epochs 2: finetune.pt not yet written)."""
    run = tmp_path / "run"
    sftcore.run(tiny.config(pretrain=False, baseline=False, finetune={"epochs": 2}), out=run)
    (run / "summary.json").unlink()
    (run / "checkpoints" / "finetune.pt").unlink()
    return run


@pytest.mark.slow
def test_resume_refuses_an_edited_config_naming_the_keys(tmp_path, capsys):
    run = cut_run(tmp_path)
    edit_config(run, finetune__epochs=4, finetune__optimizer__lr=0.5)
    code, _, err = cli(capsys, "run", "--resume", run)
    one_line_error(code, err, "config.yaml differs", "finetune.epochs", "finetune.optimizer.lr",
                   "--allow-config-change")
    assert not (run / "summary.json").exists()


@pytest.mark.slow
def test_resume_with_allow_config_change_continues_and_records_it(tmp_path, capsys):
    run = cut_run(tmp_path)
    edit_config(run, finetune__epochs=3)
    code, _, err = cli(capsys, "run", "--resume", run, "--allow-config-change")
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["finetune"]["epochs"] == 3
    changes = [json.loads(line) for line in (run / ownership.CHANGES).read_text().splitlines()]
    assert len(changes) == 1 and changes[0]["changed"] == {"finetune.epochs": [2, 3]} and changes[0]["time"]
    assert json.loads((run / ownership.MARKER).read_text())["config"]["finetune"]["epochs"] == 3
    with pytest.raises(ConfigError, match="goes with --resume"):
        sftcore.run(small(), out=tmp_path / "other", allow_config_change=True)


@pytest.mark.slow
def test_an_edited_rank_list_is_no_change_to_the_run(tmp_path):
    """`rank:` is for `sft rank`; the run never reads it, so editing it neither blocks --resume nor retrains."""
    run = cut_run(tmp_path)
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "rank": ["lenet", "runs/other"]}, sort_keys=False))
    sftcore.run(resume=run)
    assert json.loads((run / "summary.json").read_text())["finetune"]["epochs"] == 2
    assert not (run / ownership.CHANGES).exists()  # resumed as unchanged: not refused, no stage invalidated


@pytest.mark.slow
def test_resume_of_an_unchanged_config_and_of_a_legacy_run(tmp_path):
    run = cut_run(tmp_path)
    (run / ownership.MARKER).unlink()  # made before the marker existed: trusted, then recorded
    sftcore.run(resume=run)
    assert (run / ownership.MARKER).is_file() and not (run / ownership.CHANGES).exists()


# --------------------------------------------------------------------------- 4: name cannot leave runs/
@pytest.mark.slow
@pytest.mark.parametrize("name", ["../../ESCAPED", "/tmp/abs", "a/b", "a\\b", "..", ".hidden", "nul\0byte"])
def test_a_name_that_is_not_one_folder_is_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path / "..")
    before = set(os.listdir(tmp_path.parent))
    with pytest.raises(ConfigError) as info:
        sftcore.run(small(name=name))
    assert "must be one folder name" in str(info.value) and "\n" not in str(info.value)
    assert set(os.listdir(tmp_path.parent)) == before and not Path("/tmp/abs-").exists()


@pytest.mark.slow
def test_a_plain_name_still_makes_runs_name_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = sftcore.run(small(name="ok.v2_x-1", checkpoints=False))["run_dir"]
    assert out.startswith("runs/ok.v2_x-1-")


# --------------------------------------------------------------------------- 5: a failed first run leaves nothing
def bad_data(**extra) -> dict:
    return tiny.config(pretrain=False, baseline=False,
                       finetune={"dataset": tiny.shapes("target", train_per_class=4, labels_per_class=10), **extra})


@pytest.mark.parametrize("pre_existing", [False, True])
def test_a_run_failing_on_its_data_leaves_no_directory(tmp_path, capsys, pre_existing):
    out = tmp_path / "out"
    if pre_existing:
        out.mkdir()
    code, _, err = cli(capsys, "run", tiny.write_yaml(tmp_path / "bad.yaml", bad_data()), "--out", out)
    one_line_error(code, err, "labels_per_class is 10")
    assert (os.listdir(out) == []) if pre_existing else not out.exists()
    code, _, err = cli(capsys, "run", tiny.write_yaml(tmp_path / "good.yaml", small()), "--out", out)
    assert code == 0, err


@pytest.mark.slow
def test_finetune_data_is_checked_before_pretraining(tmp_path):
    cfg = tiny.config(baseline=False, finetune={"dataset": tiny.shapes("target", train_per_class=4,
                                                                       labels_per_class=10)})
    with pytest.raises(ConfigError, match="labels_per_class"):
        sftcore.run(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # failed before pretraining: nothing to keep


@pytest.mark.slow
def test_a_failure_after_a_checkpoint_keeps_the_run(tmp_path, monkeypatch):
    from sftcore._run import runner

    def fail(self, *args):
        raise ConfigError("config: something went wrong after pretraining")

    monkeypatch.setattr(runner.Pipeline, "_one_seed", fail)
    with pytest.raises(ConfigError, match="after pretraining"):
        sftcore.run(tiny.config(baseline=False), out=tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "pretrain.pt").is_file()


@pytest.mark.slow
def test_a_failed_resume_removes_nothing(tmp_path):
    run = cut_run(tmp_path)
    (run / "checkpoints" / "finetune-last.pt").unlink()
    (run / "metrics.jsonl").write_text("")  # as if killed before its first epoch
    edit_config(run, finetune__dataset__labels_per_class=10, finetune__dataset__train_per_class=4)
    with pytest.raises(ConfigError, match="labels_per_class"):
        sftcore.run(resume=run, allow_config_change=True)
    assert (run / "config.yaml").is_file() and (run / ownership.MARKER).is_file()


# --------------------------------------------------------------------------- 6: a full disk, whatever raises it
@pytest.mark.parametrize("exc, needle", [
    (RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4096 vs 4032"), "disk full"),
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "disk full"),
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only"),
    (OSError(errno.EACCES, "Permission denied"), "permission denied"),
    (PermissionError(errno.EPERM, "Operation not permitted"), "permission denied"),
])
def test_a_failing_checkpoint_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, exc, needle):
    import torch

    path = tmp_path / "x.pt"
    storage.save({"w": torch.ones(2)}, path)
    before = path.read_bytes()

    def fail(obj, f, *a, **kw):
        f.write(b"partial")
        raise exc

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(storage.StorageError) as info:
        storage.save({"w": torch.zeros(2)}, path)
    assert needle in str(info.value) and "unchanged" in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["x.pt"]


def test_a_full_disk_mid_run_is_one_line_not_an_internal_error(tmp_path, capsys, monkeypatch):
    import torch

    real = torch.save

    def fail(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("stage") == "finetune":
            raise RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", fail)
    code, _, err = cli(capsys, "run", tiny.write_yaml(tmp_path / "c.yaml", small()), "--out", tmp_path / "run")
    one_line_error(code, err, "cannot write", "finetune-last.pt", "free space", "unchanged")
    assert tiny.read_metrics(tmp_path / "run")  # the epoch it logged is kept for --resume
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # no half-written file


def test_an_unwritable_run_folder_is_one_line(tmp_path, capsys, monkeypatch):
    def fail(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(storage.tempfile, "mkstemp", fail)
    code, _, err = cli(capsys, "run", tiny.write_yaml(tmp_path / "c.yaml", small()), "--out", tmp_path / "run")
    one_line_error(code, err, "read-only")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 7: a file where a directory belongs
@pytest.mark.slow
@pytest.mark.parametrize("option", ["--out", "--resume"])
def test_out_or_resume_naming_a_file_is_one_line(tmp_path, capsys, option):
    target = tmp_path / "a-file"
    target.write_text("mine")
    args = [option, target] if option == "--resume" else [tiny.write_yaml(tmp_path / "c.yaml", small()), option, target]
    code, _, err = cli(capsys, "run", *args)
    one_line_error(code, err, f"{option} '{target}' is a file")
    assert target.read_text() == "mine"
    with pytest.raises(ConfigError, match="is a file"):
        sftcore.run(resume=target)


@pytest.mark.slow
@pytest.mark.parametrize("args", [["plot", "{f}"], ["plot", "{run}", "--out", "{f}"], ["predict", "{f}", "{f}"],
                                  ["compare", "{f}"]])
def test_the_other_commands_given_a_file_for_a_folder_say_one_line(finished, tmp_path, capsys, args):
    target = tmp_path / "a-file"
    target.write_text("mine")
    code, _, err = cli(capsys, *[a.format(f=target, run=finished) for a in args])
    one_line_error(code, err, str(target))
    assert target.read_text() == "mine"


@pytest.mark.slow
def test_a_dataset_with_one_class_is_an_error_not_100_percent(tmp_path, plugin):
    """A third-party dataset with a single class would train and report 100% accuracy."""
    import torch

    from sftcore.api import DataSplits, ImageSet

    def one_class(ctx):
        """Eight black images of a single class (t_one_class, for tests)."""
        images = torch.zeros(8, 3, 16, 16, dtype=torch.uint8)
        labels = torch.zeros(8, dtype=torch.long)
        return DataSplits(classes=["only"], train=ImageSet(images, labels), test=ImageSet(images, labels))

    plugin(tiny.dataset_plugin(one_class=one_class), "one-class-plugin")
    cfg = tiny.config(pretrain=False, baseline=False, finetune={"dataset": {"name": "one_class"}})
    with pytest.raises(ConfigError, match=r"1 class\(es\) with training examples; a classifier needs at least 2"):
        sftcore.run(cfg, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- review findings
@pytest.mark.slow
def test_an_allowed_change_retrains_the_stages_it_touches(tmp_path):
    """A finished stage is not reused under a changed config, and a half-trained one starts over
    (its optimizer state would otherwise carry the old lr)."""
    run = tmp_path / "run"
    sftcore.run(tiny.config(baseline={"name": "scratch", "epochs": 1}, finetune={"epochs": 2}), out=run)
    before = torch_load(run / "checkpoints" / "pretrain.pt")
    edit_config(run, finetune__epochs=3, finetune__optimizer__lr=0.05)
    summary = sftcore.run(resume=run, allow_config_change=True)
    assert summary["finetune"]["epochs"] == 3
    finetune = [r for r in tiny.read_metrics(run) if r["stage"] == "finetune"]
    assert [r["epoch"] for r in finetune] == [1, 2, 3]
    assert finetune[0]["lr"] > 0.02  # the new lr from the first step (the old run's was 0.02)
    [change] = [json.loads(line) for line in (run / ownership.CHANGES).read_text().splitlines()]
    assert change["retrained"] == ["finetune", "baseline"]
    after = torch_load(run / "checkpoints" / "pretrain.pt")
    assert all((before[k] == after[k]).all() for k in before)  # pretrain was untouched


def torch_load(path):
    import torch

    return torch.load(path, weights_only=True)["model"]


def test_force_refuses_another_tools_run_folder(tmp_path, capsys):
    out = tmp_path / "proj"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("model: resnet\nlr: 0.1\n")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (out / "checkpoints" / "model_epoch_90.ckpt").write_text("weights")
    code, _, err = cli(capsys, "run", tiny.write_yaml(tmp_path / "c.yaml", small()), "--out", out, "--force")
    one_line_error(code, err, "holds no sftcore run")
    assert (out / "checkpoints" / "model_epoch_90.ckpt").read_text() == "weights"


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data")
    (out / ownership.LOCK).symlink_to(victim)
    code, _, err = cli(capsys, "run", tiny.write_yaml(tmp_path / "c.yaml", small()), "--out", out)
    one_line_error(code, err, "symbolic link")
    assert victim.read_text() == "precious data"


@pytest.mark.slow
def test_a_run_from_before_seeds_resumes_with_one_seed(tmp_path):
    run = cut_run(tmp_path)
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("seeds", "pretrain_per_seed"):
        cfg.pop(key)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / ownership.MARKER).unlink()
    summary = sftcore.run(resume=run)
    assert summary["seeds"] == [0] and len(summary["per_seed"]) == 1
