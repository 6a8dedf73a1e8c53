"""``gaussian_noise``: what it changes, reproducibility from the stage's generator, bad options, a whole run."""

from __future__ import annotations

import torch

from sftcore.testing import augment_batch, create, rejects, run_tiny


def test_noise_only_on_the_chosen_images_and_stays_in_range():
    batch = augment_batch(batch=64, size=8)
    before = batch.images.clone()
    create("augmentations", "gaussian_noise", std=0.1, p=0.5)(batch)
    changed = (batch.images != before).flatten(1).any(1)
    assert 10 < int(changed.sum()) < 54  # about half of 64
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert torch.equal(batch.targets, torch.arange(64) % 3)  # labels untouched
    spread = (batch.images - before)[changed].std().item()
    assert 0.05 < spread < 0.12  # the std asked for, less what the clamp to [0, 1] cut


def test_the_same_generator_draws_the_same_noise():
    a, b = augment_batch(seed=3), augment_batch(seed=3)
    noise = create("augmentations", "gaussian_noise", p=1.0)
    noise(a)
    noise(b)
    assert torch.equal(a.images, b.images)
    c = augment_batch(seed=4)
    noise(c)
    assert not torch.equal(a.images, c.images)


def test_p_zero_and_std_zero_change_nothing():
    for options in ({"p": 0.0}, {"std": 0.0, "p": 1.0}):
        batch = augment_batch()
        before = batch.images.clone()
        create("augmentations", "gaussian_noise", **options)(batch)
        assert torch.equal(batch.images, before)


def test_bad_options_are_one_clear_line():
    assert "std must be a number in [0, 1], got -0.1" in rejects("augmentations", "gaussian_noise", std=-0.1)
    assert "p must be a number in [0, 1], got 'half'" in rejects("augmentations", "gaussian_noise", p="half")
    assert "did you mean 'std'" in rejects("augmentations", "gaussian_noise", sdt=0.1)


def test_a_whole_run_with_it_after_the_builtin_crop(tmp_path):
    summary = run_tiny(tmp_path / "run", augment=["crop", {"name": "gaussian_noise", "std": 0.05}])
    assert 0.0 <= summary["finetune"]["test_accuracy"] <= 1.0
    assert "gaussian_noise" in (tmp_path / "run" / "config.yaml").read_text()
