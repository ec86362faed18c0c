"""Between napari layers and the core: planes out of image layers, masks into Labels layers.

napari data models only (no Qt), so it can be tested without a window. Every write to a
Labels layer goes through ``data_setitem`` inside ``block_history``, so one segmentation
is one Ctrl+Z step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd

COMPOSITE = "composite of visible image layers"


def spatial_ndim(layer) -> int:
    """Number of spatial axes of an image layer (its data minus the RGB(A) axis)."""
    return layer.data.ndim - (1 if layer.rgb else 0)


def leading_shape(layer) -> tuple[int, ...]:
    """Shape of the axes in front of the two displayed ones (z, t, …)."""
    return tuple(layer.data.shape[: spatial_ndim(layer) - 2])


def current_index(layer, world_point: Sequence[float]) -> tuple[int, ...]:
    """The leading-axes index of the slice the viewer shows, in this layer's data."""
    n_lead = spatial_ndim(layer) - 2
    if n_lead == 0:
        return ()
    point = np.asarray(layer.world_to_data(world_point))
    shape = leading_shape(layer)
    return tuple(int(np.clip(round(float(point[d])), 0, shape[d] - 1)) for d in range(n_lead))


def slice_indices(layer, world_point, axis: Optional[int]) -> list[tuple[int, ...]]:
    """The current slice, or every slice along leading ``axis`` with the other axes held."""
    here = current_index(layer, world_point)
    if axis is None or not here:
        return [here]
    if not 0 <= axis < len(here):
        raise ValueError(f"axis {axis} is not a slice axis of {layer.name!r} (it has {len(here)})")
    return [here[:axis] + (i,) + here[axis + 1:] for i in range(leading_shape(layer)[axis])]


def displayed_plane(layer, index: tuple[int, ...]) -> np.ndarray:
    """The 2-D plane (H×W or H×W×3/4) at ``index``, as the user sees it.

    RGB layers are passed as they are. Grey layers are scaled by their contrast limits,
    so a 12-bit image in a uint16 array is not segmented as if nearly black.
    """
    plane = np.asarray(layer.data[index])
    if layer.rgb:
        return plane
    low, high = (float(v) for v in layer.contrast_limits)
    scaled = (plane.astype(np.float32) - low) / (high - low) if high > low else np.zeros(plane.shape, np.float32)
    return np.clip(scaled, 0.0, 1.0)


def composite_plane(layers: Sequence, index: tuple[int, ...]) -> np.ndarray:
    """Visible single-channel layers blended additively through their colormaps (RGB in [0, 1])."""
    layers = [layer for layer in layers if layer.visible and not layer.rgb]
    if not layers:
        raise ValueError("no visible single-channel image layers to composite")
    shape = layers[0].data.shape
    if any(layer.data.shape != shape for layer in layers):
        raise ValueError("the visible image layers differ in shape; pick one layer instead of the composite")
    rgb = np.zeros(shape[-2:] + (3,), np.float32)
    for layer in layers:
        colours = layer.colormap.map(displayed_plane(layer, index).ravel())[:, :3]
        rgb += colours.reshape(rgb.shape).astype(np.float32) * float(layer.opacity)
    return np.clip(rgb, 0.0, 1.0)


def world_to_pixel(layer, world_point: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, float]]:
    """A world point → (leading index, (row, col)) in the layer's data."""
    point = np.asarray(layer.world_to_data(world_point), float)
    n_lead = spatial_ndim(layer) - 2
    lead = tuple(int(round(v)) for v in point[:n_lead])
    return lead, (float(point[n_lead]), float(point[n_lead + 1]))


def transform_kwargs(layer) -> dict:
    """Keyword arguments that place a new layer exactly over ``layer``."""
    return dict(scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear,
                affine=layer.affine)


def next_label_id(labels) -> int:
    used = int(np.max(labels.data)) if labels.data.size else 0
    features = labels.features
    if "index" in features and len(features):
        used = max(used, int(features["index"].max()))
    return used + 1


@dataclass
class Written:
    """What one write changed, so a re-threshold or click can replace it in place."""

    labels: object
    index: tuple[int, ...]
    label_id: int
    pixels: tuple[np.ndarray, ...] = field(default_factory=tuple)  # full-data indices written
    previous: np.ndarray = field(default_factory=lambda: np.zeros(0))
    skipped: int = 0  # mask pixels left alone because another label was there


def write_mask(
    labels, index: tuple[int, ...], mask: np.ndarray, label_id: int, overwrite: bool = False,
    replacing: Optional[Written] = None,
) -> Written:
    """Paint ``mask`` into plane ``index`` of ``labels`` as one undoable step.

    Pixels holding another label are kept unless ``overwrite``. ``replacing`` (an earlier
    write of this label on this plane) is taken back first, in the same undo step.
    """
    plane_shape = labels.data.shape[len(index):]
    if mask.shape != plane_shape:
        raise ValueError(f"mask of shape {mask.shape} does not fit the labels plane of shape {plane_shape}")
    with labels.block_history():
        if replacing is not None and replacing.pixels and replacing.pixels[0].size:
            labels.data_setitem(replacing.pixels, replacing.previous, refresh=False)
        current = np.asarray(labels.data[index])
        free = (current == 0) | (current == label_id)
        target = mask if overwrite else mask & free
        rows, cols = np.nonzero(target)
        pixels = tuple(np.full(rows.shape, i) for i in index) + (rows, cols)
        previous = np.array(labels.data[pixels], copy=True)
        if rows.size:
            labels.data_setitem(pixels, label_id, refresh=False)
    labels.refresh()
    return Written(labels, index, label_id, pixels, previous, int((mask & ~free).sum()) if not overwrite else 0)


def record_label(labels, label_id: int, expression: str, details: dict) -> None:
    """Keep which words made which label in the layer's features (shown on hover) and metadata."""
    table = pd.DataFrame(labels.features).copy()
    row = {"index": label_id, "expression": expression, **{k: str(v) for k, v in details.items()}}
    if "index" in table and (table["index"] == label_id).any():
        table = table[table["index"] != label_id]
    table = pd.concat([table, pd.DataFrame([row])], ignore_index=True).sort_values("index", ignore_index=True)
    labels.features = table
    history = labels.metadata.setdefault("editseg", [])
    history.append({"label": label_id, "expression": expression, **details})
