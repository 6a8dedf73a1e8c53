"""Every deprecated import path, in one place, with what replaces it and the version that removes it.

Each old module (sftcore/model.py, plugins.py, registry.py) is two lines that call :func:`moved`; it keeps
working, names and private names alike, with one DeprecationWarning when it is imported."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

# old public path: (where it lives now, what to use instead, the version that removes the old path)
MOVED: dict[str, tuple[str, str, str]] = {
    "sftcore.model": ("sftcore._train.model", "use sftcore.api.TransferModel", "0.3.0"),
    "sftcore.plugins": (
        "sftcore._plugins.manager",
        "use sftcore.testing.registry() and sftcore.testing.registered()",
        "0.3.0",
    ),
    "sftcore.registry": (
        "sftcore._plugins.registry",
        "use sftcore.api.suggest; the registry is sftcore.testing.registry()",
        "0.3.0",
    ),
}


def moved(old: str, namespace: dict[str, Any]) -> Callable[[str], Any]:
    """Fill ``namespace`` (the old module's globals) with the new module's public names, warn once, and
    return a module ``__getattr__`` that serves its private names too, as the old module had them."""
    new, instead, removed_in = MOVED[old]
    module = importlib.import_module(new)
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    namespace.update({n: getattr(module, n) for n in names})
    warnings.warn(
        f"{old} is private now ({new}); {instead}. {old} will be removed in sftcore {removed_in}",
        DeprecationWarning,
        stacklevel=3,
    )
    return lambda name: getattr(module, name)
