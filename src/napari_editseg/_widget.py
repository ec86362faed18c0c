"""The dock widget: panels from :mod:`._panels` in a scroll area, wired to the Qt-free
:class:`~._runstate.Session`, which holds everything remembered between presses.

The annotator's loop (micro-sam's "current object → commit"): Segment paints the current
object; Segment again, clicks and the re-score sliders replace it under the same label;
Commit keeps it and the next Segment starts a new label; Clear takes it back. Canvas keys
(:mod:`._keys`): Shift+S, Shift+C, Shift+X. Model loading, runs and stack re-scores run off
the GUI thread; the widget keeps no reference to a layer that left the viewer.
"""

from __future__ import annotations

import shlex
import weakref
from pathlib import Path
from typing import Optional

import numpy as np
from magicgui.widgets import Container, PushButton
from napari.layers import Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QFileDialog, QPlainTextEdit, QProgressBar, QShortcut, QVBoxLayout, QWidget
from superqt import QCollapsible

from . import _controls, _keys, _layers, _objects, _panels, hub
from ._layers import BOX_LAYER, CLICKS_LAYER, OVERLAYS, PRIOR_LAYER, SCORES_LAYER  # noqa: F401 (the API)
from ._panels import ALL, CURRENT, LOCAL_FOLDER, NEGATIVE, NEW_LAYER, NEXT_FREE, POSITIVE, SELECTED  # noqa: F401
from ._runflow import RunFlow
from ._runstate import Prompt, Session, Source
from ._workers import WorkerSlot, export_labels, load_steps, message, record_text
from .core.names import DEMO_MODEL
from .samples import SAMPLE_MENU, SAMPLES

DEMO_TITLE = "Shapes demo (offline)"  # short: the model list is narrow; the tooltip says more
DOCK_WIDTH = 380  # pixels; long messages wrap inside it instead of widening the dock
GESTURE_MS = 500  # re-scores closer together than this are one undo step
LABELS_PLANE_BUDGET = 2 * 2**30  # bytes of one uint32 labels plane the dock paints in memory (16384² is 1 GiB)
EXAMPLES = " · ".join(f"{SAMPLES[n].expression} ({n})" for n in ("astronaut", "coffee", "chelsea"))


def canvas_current(viewer) -> None:
    """Make the viewer's canvas the current OpenGL context. napari 0.9 removes a layer's visual and then
    calls ``context.finish()``, which runs vispy's queued GL commands (the deletions of the layer's
    textures and buffers) at once, in whatever context is current: after clicks in the layer list that
    is not the canvas's, and deleting a points (or shapes) layer and then a labels (or image) layer
    through the layer list segfaults in the next draw (docs/plugin.md, tools/napari_delete_crash.py)."""
    from qtpy.QtOpenGLWidgets import QOpenGLWidget

    window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    for canvas in window.findChildren(QOpenGLWidget) if window is not None else ():
        if type(canvas).__module__.startswith("vispy"):  # the viewer's canvas (vispy's Qt backend)
            canvas.makeCurrent()


class EditSegWidget(RunFlow, QWidget):
    """Type what you see, or box it, or click it; get an editable, undoable, replayable label."""

    def __init__(self, napari_viewer):
        super().__init__()
        # napari hands a plugin's widget the viewer inside a PublicOnlyProxy, which wraps every layer it
        # returns in a new proxy: "is" and weak references to layers (the current object, the run's target)
        # would never match (Segment again then painted nothing and the canvas keys found no widget); the
        # widget's reads of the window's Qt parts would also warn as private access
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.session = Session()
        self.slot = WorkerSlot(self._busy)
        self._watched: weakref.WeakSet = weakref.WeakSet()
        self._build()
        self._connect()
        _keys.register(self, self.viewer)

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
        self.models = _panels.ModelList(self.model, hub.KNOWN_MODELS, (DEMO_TITLE, DEMO_MODEL), self)
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
        advanced = Container(widgets=[model, _panels.hint("Settings (the setting's name is in each tooltip):"),
                                      *others])
        for panel in (prompt, where, advanced):
            _panels.narrow(panel)
        for title, inside in (("Labels, slices and maps", where.native), ("Record of the current label",
                              self.record_view), ("Advanced: model and settings", advanced.native)):
            self.folds[title] = fold = QCollapsible(title)
            fold.addWidget(inside)
            layout.addWidget(fold)
        self.record_fold = self.folds["Record of the current label"]
        self.objects = _objects.ObjectsFlow(self, _objects.objects_panel())  # every object, counted (issue 25)
        _panels.narrow(self.objects.panel)
        self.folds[_objects.TITLE] = fold = QCollapsible(_objects.TITLE)
        fold.addWidget(self.objects.panel.native)
        layout.addWidget(fold)
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
                             (self.image.changed, self._show_slices),
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
        return _layers.image_choices(self.viewer)

    def _labels_choices(self, _=None):
        return [NEW_LAYER] + _layers.labels_names(self.viewer)

    def _model_choices(self, _=None):
        return self.models.choices()

    def use_model(self, model: str) -> None:
        """Offer a local folder (or another id) in the model list and choose it."""
        self.models.use(model)

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

    def _layer_leaving(self, event) -> None:
        """A layer is about to leave the viewer: no gesture, object or handler keeps it; and the canvas's
        OpenGL context is made current, because napari (0.9) then flushes the layer's GPU deletions with
        ``context.finish()`` in whatever context is current, which segfaulted issue 23's sequence."""
        canvas_current(self.viewer)
        layer = self.viewer.layers[event.index]
        self.session.forget(layer)
        if layer.name == CLICKS_LAYER:
            layer.events.data.disconnect(self._clicks_changed)

    # -- status ---------------------------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        self.status.set(text, error)

    def _busy(self, busy: bool, steps: int = 0) -> None:
        self.run_button.enabled = self.load_button.enabled = self.export_button.enabled = not busy
        self.commit_button.enabled = self.clear_button.enabled = not busy and self.session.run is not None
        self.cancel_button.enabled = busy
        self.progress.setVisible(busy)
        self.progress.setRange(0, steps)  # 0 steps: an indeterminate "busy" bar
        self.progress.setValue(0)

    # -- segment ---------------------------------------------------------------------------
    def _image_layer(self) -> Source:
        name = self.image.value
        if name is None:
            raise ValueError(f"Add an image layer first (or {SAMPLE_MENU}).")
        if name == _layers.COMPOSITE:
            grey = [layer for layer in _layers.images(self.viewer) if not layer.rgb]
            return Source(grey[0], grey)
        layer = self.viewer.layers[name]
        if _layers.spatial_ndim(layer) < 2:
            raise ValueError(f"image layer {name!r} has fewer than two spatial axes")
        return Source(layer)

    def _labels_layer(self, source: Source) -> Optional[Labels]:
        """The chosen Labels layer, or None for a new one (created when the run succeeds)."""
        plane = int(np.prod(source.shape[-2:], dtype=np.int64)) * np.dtype(np.uint32).itemsize
        if plane > LABELS_PLANE_BUDGET:
            raise ValueError(
                f"One labels plane of this image takes {plane / 2**30:.1f} GiB and the dock paints labels in memory "
                f"(at most {LABELS_PLANE_BUDGET / 2**30:.0f} GiB a plane): for an image this size run "
                "'napari-editseg segment IMAGE EXPRESSION --tile -o labels.zarr' (labels written tile by tile) "
                "and open labels.zarr in napari.")
        if self.labels.value in (None, NEW_LAYER):
            return None
        labels = self.viewer.layers[self.labels.value]
        if labels.data.shape != source.shape:
            raise ValueError(f"labels layer {labels.name!r} has shape {labels.data.shape}, the image {source.shape}")
        return labels

    def _prompt(self, source: Source) -> Prompt:
        prompt = Prompt(self.expression.value.strip(), _layers.prompt_box(self.viewer, source.layer),
                        self._clicks(source), self.setting_values())
        if not prompt.expression and prompt.box is None and not any(c[0] for c in prompt.clicks.values()):
            raise ValueError("Type an expression first, e.g. 'the dog on the left' (or draw a box, or add "
                             "positive clicks).")
        return prompt

    def _clicks(self, source: Source) -> dict:
        return _layers.prompt_clicks(self.viewer, source.layer, source.shape[-2:])

    # -- the annotator's loop: commit and clear -------------------------------------------------
    def commit(self, _=None) -> None:
        """Keep the current object under its label; clear the box and clicks; the next run is a new label."""
        if self._worker is not None:
            return
        run = self.session.commit()
        _layers.clear_prompts(self.viewer)
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
        _layers.clear_prompts(self.viewer)
        self._busy(False)
        self._say("Cleared: no current object." if run is None else
                  f"Label {run.label_id} taken back (Ctrl+Z brings it back); box and clicks cleared.")

    # -- prompts: clicks and a box -----------------------------------------------------------
    def _prompt_layer(self, name: str, add, mode: str, hint: str) -> bool:
        """A prompt layer (clicks or box) over the chosen image, in its drawing mode and selected."""
        try:
            source = self._image_layer()
        except ValueError as error:
            self._say(str(error), error=True)
            return False
        if name not in self.viewer.layers:
            add(self.viewer, source.layer)
        layer = self.viewer.layers[name]
        layer.mode = mode
        self.viewer.layers.selection.active = layer
        self._say(hint)
        return True

    def add_click_points(self, _=None) -> None:
        """Positive / negative clicks (T toggles) refine the current object; alone, Segment starts from them."""
        if self._prompt_layer(CLICKS_LAYER, lambda viewer, image: _layers.add_clicks_layer(
                viewer, image, self._clicks_changed, self.toggle_polarity), "add",
                "Click on the image: positive clicks include, negative exclude (T toggles); the current object "
                "follows each click. With no expression, Segment uses the clicks alone."):
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
        self._prompt_layer(BOX_LAYER, _layers.add_box_layer, "add_rectangle",
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
