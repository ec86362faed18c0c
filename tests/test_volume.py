"""Volumes as one object (core/volume.py): start plane, carried prior and prototypes, stopping rules,
clicks, progress and cancel. Real forwards of the tiny model on a stack where the disc moves."""

import threading

import numpy as np
import pytest

from napari_editseg.core.tiling import Cancelled
from napari_editseg.core.volume import segment_volume, volume_planes
from napari_editseg.testing import tiny_picture

LOOSE = {"min_overlap": 0.0, "min_confidence": 0.0, "keep": "all", "mask_threshold": 0.3}


def moving_stack(depth: int = 6) -> np.ndarray:
    """Z×45×60×3: the tiny picture with its red disc moving two pixels right per plane."""
    base = tiny_picture()
    background = base.copy()
    rows, cols = np.mgrid[:45, :60]
    disc = (rows - 20) ** 2 + (cols - 18) ** 2 < 100
    background[disc] = base[0:1, 0:1]
    planes = []
    for z in range(depth):
        plane = background.copy()
        plane[(rows - 20) ** 2 + (cols - 12 - 2 * z) ** 2 < 100] = (230, 40, 40)
        planes.append(plane)
    return np.stack(planes)


def test_starts_where_the_expression_is_clearest_and_follows_both_ways(segmenter):
    stack = moving_stack()
    steps = volume_planes(segmenter, stack, "red disc", **LOOSE)
    order = []
    while True:
        try:
            order.append(next(steps)[0])
        except StopIteration as done:
            result = done.value
            break
    own = []
    for plane in stack:
        segmenter.set_image(plane)
        own.append(segmenter.segment("red disc").confidence)
    assert result.start == order[0] == int(np.argmax(own))  # every plane surveyed (6 <= survey)
    above, below = order[1:result.mask.shape[0] - result.start], order[result.mask.shape[0] - result.start:]
    assert above == list(range(result.start + 1, 6)) and below == list(range(result.start - 1, -1, -1))
    assert result.mask.shape == (6, 45, 60)
    assert set(result.planes) <= set(order) and result.start in result.planes


def test_the_previous_mask_and_the_start_prototypes_shape_the_next_plane(segmenter):
    stack = moving_stack()
    result = segment_volume(segmenter, stack, "red disc", **LOOSE)
    z = result.start + 1 if result.start < 5 else result.start - 1
    segmenter.set_image(stack[z])
    alone = segmenter.segment("red disc", keep="all", mask_threshold=0.3)
    assert z in result.planes
    assert not np.array_equal(result.mask[z], alone.mask)


def test_a_direction_stops_where_the_overlap_drops(segmenter):
    stack = moving_stack()
    strict = segment_volume(segmenter, stack, "red disc", min_overlap=1.01, min_confidence=0.0)
    assert strict.planes == ((strict.start,) if strict.mask[strict.start].any() else ())
    assert all("overlap" in why or "end" in why or "nothing" in why for why in strict.stopped.values())
    loose = segment_volume(segmenter, stack, "red disc", **LOOSE)
    assert len(loose.planes) > len(strict.planes)


def test_a_direction_stops_where_the_confidence_drops(segmenter):
    stack = moving_stack()
    result = segment_volume(segmenter, stack, "red disc", min_overlap=0.0, min_confidence=1.01, keep="all",
                            mask_threshold=0.3)
    assert result.planes == (result.start,)
    assert all("confidence" in why or "end" in why for why in result.stopped.values())


def run(steps):
    """Every plane's segmentation a volume_planes generator yields, and what it returns."""
    results = {}
    while True:
        try:
            z, result = next(steps)
        except StopIteration as done:
            return results, done.value
        results[z] = result


def test_clicks_on_a_plane_join_the_carried_prototypes(segmenter):
    stack = moving_stack()
    plain = segment_volume(segmenter, stack, "red disc", **LOOSE)
    z = plain.start
    clicks = {z: ([(20, 12 + 2 * z)], [(40, 55)])}
    results, clicked = run(volume_planes(segmenter, stack, "red disc", clicks=clicks, **LOOSE))
    assert len(clicked.prototypes) == len(plain.prototypes) + 1
    click_prototype = results[z].fg_prototypes[-1]
    others = [other for other in results if other != z]
    assert others
    for other in others:  # the start plane's prototypes, the click's among them, reach every other plane
        assert any(np.allclose(row, click_prototype) for row in results[other].fg_prototypes)


def test_progress_per_plane_and_cancel_between_planes(segmenter):
    seen, cancelled = [], threading.Event()

    def progress(z, result):
        seen.append(z)
        if len(seen) == 2:
            cancelled.set()

    with pytest.raises(Cancelled):
        segment_volume(segmenter, moving_stack(), "red disc", progress=progress, cancelled=cancelled, **LOOSE)
    assert len(seen) == 2
