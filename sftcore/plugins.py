"""Deprecated: the old import path of sftcore._plugins, which is private now; use sftcore.testing.registry() and sftcore.testing.registered().
Kept working (with a DeprecationWarning) for plugins written against earlier versions."""

import warnings

from ._plugins import *  # noqa: F401,F403
from . import _plugins as _module

warnings.warn("sftcore.plugins is private now (sftcore._plugins); use sftcore.testing.registry() and sftcore.testing.registered()", DeprecationWarning, stacklevel=2)


def __getattr__(name):  # the module's private names too, as the old module had them
    return getattr(_module, name)
