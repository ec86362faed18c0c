"""The dock's objects panel: one label per object, counted — every object the words name, the other
objects like some painted labels, or every region of the image.

Its own module beside the widget: :func:`objects_panel` builds the controls, :class:`ObjectsFlow`
runs them off the GUI thread on the widget's loaded model and image, and :func:`paint_instances`
paints each object as its own new label id in ONE undo step, only where the layer holds no label:
an exemplar or any other painted label is never changed.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, PushButton, SpinBox
from napari.qt.threading import create_worker

from . import _layers
from .core.automatic import parse_label_ids
from .core.settings import SETTING_SPECS

TITLE = "Objects: every one, counted"
WORDS, LIKE, EVERYTHING = "every object the words name", "more like these labels", "every region (no words)"


EXEMPLAR_CONTROLS = ("exemplar_cue", "exemplar_size", "exemplar_colour", "exemplar_regions", "exemplar_granularity")


def objects_panel() -> Container:
    """Which objects to find, the exemplars' layer and ids, and the button."""
    mode = ComboBox(name="objects_mode", label="find", choices=[WORDS, LIKE, EVERYTHING])
    mode.native.setToolTip("Every object the expression names (one label each); the other objects like some "
                           "labels you painted; or every region of the image, no words")
    layer = ComboBox(name="exemplar_layer", label="exemplars in")
    layer.native.setToolTip("The Labels layer holding the exemplars; the objects found go into it, never over "
                            "a painted pixel")
    ids = LineEdit(name="exemplar_ids", label="exemplar ids")
    ids.native.setPlaceholderText("e.g. 3, 7")
    cue_spec = SETTING_SPECS["exemplar_cue"]
    cue = ComboBox(name="exemplar_cue", label="alike by", choices=list(cue_spec.choices), value=cue_spec.default)
    cue.native.setToolTip("What makes an object look like the exemplars: the model's features, the picture's "
                          "colour (or brightness), or both")
    size_spec = SETTING_SPECS["exemplar_size"]
    size = FloatSpinBox(name="exemplar_size", label="size within ×", value=size_spec.default, min=0.0, max=100.0,
                        step=0.5)
    size.native.setToolTip("Keep objects whose area is within this factor of the exemplars' (0: any size)")
    colour = CheckBox(name="exemplar_colour", text="only their colour, where they share one",
                      value=SETTING_SPECS["exemplar_colour"].default)
    colour.native.setToolTip("Where the exemplars share a colour, drop objects of another colour (and anything "
                             "that hardly stands out from its surroundings)")
    regions = CheckBox(name="exemplar_regions", text="also alike regions",
                       value=SETTING_SPECS["exemplar_regions"].default)
    regions.native.setToolTip(SETTING_SPECS["exemplar_regions"].help)
    second_spec, kinds_spec = SETTING_SPECS["exemplar_granularity"], SETTING_SPECS["granularity"]
    second = SpinBox(name="exemplar_granularity", label="2nd kinds", value=second_spec.default,
                     min=second_spec.minimum, max=second_spec.maximum)
    second.native.setToolTip(second_spec.help)
    kinds = SpinBox(name="granularity", label="region kinds", value=kinds_spec.default, min=kinds_spec.minimum,
                    max=kinds_spec.maximum)
    kinds.native.setToolTip(f"{kinds_spec.help}; also the alike regions' first clustering")
    button = PushButton(name="objects_button", text="Find objects")
    button.native.setToolTip("One new label per object, in one undo step (Ctrl+Z takes them all back)")
    return Container(widgets=[mode, layer, ids, cue, size, colour, regions, kinds, second, button])


def paint_instances(layer, index: tuple, instances: np.ndarray) -> list[int]:
    """Instance ``k`` of ``instances`` (ids 1…n, H×W) as a new label id each on plane ``index`` of
    ``layer``, in ONE undo step, only on pixels holding 0; the ids it painted (empty ones skipped)."""
    plane_shape = layer.data.shape[len(index):]
    if instances.shape != plane_shape:
        raise ValueError(f"objects of shape {instances.shape} do not fit the labels plane {plane_shape}")
    free = np.asarray(layer.data[index]) == 0
    first, painted = _layers.next_label_id(layer), []
    with layer.block_history():
        for k in range(1, int(instances.max()) + 1):
            flat = np.flatnonzero((instances == k) & free)
            if flat.size:
                where = tuple(np.full(flat.shape, i) for i in index) + np.unravel_index(flat, plane_shape)
                layer.data_setitem(where, first + len(painted), refresh=False)
                painted.append(first + len(painted))
    layer.refresh()
    return painted


class ObjectsFlow:
    """The panel wired to the widget (its image, expression, labels choice, settings and model)."""

    def __init__(self, widget, panel: Container):
        self.widget, self.panel = widget, panel
        panel.exemplar_layer.choices = lambda _=None: _layers.labels_names(widget.viewer)
        panel.objects_button.changed.connect(self.find)
        events = widget.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(lambda _=None: panel.exemplar_layer.reset_choices())

    def _request(self, source, index: tuple) -> tuple:
        """(mode, expression, exemplars or None, target layer or None); a ValueError says what is missing."""
        widget, mode = self.widget, self.panel.objects_mode.value
        expression = widget.expression.value.strip()
        if mode == WORDS and not expression:
            raise ValueError("Type what to find every object of, e.g. 'nuclei' or 'red circle'.")
        if mode != LIKE:
            return mode, expression, None, widget._labels_layer(source)
        name = self.panel.exemplar_layer.value
        if name is None or name not in widget.viewer.layers:
            raise ValueError("Choose the Labels layer that holds the exemplars.")
        layer = widget.viewer.layers[name]
        if layer.data.shape != source.shape:
            raise ValueError(f"labels layer {name!r} has shape {layer.data.shape}, the image {source.shape}")
        plane = np.array(layer.data[index], copy=True)
        return mode, expression, (plane, parse_label_ids(self.panel.exemplar_ids.value)), layer

    def find(self, _=None) -> None:
        widget = self.widget
        if widget._worker is not None:
            return
        try:
            source = widget._image_layer()
            index = _layers.slice_indices(source.layer, widget.viewer.dims.point, None)[0]
            mode, expression, exemplars, target = self._request(source, index)
        except ValueError as error:
            widget._say(str(error), error=True)
            return
        settings = widget.setting_values()
        settings["granularity"] = self.panel.granularity.value
        like = {name: getattr(self.panel, name).value for name in EXEMPLAR_CONTROLS}

        def start(key):
            segmenter, plane = widget.session.segmenters[key], source.plane(index)

            def work():
                widget.session.set_plane(segmenter, plane)
                if mode == EVERYTHING:
                    return segmenter.segment_everything(**settings)
                if mode == LIKE:
                    return segmenter.segment_like(*exemplars, expression or None, **{**settings, **like})
                return segmenter.segment(expression, instances=True, **settings)

            widget._say("Finding objects …")
            worker = create_worker(work, _start_thread=False, _ignore_errors=True)
            widget._start(worker, on_return=lambda result: self._paint(result, source, index, target))

        widget.load_model(then=start)

    def _paint(self, result, source, index: tuple, target: Optional[object]) -> None:
        widget = self.widget
        if target is not None and target not in widget.viewer.layers:
            widget._say(f"layer {target.name!r} was removed during the run; nothing painted.", error=True)
            return
        if not result.labels.any():
            wider = (", or widen 'size within ×' (0: any size)"
                     + (", or untick 'only their colour'" if result.settings.exemplar_colour else "")
                     if result.exemplar_areas else "")
            widget._say(f"No object found: lower the threshold, or the minimum size (Advanced){wider}.")
            return
        layer = target if target is not None else widget._new_labels(source)
        painted = paint_instances(layer, index, result.labels)
        widget.viewer.layers.selection.active = layer
        if not painted:
            widget._say("Every object found lies on painted labels: nothing painted.")
            return
        span = f"label {painted[0]}" if len(painted) == 1 else f"labels {painted[0]}–{painted[-1]}"
        widget._say(f"{len(painted)} object(s) found, painted as {span} in {layer.name!r} (one undo step: "
                    f"Ctrl+Z takes them back).")
