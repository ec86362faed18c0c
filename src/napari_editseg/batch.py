"""Batch labelling: many images, one label image each, resumable, shardable with Accelerate.

Jobs come from a folder (one expression for every picture) or a CSV of
``image,expression`` rows (several rows of an image become labels 1, 2, … of its one
label image; an earlier expression's pixels are never overwritten by a later one).

Crash-safe and resumable: each label image is written whole or not at all (a temporary file
moved into place) and carries the expressions that made it (TIFF description / PNG text);
a rerun skips an output only when it exists *and* was made for the same expressions, and the
report lists every image of the job list, whichever run labelled it.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
MADE_BY = "napari-editseg batch"


@dataclass
class Job:
    image: Path
    expressions: list[str]
    output: Path

    def description(self) -> dict:
        """What the label image says about itself: its labels and what made them."""
        return {"made_by": MADE_BY, "image": self.image.name, "labels": self.labels()}

    def values(self) -> list[int]:
        """Each expression's pixel value: 1, 2, …; in a PNG of one expression 255, as ``segment`` writes masks."""
        if len(self.expressions) == 1 and self.output.suffix.lower() == ".png":
            return [255]
        return list(range(1, len(self.expressions) + 1))

    def labels(self) -> dict[str, str]:
        return {str(v): e for v, e in zip(self.values(), self.expressions)}


def jobs_from_folder(folder: Path, expression: str, out_dir: Path, fmt: str) -> list[Job]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"input folder {str(folder)!r} does not exist")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not images:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return [Job(p, [expression], Path(out_dir) / f"{p.stem}.{fmt}") for p in images]


def jobs_from_csv(table: Path, out_dir: Path, fmt: str) -> list[Job]:
    """Rows ``image,expression``; image paths are relative to the CSV's folder."""
    table = Path(table)
    if not table.is_file():
        raise ValueError(f"CSV file {str(table)!r} does not exist")
    jobs: dict[Path, Job] = {}
    try:
        with table.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"image", "expression"} <= set(reader.fieldnames):
                raise ValueError(f"{table} needs the columns image,expression")
            for line, row in enumerate(reader, start=2):
                if not (row["image"] or "").strip() or not (row["expression"] or "").strip():
                    raise ValueError(f"{table}, line {line}: an image and a non-empty expression are needed")
                image = (table.parent / row["image"].strip()).resolve()
                job = jobs.setdefault(image, Job(image, [], Path(out_dir) / f"{image.stem}.{fmt}"))
                job.expressions.append(row["expression"])
    except UnicodeDecodeError:
        raise ValueError(f"{table} is not UTF-8 text") from None
    return list(jobs.values())


def check_jobs(jobs: list[Job], out_dir: Path, table: Optional[Path] = None, processes: int = 1) -> None:
    """Before any model loads: one output per input, no output (labels or report) over an input
    (an image or the CSV ``table``), a usable folder."""
    from .files import check_outputs, file_key

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {str(out_dir)!r} is a file: give a folder")
    by_output: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_output[file_key(job.output)].append(job)
    clashes = [f"{', '.join(j.image.name for j in same)} -> {same[0].output.name}"
               for same in by_output.values() if len(same) > 1]
    if clashes:
        raise ValueError(f"inputs would overwrite each other's label image ({'; '.join(clashes)}): rename them so "
                         "their names differ before the extension, or label them in separate runs")
    reports = [out_dir / "batch_report.json"] + [part_path(out_dir, rank) for rank in range(processes)]
    check_outputs([("--out", job.output) for job in jobs] + [("the report", path) for path in reports],
                  [job.image for job in jobs] + ([("--csv", table)] if table else []))


def part_path(out_dir: Path, rank: int) -> Path:
    """The report part of process ``rank`` (merged into batch_report.json by the main process)."""
    return Path(out_dir) / f"batch_report.rank{rank}.json"


def stack_labels(masks: Sequence[np.ndarray], values: Optional[Sequence[int]] = None) -> np.ndarray:
    """Label ``values[k]`` (default k+1) where the k-th mask is and no earlier one is, in the smallest
    unsigned type that holds every label (uint8 up to 255, uint16 up to 65535, else uint32)."""
    values = list(values) if values is not None else list(range(1, len(masks) + 1))
    top = max(values, default=0)
    dtype = np.uint8 if top <= 0xFF else np.uint16 if top <= 0xFFFF else np.uint32
    labels = np.zeros(masks[0].shape, dtype)
    for value, mask in zip(values, masks):
        labels[mask & (labels == 0)] = value
    return labels


def error_text(error: BaseException) -> str:
    """One line for the report: an out-of-memory error as the memory guard says it, a ValueError as
    it is, anything else with its type."""
    from .core.budget import memory_error_from

    error = memory_error_from(error) or error
    text = " ".join(str(error).split())
    return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"


def job_state(job: Job, overwrite: bool) -> str:
    """``todo``; ``done`` (its label image exists and was made for these expressions); ``changed``
    (made for other expressions); ``foreign`` (a file this command did not write)."""
    from .files import read_description

    if overwrite or not job.output.is_file():
        return "todo"
    made = read_description(job.output)
    if not made or made.get("made_by") != MADE_BY:
        return "foreign"
    return "done" if made.get("labels") == job.labels() else "changed"


KEPT_BECAUSE = {
    "foreign": "exists and was not written by napari-editseg batch: left as it is (--overwrite replaces it)",
    "changed": "was labelled for other expressions: left as it is (--overwrite relabels it)",
}


def run_batch(jobs: list[Job], segmenter_factory: Callable[[], Any], out_dir: Path, overwrite: bool = False,
              progress: bool = True, batch_size: int = 1, read: Optional[Callable[[Path], np.ndarray]] = None,
              table: Optional[Path] = None) -> dict:
    """Label every job this process owns; returns the report of the whole job list.

    ``batch_size`` images go through one batched forward (``segment_images``; same labels), the
    next ones read in the background meanwhile. ``read(path)`` gives an image's picture
    (default :func:`~napari_editseg.image_files.read_image`). One image that cannot be read,
    segmented or written is reported and skipped; the others are labelled."""
    from ._distributed import process_state
    from ._prefetch import chunked, prefetched, segment_chunk
    from .files import remove_partials, write_json
    from .image_files import read_image

    read = read or read_image
    chunked([], batch_size)  # a bad batch size fails before any work
    state = process_state()
    check_jobs(jobs, out_dir, table, state.num_processes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = jobs[state.process_index::state.num_processes]
    part_file = part_path(out_dir, state.process_index)
    for path in [job.output for job in mine] + [part_file] + ([out_dir / "batch_report.json"] * state.is_main_process):
        remove_partials(path)  # what a killed run left half-written
    states = {id(job): job_state(job, overwrite) for job in mine}
    todo = [job for job in mine if states[id(job)] == "todo"]
    done = [job for job in mine if states[id(job)] == "done"]
    part: dict[str, list] = {"images": [], "unreadable": [], "failed": [], "kept": []}
    part["kept"] = [{"image": str(job.image), "output": str(job.output), "why": KEPT_BECAUSE[states[id(job)]]}
                    for job in mine if states[id(job)] in KEPT_BECAUSE]
    segmenter = segmenter_factory() if todo else None
    resumed = len(done)
    bar = tqdm(total=len(todo), unit="image", desc="labelling", disable=not progress or not state.is_main_process)
    for chunk, images in prefetched(chunked(todo, batch_size), lambda job: read(job.image)):
        readable = []
        for job, image in zip(chunk, images):
            if isinstance(image, Exception):
                part["unreadable"].append({"image": str(job.image), "error": error_text(image)})
            elif isinstance(image, BaseException):  # Ctrl-C, SystemExit in a reading thread
                raise image
            else:
                readable.append((job, image))
        outcomes = segment_chunk(segmenter, [image for _, image in readable], [job.expressions for job, _ in readable],
                                 errors=(Exception,))
        for (job, _), results in zip(readable, outcomes):
            written = results if isinstance(results, Exception) else write_job(job, results)
            if written is None:
                done.append(job)
            else:  # e.g. a 2-channel image, an out-of-memory error, a full disk
                part["failed"].append({"image": str(job.image), "error": error_text(written)})
        bar.update(len(chunk))
    bar.close()
    part["images"] = [{"image": str(job.image), "output": str(job.output), "labels": job.labels()} for job in done]
    part["this_run"] = {"labelled": len(done) - resumed, "already_done": resumed}
    write_json(part_file, part)
    state.wait_for_everyone()
    report = merge_parts([part_path(out_dir, rank) for rank in range(state.num_processes)])
    if state.is_main_process:
        write_json(out_dir / "batch_report.json", report)
    return report


def write_job(job: Job, results: list) -> Optional[OSError]:
    """Write a job's label image; the OSError that stopped it (a full disk, say), else None."""
    from .files import write_labels

    try:
        write_labels(job.output, stack_labels([r.mask for r in results], job.values()), job.description())
    except OSError as error:
        return error
    return None


def merge_parts(paths: list[Path]) -> dict:
    """One report from every process's part; lists sorted by image, so the report of a job
    list is the same however many processes and runs it took."""
    import json

    report: dict = {"images": [], "unreadable": [], "failed": [], "kept": [],
                    "this_run": {"labelled": 0, "already_done": 0}}
    for path in paths:
        part = json.loads(path.read_text())
        for key in ("images", "unreadable", "failed", "kept"):
            report[key] += part[key]
        for key in report["this_run"]:
            report["this_run"][key] += part["this_run"][key]
    for key in ("images", "unreadable", "failed", "kept"):
        report[key].sort(key=lambda item: (item["image"], item.get("output", "")))
    return report


def summary(report: dict) -> str:
    """The report for a terminal: names and errors escaped (a file name may hold control characters)."""
    from .files import printable

    run = report["this_run"]
    lines = [f"labelled {run['labelled']} image(s); {run['already_done']} already done (resumed)"]
    for key, what in (("unreadable", "unreadable, skipped"), ("failed", "not labelled (segmenting or writing failed)"),
                      ("kept", "existing output(s) not replaced")):
        if report[key]:
            lines.append(f"{len(report[key])} {what}:")
            lines += [printable(f"  {item['image']}: {item.get('error') or item['output'] + ' ' + item['why']}")
                      for item in report[key]]
    return "\n".join(lines)

