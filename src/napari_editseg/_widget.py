"""The dock widget: panels from :mod:`._panels` in a scroll area, wired to the Qt-free
:class:`~._runstate.Session`, which holds everything remembered between presses.

The annotator's loop (micro-sam's "current object → commit"): Segment paints the current
object; Segment again, clicks and the re-score sliders replace it under the same label;
Commit keeps it and the next Segment starts a new label; Clear takes it back. Canvas keys
(:mod:`._keys`): Shift+S, Shift+C, Shift+X. Model loading, runs and stack re-scores run off
the GUI thread; the widget keeps no reference to a layer that left the viewer.
"""

from __future__ import annotations

import logging
import shlex
import time
import weakref
from pathlib import Path
from typing import Optional

import numpy as np
from magicgui.widgets import Container, PushButton
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QFileDialog, QPlainTextEdit, QProgressBar, QShortcut, QVBoxLayout, QWidget
from superqt import QCollapsible

from . import _controls, _keys, _layers, _panels, hub
from ._panels import ALL, CURRENT, NEGATIVE, NEW_LAYER, NEXT_FREE, POSITIVE, SELECTED  # noqa: F401 (the API)
from ._runstate import Prompt, Run, Session, Source
from ._workers import WorkerSlot, export_labels, load_steps, message, record_text
from .core.model import DEFAULT_MODEL, DEMO_MODEL
from .samples import SAMPLE_MENU, SAMPLES

CLICKS_LAYER, BOX_LAYER = "editseg clicks", "editseg box"
PRIOR_LAYER, SCORES_LAYER = "editseg prior", "editseg scores"
OVERLAYS = (CLICKS_LAYER, BOX_LAYER, PRIOR_LAYER, SCORES_LAYER)
LOCAL_FOLDER = "local folder…"
DEMO_TITLE = "Shapes-world demo (5 MB, offline; the shapes sample only)"
DOCK_WIDTH = 380  # pixels; long messages wrap inside it instead of widening the dock
GESTURE_MS = 500  # re-scores closer together than this are one undo step
EXAMPLES = " · ".join(f"{SAMPLES[n].expression} ({n})" for n in ("astronaut", "coffee", "chelsea"))


class EditSegWidget(QWidget):
    """Type what you see, or box it, or click it; get an editable, undoable, replayable label."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session()
        self.slot = WorkerSlot(self._busy)
        self._run: Optional[Run] = None  # the run in flight
        self._pending_rescore = False
        self._local_models: list[str] = []
        self._watched: weakref.WeakSet = weakref.WeakSet()
        self._build()
        self._connect()
        _keys.register(self, napari_viewer)

    @property
    def _worker(self):
        return self.slot.worker

    # -- building and wiring -----------------------------------------------------------
    def _build(self) -> None:
        prompt, actions = _panels.prompt_panel(EXAMPLES, SAMPLE_MENU), _panels.action_panel()
        where, model = _panels.labels_panel(), _panels.model_panel(self._devices())
        for panel in (prompt, actions, where, model):
            for control in panel if isinstance(panel, Container) else ():
                for widget in control if isinstance(control, Container) else [control]:
                    setattr(self, widget.name, widget)
        self.settings = {spec.name: _panels.control(spec) for spec in _controls.specs()}
        self.image.choices, self.labels.choices = self._image_choices, self._labels_choices
        self.model.choices, self.model.value = self._model_choices, DEFAULT_MODEL
        self._model_before = DEFAULT_MODEL
        self._tip_models()
        self.status = _panels.StatusLine("Type an expression (or draw a box, or click) and press Segment.")
        self.export_button = PushButton(text="Export labels + records…")
        self.progress = QProgressBar(visible=False)
        self.record_view = QPlainTextEdit(readOnly=True, minimumHeight=200)
        self.record_view.setPlaceholderText("After a run: what made the label, enough to make it again.")
        others = [c for name, c in self.settings.items() if name != "mask_threshold"]
        content, self.folds = QWidget(), {}
        layout = QVBoxLayout(content)
        for part in (prompt, actions, Container(widgets=[self.settings["mask_threshold"]])):
            layout.addWidget(part.native)
        for part in (self.status.native, self.progress, self.export_button.native):
            layout.addWidget(part)
        for title, inside in (("Labels, slices and maps", where.native), ("Record of the current label",
                              self.record_view), ("Advanced: model and settings", Container(widgets=[
                                  model, _panels.hint("Settings (the setting's name is in each tooltip):"),
                                  *others]).native)):
            self.folds[title] = fold = QCollapsible(title)
            fold.addWidget(inside)
            layout.addWidget(fold)
        self.record_fold = self.folds["Record of the current label"]
        layout.addStretch(1)
        QVBoxLayout(self).addWidget(_panels.scrolling(content))
        self.setFixedWidth(DOCK_WIDTH)

    def _connect(self) -> None:
        self._gesture_timer = QTimer(self, singleShot=True, interval=GESTURE_MS)
        self._gesture_timer.timeout.connect(self._end_gesture)
        for signal, slot in ((self.run_button.changed, self.segment), (self.commit_button.changed, self.commit),
                             (self.clear_button.changed, self.clear), (self.cancel_button.changed, self.cancel),
                             (self.load_button.changed, lambda _=None: self.load_model()),
                             (self.clicks_button.changed, self.add_click_points),
                             (self.box_button.changed, self.draw_box), (self.polarity.changed, self._set_polarity),
                             (self.export_button.changed, lambda _=None: self.export()),
                             (self.model.changed, self._model_chosen), (self.image.changed, self._show_slices),
                             (self.expression.native.returnPressed, self.segment)):
            signal.connect(slot)
        for spec in _controls.specs():
            if spec.rescore:
                self.settings[spec.name].changed.connect(self.rescore)
        self._show_slices()
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, activated=self.cancel)
        layers = self.viewer.layers.events
        for event in (layers.inserted, layers.removed, layers.reordered, layers.changed):
            event.connect(self._refresh_choices)
        layers.removing.connect(self._layer_leaving)

    def setting_values(self, rescore_only: bool = False) -> dict:
        """The settings the controls hold (those of steps 6-7 only, for a re-score)."""
        return {spec.name: self.settings[spec.name].value for spec in _controls.specs()
                if spec.rescore or not rescore_only}

    # -- choices -------------------------------------------------------------------------
    def _image_choices(self, _=None):
        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)
                  and layer.name not in OVERLAYS]
        grey = [n for n in images if not self.viewer.layers[n].rgb]
        return images + ([_layers.COMPOSITE] if len(grey) > 1 else [])

    def _labels_choices(self, _=None):
        return [NEW_LAYER] + [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _model_choices(self, _=None):
        named = [(f"{title} ({model})", model) for model, title in hub.KNOWN_MODELS.items()]
        named += [(DEMO_TITLE, DEMO_MODEL)] + [(f"{Path(m).name} ({m})", m) for m in self._local_models]
        return [(_controls.elide_middle(text), value) for text, value in named] + [(LOCAL_FOLDER, LOCAL_FOLDER)]

    def _tip_models(self) -> None:
        """Each model's whole name as its item's tooltip (the list shows long names elided in the middle)."""
        full = {value: text for text, value in [(f"{t} ({m})", m) for m, t in hub.KNOWN_MODELS.items()]
                + [(DEMO_TITLE, DEMO_MODEL)] + [(m, m) for m in self._local_models]}
        for i in range(self.model.native.count()):
            value = self.model.native.itemData(i)
            self.model.native.setItemData(i, full.get(value, str(value)), Qt.ItemDataRole.ToolTipRole)

    @staticmethod
    def _devices():
        import torch

        return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
            ["mps"] if torch.backends.mps.is_available() else [])

    def _refresh_choices(self, _=None):
        """Lists follow the layer list's order (magicgui would append new names after old ones)."""
        for combo in (self.image, self.labels):
            value = combo.value
            combo.choices = ()
            combo.reset_choices()
            if value in combo.choices:
                combo.value = value
        self._show_slices()
        self._busy(self._worker is not None)

    def _show_slices(self, _=None):
        """Slice options only for images with axes beyond the two displayed ones."""
        name = self.image.value
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        lead = len(_layers.leading_shape(layer)) if layer is not None else 0
        self.slices.visible = self.axis.visible = lead > 0
        self.axis.max = max(0, lead - 1)

    def use_model(self, model: str) -> None:
        """Offer a local folder (or another id) in the model list and choose it."""
        if model not in [value for _, value in self._model_choices()]:
            self._local_models.append(model)
            self.model.reset_choices()
            self._tip_models()
        self.model.value = model

    def _model_chosen(self, value) -> None:
        if value == LOCAL_FOLDER:
            folder = QFileDialog.getExistingDirectory(self, "A diffusers model folder (with model_index.json)")
            if folder:
                self.use_model(folder)
            else:
                self.model.value = self._model_before
            return
        self._model_before = value

    def _layer_leaving(self, event) -> None:
        """A layer is about to leave the viewer: no gesture, object or handler keeps it."""
        layer = self.viewer.layers[event.index]
        self.session.forget(layer)
        if layer.name == CLICKS_LAYER:
            layer.events.data.disconnect(self._clicks_changed)
        self._busy(self._worker is not None)

    # -- status and workers ------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        self.status.set(text, error)

    def _busy(self, busy: bool, steps: int = 0) -> None:
        self.run_button.enabled = self.load_button.enabled = self.export_button.enabled = not busy
        self.commit_button.enabled = self.clear_button.enabled = not busy and self.session.run is not None
        self.cancel_button.enabled = busy
        self.progress.setVisible(busy)
        self.progress.setRange(0, steps)  # 0 steps: an indeterminate "busy" bar
        self.progress.setValue(0)

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

    # -- segment ---------------------------------------------------------------------------
    def _image_layer(self) -> Source:
        name = self.image.value
        if name is None:
            raise ValueError(f"Add an image layer first (or {SAMPLE_MENU}).")
        if name == _layers.COMPOSITE:
            images = [layer for layer in self.viewer.layers if isinstance(layer, Image) and not layer.rgb
                      and layer.name not in OVERLAYS]
            return Source(images[0], images)
        layer = self.viewer.layers[name]
        if _layers.spatial_ndim(layer) < 2:
            raise ValueError(f"image layer {name!r} has fewer than two spatial axes")
        return Source(layer)

    def _labels_layer(self, source: Source) -> Optional[Labels]:
        """The chosen Labels layer, or None for a new one (created when the run succeeds)."""
        if self.labels.value in (None, NEW_LAYER):
            return None
        labels = self.viewer.layers[self.labels.value]
        if labels.data.shape != source.shape:
            raise ValueError(f"labels layer {labels.name!r} has shape {labels.data.shape}, the image {source.shape}")
        return labels

    def _prompt(self, source: Source) -> Prompt:
        box = None
        if BOX_LAYER in self.viewer.layers:
            box = _layers.box_from_shapes(self.viewer.layers[BOX_LAYER], source.layer)
        prompt = Prompt(self.expression.value.strip(), box, self._clicks(source), self.setting_values())
        if not prompt.expression and prompt.box is None and not any(c[0] for c in prompt.clicks.values()):
            raise ValueError("Type an expression first, e.g. 'the dog on the left' (or draw a box, or add "
                             "positive clicks).")
        return prompt

    def _clicks(self, source: Source) -> dict:
        if CLICKS_LAYER not in self.viewer.layers:
            return {}
        return _layers.clicks_by_slice(self.viewer.layers[CLICKS_LAYER], source.layer, source.shape[-2:])

    def segment(self, _=None) -> None:
        """Run the words (or the box / clicks alone) on the current slice or all slices; on the current
        object's layer this replaces the current object."""
        if self._worker is not None:
            return
        try:
            source = self._image_layer()
            prompt = self._prompt(source)
            indices = _layers.slice_indices(source.layer, self.viewer.dims.point,
                                            self.axis.value if self.slices.value == ALL else None)
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
        self._explain(run)
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
        for name, value in state.settings.items():
            control = self.settings.get(name)
            if name == "mask_threshold":
                control.set_quietly(value)
            elif control is not None:
                with control.changed.blocked():
                    control.value = value
        self._say(f"Undone to: {self.session.summary(run, None)}")

    def _explain(self, run: Run) -> None:
        """Prior and score maps of the shown slice as image layers exactly over the image."""
        result = run.shown
        for show, name, data, colormap in ((self.show_prior.value, PRIOR_LAYER, result.prior, "inferno"),
                                           (self.show_scores.value, SCORES_LAYER, result.scores, "viridis")):
            if not show:
                continue
            if name in self.viewer.layers:
                self.viewer.layers[name].data = data
            else:
                self.viewer.add_image(data, name=name, colormap=colormap, opacity=0.5, blending="additive",
                                      contrast_limits=(0.0, 1.0), **_layers.plane_transform(run.source.layer))

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

    # -- the annotator's loop: commit and clear -------------------------------------------------
    def commit(self, _=None) -> None:
        """Keep the current object under its label; clear the box and clicks; the next run is a new label."""
        if self._worker is not None:
            return
        run = self.session.commit()
        self._clear_prompts()
        self._busy(False)
        if run is None:
            self._say("Nothing to commit: Segment an object first.")
            return
        self._say(f"Label {run.label_id} committed ({sum(run.painted().values())} px). The next Segment makes "
                  f"label {self.session.next_label(run.labels)}.")

    def clear(self, _=None) -> None:
        """Take the current object back (one undo step) and clear the box and clicks."""
        if self._worker is not None:
            return
        run = self.session.clear()
        self._clear_prompts()
        self._busy(False)
        self._say("Cleared: no current object." if run is None else
                  f"Label {run.label_id} taken back (Ctrl+Z brings it back); box and clicks cleared.")

    def _clear_prompts(self) -> None:
        for name in (CLICKS_LAYER, BOX_LAYER):
            if name in self.viewer.layers:
                layer = self.viewer.layers[name]
                layer.data = np.zeros((0, layer.ndim)) if name == CLICKS_LAYER else []

    # -- prompts: clicks and a box -----------------------------------------------------------
    def _prompt_layer(self, name: str, add, mode: str, hint: str):
        """A prompt layer (clicks or box) over the chosen image, in its drawing mode and selected."""
        try:
            source = self._image_layer()
        except ValueError as error:
            self._say(str(error), error=True)
            return None
        if name not in self.viewer.layers:
            add(source.layer)
        layer = self.viewer.layers[name]
        layer.mode = mode
        self.viewer.layers.selection.active = layer
        self._say(hint)
        return layer

    def add_click_points(self, _=None) -> None:
        """A Points layer over the image: positive / negative clicks (T toggles) refine the current object."""
        def add(image):
            points = self.viewer.add_points(
                np.zeros((0, _layers.spatial_ndim(image))), name=CLICKS_LAYER, size=_layers.click_size(image),
                symbol="ring", features={"positive": np.zeros(0, bool)}, face_color="positive",
                face_color_cycle={True: "lime", False: "magenta"}, **_layers.transform_kwargs(image),
            )
            points.events.data.connect(self._clicks_changed)
            points.bind_key("t", lambda _layer: self.toggle_polarity(), overwrite=True)

        if self._prompt_layer(CLICKS_LAYER, add, "add", "Click on the image: positive clicks include, negative "
                              "exclude (T toggles); the current object follows each click. With no expression, "
                              "Segment uses the clicks alone."):
            self._set_polarity()

    def toggle_polarity(self) -> None:
        self.polarity.value = NEGATIVE if self.polarity.value == POSITIVE else POSITIVE

    def _set_polarity(self, _=None) -> None:
        if CLICKS_LAYER in self.viewer.layers:
            self.viewer.layers[CLICKS_LAYER].feature_defaults = {"positive": self.polarity.value == POSITIVE}

    def _clicks_changed(self, event) -> None:
        if getattr(event, "action", "added") in ("added", "removed", "changed"):
            self.rescore()

    def draw_box(self, _=None) -> None:
        """A Shapes layer in rectangle mode over the image: the last rectangle confines the next run."""
        def add(image):
            self.viewer.add_shapes(ndim=_layers.spatial_ndim(image), name=BOX_LAYER, edge_color="yellow",
                                   face_color="transparent", edge_width=2, **_layers.transform_kwargs(image))

        self._prompt_layer(BOX_LAYER, add, "add_rectangle",
                           "Drag a rectangle around the object, then press Segment (with or without words).")

    # -- export ----------------------------------------------------------------------------------
    def export(self, path: Optional[str] = None) -> Optional[Path]:
        """The chosen Labels layer as a TIFF, its labels' records as a JSON sidecar beside it, and the image
        too when it has no file; the status gives the replay command, ready to copy."""
        name = self.labels.value
        if name in (None, NEW_LAYER) or name not in self.viewer.layers:
            self._say("Choose a labels layer to export (after a run it is chosen).", error=True)
            return None
        labels = self.viewer.layers[name]
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export labels", f"{name}.tif", "TIFF (*.tif *.tiff)")
            if not path:
                return None
        sidecar, image, count = export_labels(Path(path), labels, self.session.present(labels), self.viewer.layers)
        command = f"napari-editseg replay {shlex.quote(str(sidecar))}"
        if image is not None:
            command += f" --image {shlex.quote(str(image))} --check {shlex.quote(str(Path(path).resolve()))}"
        self._say(f"Wrote {Path(path).name} and {sidecar.name} ({count} record(s)). Replay: {command}")
        return sidecar


__all__ = ["EditSegWidget", "load_steps", "message", "record_text"]
