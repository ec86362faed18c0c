#!/usr/bin/env python
"""Mutation check of ``src/napari_editseg/``: does the test suite notice a broken method or a broken guard?

Each mutant below is one small edit a careless change could make (a setting dropped on its
way to its stage, a comparison flipped, a step skipped, a check removed). For each, the package
is copied to a temporary folder, the edit applied there (the working tree is never touched),
and the tests run against the copy (``PYTHONPATH`` puts it first, subprocesses included). A
mutant is *killed* when a test fails. Prints one line per mutant and the kill rate per part of
the package; ``--json`` saves them.

    OMP_NUM_THREADS=1 nice .venv/bin/python tools/mutate.py [--only NAME ...] [--files PREFIX ...] [--json out.json]

``core/`` mutants run the core test files (``DEFAULT_TESTS``); the others run the test files
of their module (``TESTS_FOR``), most targeted first, so a run stays affordable on two cores.
``--files batch.py record.py`` runs only the mutants of those files (prefixes of their paths).
The widget's tests skip without an X display: run the tool under ``xvfb-run -a`` (as ``tools/run-tests``
does) when mutants of ``_widget.py``, ``_layers.py`` or ``_runstate.py`` are to meet them.

Every mutant's original text must occur exactly once in its file, so the list goes stale
loudly (the mutant is reported as ``stale``) rather than silently when the code changes.

Left out as equivalent (tried: they cannot change a result, so no test can kill them):
dropping empty k-means clusters (scipy's ``kmeans`` already drops them), Otsu's special case
for a constant prior (scikit-image returns the constant itself), clipping resized maps to
[0, 1] (bilinear and antialiased resizing are convex combinations).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_editseg"
# the widget's tests are Qt's business; the fault tests re-run whole processes (the file writers
# they check are not in core/)
DEFAULT_TESTS = ["tests/test_settings.py", "tests/test_stages.py", "tests/test_stage_functions.py",
                 "tests/test_relevance_cache.py", "tests/test_expected_slices.py", "tests/test_grounding.py",
                 "tests/test_delineation.py", "tests/test_setting_effects.py", "tests/test_segmenter.py",
                 "tests/test_reliability.py", "tests/test_model.py", "tests/test_cli.py", "tests/test_eval.py",
                 "tests/test_batch.py", "tests/test_shapes_world.py", "tests/test_backbones.py",
                 "tests/test_backbone_sdxl.py", "tests/test_backbone_flux.py"]

# (name, file under the package, original text, mutated text)
MUTANTS = [
    # -- the four of issue 17: settings dropped on the way to their stage ------------------------------
    ("token_reduce fixed", "core/stages.py", "i.token_positions, settings.token_reduce,",
     'i.token_positions, "mean",'),
    ("propagation_steps fixed", "core/stages.py", "maps.affinity_grid, settings.propagation_steps,",
     "maps.affinity_grid, 2,"),
    ("keep and fill_holes dropped", "core/stages.py",
     "make_mask(scores, prior_image, settings.mask_threshold, keep, settings.fill_holes)",
     "make_mask(scores, prior_image, settings.mask_threshold)"),
    ("bg_prototypes fixed to 1", "core/prompts.py", "settings.bg_quantile, settings.bg_prototypes, settings.seed,",
     "settings.bg_quantile, 1, settings.seed,"),
    ("first noise draw, not the mean", "core/forward.py",
     "t.reshape(n, samples, *t.shape[1:]).mean(dim=1)",
     "t.reshape(n, samples, *t.shape[1:])[:, 0]"),
    # -- segmenter ------------------------------------------------------------------------------
    ("temperature fixed", "core/stages.py", "score(features, fg, bg, settings.temperature)",
     "score(features, fg, bg, 10.0)"),
    ("fg_select fixed", "core/prompts.py", "settings.bg_prototypes, settings.seed, settings.fg_select,",
     'settings.bg_prototypes, settings.seed, "quantile",'),
    ("edge_radius fixed", "core/stages.py", "cell, settings.edge_radius, settings.edge_eps)",
     "cell, 2.0, settings.edge_eps)"),
    ("edge_eps fixed", "core/stages.py", "cell, settings.edge_radius, settings.edge_eps)",
     "cell, settings.edge_radius, 1e-3)"),
    ("token_norm fixed", "core/stages.py", "i.word_positions, settings.token_norm,",
     'i.word_positions, "none",'),
    ("token_scale fixed", "core/stages.py", "settings.token_norm, settings.token_scale)",
     "settings.token_norm, 100.0)"),
    ("noise not scaled by init sigma", "core/backbones/instruct_pix2pix.py",
     "latents = noise * scheduler.init_noise_sigma", "latents = noise"),
    ("model input not scaled", "core/backbones/instruct_pix2pix.py",
     "latents = scheduler.scale_model_input(latents, t)\n", "\n"),
    ("early exit never", "core/forward.py",
     "noise, store = _denoise(model, settings, plan, texts, early_exit and not whole,",
     "noise, store = _denoise(model, settings, plan, texts, False,"),
    ("memory guard skipped", "core/segmenter.py",
     "        check_memory(needs, self.device, host)\n", ""),
    ("no lock", "core/segmenter.py", "        with self.model.lock:\n            return method(self, *args, **kwargs)",
     "        return method(self, *args, **kwargs)"),
    ("image latents never cached", "core/segmenter.py", "        if size not in self._latents:\n            start",
     "        if True:\n            start"),
    ("relevance baseline always empty", "core/forward.py",
     "return baseline_text(settings.instruction_template, settings.relevance_baseline)",
     'return baseline_text(settings.instruction_template, "empty")'),
    ("confidence constant", "core/stages.py", "        confidence = peak_dominance(p0) if maps.decoy_rank is None",
     "        confidence = 1.0 if maps.decoy_rank is None"),
    ("refine clicks dropped", "core/stages.py",
     "fg = torch.cat([fg, features_at(features, to_grid(positive, shape, grid))])", "fg = fg"),
    ("relevance baseline never kept", "core/segmenter.py", "else self.baselines.get(self._latents[size], key)",
     "else None"),
    ("kept baseline ignores the settings", "core/segmenter.py",
     "key = (baseline, plan, tuple(getattr(settings, name) for name in FORWARD_SETTINGS if name != \"decoys\"))",
     "key = ()"),
    ("supplied prior ignored", "core/stages.py", "    if prior is None:\n        p0 = ",
     "    if True:\n        p0 = "),
    ("refine ignores earlier clicks", "core/segmenter.py",
     'tuple(segmentation.positive) + _points("positive", positive)', '_points("positive", positive)'),
    # -- settings -------------------------------------------------------------------------------
    ("quantiles may overlap", "core/settings.py", "lambda s: s.fg_quantile > s.bg_quantile",
     "lambda s: s.fg_quantile >= s.bg_quantile"),
    ("exclusive minimum inclusive", "core/settings.py",
     "value <= self.minimum if self.above else value < self.minimum", "value < self.minimum"),
    ("non-finite numbers accepted", "core/settings.py", "if not integer and not math.isfinite(value):",
     "if False:"),
    ("numpy scalars not converted", "core/settings.py", "            value = value.item()\n",
     "            pass\n"),
    ("refine may change forward settings", "core/settings.py", "if spec.stage == DISCRIMINATE)",
     "if spec.stage != FORWARD or True)"),
    # -- prior, relevance -------------------------------------------------------------------------
    ("token reduction swapped", "core/prior.py", 'if token_reduce == "mean" else', 'if token_reduce != "mean" else'),
    ("no propagation", "core/prior.py", "        p = affinity @ p\n", "        p = p\n"),
    ("fused without the square root", "core/prior.py",
     "(normalise01(attention) * normalise01(relevance)).sqrt()", "(normalise01(attention) * normalise01(relevance))"),
    ("peak dominance inverted", "core/prior.py", "1.0 - heights[1] / heights[0]", "heights[1] / heights[0]"),
    ("softmax without the scale", "core/prior.py", "(probs[:, words].float() * token_scale)",
     "(probs[:, words].float())"),
    ("contrast not subtracted", "core/prior.py", "(reduced - normalise01(probs[:, template].mean(dim=1)))",
     "(reduced)"),
    ("relevance clip looser", "core/relevance.py", "q3 + 1.5 * (q3 - q1)", "q3 + 3.0 * (q3 - q1)"),
    ("relevance signed", "core/relevance.py", "(with_text.float() - without_text.float()).abs()",
     "(with_text.float() - without_text.float())"),
    # -- discriminate, edges, mask --------------------------------------------------------------
    ("features not renormalised", "core/discriminate.py", "return F.normalize(torch.cat(parts, dim=0), dim=0)",
     "return torch.cat(parts, dim=0)"),
    ("foreground quantile strict", "core/discriminate.py", "chosen = p >= torch.quantile(p, fg_quantile)",
     "chosen = p > torch.quantile(p, fg_quantile)"),
    ("rivals not background", "core/discriminate.py", "in_background = (p <= bg_limit) | rivals",
     "in_background = (p <= bg_limit)"),
    ("scores inverted", "core/discriminate.py", "temperature * (s_fg - s_bg)", "temperature * (s_bg - s_fg)"),
    ("clicks rounded", "core/discriminate.py",
     "cells.append((int(row * grid[0] / image_shape[0]), int(col * grid[1] / image_shape[1])))",
     "cells.append((round(row * grid[0] / image_shape[0]) % grid[0],\n"
     "              round(col * grid[1] / image_shape[1]) % grid[1]))"),
    ("guided radius in cells ignored", "core/edges.py", "max(1.0, radius * cell)", "max(1.0, radius)"),
    ("box mean counts padding", "core/edges.py", "count_include_pad=False", "count_include_pad=True"),
    ("mask strict", "core/mask.py", "mask = scores >= threshold", "mask = scores > threshold"),
    ("peak outside the mask not moved", "core/mask.py",
     "        if not mask[peak]:\n", "        if False:\n"),
    # -- image, capture, layout, instruction, model, budget ---------------------------------------
    ("integers by their dtype's range", "core/image.py", "    bits = max(8, high.bit_length())\n",
     "    bits = info.bits - (info.min < 0)\n"),
    ("floats in [0, 1] rescaled", "core/image.py", "if low < 0.0 or high > 1.0:", "if True:"),
    ("aspect ignored", "core/image.py", "    if not keep_aspect:\n", "    if True:\n"),
    ("no antialiasing", "core/image.py", "antialias=shrinking)", "antialias=False)"),
    ("first head only", "core/backbones/unet.py", "self.store.cross[self.name] = probs.mean(dim=1)",
     "self.store.cross[self.name] = probs[:, 0]"),
    ("processors not restored", "core/backbones/unet.py", "        unet.set_attn_processor(dict(original))\n",
     "        pass\n"),
    ("self-attention summed, not averaged", "core/backbones/unet.py", "self.store.add_self(summed / heads)",
     "self.store.add_self(summed)"),
    ("auto prior at one side", "core/backbones/unet.py", "for level in (2, 1) if level in self.cross_levels",
     "for level in (1,) if level in self.cross_levels"),
    ("decoder filter ignored", "core/backbones/unet.py",
     'and (settings.prior_layers == "all" or a.name.startswith("up_blocks."))]', "]"),
    ("expression not lower-cased", "core/instruction.py", '.strip().lower()', ".strip()"),
    ("positions past truncation kept", "core/instruction.py", "if p < last_content)", ")"),
    ("pickle weights by default", "core/model.py", "use_safetensors=None if allow_pickle else True",
     "use_safetensors=None"),
    ("any model accepted", "core/backbones/base.py", "        self.check()\n", ""),
    ("meta device accepted", "core/model.py", 'chosen.type not in ("cpu", "cuda", "mps")',
     'chosen.type not in ("cpu", "cuda", "mps", "meta")'),
    ("affinity estimate linear", "core/backbones/unet.py", "Need(2 * rows * affinity_n**2 * 4",
     "Need(2 * rows * affinity_n * 4"),
    # -- backbones ------------------------------------------------------------------------------
    ("SDXL pooled embedding dropped", "core/backbones/sdxl_instruct_pix2pix.py",
     '{"text_embeds": text["text_embeds"],', '{"text_embeds": torch.zeros_like(text["text_embeds"]),'),
    ("SDXL time ids transposed", "core/backbones/sdxl_instruct_pix2pix.py",
     "tuple(size), (0, 0), tuple(size),", "tuple(size)[::-1], (0, 0), tuple(size)[::-1],"),
    ("CosXL latents unscaled", "core/backbones/sdxl_instruct_pix2pix.py",
     "return latents * self.vae.config.scaling_factor if self.cosxl else latents", "return latents"),
    ("joint image_tokens ignored", "core/backbones/joint_attention.py",
     'start = 0 if self.read == "target" else self.target', "start = self.target"),
    ("joint affinity not renormalised", "core/backbones/joint_attention.py",
     "part = (same / same.sum(dim=-1, keepdim=True)).sum(dim=1)", "part = same.sum(dim=1)"),
    ("joint attention_blocks ignored", "core/backbones/joint_attention.py",
     "attention = self.auto_attention_blocks() if settings.attention_blocks == AUTO else settings.attention_blocks",
     "attention = self.auto_attention_blocks()"),
    ("Kontext reference ids on the target's plane", "core/backbones/flux_kontext.py",
     "reference_ids[..., 0] = 1", "reference_ids[..., 0] = 0"),
    ("Kontext guidance not embedded", "core/backbones/flux_kontext.py",
     "torch.full([batch], GUIDANCE_SCALE,", "torch.full([batch], 1.0,"),
    ("registry ignores the class", "core/model.py", "family = backbone_for(pipeline_class_of(model, offline))",
     'family = backbone_for("StableDiffusionInstructPix2PixPipeline")'),
]
# -- outside core/: files, reading, batch, records, replay, hub, eval, CLI, the widget's state ---------------
# (issue 26's five hand mutants that survived the whole suite are marked "issue 26")
EXTRA = [
    ("batch writes no labels", "batch.py",
     "        write_labels(job.output, stack_labels([r.mask for r in results], job.values()), job.description())\n",
     "        pass\n"),
    # files.py: outputs checked before any work; atomic writes
    ("output linked to an input accepted (issue 26)", "files.py",
     "if key in by_key or _identity(path) in by_file:", "if key in by_key:"),
    ("outputs may share a name", "files.py", "        if key in seen:\n", "        if False:\n"),
    ("a folder accepted as an output", "files.py", "        if path.is_dir():\n", "        if False:\n"),
    ("an unwritable folder accepted", "files.py", "        if not writable[folder]:\n", "        if False:\n"),
    ("too long a name accepted", "files.py", "if len(path.name.encode()) > NAME_MAX:", "if False:"),
    ("temporary names not shortened", "files.py", 'name = path.name.encode()[:room].decode(errors="ignore")',
     "name = path.name"),
    ("names not case-folded", "files.py", "str(path.parent.resolve() / path.name)).casefold()",
     "str(path.parent.resolve() / path.name))"),
    ("PNG labels not narrowed", "files.py", "    if labels.dtype == bool or labels.dtype in PNG_LABEL_DTYPES:\n",
     "    if True:\n"),
    ("control characters echoed", "files.py", "c if c.isprintable() else repr(c)[1:-1]", "c"),
    ("partials never removed", "files.py", "    for leftover in leftovers:\n        Path(leftover).unlink",
     "    for leftover in []:\n        Path(leftover).unlink"),
    # image_files.py: planes vs channels, limits before decoding
    ("planar samples read as colour", "image_files.py", 'colour = "S" if axes.endswith("S") else',
     'colour = "S" if "S" in axes else'),
    ("ImageJ/OME channels ignored", "image_files.py",
     '("C" if "C" in axes and (tif.is_imagej or tif.is_ome) else "")', '""'),
    ("alpha kept", "image_files.py", "picture[..., 0] if count < 3 else picture[..., :3]",
     "picture[..., 0] if count < 3 else picture"),
    ("grey+alpha refused", "image_files.py", "count in (1, 2, 3, 4)", "count in (1, 3, 4)"),
    ("frames not planes", "image_files.py", "    if frames > 1:\n", "    if False:\n"),
    ("whole-file budget counts one plane", "image_files.py",
     "    _check_budget(path, layout, layout.planes, max_pixels)\n    try:",
     "    _check_budget(path, layout, 1, max_pixels)\n    try:"),
    ("the whole series decoded for one plane", "image_files.py",
     "if layout.axes.endswith(inside) and len(pages)", "if False and len(pages)"),
    ("a stack read without --plane", "image_files.py", "        if layout.planes > 1:\n            sizes",
     "        if False:\n            sizes"),
    ("a plane outside the stack accepted", "image_files.py",
     "if len(plane) != len(axes) or any(not 0 <= i < n for i, (_, n) in zip(plane, axes)):",
     "if len(plane) != len(axes):"),
    ("negative indices accepted", "image_files.py", "if not values or any(v < 0 for v in values):",
     "if not values:"),
    # batch.py
    ("labels wrap at 256 (issue 26)", "batch.py", "np.uint8 if top <= 0xFF", "np.uint8 if top <= 0x100"),
    ("labels wrap at 65536", "batch.py", "np.uint16 if top <= 0xFFFF", "np.uint16 if top <= 0x10000"),
    ("a one-expression PNG labelled 1, not 255", "batch.py", "            return [255]\n",
     "            return [1]\n"),
    ("the job's label values ignored", "batch.py", "stack_labels([r.mask for r in results], job.values())",
     "stack_labels([r.mask for r in results])"),
    ("made_by unchecked (issue 26)", "batch.py", 'if not made or made.get("made_by") != MADE_BY:', "if not made:"),
    ("other expressions count as done", "batch.py", 'return "done" if made.get("labels") == job.labels() else',
     'return "done" if True else'),
    ("earlier labels overwritten", "batch.py", "labels[mask & (labels == 0)] = value", "labels[mask] = value"),
    ("a read failure aborts the batch", "batch.py", "            if isinstance(image, Exception):\n",
     "            if isinstance(image, ValueError):\n"),
    ("a write failure aborts the batch", "batch.py", "    except OSError as error:\n        return error\n",
     "    except ValueError as error:\n        return error\n"),
    ("a segmenter error other than ValueError aborts the batch", "batch.py",
     "                                 errors=(Exception,))", "                                 errors=(ValueError,))"),
    ("the report may replace the CSV", "batch.py",
     ' + [("the report", path) for path in reports],', ","),
    # _prefetch.py
    ("a bad image fails its whole chunk", "_prefetch.py", "        except errors:\n            pass\n",
     "        except errors:\n            raise\n"),
    ("a reading error escapes the prefetch", "_prefetch.py", "[future.exception() or future.result()",
     "[future.result()"),
    # record.py: the schema
    ("record label bounds unchecked", "record.py",
     "if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:",
     "if isinstance(value, bool) or not isinstance(value, int):"),
    ("record numbers may be infinite", "record.py",
     "not isinstance(value, (int, float)) or not math.isfinite(value):", "not isinstance(value, (int, float)):"),
    ("record slice index not checked against the image", "record.py",
     "if len(index) != planes or any(i >= side for i, side in zip(index, shape)):", "if False:"),
    ("deep nesting a traceback", "record.py", "    except RecursionError:\n", "    except ZeroDivisionError:\n"),
    ("record file size unchecked", "record.py", "if path.stat().st_size > MAX_FILE_BYTES:", "if False:"),
    ("record format unchecked", "record.py", 'if content.get("format") != FORMAT:', "if False:"),
    ("record settings not validated", "record.py", "        SegmentationSettings().replace(**value)\n",
     "        pass\n"),
    ("sidecar records not checked", "record.py", "records.append(check_record(record))", "records.append(record)"),
    ("export sidecar not atomic", "record.py", "    write_json(sidecar, {",
     "    (lambda path, data: path.write_text(json.dumps(data)))(sidecar, {"),
    # replay.py, planes.py, prompt.py, hub.py
    ("a record may reach the hub", "replay.py", "local_files_only=True if model is None else None",
     "local_files_only=None"),
    ("the recorded model not checked", "replay.py",
     '    check_identity(record["model"], model_identity(segmenter.model))\n', ""),
    ("the recorded plane not checked", "replay.py", 'if plane_signature(plane) != entry["plane_sha256"]:', "if False:"),
    ("the record file's shape unchecked", "replay.py", "if shape is not None and tuple(shape) != spatial:",
     "if False:"),
    ("a composite replayed", "replay.py", '        if source.get("composite"):\n', "        if False:\n"),
    ("overwrite ignored on replay", "planes.py", "return mask if overwrite else mask & (",
     "return mask if True else mask & ("),
    ("grey planes not scaled by contrast limits", "planes.py", "(plane.astype(np.float32) - low) / (high - low)",
     "plane.astype(np.float32)"),
    ("word-less points kept in the result", "prompt.py", "    return replace(result, positive=(), negative=())\n",
     "    return result\n"),
    ("hub revision unchecked (issue 26)", "hub.py",
     '("folder_sha256", "the model folder\'s content"), ("revision", "the model\'s hub revision")',
     '("folder_sha256", "the model folder\'s content"),'),
    ("hub lists only the first family", "hub.py",
     "for family in families() for model, title in family.known_models.items()}",
     "for family in families()[:1] for model, title in family.known_models.items()}"),
    ("hub downloads only the first family's parts", "hub.py",
     "for family in families() for part in family.components))",
     "for family in families()[:1] for part in family.components))"),
    ("hub asked without a timeout", "hub.py", "HfApi().model_info(repo_id, timeout=HUB_TIMEOUT)",
     "HfApi().model_info(repo_id)"),
    ("folder content unchecked", "hub.py",
     '("folder_sha256", "the model folder\'s content"), ("revision", "the model\'s hub revision")',
     '("revision", "the model\'s hub revision"),'),
    # core/model.py, as the merge of issues 22 and 23 left it: the unanswered hub in the one line
    ("an unanswered hub said to be offline mode", "core/model.py",
     "raise _load_error(error, model, folder.is_dir(), offline, allow_pickle, unanswered) from None",
     "raise _load_error(error, model, folder.is_dir(), offline, allow_pickle) from None"),
    ("an unanswered hub retried by the loader", "core/model.py",
     "    offline = offline or unanswered  #", "    offline = offline  #"),
    # eval/
    ("annotation size unchecked", "eval/refer.py", "    check_mask_size(height, width)\n    if isinstance",
     "    if isinstance"),
    ("RLE size unchecked", "eval/refer.py", '        check_mask_size(*(list(segmentation["size"]) + [0, 0])[:2])\n',
     "        pass\n"),
    ("bytes(n) allowed in a refs pickle", "eval/refer.py", '"frozenset", "str", "int",',
     '"frozenset", "str", "bytes", "int",'),
    ("refs read by the C unpickler", "eval/refer.py", "class PlainUnpickler(pickle._Unpickler):",
     "class PlainUnpickler(pickle.Unpickler):"),
    ("a report may replace an input", "eval/run.py",
     "    check_outputs(_outputs(out, state.num_processes),\n                  input_files(",
     "    check_outputs(_outputs(out, state.num_processes)) or (\n                  input_files("),
    ("records found by a glob of the name", "eval/run.py", "glob.escape(out.name)", "out.name"),
    ("failed samples never retried", "eval/run.py", "if earlier is None or earlier.failed or not score.failed:",
     "if earlier is None:"),
    ("the data root not part of a run", "eval/run.py",
     '        identity["data_root"] = str(Path(self.data_root).expanduser().resolve())\n', ""),
    ("Prec@X strictness swapped", "eval/metrics.py", "iou > t if strict else iou >= t",
     "iou >= t if strict else iou > t"),
    # cli.py, the out-of-memory line
    ("--check not an input of replay", "cli.py", '+ ([("--check", args.check)] if args.check else [])', ""),
    ("replay output unchecked", "cli.py", '    check_outputs([("-o", output)], inputs)\n', ""),
    ("--plane ignored by segment", "cli.py", "else read_image(source, **picture)", "else read_image(source)"),
    ("out of memory a traceback", "cli.py", "        memory = memory_error_from(error)\n", "        memory = None\n"),
    ("widget's out of memory not the guard's line", "_workers.py", "    error = memory_error_from(error) or error\n",
     ""),
    ("CPU allocator errors not recognised", "core/budget.py",
     '_OUT_OF_MEMORY = re.compile(r"DefaultCPUAllocator: (can\'t allocate memory|not enough memory)|out of memory"',
     '_OUT_OF_MEMORY = re.compile(r"out of memory"'),
    # the widget's state (rewritten in parallel: these go stale loudly if their code moves)
    ("latent cache shared across models (issue 26)", "_runstate.py", "        key = (id(segmenter), signature)\n",
     "        key = signature\n"),
    ("latents never reused", "_runstate.py", "        latents = self._latents.get(key)\n", "        latents = None\n"),
    ("composite ignores opacity", "_layers.py", "* float(layer.opacity)", ""),
    ("labels paint over other labels", "_layers.py", "from .planes import paintable, plane_as_seen",
     "from .planes import plane_as_seen\npaintable = lambda current, mask, label_id, overwrite: mask  # noqa: E731"),
]
TESTS_FOR = {  # file prefix -> test files, most targeted first (the run stops at the first failure)
    "files.py": ["tests/test_image_files.py", "tests/test_records.py", "tests/test_cli.py", "tests/test_batch.py",
                 "tests/test_eval.py"],
    "image_files.py": ["tests/test_image_files.py", "tests/test_batch.py", "tests/test_cli.py",
                       "tests/test_records.py"],
    "batch.py": ["tests/test_batch.py", "tests/test_cli.py"],
    "_prefetch.py": ["tests/test_batch.py", "tests/test_eval.py"],
    "record.py": ["tests/test_records.py", "tests/test_runstate.py"],
    "replay.py": ["tests/test_records.py", "tests/test_runstate.py"],
    "planes.py": ["tests/test_records.py", "tests/test_runstate.py", "tests/test_widget.py"],
    "prompt.py": ["tests/test_records.py", "tests/test_runstate.py", "tests/test_widget.py"],
    "hub.py": ["tests/test_records.py", "tests/test_runstate.py", "tests/test_model.py", "tests/test_offline.py",
               "tests/test_backbones.py"],
    "core/model.py": ["tests/test_model.py", "tests/test_offline.py"] + DEFAULT_TESTS,
    "eval/": ["tests/test_eval.py", "tests/test_faults.py"],
    "cli.py": ["tests/test_records.py", "tests/test_cli.py", "tests/test_image_files.py", "tests/test_reliability.py",
               "tests/test_batch.py", "tests/test_eval.py"],
    "core/budget.py": ["tests/test_reliability.py", "tests/test_cli.py"] + DEFAULT_TESTS,
    "_runstate.py": ["tests/test_reliability.py", "tests/test_runstate.py", "tests/test_widget.py"],
    "_layers.py": ["tests/test_runstate.py", "tests/test_widget.py"],
    "_widget.py": ["tests/test_widget.py"],
    "_workers.py": ["tests/test_reliability.py", "tests/test_offline.py", "tests/test_widget.py"],
}


def tests_for(file: str) -> list[str]:
    """The test files a mutant of ``file`` runs (the longest matching prefix of TESTS_FOR, else DEFAULT_TESTS)."""
    matches = [prefix for prefix in TESTS_FOR if file.startswith(prefix)]
    return TESTS_FOR[max(matches, key=len)] if matches else DEFAULT_TESTS


def run_one(name: str, file: str, old: str, new: str, tests: list[str], timeout: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mutant-") as folder:
        copy = Path(folder) / "napari_editseg"
        shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
        target = copy / file
        text = target.read_text()
        if text.count(old) != 1:
            return {"name": name, "file": file, "result": "stale", "seconds": 0.0, "killed_by": ""}
        target.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": folder, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "HF_HUB_OFFLINE": "1"}
        check = subprocess.run([sys.executable, "-c", "import napari_editseg; print(napari_editseg.__file__)"],
                               env=env, capture_output=True, text=True, cwd=ROOT)
        assert check.stdout.strip().startswith(folder), f"the copy is not what gets imported: {check.stdout}"
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                  env=env, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
            killed, output = done.returncode != 0, done.stdout + "\n" + done.stderr
        except subprocess.TimeoutExpired:
            killed, output = True, "timed out"
        # pytest's summary lines, not captured log lines ("ERROR    diffusers...: ..." also starts with ERROR)
        failed = re.findall(r"^(?:FAILED|ERROR) (tests/\S+)", output, flags=re.M)
        return {"name": name, "file": file, "result": "killed" if killed else "survived",
                "seconds": round(time.perf_counter() - start, 1), "killed_by": failed[0] if failed else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="names of mutants to run (default: all)")
    parser.add_argument("--files", nargs="*", help="only the mutants of files starting with these paths")
    parser.add_argument("--tests", nargs="*", help="test files for every mutant (default: per file, TESTS_FOR)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per mutant (a hang counts as killed)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS + EXTRA if (not args.only or m[0] in args.only)
              and (not args.files or m[1].startswith(tuple(args.files)))]
    results = []
    for name, file, old, new in chosen:
        result = run_one(name, file, old, new, args.tests or tests_for(file), args.timeout)
        results.append(result)
        print(f"{result['result']:>8}  {result['seconds']:7.1f} s  {file:22} {name}  {result['killed_by']}", flush=True)
    live = [r for r in results if r["result"] != "stale"]
    scores = {}
    for part, members in (("core/", [r for r in live if r["file"].startswith("core/")]),
                          ("outside core/", [r for r in live if not r["file"].startswith("core/")]), ("src/", live)):
        killed = sum(r["result"] == "killed" for r in members)
        if members:
            scores[part] = {"killed": killed, "total": len(members)}
            print(f"{part}: {killed} of {len(members)} mutants killed ({100 * killed / len(members):.0f} %)")
    stale = [r["name"] for r in results if r["result"] == "stale"]
    if stale:
        print(f"stale (original text not found once): {', '.join(stale)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "scores": scores}, indent=1))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
