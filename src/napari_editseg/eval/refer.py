"""RefCOCO / RefCOCO+ / RefCOCOg readers: the refer layout and the HF parquet layout.

Both yield the same :class:`RefSample` records: one per (ref, sentence), with the
ground-truth mask rasterised from the ``ann_id`` annotation's polygons with pycocotools
at the image's original size, summed over polygons and binarised ``== 1`` (the reference
code; pixels covered by two polygons drop out) or ``> 0``.
"""

from __future__ import annotations

import builtins
import functools
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..image_files import MAX_IMAGE_PIXELS, read_image
from . import need_extra

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
PARQUET_NAMES = {"refcoco": "refcoco", "refcoco+": "refcoco_plus", "refcocog": "refcocog"}
# sentences per split, as published; printed and checked when a whole split is run
EXPECTED_SAMPLES = {
    ("refcoco", "unc", "val"): 10834, ("refcoco", "unc", "testA"): 5657, ("refcoco", "unc", "testB"): 5095,
    ("refcoco+", "unc", "val"): 10758, ("refcoco+", "unc", "testA"): 5726, ("refcoco+", "unc", "testB"): 4889,
    ("refcocog", "umd", "val"): 4896, ("refcocog", "umd", "test"): 9602,
}
COCO_IMAGES = Path("images") / "mscoco" / "images" / "train2014"
MAX_REFS_BYTES = 2**30  # refs(umd).p of RefCOCOg is about 60 MB


@dataclass
class RefSample:
    key: str  # "ref_id/sent_id": unique per sample
    image_key: str  # samples of one image share it (and its cached latents)
    sentence: str
    ref_id: int
    sent_id: int
    ann_id: int
    image_id: int
    split: str
    height: int
    width: int
    load_image: Callable[[], np.ndarray]
    load_mask: Callable[[], np.ndarray]
    image_file: Optional[Path] = None  # the picture's own file (refer layout), an input no output may replace


def select_split(refs: list, split: str) -> list:
    """The refer API's rule: testA/testB/testC match refs whose split contains the letter,
    test matches every split containing "test", the rest match exactly."""
    splits = [str(r.get("split", "")) for r in refs]  # a ref without a split belongs to none
    if split in ("testA", "testB", "testC"):
        return [r for r, s in zip(refs, splits) if split[-1] in s]
    if split == "test":
        return [r for r, s in zip(refs, splits) if "test" in s]
    if split in ("train", "val", "testAB", "testBC", "testAC"):
        return [r for r, s in zip(refs, splits) if s == split]
    raise ValueError(f"no such split {split!r}: use train, val, test, testA, testB, testC")


def annotation_mask(segmentation: Any, height: int, width: int, binarise: str = "eq1") -> np.ndarray:
    """COCO polygons (or RLE) → bool H×W, polygons summed, then ``== 1`` or ``> 0``.

    A malformed annotation (no polygon, a polygon of fewer than three points, an RLE without
    counts) raises a ValueError that says so; the harness scores that sample as failed.
    """
    coco_mask = need_extra("pycocotools.mask", "rasterising RefCOCO annotations")

    if binarise not in ("eq1", "gt0"):
        raise ValueError(f"binarise must be 'eq1' or 'gt0', not {binarise!r}")
    check_mask_size(height, width)
    if isinstance(segmentation, dict) and isinstance(segmentation.get("size"), (list, tuple)):
        check_mask_size(*(list(segmentation["size"]) + [0, 0])[:2])
    if isinstance(segmentation, list):  # polygons
        if not segmentation or not all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p) for p in segmentation
        ):
            raise ValueError("malformed polygon annotation: expected one or more lists of at least 3 (x, y) points")
        counts = coco_mask.decode(coco_mask.frPyObjects(segmentation, height, width)).astype(np.int32)
        counts = counts.sum(axis=2) if counts.ndim == 3 else counts
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:  # RLE
        try:
            if isinstance(segmentation.get("counts"), list):
                segmentation = coco_mask.frPyObjects(segmentation, height, width)
            counts = coco_mask.decode(segmentation).astype(np.int32)
        except Exception as error:  # pycocotools raises bare Exceptions
            raise ValueError(f"malformed RLE annotation ({error})") from None
    else:
        raise ValueError(f"malformed annotation: segmentation is {type(segmentation).__name__}, "
                         "not polygons or RLE")
    if binarise == "eq1":
        return counts == 1
    if binarise == "gt0":
        return counts > 0
    raise ValueError(f"binarise must be 'eq1' or 'gt0', not {binarise!r}")


def check_mask_size(height: Any, width: Any) -> None:
    """Refuse, before pycocotools allocates it, a mask size that is not a picture's: pycocotools
    computes height × width in 32 bits, and 200000 × 200000 made it write past its buffer."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (height, width)) or min(height, width) < 1:
        raise ValueError(f"annotation size {height!r} x {width!r} is not a picture's size")
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(f"annotation size {height} x {width} = {height * width / 1e6:.0f} M pixels is more than the "
                         f"{MAX_IMAGE_PIXELS / 1e6:.0f} M a ground-truth mask may have: this sample is skipped")


def _missing(what: str) -> Callable[[], np.ndarray]:
    """A loader for data the annotations lack: the sample is scored as failed, the run goes on."""
    def fail() -> np.ndarray:
        raise ValueError(what)
    return fail


def _mask_loader(ann: Optional[dict], ann_id: Any, h: int, w: int, binarise: str) -> Callable[[], np.ndarray]:
    if ann is None:
        return _missing(f"annotation {ann_id} is not in the annotations")
    if "segmentation" not in ann:
        return _missing(f"annotation {ann_id} has no segmentation")
    return functools.partial(annotation_mask, ann["segmentation"], h, w, binarise)


def _samples_from_refs(refs, annotations, image_info, image_loader, sentence_field, binarise) -> list[RefSample]:
    samples = []
    for ref in refs:
        try:
            samples += _ref_samples(ref, annotations, image_info, image_loader, sentence_field, binarise)
        except (KeyError, TypeError, ValueError) as error:
            ref_id = ref.get("ref_id", "?") if isinstance(ref, dict) else "?"
            raise ValueError(f"ref {ref_id} is malformed ({type(error).__name__}: {error})") from None
    return samples


def _ref_samples(ref, annotations, image_info, image_loader, sentence_field, binarise) -> list[RefSample]:
    """One sample per sentence; an image or annotation the files lack fails only these samples."""
    try:
        info = image_info(ref["image_id"])
        h, w = int(info["height"]), int(info["width"])
        load_image = image_loader(ref["image_id"])
        load_mask = _mask_loader(annotations.get(ref["ann_id"]), ref["ann_id"], h, w, binarise)
    except (KeyError, TypeError, ValueError):
        h = w = 0
        load_image = load_mask = _missing(f"image {ref['image_id']} is not in the annotations (no size or file)")
    return [
        RefSample(
            key=f"{ref['ref_id']}/{sentence['sent_id']}", image_key=str(ref["image_id"]),
            sentence=sentence[sentence_field], ref_id=int(ref["ref_id"]), sent_id=int(sentence["sent_id"]),
            ann_id=int(ref["ann_id"]), image_id=int(ref["image_id"]), split=ref["split"], height=h, width=w,
            load_image=load_image, load_mask=load_mask,
            image_file=load_image.args[0] if getattr(load_image, "func", None) is read_image else None,
        )
        for sentence in ref["sentences"]
    ]


def read_refer(root: Path, dataset: str, split: str, split_by: Optional[str] = None, sentence_field: str = "sent",
               binarise: str = "eq1") -> list[RefSample]:
    """ROOT/<dataset>/refs(<split_by>).p + instances.json; images from ROOT/images/mscoco/…/train2014.

    The file name comes from instances.json: the pickle's ``file_name`` is not a real file.
    """
    root = Path(root)
    split_by = split_by or SPLIT_BY[dataset]
    refs_file = root / dataset / f"refs({split_by}).p"
    instances_file = root / dataset / "instances.json"
    for f in (refs_file, instances_file):
        if not f.is_file():
            raise ValueError(f"{f} not found: is {root} a refer-layout data root (see docs/evaluation.md)?")
    refs = load_refs(refs_file)
    try:
        instances = json.loads(instances_file.read_text())
        images = {img["id"]: img for img in instances["images"]}
        annotations = {ann["id"]: ann for ann in instances["annotations"]}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{instances_file} is not a COCO instances file ({type(error).__name__}: "
                         f"{str(error)[:200]})") from None

    def loader(image_id):
        return functools.partial(read_image, root / COCO_IMAGES / images[image_id]["file_name"])

    return _samples_from_refs(select_split(refs, split), annotations, images.__getitem__, loader,
                              sentence_field, binarise)


def input_files(samples: list[RefSample], data_root: Path, dataset: str, split_by: Optional[str]) -> list[Path]:
    """Every file an evaluation reads: annotations, refs, parquet files and pictures (no output may be one)."""
    root = Path(data_root)
    files = [root / dataset / "instances.json", root / dataset / f"refs({split_by or SPLIT_BY[dataset]}).p"]
    files += sorted(root.rglob("*.parquet")) if not files[0].is_file() else []
    return files + sorted({s.image_file for s in samples if s.image_file is not None})


class PlainUnpickler(pickle._Unpickler):
    """Unpickles plain containers, text and numbers only. A pickle can name any importable
    callable and run it as it loads; a refs file never needs one, so naming any is refused.

    Python's own unpickler rather than the C one: the C one allocates the size a length field
    declares before reading the data (3.11), so a 93-byte file declaring 1.8 GB took 1.8 GB;
    this one reads what the file holds (about 4× slower: ~5 s for RefCOCO's refs)."""

    # no ``bytes``: bytes(1_800_000_000) is a 30-byte pickle that takes 1.8 GB
    ALLOWED = frozenset({"dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool", "complex"})

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in self.ALLOWED:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which is not plain data")


def load_refs(path: Path) -> list:
    """The refer layout's ``refs(<split_by>).p``, through :class:`PlainUnpickler`, from memory: a
    length field in the pickle (of a string, of a frame) cannot make it allocate more than the file holds."""
    path = Path(path)
    if path.stat().st_size > MAX_REFS_BYTES:
        raise ValueError(f"{path} is larger than a refs file can be ({MAX_REFS_BYTES >> 20} MiB)")
    try:
        refs = PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as error:  # UnpicklingError, EOFError, ...: one line, whatever the file holds
        raise ValueError(f"{path} was not loaded: {type(error).__name__}: {str(error)[:200]} (only lists, "
                         "dicts, text and numbers are read from a refs pickle)") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ValueError(f"{path} does not hold a list of refs")
    return refs


def _maybe_json(value):
    return json.loads(value) if isinstance(value, (str, bytes)) else value


@functools.lru_cache(maxsize=2)
def _row_group_images(path: str, group: int):
    pq = need_extra("pyarrow.parquet", "reading parquet files")

    return pq.ParquetFile(path).read_row_group(group, columns=["image"]).column("image").to_pylist()


def _decode_embedded(path: str, group: int, row: int) -> np.ndarray:
    from PIL import Image

    image = _row_group_images(path, group)[row]
    data = image["bytes"] if isinstance(image, dict) else image
    with Image.open(io.BytesIO(data)) as picture:
        if picture.size[0] * picture.size[1] > MAX_IMAGE_PIXELS:
            raise ValueError(f"the embedded image is {picture.size[0]}x{picture.size[1]} pixels, more than the "
                             f"{MAX_IMAGE_PIXELS / 1e6:.0f} M this reads")
        return np.asarray(picture.convert("RGB"))


def read_parquet(folder: Path, dataset: str, split: str, split_by: Optional[str] = None,
                 sentence_field: str = "sent", binarise: str = "eq1") -> list[RefSample]:
    """``jxu124/refcoco-benchmark`` files (``<name>_<split_by>_<split>-*.parquet``), one row per
    image with the image embedded, ``image_info`` and ``ref_list`` of {ann_info, ref_info}."""
    pq = need_extra("pyarrow.parquet", "reading parquet files")

    folder = Path(folder)
    split_by = split_by or SPLIT_BY[dataset]
    stem = f"{PARQUET_NAMES[dataset]}_{split_by}_{split}"
    files = sorted(p for p in folder.rglob("*.parquet") if p.name.startswith(stem + "-") or p.name == stem + ".parquet")
    if not files:
        raise ValueError(f"no {stem}-*.parquet under {folder}")
    samples = []
    for path in files:
        try:
            reader = pq.ParquetFile(path)
            missing = {"image", "image_info", "ref_list"} - set(reader.schema_arrow.names)
        except Exception as error:  # pyarrow's errors for a file that is not parquet
            raise ValueError(f"{path} is not a parquet file ({type(error).__name__}: {str(error)[:200]})") from None
        if missing:
            raise ValueError(f"{path} has no column {', '.join(sorted(missing))}: not a refcoco-benchmark file")
        for group in range(reader.num_row_groups):
            table = reader.read_row_group(group, columns=["image_info", "ref_list"]).to_pylist()
            for row, record in enumerate(table):
                try:
                    info = _maybe_json(record["image_info"])
                    refs, annotations = [], {}
                    for item in _maybe_json(record["ref_list"]):
                        ann, ref = _maybe_json(item["ann_info"]), _maybe_json(item["ref_info"])
                        annotations[ref["ann_id"]] = ann
                        refs.append(ref)
                except (KeyError, TypeError, ValueError) as error:
                    raise ValueError(f"{path}, row group {group}, row {row}: malformed ref_list "
                                     f"({type(error).__name__}: {str(error)[:200]})") from None
                loader = functools.partial(_decode_embedded, str(path), group, row)
                samples += _samples_from_refs(select_split(refs, split), annotations, lambda _: info,
                                              lambda _: loader, sentence_field, binarise)
    return samples


def read_dataset(data_root: Path, dataset: str, split: str, split_by: Optional[str] = None, layout: str = "auto",
                 sentence_field: str = "sent", binarise: str = "eq1") -> list[RefSample]:
    """Either layout; ``auto`` picks refer when ROOT/<dataset>/instances.json exists."""
    if dataset not in SPLIT_BY:
        raise ValueError(f"dataset must be one of {', '.join(SPLIT_BY)}, not {dataset!r}")
    if sentence_field not in ("sent", "raw"):
        raise ValueError("sentence field must be 'sent' or 'raw'")
    root = Path(data_root)
    if not root.is_dir():
        raise ValueError(f"data root {str(root)!r} does not exist")
    if layout == "auto":
        layout = "refer" if (root / dataset / "instances.json").is_file() else "parquet"
    reader = {"refer": read_refer, "parquet": read_parquet}.get(layout)
    if reader is None:
        raise ValueError(f"layout must be auto, refer or parquet, not {layout!r}")
    return reader(root, dataset, split, split_by, sentence_field, binarise)
