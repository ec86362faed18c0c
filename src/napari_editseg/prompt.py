"""What one press of the widget or one record asks for, turned into the unrefined result.

A prompt is an expression and/or a box and/or clicked points. :func:`segment_prompt` is the one
way the widget and replay reach the core for it, so a record made by one is replayed by the
other with the same call.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional, Sequence

Point = Sequence[float]


def segment_prompt(segmenter, expression: str, box: Optional[Sequence[float]] = None, positive: Sequence[Point] = (),
                   negative: Sequence[Point] = (), **overrides: Any):
    """The unrefined :class:`~napari_editseg.core.segmenter.Segmentation` of a prompt: one denoiser
    forward on the image set on ``segmenter``.

    With words, the points play no part here (they are clicks, applied by ``refine``). Without
    words (``expression`` empty) the points make the prior but are kept out of the result, so
    that clicks added later can be taken back: ``refine(result, positive, negative)`` applies them.
    ``box``: (row0, col0, row1, col1) pixels of the image; ``positive``/``negative``: (row, col).
    """
    if expression:
        return segmenter.segment(expression, box=box, **overrides)
    result = segmenter.segment_points(positive, negative, box=box, **overrides)
    return replace(result, positive=(), negative=())
