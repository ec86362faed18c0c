"""Every object a word names: instance mode measured on the shapes world's counting scenes.

    python benchmarks/shapes_world/instances.py --scenes 100

On held-out counting scenes (2-6 objects of the named kind among 0-2 others,
``shapes_world.counting_scenes``), with the shipped checkpoint: instance AP@0.5, panoptic quality
and the count, with the true union of the named objects as prior (the instance stage's ceiling)
and end to end with the defaults. Writes --json and the measured section "instances" of
docs/shapes-world.md. The exemplar and segment-everything tables come from the same script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from docsection import replace_section  # noqa: E402

from napari_editseg import EditSegmenter, shapes_world  # noqa: E402

IOU = 0.5
THRESHOLDS = (0.5, 0.51, 0.52, 0.53, 0.55)  # mask_threshold tried on the tuning scenes, true union as prior
CUTS = (0.0, 0.2, 0.3, 0.4)  # min_instance_score tried the same way


def iou_matrix(labels: np.ndarray, truths: list) -> np.ndarray:
    """IoU of each predicted instance (ids 1…n of ``labels``) with each true mask: n×m."""
    count = int(labels.max())
    out = np.zeros((count, len(truths)))
    for i in range(count):
        predicted = labels == i + 1
        for j, truth in enumerate(truths):
            union = (predicted | truth).sum()
            out[i, j] = (predicted & truth).sum() / union if union else 0.0
    return out


def match(labels: np.ndarray, scores: tuple, truths: list) -> dict:
    """Greedy matching by decreasing score, each truth at most once, at IoU ≥ 0.5."""
    ious = iou_matrix(labels, truths)
    taken, hits, matched_iou = set(), [], []
    for i in np.argsort(-np.asarray(scores, float), kind="stable"):
        free = [j for j in range(len(truths)) if j not in taken and ious[i, j] >= IOU]
        if free:
            j = max(free, key=lambda j: ious[i, j])
            taken.add(j)
            matched_iou.append(ious[i, j])
        hits.append((float(scores[i]), bool(free)))
    return {"hits": hits, "truths": len(truths), "matched_iou": matched_iou, "predicted": len(scores)}


def average_precision(scenes: list) -> float:
    """AP over all scenes' instances pooled, ranked by score: the area under the precision-recall
    curve with precision made monotone (VOC's all-point interpolation)."""
    hits = sorted((h for s in scenes for h in s["hits"]), key=lambda h: -h[0])
    total = sum(s["truths"] for s in scenes)
    if not hits or not total:
        return 0.0
    tp = np.cumsum([h[1] for h in hits])
    precision, recall = tp / np.arange(1, len(hits) + 1), tp / total
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((steps * precision).sum())


def summary(scenes: list) -> dict:
    """AP@0.5, panoptic quality, count exact (%) and mean absolute count error."""
    tp = sum(len(s["matched_iou"]) for s in scenes)
    fp = sum(s["predicted"] for s in scenes) - tp
    fn = sum(s["truths"] for s in scenes) - tp
    pq = sum(sum(s["matched_iou"]) for s in scenes) / max(tp + 0.5 * fp + 0.5 * fn, 1e-9)
    return {"AP@0.5": average_precision(scenes), "PQ": float(pq),
            "count exact %": 100.0 * float(np.mean([s["predicted"] == s["truths"] for s in scenes])),
            "count MAE": float(np.mean([abs(s["predicted"] - s["truths"]) for s in scenes])),
            "recall": tp / max(tp + fn, 1), "precision": tp / max(tp + fp, 1)}


def instance_runs(segmenter, scenes: list, union_prior: bool, phrase: bool = False, **overrides) -> dict:
    """Instance mode on every scene; per kind and all."""
    per_kind: dict = {}
    for s in scenes:
        segmenter.set_image(s.image)
        result = segmenter.segment(s.phrase if phrase else s.expression, prior=s.union if union_prior else None,
                                   instances=True, **overrides)
        per_kind.setdefault(s.kind, []).append(match(result.labels, result.instance_scores, s.named_masks))
    report = {kind: summary(v) for kind, v in per_kind.items()}
    report["all"] = summary([x for v in per_kind.values() for x in v])
    return report


GRANULARITIES = (8, 16, 32, 64)


def exemplar_matches(segmenter, scenes: list, count: int, words: bool, variants: dict) -> dict:
    """The first ``count`` named objects painted as labels 1…count; the others must be found. Per
    variant (name → settings), the matches of each scene with more than ``count`` named objects."""
    runs = {name: [] for name in variants}
    for s in scenes:
        if len(s.named) <= count:
            continue
        labels = np.zeros(s.image.shape[:2], np.int32)
        for k, mask in enumerate(s.named_masks[:count], start=1):
            labels[mask] = k
        segmenter.set_image(s.image)
        for name, overrides in variants.items():
            result = segmenter.segment_like(labels, range(1, count + 1), s.expression if words else None,
                                            **overrides)
            assert (result.labels[labels > 0] == 0).all()  # no painted pixel is claimed
            runs[name].append(match(result.labels, result.instance_scores, s.named_masks[count:]))
    return runs


def exemplar_runs(segmenter, scenes: list, count: int, words: bool) -> dict:
    """:func:`exemplar_matches` with the defaults, summarised."""
    runs = exemplar_matches(segmenter, scenes, count, words, {"defaults": {}})["defaults"]
    return summary(runs) | {"scenes": len(runs)}


def everything_runs(segmenter, scenes: list, **overrides) -> dict:
    """Mean best IoU per object, the share found at IoU ≥ 0.5 and the regions per scene."""
    best, regions = [], []
    for s in scenes:
        segmenter.set_image(s.image)
        result = segmenter.segment_everything(**overrides)
        ious = iou_matrix(result.labels, s.masks)
        best += list(ious.max(axis=0)) if len(ious) else [0.0] * len(s.masks)
        regions.append(int(result.labels.max()))
    return {"mean best IoU": float(np.mean(best)), "found %": 100.0 * float(np.mean(np.asarray(best) >= IOU)),
            "regions": float(np.mean(regions))}


def exemplar_lines(rows: dict) -> str:
    return "\n".join(f"| {name} | {v['scenes']} | **{100 * v['recall']:.0f} %** | **{v['precision']:.2f}** | "
                     f"{v['AP@0.5']:.2f} | {v['count exact %']:.0f} % |" for name, v in rows.items())


def everything_lines(rows: dict) -> str:
    return "\n".join(f"| {k} | {v['mean best IoU']:.2f} | {v['found %']:.0f} % | {v['regions']:.1f} |"
                     for k, v in rows.items())


def everything_line(rows: dict) -> str:
    return ", ".join(f"granularity {g}: {v['mean best IoU']:.2f}" for g, v in rows.items())


INSTANCE_ROWS = {  # name: (true union as prior?, the typed phrase instead of the model's words?, overrides)
    "true union as prior, defaults": (True, False, {}),
    "true union as prior, instance_split=components": (True, False, {"instance_split": "components"}),
    "true union as prior, split_depth=0.1": (True, False, {"split_depth": 0.1}),
    "true union as prior, split_depth=0.5": (True, False, {"split_depth": 0.5}),
    "true union as prior, edge_refine=none": (True, False, {"edge_refine": "none"}),
    "end to end, defaults": (False, False, {}),
    "end to end, instance_split=components": (False, False, {"instance_split": "components"}),
    "end to end, the phrase as typed ('every red circle')": (False, True, {}),
}


PER_MEMBER_ROWS = {  # the propagation of the prior: instance mode's default, and one object's
    "defaults (instances: all of P0, the per-image pick)": {},
    "one object's propagation (restart_share=0.2, prior_pick=fixed)": {"restart_share": 0.2, "prior_pick": "fixed"},
}


def per_member(scenes: int, doc: Path) -> dict:
    """End to end on every member of the proxy population (population.py), with the defaults and with one
    object's propagation of the prior: AP@0.5 and the count, per member, the held-out member last; written
    to its own doc section."""
    from benchmarks.shapes_world.population import measured, title

    members = measured("v1")  # counting scenes exist in world v1 only
    test = shapes_world.counting_scenes(scenes)
    rows = {}
    for m in members:
        segmenter = EditSegmenter.from_pretrained(str(m.checkpoint), device="cpu")
        rows[m.name] = {name: instance_runs(segmenter, test, False, **overrides)["all"]
                        for name, overrides in PER_MEMBER_ROWS.items()}
    lines = ["<!-- measured:instances-population:start -->",
             f"Written by `python -m benchmarks.shapes_world.instances --per-member`: end to end, "
             f"{scenes} test counting scenes per member.", "",
             "| member | propagation | AP@0.5 | PQ | count exact | count MAE | recall | precision |",
             "|---|---|---|---|---|---|---|---|"]
    for m in members:
        for name in PER_MEMBER_ROWS:
            r = rows[m.name][name]
            lines.append(f"| {title(m.name)} | {name} | {r['AP@0.5']:.2f} | {r['PQ']:.2f} | "
                         f"{r['count exact %']:.0f} % | {r['count MAE']:.2f} | {100 * r['recall']:.0f} % | "
                         f"{r['precision']:.2f} |")
    lines.append("<!-- measured:instances-population:end -->")
    replace_section(doc, "instances-population", "\n".join(lines))
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "benchmarks" / "shapes_world" / "checkpoint"))
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--tune-scenes", type=int, default=40,
                        help="tuning scenes (seeds of their own) for mask_threshold and granularity")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "shapes_world" / "instances.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "shapes-world.md"))
    parser.add_argument("--per-member", action="store_true",
                        help="only the end-to-end table on every member of the proxy population")
    args = parser.parse_args(argv)
    if args.per_member:
        return per_member(args.scenes, Path(args.doc))
    start = time.perf_counter()
    segmenter = EditSegmenter.from_pretrained(args.model, device="cpu")
    scenes = shapes_world.counting_scenes(args.scenes)
    results: dict = {"scenes": args.scenes, "named objects": int(sum(len(s.named) for s in scenes)),
                     "instances": {}}
    tune = shapes_world.counting_scenes(args.tune_scenes, shapes_world.COUNT_TUNE_SEEDS)
    results["tuning"] = {t: instance_runs(segmenter, tune, True, mask_threshold=t)["all"] for t in THRESHOLDS}
    best = max(THRESHOLDS, key=lambda t: (results["tuning"][t]["AP@0.5"] + results["tuning"][t]["count exact %"] / 100))
    results["tuned_threshold"] = best
    print("tuning", results["tuning"], "best", best, flush=True)
    results["score_tuning"] = {c: instance_runs(segmenter, tune, True, min_instance_score=c)["all"] for c in CUTS}
    cut = max(CUTS, key=lambda c: (results["score_tuning"][c]["AP@0.5"] + results["score_tuning"][c]["count exact %"]
                                   / 100))
    results["tuned_min_instance_score"] = cut
    print("score tuning", results["score_tuning"], "best", cut, flush=True)
    tuned = {f"mask_threshold={best} (tuned)": {"mask_threshold": best},
             f"min_instance_score={cut} (tuned)": {"min_instance_score": cut}}
    rows = {**INSTANCE_ROWS, **{f"{name}, {what}": (union, phrase, overrides) for what, overrides in tuned.items()
                                for name, (union, phrase, _) in INSTANCE_ROWS.items() if name.endswith("defaults")}}
    for name, (union, phrase, overrides) in rows.items():
        results["instances"][name] = instance_runs(segmenter, scenes, union, phrase, **overrides)
        print(name, results["instances"][name]["all"], flush=True)
    results["exemplars"] = {f"{k} exemplar{'s' * (k > 1)}, {'the kind in words' if words else 'no words'}":
                            exemplar_runs(segmenter, scenes, k, words) for k in (1, 3) for words in (False, True)}
    for name, row in results["exemplars"].items():
        print(name, row, flush=True)
    results["everything_tuning"] = {g: everything_runs(segmenter, tune, granularity=g) for g in GRANULARITIES}
    results["everything"] = {f"granularity={g}": everything_runs(segmenter, scenes, granularity=g)
                             for g in GRANULARITIES}
    print("everything", results["everything"], flush=True)
    results["wall_time_s"] = time.perf_counter() - start
    Path(args.json).write_text(json.dumps(results, indent=1))
    write_doc(Path(args.doc), results)
    return results


def instance_table(rows: dict, kinds=shapes_world.COUNT_KINDS) -> str:
    lines = ["| run | " + " | ".join(f"{k}: AP@0.5 / count exact" for k in kinds) +
             " | all: AP@0.5 | PQ | count exact | count MAE |", "|---" * (len(kinds) + 5) + "|"]
    for name, r in rows.items():
        cells = [f"{r[k]['AP@0.5']:.2f} / {r[k]['count exact %']:.0f} %" for k in kinds]
        a = r["all"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{a['AP@0.5']:.2f}** | {a['PQ']:.2f} | "
                     f"**{a['count exact %']:.0f} %** | {a['count MAE']:.2f} |")
    return "\n".join(lines)


def write_doc(doc: Path, r: dict) -> None:
    more = f"""
**Existing labels as prompts** (`segment_like(labels, ids)`): in each scene with more named objects
than exemplars, the first 1 or 3 named objects painted as labels; found: the other named objects
matched at IoU ≥ 0.5 by an instance (recall) and the share of returned instances that match one
(precision); painted pixels are never returned (tested).

| exemplars | scenes | recall of the other same-kind objects | precision | AP@0.5 | count exact |
|---|---|---|---|---|---|
{exemplar_lines(r['exemplars'])}

**Segment everything** (`segment_everything()`, no words): mean over every object of the scenes (named
or not) of the best IoU any region reaches (the metric SAM reports for automatic masks), and the
regions per scene; `granularity` = feature clusters (tuning scenes: {everything_line(r['everything_tuning'])}):

| granularity | mean best IoU per object | objects with best IoU ≥ 0.5 | regions per scene |
|---|---|---|---|
{everything_lines(r['everything'])}
"""
    section = f"""<!-- measured:instances:start -->
Measured {time.strftime('%Y-%m-%d')} by `benchmarks/shapes_world/instances.py` on the shipped checkpoint,
CPU (2 shared cores, hence a small run), {r['scenes']} held-out counting scenes
(`shapes_world.counting_scenes`, seeds from {shapes_world.COUNT_TEST_SEEDS:,}; {r['named objects']} named
objects in all, 2–6 per scene among 0–2 others, drawn 1 px apart at the closest), kinds balanced.
The model's vocabulary has no "every", "all" or plurals: the runs give it the kind in its own words
("red circle", "square", "red") and `instances=True` says "every"; the last row types the phrase
anyway (its unknown words fall apart into characters).

**Instance mode** (`segment(expression, instances=True)`): AP@0.5 of the instances pooled over the
scenes and ranked by their scores, panoptic quality, and the count (exact: as many instances as
named objects):

{instance_table(r['instances'])}
{more}<!-- measured:instances:end -->"""
    replace_section(doc, "instances", section)


if __name__ == "__main__":
    main()
