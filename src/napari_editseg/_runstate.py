"""The widget's state, without Qt: loaded models, encoded images, the current object, records.

``_widget.py`` builds controls and moves work off the GUI thread; everything it remembers
between presses lives here, so tests can drive a whole session without a display:

- models by (id or folder, device), each with its identity for records;
- image latents by plane content (:func:`planes.plane_signature`), so a second press, a new
  expression or a re-score never encodes the same plane twice (a changed plane is new);
- the **current object** (micro-sam's loop): a run paints it; Segment again, clicks and
  sliders replace it under the same label id; :meth:`Session.commit` fixes it and the next
  run starts a new one; :meth:`Session.clear` takes it back. Its unrefined results per slice
  (for re-scoring with no denoiser pass) are kept within a memory budget; what it painted
  (``Footprint``) lets replacing and undo be noticed; each paint's settings are kept so
  that undo can put the controls back;
- run identity: a run paints only into the labels layer it started with, a cancelled run
  yields, collects and paints nothing, and two runs never interleave on one model (the
  plane one run sets is the plane its forward sees);
- undo grouping: a run is one undo step; the re-scores of one slider gesture are one.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

from . import _layers, _lazyruns
from .core.model import DEMO_MODEL
from .core.segmenter import EditSegmenter, Segmentation
from .core.settings import DISCRIMINATE_SETTINGS
from .core.tiling import Cancelled as CoreCancelled
from .planes import plane_signature
from .prompt import segment_prompt
from .record import make_record, points_entry, slice_entry

CACHE_BUDGET = 1 << 30  # bytes of per-slice results a run keeps for re-scoring (about 30 slices at 512 px)
LATENT_CACHE = 256  # encoded planes kept per session (about 64 kB each at 512 px)
STATES = 100  # paints of the current object remembered for undo
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


class Cancelled(Exception):
    """A cancelled run stops before its next plane is set on the model."""


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

    @property
    def layers(self) -> list:
        return list(self.composite or [self.layer])

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
    as_object: bool = False  # the slices are one object followed through the stack (core/volume.py)


@dataclass
class State:
    """One paint of the current object: the re-score settings and clicks it was made with, and a digest
    of its pixels, so that an undo back to it can put the controls back."""

    settings: dict
    clicks: Clicks
    digest: str


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
    target: Any = None  # the Labels layer chosen at the press (None: a new one); the only one it paints into
    labels: Any = None  # the Labels layer, once painted
    signatures: dict = field(default_factory=dict)  # index -> plane hash
    base: OrderedDict = field(default_factory=OrderedDict)  # index -> unrefined result, least recent first
    masks: dict = field(default_factory=dict)  # index -> mask to paint (None: nothing found)
    footprints: dict = field(default_factory=dict)  # index -> _layers.Footprint (shared with what it replaces)
    clicks: Clicks = field(default_factory=dict)
    notes: dict = field(default_factory=dict)  # index -> why nothing was painted
    shown: Optional[Segmentation] = None  # the result the overlays show
    states: list = field(default_factory=list)  # State per paint, oldest first
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)

    @property
    def settings(self):
        return self.shown.settings if self.shown is not None else None

    def painted(self) -> dict[Index, int]:
        """Pixels per plane that hold the label where this object was painted (0 when undone or erased)."""
        return _layers.painted_pixels(self.labels, self.footprints, self.label_id) if self.labels is not None else {}


def summary(run: Run, seconds: Optional[float]) -> str:
    """The status line after a run or a re-score (``seconds`` it took, if any): the pixels the label
    holds, never the mask's."""
    took = "" if seconds is None else f", {seconds:.1f} s"
    what = repr(run.prompt.expression) if run.prompt.expression else "the clicks" if any(
        run.prompt.clicks.values()) else "the box"
    if run.prompt.box is not None and (run.prompt.expression or any(run.prompt.clicks.values())):
        what += " in the box"
    found = [i for i, m in run.masks.items() if m is not None]
    if not found:
        return f"{what}: {next(iter(run.notes.values()))}; nothing painted{took}."
    painted = run.painted()
    pixels = sum(painted.values())
    if not pixels:
        return f"Label {run.label_id} = {what}: empty at these settings (0 pixels; lower the threshold){took}."
    share = pixels / (len(painted) * int(np.prod(run.source.shape[-2:])))
    notes = []
    skipped = sum(run.footprints[i].skipped for i in found)
    if skipped:
        notes.append(f"{skipped} pixels of other labels kept (tick overwrite to replace them)")
    if run.notes:
        notes.append(f"{len(run.notes)} slice(s): nothing found")
    confidence = getattr(run.shown, "confidence", None)
    if confidence is not None:
        notes.append(f"confidence {confidence:.2f}")
    note = "".join(f"; {n}" for n in notes)
    return (f"Label {run.label_id} = {what}: {pixels} px ({share:.1%} of the slice){took}{note}. "
            "Commit (Shift+C) keeps it; Ctrl+Z undoes.")

def nothing_painted(run: Run) -> str:
    """Why a run painted no pixel (the current object, if any, is left as it was)."""
    mask = sum(int(m.sum()) for m in run.masks.values() if m is not None)
    if not mask:
        return "the mask is empty at these settings: nothing painted (lower the threshold, or try other words)."
    return (f"all {mask} pixels of the mask hold other labels: nothing painted (tick overwrite other labels "
            "to replace them).")


class Session:
    """Everything the widget keeps between presses (see the module docstring)."""

    def __init__(self, cache_budget: int = CACHE_BUDGET, latent_cache: int = LATENT_CACHE):
        self.cache_budget = cache_budget
        self.latent_cache = latent_cache
        self.segmenters: dict[tuple[str, str], EditSegmenter] = {}
        self.identities: dict[tuple[str, str], dict] = {}
        self._latents: OrderedDict = OrderedDict()
        self.run: Optional[Run] = None  # the current object (None after a commit)
        self._gesture: Optional[ExitStack] = None
        self._gesture_layer: Any = None
        self._painted: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # labels -> label -> footprints
        self._model_locks: dict[int, threading.Lock] = {}
        self.painting = False  # True while paint writes (layer events then are its own, not an undo)

    # -- models -----------------------------------------------------------------------
    def add_model(self, key: tuple[str, str], segmenter: EditSegmenter) -> None:
        from .hub import model_identity

        self.identities[key] = model_identity(segmenter.model)
        self.segmenters[key] = segmenter

    def load(self, model: str, device: str, tqdm_class=None) -> EditSegmenter:
        """Load (downloading first, with per-file progress bars, if a hub id is not cached).

        The hub is asked once, with a short timeout: when it does not answer (whatever exception
        type the installed hub client raises), loading uses the cache alone and says so in one line.
        """
        from huggingface_hub import constants

        from .hub import cached_revision, download, hub_unreachable, is_folder

        local_only = None
        if not is_folder(model) and model != DEMO_MODEL and not constants.HF_HUB_OFFLINE \
                and cached_revision(model) is None:
            try:
                download(model, tqdm_class)
                local_only = True
            except Exception as error:
                if hub_unreachable(error):
                    local_only = True  # no second try: the cache, then one line
                elif not isinstance(error, OSError):  # e.g. not a diffusers model, a cancelled download
                    raise
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

    def _model_lock(self, segmenter: EditSegmenter) -> threading.Lock:
        return self._model_locks.setdefault(id(segmenter), threading.Lock())

    # -- a run ------------------------------------------------------------------------
    def label_for(self, labels, chosen: int) -> int:
        """The id a new run on ``labels`` paints: the current object's (it is replaced), else ``chosen``."""
        current = self.run
        return current.label_id if current is not None and labels is not None and current.labels is labels \
            else int(chosen)

    def new_run(self, source: Source, prompt: Prompt, indices: list[Index], label_id: int, overwrite: bool,
                key: tuple[str, str], labels: Any = None) -> Run:
        """A run for one press, painting into ``labels`` (None: a layer made when it succeeds). On the
        current object's layer it replaces that object (same id, its pixels taken back first)."""
        if not prompt.expression:
            bare = [i for i in indices if not prompt.clicks.get(i, ([], []))[0]]
            if prompt.box is None and bare:
                raise ValueError("Without words, give a box or positive clicks on every slice to segment "
                                 f"({len(bare)} slice(s) have none).")
        self.end_gesture()
        run = Run(source, prompt, list(indices), int(label_id), overwrite, self.segmenters[key],
                  self.identities[key], target=labels,
                  clicks={i: c for i, c in prompt.clicks.items() if i in indices})
        current = self.run
        if current is not None and labels is not None and current.labels is labels \
                and current.label_id == run.label_id:
            run.footprints = current.footprints
        return run

    def cancel(self, run: Optional[Run]) -> None:
        """From now on ``run`` sets no plane, and what it yields is neither collected nor painted."""
        if run is not None:
            run.cancelled.set()

    def _base(self, run: Run, index: Index) -> Segmentation:
        """The unrefined result of one slice: kept, or one denoiser forward (the plane's latents cached).

        The plane is read outside the model's lock; setting it and the forward happen under it, so
        another run cannot set its own plane in between.
        """
        if index in run.base:
            run.base.move_to_end(index)
            return run.base[index]
        if _lazyruns.tiles_this_plane(run, index):  # a large plane: read and run tile by tile
            with self._model_lock(run.segmenter):
                base = _lazyruns.tiled_result(run, index)
        else:
            plane = run.source.plane(index)
            if run.cancelled.is_set():  # cancelled while the plane was read: do not even wait for the model
                raise Cancelled
            with self._model_lock(run.segmenter):
                if run.cancelled.is_set():
                    raise Cancelled
                run.signatures[index] = self.set_plane(run.segmenter, plane)
                positive, negative = run.prompt.clicks.get(index, ([], []))
                base = segment_prompt(run.segmenter, run.prompt.expression, run.prompt.box,
                                      **points_entry(positive, negative), **run.prompt.overrides)
        run.base[index] = base
        total = sum(result_bytes(b) for b in run.base.values())
        while total > self.cache_budget and len(run.base) > 1:  # least recently used slices go first
            total -= result_bytes(run.base.popitem(last=False)[1])
        return base

    def _result(self, run: Run, index: Index, clicks: Clicks, settings: dict) -> Segmentation:
        positive, negative = clicks.get(index, ([], []))
        return run.segmenter.refine(self._base(run, index), positive, negative, **settings)

    def segment(self, run: Run) -> Iterator[tuple[Index, Segmentation]]:
        """Worker body: each slice's result, one denoiser forward each; a cancel stops it before the next plane."""
        try:
            if run.prompt.as_object and len(run.indices) > 1:
                with self._model_lock(run.segmenter):
                    yield from _lazyruns.volume_results(run)
                return
            for index in run.indices:
                if run.cancelled.is_set():
                    return
                yield index, self._result(run, index, run.clicks, {})
        except (Cancelled, CoreCancelled):
            return

    def collect(self, run: Run, index: Index, result: Segmentation) -> None:
        """Keep a slice's result until the run paints them all at once (a cancelled run keeps nothing)."""
        if run.cancelled.is_set():
            return
        note = nothing_found(result)
        run.masks[index] = None if note else result.mask
        if note:
            run.notes[index] = note
        else:
            run.notes.pop(index, None)
        run.shown = result

    def _masks(self, run: Run) -> dict[Index, np.ndarray]:
        """What to paint: each slice's mask, and nothing where the replaced object was but this run is not."""
        empty = np.zeros(run.source.shape[-2:], bool)
        masks = {i: empty for i in run.footprints}
        masks.update({i: (empty if m is None else m) for i, m in run.masks.items()})
        return masks

    def paintable(self, run: Run, labels) -> int:
        """How many pixels painting ``run`` into ``labels`` would give its label (0: it would be empty)."""
        if labels is None:  # a new layer: every mask pixel
            return sum(int(m.sum()) for m in run.masks.values() if m is not None)
        return _layers.paintable_pixels(labels, self._masks(run), run.label_id, run.overwrite, run.footprints)

    def paint(self, run: Run, labels) -> bool:
        """Paint the collected masks (one undo step, or part of the open gesture), keep the record and make
        the run the current object. Nothing happens for a cancelled run or another layer than its own."""
        if run.cancelled.is_set():
            return False
        if run.target is not None and labels is not run.target:
            raise ValueError("a run paints only into the labels layer it started with")
        run.labels = run.target = labels
        self.painting = True
        try:
            _layers.write_masks(labels, self._masks(run), run.label_id, run.overwrite, run.footprints,
                                step=self._gesture is None)
        finally:
            self.painting = False
        self._painted.setdefault(labels, {})[run.label_id] = run.footprints
        _layers.records(labels)[run.label_id] = self.record(run)
        self.sync(labels)
        self.run = run
        run.states.append(State({k: v for k, v in run.settings.to_dict().items() if k in DISCRIMINATE_SETTINGS},
                                dict(run.clicks), _layers.label_digest(labels, run.footprints, run.label_id)))
        del run.states[:-STATES]
        return True

    # -- the annotator's loop: commit, clear, and what undo brought back ----------------
    def commit(self) -> Optional[Run]:
        """Fix the current object under its id; the next run starts a new one. Returns it (None: no object)."""
        self.end_gesture()
        run, self.run = self.run, None
        return run if run is not None and run.labels is not None and any(run.painted().values()) else None

    def clear(self) -> Optional[Run]:
        """Take the current object's pixels back (one undo step); returns it (None: no object)."""
        run = self.commit()
        if run is not None:
            empty = {i: np.zeros(run.source.shape[-2:], bool) for i in run.footprints}
            _layers.write_masks(run.labels, empty, run.label_id, run.overwrite, run.footprints)
            self.sync(run.labels)
        return run

    def shown_state(self, run: Run) -> Optional[State]:
        """The paint of ``run`` its layer shows now (after an undo or redo), or None (edited by hand, or gone)."""
        if run.labels is None:
            return None
        digest = _layers.label_digest(run.labels, run.footprints, run.label_id)
        return next((state for state in reversed(run.states) if state.digest == digest), None)

    def forget(self, layer) -> None:
        """``layer`` leaves the viewer: no gesture stays open on it and no object or run refers to it."""
        run = self.run
        if self._gesture_layer is layer:
            self.end_gesture()
        if run is not None and (run.labels is layer or any(source is layer for source in run.source.layers)):
            self.end_gesture()
            self.run = None
        self._painted.pop(layer, None)

    # -- re-scoring: thresholds, quantiles, clicks; no denoiser pass for kept slices -----
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
            self._gesture_layer = labels

    def end_gesture(self) -> None:
        if self._gesture is not None:
            gesture, self._gesture, self._gesture_layer = self._gesture, None, None
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
        painted = self._painted.get(labels, {})
        return [label for label in _layers.records(labels)
                if label not in painted or _layers.present(labels, painted[label], label)]

    def sync(self, labels) -> None:
        """The label table follows undo, redo and erasing."""
        _layers.show_records(labels, self.present(labels))

    def next_label(self, labels) -> int:
        return _layers.next_label_id(labels, self.present(labels))

    summary = staticmethod(summary)
    nothing_painted = staticmethod(nothing_painted)
