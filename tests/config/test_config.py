"""The run config: YAML loading, ``--set`` overrides, defaults and one-line validation errors.

No training happens here; the registry is the real one (built-in plugins), so component names and
options are checked against the factories' signatures.
"""

from __future__ import annotations

import copy

import pytest
import yaml

import tiny
from sftcore._config import resolve as cfgmod
from sftcore.errors import ConfigError, SftError
from sftcore._plugins.manager import get_registry

DS = {"name": "shapes", "task": "target"}


def resolve(raw, registry=True):
    return cfgmod.resolve(raw, get_registry() if registry else None)


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(raw)
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    assert message.strip() == message and message
    return message


def ft(**stage):
    """A config with just a finetune stage (plus ``stage`` settings)."""
    return {"finetune": {"dataset": dict(DS), **stage}}


# --------------------------------------------------------------------------- errors: one clear line each
ERRORS = {
    # unknown keys, with a did-you-mean suggestion and the allowed keys, at every level
    "top-level key": ({"backbones": "lenet", **ft()}, ["unknown key 'backbones'", "did you mean 'backbone'"]),
    "stage key": (ft(epoch=3), ["unknown key 'finetune.epoch'", "did you mean 'epochs'"]),
    "pretrain stage key": ({"pretrain": {"dataset": DS, "batchsize": 4}},
                           ["unknown key 'pretrain.batchsize'", "'batch_size'"]),
    "optimizer option": (ft(optimizer={"name": "sgd", "momentun": 0.5}),
                         ["finetune.optimizer:", "no option 'momentun'", "did you mean 'momentum'", "nesterov"]),
    "adamw option not sgd's": (ft(optimizer={"name": "adamw", "momentum": 0.9}),
                               ["finetune.optimizer:", "adamw", "no option 'momentum'", "betas"]),
    "schedule option": (ft(schedule={"name": "step", "gama": 0.5}),
                        ["finetune.schedule:", "no option 'gama'", "did you mean 'gamma'"]),
    "dataset option": (ft(dataset={"name": "shapes", "train_per_clas": 3}),
                       ["finetune.dataset", "no option 'train_per_clas'", "did you mean 'train_per_class'"]),
    "regularizer option": (ft(regularizers=[{"name": "l2_sp", "alpah": 1}]),
                           ["finetune.regularizers[0]", "no option 'alpah'", "did you mean 'alpha'"]),
    "head option": (ft(head={"name": "lp_ft", "probe_epoch": 1}),
                    ["finetune.head", "no option 'probe_epoch'", "did you mean 'probe_epochs'"]),
    "backbone option": ({"backbone": {"name": "lenet", "img_sise": 16}, **ft()},
                        ["backbone", "no option 'img_sise'", "did you mean 'img_size'"]),
    "baseline key": ({**ft(), "baseline": {"name": "scratch", "epoch": 2}},
                     ["unknown key 'baseline.epoch'", "did you mean 'epochs'"]),
    # unknown components, with close matches
    "regularizer name": (ft(regularizers=["l2sp"]), ["unknown regularizer 'l2sp'", "'l2_sp'", "available"]),
    "head name": (ft(head="linear_prob"), ["finetune.head", "unknown head 'linear_prob'", "'linear_probe'"]),
    "backbone name": ({"backbone": "lenett", **ft()}, ["unknown backbone 'lenett'", "did you mean 'lenet'"]),
    "dataset name": (ft(dataset="shape"), ["unknown dataset 'shape'", "did you mean 'shapes'"]),
    "optimizer name": (ft(optimizer="adamx"), ["unknown optimizer 'adamx'", "did you mean 'adam'", "sgd"]),
    "schedule name": (ft(schedule="cosin"), ["unknown schedule 'cosin'", "did you mean 'cosine'"]),
    "select": (ft(select="bets"), ["finetune.select", "best, last", "did you mean 'best'"]),
    "device": ({"device": "gpu", **ft()}, ["device must be one of auto, cpu, cuda, mps", "'gpu'"]),
    "precision": ({"precision": "fp8", **ft()}, ["precision must be one of"]),
    # wrong types
    "epochs string": (ft(epochs="ten"), ["finetune.epochs must be an integer", "'ten'"]),
    "epochs float": (ft(epochs=2.5), ["finetune.epochs must be an integer"]),
    "batch_size bool": (ft(batch_size=True), ["finetune.batch_size must be an integer"]),
    "lr string": (ft(optimizer={"name": "sgd", "lr": "fast"}), ["finetune.optimizer.lr must be a finite number"]),
    "nesterov": (ft(optimizer={"name": "sgd", "nesterov": "yes"}), ["finetune.optimizer.nesterov", "true or false"]),
    "seed bool": ({"seed": True, **ft()}, ["seed must be an integer"]),
    "checkpoints": ({"checkpoints": "yes", **ft()}, ["checkpoints must be true or false"]),
    "compile": ({"compile": "sometimes", **ft()}, ["compile must be auto, true or false"]),
    "stage not a mapping": ({"finetune": "shapes"}, ["finetune must be a mapping"]),
    "regularizers not a list": (ft(regularizers="l2_sp"), ["finetune.regularizers must be a list"]),
    "component without name": (ft(head={"probe_epochs": 2}), ["finetune.head needs a 'name'"]),
    "component of wrong type": (ft(head=3), ["finetune.head must be a name or a mapping"]),
    "empty name": ({"name": "", **ft()}, ["name must be a non-empty string"]),
    # bad values
    "negative lr": (ft(optimizer={"name": "sgd", "lr": -0.1}), ["finetune.optimizer.lr must be a finite number > 0", "-0.1"]),
    "zero lr": (ft(optimizer={"name": "adamw", "lr": 0}), ["finetune.optimizer.lr must be a finite number > 0"]),
    "negative momentum": (ft(optimizer={"name": "sgd", "momentum": -1}), ["finetune.optimizer.momentum must be a finite number from 0.0 to 1.0"]),
    "negative epochs": (ft(epochs=-1), ["finetune.epochs must be >= 0"]),
    "zero epochs, reinit": (ft(epochs=0), ["finetune.epochs must be >= 1, got 0", "match_classes or imprint"]),
    "zero pretrain epochs": ({"pretrain": {"dataset": {"name": "shapes"}, "epochs": 0}},
                             ["pretrain.epochs must be >= 1"]),
    "zero batch size": (ft(batch_size=0), ["finetune.batch_size must be >= 1"]),
    "negative seed": ({"seed": -1, **ft()}, ["seed must be >= 0"]),
    "val_fraction 1.5": (ft(dataset={**DS, "val_fraction": 1.5}), ["finetune.dataset.val_fraction must be <=", "1.5"]),
    "negative val_fraction": (ft(dataset={**DS, "val_fraction": -0.1}), ["finetune.dataset.val_fraction must be >="]),
    "both subset keys": (ft(dataset={**DS, "labels_per_class": 3, "fraction": 0.5}),
                         ["finetune.dataset", "both labels_per_class and fraction"]),
    "labels_per_class 0": (ft(dataset={**DS, "labels_per_class": 0}), ["finetune.dataset.labels_per_class", ">= 1"]),
    "fraction 0": (ft(dataset={**DS, "fraction": 0}), ["finetune.dataset.fraction must be > 0"]),
    "fraction above 1": (ft(dataset={**DS, "fraction": 1.5}), ["finetune.dataset.fraction must be <= 1"]),
    "label smoothing": (ft(label_smoothing=1.5), ["finetune.label_smoothing must be <= 1"]),
    "backbone_lr_mult": (ft(backbone_lr_mult=-1), ["finetune.backbone_lr_mult must be >= 0"]),
    "gamma": (ft(schedule={"name": "step", "gamma": -1}), ["finetune.schedule.gamma must be a finite number from 0.0 to 1.0"]),
    # structure
    "missing dataset": (ft(dataset=None), ["finetune.dataset is required"]),
    "missing dataset key": ({"finetune": {"epochs": 3}}, ["finetune.dataset is required"]),
    "dataset without name": (ft(dataset={"task": "target"}), ["finetune.dataset needs a 'name'"]),
    "nothing to run": ({"name": "x"}, ["nothing to run"]),
    "nothing to run, empty": ({}, ["nothing to run"]),
    "baseline without finetune": ({"pretrain": {"dataset": DS}, "baseline": "scratch"},
                                  ["baseline needs a finetune stage"]),
    "baseline kind": ({**ft(), "baseline": "imagenet"}, ["baseline must be 'scratch'"]),
}


@pytest.mark.parametrize("raw, expected", list(ERRORS.values()), ids=list(ERRORS))
def test_config_errors_are_one_clear_line(raw, expected):
    message = error_of(raw)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_config_error_is_an_sft_error_with_exit_code_2():
    assert issubclass(ConfigError, SftError)
    assert ConfigError("x").exit_code == 2


def test_unknown_key_lists_the_allowed_keys():
    message = error_of(ft(epoch=3))
    assert "allowed here:" in message
    for key in ("epochs", "batch_size", "optimizer", "schedule", "head", "regularizers", "select"):
        assert key in message


def test_unknown_component_lists_what_is_available():
    message = error_of(ft(regularizers=[{"name": "l2sp", "alpha": 0.1}]))
    assert "available: l2, l2_sp" in message


def test_unknown_dataset_names_where_it_is():
    assert "finetune.dataset" in error_of(ft(dataset="shape"))


def test_step_schedule_needs_a_positive_step_size():
    assert "finetune.schedule.step_size" in error_of(ft(schedule={"name": "step", "step_size": 0}))


@pytest.mark.parametrize("betas", ["x", [0.9], [0.9, 2.0]])
def test_adamw_betas_are_validated(betas):
    assert "finetune.optimizer.betas" in error_of(ft(optimizer={"name": "adamw", "betas": betas}))


def test_lr_in_exponent_notation_is_a_number():
    cfg = resolve(cfgmod.load(ft(), ["finetune.optimizer.lr=1e-3"]))
    assert cfg["finetune"]["optimizer"]["lr"] == pytest.approx(0.001)


@pytest.mark.parametrize("key, value, name", [("optimizer", {"lr": 0.1}, "sgd"),
                                              ("schedule", {"warmup_epochs": 1}, "cosine")])
def test_optimizer_and_schedule_options_without_a_name_use_the_default(key, value, name):
    cfg = resolve(cfgmod.load(ft(), [f"finetune.{key}.{k}={v}" for k, v in value.items()]))
    assert cfg["finetune"][key]["name"] == name
    assert all(cfg["finetune"][key][k] == v for k, v in value.items())


# --------------------------------------------------------------------------- YAML files
def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        cfgmod.load(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "not found" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        cfgmod.load(tmp_path)


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nfinetune:\n  epochs: 3\n  dataset: {name: shapes\n  batch_size: 4\n")
    with pytest.raises(ConfigError) as info:
        cfgmod.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert "not valid YAML" in message and "bad.yaml" in message
    assert "line 5" in message or "line 4" in message


def test_bad_yaml_tab_indent_names_the_line(tmp_path):
    path = tmp_path / "tab.yaml"
    path.write_text("name: x\nseed: 1\nfinetune:\n\tepochs: 3\n")
    with pytest.raises(ConfigError, match=r"line 4") as info:
        cfgmod.load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just words\n", "str")])
def test_yaml_must_hold_a_mapping(tmp_path, text, kind):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"must hold a mapping.*{kind}"):
        cfgmod.load(path)


def test_empty_file_is_an_empty_config_then_nothing_to_run(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n")
    assert cfgmod.load(path) == {}
    with pytest.raises(ConfigError, match="nothing to run"):
        resolve(cfgmod.load(path))


def test_load_from_dict_copies_it():
    raw = ft(epochs=3)
    loaded = cfgmod.load(raw, ["finetune.epochs=5"])
    assert loaded["finetune"]["epochs"] == 5
    assert raw["finetune"]["epochs"] == 3


# --------------------------------------------------------------------------- --set overrides
@pytest.mark.parametrize("text, path, value", [
    ("finetune.epochs=5", ["finetune", "epochs"], 5),
    ("finetune.optimizer.lr=0.5", ["finetune", "optimizer", "lr"], 0.5),
    ("checkpoints=false", ["checkpoints"], False),
    ("name=my run", ["name"], "my run"),
    ("finetune.regularizers=[l2, {name: l2_sp, alpha: 0.2}]", ["finetune", "regularizers"],
     ["l2", {"name": "l2_sp", "alpha": 0.2}]),
    ("baseline=null", ["baseline"], None),
    ("baseline=", ["baseline"], None),
    ("name=a=b", ["name"], "a=b"),
    (" seed = 3", ["seed"], 3),
    ("name=[unclosed", ["name"], "[unclosed"),  # not YAML: kept as text
])
def test_parse_override(text, path, value):
    assert cfgmod.parse_override(text) == (path, value)


@pytest.mark.parametrize("text", ["finetune.epochs", "=5", " =5", ""])
def test_override_without_key_or_equals_is_one_line(text):
    with pytest.raises(ConfigError) as info:
        cfgmod.parse_override(text)
    assert "key.path=value" in str(info.value) and "\n" not in str(info.value)


def test_override_creates_missing_mappings():
    raw = cfgmod.load({}, ["finetune.dataset.name=shapes", "finetune.dataset.labels_per_class=4"])
    assert raw == {"finetune": {"dataset": {"name": "shapes", "labels_per_class": 4}}}


def test_override_list_index():
    raw = ft(regularizers=[{"name": "l2_sp", "alpha": 0.1}, "l2"])
    out = cfgmod.load(raw, ["finetune.regularizers.0.alpha=0.5", "finetune.regularizers.1.alpha=0.3"])
    assert out["finetune"]["regularizers"] == [{"name": "l2_sp", "alpha": 0.5}, {"name": "l2", "alpha": 0.3}]
    cfg = resolve(out)
    assert cfg["finetune"]["regularizers"][0]["alpha"] == 0.5


def test_override_negative_list_index():
    out = cfgmod.load(ft(regularizers=["l2", "l2_sp"]), ["finetune.regularizers.-1=l2"])
    assert out["finetune"]["regularizers"] == ["l2", "l2"]


def test_override_of_the_default_config_list_index():
    cfg = resolve(cfgmod.load(None, ["finetune.regularizers.0.alpha=0.5"]))
    assert cfg["finetune"]["regularizers"][0] == {"name": "l2_sp", "alpha": 0.5, "beta": 0.01}


@pytest.mark.parametrize("override, expected", [
    ("finetune.regularizers.3.alpha=0.5", "'3' is not an index of a list of 1"),
    ("finetune.regularizers.-2.alpha=0.5", "'-2' is not an index of a list of 1"),
    ("finetune.regularizers.x.alpha=0.5", "'x' is not an index"),
    ("finetune.regularizers.0.alpha.x=1", "is not a mapping"),
    ("seed.x=1", "'seed' is not a mapping"),
])
def test_override_errors_are_one_line(override, expected):
    with pytest.raises(ConfigError) as info:
        cfgmod.load({"seed": 0, **ft(regularizers=[{"name": "l2_sp", "alpha": 0.1}])}, [override])
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert message.startswith("--set ")


def test_override_shorthand_name_expands_to_a_mapping():
    raw = cfgmod.load(ft(), ["backbone=timm", "backbone.model=resnet18"])
    assert raw["backbone"] == {"name": "timm", "model": "resnet18"}
    cfg = resolve(raw, registry=False)
    assert cfg["backbone"] == {"name": "timm", "model": "resnet18"}


def test_override_shorthand_expands_a_string_in_a_list():
    raw = cfgmod.load(ft(regularizers=["l2_sp"]), ["finetune.regularizers.0.alpha=0.3"])
    assert raw["finetune"]["regularizers"] == [{"name": "l2_sp", "alpha": 0.3}]


def test_override_shorthand_with_options_is_checked_against_the_factory():
    raw = cfgmod.load(ft(), ["backbone=lenet", "backbone.img_sise=16"])
    assert raw["backbone"] == {"name": "lenet", "img_sise": 16}
    assert "did you mean 'img_size'" in error_of(raw)


def test_override_later_wins():
    raw = cfgmod.load(ft(), ["finetune.epochs=2", "finetune.epochs=7"])
    assert resolve(raw)["finetune"]["epochs"] == 7


def test_override_values_are_validated_like_the_file():
    raw = cfgmod.load(ft(), ["finetune.epochs=ten"])
    assert "finetune.epochs must be an integer" in error_of(raw)


# --------------------------------------------------------------------------- defaults
def test_defaults_filled_in():
    cfg = resolve({"finetune": {"dataset": "shapes"}})
    assert cfg["name"] == "run" and cfg["seed"] == 0 and cfg["device"] == "auto"
    assert cfg["seeds"] == 3 and cfg["pretrain_per_seed"] is False
    assert cfg["backbone"] == {"name": "lenet"}
    assert cfg["pretrain"] is None and cfg["baseline"] is None
    assert cfg["checkpoints"] is True
    assert cfg["precision"] == "auto" and cfg["channels_last"] == "auto" and cfg["compile"] == "auto"
    f = cfg["finetune"]
    assert f["dataset"] == {"name": "shapes", "labels_per_class": None, "fraction": None, "train_examples": None,
                            "val_fraction": 0.1}
    assert f["epochs"] == 10 and f["batch_size"] == 128 and f["eval_batch_size"] == 512
    assert f["optimizer"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False}
    assert f["schedule"] == {"name": "cosine", "warmup_epochs": 0}
    assert f["head"] == {"name": "reinit"}
    assert f["regularizers"] == []
    assert f["backbone_lr_mult"] == 1.0 and f["select"] == "auto" and f["label_smoothing"] == 0.0
    assert f["max_epochs"] == 200 and f["patience"] == 10


def test_components_as_plain_strings():
    cfg = resolve({"backbone": "lenet", "finetune": {
        "dataset": "shapes", "optimizer": "adamw", "schedule": "step", "head": "linear_probe",
        "regularizers": ["l2_sp", {"name": "l2", "alpha": 0.5}]}, "baseline": "scratch"})
    f = cfg["finetune"]
    assert cfg["backbone"] == {"name": "lenet"}
    assert f["dataset"]["name"] == "shapes"
    assert f["optimizer"] == {"name": "adamw", "lr": 0.001, "weight_decay": 0.01, "betas": [0.9, 0.999]}
    assert f["schedule"] == {"name": "step", "step_size": 10, "gamma": 0.1, "warmup_epochs": 0}
    assert f["head"] == {"name": "linear_probe"}
    assert f["regularizers"] == [{"name": "l2_sp"}, {"name": "l2", "alpha": 0.5}]


def test_user_values_override_defaults_and_ints_become_floats():
    f = resolve(ft(optimizer={"name": "sgd", "lr": 1, "momentum": 0}))["finetune"]
    assert f["optimizer"]["lr"] == 1.0 and isinstance(f["optimizer"]["lr"], float)
    assert f["optimizer"]["momentum"] == 0.0



def test_dataset_options_pass_through():
    d = resolve(ft(dataset={"name": "shapes", "task": "source", "train_per_class": 20, "fraction": 0.5,
                            "val_fraction": 0}))["finetune"]["dataset"]
    assert d == {"name": "shapes", "labels_per_class": None, "fraction": 0.5, "train_examples": None, "val_fraction": 0.0,
                 "task": "source", "train_per_class": 20}


def test_baseline_copies_finetune_with_reinit_head_and_no_regularizers():
    cfg = resolve({"finetune": {"dataset": {"name": "shapes", "task": "target", "labels_per_class": 5},
                                "epochs": 7, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 0.003},
                                "schedule": "step", "head": {"name": "lp_ft", "probe_epochs": 2},
                                "regularizers": [{"name": "l2_sp", "alpha": 0.1}], "backbone_lr_mult": 0.1,
                                "label_smoothing": 0.1, "select": "last"},
                   "baseline": "scratch"})
    f, b = cfg["finetune"], cfg["baseline"]
    assert b["name"] == "scratch"
    for key in ("dataset", "batch_size", "eval_batch_size", "optimizer", "schedule", "label_smoothing",
                "select", "max_epochs", "patience"):
        assert b[key] == f[key], key
    assert b["epochs"] == "auto" and f["epochs"] == 7  # its own budget: trained until it converges
    assert b["head"] == {"name": "reinit"}
    assert b["regularizers"] == []
    assert b["backbone_lr_mult"] == 1.0
    assert f["head"]["name"] == "lp_ft" and f["regularizers"]  # finetune itself untouched


def test_baseline_mapping_overrides_settings():
    cfg = resolve({**ft(epochs=7), "baseline": {"name": "scratch", "epochs": 3}})
    assert cfg["baseline"]["epochs"] == 3 and cfg["finetune"]["epochs"] == 7
    cfg = resolve({**ft(epochs=7), "baseline": {"optimizer": {"name": "sgd", "lr": 0.1}}})  # name defaults
    assert cfg["baseline"]["name"] == "scratch" and cfg["baseline"]["optimizer"]["lr"] == 0.1


@pytest.mark.parametrize("value", [None, False])
def test_no_baseline(value):
    assert resolve({**ft(), "baseline": value})["baseline"] is None


def test_resolve_does_not_touch_its_input():
    raw = tiny.config()
    before = copy.deepcopy(raw)
    resolve(raw)
    assert raw == before


@pytest.mark.parametrize("raw", [tiny.config(), None, ft()], ids=["tiny", "default", "finetune-only"])
def test_resolve_is_idempotent_and_survives_a_yaml_round_trip(raw):
    cfg = resolve(cfgmod.load(raw))
    assert resolve(cfg) == cfg
    assert resolve(yaml.safe_load(cfgmod.dump(cfg))) == cfg


def test_default_config_resolves_to_the_shapes_demo():
    cfg = resolve(cfgmod.load(None))
    assert cfg["name"] == "shapes-demo"
    assert cfg["pretrain"]["dataset"]["task"] == "source"
    assert cfg["finetune"]["dataset"]["task"] == "target"
    assert cfg["finetune"]["dataset"]["labels_per_class"] == 10
    assert cfg["finetune"]["head"] == {"name": "lp_ft", "probe_epochs": 10}
    assert cfg["baseline"]["head"] == {"name": "reinit"} and cfg["baseline"]["regularizers"] == []
    assert cfg["pretrain"]["schedule"] == {"name": "cosine", "warmup_epochs": 0}


def test_device_choices_resolve_without_hardware_checks():
    # whether the device exists is checked when a run starts (see test_runner.py), not here
    for device in ("auto", "cpu", "cuda", "mps"):
        assert resolve({"device": device, **ft()})["device"] == device


def test_without_a_registry_components_are_not_checked():
    cfg = resolve({"backbone": "anything", **ft(head="whatever")}, registry=False)
    assert cfg["backbone"] == {"name": "anything"} and cfg["finetune"]["head"] == {"name": "whatever"}


# --------------------------------------------------------------------------- values checked before anything trains
@pytest.mark.parametrize("component, expected", [
    ({"regularizers": [{"name": "l2", "alpha": "abc"}]}, "regularizer l2: alpha must be a number >= 0"),
    ({"regularizers": [{"name": "l2_sp", "beta": -1}]}, "regularizer l2_sp: beta must be a number >= 0"),
    ({"regularizers": [{"name": "l2", "params": "most"}]}, "params must be 'weights'"),
    ({"head": {"name": "lp_ft", "probe_epochs": -1}}, "probe_epochs must be a non-negative integer"),
    ({"head": {"name": "imprint", "scale": 0}}, "scale must be a positive number"),
])
def test_head_and_regularizer_values_fail_at_resolve(component, expected):
    assert expected in error_of(ft(**component))


def test_baseline_optimizer_override_keeps_the_rest_of_finetunes_optimizer():
    cfg = resolve({**ft(optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.8, "weight_decay": 1e-4}),
                   "baseline": {"name": "scratch", "optimizer": {"lr": 0.1}}})
    assert cfg["baseline"]["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.8, "weight_decay": 1e-4,
                                            "nesterov": False}
    assert cfg["finetune"]["optimizer"]["lr"] == 0.05


def test_paths_and_tuples_in_a_python_config_become_yaml_types(tmp_path):
    raw = cfgmod.load({**ft(), "backbone": {"name": "lenet", "weights": tmp_path / "w.pt"},
                       "finetune": {"dataset": dict(DS), "regularizers": ({"name": "l2"},)}})
    assert raw["backbone"]["weights"] == str(tmp_path / "w.pt")
    assert raw["finetune"]["regularizers"] == [{"name": "l2"}]
    yaml.safe_dump(raw)  # the run directory's config.yaml is written with the safe dumper


@pytest.mark.parametrize("head", ["match_classes", "imprint"])
def test_zero_epochs_evaluates_a_head_that_needs_no_training(head):
    assert resolve(ft(epochs=0, head=head))["finetune"]["epochs"] == 0


def test_a_value_shared_by_two_stages_is_written_out_not_aliased():
    shared = [0.9, 0.999]
    text = cfgmod.dump({"pretrain": {"betas": shared}, "finetune": {"betas": shared}})
    assert "&id" not in text and "*id" not in text and text.count("0.999") == 2
