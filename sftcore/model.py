"""Deprecated: the old import path of sftcore._model, which is private now; use sftcore.api.TransferModel.
Kept working (with a DeprecationWarning) for plugins written against earlier versions."""

import warnings

from ._model import *  # noqa: F401,F403
from . import _model as _module

warnings.warn("sftcore.model is private now (sftcore._model); use sftcore.api.TransferModel", DeprecationWarning, stacklevel=2)


def __getattr__(name):  # the module's private names too, as the old module had them
    return getattr(_module, name)
