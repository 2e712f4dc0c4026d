"""Modules imported on first use, so that commands which only read specs (``validate``,
``list``, ``show``) never pay for importing torch.

    torch = lazy_import("torch")   # nothing imported yet
    torch.zeros(3)                 # torch is imported here, once

Python's own :class:`importlib.util.LazyLoader` does the work; a module that is already
imported is returned as it is. Annotations stay cheap with ``from __future__ import
annotations`` and ``if TYPE_CHECKING: from torch import Tensor``.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """``name``'s module, executed only when one of its attributes is first read."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def is_loaded(name: str) -> bool:
    """Whether ``name`` has been executed (not merely registered for lazy loading)."""
    module = sys.modules.get(name)
    return module is not None and type(module) is ModuleType
