"""Deprecated: the old import path of sftcore._registry, which is private now; use sftcore.api.suggest; the registry is sftcore.testing.registry().
Kept working (with a DeprecationWarning) for plugins written against earlier versions."""

import warnings

from ._registry import *  # noqa: F401,F403
from . import _registry as _module

warnings.warn("sftcore.registry is private now (sftcore._registry); use sftcore.api.suggest; the registry is sftcore.testing.registry()", DeprecationWarning, stacklevel=2)


def __getattr__(name):  # the module's private names too, as the old module had them
    return getattr(_module, name)
