"""A plane of an image layer as the core is given it, its content hash, and the pixels a label may take.

Shared by the widget (which cuts planes out of napari layers and paints labels), records (which
name a plane by its hash) and replay (which cuts the same plane out of the same data again).
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np


def plane_as_seen(data, index: Sequence[int], rgb: bool, contrast_limits: Optional[Sequence[float]]) -> np.ndarray:
    """The 2-D plane (H×W or H×W×3/4) at ``index`` as the user sees it, which is what the core is given.

    RGB planes are passed as they are. Grey planes are scaled by their contrast limits, so a
    12-bit image in a uint16 array is not segmented as if nearly black.
    """
    plane = np.asarray(data[tuple(index)])
    if rgb:
        return plane
    low, high = (float(v) for v in contrast_limits)
    scaled = (plane.astype(np.float32) - low) / (high - low) if high > low else np.zeros(plane.shape, np.float32)
    return np.clip(scaled, 0.0, 1.0)


def plane_signature(plane: np.ndarray) -> str:
    """A content hash of a plane (dtype, shape and bytes): equal planes, equal signatures."""
    plane = np.ascontiguousarray(plane)
    digest = hashlib.sha256(f"{plane.dtype.str}{plane.shape}".encode())
    digest.update(plane.data)
    return digest.hexdigest()


class LazyPlane:
    """The plane at ``index`` of an image layer's data (or of one level of a multiscale layer), read region
    by region and scaled as :func:`plane_as_seen` scales it: what tiled segmentation takes in place of the
    whole plane, so a dask- or zarr-backed layer is never read whole."""

    def __init__(self, data, index: Sequence[int], rgb: bool, contrast_limits: Optional[Sequence[float]]):
        self.data, self.index, self.rgb, self.limits = data, tuple(index), rgb, contrast_limits
        lead = len(self.index)
        self.shape = tuple(int(n) for n in data.shape[lead:lead + 2]) + (tuple(data.shape[lead + 2:]) if rgb else ())
        self.dtype = np.dtype(data.dtype) if rgb else np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = (key if isinstance(key, tuple) else (key, slice(None)))[:2]
        return plane_as_seen(self.data, self.index + (rows, cols), self.rgb, self.limits)


def streamed_signature(plane: LazyPlane, band_pixels: int = 2**22) -> str:
    """:func:`plane_signature` of a lazy plane, read in bands of rows (the same bytes in the same order)."""
    digest = hashlib.sha256(f"{plane.dtype.str}{plane.shape}".encode())
    rows = max(1, band_pixels // max(1, plane.shape[1]))
    for r in range(0, plane.shape[0], rows):
        digest.update(np.ascontiguousarray(plane[r:r + rows, :], dtype=plane.dtype).data)
    return digest.hexdigest()


def paintable(current: np.ndarray, mask: np.ndarray, label_id: int, overwrite: bool) -> np.ndarray:
    """The mask pixels a label may take: all of them with ``overwrite``, else those free or already its own."""
    return mask if overwrite else mask & ((current == 0) | (current == label_id))


__all__ = ["LazyPlane", "paintable", "plane_as_seen", "plane_signature", "streamed_signature"]
