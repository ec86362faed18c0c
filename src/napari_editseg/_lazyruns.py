"""The dock's runs on large planes and on stacks as one object (Qt-free, beside :mod:`._runstate`).

A large plane (``tiling`` takes it: auto above 2048 pixels) of one image layer is segmented coarse to
fine from the layer's own data, region by region: a dask- or zarr-backed layer, or each level of a
multiscale layer, is read tile by tile and never whole (:class:`~napari_editseg.planes.LazyPlane`).
A stack segmented "as one object" runs :func:`~napari_editseg.core.volume.volume_planes` over the
run's slices, one plane at a time, and yields each plane it follows.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .core.stages import Segmentation
from .core.tiling import segment_tiled, tiling_applies
from .core.volume import volume_planes
from .planes import LazyPlane, plane_signature, streamed_signature

Index = tuple[int, ...]


def levels(source, index: Index) -> list[LazyPlane]:
    """The plane at ``index`` of a source's layer, per pyramid level (finest first), read lazily."""
    layer = source.layer
    limits = None if layer.rgb else layer.contrast_limits
    data = list(layer.data) if getattr(layer, "multiscale", False) else [layer.data]
    kept = [d for d in data if tuple(d.shape[:len(index)]) == tuple(data[0].shape[:len(index)])]  # same slices
    return [LazyPlane(d, index, layer.rgb, limits) for d in kept]


def tiles_this_plane(run, index: Index) -> bool:
    """Whether a run's slice is segmented tile by tile: words on one layer whose plane ``tiling`` takes."""
    if run.source.composite or not run.prompt.expression or run.prompt.clicks.get(index, ([], []))[0]:
        return False
    return tiling_applies(run.segmenter.resolve_settings(**run.prompt.overrides), run.source.shape[-2:])


def tiled_result(run, index: Index) -> Segmentation:
    """One large plane, coarse to fine, read region by region; its signature streamed, as replay checks it."""
    views = levels(run.source, index)
    result = segment_tiled(run.segmenter, views, run.prompt.expression, run.prompt.box, cancelled=run.cancelled,
                           **run.prompt.overrides)
    run.signatures[index] = streamed_signature(views[0])
    return result.as_segmentation()


class _Planes:
    """A run's slices as a Z×H×W(×C) stack that reads one plane when asked."""

    def __init__(self, source, indices: list[Index]):
        self.source, self.indices = source, indices
        self.shape = (len(indices), *source.plane(indices[0]).shape)

    def __getitem__(self, k: int) -> np.ndarray:
        return self.source.plane(self.indices[int(k)])


def volume_results(run) -> Iterator[tuple[Index, Segmentation]]:
    """Worker body of a stack as one object: each plane the object is followed on, the start plane first."""
    planes = _Planes(run.source, run.indices)
    clicks = {k: run.clicks[i] for k, i in enumerate(run.indices) if i in run.clicks}
    steps = volume_planes(run.segmenter, planes, run.prompt.expression, run.prompt.box, clicks,
                          **run.prompt.overrides)
    for k, result in steps:
        if run.cancelled.is_set():
            return
        index = run.indices[k]
        run.signatures[index] = plane_signature(planes[k])
        run.base[index] = result
        yield index, result
