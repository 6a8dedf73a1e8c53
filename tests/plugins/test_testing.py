"""sftcore.testing, the helpers a plugin's own test suite uses: registration that cleans up and fails
loudly, a tiny TrainContext and Step that behave like the loop's, and a tiny config that resolves."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from sftcore import hookimpl
from sftcore._plugins import manager as plugins
from sftcore.errors import ConfigError, PluginError
from sftcore.testing import (create, make_step, registered, sft_plugin, tiny_backbone, tiny_config,  # noqa: F401
                             train_context)


def regularizer_plugin(name: str = "t_noop", hook: str = "register_regularizers") -> types.ModuleType:
    mod = types.ModuleType("t_testing_plugin")

    def register(register):
        register(name, "sftcore_plugins.regularizers.l2:L2", "a test regularizer")

    setattr(mod, hook, hookimpl(register))
    return mod


# --------------------------------------------------------------------------- registration
def test_registered_adds_the_components_for_the_block_only():
    mod = regularizer_plugin()
    with registered(mod, "t-testing") as info:
        assert info.errors == [] and info.hooks == ["register_regularizers"]
        assert plugins.get_registry().get("regularizers", "t_noop").plugin == "t-testing"
        assert create("regularizers", "t_noop", alpha=0.5).alpha == 0.5
    assert not plugins.pm.has_plugin("t-testing")
    with pytest.raises(ConfigError, match="unknown regularizer 't_noop'"):
        plugins.get_registry().get("regularizers", "t_noop")


def test_registered_fails_loudly_on_a_problem_unless_told_not_to(capsys):
    typo = regularizer_plugin(hook="register_regularizer")
    with pytest.raises(PluginError, match="plugin 't-typo': implements unknown hook 'register_regularizer'"):
        with registered(typo, "t-typo"):
            pass
    assert not plugins.pm.has_plugin("t-typo")  # cleaned up although it raised
    with registered(typo, "t-typo", check=False) as info:
        assert len(info.errors) == 1 and "did you mean 'register_regularizers'" in info.errors[0]
    clash = regularizer_plugin(name="l2")
    with pytest.raises(PluginError, match="regularizer 'l2' is registered by both"):
        with registered(clash, "t-clash"):
            pass
    capsys.readouterr()


def test_registered_never_removes_another_plugin_that_had_the_name():
    first, second = regularizer_plugin("t_first"), regularizer_plugin("t_second")
    with registered(first, "t-shared"):
        with pytest.raises(PluginError, match="the name 't-shared' is taken"):
            with registered(second, "t-shared"):
                pass
        assert plugins.pm.get_plugin("t-shared") is first
        assert plugins.get_registry().get("regularizers", "t_first")


def test_registered_uses_an_already_loaded_plugin_as_it_is():
    mod = regularizer_plugin()
    info = plugins.register_plugin(mod, "t-installed")  # as load_plugins does for an installed plugin
    try:
        with registered(mod, "another-name") as seen:
            assert seen is info
        assert plugins.pm.get_plugin("t-installed") is mod  # still there afterwards
    finally:
        plugins.unregister_plugin("t-installed")


def test_the_fixture_registers_until_the_test_ends(sft_plugin):
    info = sft_plugin(regularizer_plugin("t_fixture"), "t-fixture")
    assert info.name == "t-fixture"
    assert plugins.get_registry().get("regularizers", "t_fixture").plugin == "t-fixture"


@pytest.mark.slow
def test_importing_sftcore_testing_imports_no_torch():
    code = "import sys, sftcore.testing; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------- a tiny context and step
def test_train_context_is_what_setup_sees(one_thread):
    import torch

    ctx = train_context(classes=["a", "b"], per_class=5, batch_size=4)
    assert ctx.num_classes == 2 and ctx.stage == "finetune" and ctx.model is not None
    batches = list(ctx.train_batches())
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert torch.cat([y for _, y in batches]).tolist() == [0] * 5 + [1] * 5
    features, labels = ctx.extract_features()
    assert features.shape == (10, ctx.backbone.num_features) and labels.tolist() == [0] * 5 + [1] * 5
    expected = ctx.model.backbone(torch.cat([x for x, _ in batches]))
    torch.testing.assert_close(features, expected.detach())
    start = ctx.start_state()  # snapshotted as the loop does before setup
    with torch.no_grad():
        ctx.model.head.weight.add_(1.0)
    assert not torch.equal(start["head.weight"], ctx.model.head.weight)


def test_make_step_is_one_batch_with_feature_maps(one_thread):
    import torch

    ctx = train_context(tiny_backbone(width=3, size=8), per_class=2)
    step = make_step(ctx)
    assert step.inputs.shape == (6, 3, 8, 8) and step.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert step.logits.shape == (6, 3) and step.features.shape == (6, 6)
    assert {k: tuple(v.shape) for k, v in step.feature_maps.items()} == {"stage1": (6, 3, 4, 4),
                                                                          "stage2": (6, 6, 2, 2)}
    logits, _, maps = step.start_outputs()  # the start model, same inputs: unchanged so far
    torch.testing.assert_close(logits, step.logits.detach())
    x = torch.zeros(2, 3, 8, 8)
    assert make_step(ctx, x).targets.tolist() == [0, 0]


def test_tiny_config_resolves_with_every_component_named():
    from sftcore._config import resolve as cfgmod

    cfg = cfgmod.resolve(tiny_config(regularizers=[{"name": "l2_sp", "alpha": 0.1}], head="lp_ft", pretrain=True,
                                     baseline=True, batch_size=4), plugins.get_registry())
    assert cfg["device"] == "cpu" and cfg["backbone"]["name"] == "lenet"
    assert cfg["finetune"]["regularizers"][0]["alpha"] == 0.1 and cfg["finetune"]["head"]["name"] == "lp_ft"
    assert cfg["finetune"]["batch_size"] == 4 and cfg["pretrain"]["epochs"] == 1
    assert cfg["baseline"] is not None


def test_build_optimizer_and_schedule_factors_check_options_as_a_config_does():
    from sftcore.errors import ConfigError
    from sftcore.testing import build_optimizer, schedule_factors

    opt = build_optimizer("sgd", lr=0.5, weight_decay=0.01)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]  # 1-D parameters get no decay
    assert all(g["lr"] == 0.5 for g in opt.param_groups)
    factors = schedule_factors("cosine", epochs=2, steps_per_epoch=5)
    assert len(factors) == 10 and factors[0] == pytest.approx(1.0) and factors[-1] < factors[0]
    assert schedule_factors("none", epochs=1, steps_per_epoch=3) == [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="has no option 'lr_x'"):
        build_optimizer("sgd", lr_x=1)
    with pytest.raises(ConfigError):
        schedule_factors("cosine", warmup_epochs=-1)
