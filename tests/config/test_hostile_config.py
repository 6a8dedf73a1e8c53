"""Hostile config input: an alias bomb, duplicate keys, huge values, non-finite or absurd numbers,
unchecked plugin options, a one-class dataset and a symlink loop in an image folder. Each gives one
line `sft: error: ...`, exit code 2, at once, no traceback; nothing is trained on corrupt input."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import tiny
from fakedata import write_image
from sftcore.api import DatasetContext, check_option
from sftcore.errors import ConfigError, show
from test_bad_input import cli, one_line_error

STAGE = "finetune:\n  dataset: {name: shapes, task: target, train_per_class: 4, test_per_class: 2, size: 16}\n"


def bomb(levels: int) -> list[str]:
    """Billion laughs: each anchor is a list of nine aliases of the one before (9 ** levels strings)."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return lines


def show_config(tmp_path: Path, capsys, text: str, *args) -> tuple[int, str, str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return cli(capsys, "config", "show", path, *args)


# --------------------------------------------------------------------------- 1. the YAML itself
def test_alias_bomb_in_the_file_is_refused_fast(tmp_path, capsys):
    text = "seed:\n" + "".join(f"  {line}\n" for line in bomb(9)) + STAGE
    start = time.monotonic()
    code, _, err = show_config(tmp_path, capsys, text)
    assert time.monotonic() - start < 1.0
    line = one_line_error(code, err, "cfg.yaml", "alias bomb")
    assert len(line) < 300


def test_alias_bomb_through_set_is_refused_in_one_short_line(tmp_path, capsys):
    value = "{" + ", ".join(bomb(7)) + "}"
    code, _, err = show_config(tmp_path, capsys, STAGE, "--set", f"seed={value}")
    line = one_line_error(code, err, "--set 'seed'", "alias bomb")
    assert len(line) < 300


def test_recursive_alias_is_refused(tmp_path, capsys):
    code, _, err = show_config(tmp_path, capsys, "seed: &x [*x]\n" + STAGE)
    one_line_error(code, err, "refers to the mapping or list that contains it")


def test_duplicate_key_names_the_key_and_its_lines(tmp_path, capsys):
    code, _, err = show_config(tmp_path, capsys, "seed: 1\nname: x\nseed: 2\n" + STAGE)
    one_line_error(code, err, "line 3", "key 'seed' appears twice", "first at line 1")


def test_duplicate_key_in_set(tmp_path, capsys):
    code, _, err = show_config(tmp_path, capsys, STAGE, "--set", "finetune.optimizer={lr: 0.1, lr: 0.2}")
    one_line_error(code, err, "--set 'finetune.optimizer'", "key 'lr' appears twice")


def test_yaml_merge_keys_still_override(tmp_path):
    from sftcore._config import resolve as config

    path = tmp_path / "cfg.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert config.load_yaml(path)["other"] == {"x": 3, "y": 2}


@pytest.mark.parametrize("text", ["name: [" + "x, " * 50_000 + "x]\n", "seed: '" + "9" * 100_000 + "'\n",
                                  "seed: " + "9" * 5000 + "\n", "seed: " + "[" * 3000 + "]" * 3000 + "\n"])
def test_huge_values_give_a_short_line(text, tmp_path, capsys):
    code, _, err = show_config(tmp_path, capsys, text + STAGE)
    assert len(one_line_error(code, err)) < 300


def test_show_cuts_long_values():
    assert len(show("x" * 10_000)) <= 80 and "..." in show("x" * 10_000)  # reprlib cuts strings in the middle
    assert len(show([list(range(100))] * 100)) <= 80 and show([list(range(100))] * 100).endswith("…")
    assert show(10 ** 5000).startswith("<an integer of")
    assert show(0.5) == "0.5" and show("abc") == "'abc'"


# --------------------------------------------------------------------------- 2. numbers
NUMBER_CASES = {
    "fraction .nan": ("dataset: {name: shapes, fraction: .nan}", ["fraction must be a finite number"]),
    "val_fraction .nan": ("dataset: {name: shapes, val_fraction: .nan}", ["val_fraction must be a finite"]),
    "label_smoothing .nan": ("label_smoothing: .nan", ["label_smoothing must be a finite number"]),
    "betas .nan": ("optimizer: {name: adamw, betas: [.nan, .nan]}", ["betas[0] must be a finite number"]),
    "lr .inf": ("optimizer: {lr: .inf}", ["optimizer.lr must be a finite number", "inf"]),
    "momentum above 1": ("optimizer: {momentum: 5}", ["momentum must be a finite number from 0.0 to 1.0"]),
    "weight decay -inf": ("optimizer: {weight_decay: -.inf}", ["weight_decay must be a finite"]),
    "warmup past the stage": ("epochs: 3\n  schedule: {warmup_epochs: 1000000000000}",
                              ["warmup_epochs must be at most the stage's epochs (3)", "1000000000000"]),
    "warmup past max_epochs": ("epochs: auto\n  max_epochs: 20\n  schedule: {warmup_epochs: 21}",
                               ["warmup_epochs must be at most the stage's max_epochs (20)"]),
    "step_size absurd": ("schedule: {name: step, step_size: 10000000}", ["step_size must be an integer from 1 to 1000000"]),
    "gamma .nan": ("schedule: {name: step, gamma: .nan}", ["gamma must be a finite number"]),
    "backbone_lr_mult .inf": ("backbone_lr_mult: .inf", ["backbone_lr_mult must be a finite number"]),
    "epochs absurd": ("epochs: 1000000000000", ["epochs must be <= 100000"]),
    "batch_size absurd": ("batch_size: 100000000000000000000", ["batch_size must be <= 1000000"]),
}


@pytest.mark.parametrize("case", NUMBER_CASES)
def test_non_finite_and_absurd_numbers(case, tmp_path, capsys):
    setting, needles = NUMBER_CASES[case]
    text = STAGE if setting.startswith("dataset") else STAGE + f"  {setting}\n"
    if setting.startswith("dataset"):
        text = "finetune:\n  " + setting + "\n"
    code, _, err = show_config(tmp_path, capsys, text)
    one_line_error(code, err, *needles)


@pytest.mark.parametrize("seed", ["100000000000000000000000000000", "4294967296", "1e29"])
def test_seed_beyond_what_generators_take(seed, tmp_path, capsys):
    code, _, err = show_config(tmp_path, capsys, f"seed: {seed}\n" + STAGE)
    one_line_error(code, err, "seed must be")


def test_seeds_past_the_largest_seed(tmp_path, capsys):
    code, _, err = show_config(tmp_path, capsys, f"seed: {2**32 - 2}\nseeds: 3\n" + STAGE)
    one_line_error(code, err, "the last seed run", str(2**32))
    code, _, err = show_config(tmp_path, capsys, "seeds: 1000000000000\n" + STAGE)
    one_line_error(code, err, "seeds must be <= 1000")


def test_epochs_auto_still_resolves(tmp_path, capsys):
    code, out, err = show_config(tmp_path, capsys, STAGE + "  epochs: auto\n  schedule: {warmup_epochs: 5}\n")
    assert code == 0, err
    assert "epochs: auto" in out


# --------------------------------------------------------------------------- 3. built-in plugins' options
OPTION_CASES = {
    "shapes size a word": ("finetune.dataset.size=big", ["finetune.dataset.size must be an integer", "'big'"]),
    "shapes size huge": ("finetune.dataset.size=1000000", ["size must be an integer from 16 to 512"]),
    "shapes no training images": ("finetune.dataset.train_per_class=0", ["train_per_class must be an integer"]),
    "shapes negative count": ("finetune.dataset.train_per_class=-3", ["train_per_class", "got -3"]),
    "shapes too much memory": ("finetune.dataset={name: shapes, size: 512, train_per_class: 2000}",
                              ["need 16.8 GiB", "lower size"]),
    "shapes noise .nan": ("finetune.dataset.noise=.nan", ["noise must be a finite number"]),
    "shapes seed huge": ("finetune.dataset.seed=100000000000000000000", ["dataset.seed must be"]),
    "lenet img_size a string": ("backbone={name: lenet, img_size: '16'}", ["backbone.img_size must be an integer", "'16'"]),
    "lenet img_size a float": ("backbone={name: lenet, img_size: 16.5}", ["backbone.img_size must be an integer", "16.5"]),
    "lenet in_chans 0": ("backbone={name: lenet, in_chans: 0}", ["backbone.in_chans must be an integer from 1 to 64"]),
    "imprint scale .nan": ("finetune.head={name: imprint, scale: .nan}", ["scale must be a positive number"]),
    "match_classes aliases a list": ("finetune.head={name: match_classes, aliases: [a, b]}", ["aliases must map"]),
    "l2 alpha .inf": ("finetune.regularizers=[{name: l2, alpha: .inf}]", ["alpha must be a number >= 0"]),
    "l2_sp match not a glob": ("finetune.regularizers=[{name: l2_sp, match: 3}]", ["match must be a glob"]),
    "image_folder crop_padding huge": ("finetune.dataset={name: image_folder, root: x, crop_padding: 100000}",
                                       ["crop_padding must be an integer from 0 to 256"]),
    "image_folder root a number": ("finetune.dataset={name: image_folder, root: 3}", ["root must be a folder"]),
    "cifar mean .nan": ("finetune.dataset={name: cifar10, mean: [.nan, 0, 0]}", ["mean must be 1 or 3 numbers"]),
    "cifar download not a boolean": ("finetune.dataset={name: cifar10, download: maybe}",
                                     ["download must be true or false"]),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_plugin_options_fail_when_the_config_is_resolved(case, tmp_path, capsys):
    """Before anything is built: `sft config show` already names the option."""
    override, needles = OPTION_CASES[case]
    code, _, err = show_config(tmp_path, capsys, STAGE, "--set", override)
    one_line_error(code, err, *needles)


def test_timm_options_fail_when_the_config_is_resolved(tmp_path, capsys):
    pytest.importorskip("timm")
    code, _, err = show_config(tmp_path, capsys, STAGE, "--set", "backbone={name: timm, in_chans: x}")
    one_line_error(code, err, "backbone.in_chans must be an integer")
    code, _, err = show_config(tmp_path, capsys, STAGE, "--set", "backbone={name: timm, std: [0, 1, 1]}")
    one_line_error(code, err, "backbone.std must be a list of finite numbers > 0")


def test_bad_finetune_dataset_fails_before_pretraining(tmp_path, capsys):
    cfg = tiny.write_yaml(tmp_path / "cfg.yaml", tiny.config(baseline=False, finetune={
        "dataset": tiny.shapes("target", size="big")}))
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "finetune.dataset.size")
    assert not (tmp_path / "run").exists()  # refused at resolution: no pretraining, no run directory


def test_check_option_for_plugins():
    assert check_option("n", 3, int, low=1) == 3 and check_option("x", 1, float) == 1.0
    assert check_option("p", None, str, none=True) is None
    for bad in (dict(value=True), dict(value="3"), dict(value=0, low=1), dict(value=9, high=8)):
        with pytest.raises(ConfigError, match=r"^config: finetune.dataset.n must be an integer"):
            check_option("n", bad.pop("value"), int, where="config: finetune.dataset", **bad)
    with pytest.raises(ConfigError, match="must be a finite number"):
        check_option("x", float("nan"), float)


@pytest.mark.parametrize("kind, name, options", [
    ("datasets", "shapes", {"size": "big"}), ("datasets", "shapes", {"test_per_class": -1}),
    ("datasets", "image_folder", {"root": "x", "test_ratio": float("nan")}),
    ("backbones", "lenet", {"img_size": 16.5}), ("heads", "imprint", {"scale": float("inf")}),
    ("regularizers", "l2_sp", {"beta": float("nan")}), ("heads", "gradual_unfreeze", {"every": 0}),
])
def test_testing_rejects_helper(kind, name, options):
    from sftcore.testing import rejects

    ctx = DatasetContext(seed=0, input_size=(3, 16, 16), stage="finetune") if kind == "datasets" else None
    assert rejects(kind, name, *([ctx] if ctx else []), **options).startswith("config: ")


def test_testing_rejects_helper_fails_on_an_accepted_value():
    from sftcore.testing import rejects

    with pytest.raises(AssertionError, match="accepted"):
        rejects("heads", "imprint", scale=2.0)


# --------------------------------------------------------------------------- 4. one class
def image_root(root: Path, classes=("cat", "dog"), per_class: int = 3) -> Path:
    for cls in classes:
        for i in range(per_class):
            write_image(root / cls / f"{i}.png", (16, 16), "RGB", (40 * i, 80, 200))
    return root


def test_one_class_is_an_error_not_100_percent(tmp_path, capsys):
    root = image_root(tmp_path / "photos", classes=("cat",))
    cfg = tiny.write_yaml(tmp_path / "cfg.yaml", tiny.config(pretrain=False, baseline=False, finetune={
        "dataset": {"name": "image_folder", "root": str(root)}}))
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "holds one class folder ('cat')", "at least 2 classes")


# --------------------------------------------------------------------------- 5. symlinks in image folders
def folder(root: Path):
    from sftcore_plugins.datasets.image_folder import image_folder

    ctx = DatasetContext(seed=0, input_size=(3, 16, 16), stage="finetune")
    return image_folder(ctx, root=str(root), test_ratio=0.34)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loop_does_not_leak_images(tmp_path):
    root = image_root(tmp_path / "photos")
    plain = folder(root)
    (root / "cat" / "loop").symlink_to(root / "cat", target_is_directory=True)  # cat/loop -> .
    (root / "dog" / "up").symlink_to(root, target_is_directory=True)  # back into the root
    (root / "bird").symlink_to(root / "cat", target_is_directory=True)  # a class folder that is a link
    (root / "dog" / "gone.png").symlink_to(root / "nowhere.png")  # dangling
    linked = folder(root)
    assert linked.classes == plain.classes == ["cat", "dog"]
    assert (len(linked.train), len(linked.test)) == (len(plain.train), len(plain.test)) == (4, 2)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_folder_link_out_of_the_root_is_an_error_not_a_silent_skip(tmp_path, capsys):
    root = image_root(tmp_path / "photos")
    image_root(tmp_path / "elsewhere", classes=("bird",))
    (root / "bird").symlink_to(tmp_path / "elsewhere" / "bird", target_is_directory=True)
    cfg = tiny.write_yaml(tmp_path / "cfg.yaml", tiny.config(pretrain=False, baseline=False, finetune={
        "dataset": {"name": "image_folder", "root": str(root)}}))
    code, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "run")
    one_line_error(code, err, "photos/bird links to", "outside the root", "does not follow folder links")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_non_regular_files_are_skipped(tmp_path):
    root = image_root(tmp_path / "photos")
    os.mkfifo(root / "cat" / "pipe.png")  # reading it would block forever
    splits = folder(root)
    assert len(splits.train) + len(splits.test) == 6
