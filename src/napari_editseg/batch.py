"""Batch labelling: many images, one label image each, resumable, shardable with Accelerate.

Jobs come from a folder (one expression for every picture) or a CSV of
``image,expression`` rows (several rows of an image become labels 1, 2, … of its one
label image; an earlier expression's pixels are never overwritten by a later one).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}


@dataclass
class Job:
    image: Path
    expressions: list[str]
    output: Path


def jobs_from_folder(folder: Path, expression: str, out_dir: Path, fmt: str) -> list[Job]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"input folder {str(folder)!r} does not exist")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return [Job(p, [expression], Path(out_dir) / f"{p.stem}.{fmt}") for p in images]


def jobs_from_csv(table: Path, out_dir: Path, fmt: str) -> list[Job]:
    """Rows ``image,expression``; image paths are relative to the CSV's folder."""
    table = Path(table)
    if not table.is_file():
        raise ValueError(f"CSV file {str(table)!r} does not exist")
    jobs: dict[Path, Job] = {}
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "expression"} <= set(reader.fieldnames):
            raise ValueError(f"{table} needs the columns image,expression")
        for row in reader:
            image = (table.parent / row["image"]).resolve()
            job = jobs.setdefault(image, Job(image, [], Path(out_dir) / f"{image.stem}.{fmt}"))
            job.expressions.append(row["expression"])
    return list(jobs.values())


def run_batch(jobs: list[Job], segmenter_factory, out_dir: Path, overwrite: bool = False,
              progress: bool = True) -> dict:
    """Label every job this process owns; returns counts and the unreadable files."""
    from ._distributed import process_state
    from .files import read_image, write_labels

    state = process_state()
    out_dir = Path(out_dir)
    mine = jobs[state.process_index::state.num_processes]
    todo = [job for job in mine if overwrite or not job.output.exists()]
    done, unreadable, failed = [], [], []
    segmenter = segmenter_factory() if todo else None
    for job in tqdm(todo, unit="image", desc="labelling", disable=not progress or not state.is_main_process):
        try:
            image = read_image(str(job.image))
        except ValueError as error:
            unreadable.append({"image": str(job.image), "error": str(error)})
            continue
        try:
            segmenter.set_image(image)
            results = segmenter.segment_batch(job.expressions)
        except ValueError as error:  # e.g. a 2-channel image or an empty expression
            failed.append({"image": str(job.image), "error": str(error)})
            continue
        labels = np.zeros(image.shape[:2], np.uint8 if len(results) < 256 else np.uint16)
        for value, result in enumerate(results, start=1):
            labels[result.mask & (labels == 0)] = value
        write_labels(job.output, labels)
        done.append({"image": str(job.image), "output": str(job.output),
                     "labels": {str(i): e for i, e in enumerate(job.expressions, start=1)}})
    part = {"written": done, "unreadable": unreadable, "failed": failed,
            "skipped_existing": len(mine) - len(todo)}
    (out_dir / f"batch_report.rank{state.process_index}.json").write_text(json.dumps(part, indent=1))
    state.wait_for_everyone()
    report: dict = {"written": [], "unreadable": [], "failed": [], "skipped_existing": 0}
    for rank in range(state.num_processes):  # this run's shards only
        part = json.loads((out_dir / f"batch_report.rank{rank}.json").read_text())
        for key in ("written", "unreadable", "failed"):
            report[key] += part[key]
        report["skipped_existing"] += part["skipped_existing"]
    if state.is_main_process:
        (out_dir / "batch_report.json").write_text(json.dumps(report, indent=1))
    return report


def summary(report: dict) -> str:
    lines = [f"labelled {len(report['written'])} image(s); {report['skipped_existing']} already done (resumed)"]
    for key, what in (("unreadable", "unreadable, skipped"), ("failed", "refused by the segmenter")):
        if report[key]:
            lines.append(f"{len(report[key])} {what}:")
            lines += [f"  {item['image']}: {item['error']}" for item in report[key]]
    return "\n".join(lines)
