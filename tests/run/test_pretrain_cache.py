"""The pretrain cache: one pretraining per distinct pretraining, reused bit for bit (docs/cache.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sftcore
import tiny
from sftcore._run import runner

# enough training that the numbers are not all chance: a reused backbone that differed would show
CFG = tiny.config(pretrain={"epochs": 2}, finetune={"epochs": 3})


def run(tmp_path, out, cfg=CFG, sets: dict | None = None):
    """A run in ``tmp_path/out`` with ``--set`` overrides: its summary, its lines and its epoch lines."""
    lines, epochs = [], []
    summary = runner.run(cfg, out=tmp_path / out, echo=lines.append, epoch_echo=epochs.append,
                         overrides=[f"{k}={v}" for k, v in (sets or {}).items()])
    return summary, lines, epochs


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "pretrain").iterdir() if p.is_dir()) if (cache / "pretrain").exists() else []


def records(run_dir: Path, prefix: str) -> list[dict]:
    return tiny.without_seconds([r for r in tiny.read_metrics(run_dir) if r["stage"].startswith(prefix)])


@pytest.mark.slow
def test_second_run_reuses_pretraining_bit_identically(tmp_path, pretrain_cache_dir, one_thread):
    first, _, first_epochs = run(tmp_path, "a")
    second, lines, epochs = run(tmp_path, "b")
    key = first["pretrain"]["cache"]["key"]
    assert first["pretrain"]["cache"] == {"key": key, "path": str(pretrain_cache_dir / "pretrain" / key),
                                          "hit": False}
    assert second["pretrain"]["cache"] == {**first["pretrain"]["cache"], "hit": True}
    assert entries(pretrain_cache_dir) == [pretrain_cache_dir / "pretrain" / key]
    assert any(e.startswith("pretrain epoch") for e in first_epochs)
    assert not any(e.startswith("pretrain epoch") for e in epochs)  # it did not pretrain
    assert f"pretrain: reused cache entry {key[:12]} ({pretrain_cache_dir / 'pretrain' / key})" in lines
    for stage in ("pretrain", "finetune", "baseline"):
        for field in ("test_accuracy", "test_loss", "test_macro_f1", "val_accuracy", "selected_epoch"):
            assert second[stage][field] == first[stage][field], (stage, field)
    assert second["transfer_gain"] == first["transfer_gain"]
    # every epoch's numbers: the finetune saw exactly the weights it saw the first time
    for prefix in ("pretrain", "finetune", "baseline"):
        assert records(tmp_path / "b", prefix) == records(tmp_path / "a", prefix)
    a, b = (torch.load(tmp_path / r / "checkpoints" / "pretrain.pt", weights_only=True) for r in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (tmp_path / "b" / "predictions" / "pretrain.json").read_text() == \
        (tmp_path / "a" / "predictions" / "pretrain.json").read_text()
    assert sftcore.load(tmp_path / "b", stage="pretrain") is not None  # the run's own copy serves it


@pytest.mark.slow
def test_what_changes_the_weights_misses_and_what_does_not_hits(tmp_path, pretrain_cache_dir, one_thread):
    base, _, _ = run(tmp_path, "base")
    key = base["pretrain"]["cache"]["key"]
    misses = {"epochs": {"pretrain.epochs": 3}, "seed": {"seed": 1},
              "dataset": {"pretrain.dataset.train_per_class": 15}, "lr": {"pretrain.optimizer.lr": 0.04}}
    keys = {key}
    for name, change in misses.items():
        summary, _, _ = run(tmp_path, name, sets=change)
        assert summary["pretrain"]["cache"]["hit"] is False, name
        keys.add(summary["pretrain"]["cache"]["key"])
    assert len(keys) == 1 + len(misses) == len(entries(pretrain_cache_dir))
    same = {"finetune.epochs": 1, "finetune.optimizer.lr": 0.1, "baseline": "null", "name": "other",
            "checkpoints": "false", "seeds": 2}
    summary, _, _ = run(tmp_path, "finetune-only", sets=same)
    assert summary["pretrain"]["cache"] == {**base["pretrain"]["cache"], "hit": True}
    assert summary["pretrain"]["test_accuracy"] == base["pretrain"]["test_accuracy"]
    assert len(entries(pretrain_cache_dir)) == 1 + len(misses)


@pytest.mark.slow
def test_cache_off_neither_reads_nor_writes(tmp_path, pretrain_cache_dir, one_thread):
    summary, _, epochs = run(tmp_path, "off", sets={"pretrain_cache": "false"})
    assert "cache" not in summary["pretrain"] and entries(pretrain_cache_dir) == []
    run(tmp_path, "on")
    summary, _, epochs = run(tmp_path, "off-again", sets={"pretrain_cache": "false"})
    assert "cache" not in summary["pretrain"] and any(e.startswith("pretrain epoch") for e in epochs)


@pytest.mark.slow
def test_pretrain_per_seed_caches_each_seed(tmp_path, pretrain_cache_dir, one_thread):
    cfg = tiny.config(seeds=2, pretrain_per_seed=True, baseline=False)
    first, _, _ = run(tmp_path, "a", cfg)
    assert len(entries(pretrain_cache_dir)) == 2
    second, lines, epochs = run(tmp_path, "b", cfg)
    assert [s["pretrain"]["cache"]["hit"] for s in second["per_seed"]] == [True, True]
    assert not any(e.startswith("pretrain") for e in epochs)
    assert any(line.startswith("pretrain-seed1: reused cache entry") for line in lines)
    assert [s["finetune"]["test_loss"] for s in second["per_seed"]] == \
        [s["finetune"]["test_loss"] for s in first["per_seed"]]
    assert (tmp_path / "b" / "checkpoints" / "pretrain-seed1.pt").exists()
    assert records(tmp_path / "b", "pretrain-seed1") == records(tmp_path / "a", "pretrain-seed1")


def _damage(entry: Path, damage: str) -> None:
    """One way an entry can be wrong; each is recomputed with one warning line (hostile-input cases)."""
    import json

    import torch

    if damage == "truncate":
        (entry / "model.pt").write_bytes((entry / "model.pt").read_bytes()[:100])
    elif damage == "no-done":
        (entry / "done").unlink()
    elif damage == "wrong-key":  # an entry filed under another key: its weights came from another config
        key = json.loads((entry / "key.json").read_text())
        key["pretrain"]["optimizer"]["lr"] = 0.123  # not what the run asked for
        (entry / "key.json").write_text(json.dumps(key))
    elif damage == "predictions-a-list":
        (entry / "predictions.json").write_text("[1, 2]")
    elif damage == "no-test-accuracy":
        state = torch.load(entry / "model.pt", weights_only=True)
        del state["result"]["test_accuracy"]
        torch.save(state, entry / "model.pt")
    elif damage == "model-a-fifo":  # a read would block forever
        (entry / "model.pt").unlink()
        os.mkfifo(entry / "model.pt")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "no-done", "wrong-key", "predictions-a-list", "no-test-accuracy",
                                    "model-a-fifo"])
def test_a_corrupt_entry_is_recomputed(tmp_path, pretrain_cache_dir, one_thread, damage):
    first, _, _ = run(tmp_path, "a")
    entry = Path(first["pretrain"]["cache"]["path"])
    _damage(entry, damage)
    second, lines, epochs = run(tmp_path, "b")
    warned = [line for line in lines if "unreadable cache entry" in line]
    assert len(warned) == 1 and warned[0].startswith(f"pretrain: ignoring unreadable cache entry {entry.name[:12]}")
    assert second["pretrain"]["cache"] == first["pretrain"]["cache"]  # recomputed and stored again
    assert any(e.startswith("pretrain epoch") for e in epochs)
    assert second["finetune"]["test_loss"] == first["finetune"]["test_loss"]
    third, _, _ = run(tmp_path, "c")
    assert third["pretrain"]["cache"]["hit"] is True


@pytest.mark.slow
def test_an_unwritable_cache_only_costs_the_reuse(tmp_path, monkeypatch, one_thread):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SFT_CACHE_DIR", str(blocker))
    summary, lines, epochs = run(tmp_path, "a")  # the run goes on, pretraining as without a cache
    assert "cache" not in summary["pretrain"] and any(e.startswith("pretrain epoch") for e in epochs)
    warned = [line for line in lines if "not using the pretrain cache" in line]
    assert len(warned) == 1 and str(blocker) in warned[0], lines


def test_no_cache_flag_and_a_bad_value(tmp_path, pretrain_cache_dir):
    path = tiny.write_yaml(tmp_path / "cfg.yaml", tiny.config(finetune=False))
    tiny.ok(tiny.invoke("run", path, "--out", tmp_path / "a", "--no-cache"))
    assert entries(pretrain_cache_dir) == []
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["pretrain"].get("cache") is None
    line = tiny.one_error_line(tiny.invoke("run", path, "--out", tmp_path / "b", "--set", "pretrain_cache=maybe"))
    assert "pretrain_cache must be true or false" in line


@pytest.mark.slow
def test_two_processes_at_once_compute_one_entry(tmp_path, pretrain_cache_dir, monkeypatch):
    """Both start while the entry's lock is held (as by a third run computing it), both wait; then one
    computes and stores, the other reuses."""
    import fcntl

    cfg = tiny.config(pretrain={"epochs": 3}, baseline=False)
    with monkeypatch.context() as mp:  # the key, from a run with a cache of its own
        mp.setenv("SFT_CACHE_DIR", str(tmp_path / "probe-cache"))
        key = sftcore.run(cfg, out=tmp_path / "probe")["pretrain"]["cache"]["key"]
    path = tiny.write_yaml(tmp_path / "cfg.yaml", cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    (pretrain_cache_dir / "pretrain").mkdir()
    with open(pretrain_cache_dir / "pretrain" / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [subprocess.Popen([sys.executable, "-m", "sftcore", "run", str(path), "--out", str(tmp_path / name)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for name in ("a", "b")]
        waiting = f"pretrain: another run is computing cache entry {key[:12]}; waiting for it\n"
        for p in procs:  # each says it waits, then blocks
            assert waiting in iter(p.stdout.readline, ""), p.communicate()
    outs = [p.communicate(timeout=300) for p in procs]  # the lock is released: they go on
    assert [p.returncode for p in procs] == [0, 0], outs
    assert entries(pretrain_cache_dir) == [pretrain_cache_dir / "pretrain" / key]
    assert not [p for p in (pretrain_cache_dir / "pretrain").iterdir() if p.name.startswith(".")]  # no leftovers
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("a", "b")]
    assert sorted(s["pretrain"]["cache"]["hit"] for s in summaries) == [False, True]
    assert summaries[0]["finetune"]["test_loss"] == summaries[1]["finetune"]["test_loss"]


@pytest.mark.slow
def test_a_run_with_callbacks_neither_reads_nor_writes_the_cache(tmp_path, pretrain_cache_dir, one_thread):
    """A callback must see every pretrain epoch (and early stopping changes the pretraining)."""
    run(tmp_path, "a")  # fills the cache
    stored = entries(pretrain_cache_dir)
    with_cb = {**CFG, "callbacks": [{"name": "early_stopping", "patience": 5}]}
    summary, lines, epochs = run(tmp_path, "b", cfg=with_cb)
    assert "cache" not in summary["pretrain"] or summary["pretrain"]["cache"] is None
    assert "pretrain: not using the pretrain cache: the run has callbacks, which see the pretraining" in lines
    assert any(e.startswith("pretrain epoch") for e in epochs)  # it pretrained, and the callback saw it
    assert entries(pretrain_cache_dir) == stored


def test_the_cache_lock_never_follows_a_link(tmp_path):
    """As the run lock: a link planted at <key>.lock is not followed (its target is neither created nor locked)."""
    from sftcore._run.pretrain_cache import Entry

    entry = Entry("k" * 64, {"format": 1}, root=tmp_path)
    entry.root.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    (entry.root / f"{entry.key}.lock").symlink_to(target)
    assert entry.problem() is not None and not target.exists()
