"""Grounding choices and the confidence, measured on every member of the proxy population.

    python -m benchmarks.shapes_world.population_eval --split tune --scenes 300   # decisions
    python -m benchmarks.shapes_world.population_eval --split test --scenes 300   # the report
    python -m benchmarks.shapes_world.population_eval --doc-only                  # rewrite the doc
    python -m benchmarks.shapes_world.population_eval --split tune --forward-rows # rows with a forward of their own

A default tuned on one model is a fit to that model, so every row is reported per member, with the
mean and the WORST member; the held-out member (population.py) takes part in no decision and is
reported last. Per scene ONE forward holds the scene's own expression, another scene's expression
(the control) and an expression naming nothing in the scene (absent), plus the ``decoys`` setting's
rows; every prior row below is steps 5-7 on that same forward with other prior settings. Results
per member and split are saved (``benchmarks/shapes_world/population/eval``) so a member is measured once; the doc's
section is written from them.

The rule for a default (``decide``): a row replaces the default only where its mean over the tuning
members is higher AND on no tuning member the paired 95 % bootstrap interval of (row − default)
lies wholly below zero; the held-out member then confirms or not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.docsection import replace_section
from benchmarks.shapes_world.grounding_probe import auroc, bootstrap
from benchmarks.shapes_world.population import HERE, MEMBERS, measured, report_order, title, world_module

DOC = Path(__file__).resolve().parents[2] / "docs" / "shapes-world.md"
RESULTS = HERE / "population" / "eval"  # committed: the doc section is rewritten from them
DECOYS = 8
KEEP_PRESENT = 0.95  # min_confidence is set to keep this share of present objects "found"
PAPER_WALK = {"restart": 0.0, "restart_share": 1.0, "smooth_steps": 0, "prior_pick": "fixed",  # A^k P0 alone
              "peak_links": 0.0}
PRIORS = {  # name: prior settings (steps 5-7 only; the forward is shared), whole, so defaults do not move them
    "A^2 P0 (the paper's; the default before)": PAPER_WALK,
    "P0 (propagation_steps=0)": {**PAPER_WALK, "propagation_steps": 0},
    "restart 0.15": {**PAPER_WALK, "restart": 0.15},
    "restart 0.3": {**PAPER_WALK, "restart": 0.3},
    "restart 0.5": {**PAPER_WALK, "restart": 0.5},
    "A^4 P0": {**PAPER_WALK, "propagation_steps": 4},
    "restart 0.15, 1 smoothing step": {**PAPER_WALK, "restart": 0.15, "smooth_steps": 1},
    "pick by contrast (A^2 P0 | restart 0.15, 1 step): the default until 2026-12-07": {
        "propagation_steps": 2, "restart": 0.15, "restart_share": 1.0, "smooth_steps": 1, "prior_pick": "contrast",
        "peak_links": 0.0},
}
DEFAULT_ROW = "A^2 P0 (the paper's; the default before)"  # what the first rows are compared with
PICK_ROW = "pick by contrast (A^2 P0 | restart 0.15, 1 step): the default until 2026-12-07"
# rows proposed while the pick by contrast was the default: compared with it, not with the paper's row
TOP_ROWS = {f"restart 0.15 at P0's top {round(100 * share)} %, 1 smoothing step": {
    **PAPER_WALK, "restart": 0.15, "restart_share": share, "smooth_steps": 1} for share in (0.2, 0.1)}
PRIORS |= TOP_ROWS
TOP20_ROW = "restart 0.15 at P0's top 20 %, 1 smoothing step"  # the default from 2026-12-07 until m3 joined
CURRENT_ROW = "restart 0.15 at P0's top 10 %, 1 smoothing step"  # the default since m3 joined (the re-check)
# what the doc adds to a row's name (saved results are keyed by the plain name, so a new default renames nothing)
ROW_NOTES = {TOP20_ROW: ": the default from 2026-12-07 until m3 joined", CURRENT_ROW: ": the default now"}
# rows proposed while the top-20 % walk was the default: compared with it
LINK_ROWS = {f"the top-20 % walk, the part kept at the peak of a walk over each cell's {100 * share:g} % most "
             f"alike links (peak_links={share})": {**PRIORS[TOP20_ROW], "peak_links": share}
             for share in (0.125, 0.25)}
PRIORS |= LINK_ROWS
# rows that need a forward of their own (noise draws averaged, another source for P0): the pick by
# contrast's prior settings with these, compared with it
FORWARD_ROWS = {
    **{f"noise_samples={n} (with the pick by contrast, {n} noise draws averaged)": {"noise_samples": n}
       for n in (2, 4)},
    "relevance_from=noise (with the pick by contrast, relevance from the noise prediction)": {
        "relevance_from": "noise"},
    "prior_source=fused (with the pick by contrast, P0 from relevance and attention)": {"prior_source": "fused"},
}
ROWS = (*PRIORS, *FORWARD_ROWS)


PROBE_OFFSET = 500_000  # a probe's scenes start here past the tuning scenes' first seed: never the rule's scenes


def held_out_scenes(world, split: str, n: int) -> list:
    """``n`` scenes of ``split``: tune (the rule's decisions), test (the report) or probe (where a probe looks
    for a candidate, so that the rule's tuning scenes judge it afresh; peak_links was found on the tuning
    scenes and its gain there did not hold on the test scenes, docs/shapes-world.md)."""
    start = {"tune": world.TUNE_SEEDS, "test": world.TEST_SEEDS, "probe": world.TUNE_SEEDS + PROBE_OFFSET}[split]
    return world.held_out(n, start)


def print_gains(member: str, rows: dict, base: str = "default") -> None:
    """A probe's report: each row's share on the named object (own and other words) and mIoU, and its paired
    gain [95 %] over ``base``."""
    width = max(len(name) for name in rows)
    for name, row in rows.items():
        line = (f"{member} {name:>{width}}: on object {np.mean(row['own']) * 100:5.1f} % (other words "
                f"{np.mean(row['other']) * 100:4.1f}), mIoU {np.mean(row['iou']):5.1f}")
        if name != base:
            d_own = (np.array(row["own"], float) - np.array(rows[base]["own"], float)) * 100
            d_iou = np.array(row["iou"]) - np.array(rows[base]["iou"])
            line += (f"  | gain {d_own.mean():+.1f} {tuple(round(v, 1) for v in bootstrap(d_own))} points, "
                     f"{d_iou.mean():+.1f} {tuple(round(v, 1) for v in bootstrap(d_iou))} mIoU")
        print(line, flush=True)


def probe_parser(doc: str, scenes: int = 150) -> argparse.ArgumentParser:
    """A probe's command line: --scenes, --split (its own scenes by default), --members (the tuning members that
    joined)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=scenes)
    parser.add_argument("--split", choices=("probe", "tune"), default="probe",
                        help="probe: scenes of its own (the default); tune: the rule's (how it was run on 2026-12-07)")
    parser.add_argument("--members", nargs="+", default=[m.name for m in measured() if not m.held_out])
    return parser


def member_scenes(member, split: str, scenes: int):
    """What a measurement on a member starts from: its segmenter (CPU), its world and ``scenes`` held-out
    scenes of ``split`` (:func:`held_out_scenes`)."""
    from napari_editseg import EditSegmenter

    world = world_module(member.world)
    segmenter = EditSegmenter.from_pretrained(str(member.checkpoint), device="cpu")
    return segmenter, world, held_out_scenes(world, split, scenes)


def baseline_of(row: str) -> str:
    """The row a row's gains are measured against: the default when it was proposed."""
    if row in LINK_ROWS:
        return TOP20_ROW
    return PICK_ROW if row in FORWARD_ROWS or row in TOP_ROWS else DEFAULT_ROW


def named(row: str) -> str:
    """A row's name as the doc writes it: with :data:`ROW_NOTES`' note where it has one."""
    return row + ROW_NOTES.get(row, "")


def record(row: dict, sample, own, other) -> None:
    """One scene's cells of a prior row: the prior on the named object with its own words and with
    another scene's, and the mask's IoU with the named object."""
    from napari_editseg.eval.metrics import score_sample

    from .probes import prior_choice

    row["own"].append(bool(prior_choice(own.prior, sample.masks) == sample.index))
    row["other"].append(bool(prior_choice(other.prior, sample.masks) == sample.index))
    scored = score_sample("", own.mask, sample.mask)
    row["iou"].append(100.0 * scored.intersection / max(scored.union, 1))


def measure(member, split: str, scenes: int, seed: int = 0) -> dict:
    """Per scene and prior row: prior on the named object (own words, other words), mask IoU;
    per scene: the confidences (peak dominance, decoy rank) of the present and the absent expression."""
    import torch

    from napari_editseg.core.edges import ImageGuide
    from napari_editseg.core.image import to_rgb_float
    from napari_editseg.core.stages import segment_maps

    segmenter, world, samples = member_scenes(member, split, scenes)
    others, absents = world.with_other_expressions(samples), world.with_absent_expressions(samples, seed)
    rows = {name: {"own": [], "other": [], "iou": []} for name in PRIORS}
    confidence = {"peak present": [], "peak absent": [], "decoys present": [], "decoys absent": []}
    with torch.inference_mode():
        for i, sample in enumerate(samples):
            segmenter.set_image(sample.image)
            forward = segmenter.forward([sample.expression, others[i].expression, absents[i].expression],
                                        decoys=DECOYS)
            shape, guide = sample.mask.shape, ImageGuide(to_rgb_float(sample.image))
            for name, overrides in PRIORS.items():
                settings = segmenter.resolve_settings(**overrides)
                own, other, absent = (segment_maps(forward.maps(k), settings, shape, guide=guide) for k in range(3))
                record(rows[name], sample, own, other)
                if name == DEFAULT_ROW:
                    for kind, k, result in (("present", 0, own), ("absent", 2, absent)):
                        signals = raw_signals(forward.maps(k), result, settings)
                        confidence.setdefault(f"signals {kind}", []).append(signals)
                        confidence[f"decoys {kind}"].append(signals[SIGNALS.index("decoy rank")])
                        confidence[f"peak {kind}"].append(signals[SIGNALS.index("relevance peak")])
    return {"member": member.name, "split": split, "scenes": scenes, "decoys": DECOYS, "rows": rows,
            "confidence": confidence}


def measure_forward_rows(member, split: str, scenes: int, names) -> dict:
    """Per scene and row of :data:`FORWARD_ROWS` in ``names``: prior on the named object (own words,
    other words), mask IoU, from a forward of the own and the other expression with the row's settings."""
    import torch

    from napari_editseg.core.edges import ImageGuide
    from napari_editseg.core.image import to_rgb_float
    from napari_editseg.core.stages import segment_maps

    segmenter, world, samples = member_scenes(member, split, scenes)
    others = world.with_other_expressions(samples)
    rows = {name: {"own": [], "other": [], "iou": []} for name in names}
    with torch.inference_mode():
        for i, sample in enumerate(samples):
            segmenter.set_image(sample.image)
            shape, guide = sample.mask.shape, ImageGuide(to_rgb_float(sample.image))
            for name in names:
                forward_settings = FORWARD_ROWS[name]
                settings = segmenter.resolve_settings(**PRIORS[PICK_ROW], **forward_settings)
                forward = segmenter.forward([sample.expression, others[i].expression], **forward_settings)
                own, other = (segment_maps(forward.maps(k), settings, shape, guide=guide) for k in range(2))
                record(rows[name], sample, own, other)
    return rows


SIGNALS = ("decoy rank", "relevance peak", "attention peak", "P0 and P agree", "attention and relevance agree",
           "score contrast", "prototype separation", "mask area", "relevance mean", "attention maximum")


def raw_signals(maps, result, settings) -> list[float]:
    """The issue's candidate signals for "the object is here", none min-max scaled across images:
    in :data:`SIGNALS` order."""
    import torch

    from napari_editseg.core.mask import score_contrast
    from napari_editseg.core.prior import peak_dominance
    from napari_editseg.core.stages import initial_prior

    work = result.prior_work.shape
    p0 = initial_prior(maps, settings, work).numpy()
    attention = initial_prior(maps, settings.replace(prior_source="attention"), work).numpy()

    def agree(a, b) -> float:
        a, b = np.ravel(a).astype(float), np.ravel(b).astype(float)
        return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0

    def unit(v):
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    separation = 1.0 - float((unit(result.fg_prototypes) @ unit(result.bg_prototypes).T).max())
    return [result.confidence, float(peak_dominance(torch.from_numpy(p0))),
            float(peak_dominance(torch.from_numpy(attention))), agree(p0, result.prior_work), agree(attention, p0),
            score_contrast(result.scores, result.mask), separation, float(result.mask.mean()), float(p0.mean()),
            float(max(c.max() for c in maps.cross))]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50) -> np.ndarray:
    """Weights (last: the bias) of an L2-regularised logistic regression, by Newton's method."""
    xb = np.c_[x, np.ones(len(x))]
    w, penalty = np.zeros(xb.shape[1]), l2 * np.r_[np.ones(x.shape[1]), 0.0]
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-xb @ w))
        hessian = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty)
        w -= np.linalg.solve(hessian, xb.T @ (p - y) + penalty * w)
    return w


def fusion(tuning: dict):
    """The fused confidence, fitted on the tuning members' tuning scenes only (signals standardised
    on them): a function of a member's saved confidence record → (present, absent) scores."""
    def signals(record, kind):
        return np.asarray(record[f"signals {kind}"], float)

    x = np.vstack([signals(r["confidence"], kind) for r in tuning.values() for kind in ("present", "absent")])
    y = np.concatenate([np.full(len(r["confidence"][f"signals {kind}"]), kind == "present", float)
                        for r in tuning.values() for kind in ("present", "absent")])
    mean, spread = x.mean(axis=0), x.std(axis=0) + 1e-9
    w = fit_logistic((x - mean) / spread, y)

    def fused(record):
        return tuple(((signals(record, kind) - mean) / spread) @ w[:-1] + w[-1] for kind in ("present", "absent"))
    return fused, dict(zip(SIGNALS, w[:-1]))


def results_path(name: str, split: str) -> Path:
    return RESULTS / f"{name}-{split}.json"


def load(split: str) -> dict:
    return {m.name: json.loads(results_path(m.name, split).read_text()) for m in MEMBERS.values()
            if results_path(m.name, split).exists()}


def auroc_interval(positive, negative, n: int = 300, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    stats = [auroc(pos[rng.integers(len(pos), size=len(pos))], neg[rng.integers(len(neg), size=len(neg))])
             for _ in range(n)]
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def threshold_keeping(present, share: float = KEEP_PRESENT) -> float:
    """The highest min_confidence that still calls ``share`` of the present expressions found."""
    return float(np.quantile(np.asarray(present, float), 1 - share, method="lower"))


def decide(tuning: dict, metric: str, against: str | None = None) -> dict:
    """For each prior row: the tuning members' mean of (row − default) on ``metric`` and whether the
    rule lets it replace the default (see the module's docstring). The default is the one the row was
    proposed beside, or ``against`` for every row (the re-check when a member joins)."""
    verdicts = {}
    for name in (PRIORS if against else ROWS):
        if name in (DEFAULT_ROW, against) or any(name not in r["rows"] for r in tuning.values()):
            continue
        gains, worse = [], []
        for result in tuning.values():
            row, default = (np.asarray(result["rows"][r][metric], float) for r in (name, against or baseline_of(name)))
            diff = row - default
            gains.append(float(diff.mean()) * (100.0 if metric != "iou" else 1.0))
            worse.append(bootstrap(diff)[1] < 0)
        verdicts[name] = {"mean gain": float(np.mean(gains)) if gains else 0.0, "worse on some model": any(worse),
                          "replaces the default": bool(gains) and np.mean(gains) > 0 and not any(worse),
                          "no loss": bool(gains) and np.mean(gains) >= 0 and not any(worse)}
    return verdicts


def passes(on_object: dict, iou: dict) -> bool:
    """The rule on both metrics: no loss on either (mean gain >= 0, no tuning member worse beyond noise) and a
    gain on at least one. A row that cannot move the prior (it keeps another part of the mask) leaves the
    prior's metric unchanged by construction, and passes on the mask's alone."""
    return on_object["no loss"] and iou["no loss"] and (on_object["replaces the default"]
                                                        or iou["replaces the default"])


def held_out_gains(result: dict, row: str, against: str | None = None) -> dict:
    """On the held-out member: the mean gain of ``row`` over the default (as in :func:`decide`) per metric,
    its paired 95 % interval, and whether it confirms a decision (on neither metric worse beyond noise)."""
    gains = {}
    for metric, scale in (("own", 100.0), ("iou", 1.0)):
        diff = (np.asarray(result["rows"][row][metric], float)
                - np.asarray(result["rows"][against or baseline_of(row)][metric], float)) * scale
        gains[metric] = (float(diff.mean()), *bootstrap(diff))
    return {"gains": gains, "confirms": all(high >= 0 for _, _, high in gains.values())}


def member_lines(results: dict) -> list[str]:
    """A table per prior row: each member, the mean and the worst; the held-out member last."""
    names = report_order(results)
    tuning = [n for n in names if not MEMBERS[n].held_out]
    lines = ["| prior | " + " | ".join(title(n) for n in names)
             + " | mean of tuning | worst of tuning |", "|---|" + "---|" * (len(names) + 2)]
    for metric, label, scale in (("own", "on the named object %", 100.0), ("other", "other words' control %", 100.0),
                                 ("iou", "mIoU", 1.0)):
        for row in ROWS:
            if any(row not in results[n]["rows"] for n in names):
                continue  # a row added after some member was measured: measure it --again
            cells, means = [], {}
            for n in names:
                values = np.asarray(results[n]["rows"][row][metric], float) * scale
                low, high = bootstrap(values)
                means[n] = values.mean()
                cells.append(f"{values.mean():.1f} [{low:.1f}, {high:.1f}]")
            worst = (max if metric == "other" else min)(means[n] for n in tuning) if tuning else float("nan")
            mean = np.mean([means[n] for n in tuning]) if tuning else float("nan")
            lines.append(f"| {named(row)}: {label} | " + " | ".join(cells) + f" | {mean:.1f} | {worst:.1f} |")
    return lines


def confidence_lines(results: dict, thresholds: dict, fused=None) -> list[str]:
    names = report_order(results)
    lines = ["| member | confidence | AUROC [95 %] | min_confidence | present kept % | no-target accuracy % |",
             "|---|---|---|---|---|---|"]
    for n in names:
        c = dict(results[n]["confidence"])
        kinds = ["peak", "decoys"]
        if fused is not None and "signals present" in c:
            c["fused present"], c["fused absent"] = fused(c)
            kinds.append("fused")
        for kind in kinds:
            present, absent = c[f"{kind} present"], c[f"{kind} absent"]
            low, high = auroc_interval(present, absent)
            tau = thresholds[kind]
            lines.append(f"| {title(n)} | {kind} | "
                         f"{auroc(present, absent):.2f} [{low:.2f}, {high:.2f}] | {tau:.3f} | "
                         f"{100 * np.mean(np.asarray(present) >= tau):.0f} | "
                         f"{100 * np.mean(np.asarray(absent) < tau):.0f} |")
    return lines


def decision_lines(tuning: dict, test: dict, held: list, against: str | None = None) -> list[str]:
    """The decision table: each row's mean gains on the tuning members' tuning scenes, whether it passes the
    rule, the held-out members' gains on their test scenes and whether they confirm (see :func:`decide`)."""
    lines = ["| row | mean gain, on the object (points) | mean gain, mIoU | passes the rule | "
             + "".join(f"{n} (held out): on the object | {n}: mIoU | " for n in held) + "passes and is confirmed |",
             "|---|---|---|---|" + "---|---|" * len(held) + "---|"]
    on_object, iou = decide(tuning, "own", against), decide(tuning, "iou", against)
    for row in on_object:
        adopted = passes(on_object[row], iou[row])
        checks = [held_out_gains(test[n], row, against) if row in test[n]["rows"] else None for n in held]
        cells = "".join("– | – | " if c is None else
                        "".join(f"{c['gains'][m][0]:+.1f} [{c['gains'][m][1]:+.1f}, {c['gains'][m][2]:+.1f}] | "
                                for m in ("own", "iou")) for c in checks)
        changes = adopted and bool(checks) and all(c is not None and c["confirms"] for c in checks)
        lines.append(f"| {named(row)} | {on_object[row]['mean gain']:+.1f} | {iou[row]['mean gain']:+.1f} | "
                     f"{'yes' if adopted else 'no'} | {cells}{'yes' if changes else 'no'} |")
    return lines


def write_doc(doc: Path = DOC) -> None:
    tune, test = load("tune"), load("test")
    tuning_tune = {n: r for n, r in tune.items() if not MEMBERS[n].held_out}
    pooled = {kind: [v for r in tuning_tune.values() for v in r["confidence"][f"{kind} present"]]
              for kind in ("peak", "decoys")}
    fused = weights = None
    if tuning_tune and all("signals present" in r["confidence"] for r in tuning_tune.values()):
        fused, weights = fusion(tuning_tune)
        pooled["fused"] = [v for r in tuning_tune.values() for v in fused(r["confidence"])[0]]
    thresholds = {kind: threshold_keeping(v) if v else 0.0 for kind, v in pooled.items()}
    lines = ["<!-- measured:population:start -->",
             f"Written by `python -m benchmarks.shapes_world.population_eval` from the saved results of the "
             f"members measured so far ({', '.join(sorted(test)) or 'none'} on the test scenes; "
             f"{', '.join(sorted(tune)) or 'none'} on the tuning scenes). Cells: mean [95 % bootstrap interval "
             f"over scenes]; {next(iter(test.values()))['scenes'] if test else 0} held-out scenes per member. "
             "The held-out member takes part in no decision.", ""]
    if test:
        lines += ["Prior rows (steps 5-7 on one shared forward per scene; the last rows on a forward of "
                  "their own):", ""] + member_lines(test) + [""]
    if tuning_tune:
        held = [n for n in test if MEMBERS[n].held_out]
        lines += ["Decisions on the tuning scenes of the tuning members (rule: on neither metric a mean loss or a "
                  "member worse beyond noise, and a mean gain on one; rows before 2026-12-07 had a gain on both), "
                  "then the held-out member's test scenes (gain [paired 95 %]; it confirms where "
                  "neither gain lies wholly below zero). Gains against the paper's row; those of the later rows "
                  "(at P0's top share, or on a forward of their own) against the pick by contrast, the cut-link rows "
                  "against the top-20 % walk: the default when they were proposed. Whether a row that passes "
                  "becomes the default is said in the text:", ""]
        lines += decision_lines(tuning_tune, test, held) + [""]
        lines += [f"Re-checked on all {len(tuning_tune)} tuning members ({', '.join(report_order(tuning_tune))}), "
                  "every row of the shared forward against the paper's row (the same rule and columns): a default "
                  "stays one only while it passes here when a member joins:", ""]
        lines += decision_lines(tuning_tune, test, held, against=DEFAULT_ROW) + [""]
    if test:
        lines += [f"Confidence: present vs absent expressions; min_confidence chosen on the tuning members' tuning "
                  f"scenes to keep {KEEP_PRESENT:.0%} of present objects ({DECOYS} decoys):", ""]
        lines += confidence_lines(test, thresholds, fused) + [""]
        if weights:
            lines += ["Fused: a logistic regression on the standardised raw signals, fitted on the tuning members' "
                      "tuning scenes only (its score is the log-odds, so min_confidence is on that scale); weights: "
                      + ", ".join(f"{name} {w:+.2f}" for name, w in weights.items()) + ". Each signal alone, AUROC "
                      "per member (test scenes):", "",
                      "| signal | " + " | ".join(report_order(test)) + " |",
                      "|---|" + "---|" * len(test)]
            members = report_order(test)
            for i, name in enumerate(SIGNALS):
                cells = []
                for n in members:
                    c = test[n]["confidence"]
                    if "signals present" not in c:
                        cells.append("–")
                        continue
                    present, absent = (np.asarray(c[f"signals {kind}"])[:, i] for kind in ("present", "absent"))
                    cells.append(f"{auroc(present, absent):.2f}")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    lines.append("<!-- measured:population:end -->")
    replace_section(doc, "population", "\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("tune", "test"), default="test")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--members", help="comma-separated names (default: every joined member)")
    parser.add_argument("--again", action="store_true", help="measure members that already have results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--doc-only", action="store_true")
    parser.add_argument("--forward-rows", action="store_true",
                        help="add the rows that need a forward of their own to the members' saved results")
    args = parser.parse_args(argv)
    if not args.doc_only:
        import torch

        torch.set_num_threads(args.threads)
        names = args.members.split(",") if args.members else [m.name for m in measured()]
        for name in names:
            path = results_path(name, args.split)
            if args.forward_rows:  # added to saved results only
                if not path.exists():
                    continue
                result = json.loads(path.read_text())
                missing = [row for row in FORWARD_ROWS if args.again or row not in result["rows"]]
                if missing:
                    result["rows"] |= measure_forward_rows(MEMBERS[name], args.split, result["scenes"], missing)
                    path.write_text(json.dumps(result) + "\n")
                    print(f"{name} {args.split}: {len(missing)} forward rows measured on {result['scenes']} scenes")
                continue
            if path.exists() and not args.again:
                continue
            result = measure(MEMBERS[name], args.split, args.scenes)
            if path.exists():  # measured again: the rows of a forward of their own stay, on the same scenes
                saved = json.loads(path.read_text())
                if saved["scenes"] == args.scenes:
                    result["rows"] = {**saved["rows"], **result["rows"]}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result) + "\n")
            print(f"{name} {args.split}: measured {args.scenes} scenes")
    write_doc()


if __name__ == "__main__":
    main()
