import os
import subprocess
import sys
from contextlib import ExitStack

import pytest

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")


@pytest.fixture
def plugin():
    """Register a plugin object for one test: ``plugin(obj, name)`` returns its info, problems and all
    (``check=False``); unregistered afterwards."""
    from sftcore.testing import registered

    with ExitStack() as stack:
        yield lambda obj, name="test-plugin": stack.enter_context(registered(obj, name, check=False))


@pytest.fixture
def one_thread():
    """Tiny models: one thread is fastest and leaves the other core to concurrent work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_sft(*args, env=None, cwd=None, timeout=120):
    """Run the CLI as a whole process (``python -m sftcore``); returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sftcore", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def sft():
    return run_sft
