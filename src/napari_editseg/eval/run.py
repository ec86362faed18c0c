"""The evaluation loop: group by image, predict, score, resume, shard, report.

Runs unchanged in one process or under ``accelerate launch``: each process takes every
N-th image (a disjoint shard) and appends its per-sample records to its own file; the
main process merges every record and computes the metrics from them, so a split run in
shards gives exactly the numbers of a run in one piece. Re-running with the same
``--out`` skips the samples already scored and retries those that failed.

Crash-safe: records are appended one whole line at a time and a line cut short by a kill
is dropped before the next append; the report and the run's identity are written whole or
not at all. One malformed ground-truth annotation fails its own sample, not the run.
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from .._distributed import process_state, segmenter_device
from .._prefetch import chunked, prefetched, segment_chunk
from ..files import check_outputs, printable, remove_partials, write_json
from .metrics import THRESHOLDS, SampleScore, score_sample, summarise
from .refer import EXPECTED_SAMPLES, SPLIT_BY, RefSample, input_files, read_dataset

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
        return result_masks(method, segmenter.segment_batch(list(sentences), **settings))

    return predict


def result_masks(method: str, results: list) -> list[np.ndarray]:
    """The masks a method scores: editseg's, or for ``prior-only`` step 5 alone, thresholded."""
    if method == "editseg":
        return [r.mask for r in results]
    return [r.prior >= r.settings.mask_threshold for r in results]


def batched_predictions(chunks: list[list[list[RefSample]]], segmenter, method: str, settings: dict
                        ) -> Iterator[tuple[list[RefSample], Callable]]:
    """``(group, predict)`` for every image group, the groups of a chunk segmented together in one
    ``segment_images`` call (one batched VAE encode and denoiser forward); the next chunk's images are
    read and decoded in background threads meanwhile. A bad image fails alone (:func:`segment_chunk`)."""
    def recall(outcome):
        def predict(group):
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        return predict

    for chunk, images in prefetched(chunks, lambda group: group[0].load_image()):
        ready = [i for i, image in enumerate(images) if not isinstance(image, BaseException)]
        results = segment_chunk(segmenter, [images[i] for i in ready],
                                [[s.sentence for s in chunk[i]] for i in ready], errors=(Exception,), **settings)
        outcomes = dict(zip(ready, results))
        for i, group in enumerate(chunk):
            outcome = outcomes.get(i, images[i])  # an image that could not be read: its error
            yield group, recall(outcome if isinstance(outcome, BaseException) else result_masks(method, outcome))


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
    allow_pickle: bool = False  # pickle-based model weights (see load_editing_model); not part of the identity
    batch_size: int = 1  # images per batched forward (same results, so not part of the identity either)

    def identity(self) -> dict:
        """What must match for a resumed run to continue an earlier one (as JSON reads it back)."""
        keys = ("dataset", "split", "split_by", "layout", "limit", "method", "model", "settings", "binarise",
                "sentence_field")
        identity = {k: getattr(self, k) for k in keys}
        identity["split_by"] = self.split_by or SPLIT_BY.get(self.dataset)
        identity["data_root"] = str(Path(self.data_root).expanduser().resolve())
        return json.loads(json.dumps(identity))


def _records_paths(out: Path) -> list[Path]:
    return sorted(out.parent.glob(glob.escape(out.name) + ".samples*.jsonl"))


def _records_path(out: Path, rank: int) -> Path:
    return out.parent / f"{out.name}.samples.rank{rank}.jsonl"


def _outputs(out: Path, processes: int) -> list[tuple[str, Path]]:
    """Every file a run writes beside ``out``, with what it is."""
    return [("--out", out), ("the run's identity", _meta_path(out))] + [
        ("the per-sample records", _records_path(out, rank)) for rank in range(processes)]


def repair_records(path: Path) -> None:
    """Drop a last line that a kill cut short, so the next append starts on a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def read_records(out: Path) -> dict[str, SampleScore]:
    """Every sample's record beside ``out``. A success replaces a failure of the same sample (a
    retry); a last line cut short by a kill is ignored; any other line that is not a record is
    an error naming its file and line."""
    records: dict[str, SampleScore] = {}
    for path in _records_paths(out):
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                score = SampleScore(**json.loads(line))
            except (ValueError, TypeError) as error:
                if number == len(lines):  # no newline after it: torn by a kill
                    continue
                raise ValueError(f"{path}, line {number}, is not a sample record ({type(error).__name__}: "
                                 f"{str(error)[:100]}): delete that line, or choose another --out") from None
            earlier = records.get(score.key)
            if earlier is None or earlier.failed or not score.failed:
                records[score.key] = score
    return records


def _check_resume(out: Path, config: EvalConfig) -> Optional[dict]:
    """Record the run's identity beside ``out``, or refuse an ``out`` that holds another run's
    records; returns the resolved settings an earlier run of this identity recorded."""
    meta = _meta_path(out)
    identity = config.identity()
    if meta.is_file():
        try:
            earlier = json.loads(meta.read_text())
        except ValueError:
            earlier = {}
        earlier_identity = earlier.get("identity", earlier) if isinstance(earlier, dict) else {}
        if earlier_identity == identity:
            return earlier.get("settings")
        if any(p.stat().st_size for p in _records_paths(out)):
            differ = sorted(k for k in set(identity) | set(earlier_identity)
                            if identity.get(k) != earlier_identity.get(k))
            raise ValueError(f"{out} holds results of another run (it differs in {', '.join(differ)}); "
                             "choose another --out")
        # the earlier run scored nothing (its model did not load, say): nothing to keep
    write_json(meta, {"identity": identity, "settings": None})
    return None


def _meta_path(out: Path) -> Path:
    return out.parent / (out.name + ".run.json")


def _check_config(config: EvalConfig, segmenter: Any, processes: int = 1) -> None:
    """What can be refused before the data is read and the model loaded."""
    if config.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {config.method!r}")
    if config.method not in MODEL_FREE and segmenter is None and (
        not isinstance(config.model, (str, os.PathLike)) or not str(config.model).strip()
    ):
        raise ValueError(f"method {config.method!r} needs a model: set model to a hub id or a folder, "
                         f"not {config.model!r}")
    out = Path(config.out)
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder: give a report file name, e.g. {str(out / 'report.json')!r}")
    check_outputs(_outputs(out, processes))


def _score_group(group: list[RefSample], predict: Callable) -> list[SampleScore]:
    """Scores of the samples of one image; a failure (of the prediction or of one sample's
    ground truth) scores that sample 0 with the error recorded, never stops the run.
    ``predict(group)`` gives the group's masks."""
    truths: list[Any] = []
    for sample in group:
        try:
            truths.append(sample.load_mask())
        except Exception as exc:  # a malformed annotation: this sample only
            truths.append(f"ground truth: {type(exc).__name__}: {exc}")
    try:
        predictions, error = predict(group), None
    except Exception as exc:  # any failure scores 0 and is counted, never skipped
        predictions, error = [None] * len(group), f"{type(exc).__name__}: {exc}"
    scores = []
    for sample, prediction, truth in zip(group, predictions, truths):
        if isinstance(truth, str):
            scores.append(SampleScore(sample.key, 0, 0, failed=True, empty=True, error=truth))
            continue
        try:
            scores.append(score_sample(sample.key, prediction, truth, error))
        except ValueError as exc:  # e.g. the annotation's size is not the image's
            scores.append(score_sample(sample.key, None, truth, str(exc)))
    return scores


def evaluate(config: EvalConfig, segmenter=None, progress: bool = True) -> dict:
    """Score ``config.method`` on a split; returns (and on the main process writes) the report.

    ``config`` is not changed. A ``segmenter`` given here is used with ``config.settings`` on top
    of its own settings.
    """
    chunked([], config.batch_size)  # a bad batch size fails before any work
    state = process_state()
    _check_config(config, segmenter, state.num_processes)
    config = replace(config, split_by=config.split_by or SPLIT_BY.get(config.dataset))
    start = time.perf_counter()
    samples = read_dataset(Path(config.data_root), config.dataset, config.split, config.split_by, config.layout,
                           config.sentence_field, config.binarise)
    out = Path(config.out)
    check_outputs(_outputs(out, state.num_processes),
                  input_files(samples, Path(config.data_root), config.dataset, config.split_by))
    if config.limit:
        samples = samples[:config.limit]
    out.parent.mkdir(parents=True, exist_ok=True)
    recorded_settings = None
    if state.is_main_process:
        recorded_settings = _check_resume(out, config)
        remove_partials(out)
    state.wait_for_everyone()

    records_file = _records_path(out, state.process_index)
    repair_records(records_file)
    done = {key for key, record in read_records(out).items() if not record.failed}
    mine = group_by_image(samples)[state.process_index::state.num_processes]
    todo = [[s for s in group if s.key not in done] for group in mine]
    todo = [g for g in todo if g]
    if todo and config.method not in MODEL_FREE and segmenter is None:
        from ..core.segmenter import EditSegmenter

        segmenter = EditSegmenter.from_pretrained(config.model, device=segmenter_device(state, config.device),
                                                  dtype=config.dtype, allow_pickle=config.allow_pickle,
                                                  **config.settings)
    if segmenter is not None and config.method not in MODEL_FREE and state.is_main_process:
        recorded_settings = _resolved_settings(segmenter, config)
        write_json(_meta_path(out), {"identity": config.identity(), "settings": recorded_settings})
    bar = tqdm(total=sum(len(g) for g in todo), unit="sample", desc=f"{config.dataset} {config.split}",
               disable=not progress or not state.is_main_process, dynamic_ncols=True)
    with records_file.open("a", encoding="utf-8") as records:
        for group, predict in _work(config, todo, segmenter):
            for score in _score_group(group, predict):
                records.write(json.dumps(asdict(score)) + "\n")
            records.flush()
            bar.update(len(group))
    bar.close()
    state.wait_for_everyone()
    report = _report(config, samples, read_records(out), recorded_settings, state.num_processes,
                     time.perf_counter() - start)
    if state.is_main_process:
        write_json(out, report)
    return report


def _work(config: EvalConfig, todo: list[list[RefSample]], segmenter) -> Iterator[tuple[list[RefSample], Callable]]:
    """``(group, predict)`` for every image group still to score, batched when ``config.batch_size`` > 1."""
    if config.batch_size > 1 and config.method not in MODEL_FREE:
        return batched_predictions(chunked(todo, config.batch_size), segmenter, config.method, config.settings)
    predict_image = predictor(config.method, segmenter, config.settings)

    def predict(group):
        return predict_image(group[0].load_image(), [s.sentence for s in group])

    return ((group, predict) for group in todo)


def _report(config: EvalConfig, samples: list[RefSample], scores: dict[str, SampleScore],
            recorded_settings: Optional[dict], processes: int, seconds: float) -> dict:
    """The report of a split from every sample's record (whichever process and run scored it)."""
    wanted = {s.key for s in samples}
    missing = wanted - scores.keys()
    if missing:
        raise RuntimeError(f"{len(missing)} samples have no record (a process died?); re-run to finish them")
    report = {
        **summarise([scores[k] for k in wanted], strict=config.strict),
        "method": config.method, "dataset": config.dataset, "split": config.split, "split_by": config.split_by,
        "model": None if config.method in MODEL_FREE else config.model,
        "settings": {} if config.method in MODEL_FREE else recorded_settings or dict(config.settings),
        "n_refs": len({s.ref_id for s in samples}), "n_images": len({s.image_key for s in samples}),
        "binarise": config.binarise, "sentence_field": config.sentence_field, "limit": config.limit,
        "processes": processes, "wall_time_s": seconds,
        "failed_samples": [{"key": k, "error": scores[k].error} for k in sorted(wanted) if scores[k].failed],
    }
    expected = EXPECTED_SAMPLES.get((config.dataset, config.split_by, config.split))
    if expected is not None and not config.limit:
        report["expected_n_samples"] = expected
        report["n_samples_as_published"] = report["n_samples"] == expected
    return report


def _resolved_settings(segmenter, config: EvalConfig) -> dict:
    """The settings this run segments with, every "auto" resolved for the loaded model."""
    resolved = segmenter.resolve_settings(**config.settings).to_dict()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}


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
    failed = report.get("failed_samples", [])
    lines += [printable(f"failed {item['key']}: {item['error']}") for item in failed[:3]]
    if len(failed) > 3:
        lines.append(f"... and {len(failed) - 3} more failed samples (failed_samples in the report)")
    if "expected_n_samples" in report:
        mark = "as published" if report["n_samples_as_published"] else "DIFFERS from the published"
        lines.append(f"sample count {report['n_samples']} {mark} {report['expected_n_samples']}")
    return "\n".join(lines)
