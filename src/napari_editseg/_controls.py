"""The widget's setting controls as one table; kinds, help texts and bounds come from the settings.

Qt-free: each row names a setting and only what the settings cannot say (the plain words the
dock shows, a slider's step, how far an unbounded number reaches). The kind of control, its
default, tooltip, choices and bounds come from the setting's declared spec
(:data:`~napari_editseg.core.settings.SETTING_SPECS`). Also here: the threshold slider's
mapping (the score's own quantiles) and the middle elision of long names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .core.settings import AUTO, DISCRIMINATE_SETTINGS, ONE_OBJECT_SHARE, SETTING_NAMES, SETTING_SPECS

# (setting, what the dock calls it, step, reach[, start]): reach is the far end a control offers when the
# setting allows more (or has no bound); start, for a number that may be "auto", is the number its box
# shows when auto is unticked. The setting's own name is in each control's tooltip.
CONTROLS = (
    ("mask_threshold", "threshold", 0.01, None),
    ("min_confidence", "min. confidence", 0.01, None),
    ("prior_source", "look from", None, None),
    ("fg_select", "object sample", None, None),
    ("edge_refine", "follow edges", None, None),
    ("edge_radius", "edge radius", 0.5, 8.0),
    ("fg_quantile", "object share", 0.01, None),
    ("bg_quantile", "backgr. share", 0.01, None),
    ("temperature", "sharpness", 0.5, 50.0),
    ("bg_prototypes", "backgr. kinds", 1, 8),
    ("keep", "keep parts", None, None),
    ("fill_holes", "fill holes", None, None),
    ("prior_layers", "attention layers", None, None),
    ("propagation_steps", "spread steps", 1, 8),
    ("restart", "anchor to start", 0.05, None),
    ("restart_share", "anchor share", 0.05, None, ONE_OBJECT_SHARE),
    ("smooth_steps", "smooth steps", 1, 8),
    ("prior_pick", "prior choice", None, None),
    ("tiling", "tiles", None, None),
    ("tile_size", "tile side", 16, 4096, 512),
    ("seed", "noise seed", 1, 2**31 - 1),
    ("instruction_template", "instruction", None, None),
)
SLIDER_STEPS = 1000  # positions of the threshold slider: each is 0.1 % of the image's pixels
RANKED = 1 << 16  # scores a slider's mapping keeps (evenly spaced ranks): enough for 0.1 % steps


@dataclass(frozen=True)
class Spec:
    name: str
    title: str  # what the dock calls it
    kind: str  # "float", "int", "choice", "bool" or "text"
    default: Any
    help: str
    rescore: bool  # True: changes re-score the last run at once; False: they apply at the next Segment
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: Optional[float] = None
    choices: tuple = ()
    auto: bool = False  # a number that may also be "auto" (a tick box beside it)
    start: Optional[float] = None  # such a number's value when auto is unticked


def accepts(name: str, value: Any) -> bool:
    """Whether the setting's own declaration takes ``value`` for ``name``."""
    try:
        SETTING_SPECS[name].check(value)
    except ValueError:
        return False
    return True


def spec(name: str, title: str, step: Optional[float] = None, reach: Optional[float] = None,
         start: Optional[float] = None) -> Spec:
    declared = SETTING_SPECS[name]
    common = dict(name=name, title=title, default=declared.default, help=declared.help,
                  rescore=name in DISCRIMINATE_SETTINGS)
    if declared.kind in ("int", "float"):
        number = float if declared.kind == "float" else int
        low = number(0 if declared.minimum is None else declared.minimum)
        if declared.above:
            low = number(low + step)  # an exclusive minimum: the first step above it
        high = min((h for h in (declared.maximum, reach) if h is not None), default=None)
        if high is None:
            raise ValueError(f"setting {name!r} has no upper bound: give the control a reach")
        start = number(low if start is None else start)
        return Spec(kind=declared.kind, minimum=low, maximum=number(high), step=step, auto=declared.auto,
                    start=start if declared.auto else None, **common)
    if declared.kind in ("choice", "bool"):
        choices = declared.choices if not declared.auto or AUTO in declared.choices else (AUTO, *declared.choices)
        return Spec(kind=declared.kind, choices=choices, **common)
    return Spec(kind="text", **common)


def specs() -> list[Spec]:
    """The table's rows for the settings this version has."""
    return [spec(*row) for row in CONTROLS if row[0] in SETTING_NAMES]


def tooltip(row: Spec) -> str:
    """A control's tooltip: the setting's help, its name (as the API, the CLI and records spell it), and when
    it acts."""
    when = "changes re-score the current object at once" if row.rescore else "applies at the next Segment"
    return f"{row.help}\n\nsetting: {row.name} ({when})"


def ranked_scores(scores: Optional[np.ndarray], low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """The values the threshold slider walks through: the score map's own, sorted (at most :data:`RANKED`
    evenly spaced ranks), so that each step moves the same share of pixels; evenly spaced from ``low`` to
    ``high`` before there is a score map."""
    if scores is None or not np.size(scores):
        return np.linspace(low, high, SLIDER_STEPS + 1)
    ranked = np.sort(np.asarray(scores, np.float64).ravel())
    if ranked.size > RANKED:
        ranked = ranked[np.linspace(0, ranked.size - 1, RANKED).round().astype(int)]
    return ranked


def threshold_at(ranked: np.ndarray, position: int) -> float:
    """The threshold at slider ``position`` (0…:data:`SLIDER_STEPS`): that share of the pixels scores below it."""
    return float(ranked[round(position / SLIDER_STEPS * (ranked.size - 1))])


def position_of(ranked: np.ndarray, threshold: float) -> int:
    """The slider position showing ``threshold``: the share of the pixels that score below it."""
    below = int(np.searchsorted(ranked, threshold, side="left"))
    return int(round(below / max(1, ranked.size - 1) * SLIDER_STEPS)) if ranked.size > 1 else 0


def elide_middle(text: str, width: int = 24) -> str:
    """``text`` cut to ``width`` characters in the middle (both ends of a long id or path stay readable)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head):]}"
