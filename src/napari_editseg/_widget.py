"""The dock widget: a thin Qt shell over :mod:`._runstate`.

It builds the controls (the setting controls from :mod:`._controls`' table), moves model
loading, runs and stack re-scores off the GUI thread, and turns layer events into calls
on the :class:`~._runstate.Session`, which holds everything remembered between presses.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, Label, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QFileDialog,
    QPlainTextEdit,
    QProgressBar,
    QShortcut,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from . import _controls, _layers, hub
from ._runstate import Prompt, Run, Session, Source
from .core.model import DEFAULT_MODEL, ModelNotAvailableError
from .record import write_export
from .samples import SAMPLE_MENU, SAMPLES

NEW_LAYER = "<new labels layer>"
NEXT_FREE, SELECTED = "next free label per run", "the layer's selected label"
CURRENT, ALL = "current slice", "all slices along axis"
POSITIVE, NEGATIVE = "positive: include", "negative: exclude"
CLICKS_LAYER, BOX_LAYER = "editseg clicks", "editseg box"
PRIOR_LAYER, SCORES_LAYER = "editseg prior", "editseg scores"
OVERLAYS = (CLICKS_LAYER, BOX_LAYER, PRIOR_LAYER, SCORES_LAYER)
LOCAL_FOLDER = "local folder…"
DOCK_WIDTH = 380  # pixels; long messages wrap inside it instead of widening the dock
GESTURE_MS = 500  # re-scores closer together than this are one undo step
EXAMPLES = " · ".join(f"{SAMPLES[n].expression} ({n})" for n in ("astronaut", "coffee", "chelsea"))


def wrappable(text: str, longest: int = 24) -> str:
    """Let Qt break long paths and ids (a zero-width space after separators in long words)."""
    words = [w if len(w) <= longest else w.replace("/", "/\u200b").replace("-", "-\u200b") for w in text.split(" ")]
    return " ".join(words)


def load_steps(session: Session, model: str, device: str, cancelled: threading.Event):
    """Worker body: yields (file, bytes done, bytes total) while a first download runs, returns the model."""
    reports: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work():
        try:
            outcome["model"] = session.load(model, device, hub.progress_bridge(reports.put, cancelled))
        except BaseException as error:  # handed to the worker, which reports it on the GUI thread
            outcome["error"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while thread.is_alive() or not reports.empty():
        try:
            yield reports.get(timeout=0.1)
        except queue.Empty:
            pass
    if "error" in outcome:
        raise outcome["error"]
    return outcome["model"]


RECORD_ORDER = ("label", "expression", "box", "model", "device", "dtype", "versions", "image", "slices")


def record_text(record: dict) -> str:
    """A record as JSON, one key a line (the nested parts on the line of their key), what matters first."""
    keys = [k for k in RECORD_ORDER if k in record] + [k for k in record if k not in RECORD_ORDER]
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(record[k])}" for k in keys) + "\n}"


def message(error: Exception, model: str) -> str:
    """An error in the widget's words (the CLI's name flags; the widget names its controls)."""
    if isinstance(error, ModelNotAvailableError):
        return hub.not_available_message(model)
    if isinstance(error, hub.DownloadCancelled):
        return "Download cancelled; Load model (or Segment) resumes it where it stopped."
    return " ".join(str(error).split())


class EditSegWidget(QWidget):
    """Type what you see, or box it, or click it; get an editable, undoable, replayable label."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session()
        self._worker = None
        self._cancelled = threading.Event()
        self._bars: dict = {}
        self._pending_rescore = False
        self._local_models: list[str] = []
        self._watched: set[int] = set()

        self.image = ComboBox(label="image", choices=self._image_choices)
        self.expression = LineEdit(label="expression")
        self.expression.native.setPlaceholderText(f"e.g. {EXAMPLES}")
        self.expression.native.setToolTip(f"Describe the object; Enter runs. Empty: the box or clicks alone. "
                                          f"Samples: {SAMPLE_MENU}.")
        self.box_button = PushButton(text="Draw box")
        self.box_button.native.setToolTip("Draw a rectangle: the segmentation stays inside it (the last one counts)")
        self.clicks_button = PushButton(text="Add clicks")
        self.polarity = ComboBox(label="clicks", choices=[POSITIVE, NEGATIVE])
        self.polarity.native.setToolTip("T on the clicks layer toggles between include and exclude")
        self.labels = ComboBox(label="labels", choices=self._labels_choices)
        self.label_policy = ComboBox(label="label id", choices=[NEXT_FREE, SELECTED])
        self.overwrite = CheckBox(text="overwrite other labels", value=False)
        self.slices = ComboBox(label="slices", choices=[CURRENT, ALL])
        self.axis = SpinBox(label="axis", min=0, max=8, value=0)
        self.show_prior = CheckBox(text="show attention prior", value=False)
        self.show_scores = CheckBox(text="show score map", value=False)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.export_button = PushButton(text="Export labels + records…")
        self.status = Label(value="Type an expression (or draw a box, or click) and press Segment.")

        self.model = ComboBox(label="model", choices=self._model_choices, value=DEFAULT_MODEL)
        self.model.native.setToolTip("An InstructPix2Pix-family model: a hub id (downloaded once) or a local "
                                     "diffusers folder")
        self._model_before = DEFAULT_MODEL
        self.device = ComboBox(label="device", choices=self._devices())
        self.load_button = PushButton(text="Load model")
        self.settings = {spec.name: self._control(spec) for spec in _controls.specs()}

        main = Container(widgets=[
            self.image, self.expression,
            Container(widgets=[self.box_button, self.clicks_button], layout="horizontal", labels=False),
            self.polarity, self.labels, self.label_policy, self.overwrite, self.slices, self.axis,
            self.show_prior, self.show_scores,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
            self.status, self.export_button,
        ])
        advanced = Container(widgets=[self.model, self.device, self.load_button, *self.settings.values()])
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        fold = QCollapsible("Advanced: model and settings")
        fold.addWidget(advanced.native)
        self.record_view = QPlainTextEdit(readOnly=True)
        self.record_view.setPlaceholderText("After a run: what made the label, enough to make it again.")
        self.record_view.setMinimumHeight(220)
        self.record_fold = QCollapsible("Record of the last label")
        self.record_fold.addWidget(self.record_view)
        layout = QVBoxLayout(self)
        layout.addWidget(main.native)
        layout.addWidget(self.progress)
        layout.addWidget(self.record_fold)
        layout.addWidget(fold)
        layout.addStretch(1)
        self.setFixedWidth(DOCK_WIDTH)
        self.status.native.setWordWrap(True)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.status.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self._gesture_timer = QTimer(self, singleShot=True, interval=GESTURE_MS)
        self._gesture_timer.timeout.connect(self._end_gesture)
        self.run_button.changed.connect(self.segment)
        self.expression.native.returnPressed.connect(self.segment)
        self.cancel_button.changed.connect(self.cancel)
        self.load_button.changed.connect(lambda _=None: self.load_model())
        self.clicks_button.changed.connect(self.add_click_points)
        self.box_button.changed.connect(self.draw_box)
        self.export_button.changed.connect(lambda _=None: self.export())
        self.polarity.changed.connect(self._set_click_polarity)
        self.model.changed.connect(self._model_chosen)
        for spec in _controls.specs():
            if spec.rescore:
                self.settings[spec.name].changed.connect(self.rescore)
        self.image.changed.connect(self._show_slice_choices)
        self._show_slice_choices()
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, activated=self.cancel)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.reordered, self.viewer.layers.events.changed):
            event.connect(self._refresh_choices)

    # -- controls ----------------------------------------------------------------------
    @staticmethod
    def _control(spec: _controls.Spec):
        """One setting's control, from its row of the table (tooltip: the setting's help)."""
        label = spec.name
        if spec.kind == "float":
            control = FloatSlider(label=label, min=spec.minimum, max=spec.maximum, step=spec.step, value=spec.default)
        elif spec.kind == "int":
            control = SpinBox(label=label, min=spec.minimum, max=spec.maximum, step=spec.step, value=spec.default)
        elif spec.kind == "choice":
            control = ComboBox(label=label, choices=spec.choices, value=spec.default)
        elif spec.kind == "bool":
            control = CheckBox(text=label, value=spec.default)
        else:
            control = LineEdit(label=label, value=spec.default)
        when = "" if spec.rescore else " (applies at the next Segment)"
        control.native.setToolTip(f"{spec.help}{when}")
        return control

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
        known = [(f"{title} ({model})", model) for model, title in hub.KNOWN_MODELS.items()]
        return known + [(Path(m).name or m, m) for m in self._local_models] + [(LOCAL_FOLDER, LOCAL_FOLDER)]

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
        self._show_slice_choices()

    def _show_slice_choices(self, _=None):
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

    # -- status and workers ------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        self.status.value = wrappable(text)
        self.status.native.setToolTip(text)
        self.status.native.setStyleSheet("color: #ff6060;" if error else "")

    def _busy(self, busy: bool, steps: int = 0) -> None:
        self.run_button.enabled = self.load_button.enabled = self.export_button.enabled = not busy
        self.cancel_button.enabled = busy
        self.progress.setVisible(busy)
        self.progress.setRange(0, steps)  # 0 steps: an indeterminate "busy" bar
        self.progress.setValue(0)

    def _start(self, worker, on_return=None, on_yield=None, steps: int = 0, on_error=None):
        self._worker = worker
        self._busy(True, steps)

        def mine(handler):
            # results of a cancelled worker are dropped: it may finish in the background
            return lambda *value: handler(*value) if self._worker is worker else None

        if on_yield:
            worker.yielded.connect(mine(on_yield))
        if on_return:
            worker.returned.connect(mine(on_return))
        worker.errored.connect(mine(on_error or self._failed))
        worker.finished.connect(mine(self._done))
        worker.start()

    def _done(self) -> None:
        self._worker = None
        self._busy(False)
        for bar in self._bars.values():
            bar.close()
        self._bars = {}
        if self._pending_rescore:
            self._pending_rescore = False
            self.rescore()
        elif not self._gesture_timer.isActive():
            self.session.end_gesture()

    def _failed(self, error: Exception) -> None:
        """Errors end in the status line, in the widget's words; nothing is created."""
        self._done()
        if not isinstance(error, (ValueError, OSError, hub.DownloadCancelled)):
            logging.getLogger(__name__).error("segmentation failed", exc_info=error)
        self._say(f"Error: {message(error, self.model.value)}", error=True)

    def cancel(self) -> None:
        """Stop waiting now: nothing of the run is painted (a forward under way ends unseen)."""
        if self._worker is None:
            return
        downloading = bool(self._bars)
        self._cancelled.set()
        self._worker.quit()
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
        self._cancelled = threading.Event()

        def loaded(segmenter):
            self._say(f"Model {key[0]} loaded on {segmenter.device}.")
            if then:
                self._worker = None
                then(key)

        worker = create_worker(load_steps, self.session, *key, self._cancelled, _start_thread=False,
                               _ignore_errors=True)
        self._start(worker, on_return=loaded, on_yield=self._download_progress)

    def _download_progress(self, report) -> None:
        """Byte counts of a first download as napari progress bars (the activity dock)."""
        from napari.utils import progress

        name, done, total = report
        if name not in self._bars:
            self._bars[name] = progress(total=total, desc=f"downloading {name}")
        bar = self._bars[name]
        bar.update(done - bar.n)

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
        return Prompt(self.expression.value.strip(), box, self._clicks(source), self.setting_values())

    def _clicks(self, source: Source) -> dict:
        if CLICKS_LAYER not in self.viewer.layers:
            return {}
        return _layers.clicks_by_slice(self.viewer.layers[CLICKS_LAYER], source.layer, source.shape[-2:])

    def segment(self, _=None) -> None:
        """Run the expression (or the box / clicks alone) on the current slice or all slices."""
        if self._worker is not None:
            return
        try:
            source = self._image_layer()
            prompt = self._prompt(source)
            if not prompt.expression and prompt.box is None and not any(c[0] for c in prompt.clicks.values()):
                raise ValueError("Type an expression first, e.g. 'the dog on the left' (or draw a box, or add "
                                 "positive clicks).")
            axis = self.axis.value if self.slices.value == ALL else None
            indices = _layers.slice_indices(source.layer, self.viewer.dims.point, axis)
            labels = self._labels_layer(source)
        except ValueError as error:
            self._say(str(error), error=True)
            return
        if labels is None:
            label_id = 1
        elif self.label_policy.value == SELECTED:
            label_id = labels.selected_label
        else:
            label_id = self.session.next_label(labels)

        def start(key):
            try:
                run = self.session.new_run(source, prompt, indices, label_id, self.overwrite.value, key)
            except ValueError as error:
                self._say(str(error), error=True)
                return
            what = repr(prompt.expression) if prompt.expression else "the box and clicks"
            self._say(f"Segmenting {what} on {len(indices)} slice(s) …")
            worker = create_worker(self.session.segment, run, _start_thread=False, _ignore_errors=True)
            self._start(worker, on_yield=lambda item: self._collect(run, item),
                        on_return=lambda _: self._finished(run, labels), steps=len(indices) if len(indices) > 1 else 0)

        self.load_model(then=start)

    def _collect(self, run: Run, item) -> None:
        self.session.collect(run, *item)
        if self.progress.maximum():
            self.progress.setValue(len(run.masks))

    def _finished(self, run: Run, labels: Optional[Labels]) -> None:
        """The run succeeded: paint it (one undo step), select the labels so Ctrl+Z works."""
        if all(mask is None for mask in run.masks.values()):  # nothing found: no layer, no label
            self._say(self.session.summary(run, time.perf_counter() - run.started))
            return
        if labels is None:
            labels = self.viewer.add_labels(np.zeros(run.source.shape, np.uint32),
                                            name=f"editseg {run.source.layer.name}",
                                            **_layers.transform_kwargs(run.source.layer))
            self.labels.value = labels.name
        self._watch(labels)
        self.session.paint(run, labels)
        self._explain(run)
        self._show_record(run)
        self.viewer.layers.selection.active = labels
        self._say(self.session.summary(run, time.perf_counter() - run.started))

    def _show_record(self, run: Run) -> None:
        record = _layers.records(run.labels).get(run.label_id)
        self.record_view.setPlainText(record_text(record) if record else "")

    def _watch(self, labels: Labels) -> None:
        """Keep the label table in step with undo, redo and erasing."""
        if id(labels) not in self._watched:
            self._watched.add(id(labels))
            labels.events.set_data.connect(lambda _=None: self.session.sync(labels))
            labels.events.paint.connect(lambda _=None: self.session.sync(labels))

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

    # -- instant re-score: threshold, quantiles, clicks — no UNet forward -----------------
    def rescore(self, _=None) -> None:
        """Re-score the last run with the controls and clicks; a stack's in a worker."""
        run = self.session.run
        if run is None or run.labels is None or run.labels not in self.viewer.layers:
            return
        if self._worker is not None:  # coalesce: one more re-score when this one ends
            self._pending_rescore = True
            return
        if run.label_id not in self.session.present(run.labels):
            self._say("The last run was undone or erased: press Segment for a new one.")
            return
        self.session.begin_gesture(run.labels)
        self._gesture_timer.start()
        settings = self.setting_values(rescore_only=True)
        clicks = self._clicks(run.source)
        start = time.perf_counter()

        def done(results):
            self.session.apply(run, dict(results), clicks)
            self._explain(run)
            self._show_record(run)
            self._say(self.session.summary(run, time.perf_counter() - start))

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
        """A Points layer over the image: positive / negative clicks (T toggles) refine or segment alone."""
        def add(image):
            points = self.viewer.add_points(
                np.zeros((0, _layers.spatial_ndim(image))), name=CLICKS_LAYER, size=8,
                features={"positive": np.zeros(0, bool)}, face_color="positive",
                face_color_cycle={True: "lime", False: "magenta"}, **_layers.transform_kwargs(image),
            )
            points.events.data.connect(self._clicks_changed)
            points.bind_key("t", lambda _layer: self.toggle_polarity(), overwrite=True)

        if self._prompt_layer(CLICKS_LAYER, add, "add", "Click on the image: positive clicks include, negative "
                              "exclude (T toggles). With no expression, Segment uses the clicks alone."):
            self._set_click_polarity()

    def toggle_polarity(self) -> None:
        self.polarity.value = NEGATIVE if self.polarity.value == POSITIVE else POSITIVE

    def _set_click_polarity(self, _=None) -> None:
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
        """The chosen Labels layer as a TIFF and its labels' records as a JSON sidecar beside it."""
        name = self.labels.value
        if name in (None, NEW_LAYER) or name not in self.viewer.layers:
            self._say("Choose a labels layer to export (after a run it is chosen).", error=True)
            return None
        labels = self.viewer.layers[name]
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export labels", f"{name}.tif", "TIFF (*.tif *.tiff)")
            if not path:
                return None
        present = self.session.present(labels)
        records = [_layers.records(labels)[label] for label in sorted(present) if label in _layers.records(labels)]
        sidecar = write_export(path, np.asarray(labels.data), records)
        self._say(f"Wrote {path} and {sidecar.name} ({len(records)} record(s)); "
                  f"`napari-editseg replay {sidecar.name} --image IMAGE` makes them again.")
        return sidecar

