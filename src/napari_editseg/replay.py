"""Making labels again from their records (:mod:`napari_editseg.record`), bit for bit on the same device.

Used by the ``napari-editseg replay`` command and from Python. Records are checked against
the format when read (:func:`~napari_editseg.record.read_records`); here they meet the image:
its shape, each plane's hash, and the model, which must be the recorded one (its hub
revision or its folder's content hash). A record never makes this reach the network: the
recorded model is looked up in the Hugging Face cache only, unless the caller names a model.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import numpy as np

from .planes import paintable, plane_as_seen, plane_signature
from .prompt import segment_prompt
from .record import find_slice, versions


def load_recorded_model(record: dict, model: Optional[str] = None, device: Optional[str] = None):
    """Load the record's model (or ``model``, e.g. a moved folder) and check it is the same one.

    The recorded id is loaded from this machine only (a folder, or the Hugging Face cache):
    a record is data and must not make the machine contact the hub. A ``model`` the caller
    names may be downloaded as any model the user asks for."""
    from .core.segmenter import EditSegmenter
    from .hub import check_identity, model_identity

    segmenter = EditSegmenter.from_pretrained(model or record["model"]["id"], device=device or record["device"],
                                              dtype=record["dtype"], local_files_only=True if model is None else None)
    check_identity(record["model"], model_identity(segmenter.model))
    return segmenter


def version_notes(record: dict) -> list[str]:
    """Differences that may change results (bit-for-bit holds only on the same device and versions)."""
    now = versions()
    return [f"recorded with {name} {then}, running {now.get(name)}; bit-for-bit needs the same versions"
            for name, then in (record.get("versions") or {}).items() if now.get(name) != then]


def recorded_settings(record: dict) -> dict:
    """The settings the record was made with: a setting it lacks did not exist yet, and takes the value
    that was its behaviour then (``BEFORE_IT_EXISTED``), not today's default."""
    from .core.settings import BEFORE_IT_EXISTED

    return {**BEFORE_IT_EXISTED, **record["settings"]}


def replay(record: dict, plane: np.ndarray, index: Sequence[int] = (), segmenter=None):
    """Make a recorded label's slice again: the :class:`Segmentation` whose mask the widget painted.

    ``plane`` is the image plane as the core was given it (:func:`~napari_editseg.planes.plane_as_seen`);
    its hash must match the record's. ``segmenter``: an already loaded model, else the record's is loaded.
    """
    entry = find_slice(record, index)
    if plane_signature(plane) != entry["plane_sha256"]:
        raise ValueError(f"the image plane {tuple(index)} differs from the one label {record['label']} was made on")
    for note in version_notes(record):
        warnings.warn(note, stacklevel=2)
    segmenter = segmenter or load_recorded_model(record)
    segmenter.set_image(plane)
    points = entry["points"]
    base = segment_prompt(segmenter, record["expression"], record["box"], points["positive"], points["negative"],
                          **recorded_settings(record))
    clicks = entry["clicks"]
    return segmenter.refine(base, clicks["positive"], clicks["negative"])


def check_image(records: list[dict], image: np.ndarray, shape: Optional[Sequence[int]] = None) -> tuple[int, ...]:
    """Refuse, before any model loads, records the image cannot replay; the labels' shape."""
    spatial = None
    for record in records:
        source = record["image"]
        if source.get("composite"):
            raise ValueError(f"label {record['label']} was made on a composite of layers "
                             f"({', '.join(source['composite'])}); replay it from Python with that plane")
        if list(image.shape) != list(source["shape"]):
            raise ValueError(f"the image has shape {tuple(image.shape)}, label {record['label']} was made on "
                             f"{tuple(source['shape'])}")
        spatial = tuple(image.shape[:-1] if source["rgb"] else image.shape)
    if shape is not None and tuple(shape) != spatial:
        raise ValueError(f"the record file's labels have shape {tuple(shape)}, not the image's {spatial}")
    return spatial


def replay_labels(records: list[dict], image: np.ndarray, segmenter_for: Callable,
                  shape: Optional[Sequence[int]] = None, dtype=np.uint32) -> np.ndarray:
    """Paint every record's label again, in record order, as the widget painted them.

    ``image``: the image layer's data (not composites: their plane needs napari's colormaps).
    ``segmenter_for(record)`` gives a loaded model for a record (so one model serves many).
    """
    out = np.zeros(check_image(records, image, shape), dtype)
    for record in records:
        source = record["image"]
        segmenter = segmenter_for(record)
        for entry in record["slices"]:
            index = tuple(entry["index"])
            plane = plane_as_seen(image, index, source["rgb"], source["contrast_limits"])
            mask = replay(record, plane, index, segmenter).mask
            target = out[index]
            target[paintable(target, mask, record["label"], record["overwrite"])] = record["label"]
    return out


__all__ = ["check_image", "load_recorded_model", "paintable", "plane_as_seen", "replay", "replay_labels",
           "version_notes"]
