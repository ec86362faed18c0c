"""RefCOCO / RefCOCO+ / RefCOCOg readers: the refer layout and the HF parquet layout.

Both yield the same :class:`RefSample` records: one per (ref, sentence), with the
ground-truth mask rasterised from the ``ann_id`` annotation's polygons with pycocotools
at the image's original size, summed over polygons and binarised ``== 1`` (the reference
code; pixels covered by two polygons drop out) or ``> 0``.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..files import read_image
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


def select_split(refs: list, split: str) -> list:
    """The refer API's rule: testA/testB/testC match refs whose split contains the letter,
    test matches every split containing "test", the rest match exactly."""
    if split in ("testA", "testB", "testC"):
        return [r for r in refs if split[-1] in r["split"]]
    if split == "test":
        return [r for r in refs if "test" in r["split"]]
    if split in ("train", "val", "testAB", "testBC", "testAC"):
        return [r for r in refs if r["split"] == split]
    raise ValueError(f"no such split {split!r}: use train, val, test, testA, testB, testC")


def annotation_mask(segmentation: Any, height: int, width: int, binarise: str = "eq1") -> np.ndarray:
    """COCO polygons (or RLE) → bool H×W, polygons summed, then ``== 1`` or ``> 0``."""
    coco_mask = need_extra("pycocotools.mask", "rasterising RefCOCO annotations")

    if isinstance(segmentation, list):  # polygons
        counts = coco_mask.decode(coco_mask.frPyObjects(segmentation, height, width)).astype(np.int32)
        counts = counts.sum(axis=2) if counts.ndim == 3 else counts
    else:  # RLE (crowd annotations), compressed or not
        if isinstance(segmentation.get("counts"), list):
            segmentation = coco_mask.frPyObjects(segmentation, height, width)
        counts = coco_mask.decode(segmentation).astype(np.int32)
    if binarise == "eq1":
        return counts == 1
    if binarise == "gt0":
        return counts > 0
    raise ValueError(f"binarise must be 'eq1' or 'gt0', not {binarise!r}")


def _samples_from_refs(refs, annotations, image_info, image_loader, sentence_field, binarise) -> list[RefSample]:
    samples = []
    for ref in refs:
        info = image_info(ref["image_id"])
        h, w = int(info["height"]), int(info["width"])
        ann = annotations[ref["ann_id"]]
        load_mask = functools.partial(annotation_mask, ann["segmentation"], h, w, binarise)
        for sentence in ref["sentences"]:
            samples.append(RefSample(
                key=f"{ref['ref_id']}/{sentence['sent_id']}", image_key=str(ref["image_id"]),
                sentence=sentence[sentence_field], ref_id=int(ref["ref_id"]), sent_id=int(sentence["sent_id"]),
                ann_id=int(ref["ann_id"]), image_id=int(ref["image_id"]), split=ref["split"], height=h, width=w,
                load_image=image_loader(ref["image_id"]), load_mask=load_mask,
            ))
    return samples


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
    with refs_file.open("rb") as handle:
        refs = pickle.load(handle)
    instances = json.loads(instances_file.read_text())
    images = {img["id"]: img for img in instances["images"]}
    annotations = {ann["id"]: ann for ann in instances["annotations"]}

    def loader(image_id):
        return functools.partial(read_image, root / COCO_IMAGES / images[image_id]["file_name"])

    return _samples_from_refs(select_split(refs, split), annotations, images.__getitem__, loader,
                              sentence_field, binarise)


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
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


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
        reader = pq.ParquetFile(path)
        for group in range(reader.num_row_groups):
            table = reader.read_row_group(group, columns=["image_info", "ref_list"]).to_pylist()
            for row, record in enumerate(table):
                info = _maybe_json(record["image_info"])
                refs, annotations = [], {}
                for item in _maybe_json(record["ref_list"]):
                    ann, ref = _maybe_json(item["ann_info"]), _maybe_json(item["ref_info"])
                    annotations[ref["ann_id"]] = ann
                    refs.append(ref)
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
