"""A label's record: what made it, complete enough to make it again bit for bit on the same device.

Qt- and napari-free, shared by the widget (which writes records into the Labels layer's
metadata and exports them beside a TIFF), the ``napari-editseg replay`` command and the API
(:func:`replay`). A record holds the expression (empty for clicks or a box alone), the
resolved settings (the seed among them), the model id with its hub revision or folder hash,
package versions, device and dtype, and per slice the image plane's hash, the points that
made a word-less prior and the clicks that refined it, plus the box.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

FORMAT = "napari-editseg.record/1"
SIDECAR_SUFFIX = ".editseg.json"


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    import diffusers
    import torch
    import transformers

    from . import __version__

    return {"napari-editseg": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__}


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


def paintable(current: np.ndarray, mask: np.ndarray, label_id: int, overwrite: bool) -> np.ndarray:
    """The mask pixels a label may take: all of them with ``overwrite``, else those free or already its own."""
    return mask if overwrite else mask & ((current == 0) | (current == label_id))


def jsonable(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python, recursively (JSON round-trips floats exactly)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def points_entry(positive: Sequence = (), negative: Sequence = ()) -> dict:
    return {"positive": [list(map(float, p)) for p in positive], "negative": [list(map(float, p)) for p in negative]}


def make_record(*, label: int, expression: str, box, settings: dict, model: dict, device: str, dtype: str,
                image: dict, slices: list[dict], overwrite: bool, confidence: Optional[float] = None) -> dict:
    """One label's record; ``slices`` from :func:`slice_entry`. JSON-ready."""
    return jsonable({
        "format": FORMAT, "label": int(label), "expression": expression, "box": box, "settings": settings,
        "model": model, "device": device, "dtype": dtype, "versions": versions(), "image": image,
        "slices": slices, "overwrite": bool(overwrite), "confidence": confidence,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def slice_entry(index: Sequence[int], signature: str, points: dict, clicks: dict) -> dict:
    """Per slice: where, which plane (its hash), the points of a word-less prior, the clicks."""
    return {"index": [int(i) for i in index], "plane_sha256": signature, "points": points, "clicks": clicks}


def find_slice(record: dict, index: Sequence[int] = ()) -> dict:
    for entry in record["slices"]:
        if tuple(entry["index"]) == tuple(index):
            return entry
    raise ValueError(f"label {record['label']}'s record has no slice {tuple(index)}; it has "
                     f"{[tuple(e['index']) for e in record['slices']]}")


def first_result(segmenter, expression: str, box, points: dict, **overrides: Any):
    """The unrefined result a run starts from: one UNet forward on the set image.

    Word-less runs (empty ``expression``) keep their points out of the result, so that
    clicks (``refine``) can be taken back; their prior still comes from ``points``, the
    clicks the run started with (``{"positive": [...], "negative": [...]}``).
    """
    if expression:
        return segmenter.segment(expression, box=box, **overrides)
    result = segmenter.segment_points(points["positive"], points["negative"], box=box, **overrides)
    return replace(result, positive=(), negative=())


def load_recorded_model(record: dict, model: Optional[str] = None, device: Optional[str] = None):
    """Load the record's model (or ``model``, e.g. a moved folder) and check it is the same one."""
    from .core.segmenter import EditSegmenter
    from .hub import check_identity, model_identity

    segmenter = EditSegmenter.from_pretrained(model or record["model"]["id"], device=device or record["device"],
                                              dtype=record["dtype"].replace("torch.", ""))
    check_identity(record["model"], model_identity(segmenter.model))
    return segmenter


def version_notes(record: dict) -> list[str]:
    """Differences that may change results (bit-for-bit holds only on the same device and versions)."""
    now = versions()
    return [f"recorded with {name} {then}, running {now.get(name)}"
            for name, then in record.get("versions", {}).items() if now.get(name) != then]


def replay(record: dict, plane: np.ndarray, index: Sequence[int] = (), segmenter=None):
    """Make a recorded label's slice again: the :class:`Segmentation` whose mask the widget painted.

    ``plane`` is the image plane as the core was given it (:func:`plane_as_seen`); its hash must
    match the record's. ``segmenter``: an already loaded model, else the record's is loaded.
    """
    entry = find_slice(record, index)
    if plane_signature(plane) != entry["plane_sha256"]:
        raise ValueError(f"the image plane {tuple(index)} differs from the one label {record['label']} was made on")
    for note in version_notes(record):
        warnings.warn(note, stacklevel=2)
    segmenter = segmenter or load_recorded_model(record)
    segmenter.set_image(plane)
    base = first_result(segmenter, record["expression"], record["box"], entry["points"], **record["settings"])
    clicks = entry["clicks"]
    return segmenter.refine(base, clicks["positive"], clicks["negative"])


def write_export(labels_path, labels: np.ndarray, records: list[dict]) -> Path:
    """Labels as a TIFF and their records in a JSON sidecar beside it; returns the sidecar's path."""
    from .files import write_labels

    labels_path = Path(labels_path)
    write_labels(labels_path, labels)
    sidecar = labels_path.with_name(labels_path.stem + SIDECAR_SUFFIX)
    sidecar.write_text(json.dumps({"format": FORMAT, "labels": labels_path.name, "shape": list(labels.shape),
                                   "dtype": str(labels.dtype), "records": records}, indent=1))
    return sidecar


def read_records(path) -> dict:
    """A sidecar written by :func:`write_export` (or one record), as ``{"records": [...], ...}``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"record file {str(path)!r} does not exist")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} is not a record file ({error})") from None
    if content.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a napari-editseg record file (format {content.get('format')!r})")
    return content if "records" in content else {"records": [content], "shape": None}


def replay_labels(records: list[dict], image: np.ndarray, segmenter_for, shape: Optional[Sequence[int]] = None,
                  dtype=np.uint32) -> np.ndarray:
    """Paint every record's label again, in record order, as the widget painted them.

    ``image``: the image layer's data (not composites: their plane needs napari's colormaps).
    ``segmenter_for(record)`` gives a loaded model for a record (so one model serves many).
    """
    out = None
    for record in records:
        source = record["image"]
        if source.get("composite"):
            raise ValueError(f"label {record['label']} was made on a composite of layers "
                             f"({', '.join(source['composite'])}); replay it from Python with that plane")
        if list(image.shape) != list(source["shape"]):
            raise ValueError(f"the image has shape {tuple(image.shape)}, label {record['label']} was made on "
                             f"{tuple(source['shape'])}")
        if out is None:
            spatial = image.shape[:-1] if source["rgb"] else image.shape
            out = np.zeros(tuple(shape) if shape else spatial, dtype)
        segmenter = segmenter_for(record)
        for entry in record["slices"]:
            index = tuple(entry["index"])
            plane = plane_as_seen(image, index, source["rgb"], source["contrast_limits"])
            mask = replay(record, plane, index, segmenter).mask
            target = out[index]
            target[paintable(target, mask, record["label"], record["overwrite"])] = record["label"]
    return out
