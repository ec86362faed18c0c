"""The evaluation loop: group by image, predict, score, resume, shard, report.

Runs unchanged in one process or under ``accelerate launch``: each process takes every
N-th image (a disjoint shard) and appends its per-sample records to its own file; the
main process merges every record and computes the metrics from them, so a split run in
shards gives exactly the numbers of a run in one piece. Re-running with the same
``--out`` skips the samples already scored.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from .._distributed import process_state, segmenter_device
from .metrics import THRESHOLDS, SampleScore, score_sample, summarise
from .refer import EXPECTED_SAMPLES, SPLIT_BY, RefSample, read_dataset

METHODS = ("editseg", "whole-image", "centre", "prior-only")
MODEL_FREE = ("whole-image", "centre")


def centre_ellipse(height: int, width: int) -> np.ndarray:
    """A centred ellipse with the picture's aspect covering a quarter of its area."""
    rows, cols = np.mgrid[:height, :width]
    a, b = height / np.sqrt(4 * np.pi), width / np.sqrt(4 * np.pi)
    return ((rows + 0.5 - height / 2) / a) ** 2 + ((cols + 0.5 - width / 2) / b) ** 2 <= 1.0


def predictor(method: str, segmenter=None, settings: Optional[dict] = None) -> Callable:
    """``predict(image, sentences) -> list of bool masks`` for a method of the harness."""
    settings = settings or {}
    if method == "whole-image":
        return lambda image, sentences: [np.ones(image.shape[:2], bool) for _ in sentences]
    if method == "centre":
        return lambda image, sentences: [centre_ellipse(*image.shape[:2]) for _ in sentences]
    if method not in ("editseg", "prior-only"):
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")

    def predict(image, sentences):
        segmenter.set_image(image)
        results = segmenter.segment_batch(list(sentences), **settings)
        if method == "editseg":
            return [r.mask for r in results]
        return [r.prior >= r.settings.mask_threshold for r in results]  # step 5 alone, thresholded

    return predict


def group_by_image(samples: list[RefSample]) -> list[list[RefSample]]:
    groups: dict[str, list[RefSample]] = {}
    for sample in samples:
        groups.setdefault(sample.image_key, []).append(sample)
    return list(groups.values())


@dataclass
class EvalConfig:
    data_root: str
    dataset: str
    split: str
    out: str
    split_by: Optional[str] = None
    layout: str = "auto"
    limit: Optional[int] = None
    method: str = "editseg"
    model: Optional[str] = None
    device: str = "auto"
    dtype: str = "auto"
    settings: dict = field(default_factory=dict)
    strict: bool = False
    binarise: str = "eq1"
    sentence_field: str = "sent"

    def identity(self) -> dict:
        """What must match for a resumed run to continue an earlier one."""
        keys = ("dataset", "split", "split_by", "layout", "limit", "method", "model", "settings", "binarise",
                "sentence_field")
        return {k: getattr(self, k) for k in keys}


def _records_paths(out: Path) -> list[Path]:
    return sorted(out.parent.glob(out.name + ".samples*.jsonl"))


def read_records(out: Path) -> dict[str, SampleScore]:
    records = {}
    for path in _records_paths(out):
        for line in path.read_text().splitlines():
            if line.strip():
                data = json.loads(line)
                records[data["key"]] = SampleScore(**data)
    return records


def _check_resume(out: Path, config: EvalConfig) -> None:
    meta = out.parent / (out.name + ".run.json")
    identity = config.identity()
    if meta.is_file():
        earlier = json.loads(meta.read_text())
        if earlier != json.loads(json.dumps(identity)):
            raise ValueError(f"{out} holds results of another run ({earlier}); choose another --out")
    else:
        meta.write_text(json.dumps(identity))


def evaluate(config: EvalConfig, segmenter=None, progress: bool = True) -> dict:
    """Score ``config.method`` on a split; returns (and on the main process writes) the report."""
    if config.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {config.method!r}")
    state = process_state()
    start = time.perf_counter()
    config.split_by = config.split_by or SPLIT_BY.get(config.dataset)
    samples = read_dataset(Path(config.data_root), config.dataset, config.split, config.split_by, config.layout,
                           config.sentence_field, config.binarise)
    if config.limit:
        samples = samples[:config.limit]
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        _check_resume(out, config)
    state.wait_for_everyone()

    done = read_records(out)
    mine = group_by_image(samples)[state.process_index::state.num_processes]
    todo = [[s for s in group if s.key not in done] for group in mine]
    todo = [g for g in todo if g]
    if todo and config.method not in MODEL_FREE and segmenter is None:
        from ..core.segmenter import EditSegmenter

        segmenter = EditSegmenter.from_pretrained(config.model, device=segmenter_device(state, config.device),
                                                  dtype=config.dtype,
                                                  **config.settings)
    predict = predictor(config.method, segmenter)
    records_file = out.parent / (out.name + f".samples.rank{state.process_index}.jsonl")
    bar = tqdm(total=sum(len(g) for g in todo), unit="sample", desc=f"{config.dataset} {config.split}",
               disable=not progress or not state.is_main_process, dynamic_ncols=True)
    with records_file.open("a") as records:
        for group in todo:
            truths = [s.load_mask() for s in group]
            try:
                predictions, error = predict(group[0].load_image(), [s.sentence for s in group]), None
            except Exception as exc:  # any failure scores 0 and is counted, never skipped
                predictions, error = [None] * len(group), f"{type(exc).__name__}: {exc}"
            for sample, prediction, truth in zip(group, predictions, truths):
                score = score_sample(sample.key, prediction, truth, error)
                records.write(json.dumps(asdict(score)) + "\n")
            records.flush()
            bar.update(len(group))
    bar.close()
    state.wait_for_everyone()

    scores = read_records(out)
    wanted = {s.key for s in samples}
    missing = wanted - scores.keys()
    if missing:
        raise RuntimeError(f"{len(missing)} samples have no record (a process died?); re-run to finish them")
    report = {
        **summarise([scores[k] for k in wanted], strict=config.strict),
        "method": config.method, "dataset": config.dataset, "split": config.split, "split_by": config.split_by,
        "model": None if config.method in MODEL_FREE else config.model,
        "settings": _resolved_settings(segmenter, config),
        "n_refs": len({s.ref_id for s in samples}), "n_images": len({s.image_key for s in samples}),
        "binarise": config.binarise, "sentence_field": config.sentence_field, "limit": config.limit,
        "processes": state.num_processes, "wall_time_s": time.perf_counter() - start,
    }
    expected = EXPECTED_SAMPLES.get((config.dataset, config.split_by, config.split))
    if expected is not None and not config.limit:
        report["expected_n_samples"] = expected
        report["n_samples_as_published"] = report["n_samples"] == expected
    if state.is_main_process:
        Path(config.out).write_text(json.dumps(report, indent=2))
    return report


def _resolved_settings(segmenter, config: EvalConfig) -> dict:
    if config.method in MODEL_FREE:
        return {}
    if segmenter is None:  # everything was resumed: no model was loaded in this run
        return dict(config.settings)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in segmenter.resolve_settings().to_dict().items()}


def report_table(report: dict) -> str:
    """The numbers a paper's table shows, readable in a terminal."""
    head = f"{report['method']} on {report['dataset']} ({report['split_by']}) {report['split']}"
    lines = [
        head, "-" * len(head),
        f"samples {report['n_samples']}  refs {report['n_refs']}  images {report['n_images']}  "
        f"failures {report['failures']}  empty predictions {report['empty_predictions']}",
        f"mIoU {report['mIoU']:.2f}   oIoU {report['oIoU']:.2f}",
        "Prec@" + "  ".join(f"{t}: {report['precision'][f'{t:.1f}']:.2f}" for t in THRESHOLDS)
        + ("  (strict >)" if report["precision_strict"] else ""),
        f"wall time {report['wall_time_s']:.1f} s on {report['processes']} process(es)",
    ]
    if "expected_n_samples" in report:
        mark = "as published" if report["n_samples_as_published"] else "DIFFERS from the published"
        lines.append(f"sample count {report['n_samples']} {mark} {report['expected_n_samples']}")
    return "\n".join(lines)
