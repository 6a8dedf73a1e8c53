"""`sftcore.load` and `sft predict` on it: a trained model used outside its run, with the backbone's plugin only."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
import torch
import yaml

import sftcore
import tiny
from sftcore import hookimpl
from sftcore.api import Regularizer
from sftcore.errors import SftError
from sftcore.testing import registered

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

NAMES = ["cat", "dog", "bird"]


from tiny import invoke, ok, one_error_line  # noqa: E402  (shared with test_outputs.py)


class ZeroPenalty(Regularizer):
    def penalty(self, step):
        return step.logits.sum() * 0.0


class ElsewherePlugin:
    """A dataset and a regularizer only the training machine had."""

    @hookimpl
    def register_datasets(self, register):
        register("t_load_pets", tiny.named_dataset, "random images named cat, dog, bird")

    @hookimpl
    def register_regularizers(self, register):
        register("t_load_zero", ZeroPenalty, "adds nothing")


def t_load_net(ctx, img_size: int = 16):
    """LeNet under another name, from a plugin."""
    from sftcore_plugins.backbones.lenet import lenet

    return lenet(ctx, img_size=img_size)


class BackbonePlugin:
    @hookimpl
    def register_backbones(self, register):
        register("t_load_net", t_load_net, "LeNet from a test plugin")


def small(threads=1):
    class Ctx:
        def __enter__(self):
            self.threads = torch.get_num_threads()
            torch.set_num_threads(threads)

        def __exit__(self, *exc):
            torch.set_num_threads(self.threads)

    return Ctx()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """pretrain (shapes) -> finetune on t_load_pets with t_load_zero, two seeds, baseline; the plugin is gone after."""
    out = tmp_path_factory.mktemp("load") / "run"
    data = {"name": "t_load_pets", "classes": NAMES, "train_per_class": 6, "test_per_class": 2, "size": 16}
    cfg = tiny.config(seeds=2, finetune={"dataset": data, "regularizers": ["t_load_zero"], "epochs": 1},
                      baseline={"name": "scratch", "epochs": 1})
    with small(), registered(ElsewherePlugin(), "t-load-elsewhere"):
        sftcore.run(cfg, out=out)
    return out


@pytest.fixture(scope="module")
def backbone_run(tmp_path_factory):
    """finetune only, with a backbone from a plugin registered at run time (unregistered afterwards)."""
    out = tmp_path_factory.mktemp("load-backbone") / "run"
    cfg = tiny.config(pretrain=False, baseline=False, backbone={"name": "t_load_net", "img_size": 16},
                      finetune={"epochs": 1})
    cfg["backbone"] = {"name": "t_load_net", "img_size": 16}
    with small(), registered(BackbonePlugin(), "t-load-backbones"):
        sftcore.run(cfg, out=out)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Image files of several sizes and modes, in a folder with a subfolder and a file that is no image."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(5)
    paths = []
    for i, (size, mode) in enumerate([((16, 16), "RGB"), ((30, 20), "RGB"), ((16, 16), "L"), ((50, 50), "RGB")]):
        pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=g).numpy()
        img = Image.fromarray(pixels, "RGB").convert(mode)
        sub = folder / "sub" if i == 3 else folder
        sub.mkdir(exist_ok=True)
        paths.append(sub / f"img{i}.png")
        img.save(paths[-1])
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden").mkdir()
    Image.new("RGB", (16, 16)).save(folder / ".hidden" / "skip.png")
    return folder, paths


def tops(predictions):
    return [[c for c, _ in p.top] for p in predictions]


def probs(predictions):
    """Every probability, flat (pytest.approx compares flat lists)."""
    return [p for q in predictions for _, p in q.top]


# --------------------------------------------------------------------------- sftcore.load
@pytest.mark.slow
def test_load_a_run_dir_default_stage(run_dir):
    m = sftcore.load(run_dir)
    assert m.stage == "finetune" and m.path == run_dir / "checkpoints" / "finetune.pt"
    assert m.classes == NAMES and m.input_shape == (3, 16, 16) and m.image_shape == (3, 16, 16)
    assert len(m.mean) == len(m.std) == 3 and str(m.device) == "cpu"
    assert isinstance(m.module, torch.nn.Module) and not m.module.training
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    batch = m.transform(x)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32
    with torch.no_grad():
        logits = m.module(batch)
    assert logits.shape == (2, 3)
    assert torch.allclose(logits, m.logits(x), atol=1e-5)
    expected = ((x.float() / 255 - torch.tensor(m.mean).view(1, 3, 1, 1)) / torch.tensor(m.std).view(1, 3, 1, 1))
    assert torch.allclose(batch, expected, atol=1e-4)  # the module's input: x / 255 normalised with mean/std
    assert "3 classes" in repr(m) and m.to("cpu") is m


@pytest.mark.slow
def test_other_stages_and_seeds(run_dir, images):
    _, paths = images
    first, other = sftcore.load(run_dir, "finetune"), sftcore.load(run_dir, "finetune-seed1")
    assert other.stage == "finetune-seed1" and other.classes == NAMES
    assert probs(first.predict(paths)) != probs(other.predict(paths))
    pre = sftcore.load(run_dir, "pretrain")
    assert pre.classes == tiny.SOURCE_CLASSES and len(pre.predict(paths[0], top_k=99)[0].top) == 10
    assert sftcore.load(run_dir, "baseline").stage == "baseline"


@pytest.mark.slow
def test_without_finetune_the_default_is_the_baseline(run_dir, tmp_path):
    copy = tmp_path / "nofinetune"
    (copy / "checkpoints").mkdir(parents=True)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["finetune"] = None
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copy(run_dir / "checkpoints" / "baseline.pt", copy / "checkpoints")
    assert sftcore.load(copy).stage == "baseline"


@pytest.mark.slow
def test_a_copied_model_file_loads_alone(run_dir, images, tmp_path):
    _, paths = images
    (tmp_path / "only").mkdir()
    alone = tmp_path / "only" / "pets.pt"
    shutil.copy(run_dir / "checkpoints" / "finetune.pt", alone)
    m = sftcore.load(alone)
    assert m.path == alone and m.classes == NAMES
    assert m.predict(paths) == sftcore.load(run_dir).predict(paths)
    cli_out = json.loads(ok(invoke("predict", alone, *paths, "--format", "json")))
    assert cli_out == [p.as_dict() for p in m.predict(paths)]


@pytest.mark.slow
def test_pil_uint8_and_paths_agree_with_sft_predict(run_dir, images):
    from PIL import Image
    from torchvision.io import ImageReadMode, read_image

    _, paths = images
    m = sftcore.load(run_dir)
    by_path = m.predict(paths, top_k=3)
    pil = [Image.open(p) for p in paths]
    tensors = [read_image(str(p), ImageReadMode.UNCHANGED) for p in paths]
    grey = tensors[2]
    assert grey.shape[0] == 1
    tensors[2] = grey[0]  # an [H, W] tensor
    for other in (m.predict(pil, top_k=3), m.predict(tensors, top_k=3)):
        assert tops(other) == tops(by_path)
        assert probs(other) == pytest.approx(probs(by_path), abs=1e-6)
        assert [p.image for p in other] == [f"<image {i}>" for i in range(len(paths))]
    cli_out = json.loads(ok(invoke("predict", run_dir, *paths, "--json", "--top-k", 3)))
    assert cli_out == [p.as_dict() for p in by_path]
    one = m.predict(paths[0])  # one image: a list of one
    assert len(one) == 1 and one[0].label == by_path[0].classes[0]
    assert one[0].probabilities[:3] == pytest.approx(by_path[0].probabilities, abs=1e-6)


@pytest.mark.slow
def test_predict_batches(run_dir, images, monkeypatch):
    from sftcore._inference import load as _load

    _, paths = images
    m = sftcore.load(run_dir)
    whole = m.predict(paths * 3)
    monkeypatch.setattr(_load, "BATCH", 2)
    calls = []
    real = m.module.forward
    monkeypatch.setattr(m.module, "forward", lambda x: calls.append(len(x)) or real(x))
    batched = m.predict(paths * 3)
    assert calls == [2] * 6
    assert tops(batched) == tops(whole) and probs(batched) == pytest.approx(probs(whole), abs=1e-6)
    assert m.predict([]) == []


@pytest.mark.slow
def test_bad_python_inputs_are_one_line(run_dir):
    m = sftcore.load(run_dir)
    for bad, match in [(torch.zeros(16, 16, 3, dtype=torch.uint8), "permute"), (torch.zeros(3, 8, 8), "uint8"),
                       (3.5, "cannot read"), ("/no/such.png", "not found")]:
        with pytest.raises(SftError, match=match) as err:
            m.predict(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(SftError, match="top_k"):
        m.predict(torch.zeros(3, 8, 8, dtype=torch.uint8), top_k=0)


# --------------------------------------------------------------------------- plugins
@pytest.mark.slow
def test_trained_with_plugins_not_installed_here(run_dir, images, sft):
    from sftcore._plugins.manager import get_registry

    _, paths = images
    registry = get_registry()
    assert "t_load_pets" not in registry.components["datasets"]
    assert "t_load_zero" not in registry.components["regularizers"]
    assert "t_load_pets" in (run_dir / "config.yaml").read_text()
    assert len(sftcore.load(run_dir).predict(paths)) == len(paths)
    # a fresh process: the plugins were never there
    done = sft("predict", run_dir, paths[0], "--format", "csv", "--top-k", "1")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["image", "rank", "class", "probability"] and rows[1][:3] == [str(paths[0]), "1",
                                                                                   rows[1][2]]
    assert rows[1][2] in NAMES


@pytest.mark.slow
def test_missing_backbone_plugin_is_one_line_naming_plugin_and_distribution(backbone_run, images, tmp_path):
    _, paths = images
    path = backbone_run / "checkpoints" / "finetune.pt"
    state = torch.load(path, weights_only=True)
    assert state["backbone_plugin"] == {"plugin": "t-load-backbones", "distribution": None}
    with pytest.raises(SftError) as err:
        sftcore.load(backbone_run)
    msg = str(err.value)
    assert "\n" not in msg and "t_load_net" in msg and "t-load-backbones" in msg and "registered at run time" in msg

    state["backbone_plugin"] = {"plugin": "t-load-backbones", "distribution": "sft-load-extras"}
    (tmp_path / "m").mkdir()
    torch.save(state, tmp_path / "m" / "model.pt")
    line = one_error_line(invoke("predict", tmp_path / "m" / "model.pt", paths[0]))
    assert all(s in line for s in ("t_load_net", "t-load-backbones", "sft-load-extras", "pip install sft-load-extras"))

    with registered(BackbonePlugin(), "t-load-backbones"):  # with the plugin: it loads
        assert sftcore.load(tmp_path / "m" / "model.pt").predict(paths[0], top_k=1)[0].label in tiny.TARGET_CLASSES


# --------------------------------------------------------------------------- sft predict
@pytest.mark.slow
def test_folders_globs_csv_and_json(run_dir, images):
    folder, paths = images
    m = sftcore.load(run_dir)
    expected = m.predict(sorted(paths), top_k=2)
    out = json.loads(ok(invoke("predict", run_dir, folder, "--format", "json", "--top-k", 2)))
    assert [o["image"] for o in out] == sorted(map(str, paths))  # recursive, sorted, images only, hidden skipped
    assert out == [p.as_dict() for p in expected]
    globbed = json.loads(ok(invoke("predict", run_dir, str(folder / "*.png"), "--json", "--top-k", 2)))
    assert [o["image"] for o in globbed] == sorted(map(str, paths[:3]))
    deep = json.loads(ok(invoke("predict", run_dir, str(folder / "**" / "*.png"), "--json")))
    assert sorted(o["image"] for o in deep) == sorted(map(str, paths))
    rows = list(csv.reader(io.StringIO(ok(invoke("predict", run_dir, folder, "--format", "csv", "--top-k", 2)))))
    assert rows[0] == ["image", "rank", "class", "probability"] and len(rows) == 1 + 2 * len(paths)
    for row, (pred, rank) in zip(rows[1:], [(p, r) for p in expected for r in (0, 1)]):
        assert row[:3] == [pred.image, str(rank + 1), pred.top[rank][0]]
        assert float(row[3]) == pytest.approx(pred.top[rank][1], abs=1e-9)
    text = ok(invoke("predict", run_dir, paths[0], "--top-k", 1)).splitlines()
    assert text[0] == str(paths[0]) and text[1].strip().endswith(tuple(NAMES))


@pytest.mark.slow
def test_out_file_and_force(run_dir, images, tmp_path):
    _, paths = images
    target = tmp_path / "preds.csv"
    result = invoke("predict", run_dir, *paths, "--format", "csv", "--out", target)
    assert ok(result) == "" and target.read_text().startswith("image,rank,class,probability\n")
    assert "exists" in one_error_line(invoke("predict", run_dir, *paths, "--out", target))
    assert target.read_text().startswith("image,rank")
    ok(invoke("predict", run_dir, paths[0], "--json", "--out", target, "--force"))
    assert len(json.loads(target.read_text())) == 1


@pytest.mark.slow
def test_device_auto(run_dir, images):
    _, paths = images
    out = json.loads(ok(invoke("predict", run_dir, paths[0], "--device", "auto", "--json")))
    assert out[0]["top"][0]["class"] in NAMES


@pytest.mark.slow
@pytest.mark.parametrize("case,expect", [
    ("missing run", "not found"),
    ("not a run", "not a run directory"),
    ("stage that did not run", "has no pretrain stage"),
    ("seed that did not run", "no finished finetune-seed7 stage"),
    ("corrupt checkpoint", "truncated or corrupt"),
    ("not a model file", "not a sftcore model file"),
    ("stage of a model file", "--stage picks a stage of a run directory"),
    ("output exists", "pass --force"),
    ("output folder missing", "not found; create it first"),
    ("empty folder", "holds no image files"),
    ("glob matching nothing", "no image file matches"),
    ("json and csv", "drop one of --json and --format csv"),
    ("missing image", "not found"),
    ("cuda without cuda", "no CUDA device"),
])
def test_bad_inputs_are_one_line_exit_2(run_dir, backbone_run, images, tmp_path, case, expect):
    if case == "cuda without cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, paths = images
    run, args = run_dir, [paths[0]]
    if case == "missing run":
        run = tmp_path / "nope"
    elif case == "not a run":
        run = tmp_path
    elif case == "stage that did not run":
        run = backbone_run
        args += ["--stage", "pretrain"]
    elif case == "seed that did not run":
        args += ["--stage", "finetune-seed7"]
    elif case == "corrupt checkpoint":
        run = tmp_path / "cut.pt"
        run.write_bytes((run_dir / "checkpoints" / "finetune.pt").read_bytes()[:200])
    elif case == "not a model file":
        run = tmp_path / "other.pt"
        torch.save([1, 2, 3], run)
    elif case == "stage of a model file":
        run = run_dir / "checkpoints" / "finetune.pt"
        args += ["--stage", "finetune"]
    elif case == "output exists":
        (tmp_path / "out.json").write_text("[]")
        args += ["--out", tmp_path / "out.json"]
    elif case == "output folder missing":
        args += ["--out", tmp_path / "no" / "out.json"]
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        args = [tmp_path / "empty"]
    elif case == "glob matching nothing":
        args = [str(tmp_path / "*.jpg")]
    elif case == "json and csv":
        args += ["--json", "--format", "csv"]
    elif case == "missing image":
        args = [tmp_path / "nope.png"]
    elif case == "cuda without cuda":
        args += ["--device", "cuda"]
    assert expect in one_error_line(invoke("predict", run, *args))
    if case == "output exists":
        assert (tmp_path / "out.json").read_text() == "[]"


# --------------------------------------------------------------------------- timm
@pytest.mark.slow
def test_a_timm_backbone_run_loads_and_predicts(tmp_path, images):
    pytest.importorskip("timm")
    _, paths = images
    data = {"name": "shapes", "task": "target", "train_per_class": 4, "test_per_class": 2, "size": 32}
    cfg = {"name": "t", "seed": 0, "seeds": 1, "device": "cpu",
           "backbone": {"name": "timm", "model": "resnet10t", "pretrained": False},
           "finetune": {"dataset": data, "epochs": 1, "batch_size": 8}}
    with small(2):
        sftcore.run(cfg, out=tmp_path / "run")
    m = sftcore.load(tmp_path / "run")
    assert m.classes == tiny.TARGET_CLASSES and m.input_shape[0] == 3
    preds = m.predict(paths, top_k=2)
    assert len(preds) == len(paths) and all(len(p.top) == 2 for p in preds)
    cli_out = json.loads(ok(invoke("predict", tmp_path / "run", *paths, "--json", "--top-k", 2)))
    assert [o["top"][0]["class"] for o in cli_out] == [p.label for p in preds]


@pytest.mark.slow
def test_a_list_of_batch_tensors_gives_one_prediction_per_image(run_dir):
    import torch

    model = sftcore.load(run_dir)
    batch = torch.randint(0, 256, (3, *model.image_shape), dtype=torch.uint8)
    preds = model.predict([batch, batch[0]])
    assert len(preds) == 4 and [p.image for p in preds] == [f"<image {i}>" for i in range(4)]
    assert preds[0].top == preds[3].top


@pytest.mark.slow
def test_tta_flip_runs_are_predicted_as_they_were_scored(run_dir):
    import torch

    model = sftcore.load(run_dir)
    batch = torch.randint(0, 256, (4, *model.image_shape), dtype=torch.uint8)
    single = model.logits(batch).log_softmax(1)
    model.tta = "flip"
    both = model.logits(batch)
    mirror = model.logits(batch.flip(3))  # still flip-averaged: the mean of mirror and original is the same
    assert torch.allclose(both, mirror, atol=1e-5)
    model.tta = "none"
    by_hand = torch.logaddexp(single, model.logits(batch.flip(3)).log_softmax(1)) - torch.log(torch.tensor(2.0))
    assert torch.allclose(both, by_hand, atol=1e-5)


def test_csv_rows_survive_a_carriage_return_and_never_start_a_formula():
    """Hostile file names: a CR in a name kept in its cell, a name starting with = read as text by a spreadsheet."""
    import csv
    import io

    from sftcore._inference.load import Prediction
    from sftcore._inference.predict import render

    preds = [Prediction("a\rb.png", [("cat", 0.75), ("dog", 0.25)]), Prediction("=HYPERLINK(1).png", [("=x", 1.0)])]
    text = render(preds, "csv")
    assert text.startswith("image,rank,class,probability\n")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[1:] == [["a\rb.png", "1", "cat", "0.75"], ["a\rb.png", "2", "dog", "0.25"],
                        ["'=HYPERLINK(1).png", "1", "'=x", "1.0"]]


@pytest.mark.slow
@pytest.mark.parametrize("field, value, expect", [
    ("std", [0.0, 0.0, 0.0], "std must be a list of finite numbers > 0"),
    ("mean", ["a"], "mean must be a list of finite numbers"),
    ("run_seed", "x", "run_seed must be an integer"),
    ("image_shape", [3, 60000, 60000], "image_shape must be [channels, height, width]"),
    ("classes", "cat", "classes must be a list of class names"),
])
def test_a_hand_edited_model_file_is_one_line(run_dir, tmp_path, field, value, expect):
    """sftcore.load promises SftError: a model file's fields are checked where the format is read."""
    import sftcore
    from sftcore.errors import SftError

    state = torch.load(run_dir / "checkpoints" / "finetune.pt", weights_only=True)
    state[field] = value
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    with pytest.raises(SftError) as err:
        sftcore.load(path)
    assert expect in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_predict_to_a_full_or_closed_stdout_is_one_line(run_dir, images):
    """`sft predict > /dev/full` and `sft predict >&-`: one line and exit 2, never a traceback or a silent 0."""
    import subprocess
    import sys

    _, paths = images
    cmd = [sys.executable, "-m", "sftcore", "predict", str(run_dir), str(paths[0])]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "cannot write the result to standard output" in proc.stderr
    closed = subprocess.run(" ".join(cmd) + " >&-", shell=True, stderr=subprocess.PIPE, text=True, timeout=120)
    assert closed.returncode == 2 and "standard output is closed" in closed.stderr, closed.stderr
