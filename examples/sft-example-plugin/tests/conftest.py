"""The example plugin's tests run from a source checkout (CI does not pip-install it): the package
folder goes on ``sys.path`` and every test gets the plugin registered through ``sftcore.testing``."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sft_example_plugin  # noqa: E402
from sftcore.testing import registered  # noqa: E402


@pytest.fixture(autouse=True)
def example_plugin():
    """The plugin, registered under its entry-point name for one test (as installed, if it is)."""
    with registered(sft_example_plugin, "example") as info:
        yield info


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest and leaves the other cores alone."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
