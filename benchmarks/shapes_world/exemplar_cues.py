"""Which cue makes a place look like the exemplars (``exemplar_cue``), decided on the proxy population.

    python -m benchmarks.shapes_world.exemplar_cues            # measures, then writes the doc section

Existing labels as prompts (``segment_like``): in each counting scene with more than ``EXEMPLARS``
named objects, the first ones are painted as labels and the others must be found as instances.
A cue may replace the features only where the mean AP over the TUNING members' tuning scenes rises
and on no tuning member AP falls beyond noise (paired bootstrap over scenes); the held-out member's
test scenes then confirm or not (population.py names the members). Which passing cue becomes the
default is said, with why, in docs/shapes-world.md beside the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.docsection import replace_section
from benchmarks.shapes_world.instances import exemplar_matches, summary
from benchmarks.shapes_world.population import HERE, MEMBERS, joined

DOC = Path(__file__).resolve().parents[2] / "docs" / "shapes-world.md"
RESULTS = HERE / "population" / "eval" / "exemplar-cues.json"
CUES = ("features", "colour", "both")
BASELINE = "features"  # the cue before this decision: gains are measured against it
EXEMPLARS = 3


def runs(member, split: str, scenes: int) -> dict:
    """Per cue, per scene: the instances matched against the named objects that were not painted."""
    import torch

    from napari_editseg import EditSegmenter, shapes_world

    torch.set_num_threads(1)
    seeds = shapes_world.COUNT_TUNE_SEEDS if split == "tune" else shapes_world.COUNT_TEST_SEEDS
    segmenter = EditSegmenter.from_pretrained(str(member.checkpoint), device="cpu")
    with torch.inference_mode():
        return exemplar_matches(segmenter, shapes_world.counting_scenes(scenes, seeds), EXEMPLARS, False,
                                {cue: {"exemplar_cue": cue} for cue in CUES})


def ap_gain_interval(row: list, default: list, n: int = 300, seed: int = 0) -> tuple[float, float]:
    """95 % interval of AP(row) − AP(default) over scenes resampled together (paired)."""
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(n):
        pick = rng.integers(len(row), size=len(row))
        gains.append(summary([row[i] for i in pick])["AP@0.5"] - summary([default[i] for i in pick])["AP@0.5"])
    return float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5))


def decide(tuning: dict) -> dict:
    """Per cue: the mean AP gain over the tuning members and whether it may replace the default."""
    verdicts = {}
    for cue in CUES:
        if cue == BASELINE:
            continue
        gains = [summary(r[cue])["AP@0.5"] - summary(r[BASELINE])["AP@0.5"] for r in tuning.values()]
        worse = [ap_gain_interval(r[cue], r[BASELINE])[1] < 0 for r in tuning.values()]
        verdicts[cue] = {"mean gain": float(np.mean(gains)), "passes": float(np.mean(gains)) > 0 and not any(worse)}
    return verdicts


def write_doc(results: dict, doc: Path = DOC) -> None:
    names = sorted(results["test"], key=lambda n: (MEMBERS[n].held_out, n))
    lines = ["<!-- measured:exemplar-cues:start -->",
             f"Written by `python -m benchmarks.shapes_world.exemplar_cues`: {EXEMPLARS} exemplars, no words; "
             "recall / precision of the other named objects (IoU ≥ 0.5) and AP@0.5, on "
             f"{results['test_scenes']} test counting scenes per member (those with more than {EXEMPLARS} "
             "named objects).", "",
             "| exemplar_cue | " + " | ".join(f"{n}{' (held out)' if MEMBERS[n].held_out else ''}: recall / "
                                              "precision / AP" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for cue in CUES:
        cells = []
        for n in names:
            s = summary(results["test"][n][cue])
            cells.append(f"{100 * s['recall']:.0f} % / {s['precision']:.2f} / {s['AP@0.5']:.2f}")
        lines.append(f"| {cue}{' (before)' if cue == BASELINE else ''} | " + " | ".join(cells) + " |")
    verdicts = decide(results["tune"])
    held = [n for n in names if MEMBERS[n].held_out]
    lines += ["", f"Decision on {results['tune_scenes']} tuning scenes of the tuning members "
              f"({', '.join(sorted(results['tune']))}), then the held-out member's test scenes:", "",
              "| cue | mean AP gain, tuning members | passes the rule | "
              + "".join(f"{n} (held out): AP gain [95 %] | " for n in held) + "passes and is confirmed |",
              "|---|---|---|" + "---|" * len(held) + "---|"]
    for cue, v in verdicts.items():
        cells, confirmed = "", True
        for n in held:
            row, default = results["test"][n][cue], results["test"][n][BASELINE]
            gain = summary(row)["AP@0.5"] - summary(default)["AP@0.5"]
            low, high = ap_gain_interval(row, default)
            cells += f"{gain:+.2f} [{low:+.2f}, {high:+.2f}] | "
            confirmed &= high >= 0
        lines.append(f"| {cue} | {v['mean gain']:+.2f} | {'yes' if v['passes'] else 'no'} | {cells}"
                     f"{'yes' if v['passes'] and confirmed and held else 'no'} |")
    lines.append("<!-- measured:exemplar-cues:end -->")
    replace_section(doc, "exemplar-cues", "\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tune-scenes", type=int, default=60)
    parser.add_argument("--test-scenes", type=int, default=100)
    parser.add_argument("--doc-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.doc_only:
        members = [m for n, m in MEMBERS.items() if joined(m) or n == "m0"]
        results = {"tune_scenes": args.tune_scenes, "test_scenes": args.test_scenes,
                   "tune": {m.name: runs(m, "tune", args.tune_scenes) for m in members if not m.held_out},
                   "test": {m.name: runs(m, "test", args.test_scenes) for m in members}}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results) + "\n")
    write_doc(json.loads(RESULTS.read_text()))


if __name__ == "__main__":
    main()
