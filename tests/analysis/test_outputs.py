"""`sft plot`, `sft predict` and `sft compare` on one real tiny run (made once for the module, ~2 s)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from torchvision.io import decode_image, encode_jpeg, read_file, write_png

import tiny
from sftcore._config import resolve as cfgmod
from sftcore._plugins.manager import get_registry

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work (reported, not hidden
# from users: the CLI never shows DeprecationWarnings)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


from tiny import invoke, ok, one_error_line  # noqa: E402  (shared with test_load.py)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from sftcore._run.runner import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("outputs") / "run"
        # trained enough to predict all five classes: agreeing with predictions.json then means something
        run(tiny.config(pretrain={"epochs": 3}, finetune={"epochs": 10, "dataset": tiny.shapes("target"),
                                                          "optimizer": {"name": "sgd", "lr": 0.05}}), out=out)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def test_split(run_dir):
    """The finetune stage's test split, rebuilt from the run's config (same seed: same images, same order)."""
    cfg = cfgmod.resolve(cfgmod.load(run_dir / "config.yaml"), get_registry())
    _, _, data = tiny.stage_data(cfg, "finetune")
    return data.test


def copy_run(run_dir, dest, *, files=("config.yaml",), edit=None):
    """A run directory made of some of ``run_dir``'s files; ``edit`` changes the config dict."""
    dest.mkdir(parents=True)
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / name, dest / name)
    if edit is not None:
        cfg = yaml.safe_load((dest / "config.yaml").read_text())
        edit(cfg)
        (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


@pytest.mark.slow
def test_importing_the_cli_imports_no_heavy_library():
    code = ("import sys, sftcore.cli; "
            "print([m for m in ('torch', 'torchvision', 'timm', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- plot
@pytest.mark.slow
def test_plot_writes_decodable_pngs_and_the_confusion_counts(run_dir, tmp_path):
    out = tmp_path / "figs"
    printed = ok(invoke("plot", run_dir, "--out", out)).splitlines()
    names = ["pretrain-curves.png", "finetune-curves.png", "baseline-curves.png", "finetune-confusion.png",
             "finetune-confusion.csv", "finetune-per-class.csv"]
    assert printed == [str(out / n) for n in names]
    for name in names[:-2]:
        image = decode_image(read_file(str(out / name)))
        assert image.dtype == torch.uint8 and image.shape[0] in (3, 4) and min(image.shape[1:]) >= 300
        assert image.float().std() > 0  # something was drawn
    rows = list(csv.reader((out / "finetune-confusion.csv").open()))
    preds = json.loads((run_dir / "predictions" / "finetune.json").read_text())
    assert rows[0][1:] == preds["classes"] and [r[0] for r in rows[1:]] == preds["classes"]
    counts = [[int(v) for v in r[1:]] for r in rows[1:]]
    assert sum(map(sum, counts)) == len(preds["targets"])
    for t, p in zip(preds["targets"], preds["predicted"]):
        counts[t][p] -= 1
    assert not any(map(any, counts))  # every example counted in its (true, predicted) cell


@pytest.mark.slow
def test_plot_defaults_to_run_dir_plots(run_dir):
    printed = ok(invoke("plot", run_dir)).splitlines()
    assert len(printed) == 6 and all(line.startswith(str(run_dir / "plots")) for line in printed)


def test_confusion_matrix_names_the_classes_up_to_30_and_stays_readable_at_100():
    import numpy as np

    from sftcore._analysis import plots

    small = plots.confusion_figure("finetune", ["star", "moon", "sun"], np.eye(3, dtype=np.int64) * 4)
    ax = small.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["star", "moon", "sun"]
    assert sorted(t.get_text() for t in ax.texts) == ["4", "4", "4"]  # counts in the cells
    big = plots.confusion_figure("finetune", [f"class {i}" for i in range(100)], np.ones((100, 100), dtype=np.int64))
    ax = big.axes[0]
    assert not any(t.get_text().startswith("class") for t in ax.get_xticklabels() + ax.get_yticklabels())
    assert not ax.texts and max(big.get_size_inches()) <= 17.5
    assert ax.images[0].get_array().sum() == pytest.approx(100)  # rows normalised


@pytest.mark.slow
def test_plot_without_matplotlib_says_how_to_install_it(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    line = one_error_line(invoke("plot", run_dir))
    assert line == "sft: error: `sft plot` needs matplotlib: pip install 'sftcore[plot]'"


@pytest.mark.slow
def test_plot_skips_a_metrics_line_cut_short_but_not_one_broken_earlier(run_dir, tmp_path):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    cut = copy_run(run_dir, tmp_path / "cut")
    (cut / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:20])  # killed mid-write
    assert len(ok(invoke("plot", cut)).splitlines()) == 3  # curves only: no predictions yet
    broken = copy_run(run_dir, tmp_path / "broken")
    (broken / "metrics.jsonl").write_text(lines[0][:20] + "\n" + "\n".join(lines) + "\n")
    assert "metrics.jsonl' line 1 is not valid JSON" in one_error_line(invoke("plot", broken))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "not a run", "nothing yet"])
def test_plot_errors(run_dir, tmp_path, case):
    target = {"missing": tmp_path / "nope", "not a run": tmp_path}.get(case)
    if case == "nothing yet":
        target = copy_run(run_dir, tmp_path / "fresh")
    one_error_line(invoke("plot", target))


# --------------------------------------------------------------------------- predict
def write_test_images(test_split, folder, every=7) -> tuple[list, list]:
    folder.mkdir(exist_ok=True)
    index = list(range(0, len(test_split), every))
    paths = []
    for i in index:
        paths.append(folder / f"test-{i:04d}.png")
        write_png(test_split.images[i], str(paths[-1]))
    return index, paths


@pytest.mark.slow
def test_predict_agrees_with_the_runs_own_test_predictions(run_dir, test_split, tmp_path):
    preds = json.loads((run_dir / "predictions" / "finetune.json").read_text())
    index, paths = write_test_images(test_split, tmp_path / "images", every=1)
    assert preds["targets"] == test_split.labels.tolist()  # same examples, same order
    assert len(set(preds["predicted"])) >= 4  # a transform off by a little would change some predictions
    out = json.loads(ok(invoke("predict", run_dir, *paths, "--json", "--top-k", 3)))
    assert [o["image"] for o in out] == list(map(str, paths))
    assert [o["top"][0]["class"] for o in out] == [preds["classes"][preds["predicted"][i]] for i in index]
    for o in out:
        probs = [t["probability"] for t in o["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert {t["class"] for t in o["top"]} <= set(preds["classes"])


@pytest.mark.slow
def test_predict_prints_top_k_per_image(run_dir, test_split, tmp_path):
    _, paths = write_test_images(test_split, tmp_path / "images", every=500)
    lines = ok(invoke("predict", run_dir, *paths, "--top-k", 2)).splitlines()
    assert len(lines) == 3 * len(paths) and lines[0] == str(paths[0])
    assert lines[1].strip().endswith(tuple(tiny.TARGET_CLASSES)) and lines[1].strip()[0].isdigit()
    assert len(ok(invoke("predict", run_dir, paths[0], "--top-k", 99)).splitlines()) == 1 + 5  # at most all classes


@pytest.mark.slow
def test_predict_reads_other_sizes_and_formats(run_dir, test_split, tmp_path):
    big = torch.nn.functional.interpolate(test_split.images[:1].float(), size=(48, 64)).round().to(torch.uint8)[0]
    (tmp_path / "big.jpg").write_bytes(encode_jpeg(big).numpy().tobytes())
    write_png(big[:1], str(tmp_path / "grey.png"))
    from PIL import Image  # torchvision writes no alpha channel

    rgba = torch.cat([big, torch.full_like(big[:1], 128)]).permute(1, 2, 0).numpy()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = json.loads(ok(invoke("predict", run_dir, tmp_path / "big.jpg", tmp_path / "grey.png", tmp_path / "rgba.png",
                               "--json", "--top-k", 1)))
    assert len(out) == 3 and all(o["top"][0]["class"] in tiny.TARGET_CLASSES for o in out)


@pytest.mark.slow
def test_predict_other_stages(run_dir, test_split, tmp_path):
    preds = json.loads((run_dir / "predictions" / "pretrain.json").read_text())
    pretrain = cfgmod.resolve(cfgmod.load(run_dir / "config.yaml"), get_registry())
    _, _, data = tiny.stage_data(pretrain, "pretrain")
    index, paths = write_test_images(data.test, tmp_path / "source", every=25)
    out = json.loads(ok(invoke("predict", run_dir, *paths, "--stage", "pretrain", "--json", "--top-k", 1)))
    assert [o["top"][0]["class"] for o in out] == [preds["classes"][preds["predicted"][i]] for i in index]


@pytest.mark.slow
def test_predict_checkpoint_without_recorded_shapes_uses_the_backbone_input(run_dir, test_split, tmp_path):
    old = copy_run(run_dir, tmp_path / "old")
    state = torch.load(run_dir / "checkpoints" / "finetune.pt", weights_only=True)
    del state["image_shape"], state["input_shape"]
    (old / "checkpoints").mkdir()
    torch.save(state, old / "checkpoints" / "finetune.pt")
    preds = json.loads((run_dir / "predictions" / "finetune.json").read_text())
    index, paths = write_test_images(test_split, tmp_path / "images", every=50)
    out = json.loads(ok(invoke("predict", old, *paths, "--json", "--top-k", 1)))
    assert [o["top"][0]["class"] for o in out] == [preds["classes"][preds["predicted"][i]] for i in index]


@pytest.mark.slow
@pytest.mark.parametrize("case,expect", [
    ("missing image", "not found"),
    ("text file", "cannot read image"),
    ("truncated png", "cannot read image"),
    ("folder", "holds no image files"),  # a folder is read (recursively); one without images is refused
    ("not a run", "not a run directory"),
    ("no checkpoint", "no finished finetune stage"),
    ("checkpoints off", "checkpoints: false"),
    ("corrupt checkpoint", "truncated or corrupt"),
    ("no such stage", "has no baseline stage"),
    ("bad stage", "--stage must be one of"),
    ("top-k 0", "--top-k must be 1 or more"),
])
def test_predict_errors(run_dir, test_split, tmp_path, case, expect):
    _, (good,) = write_test_images(test_split, tmp_path / "images", every=10_000)
    run, image, extra = run_dir, good, []
    if case == "missing image":
        image = tmp_path / "nope.png"
    elif case == "text file":
        image = tmp_path / "notes.png"
        image.write_text("not an image")
    elif case == "truncated png":
        image = tmp_path / "cut.png"
        image.write_bytes(good.read_bytes()[:60])
    elif case == "folder":
        image = tmp_path / "empty"
        image.mkdir()
    elif case == "not a run":
        run = tmp_path
    elif case == "no checkpoint":
        run = copy_run(run_dir, tmp_path / "unfinished")
    elif case == "checkpoints off":
        run = copy_run(run_dir, tmp_path / "off", edit=lambda c: c.update(checkpoints=False))
    elif case == "corrupt checkpoint":
        run = copy_run(run_dir, tmp_path / "corrupt")
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "finetune.pt").write_bytes((run_dir / "checkpoints" / "finetune.pt").read_bytes()[:99])
    elif case == "no such stage":
        run = copy_run(run_dir, tmp_path / "nobase", edit=lambda c: c.update(baseline=None))
        extra = ["--stage", "baseline"]
    elif case == "bad stage":
        extra = ["--stage", "fine"]
    elif case == "top-k 0":
        extra = ["--top-k", "0"]
    assert expect in one_error_line(invoke("predict", run, image, *extra))


@pytest.mark.slow
@pytest.mark.parametrize("stage,classes", [("pretrain", 10), ("finetune", 5)])
def test_predictions_keep_the_top_k_classes_and_probabilities(run_dir, stage, classes):
    preds = json.loads((run_dir / "predictions" / f"{stage}.json").read_text())
    n, k = len(preds["targets"]), min(5, classes)
    assert len(preds["classes"]) == classes and len(preds["top_k"]) == len(preds["top_k_probability"]) == n > 0
    for top, probs, predicted in zip(preds["top_k"], preds["top_k_probability"], preds["predicted"]):
        assert len(top) == len(probs) == k and len(set(top)) == k and all(0 <= c < classes for c in top)
        assert top[0] == predicted
        assert probs == sorted(probs, reverse=True) and all(0 <= q <= 1 for q in probs) and sum(probs) <= 1 + 1e-6
        assert all(q == round(q, 6) for q in probs)
    top1 = sum(p == t for p, t in zip(preds["predicted"], preds["targets"])) / n
    top5 = sum(t in top for top, t in zip(preds["top_k"], preds["targets"])) / n
    assert top5 >= top1
    if classes <= 5:
        assert top5 == 1.0  # every class is in the top k


@pytest.mark.slow
def test_predict_needs_only_the_backbones_plugin(run_dir, test_split, tmp_path):
    import sftcore

    def elsewhere(cfg):  # as if trained with plugins not installed here
        cfg["finetune"]["regularizers"] = [{"name": "delta_not_installed"}]
        cfg["finetune"]["dataset"] = {"name": "nowhere_dataset"}
        cfg["pretrain"]["dataset"] = {"name": "nowhere_dataset"}

    run = copy_run(run_dir, tmp_path / "elsewhere", files=("config.yaml", "checkpoints/finetune.pt"), edit=elsewhere)
    _, paths = write_test_images(test_split, tmp_path / "images", every=5)
    before = [p.top for p in sftcore.load(run_dir, "finetune").predict([str(p) for p in paths])]
    assert [p.top for p in sftcore.load(run, "finetune").predict([str(p) for p in paths])] == before


@pytest.mark.slow
def test_predict_without_the_backbones_plugin_is_one_line_naming_it(run_dir, test_split, tmp_path):
    from sftcore.errors import SftError
    import sftcore

    # the model file records its backbone entry and plugin (config.yaml is not read for it)
    run = copy_run(run_dir, tmp_path / "other", files=("config.yaml", "checkpoints/finetune.pt"))
    state = torch.load(run / "checkpoints" / "finetune.pt", weights_only=True)
    state["backbone"] = {"name": "no_such_backbone"}
    state["backbone_plugin"] = {"plugin": "other-plugin", "distribution": "sft-other"}
    torch.save(state, run / "checkpoints" / "finetune.pt")
    with pytest.raises(SftError) as err:
        sftcore.load(run, "finetune")
    message = str(err.value)
    assert "\n" not in message and "no_such_backbone" in message and "pip install sft-other" in message
    _, (image,) = write_test_images(test_split, tmp_path / "images", every=10_000)
    assert "no_such_backbone" in one_error_line(invoke("predict", run, image))
    # an older model file without them: the run's config.yaml names the backbone
    old = copy_run(run_dir, tmp_path / "old", files=("config.yaml", "checkpoints/finetune.pt"),
                   edit=lambda c: c.update(backbone={"name": "no_such_backbone"}))
    state = torch.load(old / "checkpoints" / "finetune.pt", weights_only=True)
    for key in ("backbone", "run_seed", "backbone_plugin"):
        del state[key]
    torch.save(state, old / "checkpoints" / "finetune.pt")
    line = one_error_line(invoke("predict", old, image))
    assert "no_such_backbone" in line and "install" in line


# --------------------------------------------------------------------------- compare
@pytest.mark.slow
def test_compare_lists_exactly_the_differing_keys(run_dir, tmp_path):
    def edit(cfg):
        cfg["seed"] = 7
        cfg["finetune"]["optimizer"]["lr"] = 0.5
        cfg["finetune"]["regularizers"] = [{"name": "l2", "alpha": 0.01}]

    other = copy_run(run_dir, tmp_path / "other", files=("config.yaml", "summary.json"), edit=edit)
    unfinished = copy_run(run_dir, tmp_path / "unfinished", edit=lambda c: c.update(seed=8))
    base_regs = yaml.safe_load((run_dir / "config.yaml").read_text())["finetune"]["regularizers"]
    result = json.loads(ok(invoke("compare", run_dir, other, unfinished, "--json")))
    assert base_regs == [], "the tiny config has no finetune regularizers"
    assert result["differing_keys"] == ["seed", "finetune.optimizer.lr", "finetune.regularizers",
                                        "finetune.regularizers.0.name", "finetune.regularizers.0.alpha"]
    first, second, third = result["runs"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert first["finished"] and second["finished"] and not third["finished"]
    assert first["config"] == {"seed": 0, "finetune.optimizer.lr": 0.05, "finetune.regularizers": []}
    assert second["config"] == {"seed": 7, "finetune.optimizer.lr": 0.5, "finetune.regularizers.0.name": "l2",
                                "finetune.regularizers.0.alpha": 0.01}
    assert first["test_accuracy"] == {s: summary[s]["test_accuracy"] for s in ("pretrain", "finetune", "baseline")}
    assert (first["transfer_gain"], first["transfer_gain_ci95"]) == (summary["transfer_gain"],
                                                                      summary["transfer_gain_ci95"])
    assert third["test_accuracy"] == {"pretrain": None, "finetune": None, "baseline": None}

    # the table groups by the varied keys (seed only seeds a run), one row per cell; the unfinished run is hidden
    table = ok(invoke("compare", run_dir, other, unfinished)).splitlines()
    assert table[0].split()[:4] == ["lr", "regularizers", "finetune", "%"]
    assert table[2].split()[:3] == ["0.05", "[]", f"{100 * summary['finetune']['test_accuracy']:.1f}"]
    assert table[3].split()[:2] == ["0.5", "[l2(alpha=0.01)]"]
    assert f"{summary['transfer_gain']:+.1f}" in table[2]
    assert table[4] == "keys: lr = finetune.optimizer.lr, regularizers = finetune.regularizers"
    assert table[-1] == "1 failed/unfinished run(s) hidden (--all lists them)"
    assert ok(invoke("compare", run_dir, other, unfinished, "--all")).splitlines()[-1] == f"unfinished: {unfinished}"


@pytest.mark.slow
def test_compare_identical_runs(run_dir, tmp_path):
    again = copy_run(run_dir, tmp_path / "again", files=("config.yaml", "summary.json"))
    out = ok(invoke("compare", run_dir, again, run_dir)).splitlines()  # a run given twice counts once
    assert out[0].split()[:2] == ["finetune", "%"] and out[2].endswith("0 (2 results)")
    assert out[3] == "the configs are identical: their seeds are pooled"


@pytest.mark.slow
def test_compare_errors(run_dir, tmp_path):
    assert "not a run directory" in one_error_line(invoke("compare", run_dir, tmp_path))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("seed: [1,\n")
    assert "not valid YAML" in one_error_line(invoke("compare", run_dir, tmp_path / "bad"))
    broken = copy_run(run_dir, tmp_path / "broken")
    (broken / "summary.json").write_text('{"name": ')
    assert "summary.json' is not valid JSON" in one_error_line(invoke("compare", broken))


def test_flatten_indexes_lists_like_set():
    from sftcore._analysis.compare import flatten

    assert flatten({"a": {"b": [1, {"c": None}], "d": {}}, "e": []}) == {"a.b.0": 1, "a.b.1.c": None, "a.d": {},
                                                                        "e": []}
