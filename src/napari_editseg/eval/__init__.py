"""RefCOCO-family evaluation with the exact zero-shot protocol (docs/evaluation.md)."""

from __future__ import annotations

import importlib
from types import ModuleType


def need_extra(module: str, purpose: str) -> ModuleType:
    """Import a module of the ``[eval]`` extra, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{purpose} needs {module.split('.')[0]}, which `pip install napari-editseg` leaves "
                         "out: pip install \"napari-editseg[eval]\"") from None
