import os
import subprocess
import sys

import pytest

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")


@pytest.fixture
def plugin():
    """Register a plugin object for one test: ``plugin(obj, name)``; unregistered afterwards."""
    from sftcore import plugins

    names = []

    def add(obj, name="test-plugin"):
        names.append(name)
        return plugins.register_plugin(obj, name)

    yield add
    for name in names:
        plugins.unregister_plugin(name)


def run_sft(*args, env=None, cwd=None, timeout=120):
    """Run the CLI as a whole process (``python -m sftcore``); returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sftcore", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def sft():
    return run_sft
