"""Where and how a run computes: the device, precision, memory format and compilation, from the config,
and what besides the config changes results (the environment recorded in summary.json)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch

from sftcore.errors import ConfigError

from . import distributed


@dataclass
class Performance:
    """How the run uses the device: where, at what precision, in which memory format, compiled or not."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> dict:
        return {
            "device": str(self.device),
            "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype],
            "channels_last": self.channels_last,
            "compile": self.compile,
        }


class PerformanceKeys(Protocol):
    """The run config's keys this module reads (sftcore._config.schema.RunConfig has them)."""

    @property
    def device(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def channels_last(self) -> bool | str: ...
    @property
    def compile(self) -> bool | str: ...


def resolve_performance(cfg: PerformanceKeys) -> Performance:
    """``auto`` follows measurements (docs/performance.md): channels_last on CPU and CUDA; fp32 on the
    CPU (bf16 was faster there but cost the shapes demo 11 points of transfer gain); bf16 autocast on
    CUDA (usual practice, not yet measured: no GPU); no torch.compile (compile time outweighs short runs)."""
    want = cfg.device
    if want == "auto":
        want = (
            "cuda"
            if torch.cuda.is_available()
            else ("mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
        )
    elif want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config: device is cuda but torch sees no CUDA device; use device: auto or cpu")
    elif want == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("config: device is mps but torch sees no MPS device; use device: auto or cpu")
    device = torch.device(want)
    if distributed.env_world_size() > 1:  # one process per device under torchrun
        device = distributed.setup(device.type) or device
    precision = cfg.precision
    if precision == "auto":
        if device.type == "cuda":
            # native bf16 from Ampere (capability 8) on; older GPUs only emulate it
            precision = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
        else:
            precision = "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"config: precision fp16 needs CUDA (device is {device.type}); use bf16 or fp32")
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    channels_last = device.type in ("cpu", "cuda") if cfg.channels_last == "auto" else bool(cfg.channels_last)
    compile_ = False if cfg.compile == "auto" else bool(cfg.compile)
    return Performance(device=device, amp_dtype=amp, channels_last=channels_last, compile=compile_)


def environment(perf: Performance) -> dict:
    """What changes results besides the config: on the CPU, even the thread count (docs/reproducibility.md)."""
    import platform
    from importlib import metadata

    from sftcore._version import __version__

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    env = {
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "timm": version("timm"),
        "sftcore": __version__,
        "python": platform.python_version(),
        "device": str(perf.device),
    }
    if perf.device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(perf.device)
    return env
