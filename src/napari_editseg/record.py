"""A label's record: the format — what it holds, how it is written, and how it is read back.

A record holds what made a label, complete enough to make it again bit for bit on the same
device: the expression (empty for clicks or a box alone), the resolved settings (the seed
among them), the model id with its hub revision or folder hash, package versions, device and
dtype, and per slice the image plane's hash, the points that made a word-less prior and the
clicks that refined it, plus the box. The widget keeps records in the Labels layer's metadata
and exports them in a JSON sidecar beside a TIFF (:func:`write_export`).

Reading (:func:`read_records`) checks every field against the schema below before anything
uses it, so a damaged or tampered file is one line naming the field, never a traceback and
never a model load. Making labels again from records is :mod:`napari_editseg.replay`.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .planes import plane_signature

FORMAT = "napari-editseg.record/1"
SIDECAR_SUFFIX = ".editseg.json"
MAX_FILE_BYTES = 256 * 2**20  # a sidecar of 100 000 slices is about 40 MB
MAX_SIDE = 2**31 - 1
MAX_ITEMS = 1_000_000  # records, slices or points in one list
DTYPES = ("float32", "float16", "bfloat16", "bf16-autocast")
DEVICE = re.compile(r"cpu|mps|cuda(:\d{1,3})?")


# -- writing ------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    import diffusers
    import torch
    import transformers

    from . import __version__

    return {"napari-editseg": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__}


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


def sidecar_path(labels_path) -> Path:
    """Where :func:`write_export` puts the records of ``labels_path``."""
    labels_path = Path(labels_path)
    return labels_path.with_name(labels_path.stem + SIDECAR_SUFFIX)


def write_export(labels_path, labels: np.ndarray, records: list[dict]) -> Path:
    """Labels as a TIFF and their records in a JSON sidecar beside it, each written whole or not
    at all (the records first: labels without their records are worth less); returns the sidecar."""
    from .files import check_outputs, write_json, write_labels

    labels_path = Path(labels_path)
    sidecar = sidecar_path(labels_path)
    check_outputs([("labels", labels_path), ("records", sidecar)])
    write_json(sidecar, {"format": FORMAT, "labels": labels_path.name, "shape": list(labels.shape),
                         "dtype": str(labels.dtype), "records": records})
    write_labels(labels_path, labels)
    return sidecar


# -- the schema ---------------------------------------------------------------------------
class RecordError(ValueError):
    """A record file that does not follow the format; the message names the field."""


Check = Callable[[Any, str], Any]  # (value, the field's name) -> the value; RecordError when it is not allowed


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(field: str, must: str, value: Any) -> None:
    raise RecordError(f"field {field!r} must be {must} (found {_shown(value)})")


def _text(limit: int = 100_000, empty: bool = True) -> Check:
    def check(value, field):
        if not isinstance(value, str) or len(value) > limit or (not empty and not value.strip()):
            _fail(field, f"{'non-empty ' * (not empty)}text of at most {limit} characters", value)
        return value
    return check


def _integer(low: int, high: int) -> Check:
    def check(value, field):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            _fail(field, f"a whole number from {low} to {high}", value)
        return value
    return check


def _number(value, field):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(field, "a finite number", value)
    return value


def _boolean(value, field):
    if not isinstance(value, bool):
        _fail(field, "true or false", value)
    return value


def _optional(check: Check) -> Check:
    return lambda value, field: None if value is None else check(value, field)


def _pattern(regex: "re.Pattern[str]", what: str) -> Check:
    def check(value, field):
        if not isinstance(value, str) or not regex.fullmatch(value):
            _fail(field, what, value)
        return value
    return check


def _list_of(item: Check, low: int = 0, high: int = MAX_ITEMS) -> Check:
    def check(value, field):
        if not isinstance(value, list) or not low <= len(value) <= high:
            size = f"{low}" if low == high else f"{low} to {high}"
            _fail(field, f"a list of {size} items", value)
        return [item(v, f"{field}[{i}]") for i, v in enumerate(value)]
    return check


def _fields(spec: dict[str, Check], optional: Sequence[str] = ()) -> Check:
    """A JSON object with the fields of ``spec`` (those in ``optional`` may be missing); others are kept as they are."""
    def check(value, field):
        if not isinstance(value, dict):
            _fail(field, "an object with the fields " + ", ".join(spec), value)
        out = dict(value)
        for name, inner in spec.items():
            where = f"{field}.{name}" if field else name
            if name not in value:
                if name not in optional:
                    raise RecordError(f"field {where!r} is missing")
                continue
            out[name] = inner(value[name], where)
        return out
    return check


def _text_map(value, field):
    if not isinstance(value, dict) or not all(isinstance(v, str) and len(v) <= 200 for v in value.values()):
        _fail(field, "an object of texts", value)
    return value


def _settings(value, field):
    from .core.settings import SegmentationSettings

    if not isinstance(value, dict):
        _fail(field, "an object of settings", value)
    try:
        SegmentationSettings().replace(**value)
    except (ValueError, TypeError) as error:
        raise RecordError(f"field {field!r}: {' '.join(str(error).split())[:300]}") from None
    return value


_FORMAT = _pattern(re.compile(re.escape(FORMAT)), repr(FORMAT))
_HEX64 = _pattern(re.compile(r"[0-9a-f]{64}"), "64 hexadecimal digits (a sha256)")
_POINTS = _list_of(_list_of(_number, 2, 2))
_PROMPT_POINTS = _fields({"positive": _POINTS, "negative": _POINTS})
RECORD = _fields({
    "format": _FORMAT,
    "label": _integer(1, 2**32 - 1),
    "expression": _text(),
    "box": _optional(_list_of(_number, 4, 4)),
    "settings": _settings,
    "model": _fields({"id": _text(4096, empty=False),
                      "revision": _optional(_pattern(re.compile(r"[0-9a-f]{40}"), "a 40-digit hub commit")),
                      "folder_sha256": _optional(_HEX64)}),
    "device": _pattern(DEVICE, "cpu, mps, cuda or cuda:N"),
    "dtype": _pattern(re.compile("(torch\\.)?(" + "|".join(DTYPES) + ")"), "one of " + ", ".join(DTYPES)),
    "versions": _optional(_text_map),
    "image": _fields({"layer": _text(), "shape": _list_of(_integer(1, MAX_SIDE), 2, 8), "dtype": _text(100),
                      "rgb": _boolean, "contrast_limits": _optional(_list_of(_number, 2, 2)),
                      "composite": _optional(_list_of(_text(), 1, 1000))}, optional=("layer", "dtype", "composite")),
    "slices": _list_of(_fields({"index": _list_of(_integer(0, MAX_SIDE), 0, 6), "plane_sha256": _HEX64,
                                "points": _PROMPT_POINTS, "clicks": _PROMPT_POINTS}), 1),
    "overwrite": _boolean,
    "confidence": _optional(_number),
    "time": _text(100),
}, optional=("versions", "confidence", "time"))
SIDECAR = _fields({"format": _FORMAT,
                   "shape": _optional(_list_of(_integer(1, MAX_SIDE), 2, 8)),
                   "records": _list_of(lambda value, field: value, 1)}, optional=("shape",))


def check_record(record: Any) -> dict:
    """``record`` checked against the format, fields and their agreement; RecordError naming the field."""
    record = RECORD(record, "")
    image = record["image"]
    shape, rgb = image["shape"], image["rgb"]
    planes = len(shape) - 2 - rgb
    if rgb and shape[-1] not in (3, 4):
        _fail("image.shape", "H×W×3 or H×W×4 (last) for an RGB image", shape)
    if planes < 0:
        _fail("image.shape", "at least two spatial sides", shape)
    if not rgb and not image.get("composite") and image["contrast_limits"] is None:
        raise RecordError("field 'image.contrast_limits' is missing: a grey image needs them")
    for n, entry in enumerate(record["slices"]):
        index = entry["index"]
        if len(index) != planes or any(i >= side for i, side in zip(index, shape)):
            _fail(f"slices[{n}].index", f"{planes} plane indices inside the image shape {shape}", index)
        if not record["expression"] and record["box"] is None and not entry["points"]["positive"]:
            raise RecordError(f"field 'slices[{n}].points.positive' is empty, and a record without words needs "
                              "positive points or a box")
    record["dtype"] = record["dtype"].replace("torch.", "")
    return record


def parse_records(content: Any) -> dict:
    """A sidecar (or a single record) as ``{"records": [...], "shape": ...}``, every record checked."""
    if not isinstance(content, dict):
        _fail("(the file)", "a JSON object", type(content).__name__)
    if content.get("format") != FORMAT:
        raise RecordError(f"not a napari-editseg record file (format {_shown(content.get('format'))}, "
                          f"expected {FORMAT!r})")
    if "records" not in content:
        return {"records": [check_record(content)], "shape": None}
    sidecar = SIDECAR(content, "")
    records = []
    for n, record in enumerate(sidecar["records"]):
        label = record.get("label") if isinstance(record, dict) else None
        try:
            records.append(check_record(record))
        except RecordError as error:
            raise RecordError(f"record {n + 1} (label {_shown(label)}): {error}") from None
    return {**sidecar, "records": records}


def read_records(path) -> dict:
    """A sidecar written by :func:`write_export` (or one record) as ``{"records": [...], "shape": ...}``,
    checked field by field (:func:`check_record`); one ValueError naming the file and the field otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"record file {str(path)!r} does not exist")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{str(path)!r} is larger than a record file can be ({MAX_FILE_BYTES >> 20} MiB)")
    try:
        content = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
        return parse_records(content)
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not a record file (not UTF-8 text)") from None
    except RecursionError:
        raise ValueError(f"{str(path)!r} is not a record file (nested too deeply)") from None
    except RecordError as error:
        raise ValueError(f"{str(path)!r}: {error}") from None
    except ValueError as error:  # json's own errors, with the line and column
        raise ValueError(f"{str(path)!r} is not a record file ({error})") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a record holds")


# -- names this module had before the split (the widget and older scripts import them from here) -----
def first_result(segmenter, expression: str, box, points: dict, **overrides: Any):
    """Deprecated: :func:`napari_editseg.prompt.segment_prompt` (``points`` as its positive/negative)."""
    from .prompt import segment_prompt

    return segment_prompt(segmenter, expression, box, points["positive"], points["negative"], **overrides)


def __getattr__(name: str) -> Any:
    """Replay's functions and the plane helpers, where they lived before record.py was split."""
    from . import planes, replay

    for module in (replay, planes):
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMAT", "SIDECAR_SUFFIX", "RecordError", "check_record", "find_slice", "first_result", "jsonable",
           "make_record", "parse_records", "plane_signature", "points_entry", "read_records", "sidecar_path",
           "slice_entry", "versions", "write_export"]
