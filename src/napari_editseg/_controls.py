"""The widget's setting controls as one table; kinds, help texts and bounds come from the settings.

Qt-free: each row names a setting and only what the settings cannot say (a slider's step,
how far an unbounded number reaches). The kind of control, its default, tooltip, choices and
bounds come from the setting's declared spec (:data:`~napari_editseg.core.settings.SETTING_SPECS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .core.settings import DISCRIMINATE_SETTINGS, SETTING_NAMES, SETTING_SPECS

# (setting, step, reach): reach is the far end a control offers when the setting allows more (or has no bound).
CONTROLS = (
    ("mask_threshold", 0.01, None),
    ("min_confidence", 0.01, None),
    ("prior_source", None, None),
    ("fg_select", None, None),
    ("edge_refine", None, None),
    ("edge_radius", 0.5, 8.0),
    ("fg_quantile", 0.01, None),
    ("bg_quantile", 0.01, None),
    ("temperature", 0.5, 50.0),
    ("bg_prototypes", 1, 8),
    ("keep", None, None),
    ("fill_holes", None, None),
    ("prior_layers", None, None),
    ("propagation_steps", 1, 8),
    ("seed", 1, 2**31 - 1),
    ("instruction_template", None, None),
)


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # "float", "int", "choice", "bool" or "text"
    default: Any
    help: str
    rescore: bool  # True: changes re-score the last run at once; False: they apply at the next Segment
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: Optional[float] = None
    choices: tuple = ()


def accepts(name: str, value: Any) -> bool:
    """Whether the setting's own declaration takes ``value`` for ``name``."""
    try:
        SETTING_SPECS[name].check(value)
    except ValueError:
        return False
    return True


def spec(name: str, step: Optional[float] = None, reach: Optional[float] = None) -> Spec:
    declared = SETTING_SPECS[name]
    common = dict(name=name, default=declared.default, help=declared.help, rescore=name in DISCRIMINATE_SETTINGS)
    if declared.kind in ("int", "float"):
        number = float if declared.kind == "float" else int
        low = number(0 if declared.minimum is None else declared.minimum)
        if declared.above:
            low = number(low + step)  # an exclusive minimum: the first step above it
        high = min((h for h in (declared.maximum, reach) if h is not None), default=None)
        if high is None:
            raise ValueError(f"setting {name!r} has no upper bound: give the control a reach")
        return Spec(kind=declared.kind, minimum=low, maximum=number(high), step=step, **common)
    if declared.kind in ("choice", "bool"):
        return Spec(kind=declared.kind, choices=declared.choices, **common)
    return Spec(kind="text", **common)


def specs() -> list[Spec]:
    """The table's rows for the settings this version has."""
    return [spec(name, step, reach) for name, step, reach in CONTROLS if name in SETTING_NAMES]
