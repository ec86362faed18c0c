"""Probes of a model trained on the shapes world: does it edit the named object, does one
forward know where, do the captured maps show it, and how does the method score.

Study code (used by ``evaluate.py`` and by the tests), on the public API: ``EditSegmenter``,
its ``forward`` / ``segment`` / ``refine``, ``Segmentation``, and diffusers' pipeline.
Works on both worlds: a scene needs ``image``, ``expression``, ``instruction``, ``mask``,
``masks``, ``index`` and ``kind``.
"""

from __future__ import annotations

import numpy as np

METHODS = ("editseg", "prior-only", "whole-image", "centre", "random object")


def prior_choice(prior: np.ndarray, masks: list) -> int:
    """The object on which the prior lies most: highest mean prior inside it."""
    return int(np.argmax([prior[m].mean() for m in masks]))


def score_scenes(segmenter, samples: list, methods=METHODS, **overrides) -> dict:
    """mIoU / oIoU / Prec@X per method and expression kind, and the prior's object accuracy.

    ``random object`` is the reference a method must beat to show it reads the sentence:
    the IoU of an object of the scene picked at random (seeded).
    """
    from napari_editseg.eval.metrics import score_sample, summarise
    from napari_editseg.eval.run import centre_ellipse

    rng = np.random.default_rng(0)
    scores: dict = {m: {} for m in methods}
    hits: dict = {}
    for i, sample in enumerate(samples):
        segmenter.set_image(sample.image)
        result = segmenter.segment(sample.expression, **overrides)
        size = sample.mask.shape
        predictions = {
            "editseg": result.mask,
            "prior-only": result.prior >= result.settings.mask_threshold,
            "whole-image": np.ones(size, bool),
            "centre": centre_ellipse(*size),
            "random object": sample.masks[int(rng.integers(len(sample.masks)))],
        }
        for method in methods:
            scores[method].setdefault(sample.kind, []).append(score_sample(str(i), predictions[method], sample.mask))
        hits.setdefault(sample.kind, []).append(prior_choice(result.prior, sample.masks) == sample.index)
    report: dict = {}
    for method in methods:
        per_kind = {kind: summarise(s) for kind, s in scores[method].items()}
        per_kind["all"] = summarise([x for s in scores[method].values() for x in s])
        report[method] = per_kind
    report["object accuracy"] = {kind: 100.0 * float(np.mean(h)) for kind, h in hits.items()}
    report["object accuracy"]["all"] = 100.0 * float(np.mean([x for h in hits.values() for x in h]))
    report["chance"] = {kind: 100.0 * float(np.mean([1 / len(s.masks) for s in samples if s.kind == kind]))
                        for kind in {s.kind for s in samples}}
    report["chance"]["all"] = 100.0 * float(np.mean([1 / len(s.masks) for s in samples]))
    return report


# -- probes of a trained model (torch; used by the benchmark and the tests) ---------------
def load_pipeline(model_dir: str):
    """The checkpoint as diffusers' InstructPix2Pix pipeline, fp32 on the CPU: the parts that
    ``EditSegmenter.from_pretrained`` loads, put together."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from napari_editseg import EditSegmenter

    m = EditSegmenter.from_pretrained(model_dir, device="cpu").model
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet, scheduler=m.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def full_edit(pipe, sample, seed: int, steps: int = 20) -> np.ndarray:
    """The pipeline's edit of ``sample`` (``steps`` steps, noise seeded by ``seed``), H×W×3 in 0-255."""
    import torch
    from PIL import Image

    with torch.inference_mode():
        out = pipe(sample.instruction, image=Image.fromarray(sample.image), num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
    return (out * 255).astype(np.float32)


def edited_object(pipe, sample, seed: int, steps: int = 20) -> int:
    """The object the pipeline's edit changes most (mean |edit − source|): the model's own grounding."""
    change = np.abs(full_edit(pipe, sample, seed, steps) - sample.image.astype(np.float32)).mean(axis=2)
    return prior_choice(change, sample.masks)


def edit_errors(pipe, samples: list, steps: int = 20) -> dict:
    """Does the model edit? Full-pipeline edits scored against the targets.

    Mean |edit − target| inside and outside the named object, against the same errors of
    doing nothing (returning the input), in 0-255 grey levels; and how often the object the
    edit changed most (mean |edit − source|) is the named one: the model's own grounding.
    """

    rows = []
    for i, s in enumerate(samples):
        edit = full_edit(pipe, s, i, steps)
        target, source = s.target.astype(np.float32), s.image.astype(np.float32)
        change = np.abs(edit - source).mean(axis=2)
        rows.append([np.abs(edit - target)[s.mask].mean(), np.abs(source - target)[s.mask].mean(),
                     np.abs(edit - target)[~s.mask].mean(), np.abs(source - target)[~s.mask].mean(),
                     100.0 * (prior_choice(change, s.masks) == s.index), 100.0 / len(s.masks)])
    inside, nothing_inside, outside, nothing_outside, accuracy, chance = np.mean(rows, axis=0)
    return {"scenes": len(samples), "steps": steps, "error_inside_edit": float(inside),
            "error_inside_doing_nothing": float(nothing_inside), "error_outside_edit": float(outside),
            "error_outside_doing_nothing": float(nothing_outside),
            "edited_object_accuracy": float(accuracy), "chance": float(chance)}


def text_effect_accuracy(pipe, samples: list, timesteps=("first", 750, 500, 250)) -> dict:
    """Does ONE forward already know where the edit goes, independently of any attention map?

    The text's effect on the noise prediction, |ε(instruction) − ε(no text)| (same noise, same
    image), is averaged per object; returns per timestep how often (%) the named object gets
    the most. "first" is what the pipeline's first step sees: pure noise.
    """
    import torch
    import torch.nn.functional as F

    alphas = pipe.scheduler.alphas_cumprod
    hits: dict = {str(t): [] for t in timesteps}
    for i, s in enumerate(samples):
        with torch.inference_mode():
            image = torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 127.5 - 1
            source = pipe.vae.encode(image).latent_dist.mode()
            tokens = pipe.tokenizer([s.instruction, ""], padding="max_length", return_tensors="pt",
                                    max_length=pipe.tokenizer.model_max_length).input_ids
            text = pipe.text_encoder(tokens)[0]
            noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(i))
            for t in timesteps:
                if t == "first":
                    latents, step = noise, pipe.scheduler.config.num_train_timesteps - 1
                else:
                    clean = source * pipe.vae.config.scaling_factor
                    latents, step = alphas[t].sqrt() * clean + (1 - alphas[t]).sqrt() * noise, t
                eps = pipe.unet(torch.cat([latents, source], 1).repeat(2, 1, 1, 1), step, text).sample
                effect = F.interpolate((eps[0] - eps[1]).abs().mean(0)[None, None], size=s.mask.shape,
                                       mode="bilinear")[0, 0].numpy()
                hits[str(t)].append(prior_choice(effect, s.masks) == s.index)
    return {t: 100.0 * float(np.mean(h)) for t, h in hits.items()}


def layer_accuracy(segmenter, samples: list, columns: str = "expression", **overrides) -> dict:
    """Object accuracy (%) of each cross-attention layer's expression-token map alone: where
    in the UNet, if anywhere, the words are grounded. ``columns="start"`` reads the
    start-of-text token instead, whose embedding (causal text encoder) is the same for every
    sentence: what that map gets right is image salience."""
    import torch

    from napari_editseg.core.prior import expression_attention

    hits: dict = {}
    for s in samples:
        segmenter.set_image(s.image)
        with torch.inference_mode():
            f = segmenter.forward([s.expression], prior_resolutions=every_cross_side(segmenter), **overrides)
        maps = f.maps(0)
        tokens = maps.instruction.token_positions if columns == "expression" else (0,)
        for name, probs, grid in zip(maps.cross_layers, maps.cross, maps.cross_grids):
            prior = expression_attention([probs], [grid], tokens, "mean", s.mask.shape).numpy()
            hits.setdefault(short_name(name), []).append(prior_choice(prior, s.masks) == s.index)
    return {name: 100.0 * float(np.mean(h)) for name, h in hits.items()}


def every_cross_side(segmenter) -> tuple[int, ...]:
    """``prior_resolutions`` that capture every cross-attention layer of the loaded UNet."""
    return tuple(segmenter.layout.latent_side >> level for level in segmenter.layout.cross_levels)


def short_name(layer: str) -> str:
    """``up_blocks.2.attentions.1.transformer_blocks.0.attn2`` -> ``up_blocks.2.attn1``."""
    return layer.replace(".transformer_blocks.0.attn2", "").replace("attentions.", "attn")


def prior_from_layers(segmenter, samples: list, layers=None, **overrides) -> dict:
    """Would another choice of layers make the method work? Steps 5-7 exactly as the method
    runs them (affinity propagation, prototypes, mask), with the prior built from the given
    cross-attention ``layers`` (short names, as :func:`layer_accuracy` reports them), or from
    the ground truth when ``layers`` is None; ``overrides`` are settings of the segmentation.
    Returns mIoU, Prec@0.5, object accuracy (%) and the mean boundary F-score (2 px)."""
    import torch

    from napari_editseg.core.image import resize
    from napari_editseg.core.mask import to_image_size
    from napari_editseg.core.prior import attention_prior
    from napari_editseg.eval.metrics import boundary_f_score, score_sample, summarise

    scores, hits, boundaries = [], [], []
    for i, s in enumerate(samples):
        segmenter.set_image(s.image)
        base = segmenter.segment(s.expression, **overrides)
        work_grid = tuple(base.prior_work.shape)
        if layers is None:
            prior = resize(torch.from_numpy(s.mask.astype(np.float32)), work_grid)
        else:
            with torch.inference_mode():
                f = segmenter.forward([s.expression], **overrides, prior_resolutions=every_cross_side(segmenter))
            maps = f.maps(0)
            chosen = [k for k, name in enumerate(maps.cross_layers) if short_name(name) in layers]
            prior = attention_prior(
                [maps.cross[k] for k in chosen], [maps.cross_grids[k] for k in chosen],
                maps.instruction.token_positions, maps.affinity, maps.affinity_grid, work_grid,
                base.settings.token_reduce, base.settings.propagation_steps)
        result = segmenter.refine(base, prior=prior)
        scores.append(score_sample(str(i), result.mask, s.mask))
        boundaries.append(boundary_f_score(result.mask, s.mask))
        hits.append(prior_choice(to_image_size(prior, s.mask.shape), s.masks) == s.index)
    summary = summarise(scores)
    return {"mIoU": summary["mIoU"], "P@0.5": summary["precision"]["0.5"],
            "object accuracy": 100.0 * float(np.mean(hits)), "boundary F": float(np.mean(boundaries))}


def drawing_accuracy(pipe, n: int = 48, steps: int = 20, seed: int = 0) -> dict:
    """Does a text-to-image model draw what its caption says? ``n`` one-object captions
    ("a red circle"), one picture each; the drawn object is the set of pixels far from grey
    (saturation > 0.25), its colour the palette colour nearest their median, its shape the
    template (each shape at the same centre and area) that overlaps it best. Returns the
    share (%) of pictures whose colour, shape, and both are right, against chance."""
    import torch

    from benchmarks.shapes_world.world_v2 import COLOURS, SHAPES, SIZE, Object, shape_mask

    rng = np.random.default_rng(seed)
    names, palette = list(COLOURS), np.array(list(COLOURS.values()))
    hits = {"colour": [], "shape": [], "both": []}
    for i in range(n):
        colour, shape = names[int(rng.integers(len(names)))], SHAPES[int(rng.integers(len(SHAPES)))]
        with torch.inference_mode():
            image = pipe(f"a {colour} {shape}", num_inference_steps=steps, output_type="np",
                         generator=torch.Generator().manual_seed(seed + i)).images[0]
        saturation = image.max(axis=2) - image.min(axis=2)
        drawn = saturation > 0.25
        if drawn.sum() < 20:
            for key in hits:
                hits[key].append(False)
            continue
        got_colour = names[int(np.argmin(np.abs(palette - np.median(image[drawn], axis=0)).sum(axis=1)))]
        rows, cols = np.nonzero(drawn)
        radius = float(np.sqrt(drawn.sum() / np.pi))
        overlaps = []
        for candidate in SHAPES:
            template = shape_mask(Object(candidate, colour, "plain", rows.mean(), cols.mean(), radius), SIZE)
            scale = np.sqrt(drawn.sum() / max(template.sum(), 1))  # same area as what was drawn
            template = shape_mask(Object(candidate, colour, "plain", rows.mean(), cols.mean(), radius * scale), SIZE)
            overlaps.append((drawn & template).sum() / (drawn | template).sum())
        got_shape = SHAPES[int(np.argmax(overlaps))]
        hits["colour"].append(got_colour == colour)
        hits["shape"].append(got_shape == shape)
        hits["both"].append(got_colour == colour and got_shape == shape)
    report = {key: 100.0 * float(np.mean(v)) for key, v in hits.items()}
    report["chance, both"] = 100.0 / (len(names) * len(SHAPES))
    return report
