"""Every key of the config and every option of every built-in component, given hostile values of each family
(wrong type, out of range, non-finite, huge, empty): resolving the config either accepts the value or refuses it
with one `SftError` line naming where it is; never an internal error. Generated from the schema and the
registry, so a new key or option is covered the day it is added."""

from __future__ import annotations

import copy
import math

import pytest

from sftcore._config import resolve as cfgmod
from sftcore._plugins.kinds import KIND_TABLE
from sftcore.errors import SftError
from sftcore.testing import registry, tiny_config

HOSTILE = ["x" * 10_000, -1, 0, 1e300, -1e300, math.nan, math.inf, [], {}, [1e300] * 1000, True, None, "", 2**64]
KINDS_IN_STAGES = {"regularizers": "regularizers", "heads": "head", "param_groups": "param_groups",
                   "optimizers": "optimizer", "schedules": "schedule", "augmentations": "augment"}


def _config() -> dict:
    return tiny_config(pretrain=True, baseline=True)


def _resolves_or_one_line(cfg: dict, where: str) -> None:
    try:
        cfgmod.resolve(cfg, registry())
    except SftError as exc:
        text = str(exc)
        assert "\n" not in text and len(text) < 2000, (where, text[:300])
    except Exception as exc:  # noqa: BLE001 - what this test exists to catch
        pytest.fail(f"{where}: {type(exc).__name__}: {exc}"[:500])


def _run_keys() -> list[str]:
    return [k for k in cfgmod.RUN_DEFAULTS if k not in ("pretrain", "finetune", "baseline")]


@pytest.mark.parametrize("key", _run_keys() + [f"finetune.{k}" for k in cfgmod.STAGE_DEFAULTS])
def test_every_key_takes_hostile_values_as_one_line_or_accepts_them(key):
    for value in HOSTILE:
        cfg = _config()
        target, name = (cfg["finetune"], key.split(".", 1)[1]) if "." in key else (cfg, key)
        target[name] = copy.deepcopy(value)
        _resolves_or_one_line(cfg, f"{key}={str(value)[:40]}")


PLACED = {**KINDS_IN_STAGES, "datasets": "dataset", "backbones": "backbone", "callbacks": "callbacks"}
# what a component needs besides the option under test (its required options), and the tiny config's shapes task
REQUIRED = {"shapes": {"task": "target"}, "image_folder": {"root": "."}, "cifar10": {"root": "."},
            "cifar100": {"root": "."}, "torchvision": {"dataset": "MNIST"}, "manifest": {"train": "train.csv"},
            "timm": {"model": "resnet18"}, "csv": {}}


def _component_options() -> list[tuple[str, str, str]]:
    out = []
    for kind in [k.name for k in KIND_TABLE if k.name in PLACED]:
        for component in registry().list(kind)[kind]:
            if component.plugin != "sftcore.plugins" and not component.plugin.startswith("sftcore."):
                continue
            for option in component.defaults():
                out.append((kind, component.name, option))
    return out


@pytest.mark.parametrize("kind, name, option", _component_options())
def test_every_builtin_option_takes_hostile_values_as_one_line_or_accepts_them(kind, name, option):
    key = PLACED[kind]
    for value in HOSTILE:
        cfg = _config()
        entry = {"name": name, **REQUIRED.get(name, {}), option: copy.deepcopy(value)}
        if kind in ("backbones", "callbacks"):
            cfg[key] = [entry] if key == "callbacks" else entry
        else:
            cfg["finetune"][key] = [entry] if key in ("regularizers", "augment") else entry
        _resolves_or_one_line(cfg, f"{key} {name}.{option}={str(value)[:40]}")
