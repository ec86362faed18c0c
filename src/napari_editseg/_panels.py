"""The dock's panels, each a small function returning a magicgui container (the napari plugin
template's style), and the few controls magicgui has no widget for.

The widget (:mod:`._widget`) stacks the panels in a scroll area and wires them; nothing here
knows about runs or layers. Controls are named, so ``panel.<name>`` reaches them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    Slider,
    SpinBox,
)
from qtpy.QtCore import Qt
from qtpy.QtGui import QTextOption
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QScrollArea,
    QSizePolicy,
    QTextEdit,
    QWidget,
)

from . import _controls

NEW_LAYER = "<new labels layer>"
NEXT_FREE, SELECTED = "next free label", "the layer's selected label"
CURRENT, ALL, OBJECT = "current slice", "all slices along axis", "all slices as one object"
POSITIVE, NEGATIVE = "positive: include", "negative: exclude"
LOCAL_FOLDER = "local folder…"
KEYS = {"segment": "Shift+S", "commit": "Shift+C", "clear": "Shift+X"}  # on the canvas; see _keys.py


def row(*widgets) -> Container:
    return Container(widgets=list(widgets), layout="horizontal", labels=False)


def prompt_panel(examples: str, samples: str) -> Container:
    """What to segment: the image, the words, a box, clicks."""
    expression = LineEdit(name="expression", label="expression")
    expression.native.setPlaceholderText(f"e.g. {examples}")
    expression.native.setToolTip(f"Describe the object; Enter runs. Empty: the box or clicks alone. "
                                 f"Samples: {samples}.")
    box = PushButton(name="box_button", text="Draw box")
    box.native.setToolTip("Draw a rectangle: the next Segment stays inside it (the last rectangle counts)")
    clicks = PushButton(name="clicks_button", text="Add clicks")
    clicks.native.setToolTip("Click on the image: the current object follows each click at once (no new forward)")
    polarity = ComboBox(name="polarity", label="clicks", choices=[POSITIVE, NEGATIVE])
    polarity.native.setToolTip("T on the clicks layer toggles between include and exclude")
    return Container(widgets=[ComboBox(name="image", label="image"), expression, row(box, clicks), polarity])


def action_panel() -> Container:
    """The annotator's loop: Segment (again replaces the current object), Commit, Clear, Cancel."""
    buttons = {
        "run_button": ("Segment", f"Run the expression, box or clicks ({KEYS['segment']} on the canvas). Again: "
                                  "replaces the current object under the same label."),
        "commit_button": ("Commit", f"Keep the current object under its label; the next Segment starts a new "
                                    f"one ({KEYS['commit']} on the canvas)"),
        "clear_button": ("Clear", f"Take the current object back and clear the box and clicks "
                                  f"({KEYS['clear']} on the canvas)"),
        "cancel_button": ("Cancel", "Stop waiting (Esc): nothing of the run is painted"),
    }
    widgets = []
    for name, (text, tip) in buttons.items():
        button = PushButton(name=name, text=text, enabled=name not in ("cancel_button", "commit_button",
                                                                       "clear_button"))
        button.native.setToolTip(tip)
        widgets.append(button)
    return row(*widgets)


def labels_panel() -> Container:
    """Where the label goes, and which slices."""
    overwrite = CheckBox(name="overwrite", text="overwrite other labels", value=False)
    return Container(widgets=[
        ComboBox(name="labels", label="labels"), ComboBox(name="label_policy", label="new label id",
                                                          choices=[NEXT_FREE, SELECTED]),
        overwrite, ComboBox(name="slices", label="slices", choices=[CURRENT, ALL, OBJECT]),
        SpinBox(name="axis", label="axis", min=0, max=8, value=0),
        CheckBox(name="show_prior", text="show attention prior", value=False),
        CheckBox(name="show_scores", text="show score map", value=False),
    ])


def model_panel(devices: list[str]) -> Container:
    model = ComboBox(name="model", label="model")
    model.native.setToolTip("An editing model: a hub id (downloaded once), a local diffusers folder, or the "
                            "shapes-world demo (in the package, offline; it knows only the shapes sample)")
    return Container(widgets=[model, ComboBox(name="device", label="device", choices=devices),
                              PushButton(name="load_button", text="Load model")])


def control(spec: _controls.Spec):
    """One setting's control, from its row of the table: the plain title, the setting's name in the tooltip."""
    if spec.name == "mask_threshold":
        made = ThresholdControl(spec)
    elif spec.auto:
        made = AutoNumber(spec)
    elif spec.kind == "float":
        made = FloatSlider(min=spec.minimum, max=spec.maximum, step=spec.step, value=spec.default)
    elif spec.kind == "int":
        made = SpinBox(min=spec.minimum, max=spec.maximum, step=spec.step, value=spec.default)
    elif spec.kind == "choice":
        made = ComboBox(choices=spec.choices, value=spec.default)
    elif spec.kind == "bool":
        made = CheckBox(text=spec.title, value=spec.default)
    else:
        made = LineEdit(value=spec.default)
    made.name, made.label = spec.name, spec.title
    made.native.setToolTip(_controls.tooltip(spec))
    return made


class _NumberRow(Container):
    """A row of widgets around one number (``self._number``), whose bounds are the control's."""

    @property
    def min(self) -> float:
        return self._number.min

    @property
    def max(self) -> float:
        return self._number.max


class ThresholdControl(_NumberRow):
    """The mask threshold: an editable number, and a slider that walks the score map's own quantiles, so
    that each step moves the same share of the pixels (0.1 %) wherever the scores crowd."""

    def __init__(self, spec: _controls.Spec):
        self._number = FloatSpinBox(min=spec.minimum, max=spec.maximum, step=spec.step, value=spec.default)
        self._slider = Slider(min=0, max=_controls.SLIDER_STEPS, readout=False)
        self._low, self._high = spec.minimum, spec.maximum
        self._ranked = _controls.ranked_scores(None, self._low, self._high)
        super().__init__(widgets=[self._slider, self._number], layout="horizontal", labels=False)
        self._slider.changed.disconnect()  # the number is the value: the slider only moves it
        self._slider.changed.connect(self._slid)
        self._number.changed.connect(self._typed)
        self._number.native.setToolTip("The score threshold itself (type a value)")
        self._number.native.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.NoButtons)
        self._number.native.setMaximumWidth(64)  # the slider gets the room: one step is a pixel or less
        self._slider.native.setToolTip("Drag: the share of the image's pixels below the threshold (each step "
                                       "0.1 %)")
        self._typed(self._number.value)

    @property
    def value(self) -> float:
        return self._number.value

    @value.setter
    def value(self, value: float) -> None:
        self._number.value = value

    def set_scores(self, scores: Optional[np.ndarray]) -> None:
        """Walk ``scores``' quantiles from now on (None: evenly from min to max); the value stays."""
        self._ranked = _controls.ranked_scores(scores, self._low, self._high)
        self._typed(self._number.value)

    def set_quietly(self, value: float) -> None:
        """Show ``value`` without a re-score (undo puts the controls back)."""
        with self._number.changed.blocked():
            self._number.value = value
        self._typed(value)

    def _slid(self, position: int) -> None:
        self._number.value = min(self._high, max(self._low, _controls.threshold_at(self._ranked, position)))

    def _typed(self, value: float) -> None:
        with self._slider.changed.blocked():
            self._slider.value = _controls.position_of(self._ranked, value)


class AutoNumber(_NumberRow):
    """A setting that is "auto" or a number: a tick box for auto, the number beside it (greyed while auto)."""

    def __init__(self, spec: _controls.Spec):
        number = FloatSpinBox if spec.kind == "float" else SpinBox  # a slider beside the tick box is too wide
        self._auto = CheckBox(text="auto", value=spec.default == _controls.AUTO)
        start = spec.start if spec.default == _controls.AUTO else spec.default
        self._number = number(min=spec.minimum, max=spec.maximum, step=spec.step, value=start)
        super().__init__(widgets=[self._auto, self._number], layout="horizontal", labels=False)
        self.margins = (0, 0, 0, 0)  # a row as tall as the others
        self._auto.changed.connect(self._show)
        self._show()

    @property
    def value(self):
        return _controls.AUTO if self._auto.value else self._number.value

    @value.setter
    def value(self, value) -> None:
        if value != _controls.AUTO:
            self._number.value = value
        self._auto.value = value == _controls.AUTO

    def _show(self, _=None) -> None:
        self._number.enabled = not self._auto.value


class StatusLine:
    """The status: read-only text that wraps anywhere (long paths and ids break without widening the dock
    and without invisible characters), selectable, and exactly as tall as its text."""

    def __init__(self, text: str):
        self.native = _FittedText(readOnly=True)
        self.native.setFrameShape(QFrame.Shape.NoFrame)
        self.native.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        self.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse
                                            | Qt.TextInteractionFlag.TextSelectableByKeyboard)
        self.native.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.native.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.native.viewport().setAutoFillBackground(False)
        self.native.setStyleSheet("QTextEdit { background: transparent; }")
        self.value = text

    @property
    def value(self) -> str:
        return self.native.toPlainText()

    @value.setter
    def value(self, text: str) -> None:
        self.native.setPlainText(text)
        self._fit()

    def set(self, text: str, error: bool = False) -> None:
        self.value = text
        self.native.setToolTip(text)
        self.native.setStyleSheet("QTextEdit { background: transparent; %s}" % ("color: #ff6060; " if error else ""))

    def _fit(self) -> None:
        self.native.fit()


class _FittedText(QTextEdit):
    """A QTextEdit exactly as tall as its wrapped text (it wraps to its own width)."""

    def fit(self) -> None:
        self.document().setTextWidth(self.viewport().width())
        margins = self.contentsMargins()
        self.setFixedHeight(int(self.document().size().height()) + margins.top() + margins.bottom() + 2)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self.fit()


def scrolling(content: QWidget) -> QScrollArea:
    """``content`` in a vertical scroll area: the dock never asks for more height than the screen has."""
    area = QScrollArea()
    area.setWidget(content)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setMinimumHeight(120)
    return area


class ModelList:
    """The model combo box: known hub ids, the demo, local folders the user picked, and *local folder…*.
    Long names are shortened in the middle; each item's tooltip is its whole name."""

    def __init__(self, combo: ComboBox, known: dict[str, str], demo: tuple[str, str], parent: QWidget):
        self.combo, self.parent = combo, parent
        self.named = [(f"{title} ({model})", model) for model, title in known.items()] + [demo]
        self.local: list[str] = []
        combo.choices = self.choices
        self.before = combo.value = self.named[0][1]
        self._tips()
        combo.changed.connect(self._chosen)

    def choices(self, _=None) -> list[tuple[str, str]]:
        named = self.named + [(f"{Path(m).name} ({m})", m) for m in self.local]
        return [(_controls.elide_middle(text), value) for text, value in named] + [(LOCAL_FOLDER, LOCAL_FOLDER)]

    def use(self, model: str) -> None:
        """Offer a local folder (or another id) in the list and choose it."""
        if model not in [value for _, value in self.choices()]:
            self.local.append(model)
            self.combo.reset_choices()
            self._tips()
        self.combo.value = model

    def _tips(self) -> None:
        full = {value: text if value in text else f"{text}: {value}" for text, value in self.named} | {
            m: m for m in self.local}
        for i in range(self.combo.native.count()):
            value = self.combo.native.itemData(i)
            self.combo.native.setItemData(i, full.get(value, str(value)), Qt.ItemDataRole.ToolTipRole)

    def _chosen(self, value) -> None:
        if value == LOCAL_FOLDER:
            folder = QFileDialog.getExistingDirectory(self.parent, "A diffusers model folder (with model_index.json)")
            if folder:
                self.use(folder)
            else:
                self.combo.value = self.before
            return
        self.before = value


def set_quietly(controls: dict, values: dict) -> None:
    """Show ``values`` in the setting controls without a re-score (undo puts the controls back)."""
    for name, value in values.items():
        control = controls.get(name)
        if isinstance(control, ThresholdControl):
            control.set_quietly(value)
        elif control is not None:
            with control.changed.blocked():
                control.value = value


def narrow(panel: Container, characters: int = 8) -> None:
    """Let ``panel`` shrink to the dock's width: a combo box asks for ``characters`` characters, not for its
    longest item (a model id, a layer name), so nothing is cut off at the dock's right edge."""
    for combo in panel.native.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(characters)


def hint(text: str) -> Label:
    label = Label(value=text)
    label.native.setWordWrap(True)
    return label
