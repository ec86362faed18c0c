"""Between napari layers and the core: planes out of image layers, masks into Labels layers.

napari data models only (no Qt), so it can be tested without a window. Every write to a
Labels layer goes through ``data_setitem`` inside ``block_history``, so one call of
:func:`write_masks` — all slices of a run — is one Ctrl+Z step.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .planes import paintable, plane_as_seen

COMPOSITE = "composite of visible image layers"
Index = tuple[int, ...]


def spatial_ndim(layer) -> int:
    """Number of spatial axes of an image layer (its data minus the RGB(A) axis)."""
    return layer.data.ndim - (1 if layer.rgb else 0)


def leading_shape(layer) -> tuple[int, ...]:
    """Shape of the axes in front of the two displayed ones (z, t, …)."""
    return tuple(layer.data.shape[: spatial_ndim(layer) - 2])


def current_index(layer, world_point: Sequence[float]) -> Index:
    """The leading-axes index of the slice the viewer shows, in this layer's data."""
    n_lead = spatial_ndim(layer) - 2
    if n_lead == 0:
        return ()
    point = np.asarray(layer.world_to_data(world_point))
    shape = leading_shape(layer)
    return tuple(int(np.clip(round(float(point[d])), 0, shape[d] - 1)) for d in range(n_lead))


def slice_indices(layer, world_point, axis: Optional[int]) -> list[Index]:
    """The current slice, or every slice along leading ``axis`` with the other axes held."""
    here = current_index(layer, world_point)
    if axis is None or not here:
        return [here]
    if not 0 <= axis < len(here):
        raise ValueError(f"axis {axis} is not a slice axis of {layer.name!r} (it has {len(here)})")
    return [here[:axis] + (i,) + here[axis + 1:] for i in range(leading_shape(layer)[axis])]


def displayed_plane(layer, index: Index) -> np.ndarray:
    """The 2-D plane at ``index`` as the user sees it (see :func:`record.plane_as_seen`)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data  # a pyramid: its finest level
    return plane_as_seen(data, index, layer.rgb, None if layer.rgb else layer.contrast_limits)


def composite_plane(layers: Sequence, index: Index) -> np.ndarray:
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


def world_to_pixel(layer, world_point: Sequence[float]) -> tuple[Index, tuple[float, float]]:
    """A world point → (leading index, (row, col)) in the layer's data."""
    point = np.asarray(layer.world_to_data(world_point), float)
    n_lead = spatial_ndim(layer) - 2
    lead = tuple(int(round(v)) for v in point[:n_lead])
    return lead, (float(point[n_lead]), float(point[n_lead + 1]))


def transform_kwargs(layer) -> dict:
    """Keyword arguments that place a new layer of the same dimensions exactly over ``layer``."""
    return dict(scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear,
                affine=layer.affine, units=layer.units)


def plane_transform(layer) -> dict:
    """Keyword arguments that place a 2-D layer over the displayed plane of ``layer``.

    The layer's whole data-to-world transform (scale, translate, rotate, shear and affine)
    restricted to its last two axes; for a 2-D layer, its own transform.
    """
    if spatial_ndim(layer) == 2:
        return transform_kwargs(layer)
    from napari.utils.transforms import Affine

    physical = Affine(scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear)
    n = spatial_ndim(layer)
    return dict(affine=layer.affine.compose(physical).set_slice([n - 2, n - 1]).affine_matrix,
                units=tuple(layer.units)[-2:])


def box_from_shapes(shapes, image) -> Optional[tuple[int, int, int, int]]:
    """The last rectangle of a Shapes layer as (row0, col0, row1, col1) pixels of ``image``, or None.

    A pixel belongs to the box when the rectangle's corners enclose it, counting a pixel as
    the unit square around its centre; rotated layers give the enclosing upright box.
    """
    rectangles = [data for data, kind in zip(shapes.data, shapes.shape_type) if kind == "rectangle"]
    if not rectangles:
        return None
    corners = np.array([image.world_to_data(shapes.data_to_world(v)) for v in rectangles[-1]])[:, -2:]
    (r0, c0), (r1, c1) = corners.min(axis=0), corners.max(axis=0)
    return (math.floor(r0 + 0.5), math.floor(c0 + 0.5), math.floor(r1 + 0.5) + 1, math.floor(c1 + 0.5) + 1)


def clicks_by_slice(points, image, shape: tuple[int, int]) -> dict[Index, tuple[list, list]]:
    """(positive, negative) (row, col) lists per slice of ``image``, from a Points layer whose
    ``positive`` feature says each point's polarity; points outside the image are left out."""
    per_index: dict = {}
    polarity = points.features.get("positive", np.ones(len(points.data), bool))
    for point, positive in zip(points.data, np.asarray(polarity, bool)):
        index, pixel = world_to_pixel(image, points.data_to_world(point))
        if 0 <= pixel[0] < shape[0] and 0 <= pixel[1] < shape[1]:
            per_index.setdefault(index, ([], []))[0 if positive else 1].append(pixel)
    return per_index


def next_label_id(labels, taken: Sequence[int] = ()) -> int:
    """One above the highest label in the data or in ``taken`` (labels that must not be reused)."""
    used = int(np.max(labels.data)) if labels.data.size else 0
    return max([used, *taken]) + 1


@dataclass
class Footprint:
    """The pixels of one plane a run has painted, with their values from before the run.

    Re-scoring takes back those that still hold the label (an undo or a hand edit since
    may have changed others) before painting the new mask; a label whose footprint holds
    it nowhere any more has been undone or erased.
    """

    flat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted flat plane indices
    before: np.ndarray = field(default_factory=lambda: np.zeros(0))  # their values before the run
    skipped: int = 0  # pixels of the last mask left alone because another label was there

    def holds(self, plane: np.ndarray, label_id: int) -> np.ndarray:
        return plane.reshape(-1)[self.flat] == label_id

    def add(self, flat: np.ndarray, values: np.ndarray) -> None:
        new = ~np.isin(flat, self.flat)
        order = np.argsort(np.concatenate([self.flat, flat[new]]), kind="stable")
        self.flat = np.concatenate([self.flat, flat[new]])[order]
        self.before = np.concatenate([self.before.astype(values.dtype), values[new]])[order]


def _coordinates(index: Index, flat: np.ndarray, plane_shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    return tuple(np.full(flat.shape, i) for i in index) + np.unravel_index(flat, plane_shape)


def present(labels, footprints: dict[Index, Footprint], label_id: int) -> bool:
    """Whether any plane still holds the label where the run painted it."""
    return any(fp.flat.size and fp.holds(np.asarray(labels.data[index]), label_id).any()
               for index, fp in footprints.items())


def write_masks(
    labels, masks: dict[Index, np.ndarray], label_id: int, overwrite: bool, footprints: dict[Index, Footprint],
    step: bool = True,
) -> None:
    """Paint each plane's mask into ``labels`` as ONE undoable step, updating ``footprints``.

    What the run painted earlier and the label still holds is taken back first, in the
    same step. Pixels holding another label are kept unless ``overwrite``. ``step=False``:
    inside a ``block_history`` the caller holds open (napari commits at every exit, so
    nesting one here would make this write its own step).
    """
    with labels.block_history() if step else nullcontext():
        for index, mask in masks.items():
            plane_shape = labels.data.shape[len(index):]
            if mask.shape != plane_shape:
                raise ValueError(f"mask of shape {mask.shape} does not fit the labels plane of shape {plane_shape}")
            footprint = footprints.setdefault(index, Footprint())
            if footprint.flat.size:
                holds = footprint.holds(np.asarray(labels.data[index]), label_id)
                labels.data_setitem(_coordinates(index, footprint.flat[holds], plane_shape),
                                    footprint.before[holds], refresh=False)
            current = np.array(labels.data[index], copy=True)
            target = paintable(current, mask, label_id, overwrite)
            flat = np.flatnonzero(target)
            footprint.add(flat, current.reshape(-1)[flat])
            footprint.skipped = int((mask & ~target).sum())
            if flat.size:
                labels.data_setitem(_coordinates(index, flat, plane_shape), label_id, refresh=False)
    labels.refresh()


def _plane_before(labels, index: Index, footprint: Footprint, label_id: int) -> np.ndarray:
    """The plane as it would be with the run's pixels that still hold the label taken back."""
    plane = np.array(labels.data[index], copy=True)
    if footprint.flat.size:
        holds = footprint.holds(plane, label_id)
        plane.reshape(-1)[footprint.flat[holds]] = footprint.before[holds]
    return plane


def paintable_pixels(labels, masks: dict[Index, np.ndarray], label_id: int, overwrite: bool,
                     footprints: dict[Index, Footprint]) -> int:
    """How many pixels :func:`write_masks` would paint, without painting: 0 means the label would be empty."""
    return sum(int(paintable(_plane_before(labels, index, footprints.get(index, Footprint()), label_id), mask,
                             label_id, overwrite).sum()) for index, mask in masks.items())


def painted_pixels(labels, footprints: dict[Index, Footprint], label_id: int) -> dict[Index, int]:
    """Per plane, the pixels that hold the label where the run painted it (what the status reports)."""
    return {index: int(fp.holds(np.asarray(labels.data[index]), label_id).sum()) if fp.flat.size else 0
            for index, fp in footprints.items()}


def label_digest(labels, indices, label_id: int) -> str:
    """A hash of where ``label_id`` is on the planes ``indices``: equal digests, equal objects."""
    import hashlib

    digest = hashlib.sha256()
    for index in sorted(indices):
        digest.update(np.packbits(np.asarray(labels.data[index]) == label_id).tobytes())
    return digest.hexdigest()


# Bright colours a label stays visible in on photographs, grey images and the shapes world's red,
# green and blue objects (napari's default gives label 1 a dark red).
LABEL_COLOURS = ("#00e5ff", "#ffea00", "#ff40ff", "#76ff03", "#ff9100", "#2979ff", "#ffffff", "#ff1744")


def label_colormap():
    """A cyclic colormap over :data:`LABEL_COLOURS` (label 1 cyan, 2 yellow, …), 0 transparent."""
    from napari.utils.colormaps import CyclicLabelColormap

    return CyclicLabelColormap(colors=[(0, 0, 0, 0), *LABEL_COLOURS], background_value=0)


def click_size(image) -> float:
    """Click markers as wide as 2.5 % of the image's shorter side (at least 1.5 pixels): small enough
    to leave a 64-pixel picture's objects visible, large enough to see on a 2000-pixel one."""
    shape = image.data.shape[: spatial_ndim(image)][-2:]
    return max(1.5, 0.025 * min(shape))


def records(labels) -> dict[int, dict]:
    """Every record kept on a Labels layer, by label id (also those of labels since undone)."""
    return labels.metadata.setdefault("editseg", {})


def show_records(labels, present: Sequence[int]) -> None:
    """The features table (shown on hover) lists the labels that are there, with their words."""
    kept = [records(labels)[label] for label in sorted(present) if label in records(labels)]
    table = {
        "index": [r["label"] for r in kept],
        "expression": [r["expression"] or ("box" if not any(s["points"]["positive"] for s in r["slices"])
                                           else "clicks") for r in kept],
        "model": [r["model"]["id"] for r in kept],
    }
    shown = labels.features
    if list(shown.columns) != list(table) or any(list(shown[k]) != v for k, v in table.items()):
        labels.features = table


# -- the viewer's layers as the widget offers and uses them ------------------------------------------
CLICKS_LAYER, BOX_LAYER = "editseg clicks", "editseg box"
PRIOR_LAYER, SCORES_LAYER = "editseg prior", "editseg scores"
OVERLAYS = (CLICKS_LAYER, BOX_LAYER, PRIOR_LAYER, SCORES_LAYER)


def images(viewer) -> list:
    """The image layers a run can read (not the widget's own maps)."""
    return [layer for layer in viewer.layers if layer._type_string == "image" and layer.name not in OVERLAYS]


def image_choices(viewer) -> list[str]:
    names = [layer.name for layer in images(viewer)]
    grey = [layer for layer in images(viewer) if not layer.rgb]
    return names + ([COMPOSITE] if len(grey) > 1 else [])


def labels_names(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers if layer._type_string == "labels"]


def prompt_box(viewer, image) -> Optional[tuple[int, int, int, int]]:
    return box_from_shapes(viewer.layers[BOX_LAYER], image) if BOX_LAYER in viewer.layers else None


def prompt_clicks(viewer, image, shape: tuple[int, int]) -> dict:
    return clicks_by_slice(viewer.layers[CLICKS_LAYER], image, shape) if CLICKS_LAYER in viewer.layers else {}


def add_clicks_layer(viewer, image, changed, toggle) -> None:
    """The clicks layer over ``image``: small rings (green include, magenta exclude) that leave the objects
    visible; ``changed`` on every edit, ``toggle`` on T."""
    points = viewer.add_points(
        np.zeros((0, spatial_ndim(image))), name=CLICKS_LAYER, size=click_size(image), symbol="ring",
        features={"positive": np.zeros(0, bool)}, face_color="positive",
        face_color_cycle={True: "lime", False: "magenta"}, **transform_kwargs(image),
    )
    points.events.data.connect(changed)
    points.bind_key("t", lambda _layer: toggle(), overwrite=True)


def add_box_layer(viewer, image) -> None:
    viewer.add_shapes(ndim=spatial_ndim(image), name=BOX_LAYER, edge_color="yellow", face_color="transparent",
                      edge_width=2, **transform_kwargs(image))


def clear_prompts(viewer) -> None:
    """Empty the clicks and the box (after a commit or a clear: the next object starts afresh)."""
    if CLICKS_LAYER in viewer.layers:
        viewer.layers[CLICKS_LAYER].data = np.zeros((0, viewer.layers[CLICKS_LAYER].ndim))
    if BOX_LAYER in viewer.layers:
        viewer.layers[BOX_LAYER].data = []


def show_maps(viewer, result, image, prior: bool, scores: bool) -> None:
    """Prior and score maps of the shown slice as image layers exactly over the image."""
    for show, name, data, colormap in ((prior, PRIOR_LAYER, result.prior, "inferno"),
                                       (scores, SCORES_LAYER, result.scores, "viridis")):
        if not show:
            continue
        if name in viewer.layers:
            viewer.layers[name].data = data
        else:  # units set afterwards: napari 0.5's add_image reads a sequence as one value per channel
            placed = plane_transform(image)
            units = placed.pop("units")
            viewer.add_image(data, name=name, colormap=colormap, opacity=0.5, blending="additive",
                             contrast_limits=(0.0, 1.0), **placed).units = units
