"""`sft rank` (sftcore/_rank, docs/ranking.md): candidate backbones scored on the finetune stage's few-label
training images before any training; bad candidates are one line each and never stop the others."""

from __future__ import annotations

import csv
import re
import json

import pytest
import torch
from torch import nn

import tiny
import sftcore
from sftcore import hookimpl
from sftcore._rank.rank import SCORE_KEYS
from sftcore.api import Backbone

pytestmark = pytest.mark.usefixtures("one_thread")

FLOW = "{name: lenet, img_size: 20}"
BAD = "{name: no_such_backbone}"
ROW_KEYS = {"candidate", *SCORE_KEYS}


def target_config(**finetune) -> dict:
    """The tiny config's finetune stage only (5 classes, 6 labels each): nothing to pretrain."""
    return tiny.config(pretrain=False, baseline=False, finetune=finetune or True)


def test_candidates_are_ranked_best_first_and_a_bad_one_is_one_line(tmp_path):
    cands = [{"name": "lenet", "img_size": 16}, FLOW, BAD, {"name": "lenet", "img_size": 24}]
    result = sftcore.rank(target_config(), candidates=cands, out=tmp_path / "r")
    rows = result["rows"]
    assert [r["candidate"] for r in rows[-1:]] == [BAD]
    assert rows[-1]["error"].count("\n") == 0 and "no_such_backbone" in rows[-1]["error"]
    good = rows[:-1]
    assert sorted(r["candidate"] for r in good) == sorted(["{name: lenet, img_size: 16}", FLOW,
                                                            "{name: lenet, img_size: 24}"])
    assert [r["logme"] for r in good] == sorted((r["logme"] for r in good), reverse=True)
    assert [r["rank"] for r in rows] == [1, 2, 3, None]
    assert all(r["leep"] is None and r["nce"] is None for r in rows)  # random lenets: no source head
    written = json.loads((tmp_path / "r" / "rank.json").read_text())
    assert written["rows"] == rows and written["by"] == "logme"
    assert all(ROW_KEYS <= set(r) for r in written["rows"])
    table = list(csv.DictReader((tmp_path / "r" / "rank.csv").open()))
    assert [r["candidate"] for r in table] == [r["candidate"] for r in rows]


def test_the_features_are_the_finetune_stages_training_images(tmp_path):
    """labels_per_class x classes with no validation hold-out; with the default hold-out, what `sft run`
    trains on (the same subset and hold-out as the Pipeline draws for the first seed)."""
    all_kept = sftcore.rank(target_config(dataset=tiny.shapes("target", labels_per_class=6, val_fraction=0)),
                            candidates=["lenet"], out=tmp_path / "a", scores="logme")
    assert all_kept["rows"][0]["examples"] == 6 * len(tiny.TARGET_CLASSES) == all_kept["target"]["examples"]
    cfg = target_config()
    held = sftcore.rank(cfg, candidates=["lenet"], out=tmp_path / "b", scores="logme")
    from sftcore._config import resolve as cfgmod

    _, _, data = tiny.stage_data(cfgmod.resolve(cfgmod.load(cfg)), "finetune")
    assert held["rows"][0]["examples"] == len(data.train) < 6 * len(tiny.TARGET_CLASSES)


def test_by_another_score_and_a_subset_of_scores(tmp_path):
    result = sftcore.rank(target_config(), candidates=["lenet", FLOW], scores="hscore,ncm_accuracy",
                          by="ncm_accuracy", out=tmp_path)
    assert result["scores"] == ["hscore", "ncm_accuracy"]
    values = [r["ncm_accuracy"] for r in result["rows"]]
    assert values == sorted(values, reverse=True)
    assert all(r["logme"] is None for r in result["rows"])  # not asked for: null


class FeatureMaps:
    """A plugin backbone whose features are not 2-D."""

    @hookimpl
    def register_backbones(self, register):
        register("t_rank_maps", maps_backbone, "features are [N, C, H, W]")


def maps_backbone(ctx) -> Backbone:
    return Backbone(features=nn.Conv2d(3, 4, 3), num_features=4, input_size=(3, 16, 16))


def test_features_that_are_not_2d_are_one_line(plugin, tmp_path):
    plugin(FeatureMaps(), "t-rank-maps")
    result = sftcore.rank(target_config(), candidates=["t_rank_maps", "lenet"], out=tmp_path, scores="logme")
    first, last = result["rows"]
    assert first["candidate"] == "lenet" and first["logme"] is not None
    assert "not [examples, features]" in last["error"] and "\n" not in last["error"]


def test_the_cli_prints_the_table_and_writes_the_files(tmp_path):
    config = tiny.write_yaml(tmp_path / "c.yaml", target_config())
    out = tmp_path / "out"
    result = tiny.invoke("rank", config, "--candidate", "lenet", "--candidate", FLOW, "--candidate", BAD,
                         "--scores", "logme,leep", "--out", out)
    text = tiny.ok(result)
    lines = text.splitlines()
    assert lines[0].startswith("ranked by logme") and "logme" in lines[1] and "leep" in lines[1]
    assert lines[2].split()[0] == "1" and "n/a" in lines[2]
    assert lines[-1].split()[0] == "-" and "error:" in lines[-1]
    assert (out / "rank.json").is_file() and (out / "rank.csv").is_file()
    again = tiny.invoke("rank", config, "--candidate", "lenet", "--out", out)
    assert "already exists; pass --force" in tiny.one_error_line(again)
    tiny.ok(tiny.invoke("rank", config, "--candidate", "lenet", "--out", out, "--force"))


@pytest.mark.parametrize("args,message", [
    ([], "no candidates"),
    (["--candidate", "lenet", "--by", "logmee"], "--by logmee: not among the scores computed"),
    (["--candidate", "lenet", "--scores", "logme,lepe"], "unknown score 'lepe' (did you mean 'leep'?)"),
    (["--candidate", "lenet", "--scores", "leep", "--by", "logme"], "--by logme"),
    (["--candidate", "lenet", "--seed", "x"], "--seed must be an integer"),
    (["--candidate", "lenet", "--top", "2"], "--top K says how many candidates --sweep finetunes"),
    (["--candidate", "lenet", "--sweep", "--top", "0"], "--top must be a whole number from 1 to 100"),
    (["--candidate", "lenet", "--sweep", "--top", "x"], "--top must be an integer"),
])
def test_user_errors_are_one_line_before_any_work(tmp_path, args, message, monkeypatch):
    from sftcore._rank import rank as rankmod

    monkeypatch.setattr(rankmod, "measure", lambda *a: pytest.fail("a candidate was measured"))
    config = tiny.write_yaml(tmp_path / "c.yaml", target_config())
    line = tiny.one_error_line(tiny.invoke("rank", config, *args, "--out", tmp_path / "o"))
    assert message in line


def test_out_that_is_a_file_and_a_config_without_finetune(tmp_path):
    config = tiny.write_yaml(tmp_path / "c.yaml", target_config())
    (tmp_path / "file").write_text("x")
    assert "is a file" in tiny.one_error_line(tiny.invoke("rank", config, "--candidate", "lenet",
                                                          "--out", tmp_path / "file"))
    source_only = tiny.write_yaml(tmp_path / "s.yaml", tiny.config(finetune=False))
    assert "needs a finetune stage" in tiny.one_error_line(tiny.invoke("rank", source_only, "--candidate", "lenet"))


# ---------------------------------------------------------------------------------------------- a finished run
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run that pretrained (its checkpoints/pretrain.pt holds the backbone and the source head)."""
    out = tmp_path_factory.mktemp("rank-run") / "run"
    torch.set_num_threads(1)
    sftcore.run(tiny.config(baseline=False), out=out)
    return out


@pytest.mark.slow
def test_a_finished_run_is_a_candidate_with_its_source_head(finished_run, tmp_path):
    weights = finished_run / "checkpoints" / "pretrain.pt"
    result = sftcore.rank(target_config(), candidates=[str(finished_run), str(weights), "lenet",
                                                       str(tmp_path)], out=tmp_path / "r")
    by_name = {r["candidate"]: r for r in result["rows"]}
    run_row, file_row = by_name[str(finished_run)], by_name[str(weights)]
    assert run_row["kind"] == "run" and run_row["source_head"] and run_row["error"] is None
    assert run_row["backbone"]["weights"] == str(weights)
    assert run_row["leep"] is not None and run_row["nce"] is not None  # the pretrain head's 10 source classes
    assert all(file_row[k] == pytest.approx(run_row[k]) for k in SCORE_KEYS)  # the config's lenet, same weights
    assert by_name["lenet"]["leep"] is None
    assert "not a run directory" in by_name[str(tmp_path)]["error"]
    assert result["rows"][-1]["candidate"] == str(tmp_path)


@pytest.mark.slow
def test_top_k_sweep_finetunes_the_best_candidates_over_the_seeds(tmp_path):
    """`sft rank --sweep --top 1`: the best candidate's backbone entry is the one cell of a sweep of the config
    without its pretraining, run into OUT/sweep, so the ranking is checked by finetuning in one command."""
    import yaml

    cfg = tiny.config(baseline=False, finetune={"epochs": 1})
    config = tiny.write_yaml(tmp_path / "c.yaml", cfg)
    out = tmp_path / "out"
    result = tiny.invoke("rank", config, "--candidate", FLOW, "--candidate", "{name: lenet, img_size: 24}",
                         "--candidate", BAD, "--sweep", "--top", "1", "--out", out)
    assert result.exit_code == 0, result.output
    ranked = json.loads((out / "rank.json").read_text())["rows"]
    spec = yaml.safe_load((out / "sweep.yaml").read_text())
    assert spec["grid"] == {"backbone": [ranked[0]["backbone"]]} and spec["base"]["pretrain"] is None
    cells = json.loads((out / "sweep" / "sweep.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["finished"]
    assert (out / "sweep" / cells[0]["run_dir"] / "summary.json").is_file()


def test_the_configs_rank_list_is_the_default_candidates(tmp_path):
    """Issue 25: candidates listed under ``rank:`` in the config; --candidate replaces them; `sft run` ignores it."""
    cfg = {**target_config(), "rank": ["{name: lenet, img_size: 16}", {"name": "lenet", "img_size": 20}, BAD]}
    config = tiny.write_yaml(tmp_path / "c.yaml", cfg)
    tiny.ok(tiny.invoke("rank", config, "--out", tmp_path / "a"))
    rows = json.loads((tmp_path / "a" / "rank.json").read_text())["rows"]
    assert sorted(r["candidate"] for r in rows) == sorted(["{name: lenet, img_size: 16}", FLOW, BAD])
    tiny.ok(tiny.invoke("rank", config, "--candidate", "lenet", "--out", tmp_path / "b"))
    assert [r["candidate"] for r in json.loads((tmp_path / "b" / "rank.json").read_text())["rows"]] == ["lenet"]


@pytest.mark.parametrize("value,message", [
    ("lenet", "rank must be a list"),
    ([3], "rank[0] must be a run directory"),
    (["lenet", {"img_size": 3}], "rank[1] must be a run directory"),
    ([" "], "rank[0] must be"),
    (["lenet"] * 1001, "rank must be a list of at most 1000 candidates"),
])
def test_a_bad_rank_list_is_a_config_error(value, message):
    from sftcore._config.resolve import resolve
    from sftcore.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve({**target_config(), "rank": value})
    assert resolve({**target_config(), "rank": None})["rank"] == []


def test_a_relative_run_directory_or_weights_file_becomes_an_absolute_weights_path(tmp_path, monkeypatch):
    """rank.json and --sweep's sweep.yaml are read from anywhere: a candidate's weights path must not depend on
    the directory `sft rank` ran in."""
    from sftcore._rank.candidates import parse

    run = tmp_path / "runs" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    tiny.write_yaml(run / "config.yaml", {"name": "r1", "backbone": {"name": "lenet", "img_size": 16}})
    (run / "checkpoints" / "pretrain.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    from_run = parse("runs/r1", {"name": "lenet"})
    from_file = parse("runs/r1/checkpoints/pretrain.pt", {"name": "lenet"})
    assert from_run.error is None and from_file.error is None
    expected = str((run / "checkpoints" / "pretrain.pt").resolve())
    assert from_run.entry == {"name": "lenet", "img_size": 16, "weights": expected}
    assert from_file.entry["weights"] == expected and from_run.given == "runs/r1"
