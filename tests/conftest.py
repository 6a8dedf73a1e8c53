import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import pytest

# The tests are laid out like the package (tests/<room>/test_*.py); their shared helpers (tiny, fakedata,
# ddp_probe) live here, in tests/, and a few tests share helpers of another test module (test_resume's
# StopAfter): tests/ and every room are importable, whichever file pytest is asked to run.
_TESTS = Path(__file__).resolve().parent
for _folder in [_TESTS, *sorted(p for p in _TESTS.iterdir() if p.is_dir() and any(p.glob("test_*.py")))]:
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Hugging Face datasets caches what it converts (parquet -> arrow): never in the real ~/.cache/huggingface.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-datasets-tests-")
# Never the real ~/.cache/sftcore, even for an environment a test module copies when it is imported; the
# fixtures below give each module and each test a cache of its own.
os.environ["SFT_CACHE_DIR"] = tempfile.mkdtemp(prefix="sft-cache-tests-")


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


@pytest.fixture(autouse=True, scope="session")
def _session_cache_dir(tmp_path_factory):
    """Never the real ~/.cache, not even in session fixtures; each module and each test gets its own below."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SFT_CACHE_DIR", str(tmp_path_factory.mktemp("sft-cache-session")))
        yield


@pytest.fixture(autouse=True, scope="module")
def _module_cache_dir(_session_cache_dir, tmp_path_factory):
    """A module fixture's run pretrains, whatever ran before it (autouse: set up before the module's fixtures)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SFT_CACHE_DIR", str(tmp_path_factory.mktemp("sft-cache-module")))
        yield


@pytest.fixture(autouse=True)
def pretrain_cache_dir(_module_cache_dir, tmp_path_factory, monkeypatch):
    """Every test gets its own, empty pretrain cache (subprocesses inherit it): a second run in one test
    reuses the first's pretraining, as in real use."""
    path = tmp_path_factory.mktemp("sft-cache")
    monkeypatch.setenv("SFT_CACHE_DIR", str(path))
    return path
