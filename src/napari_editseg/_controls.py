"""The widget's setting controls as one table; help texts and bounds come from the settings.

Qt-free: each row names a setting and only what the settings cannot say (a slider's step,
how far an unbounded number reaches). The kind of control, its default and tooltip come
from :class:`SegmentationSettings`' field and its help; its bounds from what the settings'
own validation accepts, probed at build time.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any, Optional

from .core.settings import DISCRIMINATE_SETTINGS, SETTING_NAMES, SegmentationSettings

# (setting, step, reach): reach is the far end offered for numbers the settings leave unbounded.
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
    """Whether the settings' validation takes ``value`` for ``name``."""
    try:
        SegmentationSettings().replace(**{name: value})
    except ValueError:
        return False
    return True


def _bounds(name: str, number: type, step: float, reach: Optional[float]) -> tuple[float, float]:
    low = number(0)
    while not accepts(name, low):  # the smallest accepted multiple of the step
        low = number(low + step)
    high = number(1) if number is float and accepts(name, 1.0) and not accepts(name, 1.0 + step) else reach
    if high is None:
        raise ValueError(f"setting {name!r} has no upper bound: give the control a reach")
    return low, high


def spec(name: str, step: Optional[float] = None, reach: Optional[float] = None) -> Spec:
    field = {f.name: f for f in fields(SegmentationSettings)}[name]
    hint = typing.get_type_hints(SegmentationSettings)[name]
    common = dict(name=name, default=field.default, help=field.metadata["help"],
                  rescore=name in DISCRIMINATE_SETTINGS)
    if typing.get_origin(hint) is typing.Literal:
        return Spec(kind="choice", choices=typing.get_args(hint), **common)
    if isinstance(field.default, bool):
        return Spec(kind="bool", **common)
    if isinstance(field.default, (int, float)):
        number = float if isinstance(field.default, float) else int
        low, high = _bounds(name, number, step, reach)
        return Spec(kind=number.__name__, minimum=low, maximum=high, step=step, **common)
    return Spec(kind="text", **common)


def specs() -> list[Spec]:
    """The table's rows for the settings this version has."""
    return [spec(name, step, reach) for name, step, reach in CONTROLS if name in SETTING_NAMES]
