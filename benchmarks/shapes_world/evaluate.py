"""Does the method find and delineate the object a sentence names? Measured on the trained
shapes-world model.

    python benchmarks/shapes_world/evaluate.py --model benchmarks/shapes_world/checkpoint

On held-out scenes (seeds never used for training or tuning), per expression kind: mIoU /
Prec@0.5 of editseg with the default settings and with the paper's preset, and of the
baselines (prior-only, whole-image, centre, random object), with the prior's object accuracy
and its control (another scene's words); every prior source × token handling × layer choice at
the first timestep and at t = 800; the confidence's AUROC (expressions naming an object of the
scene against ones naming nothing in it); the delineation stage (fg selection, background
prototypes, edge refinement) on the ground truth as prior and end to end, with boundary
F-scores; finer features against their cost; the timestep of the one forward; per-layer
grounding; a check that the model really edits; a one-at-a-time sweep around the defaults on
separate tuning scenes; and figures. Writes --json and the measured section of
docs/shapes-world.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_editseg import EditSegmenter, shapes_world
from napari_editseg.core.settings import PAPER

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from docsection import replace_section  # noqa: E402

from benchmarks.shapes_world.grounding_probe import auroc  # noqa: E402
from benchmarks.shapes_world.probes import (  # noqa: E402
    drawing_accuracy,
    edit_errors,
    every_cross_side,
    layer_accuracy,
    load_pipeline,
    prior_from_layers,
    score_scenes,
    short_name,
    text_effect_accuracy,
)

OTHER = "other scene's words"  # the control: each scene gets the next scene's expression
CONTROL = f"object accuracy, {OTHER}"
TIMESTEPS = ("auto", 900, 750, 500, 250, 100)
# Prior sources (issue: "find the named object"): each row changes only the prior stage.
SOURCES = {
    "attention, as captured (the paper's)": {"prior_source": "attention"},
    "attention, softmax over words": {"prior_source": "attention", "token_norm": "softmax"},
    "attention, contrast to template words": {"prior_source": "attention", "token_norm": "contrast"},
    "attention, decoder layers": {"prior_source": "attention", "prior_layers": "decoder"},
    "attention, decoder, softmax": {"prior_source": "attention", "prior_layers": "decoder", "token_norm": "softmax"},
    "attention, decoder, contrast": {"prior_source": "attention", "prior_layers": "decoder",
                                     "token_norm": "contrast"},
    "relevance, noise, vs empty text (Watch-Your-Steps)": {"prior_source": "relevance", "relevance_from": "noise",
                                                           "relevance_baseline": "empty"},
    "relevance, noise, vs template": {"prior_source": "relevance", "relevance_from": "noise",
                                      "relevance_baseline": "template"},
    "relevance, features, vs empty text": {"prior_source": "relevance", "relevance_from": "features",
                                           "relevance_baseline": "empty"},
    "relevance, features, vs template (default)": {"prior_source": "relevance", "relevance_from": "features",
                                                   "relevance_baseline": "template"},
    "fused (default relevance × attention)": {"prior_source": "fused"},
    "fused, decoder layers": {"prior_source": "fused", "prior_layers": "decoder"},
}
# The delineation stage, one step at a time from the paper's to the defaults, on the default prior
PAPER_DELINEATION = {"fg_select": "quantile", "bg_prototypes": 1, "edge_refine": "none", "keep": "all"}
DELINEATION = {
    "paper preset (attention prior too)": PAPER,
    "paper's delineation (fg 0.9-quantile, 1 bg prototype, no edge step, keep all)": PAPER_DELINEATION,
    "+ fg_select=both (above Otsu's threshold and in the 0.9-quantile share)": {**PAPER_DELINEATION,
                                                                              "fg_select": "both"},
    "+ bg_prototypes=5": {**PAPER_DELINEATION, "fg_select": "both", "bg_prototypes": 5},
    "+ keep=peak": {"edge_refine": "none"},
    "+ edge_refine=guided, edge_radius=1": {"edge_radius": 1.0},
    "+ edge_radius=2 (defaults)": {},
    "defaults, edge_radius=3": {"edge_radius": 3.0},
    "defaults, edge_radius=4": {"edge_radius": 4.0},
    "defaults, edge_eps=0.01": {"edge_eps": 0.01},
    "defaults, fg_select=quantile": {"fg_select": "quantile"},
    "defaults, fg_select=otsu": {"fg_select": "otsu"},
    "defaults, fg_select=peak": {"fg_select": "peak"},
    "defaults, bg_prototypes=3": {"bg_prototypes": 3},
}
FEATURES = {  # finer features against their cost
    "up_blocks.1 + up_blocks.2 (default)": {},
    "up_blocks.2 (latent side)": {"feature_blocks": ("up_blocks.2",)},
    "up_blocks.1 + 2 + 3 (adds the last block)": {"feature_blocks": ("up_blocks.1", "up_blocks.2", "up_blocks.3")},
    "up_blocks.2 + 3": {"feature_blocks": ("up_blocks.2", "up_blocks.3")},
    "work grid ×2 (upsampled features), same edge radius in pixels": {"work_resolution": 32, "edge_radius": 4.0},
}
SWEEP = {  # one setting at a time around the defaults ("prior_resolutions" filled in per model)
    "noise_samples": [2, 4],
    "propagation_steps": [0, 1, 4],
    "feature_blocks": [("up_blocks.2",)],
    "prior_resolutions": [],
    "relevance_from": ["noise"],
    "relevance_baseline": ["empty"],
    "fg_select": ["quantile", "otsu", "peak"],
    "fg_quantile": [0.8, 0.95],
    "bg_quantile": [0.3, 0.7],
    "bg_prototypes": [1, 3],
    "temperature": [5.0, 20.0],
    "edge_refine": ["none"],
    "edge_radius": [1.0, 3.0],
    "keep": ["all"],
    "instruction_template": ["make the {} blue", "{}"],
}


def headline(report: dict, method: str) -> dict:
    return {kind: {k: round(report[method][kind][k], 2) for k in ("mIoU", "oIoU")} |
            {"P@0.5": round(report[method][kind]["precision"]["0.5"], 2)} for kind in report[method]}


def confidences(segmenter, samples: list, **overrides) -> list:
    values = []
    for s in samples:
        segmenter.set_image(s.image)
        values.append(segmenter.segment(s.expression, **overrides).confidence)
    return values


def with_control(segmenter, samples: list, methods=("editseg",), **overrides) -> dict:
    """score_scenes, plus the object accuracy with another scene's words."""
    report = score_scenes(segmenter, samples, methods=methods, **overrides)
    report[CONTROL] = score_scenes(segmenter, shapes_world.with_other_expressions(samples), methods=(), **overrides)[
        "object accuracy"]
    return report


def summary_row(report: dict) -> dict:
    return headline(report, "editseg")["all"] | {"object accuracy": round(report["object accuracy"]["all"], 1),
                                                 OTHER: round(report[CONTROL]["all"], 1)}


def end_to_end(segmenter, samples: list, **overrides) -> dict:
    """mIoU, P@0.5 and mean boundary F of the method as it runs, with ``overrides``."""
    from napari_editseg.eval.metrics import boundary_f_score, score_sample, summarise

    scores, boundaries, seconds = [], [], []
    for i, s in enumerate(samples):
        segmenter.set_image(s.image)
        result = segmenter.segment(s.expression, **overrides)
        scores.append(score_sample(str(i), result.mask, s.mask))
        boundaries.append(boundary_f_score(result.mask, s.mask))
        seconds.append(result.timings["denoiser"])
    summary = summarise(scores)
    return {"mIoU": summary["mIoU"], "P@0.5": summary["precision"]["0.5"],
            "boundary F": float(np.mean(boundaries)), "unet ms": 1000 * float(np.median(seconds))}


def figure(segmenter, samples: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(samples), 6, figsize=(9, 1.6 * len(samples)))
    for number, (row, s) in enumerate(zip(axes, samples)):
        segmenter.set_image(s.image)
        r, paper = segmenter.segment(s.expression), segmenter.segment(s.expression, **PAPER)
        for ax, (title, data) in zip(row, [("image", s.image), ("paper: prior", paper.prior),
                                           ("paper: mask", paper.mask), ("default: prior P", r.prior),
                                           ("default: mask", r.mask), ("truth", s.mask)]):
            ax.imshow(data, cmap=None if data.ndim == 3 else "magma", vmin=0, vmax=1 if data.ndim == 2 else None)
            ax.set_xticks([]), ax.set_yticks([])
            if number == 0:
                ax.set_title(title, fontsize=8)
        row[0].set_ylabel(s.expression, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def edge_figure(segmenter, samples: list, path: Path) -> None:
    """Edges zoomed in: the truth's outline over the paper preset's mask and the default's,
    on the ground truth as prior (delineation alone), cropped around the object."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from napari_editseg.core.image import resize

    fig, axes = plt.subplots(len(samples), 3, figsize=(6, 2.1 * len(samples)))
    for number, (row, s) in enumerate(zip(axes, samples)):
        segmenter.set_image(s.image)
        rows, cols = np.nonzero(s.mask)
        crop = (slice(max(0, rows.min() - 4), rows.max() + 5), slice(max(0, cols.min() - 4), cols.max() + 5))
        for ax, (title, overrides) in zip(row, [("image", None), ("paper preset", PAPER), ("defaults", {})]):
            ax.imshow(s.image[crop], interpolation="nearest")
            if overrides is not None:
                base = segmenter.segment(s.expression, **overrides)
                prior = resize(torch.from_numpy(s.mask.astype(np.float32)), base.prior_work.shape)
                result = segmenter.refine(base, prior=prior)
                ax.imshow(np.ma.masked_where(~result.mask[crop], result.mask[crop]), cmap="autumn", alpha=0.55,
                          interpolation="nearest")
            ax.contour(s.mask[crop], levels=[0.5], colors="cyan", linewidths=1.0)
            ax.set_xticks([]), ax.set_yticks([])
            if number == 0:
                ax.set_title(title, fontsize=8)
    fig.suptitle("ground truth as prior; cyan: true outline", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: dict, kinds, columns=("editseg", "prior-only", "whole-image", "centre", "random object")) -> str:
    """Markdown: one row per expression kind, mIoU / P@0.5 per method, and the prior's object
    accuracy with the scene's own words, with another scene's words (control), and chance."""
    lines = ["| kind | " + " | ".join(f"{c} mIoU / P@0.5" for c in columns) +
             " | prior object acc. | same, other scene's words | chance |",
             "|---" * (len(columns) + 4) + "|"]
    for kind in list(kinds) + ["all"]:
        cells = [f"{rows[c][kind]['mIoU']:.1f} / {rows[c][kind]['precision']['0.5']:.0f}" for c in columns]
        lines.append(f"| {kind} | " + " | ".join(cells) +
                     f" | {rows['object accuracy'][kind]:.0f} % | "
                     f"{rows.get(CONTROL, rows['object accuracy'])[kind]:.0f} % | {rows['chance'][kind]:.0f} % |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "benchmarks" / "shapes_world" / "checkpoint"))
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--study-scenes", type=int, default=200, help="scenes of the source, delineation, "
                        "feature, confidence and per-layer tables")
    parser.add_argument("--sweep-scenes", type=int, default=200)
    parser.add_argument("--edit-scenes", type=int, default=48)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "shapes_world" / "results.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "shapes-world.md"))
    parser.add_argument("--world", choices=("v1", "v2"), default="v1", help="the world the model was trained on")
    parser.add_argument("--text-to-image", help="v2: the run's text-to-image pipeline folder, for the drawing check")
    args = parser.parse_args(argv)
    from benchmarks.shapes_world import world_v2

    world = shapes_world if args.world == "v1" else world_v2
    held_out, with_other_expressions = world.held_out, world.with_other_expressions
    start = time.perf_counter()
    segmenter = EditSegmenter.from_pretrained(args.model, device="cpu")
    test = held_out(args.scenes, world.TEST_SEEDS)
    some, others = test[:args.study_scenes], with_other_expressions(test[:args.study_scenes])
    results: dict = {"model": os.path.relpath(args.model, ROOT), "world": args.world, "scenes": args.scenes,
                     "study_scenes": args.study_scenes, "sweep_scenes": args.sweep_scenes,
                     "settings": {k: list(v) if isinstance(v, tuple) else v
                                  for k, v in segmenter.resolve_settings().to_dict().items()}}
    methods = ("editseg", "prior-only", "whole-image", "centre", "random object")
    results["main"] = with_control(segmenter, test, methods)
    results["paper"] = with_control(segmenter, test, methods, **PAPER)
    print(table(results["main"], world.KINDS), "\n", table(results["paper"], world.KINDS), flush=True)

    results["sources"] = {}
    for name, overrides in SOURCES.items():
        for t in ("auto", 800):
            report = with_control(segmenter, some, **overrides, **({} if t == "auto" else {"timestep": t}))
            results["sources"][f"{name} @ {t}"] = summary_row(report)
            print("source", name, t, results["sources"][f"{name} @ {t}"], flush=True)

    absent = world.with_absent_expressions(some)
    results["confidence"] = {}
    for name, overrides in (("defaults", {}), ("paper preset", PAPER), ("attention, decoder layers",
                                                                        {"prior_layers": "decoder",
                                                                         "prior_source": "attention"})):
        present_values, absent_values = confidences(segmenter, some, **overrides), confidences(
            segmenter, absent, **overrides)
        results["confidence"][name] = {"AUROC": auroc(present_values, absent_values),
                                       "present": float(np.mean(present_values)),
                                       "absent": float(np.mean(absent_values))}
    print("confidence", results["confidence"], flush=True)

    results["delineation"] = {}
    for name, overrides in DELINEATION.items():
        results["delineation"][name] = {"ground truth as prior": prior_from_layers(segmenter, some, None, **overrides),
                                        "end to end": end_to_end(segmenter, some, **overrides)}
        print("delineation", name, results["delineation"][name], flush=True)
    results["features"] = {}
    for name, overrides in FEATURES.items():
        results["features"][name] = {"ground truth as prior": prior_from_layers(segmenter, some, None, **overrides),
                                     "end to end": end_to_end(segmenter, some, **overrides)}
        print("features", name, results["features"][name], flush=True)

    results["timesteps"] = {}
    for t in TIMESTEPS:
        for preset, overrides in (("defaults", {}), ("paper preset", PAPER)):
            report = score_scenes(segmenter, test, methods=("editseg", "prior-only"), **overrides,
                                  **({} if t == "auto" else {"timestep": t}))
            results["timesteps"][f"{preset} @ {t}"] = {
                "editseg": headline(report, "editseg")["all"], "prior-only": headline(report, "prior-only")["all"],
                "object accuracy": round(report["object accuracy"]["all"], 1)}
        print("timestep", t, results["timesteps"][f"defaults @ {t}"], flush=True)
    results["layers"] = {"words": layer_accuracy(segmenter, some),
                         OTHER: layer_accuracy(segmenter, others),
                         "start token (image only)": layer_accuracy(segmenter, some, columns="start"),
                         "words, timestep 500": layer_accuracy(segmenter, some, timestep=500)}
    print("layers", results["layers"], flush=True)

    def prior_layers(**overrides) -> list:
        return [short_name(n) for n in segmenter.layout.plan(segmenter.resolve_settings(**overrides)).cross_layers]

    words = results["layers"]["words"]
    margin = {name: words[name] - results["layers"][OTHER][name] for name in words}
    best = max(margin, key=margin.get)
    results["prior_from"] = {name: prior_from_layers(segmenter, some, layers, **PAPER) for name, layers in [
        ("all layers at the prior sides", prior_layers()),
        ("decoder layers at the prior sides (prior_layers=decoder)", prior_layers(prior_layers="decoder")),
        (f"{best} alone (largest margin over its control)", [best]),
        ("every decoder layer", [x for x in results["layers"]["words"] if x.startswith("up")]),
        ("ground truth (the feature stage's ceiling)", None)]}
    print("prior from", results["prior_from"], flush=True)

    tune = held_out(args.sweep_scenes, world.TUNE_SEEDS)
    results["sweep"] = {"defaults": summary_row(with_control(segmenter, tune))}
    sides = segmenter.resolve_settings().prior_resolutions
    SWEEP["prior_resolutions"] = [sides[:1], every_cross_side(segmenter)]
    for name, values in SWEEP.items():
        for value in values:
            results["sweep"][f"{name}={value}"] = summary_row(with_control(segmenter, tune, **{name: value}))
            print("sweep", name, value, results["sweep"][f"{name}={value}"], flush=True)

    pipe = load_pipeline(args.model)
    edits = held_out(args.edit_scenes, world.TEST_SEEDS + 50_000)
    results["edits"] = edit_errors(pipe, edits)
    results["edits"][f"edited_object_accuracy, {OTHER}"] = edit_errors(
        pipe, with_other_expressions(edits))["edited_object_accuracy"]
    print("edits", results["edits"], flush=True)
    results["text_effect"] = {"words": text_effect_accuracy(pipe, some), OTHER: text_effect_accuracy(pipe, others)}
    print("text effect", results["text_effect"], flush=True)
    if args.text_to_image:
        from diffusers import StableDiffusionPipeline

        t2i = StableDiffusionPipeline.from_pretrained(args.text_to_image, safety_checker=None,
                                                      requires_safety_checker=False).to(dtype=torch.float32)
        t2i.set_progress_bar_config(disable=True)
        results["drawing"] = drawing_accuracy(t2i)
        print("drawing", results["drawing"], flush=True)
    images = Path(args.doc).parent / "images"
    suffix = "" if args.world == "v1" else "-v2"
    results["wall_time_s"] = time.perf_counter() - start
    # the numbers first: a missing plotting package must not lose an hour of measurement
    Path(args.json).write_text(json.dumps(results, indent=1))
    write_doc(Path(args.doc), results, world.KINDS, "shapes" if args.world == "v1" else "shapes-v2", suffix)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("figures skipped: pip install matplotlib to draw them", flush=True)
        return results
    figure(segmenter, held_out(8, world.TEST_SEEDS + 90_000), images / f"shapes-world{suffix}.png")
    edge_figure(segmenter, held_out(4, world.TEST_SEEDS + 91_000), images / f"shapes-world{suffix}-edges.png")
    return results


def write_doc(doc: Path, r: dict, kinds, name: str = "shapes", suffix: str = "") -> None:
    e, settings, chance = r["edits"], r["settings"], r["main"]["chance"]["all"]
    steps = "\n".join(f"| {t} | {v['editseg']['mIoU']:.1f} | {v['editseg']['P@0.5']:.0f} | "
                      f"{v['prior-only']['mIoU']:.1f} | {v['object accuracy']:.0f} % |"
                      for t, v in r["timesteps"].items())
    columns = list(r["layers"])
    layers = "\n".join(f"| {name} | " + " | ".join(f"{r['layers'][c][name]:.0f}" for c in columns) + " |"
                       for name in r["layers"][columns[0]])
    effect = "\n".join(f"| {t} | {r['text_effect']['words'][t]:.0f} % | {r['text_effect'][OTHER][t]:.0f} % |"
                       for t in r["text_effect"]["words"])
    prior_from = "\n".join(f"| {k} | {v['mIoU']:.1f} | {v['P@0.5']:.0f} | {v['object accuracy']:.0f} % |"
                           for k, v in r["prior_from"].items())

    def summary_lines(rows: dict) -> str:
        return "\n".join(f"| {k} | {v['mIoU']:.1f} | {v['P@0.5']:.0f} | {v['object accuracy']:.0f} % | "
                         f"{v[OTHER]:.0f} % |" for k, v in rows.items())

    sources = "\n".join(
        f"| {name} | {a['object accuracy']:.0f} / {a[OTHER]:.0f} % | {a['mIoU']:.1f} / {a['P@0.5']:.0f} | "
        f"{b['object accuracy']:.0f} / {b[OTHER]:.0f} % | {b['mIoU']:.1f} / {b['P@0.5']:.0f} |"
        for name in SOURCES for a, b in [(r["sources"][f"{name} @ auto"], r["sources"][f"{name} @ 800"])])
    confidence = "\n".join(f"| {k} | {v['AUROC']:.2f} | {v['present']:.2f} | {v['absent']:.2f} |"
                           for k, v in r["confidence"].items())

    def stage_lines(rows: dict, cost: bool = False) -> str:
        return "\n".join(
            f"| {k} | {v['ground truth as prior']['mIoU']:.1f} | {v['ground truth as prior']['boundary F']:.2f} | "
            f"{v['end to end']['mIoU']:.1f} | {v['end to end']['boundary F']:.2f} |"
            + (f" {v['end to end']['unet ms']:.0f} |" if cost else "") for k, v in rows.items())

    drawing = "" if "drawing" not in r else (
        f"**Does the text-to-image stage draw what its caption says?** {r['drawing']['both']:.0f} % of one-object "
        f"captions drawn with the right colour and shape (colour {r['drawing']['colour']:.0f} %, shape "
        f"{r['drawing']['shape']:.0f} %; chance {r['drawing']['chance, both']:.0f} %).\n\n")
    section = f"""<!-- measured:{name}:start -->
Measured {time.strftime('%Y-%m-%d')} by `benchmarks/shapes_world/evaluate.py` on the shipped checkpoint, CPU,
{r['scenes']} held-out scenes (kinds balanced) for the main tables and the timesteps, the first
{r['study_scenes']} of them for the studies; defaults resolved to
`prior_resolutions={tuple(settings['prior_resolutions'])}`, `affinity_resolution={settings['affinity_resolution']}`,
`feature_blocks={tuple(settings['feature_blocks'])}`, `work_resolution={settings['work_resolution']}`.
"Other scene's words" is the control: each scene gets the next scene's expression.

**Main result, default settings** (mIoU / Prec@0.5, in %; object accuracy: does the prior's
mass lie most on the named object):

{table(r['main'], kinds)}

**Main result, the paper's preset** (`SegmentationSettings.paper()`: attention prior, 0.9-quantile
foreground, one background prototype, no edge step):

{table(r['paper'], kinds)}

**Prior sources** ({r['study_scenes']} scenes; every other setting at its default): prior object
accuracy with the scene's own / another scene's words, and editseg mIoU / P@0.5, at the first
timestep and at t = 800 (Watch-Your-Steps' timestep):

| prior source | first step: object acc. own / other | mIoU / P@0.5 | t = 800: object acc. own / other | mIoU / P@0.5 |
|---|---|---|---|---|
{sources}

**Confidence** (`Segmentation.confidence`; {r['study_scenes']} scenes, each with its own expression
and with a colour+shape combination that no object of the scene has): AUROC of telling the two
apart, and the mean confidence of each:

| settings | AUROC | mean, present | mean, absent |
|---|---|---|---|
{confidence}

**Delineation** ({r['study_scenes']} scenes): mIoU and mean boundary F-score (2 px tolerance) of steps
6–7 given the ground truth as prior (the stage's ceiling), and of the whole method:

| settings | ground truth as prior: mIoU | boundary F | end to end: mIoU | boundary F |
|---|---|---|---|---|
{stage_lines(r['delineation'])}

**Finer features** ({r['study_scenes']} scenes; defaults otherwise; UNet: median milliseconds of the
forward on this CPU, which stops after the last block it needs):

| features | ground truth as prior: mIoU | boundary F | end to end: mIoU | boundary F | UNet ms |
|---|---|---|---|---|---|
{stage_lines(r['features'], cost=True)}

{drawing}**Does the model edit?** Full diffusers pipeline, {e['steps']} steps, default guidance, {e['scenes']} scenes;
mean absolute error to the target edit in grey levels: inside the named object {e['error_inside_edit']:.1f}
(doing nothing: {e['error_inside_doing_nothing']:.1f}); outside it {e['error_outside_edit']:.1f}
(doing nothing: {e['error_outside_doing_nothing']:.1f}). The object the edit changed most is the named
one in {e['edited_object_accuracy']:.0f} % of scenes; with another scene's instruction,
{e[f"edited_object_accuracy, {OTHER}"]:.0f} % (chance {e['chance']:.0f} %).

**Does the one forward know where the edit goes?** The text's effect on one noise prediction,
|ε(instruction) − ε(no text)|, largest on the named object ({r['study_scenes']} scenes; chance {chance:.0f} %):

| timestep | scene's own words | other scene's words |
|---|---|---|
{effect}

**Timestep of the one forward** (the {r['scenes']} scenes of the main result):

| settings @ timestep | editseg mIoU | editseg P@0.5 | prior-only mIoU | prior object acc. |
|---|---|---|---|---|
{steps}

**Where are the words grounded?** Object accuracy (%) of each cross-attention layer's map
alone, first timestep unless said ({r['study_scenes']} scenes; chance {chance:.0f} %). The start-of-text
token's map is the same for every sentence: what it gets right is image salience.

| layer | {' | '.join(columns)} |
|---|{'---|' * len(columns)}
{layers}

**Would other attention layers make the paper's method work?** Steps 5–7 of the paper's preset,
with the prior built from other cross-attention layers (or steps 6–7 on the ground truth as prior):

| prior from | editseg mIoU | P@0.5 | prior object acc. |
|---|---|---|---|
{prior_from}

**Settings sweep** (one setting at a time around the defaults, {r['sweep_scenes']} separate tuning scenes):

| setting | mIoU | P@0.5 | prior object acc. | same, other scene's words |
|---|---|---|---|---|
{summary_lines(r['sweep'])}

![examples: image, the paper preset's prior and mask, the default prior and mask,
truth](images/shapes-world{suffix}.png)

![edges zoomed in: the paper preset against the defaults, on the ground truth as
prior](images/shapes-world{suffix}-edges.png)
<!-- measured:{name}:end -->"""
    replace_section(doc, name, section)


if __name__ == "__main__":
    main()
