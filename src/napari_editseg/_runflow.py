"""The run half of the dock widget: what moves work off the GUI thread and paints its results.

:class:`RunFlow` is mixed into :class:`~._widget.EditSegWidget` (which builds the panels and holds
``session``, ``slot``, ``settings``, ``status`` and the other controls): loading a model, a run
(Segment) and its paint into the layer it started with, instant re-scores, Cancel, and following
undo and redo back to the controls. Everything it remembers lives in the Qt-free
:class:`~._runstate.Session`.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
from napari.layers import Labels
from napari.qt.threading import create_worker

from . import _layers, _panels, hub
from ._panels import ALL, OBJECT, SELECTED
from ._runstate import Run, Source
from ._workers import load_steps, message, record_text


class RunFlow:
    """Runs, re-scores, Cancel and undo-following for the dock widget (see the module docstring)."""

    _run: Optional[Run] = None  # the run in flight
    _pending_rescore = False

    # -- status and workers ------------------------------------------------------------
    def _start(self, worker, on_return=None, on_yield=None, steps: int = 0, on_error=None) -> None:
        self.slot.start(worker, on_return, on_yield, on_error or self._failed, self._done, steps)

    def _done(self) -> None:
        self.slot.release()
        if self._pending_rescore:
            self._pending_rescore = False
            self.rescore()
        elif not self._gesture_timer.isActive():
            self.session.end_gesture()

    def _failed(self, error: Exception) -> None:
        """Errors end in the status line, in the widget's words; nothing is created."""
        self._done()
        self._run = None
        if not isinstance(error, (ValueError, OSError, hub.DownloadCancelled)) and not hub.hub_unreachable(error):
            logging.getLogger(__name__).error("segmentation failed", exc_info=error)
        self._say(f"Error: {message(error, self.model.value)}", error=True)

    def cancel(self) -> None:
        """Stop waiting now: nothing of the run is painted (a forward under way ends unseen)."""
        if self._worker is None:
            return
        downloading = self.slot.downloading
        self.session.cancel(self._run)
        self._run = None
        self.slot.cancel()
        self._done()
        self._say("Download cancelled; Load model (or Segment) resumes it where it stopped." if downloading
                  else "Cancelled: nothing was painted.")

    # -- model -----------------------------------------------------------------------------
    def _key(self) -> tuple[str, str]:
        return str(self.model.value).strip(), self.device.value

    def load_model(self, then=None) -> None:
        key = self._key()
        if key in self.session.segmenters:
            self._say(f"Model {key[0]} is loaded.")
            if then:
                then(key)
            return
        self._say(f"Loading {key[0]} … (a first use downloads about 4 GB; progress in the activity dock)")
        cancelled = self.slot.new_cancel()

        def loaded(segmenter):
            self._say(f"Model {key[0]} loaded on {segmenter.device}.")
            if then:
                self.slot.worker = None
                then(key)

        worker = create_worker(load_steps, self.session, *key, cancelled, _start_thread=False, _ignore_errors=True)
        self._start(worker, on_return=loaded, on_yield=self.slot.download_progress)

    def segment(self, _=None) -> None:
        """Run the words (or the box / clicks alone) on the current slice or all slices; on the current
        object's layer this replaces the current object."""
        if self._worker is not None:
            return
        try:
            source = self._image_layer()
            prompt = self._prompt(source)
            indices = _layers.slice_indices(source.layer, self.viewer.dims.point,
                                            self.axis.value if self.slices.value in (ALL, OBJECT) else None)
            prompt.as_object = self.slices.value == OBJECT and len(indices) > 1
            if prompt.as_object and not prompt.expression:
                raise ValueError("Following one object through the slices needs words: type an expression.")
            labels = self._labels_layer(source)
        except ValueError as error:
            self._say(str(error), error=True)
            return
        chosen = 1 if labels is None else labels.selected_label if self.label_policy.value == SELECTED \
            else self.session.next_label(labels)
        label_id = self.session.label_for(labels, chosen)

        def start(key):
            try:
                run = self.session.new_run(source, prompt, indices, label_id, self.overwrite.value, key, labels)
            except ValueError as error:
                self._say(str(error), error=True)
                return
            self._run = run
            what = repr(prompt.expression) if prompt.expression else "the box and clicks"
            self._say(f"Segmenting {what} on {len(indices)} slice(s) …")
            worker = create_worker(self.session.segment, run, _start_thread=False, _ignore_errors=True)
            self._start(worker, on_yield=lambda item: self._collect(run, item),
                        on_return=lambda _: self._finished(run), steps=len(indices) if len(indices) > 1 else 0)

        self.load_model(then=start)

    def _collect(self, run: Run, item) -> None:
        self.session.collect(run, *item)
        if self.progress.maximum():
            self.progress.setValue(len(run.masks))

    def _finished(self, run: Run) -> None:
        """The run succeeded: paint it (one undo step) into its own layer, select that layer so Ctrl+Z works.
        A run whose layers left the viewer, or that would paint no pixel, paints nothing and says why."""
        if run is not self._run or run.cancelled.is_set():
            return
        self._run = None
        gone = [layer.name for layer in [*run.source.layers, run.target] if layer is not None
                and layer not in self.viewer.layers]
        what = repr(run.prompt.expression) if run.prompt.expression else "the box and clicks"
        if gone:
            self._say(f"{what}: layer {gone[0]!r} was removed during the run; nothing painted.", error=True)
        elif all(mask is None for mask in run.masks.values()):  # nothing found: no layer, no label
            self._say(self.session.summary(run, time.perf_counter() - run.started))
        elif not self.session.paintable(run, run.target):
            self._say(f"{what}: {self.session.nothing_painted(run)}")
        else:
            labels = run.target or self._new_labels(run.source)
            self._watch(labels)
            self.session.paint(run, labels)
            self._painted(run, self.session.summary(run, time.perf_counter() - run.started))
            self.viewer.layers.selection.active = labels
        self._busy(False)

    def _new_labels(self, source: Source) -> Labels:
        """A Labels layer exactly over the image, in colours that show on it (label 1 cyan)."""
        labels = self.viewer.add_labels(np.zeros(source.shape, np.uint32), name=f"editseg {source.layer.name}",
                                        colormap=_layers.label_colormap(), **_layers.transform_kwargs(source.layer))
        self.labels.value = labels.name
        return labels

    def _painted(self, run: Run, summary: str) -> None:
        """After a paint: overlays, the record, the threshold slider on the new scores, the status."""
        _layers.show_maps(self.viewer, run.shown, run.source.layer, self.show_prior.value, self.show_scores.value)
        record = _layers.records(run.labels).get(run.label_id)
        self.record_view.setPlainText(record_text(record) if record else "")
        self.settings["mask_threshold"].set_scores(run.shown.scores)
        self._say(summary)

    def _watch(self, labels: Labels) -> None:
        """Keep the label table, the status and the controls in step with undo, redo and erasing."""
        if labels not in self._watched:
            self._watched.add(labels)
            for event in (labels.events.set_data, labels.events.paint):
                event.connect(lambda _=None: self._follow(labels))

    def _follow(self, labels: Labels) -> None:
        """Undo or redo moved the current object: the controls and the status say what is shown now."""
        self.session.sync(labels)
        run = self.session.run
        if run is None or run.labels is not labels or self.session.painting or not run.states:
            return
        state = self.session.shown_state(run)
        if state is run.states[-1]:
            return
        if state is None:
            if not any(run.painted().values()):
                self._say(f"Label {run.label_id} was undone: Ctrl+Shift+Z redoes it; Segment makes it again.")
            return
        _panels.set_quietly(self.settings, state.settings)
        self._say(f"Undone to: {self.session.summary(run, None)}")

    # -- instant re-score: threshold, quantiles, clicks — no denoiser forward ---------------
    def rescore(self, _=None) -> None:
        """Re-score the current object with the controls and clicks; a stack's in a worker."""
        run = self.session.run
        if run is None or run.labels is None or run.labels not in self.viewer.layers:
            return
        if self._worker is not None:  # coalesce: one more re-score when this one ends
            self._pending_rescore = True
            return
        if self.session.shown_state(run) is None and not any(run.painted().values()):
            self._say("The current object was undone or erased: press Segment for a new one.")
            return
        self.session.begin_gesture(run.labels)
        self._gesture_timer.start()
        settings, clicks, start = self.setting_values(rescore_only=True), self._clicks(run.source), time.perf_counter()

        def done(results):
            self.session.apply(run, dict(results), clicks)
            self._painted(run, self.session.summary(run, time.perf_counter() - start))

        try:
            if len(run.masks) == 1:
                done(list(self.session.rescore(run, settings, clicks)))
                return
            worker = create_worker(lambda: list(self.session.rescore(run, settings, clicks)),
                                   _start_thread=False, _ignore_errors=True)
            self._say(f"Re-scoring {len(run.masks)} slices …")
            self._start(worker, on_return=done, steps=0)
        except ValueError as error:
            self._say(str(error), error=True)

    def _end_gesture(self) -> None:
        if self._worker is None:
            self.session.end_gesture()
