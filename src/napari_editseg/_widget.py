"""The dock widget: collect input, run the core off the GUI thread, write layers.

Thin by design: the method lives in ``core``; moving data between napari layers and
numpy lives in ``_layers``. This file wires widgets, workers and layer events.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, Label, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QProgressBar, QShortcut, QVBoxLayout, QWidget
from superqt import QCollapsible

from . import _layers
from .cli import SAMPLES
from .core.model import DEFAULT_MODEL
from .core.segmenter import EditSegmenter, Segmentation
from .core.settings import SegmentationSettings

NEW_LAYER = "<new labels layer>"
NEXT_FREE, SELECTED = "next free label per expression", "the layer's selected label"
CURRENT, ALL = "current slice", "all slices along axis"
POSITIVE, NEGATIVE = "positive: include", "negative: exclude"
CLICKS_LAYER, PRIOR_LAYER, SCORES_LAYER = "editseg clicks", "editseg prior", "editseg scores"
EXAMPLES = " · ".join(f"{SAMPLES[n]} ({n})" for n in ("astronaut", "coffee", "chelsea"))


def load_segmenter(model: str, device: str) -> EditSegmenter:
    return EditSegmenter.from_pretrained(model, device=device)


def segment_planes(segmenter: EditSegmenter, planes: list, expression: str, overrides: dict):
    """Worker body: one plane at a time, so a cancel takes effect between planes."""
    for index, plane in planes:
        segmenter.set_image(plane)
        yield index, segmenter.segment(expression, **overrides)


@dataclass
class Run:
    """One expression's results, kept for instant re-threshold and clicks."""

    image: Image
    labels: Labels
    label_id: int
    expression: str
    overwrite: bool
    segmenter: Optional[EditSegmenter] = None
    base: dict = field(default_factory=dict)  # index -> Segmentation from segment()
    current: dict = field(default_factory=dict)  # index -> Segmentation shown now
    written: dict = field(default_factory=dict)  # index -> _layers.Written
    started: float = field(default_factory=time.perf_counter)


class EditSegWidget(QWidget):
    """Type what you see; get an editable label."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._segmenters: dict[tuple[str, str], EditSegmenter] = {}
        self._worker = None
        self._run: Optional[Run] = None
        defaults = SegmentationSettings()

        self.image = ComboBox(label="image", choices=self._image_choices)
        self.expression = LineEdit(label="expression")
        self.expression.native.setPlaceholderText(f"e.g. {EXAMPLES}")
        self.expression.native.setToolTip("Describe the object; Enter runs. Samples: File > Open Sample.")
        self.labels = ComboBox(label="labels", choices=self._labels_choices)
        self.label_policy = ComboBox(label="label id", choices=[NEXT_FREE, SELECTED])
        self.overwrite = CheckBox(text="overwrite other labels", value=False)
        self.slices = ComboBox(label="slices", choices=[CURRENT, ALL])
        self.axis = SpinBox(label="axis", min=0, max=8, value=0)
        self.show_prior = CheckBox(text="show attention prior", value=False)
        self.show_scores = CheckBox(text="show score map", value=False)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.polarity = ComboBox(label="clicks", choices=[POSITIVE, NEGATIVE])
        self.clicks_button = PushButton(text="Add click points")
        self.status = Label(value="Load a model or just press Segment.")

        self.model = LineEdit(label="model", value=DEFAULT_MODEL)
        self.model.native.setToolTip("Hugging Face hub id or a local diffusers folder")
        self.device = ComboBox(label="device", choices=self._devices())
        self.load_button = PushButton(text="Load model")
        self.mask_threshold = FloatSlider(label="mask_threshold", min=0.0, max=1.0, step=0.01,
                                          value=defaults.mask_threshold)
        self.fg_quantile = FloatSlider(label="fg_quantile", min=0.5, max=0.99, step=0.01, value=defaults.fg_quantile)
        self.bg_quantile = FloatSlider(label="bg_quantile", min=0.05, max=0.9, step=0.01, value=defaults.bg_quantile)
        self.temperature = FloatSlider(label="temperature", min=1.0, max=50.0, step=0.5, value=defaults.temperature)
        self.keep = ComboBox(label="keep", choices=["all", "peak"], value=defaults.keep)

        main = Container(widgets=[
            self.image, self.expression, self.labels, self.label_policy, self.overwrite, self.slices, self.axis,
            self.show_prior, self.show_scores, self.polarity, self.clicks_button,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
            self.status,
        ])
        advanced = Container(widgets=[
            self.model, self.device, self.load_button, self.mask_threshold, self.fg_quantile, self.bg_quantile,
            self.temperature, self.keep,
        ])
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        fold = QCollapsible("Advanced: model and settings")
        fold.addWidget(advanced.native)
        layout = QVBoxLayout(self)
        layout.addWidget(main.native)
        layout.addWidget(self.progress)
        layout.addWidget(fold)
        layout.addStretch(1)
        self.status.native.setWordWrap(True)

        self.run_button.changed.connect(self.segment)
        self.expression.native.returnPressed.connect(self.segment)
        self.cancel_button.changed.connect(self.cancel)
        self.load_button.changed.connect(lambda _=None: self.load_model())
        self.clicks_button.changed.connect(self.add_click_points)
        self.polarity.changed.connect(self._set_click_polarity)
        for slider in (self.mask_threshold, self.fg_quantile, self.bg_quantile, self.temperature, self.keep):
            slider.changed.connect(self.rescore)
        self.image.changed.connect(self._show_slice_choices)
        self._show_slice_choices()
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, activated=self.cancel)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.reordered):
            event.connect(self._refresh_choices)

    # -- choices -------------------------------------------------------------------
    def _image_choices(self, _=None):
        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)
                  and layer.name not in (PRIOR_LAYER, SCORES_LAYER)]
        grey = [n for n in images if not self.viewer.layers[n].rgb]
        return images + ([_layers.COMPOSITE] if len(grey) > 1 else [])

    def _labels_choices(self, _=None):
        return [NEW_LAYER] + [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]

    @staticmethod
    def _devices():
        import torch

        return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
            ["mps"] if torch.backends.mps.is_available() else [])

    def _refresh_choices(self, _=None):
        self.image.reset_choices()
        self.labels.reset_choices()
        self._show_slice_choices()

    def _show_slice_choices(self, _=None):
        """Slice options only for images with axes beyond the two displayed ones."""
        name = self.image.value
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        lead = len(_layers.leading_shape(layer)) if layer is not None else 0
        self.slices.visible = self.axis.visible = lead > 0
        self.axis.max = max(0, lead - 1)

    def discrimination_settings(self) -> dict:
        return dict(mask_threshold=self.mask_threshold.value, fg_quantile=self.fg_quantile.value,
                    bg_quantile=self.bg_quantile.value, temperature=self.temperature.value, keep=self.keep.value)

    # -- status --------------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        self.status.value = text
        self.status.native.setStyleSheet("color: #ff6060;" if error else "")

    def _busy(self, busy: bool, steps: int = 0) -> None:
        self.run_button.enabled = self.load_button.enabled = not busy
        self.cancel_button.enabled = busy
        self.progress.setVisible(busy)
        self.progress.setRange(0, steps)  # 0 steps: an indeterminate "busy" bar
        self.progress.setValue(0)

    def _start(self, worker, on_return=None, on_yield=None, steps: int = 0):
        self._worker = worker
        self._busy(True, steps)

        def mine(handler):
            # results of a cancelled worker are dropped: it may finish in the background
            return lambda *value: handler(*value) if self._worker is worker else None

        if on_yield:
            worker.yielded.connect(mine(on_yield))
        if on_return:
            worker.returned.connect(mine(on_return))
        worker.errored.connect(mine(self._failed))
        worker.finished.connect(mine(self._done))
        worker.start()

    def _done(self) -> None:
        self._worker = None
        self._busy(False)

    def _failed(self, error: Exception) -> None:
        """Errors end in the status line (our own ValueErrors/OSErrors say what to fix)."""
        self._done()
        if not isinstance(error, (ValueError, OSError)):
            logging.getLogger(__name__).error("segmentation failed", exc_info=error)
        self._say(f"Error: {' '.join(str(error).split())}", error=True)

    def cancel(self) -> None:
        """Stop waiting now; a forward already under way ends in the background, unseen."""
        if self._worker is None:
            return
        self._worker.quit()
        self._done()
        self._say("Cancelled.")

    # -- model ---------------------------------------------------------------------
    def _key(self) -> tuple[str, str]:
        return self.model.value.strip(), self.device.value

    def load_model(self, then=None) -> None:
        key = self._key()
        if not key[0]:
            self._say("Enter a model: a hub id or a local folder.", error=True)
            return
        if key in self._segmenters:
            self._say(f"Model {key[0]} is loaded.")
            if then:
                then(self._segmenters[key])
            return
        self._say(f"Loading {key[0]} … (the first time downloads the weights)")

        def loaded(segmenter):
            self._segmenters[key] = segmenter
            self._say(f"Model {key[0]} loaded on {segmenter.device}.")
            if then:
                self._worker = None
                then(segmenter)

        self._start(create_worker(load_segmenter, *key, _start_thread=False, _ignore_errors=True), on_return=loaded)

    # -- segment -------------------------------------------------------------------
    def _image_layer(self):
        name = self.image.value
        if name is None:
            raise ValueError("Add an image layer first (or File > Open Sample > napari-editseg).")
        if name == _layers.COMPOSITE:
            images = [layer for layer in self.viewer.layers if isinstance(layer, Image) and not layer.rgb
                      and layer.name not in (PRIOR_LAYER, SCORES_LAYER)]
            return images[0], images
        layer = self.viewer.layers[name]
        if _layers.spatial_ndim(layer) < 2:
            raise ValueError(f"image layer {name!r} has fewer than two spatial axes")
        return layer, None

    def _planes(self, layer, composite):
        axis = self.axis.value if self.slices.value == ALL else None
        indices = _layers.slice_indices(layer, self.viewer.dims.point, axis)
        if composite:
            return [(i, _layers.composite_plane(composite, i)) for i in indices]
        return [(i, _layers.displayed_plane(layer, i)) for i in indices]

    def _labels_layer(self, image) -> Labels:
        if self.labels.value in (None, NEW_LAYER):
            shape = image.data.shape[:_layers.spatial_ndim(image)]
            labels = self.viewer.add_labels(np.zeros(shape, np.uint32), name=f"editseg {image.name}",
                                            **_layers.transform_kwargs(image))
            self.labels.value = labels.name
            self.viewer.layers.selection.active = image
            return labels
        labels = self.viewer.layers[self.labels.value]
        expected = image.data.shape[:_layers.spatial_ndim(image)]
        if labels.data.shape != expected:
            raise ValueError(f"labels layer {labels.name!r} has shape {labels.data.shape}, the image {expected}")
        return labels

    def segment(self, _=None) -> None:
        """Run the expression on the chosen image (current slice or all slices)."""
        if self._worker is not None:
            return
        expression = self.expression.value.strip()
        try:
            if not expression:
                raise ValueError("Type an expression first, e.g. 'the dog on the left'.")
            image, composite = self._image_layer()
            planes = self._planes(image, composite)
            labels = self._labels_layer(image)
        except ValueError as error:
            self._say(str(error), error=True)
            return
        label_id = labels.selected_label if self.label_policy.value == SELECTED else _layers.next_label_id(labels)
        run = Run(image, labels, int(label_id), expression, self.overwrite.value)
        overrides = self.discrimination_settings()

        def start(segmenter):
            run.segmenter = segmenter
            self._run = run
            self._say(f"Segmenting {expression!r} on {len(planes)} slice(s) …")
            worker = create_worker(segment_planes, segmenter, planes, expression, overrides,
                                   _start_thread=False, _ignore_errors=True)
            self._start(worker, on_yield=self._show_plane, on_return=lambda _: self._finished(run),
                        steps=len(planes) if len(planes) > 1 else 0)

        self.load_model(then=start)

    def _show_plane(self, item) -> None:
        index, result = item
        run = self._run
        run.base[index] = result
        self._write(run, index, result)
        if self.progress.maximum():
            self.progress.setValue(len(run.base))

    def _write(self, run: Run, index, result: Segmentation) -> None:
        run.current[index] = result
        run.written[index] = _layers.write_mask(run.labels, index, result.mask, run.label_id, run.overwrite,
                                                replacing=run.written.get(index))
        self._explain(run, result)

    def _finished(self, run: Run) -> None:
        _layers.record_label(run.labels, run.label_id, run.expression, {
            "model": self._key()[0], "slices": len(run.base),
            "mask_threshold": self.mask_threshold.value,
        })
        area = np.mean([r.area for r in run.current.values()])
        skipped = sum(w.skipped for w in run.written.values())
        note = f"; {skipped} pixels of other labels kept (tick overwrite to replace them)" if skipped else ""
        self._say(f"Label {run.label_id} = {run.expression!r}: {area:.1%} of the slice, "
                  f"{time.perf_counter() - run.started:.1f} s{note}. Ctrl+Z undoes.")

    def _explain(self, run: Run, result: Segmentation) -> None:
        """Prior and score maps as image layers over the image (2-D, last two axes)."""
        kwargs = {k: v[-2:] if k in ("scale", "translate") else v
                  for k, v in _layers.transform_kwargs(run.image).items() if k in ("scale", "translate")}
        for show, name, data, colormap in ((self.show_prior.value, PRIOR_LAYER, result.prior, "inferno"),
                                           (self.show_scores.value, SCORES_LAYER, result.scores, "viridis")):
            if not show:
                continue
            if name in self.viewer.layers:
                self.viewer.layers[name].data = data
            else:
                self.viewer.add_image(data, name=name, colormap=colormap, opacity=0.5, blending="additive",
                                      contrast_limits=(0.0, 1.0), **kwargs)
                self.viewer.layers.selection.active = run.labels

    # -- instant re-score: threshold, quantiles, clicks — no UNet forward -----------
    def _clicks(self, run: Run) -> dict:
        """(positive, negative) pixel lists per slice index, from the clicks layer."""
        per_index: dict = {}
        if CLICKS_LAYER not in self.viewer.layers:
            return per_index
        points = self.viewer.layers[CLICKS_LAYER]
        polarity = points.features.get("positive", np.ones(len(points.data), bool))
        for point, positive in zip(points.data, np.asarray(polarity, bool)):
            index, pixel = _layers.world_to_pixel(run.image, points.data_to_world(point))
            if index in run.base and 0 <= pixel[0] < run.base[index].mask.shape[0] \
                    and 0 <= pixel[1] < run.base[index].mask.shape[1]:
                per_index.setdefault(index, ([], []))[0 if positive else 1].append(pixel)
        return per_index

    def rescore(self, _=None) -> None:
        run = self._run
        if run is None or not run.base or self._worker is not None:
            return
        clicks = self._clicks(run)
        settings = self.discrimination_settings()
        for index, base in run.base.items():
            positive, negative = clicks.get(index, ([], []))
            self._write(run, index, run.segmenter.refine(base, positive, negative, **settings))
        self._finished(run)

    def add_click_points(self, _=None) -> None:
        """A Points layer over the image: new points refine the last segmentation."""
        try:
            image, _ = self._image_layer()
        except ValueError as error:
            self._say(str(error), error=True)
            return
        if CLICKS_LAYER not in self.viewer.layers:
            points = self.viewer.add_points(
                np.zeros((0, _layers.spatial_ndim(image))), name=CLICKS_LAYER, size=8,
                features={"positive": np.zeros(0, bool)}, face_color="positive",
                face_color_cycle={True: "lime", False: "magenta"}, **_layers.transform_kwargs(image),
            )
            points.events.data.connect(self._clicks_changed)
        points = self.viewer.layers[CLICKS_LAYER]
        self._set_click_polarity()
        points.mode = "add"
        self.viewer.layers.selection.active = points
        self._say("Click on the image: positive points add, negative points remove (choose above).")

    def _set_click_polarity(self, _=None) -> None:
        if CLICKS_LAYER in self.viewer.layers:
            self.viewer.layers[CLICKS_LAYER].feature_defaults = {"positive": self.polarity.value == POSITIVE}

    def _clicks_changed(self, event) -> None:
        if getattr(event, "action", "added") in ("added", "removed", "changed"):
            self.rescore()
