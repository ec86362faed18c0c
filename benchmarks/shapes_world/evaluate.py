"""Does the method find the object a sentence names? Measured on the trained shapes-world model.

    python benchmarks/shapes_world/evaluate.py --model benchmarks/shapes_world/checkpoint

On held-out scenes (seeds never used for training or tuning), per expression kind:
mIoU / oIoU / Prec@0.5 of editseg and of the baselines (prior-only, whole-image, centre,
random object), and the prior's object accuracy; the same at later timesteps (the paper's
claim is that the earliest one suffices); a check that the model really edits (the full
diffusers pipeline recolours the named object); a one-at-a-time sweep of the [design]
settings on separate tuning scenes; and a figure of examples. Writes --json and the
measured section of docs/shapes-world.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_editseg import EditSegmenter
from napari_editseg.shapes_world import KINDS, TEST_SEEDS, TUNE_SEEDS, held_out, score_scenes

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from docsection import replace_section  # noqa: E402

TIMESTEPS = ("auto", 900, 750, 500, 250, 100)
SWEEP = {  # one setting at a time around the defaults
    "feature_blocks": [("up_blocks.1",), ("up_blocks.2",), ("up_blocks.0", "up_blocks.1", "up_blocks.2")],
    "prior_resolutions": [(4,), (8,), (4, 8, 16)],
    "propagation_steps": [0, 1, 4],
    "token_reduce": ["max"],
    "fg_quantile": [0.8, 0.95],
    "bg_quantile": [0.3, 0.7],
    "temperature": [5.0, 20.0],
    "bg_prototypes": [3],
    "keep": ["peak"],
    "instruction_template": ["make the {} blue", "{}"],
    "noise_samples": [4],
}


def headline(report: dict, method: str) -> dict:
    return {kind: {k: round(report[method][kind][k], 2) for k in ("mIoU", "oIoU")} |
            {"P@0.5": round(report[method][kind]["precision"]["0.5"], 2)} for kind in report[method]}


@torch.inference_mode()
def edits_really(model_dir: str, samples: list, steps: int = 20) -> dict:
    """Full-pipeline edits: mean |edit − target| inside and outside the named object, against
    the same errors of doing nothing (returning the input). 0-255 grey levels."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(model_dir, safety_checker=None,
                                                                   requires_safety_checker=False)
    pipe.to(torch.float32)  # saved in fp16; CPU runs fp32
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for i, s in enumerate(samples):
        from PIL import Image

        out = pipe(s.instruction, image=Image.fromarray(s.image), num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(i), output_type="np").images[0]
        edit = (out * 255).astype(np.float32)
        target, source = s.target.astype(np.float32), s.image.astype(np.float32)
        rows.append([np.abs(edit - target)[s.mask].mean(), np.abs(source - target)[s.mask].mean(),
                     np.abs(edit - target)[~s.mask].mean(), np.abs(source - target)[~s.mask].mean()])
    inside, nothing_inside, outside, nothing_outside = np.mean(rows, axis=0)
    return {"scenes": len(samples), "steps": steps, "error_inside_edit": float(inside),
            "error_inside_doing_nothing": float(nothing_inside), "error_outside_edit": float(outside),
            "error_outside_doing_nothing": float(nothing_outside)}


@torch.inference_mode()
def layer_accuracy(segmenter, samples: list, timestep="auto") -> dict:
    """Object accuracy of each cross-attention layer's expression-token map alone: where in
    the UNet (if anywhere) the words are grounded."""
    from napari_editseg.core.image import normalise01, resize
    from napari_editseg.shapes_world import prior_choice

    overrides = {} if timestep == "auto" else {"timestep": timestep}
    levels = tuple(segmenter.layout.latent_side >> level for level in segmenter.layout.cross_levels)
    hits: dict = {}
    for s in samples:
        segmenter.set_image(s.image)
        f = segmenter.forward([s.expression], prior_resolutions=levels, **overrides)
        h, w = f.latent_grid
        for name, level in zip(f.plan.cross_layers, f.plan.cross_levels):
            probs = f.store.cross[name][0][:, list(f.instructions[0].token_positions)].mean(dim=1)
            prior = resize(normalise01(probs.reshape(h >> level, w >> level)), s.mask.shape).numpy()
            short = name.replace(".transformer_blocks.0.attn2", "").replace("attentions.", "attn")
            hits.setdefault(short, []).append(prior_choice(prior, s.masks) == s.index)
    return {name: round(100.0 * float(np.mean(h)), 1) for name, h in hits.items()}


def figure(segmenter, samples: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(samples), 5, figsize=(7.5, 1.6 * len(samples)))
    for row, s in zip(axes, samples):
        segmenter.set_image(s.image)
        r = segmenter.segment(s.expression)
        for ax, (title, data) in zip(row, [("image", s.image), ("prior P", r.prior), ("score S", r.scores),
                                           ("mask", r.mask), ("truth", s.mask)]):
            ax.imshow(data, cmap=None if data.ndim == 3 else "magma", vmin=0, vmax=1 if data.ndim == 2 else None)
            ax.set_xticks([]), ax.set_yticks([])
            if row is axes[0]:
                ax.set_title(title, fontsize=8)
        row[0].set_ylabel(s.expression, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: dict, columns=("editseg", "prior-only", "whole-image", "centre", "random object")) -> str:
    """Markdown: one row per expression kind, mIoU / P@0.5 per method."""
    lines = ["| kind | " + " | ".join(f"{c} mIoU / P@0.5" for c in columns) + " | prior object acc. | chance |",
             "|---" * (len(columns) + 3) + "|"]
    for kind in list(KINDS) + ["all"]:
        cells = [f"{rows[c][kind]['mIoU']:.1f} / {rows[c][kind]['precision']['0.5']:.0f}" for c in columns]
        lines.append(f"| {kind} | " + " | ".join(cells) +
                     f" | {rows['object accuracy'][kind]:.0f} % | {rows['chance'][kind]:.0f} % |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "benchmarks" / "shapes_world" / "checkpoint"))
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--sweep-scenes", type=int, default=200)
    parser.add_argument("--edit-scenes", type=int, default=48)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "shapes_world" / "results.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "shapes-world.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    segmenter = EditSegmenter.from_pretrained(args.model, device="cpu")
    test = held_out(args.scenes, TEST_SEEDS)
    results: dict = {"model": args.model, "scenes": args.scenes,
                     "settings": {k: list(v) if isinstance(v, tuple) else v
                                  for k, v in segmenter.resolve_settings().to_dict().items()}}
    results["main"] = score_scenes(segmenter, test)
    print(table(results["main"]))
    results["timesteps"] = {}
    for t in TIMESTEPS:
        report = score_scenes(segmenter, test, methods=("editseg", "prior-only"), **({} if t == "auto" else
                                                                                    {"timestep": t}))
        results["timesteps"][str(t)] = {"editseg": headline(report, "editseg")["all"],
                                        "prior-only": headline(report, "prior-only")["all"],
                                        "object accuracy": round(report["object accuracy"]["all"], 1)}
        print("timestep", t, results["timesteps"][str(t)])
    results["layers"] = {str(t): layer_accuracy(segmenter, test[:200], t) for t in ("auto", 500)}
    print("layers", results["layers"])
    tune = held_out(args.sweep_scenes, TUNE_SEEDS)
    base = score_scenes(segmenter, tune, methods=("editseg",))
    results["sweep"] = {"defaults": headline(base, "editseg")["all"] | {
        "object accuracy": round(base["object accuracy"]["all"], 1)}}
    for name, values in SWEEP.items():
        for value in values:
            report = score_scenes(segmenter, tune, methods=("editseg",), **{name: value})
            results["sweep"][f"{name}={value}"] = headline(report, "editseg")["all"] | {
                "object accuracy": round(report["object accuracy"]["all"], 1)}
            print("sweep", name, value, results["sweep"][f"{name}={value}"])
    results["edits"] = edits_really(args.model, held_out(args.edit_scenes, TEST_SEEDS + 50_000))
    print("edits", results["edits"])
    figure(segmenter, held_out(8, TEST_SEEDS + 90_000), Path(args.doc).parent / "images" / "shapes-world.png")
    results["wall_time_s"] = time.perf_counter() - start
    Path(args.json).write_text(json.dumps(results, indent=1))
    write_doc(Path(args.doc), results)
    return results


def write_doc(doc: Path, r: dict) -> None:
    e = r["edits"]
    steps = "\n".join(f"| {t} | {v['editseg']['mIoU']:.1f} | {v['editseg']['P@0.5']:.0f} | "
                      f"{v['prior-only']['mIoU']:.1f} | {v['object accuracy']:.0f} % |"
                      for t, v in r["timesteps"].items())
    sweep = "\n".join(f"| {k} | {v['mIoU']:.1f} | {v['oIoU']:.1f} | {v['P@0.5']:.0f} | {v['object accuracy']:.0f} % |"
                      for k, v in r["sweep"].items())
    section = f"""<!-- measured:shapes:start -->
Measured {time.strftime('%Y-%m-%d')} by `benchmarks/shapes_world/evaluate.py` on the shipped checkpoint, CPU,
{r['scenes']} held-out scenes (kinds balanced), default settings resolved to
`prior_resolutions={tuple(r['settings']['prior_resolutions'])}`,
`affinity_resolution={r['settings']['affinity_resolution']}`, `feature_blocks={tuple(r['settings']['feature_blocks'])}`, `work_resolution={r['settings']['work_resolution']}`.

**Main result** (mIoU / Prec@0.5, in %):

{table(r['main'])}

**Does the model edit?** Full diffusers pipeline, {e['steps']} steps, default guidance, {e['scenes']} scenes;
mean absolute error to the target edit in grey levels: inside the named object {e['error_inside_edit']:.1f}
(doing nothing: {e['error_inside_doing_nothing']:.1f}); outside it {e['error_outside_edit']:.1f}
(doing nothing: {e['error_outside_doing_nothing']:.1f}).

**Timestep of the one forward** (same scenes):

| timestep | editseg mIoU | editseg P@0.5 | prior-only mIoU | prior object acc. |
|---|---|---|---|---|
{steps}

**Where are the words grounded?** Object accuracy of each cross-attention layer's
expression-token map alone (200 scenes; chance {r['main']['chance']['all']:.0f} %):

| layer | {' | '.join(r['layers']['auto'])} |
|---|{'---|' * len(r['layers']['auto'])}
| earliest timestep | {' | '.join(f"{v:.0f}" for v in r['layers']['auto'].values())} |
| timestep 500 | {' | '.join(f"{v:.0f}" for v in r['layers']['500'].values())} |

**Settings sweep** (one at a time, {r['sweep']['defaults'] and 'on separate tuning scenes'}):

| setting | mIoU | oIoU | P@0.5 | prior object acc. |
|---|---|---|---|---|
{sweep}

![examples](images/shapes-world.png)
<!-- measured:shapes:end -->"""
    replace_section(doc, "shapes", section)


if __name__ == "__main__":
    main()
