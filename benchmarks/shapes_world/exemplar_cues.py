"""Exemplar settings decided on the proxy population: which cue makes a place look like the exemplars
(``exemplar_cue``), and how far from the exemplars' size a found object may be (``exemplar_size``).

    python -m benchmarks.shapes_world.exemplar_cues                    # the cue: measures, writes the doc section
    python -m benchmarks.shapes_world.exemplar_cues --question size    # the size
    python -m benchmarks.shapes_world.exemplar_cues --question regions # regions alike in form and colour
    python -m benchmarks.shapes_world.exemplar_cues --question granularity  # how many clusters make them
    python -m benchmarks.shapes_world.exemplar_cues --question alike   # the alike rule, before and now
    python -m benchmarks.shapes_world.exemplar_cues --question colour  # found objects kept in the exemplars' colour
    python -m benchmarks.shapes_world.exemplar_cues --question second  # alike regions from a second clustering too

Existing labels as prompts (``segment_like``): in each counting scene with more than ``EXEMPLARS``
named objects, the first ones are painted as labels and the others must be found as instances.
A value may replace the baseline only where the mean AP over the TUNING members' tuning scenes rises
and on no tuning member AP falls beyond noise (paired bootstrap over scenes); the held-out member's
test scenes then confirm or not (population.py names the members). Which passing value becomes the
default is said, with why, in docs/shapes-world.md beside the table.
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.docsection import replace_section
from benchmarks.shapes_world.instances import exemplar_matches, summary
from benchmarks.shapes_world.population import HERE, MEMBERS, measured, report_order, title

DOC = Path(__file__).resolve().parents[2] / "docs" / "shapes-world.md"
EXEMPLARS = 3
PREVIOUS = "perimeter form, a box over every attribute"


@dataclass(frozen=True)
class Question:
    """One decision: the setting, its values (row name → settings of the run), the baseline row the
    gains are measured against (the default before the decision), the doc section and results file."""

    setting: str
    variants: dict
    baseline: str
    section: str
    results: Path
    previous: tuple = ()  # rows run with the alike rule as it was before 2026-12-07 (previous_alike)


QUESTIONS = {
    # measured before exemplar_size existed (no size filter then)
    "cue": Question("exemplar_cue",
                    {c: {"exemplar_cue": c, "exemplar_size": 0} for c in ("features", "colour", "both")},
                    "features", "exemplar-cues", HERE / "population" / "eval" / "exemplar-cues.json"),
    "size": Question("exemplar_size", {"0 (any size)": {"exemplar_size": 0}, "3": {"exemplar_size": 3.0},
                                       "2": {"exemplar_size": 2.0}, "1.5": {"exemplar_size": 1.5}},
                     "0 (any size)", "exemplar-size", HERE / "population" / "eval" / "exemplar-size.json"),
    "regions": Question("exemplar_regions", {"False": {"exemplar_regions": False}, "True": {"exemplar_regions": True}},
                        "False", "exemplar-regions", HERE / "population" / "eval" / "exemplar-regions.json"),
    # the regions alike come from segment everything's clusters: how many, for exemplar runs
    "granularity": Question("granularity", {"32": {"granularity": 32}, "48": {"granularity": 48},
                                            "64": {"granularity": 64}},
                            "32", "exemplar-granularity", HERE / "population" / "eval" / "exemplar-granularity.json"),
    # the alike regions' rule: how form is measured, a group the exemplars differ in left free, contrast
    # (measured before exemplar_granularity existed: pinned to 0 so that a re-run gives the same rows)
    "alike": Question("the alike rule", {PREVIOUS: {"exemplar_colour": False, "exemplar_granularity": 0},
                                         "smoothed form, a group they differ in free, contrast":
                                             {"exemplar_colour": False, "exemplar_granularity": 0}},
                      PREVIOUS, "exemplar-alike", HERE / "population" / "eval" / "exemplar-alike.json",
                      previous=(PREVIOUS,)),
    # a second, finer clustering for the alike regions, joining where the first left room
    "second": Question("exemplar_granularity", {"0 (none)": {"exemplar_granularity": 0},
                                                "48": {"exemplar_granularity": 48},
                                                "64": {"exemplar_granularity": 64}},
                       "0 (none)", "exemplar-second", HERE / "population" / "eval" / "exemplar-second.json"),
    "colour": Question("exemplar_colour", {"False": {"exemplar_colour": False, "exemplar_granularity": 0},
                                           "True": {"exemplar_colour": True, "exemplar_granularity": 0}},
                       "False", "exemplar-colour", HERE / "population" / "eval" / "exemplar-colour.json"),
}


@contextmanager
def previous_alike():
    """The alike rule as it was before 2026-12-07, for the 'alike' question's before row: form by the
    pixel perimeter's circularity, the second moment and solidity; a box over the exemplars' range
    widened by the tolerance on every attribute (no group left free, no contrast)."""
    from skimage.measure import regionprops

    from napari_editseg.core import alike, automatic

    tolerance = np.array([0.18, 0.18, 0.18, 0.12, 0.018, 0.09])

    def attributes(labels, rgb):
        out = {}
        for region in regionprops(labels):
            mu = region.moments_central
            circularity = min(1.2, 4 * np.pi * region.area / max(region.perimeter, 1e-6) ** 2)
            out[region.label] = np.array([*rgb[labels == region.label].mean(axis=0), circularity,
                                          (mu[2, 0] + mu[0, 2]) / region.area ** 2, region.solidity])
        return out

    def bounds(of_labels, ids):
        exemplars = np.stack([of_labels[i] for i in ids])
        return exemplars.min(axis=0) - tolerance, exemplars.max(axis=0) + tolerance

    saved = automatic.attributes, automatic.exemplar_bounds, alike.attributes
    automatic.attributes, automatic.exemplar_bounds, alike.attributes = attributes, bounds, attributes
    try:
        yield
    finally:
        automatic.attributes, automatic.exemplar_bounds, alike.attributes = saved


def runs(member, split: str, scenes: int, question: Question) -> dict:
    """Per value, per scene: the instances matched against the named objects that were not painted."""
    import torch

    from napari_editseg import EditSegmenter, shapes_world

    torch.set_num_threads(1)
    seeds = shapes_world.COUNT_TUNE_SEEDS if split == "tune" else shapes_world.COUNT_TEST_SEEDS
    segmenter = EditSegmenter.from_pretrained(str(member.checkpoint), device="cpu")
    chosen = shapes_world.counting_scenes(scenes, seeds)
    out = {}
    with torch.inference_mode():
        for name, overrides in question.variants.items():
            with previous_alike() if name in question.previous else nullcontext():
                out |= exemplar_matches(segmenter, chosen, EXEMPLARS, False, {name: overrides})
    return out


def ap_gain_interval(row: list, default: list, n: int = 300, seed: int = 0) -> tuple[float, float]:
    """95 % interval of AP(row) − AP(default) over scenes resampled together (paired)."""
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(n):
        pick = rng.integers(len(row), size=len(row))
        gains.append(summary([row[i] for i in pick])["AP@0.5"] - summary([default[i] for i in pick])["AP@0.5"])
    return float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5))


def decide(tuning: dict, question: Question) -> dict:
    """Per value: the mean AP gain over the tuning members and whether it may replace the default."""
    verdicts = {}
    for name in question.variants:
        if name == question.baseline:
            continue
        base = question.baseline
        gains = [summary(r[name])["AP@0.5"] - summary(r[base])["AP@0.5"] for r in tuning.values()]
        worse = [ap_gain_interval(r[name], r[base])[1] < 0 for r in tuning.values()]
        verdicts[name] = {"mean gain": float(np.mean(gains)), "passes": float(np.mean(gains)) > 0 and not any(worse)}
    return verdicts


def write_doc(results: dict, question: Question, doc: Path = DOC) -> None:
    names = report_order(results["test"])
    key = next(k for k, q in QUESTIONS.items() if q is question)
    flag = "" if key == "cue" else f" --question {key}"
    lines = [f"<!-- measured:{question.section}:start -->",
             f"Written by `python -m benchmarks.shapes_world.exemplar_cues{flag}`: {EXEMPLARS} exemplars, no words; "
             "recall / precision of the other named objects (IoU ≥ 0.5) and AP@0.5, on "
             f"{results['test_scenes']} test counting scenes per member (those with more than {EXEMPLARS} "
             "named objects).", "",
             f"| {question.setting} | " + " | ".join(f"{title(n)}: recall / precision / AP" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for value in question.variants:
        cells = []
        for n in names:
            s = summary(results["test"][n][value])
            cells.append(f"{100 * s['recall']:.0f} % / {s['precision']:.2f} / {s['AP@0.5']:.2f}")
        lines.append(f"| {value}{' (before)' if value == question.baseline else ''} | " + " | ".join(cells) + " |")
    verdicts = decide(results["tune"], question)
    held = [n for n in names if MEMBERS[n].held_out]
    lines += ["", f"Decision on {results['tune_scenes']} tuning scenes of the tuning members "
              f"({', '.join(sorted(results['tune']))}), then the held-out member's test scenes:", "",
              "| value | mean AP gain, tuning members | passes the rule | "
              + "".join(f"{n} (held out): AP gain [95 %] | " for n in held) + "passes and is confirmed |",
              "|---|---|---|" + "---|" * len(held) + "---|"]
    for value, v in verdicts.items():
        cells, confirmed = "", True
        for n in held:
            row, default = results["test"][n][value], results["test"][n][question.baseline]
            gain = summary(row)["AP@0.5"] - summary(default)["AP@0.5"]
            low, high = ap_gain_interval(row, default)
            cells += f"{gain:+.2f} [{low:+.2f}, {high:+.2f}] | "
            confirmed &= high >= 0
        lines.append(f"| {value} | {v['mean gain']:+.2f} | {'yes' if v['passes'] else 'no'} | {cells}"
                     f"{'yes' if v['passes'] and confirmed and held else 'no'} |")
    lines.append(f"<!-- measured:{question.section}:end -->")
    replace_section(doc, question.section, "\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tune-scenes", type=int, default=60)
    parser.add_argument("--test-scenes", type=int, default=100)
    parser.add_argument("--question", choices=tuple(QUESTIONS), default="cue")
    parser.add_argument("--doc-only", action="store_true")
    args = parser.parse_args(argv)
    question = QUESTIONS[args.question]
    if not args.doc_only:
        members = measured("v1")  # counting scenes exist in world v1 only
        results = {"tune_scenes": args.tune_scenes, "test_scenes": args.test_scenes,
                   "tune": {m.name: runs(m, "tune", args.tune_scenes, question) for m in members if not m.held_out},
                   "test": {m.name: runs(m, "test", args.test_scenes, question) for m in members}}
        question.results.parent.mkdir(parents=True, exist_ok=True)
        question.results.write_text(json.dumps(results) + "\n")
    write_doc(json.loads(question.results.read_text()), question)


if __name__ == "__main__":
    main()
