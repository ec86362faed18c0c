"""The widget's state, without Qt: loaded models, encoded images, the last run, records.

``_widget.py`` builds controls and moves work off the GUI thread; everything it remembers
between presses lives here, so tests can drive a whole session without a display:

- models by (id or folder, device), each with its identity for records;
- image latents by plane content (:func:`record.plane_signature`), so a second press, a new
  expression or a re-score never encodes the same plane twice (a changed plane is new);
- the last :class:`Run`: its unrefined results per slice (for re-scoring with no UNet
  pass) within a memory budget, least recently used slices dropped and recomputed with one
  forward when needed; what it painted (``Footprint``) so re-scores replace it and undo is
  noticed;
- undo grouping: a run is one undo step; the re-scores of one slider gesture are one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

from . import _layers
from .core.segmenter import EditSegmenter, Segmentation
from .core.settings import DISCRIMINATE_SETTINGS
from .record import first_result, make_record, plane_signature, points_entry, slice_entry

CACHE_BUDGET = 1 << 30  # bytes of per-slice results a run keeps for re-scoring (about 30 slices at 512 px)
LATENT_CACHE = 256  # encoded planes kept per session (about 64 kB each at 512 px)
Index = tuple[int, ...]
Clicks = dict[Index, tuple[list, list]]


def nothing_found(result: Segmentation) -> Optional[str]:
    """Why a result is not painted, when its confidence is below the ``min_confidence`` setting."""
    confidence = getattr(result, "confidence", None)
    minimum = getattr(result.settings, "min_confidence", None)
    if confidence is not None and minimum is not None and confidence < minimum:
        return f"nothing found (confidence {confidence:.2f} < min_confidence {minimum:.2f})"
    return None


def result_bytes(result: Segmentation) -> int:
    return sum(a.nbytes for a in (result.features, result.prior_work, result.prior, result.scores, result.mask)
               if isinstance(a, np.ndarray))


@dataclass
class Source:
    """Where a run's planes come from: one image layer, or the composite of several."""

    layer: Any  # napari Image: its shape and transform place the labels
    composite: Optional[list] = None  # the channel layers of a composite

    def plane(self, index: Index) -> np.ndarray:
        if self.composite:
            return _layers.composite_plane(self.composite, index)
        return _layers.displayed_plane(self.layer, index)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.layer.data.shape[:_layers.spatial_ndim(self.layer)]

    def describe(self) -> dict:
        """What a record says about the image: enough to cut the same plane from the same data."""
        layer = self.layer
        limits = None if layer.rgb else [float(v) for v in layer.contrast_limits]
        return {"layer": layer.name, "shape": list(layer.data.shape), "dtype": str(layer.data.dtype),
                "rgb": bool(layer.rgb), "contrast_limits": limits,
                "composite": [c.name for c in self.composite] if self.composite else None}


@dataclass
class Prompt:
    """What one press asks for."""

    expression: str  # "" when clicks or a box say it alone
    box: Optional[tuple[int, int, int, int]] = None  # (row0, col0, row1, col1) pixels of the image
    clicks: Clicks = field(default_factory=dict)  # per slice, when pressed: a word-less run's prior
    overrides: dict = field(default_factory=dict)  # settings from the controls


@dataclass
class Run:
    """One press: its results per slice, what it painted, and what it was made with."""

    source: Source
    prompt: Prompt
    indices: list[Index]
    label_id: int
    overwrite: bool
    segmenter: EditSegmenter
    model: dict  # hub.model_identity
    labels: Any = None  # the Labels layer, once painted
    signatures: dict = field(default_factory=dict)  # index -> plane hash
    base: OrderedDict = field(default_factory=OrderedDict)  # index -> unrefined result, least recent first
    masks: dict = field(default_factory=dict)  # index -> mask to paint (None: nothing found)
    footprints: dict = field(default_factory=dict)  # index -> _layers.Footprint
    clicks: Clicks = field(default_factory=dict)
    notes: dict = field(default_factory=dict)  # index -> why nothing was painted
    shown: Optional[Segmentation] = None  # the result the overlays show
    started: float = field(default_factory=time.perf_counter)

    @property
    def settings(self):
        return self.shown.settings if self.shown is not None else None


class Session:
    """Everything the widget keeps between presses (see the module docstring)."""

    def __init__(self, cache_budget: int = CACHE_BUDGET, latent_cache: int = LATENT_CACHE):
        self.cache_budget = cache_budget
        self.latent_cache = latent_cache
        self.segmenters: dict[tuple[str, str], EditSegmenter] = {}
        self.identities: dict[tuple[str, str], dict] = {}
        self._latents: OrderedDict = OrderedDict()
        self.run: Optional[Run] = None
        self._gesture: Optional[ExitStack] = None
        self._painted: dict[int, dict[int, dict]] = {}  # id(labels) -> label -> footprints

    # -- models -----------------------------------------------------------------------
    def add_model(self, key: tuple[str, str], segmenter: EditSegmenter) -> None:
        from .hub import model_identity

        self.identities[key] = model_identity(segmenter.model)
        self.segmenters[key] = segmenter

    def load(self, model: str, device: str, tqdm_class=None) -> EditSegmenter:
        """Load (downloading first, with per-file progress bars, if a hub id is not cached)."""
        from huggingface_hub import constants

        from .hub import cached_revision, download, is_folder

        local_only = None
        if not is_folder(model) and not constants.HF_HUB_OFFLINE and cached_revision(model) is None:
            try:
                download(model, tqdm_class)
                local_only = True
            except OSError:  # no connection: loading says what was tried
                pass
        segmenter = EditSegmenter.from_pretrained(model, device=device, local_files_only=local_only)
        self.add_model((model, device), segmenter)
        return segmenter

    # -- encoding, once per plane content ---------------------------------------------
    def set_plane(self, segmenter: EditSegmenter, plane: np.ndarray) -> str:
        """Set the plane on the model, reusing its latents when this content was encoded before."""
        signature = plane_signature(plane)
        key = (id(segmenter), signature)
        latents = self._latents.get(key)
        segmenter.set_image(plane, latents=latents)
        self._latents[key] = segmenter.image_latents()
        self._latents.move_to_end(key)
        while len(self._latents) > self.latent_cache:
            self._latents.popitem(last=False)
        return signature

    # -- a run ------------------------------------------------------------------------
    def new_run(self, source: Source, prompt: Prompt, indices: list[Index], label_id: int, overwrite: bool,
                key: tuple[str, str]) -> Run:
        if not prompt.expression:
            bare = [i for i in indices if not prompt.clicks.get(i, ([], []))[0]]
            if prompt.box is None and bare:
                raise ValueError("Without words, give a box or positive clicks on every slice to segment "
                                 f"({len(bare)} slice(s) have none).")
        self.end_gesture()
        return Run(source, prompt, list(indices), int(label_id), overwrite, self.segmenters[key],
                   self.identities[key], clicks={i: c for i, c in prompt.clicks.items() if i in indices})

    def _base(self, run: Run, index: Index) -> Segmentation:
        """The unrefined result of one slice: kept, or one UNet forward (the plane's latents cached)."""
        if index in run.base:
            run.base.move_to_end(index)
            return run.base[index]
        run.signatures[index] = self.set_plane(run.segmenter, run.source.plane(index))
        positive, negative = run.prompt.clicks.get(index, ([], []))
        base = first_result(run.segmenter, run.prompt.expression, run.prompt.box, points_entry(positive, negative),
                            **run.prompt.overrides)
        run.base[index] = base
        total = sum(result_bytes(b) for b in run.base.values())
        while total > self.cache_budget and len(run.base) > 1:  # least recently used slices go first
            total -= result_bytes(run.base.popitem(last=False)[1])
        return base

    def _result(self, run: Run, index: Index, clicks: Clicks, settings: dict) -> Segmentation:
        positive, negative = clicks.get(index, ([], []))
        return run.segmenter.refine(self._base(run, index), positive, negative, **settings)

    def segment(self, run: Run) -> Iterator[tuple[Index, Segmentation]]:
        """Worker body: each slice's result, one UNet forward each (a cancel acts between slices)."""
        for index in run.indices:
            yield index, self._result(run, index, run.clicks, {})

    def collect(self, run: Run, index: Index, result: Segmentation) -> None:
        """Keep a slice's result until the run paints them all at once."""
        note = nothing_found(result)
        run.masks[index] = None if note else result.mask
        if note:
            run.notes[index] = note
        else:
            run.notes.pop(index, None)
        run.shown = result

    def paint(self, run: Run, labels) -> None:
        """Paint the collected masks (one undo step, or part of the open gesture) and keep the record."""
        run.labels = labels
        masks = {i: (np.zeros(run.source.shape[-2:], bool) if m is None else m) for i, m in run.masks.items()}
        _layers.write_masks(labels, masks, run.label_id, run.overwrite, run.footprints, step=self._gesture is None)
        self._painted.setdefault(id(labels), {})[run.label_id] = run.footprints
        _layers.records(labels)[run.label_id] = self.record(run)
        self.sync(labels)
        self.run = run

    # -- re-scoring: thresholds, quantiles, clicks; no UNet pass for kept slices ----------
    def rescore(self, run: Run, settings: dict, clicks: Clicks) -> Iterator[tuple[Index, Segmentation]]:
        """Worker body (or called in place for one slice): every painted slice re-scored."""
        unknown = set(settings) - DISCRIMINATE_SETTINGS
        if unknown:
            raise ValueError(f"re-scoring cannot change {', '.join(sorted(unknown))}: press Segment")
        kept_first = [i for i in run.base if i in run.masks] + [i for i in run.masks if i not in run.base]
        for index in kept_first:  # a scan in slice order would drop each slice just before it is needed
            yield index, self._result(run, index, clicks, settings)

    def apply(self, run: Run, results: dict[Index, Segmentation], clicks: Clicks) -> None:
        run.clicks = {i: c for i, c in clicks.items() if i in run.masks}
        for index, result in results.items():
            self.collect(run, index, result)
        self.paint(run, run.labels)

    def begin_gesture(self, labels) -> None:
        """Re-scores from now until :meth:`end_gesture` are one undo step."""
        if self._gesture is None:
            self._gesture = ExitStack()
            self._gesture.enter_context(labels.block_history())

    def end_gesture(self) -> None:
        if self._gesture is not None:
            gesture, self._gesture = self._gesture, None
            gesture.close()

    # -- records and the label table --------------------------------------------------
    def record(self, run: Run) -> dict:
        words = bool(run.prompt.expression)
        slices = [slice_entry(index, run.signatures[index],
                              points_entry() if words else points_entry(*run.prompt.clicks.get(index, ([], []))),
                              points_entry(*run.clicks.get(index, ([], []))))
                  for index, mask in run.masks.items() if mask is not None]
        segmenter = run.segmenter
        return make_record(
            label=run.label_id, expression=run.prompt.expression, box=run.prompt.box,
            settings=run.settings.to_dict(), model=run.model, device=str(segmenter.device),
            dtype=segmenter.model.precision, image=run.source.describe(), slices=slices,
            overwrite=run.overwrite, confidence=getattr(run.shown, "confidence", None),
        )

    def present(self, labels) -> list[int]:
        """Recorded labels the layer holds now (not undone, not erased)."""
        painted = self._painted.get(id(labels), {})
        return [label for label in _layers.records(labels)
                if label not in painted or _layers.present(labels, painted[label], label)]

    def sync(self, labels) -> None:
        """The label table follows undo, redo and erasing."""
        _layers.show_records(labels, self.present(labels))

    def next_label(self, labels) -> int:
        return _layers.next_label_id(labels, self.present(labels))

    def summary(self, run: Run, seconds: float) -> str:
        """The status line after a run or a re-score."""
        painted = [i for i, m in run.masks.items() if m is not None]
        what = repr(run.prompt.expression) if run.prompt.expression else "the clicks" if any(
            run.prompt.clicks.values()) else "the box"
        if run.prompt.box is not None and (run.prompt.expression or any(run.prompt.clicks.values())):
            what += " in the box"
        if not painted:
            return f"{what}: {next(iter(run.notes.values()))}; nothing painted ({seconds:.1f} s)."
        area = np.mean([run.masks[i].mean() for i in painted])
        skipped = sum(run.footprints[i].skipped for i in painted)
        notes = []
        if skipped:
            notes.append(f"{skipped} pixels of other labels kept (tick overwrite to replace them)")
        if run.notes:
            notes.append(f"{len(run.notes)} slice(s): nothing found")
        confidence = getattr(run.shown, "confidence", None)
        if confidence is not None:
            notes.append(f"confidence {confidence:.2f}")
        note = "".join(f"; {n}" for n in notes)
        return f"Label {run.label_id} = {what}: {area:.1%} of the slice, {seconds:.1f} s{note}. Ctrl+Z undoes."
