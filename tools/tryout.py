"""A newcomer's tryout of the widget in a real napari window, driven with real mouse and key events.

Run under a 1280×800 X display, with ``xdotool`` and ``xclip`` installed::

    xvfb-run -a -s "-screen 0 1280x800x24" python tools/tryout.py OUT_DIR

It starts napari in a second process (``--app``), which docks the plugin through napari's own
plugin path, opens the shapes-world sample and, every 200 ms, writes where the controls are on
the screen and what the widget shows. This process then moves the mouse and types as a person
would (``xdotool``), following issue 23's sequence and the annotator's loop: choose the demo
model in the model list, type "red circle" + Enter, Segment again with Shift+S, drag the
threshold, Ctrl+Z, a negative click, Commit (Shift+C), "green triangle", export through the file
dialog, copy the replay command from the status line (the clipboard, ``xclip``) and run it, then
the delete sequence (a negative click, delete the clicks layer, delete the labels layer, Segment),
Ctrl+Z, Segment again and Commit, every fold open (the dock fits and scrolls to its end), and the
default model with no internet and ``HF_HUB_OFFLINE`` unset (one clear line).
It checks, at every step: no raw exception text in the status line or the terminal, no empty
label, the napari process alive. Screenshots and ``tryout.json`` (every step, its checks, timings)
go to OUT_DIR. Exit 0 when every check holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RAW = ("Traceback", "Errno", "Exception:", "Error drawing", "Segmentation fault")


# -- the napari side -------------------------------------------------------------------------------
def app(out: Path) -> None:
    import faulthandler

    faulthandler.enable()
    import napari
    import numpy as np
    from qtpy.QtCore import QPoint, QTimer
    from qtpy.QtWidgets import QApplication, QScrollArea, QSlider, QStyle, QStyleOptionSlider

    from napari_editseg._objects import TITLE as OBJECTS

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.setGeometry(0, 0, 1280, 800)
    viewer.open_sample("napari-editseg", "shapes")
    _, widget = viewer.window.add_plugin_dock_widget("napari-editseg", "Segment by words")
    qt = viewer.window._qt_viewer
    area = widget.findChild(QScrollArea)

    def where(w) -> list:
        p = w.mapToGlobal(QPoint(0, 0))
        return [p.x(), p.y(), w.width(), w.height(), not w.visibleRegion().isEmpty()]

    def handle(slider) -> list:
        """Where the slider's handle is (a press elsewhere on the groove pages instead of dragging)."""
        option = QStyleOptionSlider()
        slider.initStyleOption(option)
        r = slider.style().subControlRect(QStyle.ComplexControl.CC_Slider, option, QStyle.SubControl.SC_SliderHandle,
                                          slider)
        p = slider.mapToGlobal(r.topLeft())
        return [p.x(), p.y(), r.width(), r.height(), True]

    def dump() -> None:
        rows = {}
        for i in range(qt.layers.model().rowCount()):
            index = qt.layers.model().index(i, 0)
            r = qt.layers.visualRect(index)
            p = qt.layers.viewport().mapToGlobal(r.topLeft())
            rows[qt.layers.model().data(index)] = [p.x(), p.y(), r.width(), r.height(), True]
        labels = [layer for layer in viewer.layers if layer._type_string == "labels"]
        state = {
            "status": widget.status.value, "busy": widget._worker is not None, "model_value": widget.model.value,
            "held_keys": [str(k) for k in qt.canvas._key_map_handler._key_release_generators],
            "focus": type(QApplication.focusWidget()).__name__, "area": where(area),
            "present": {layer.name: sorted(int(k) for k in widget.session.present(layer)) for layer in labels},
            "layers": [layer.name for layer in viewer.layers], "rows": rows,
            "labels": {layer.name: {str(int(v)): int((layer.data == v).sum()) for v in np.unique(layer.data) if v}
                       for layer in labels},
            "records": {layer.name: sorted(int(k) for k in layer.metadata.get("editseg", {})) for layer in labels},
            "threshold": widget.settings["mask_threshold"].value, "window": where(viewer.window._qt_window),
            "dock": where(widget), "scroll": [area.verticalScrollBar().value(), area.verticalScrollBar().maximum()],
            "canvas": where(qt.canvas.native), "delete": where(qt.layerButtons.deleteButton),
            "slider": where(widget.settings["mask_threshold"].native.findChild(QSlider)),
            "handle": handle(widget.settings["mask_threshold"].native.findChild(QSlider)),
            "advanced": where(widget.folds["Advanced: model and settings"]._toggle_btn),
            "status_box": where(widget.status.native),
            "labels_fold": where(widget.folds["Labels, slices and maps"]._toggle_btn),
            "record_fold": where(widget.folds["Record of the current label"]._toggle_btn),
            "labels_fold_open": widget.folds["Labels, slices and maps"].isExpanded(),
            "record_fold_open": widget.folds["Record of the current label"].isExpanded(),
            "last_setting": where(widget.settings["instruction_template"].native),
            "objects_fold": where(widget.folds[OBJECTS]._toggle_btn),
            "objects_fold_open": widget.folds[OBJECTS].isExpanded(),
            "objects_mode_value": widget.objects.panel.objects_mode.value,
            "exemplar_layer_value": widget.objects.panel.exemplar_layer.value,
            "content_fits": area.widget().minimumSizeHint().width() <= area.viewport().width(),
        }
        for name in ("expression", "run_button", "commit_button", "clear_button", "clicks_button", "polarity",
                     "model", "export_button"):
            state[name] = where(getattr(widget, name).native)
        for name in ("objects_mode", "exemplar_layer", "exemplar_ids", "exemplar_size", "objects_button"):
            state[name] = where(getattr(widget.objects.panel, name).native)
        (out / "state.json.tmp").write_text(json.dumps(state))
        os.replace(out / "state.json.tmp", out / "state.json")
        for request in out.glob("*.shot"):
            QApplication.primaryScreen().grabWindow(0).save(str(request.with_suffix(".png")))
            request.unlink()

    timer = QTimer()
    timer.timeout.connect(dump)
    timer.start(200)
    napari.run()


# -- the person ------------------------------------------------------------------------------------
class Person:
    def __init__(self, out: Path, napari: subprocess.Popen):
        self.out, self.napari = out, napari
        self.steps: list[dict] = []

    def state(self, timeout: float = 120) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            try:
                return json.loads((self.out / "state.json").read_text())
            except (OSError, ValueError):
                time.sleep(0.2)
        raise RuntimeError("napari did not start")

    def fresh(self, ready, timeout: float = 10) -> dict:
        """The state once ``ready`` holds for it and the dump after that (row positions move on a deletion)."""
        end = time.time() + timeout
        while not ready(self.state()) and time.time() < end:
            time.sleep(0.05)
        time.sleep(0.25)
        return self.state()

    def xdo(self, *args) -> None:
        subprocess.run(["xdotool", *map(str, args)], check=True)

    def click(self, box, dx: int = 0, dy: int = 0) -> None:
        self.xdo("mousemove", box[0] + box[2] // 2 + dx, box[1] + box[3] // 2 + dy)
        time.sleep(0.3)
        self.xdo("click", 1)
        time.sleep(0.5)

    def key(self, *keys: str) -> None:
        for k in keys:
            self.xdo("key", k)
            time.sleep(0.3)

    def idle(self, timeout: float = 300) -> dict:
        time.sleep(0.8)
        end = time.time() + timeout
        while self.state()["busy"] and time.time() < end:
            time.sleep(0.3)
        time.sleep(0.8)
        return self.state()

    def shoot(self, name: str) -> None:
        (self.out / f"{name}.shot").touch()
        for _ in range(50):
            if (self.out / f"{name}.png").exists():
                return
            time.sleep(0.1)

    def see(self, name: str, control: str) -> None:
        """Scroll the dock with the mouse wheel (over its left margin, where no control takes the wheel)
        until ``control``'s middle, where a click lands, is inside the dock's scroll area."""
        for _ in range(40):
            state = self.state()
            box, area = state[control], state["area"]
            middle = box[1] + box[3] // 2  # where a click lands: it must lie inside the scroll area
            if box[4] and area[1] + 2 <= middle <= area[1] + area[3] - 2:
                return
            self.xdo("mousemove", area[0] + 4, area[1] + area[3] // 2)
            self.xdo("click", 5 if middle > area[1] else 4)  # wheel down, or up
            time.sleep(0.3)
        raise RuntimeError(f"{name}: {control} never came into view")

    def steady(self, control: str, timeout: float = 5) -> list:
        """Where ``control`` is once it stops moving (a scroll or an opening fold has finished)."""
        end, last = time.time() + timeout, None
        while time.time() < end:
            box = self.state()[control]
            if box == last:
                return box
            last = box
            time.sleep(0.3)
        return last

    def check(self, step: str, started: float, **claims: bool) -> dict:
        state = self.state()
        alive = self.napari.poll() is None
        raw = [word for word in RAW if word in state["status"]]
        empty = [f"{layer}:{label}" for layer, records in state["present"].items() for label in records
                 if str(label) not in state["labels"].get(layer, {})]  # what export would write
        claims = {"napari alive": alive, "no raw exception text in the status": not raw,
                  "no recorded label is empty": not empty, **claims}
        self.steps.append({"step": step, "seconds": round(time.time() - started, 1), "status": state["status"],
                           "labels": state["labels"], "checks": claims})
        print(f"{step}: {'ok' if all(claims.values()) else 'FAILED ' + str(claims)} | {state['status']}", flush=True)
        return state


def tryout(out: Path) -> bool:
    log = open(out / "napari.log", "w")
    online = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    napari = subprocess.Popen([sys.executable, __file__, "--app", str(out)], stdout=log, stderr=subprocess.STDOUT,
                              env=online)  # the hub is asked as on a fresh machine: the network decides
    me = Person(out, napari)
    try:
        sequence(me, out)
    except Exception as error:  # a step that could not be done is a failed check, not a traceback
        me.steps.append({"step": "stopped", "error": f"{type(error).__name__}: {error}", "checks": {"ran": False}})
        print(f"stopped: {type(error).__name__}: {error}", flush=True)
    time.sleep(1)
    alive = napari.poll() is None
    if alive:
        napari.terminate()
        napari.wait(30)
    log.close()
    terminal = (out / "napari.log").read_text()
    raw = [word for word in RAW if word in terminal]
    me.steps.append({"step": "end", "checks": {"napari alive at the end": alive,
                                                "no raw exception text in the terminal": not raw}})
    ok = all(all(step.get("checks", {}).values()) for step in me.steps)
    (out / "tryout.json").write_text(json.dumps({"ok": ok, "steps": me.steps}, indent=1))
    print(f"tryout: {'every check holds' if ok else 'FAILED'}; terminal: {raw or 'clean'}")
    return ok


def sequence(me: Person, out: Path) -> None:
    t = time.time()
    s = me.state()
    me.check("napari up, plugin docked, shapes sample open", t, window_fits=s["window"][3] <= 800,
             dock_fits=s["dock"][3] <= 800)
    t = time.time()  # the demo model, from the list, by keyboard
    me.see("model", "advanced")
    me.click(me.state()["advanced"])
    me.see("model", "model")
    me.click(me.state()["model"])  # the list opens; typing jumps to the item, Enter takes it
    me.xdo("type", "--delay", "40", "Shap")
    me.key("Return")
    for _ in range(20):
        if me.state()["model_value"] == "shapes-world-demo":
            break
        time.sleep(0.2)
    s = me.check("demo model chosen in the list", t, chosen=me.state()["model_value"] == "shapes-world-demo")
    me.shoot("tryout-advanced")
    t = time.time()
    me.see("expression", "expression")
    me.click(me.state()["expression"])
    me.xdo("type", "--delay", "60", "red circle")
    me.key("Return")
    s = me.idle()
    first = s["labels"].get("editseg shapes", {}).get("1", 0)
    me.check("'red circle' + Enter", t, label_1_painted=first > 0)
    t = time.time()  # Segment again from the canvas: replaces label 1
    me.click(s["canvas"], 200, 200)
    me.key("shift+s")
    s = me.idle()
    me.check("Shift+S on the canvas: Segment again", t, still_one_label=list(s["labels"]["editseg shapes"]) == ["1"],
             one_record=s["records"]["editseg shapes"] == [1])
    t = time.time()  # drag the threshold 35 px
    me.see("threshold", "slider")
    slider, grip = me.state()["slider"], me.state()["handle"]
    before, threshold = s["labels"]["editseg shapes"].get("1", 0), s["threshold"]
    x = grip[0] + grip[2] // 2  # press on the handle, as a person dragging it does
    me.xdo("mousemove", x, slider[1] + slider[3] // 2)
    me.xdo("mousedown", 1)
    for step in range(1, 8):
        me.xdo("mousemove", x + 5 * step, slider[1] + slider[3] // 2)
        time.sleep(0.1)
    me.xdo("mouseup", 1)
    s = me.idle()
    after = s["labels"]["editseg shapes"].get("1", 0)
    travel = 35 / slider[2]  # the share of the slider's length dragged: about that share of the pixels moves
    me.steps.append({"step": "threshold drag", "pixels before": before, "after": after, "travel": round(travel, 3),
                     "threshold before": threshold, "after_threshold": s["threshold"]})
    me.check("drag the threshold 35 px", t, moved=s["threshold"] != threshold,
             share_moved_in_proportion=abs(after - before) <= (travel + 0.02) * 64 * 64)
    t = time.time()
    me.click(s["canvas"], 200, 200)
    me.key("ctrl+z")
    s = me.idle()
    me.check("Ctrl+Z on the canvas", t, threshold_back=abs(s["threshold"] - threshold) < 1e-6,
             status_follows="Undone to" in s["status"])
    t = time.time()  # a negative click
    me.see("clicks", "clicks_button")
    me.click(me.state()["clicks_button"])
    me.click(me.state()["polarity"])
    me.key("Down", "Return")
    me.click(me.state()["canvas"], -150, -150)
    s = me.idle()
    me.check("a negative click", t, clicks_layer="editseg clicks" in s["layers"])
    t = time.time()
    me.key("shift+c")
    s = me.idle()
    me.shoot("tryout-after-commit")
    me.check("Shift+C: commit label 1", t, committed="committed" in s["status"])
    t = time.time()
    me.see("expression", "expression")
    me.click(me.state()["expression"])
    me.key("ctrl+a")
    me.xdo("type", "--delay", "60", "green triangle")
    me.key("Return")
    s = me.idle()
    me.check("'green triangle' + Enter: the next label", t, label_2="2" in s["labels"]["editseg shapes"],
             label_1_kept="1" in s["labels"]["editseg shapes"])
    me.shoot("tryout-two-labels")
    t = time.time()  # export through the file dialog, copy the replay command, run it
    (out / "export").mkdir(exist_ok=True)
    me.see("export", "export_button")
    me.click(me.state()["export_button"])
    time.sleep(1.5)
    me.key("ctrl+a")
    me.xdo("type", "--delay", "20", str(out / "export" / "shapes-labels.tif"))
    me.key("Return")
    time.sleep(2)
    me.idle()
    command = copy_replay(me)
    s = me.state()
    me.shoot("widget-tryout")
    started = time.time()
    replay = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    me.steps.append({"step": "the copied replay command", "command": command, "exit": replay.returncode,
                     "seconds": round(time.time() - started, 1), "output": replay.stdout + replay.stderr})
    me.check("export, copy the replay command from the status line, run it", t, exported="Replay:" in s["status"],
             replay_exits_0=replay.returncode == 0, identical="identical" in replay.stdout,
             no_hidden_characters="\u200b" not in command)
    delete_sequence(me)
    advanced_open(me)
    objects_like(me)
    default_model_offline(me)


def copy_replay(me: Person) -> str:
    """Select the status line's text with the mouse-free way a person uses (click, Ctrl+A, Ctrl+C) and read
    the clipboard."""
    status = me.fresh(lambda s: "Replay:" in s["status"], timeout=60)["status"]  # a loaded machine writes slowly
    if "Replay:" not in status:
        raise RuntimeError(f"no replay command in the status line after export: {status!r}")
    me.see("status", "status_box")
    me.click(me.state()["status_box"])
    me.key("ctrl+a", "ctrl+c")
    copied = subprocess.run(["xclip", "-o", "-selection", "clipboard"], capture_output=True, text=True).stdout
    if "Replay:" not in copied:  # the click missed the status line: say so, use what it shows
        me.steps.append({"step": "clipboard", "note": "the click did not land on the status line", "copied": copied})
        copied = status
    return copied.split("Replay: ", 1)[1].strip()


def delete_sequence(me: Person) -> None:
    """Issue 23's crash: a negative click, delete the clicks layer, delete the labels layer, Segment."""
    t = time.time()
    me.see("clicks", "clicks_button")
    me.click(me.state()["clicks_button"])
    me.click(me.state()["canvas"], -150, 150)
    for layer in ("editseg clicks", "editseg shapes"):  # the row, then the bin, as fast as a person clicks
        me.click(me.fresh(lambda s: layer in s["rows"])["rows"][layer])
        me.click(me.state()["delete"])
        me.fresh(lambda s: layer not in s["layers"])
    me.see("segment", "run_button")
    me.click(me.state()["run_button"])
    s = me.idle()
    me.check("delete sequence: negative click, delete clicks, delete labels, Segment", t,
             new_labels_layer="1" in s["labels"].get("editseg shapes", {}))
    me.shoot("tryout-after-delete")
    t = time.time()  # Ctrl+Z takes that run back, Shift+S makes it again, Shift+C commits it
    me.click(s["canvas"], 200, 200)
    me.key("ctrl+z")
    s = me.idle()
    me.check("Ctrl+Z after the delete sequence", t, undone=not s["labels"].get("editseg shapes"),
             says_undone="undone" in s["status"])
    t = time.time()
    me.key("shift+s")
    s = me.idle()
    me.key("shift+c")
    s = me.idle()
    me.check("Shift+S, Shift+C: segment again and commit", t, committed="committed" in s["status"],
             label_1="1" in s["labels"].get("editseg shapes", {}))


def objects_like(me: Person) -> None:
    """The objects panel: "more like these labels" from the lowest label of the labels layer, by mouse and
    keyboard. Every painted label must keep its pixels; the status says what was found in one line."""
    t = time.time()
    s = me.state()
    layer = next(iter(s["labels"]))
    before = s["labels"][layer]
    if not s["objects_fold_open"]:
        me.see("objects", "objects_fold")
        me.click(me.state()["objects_fold"])
        me.fresh(lambda state: state["objects_fold_open"])
        time.sleep(1.0)  # the fold opens animated: its controls move until it is done
    me.see("find", "objects_mode")
    me.click(me.steady("objects_mode"))
    me.key("Home", "Down", "Return")  # the second choice: more like these labels
    me.see("exemplars in", "exemplar_layer")
    me.click(me.steady("exemplar_layer"))
    me.key("Home", "Return")
    me.see("exemplar ids", "exemplar_ids")
    me.click(me.steady("exemplar_ids"))
    me.xdo("type", "--delay", "60", min(before, key=int))
    me.see("find objects", "objects_button")
    me.click(me.steady("objects_button"))
    s = me.idle()
    me.shoot("tryout-objects-like")
    after = s["labels"].get(layer, {})
    me.check("objects panel: more like label " + min(before, key=int), t,
             mode_chosen=s["objects_mode_value"] == "more like these labels",
             layer_chosen=s["exemplar_layer_value"] == layer,
             painted_labels_kept=all(after.get(k) == v for k, v in before.items()),
             one_line="\n" not in s["status"].strip(),
             says_what_it_found="object(s) found" in s["status"] or "No object found" in s["status"])


def default_model_offline(me: Person) -> None:
    """The default model (the real one, not on this computer) with no internet and HF_HUB_OFFLINE unset:
    Segment must end in one clear line, with no raw exception text."""
    t = time.time()
    me.see("model", "model")
    me.click(me.state()["model"])
    me.key("Home", "Return")  # the first item: the default model
    time.sleep(0.5)
    me.see("segment", "run_button")
    me.click(me.state()["run_button"])
    s = me.idle()
    me.shoot("tryout-default-model-offline")
    me.check("the default model, no internet: Segment", t, default_chosen=s["model_value"] != "shapes-world-demo",
             one_line="\n" not in s["status"].strip(), says_not_here="not on this computer" in s["status"],
             no_labels_changed=s["labels"] == me.steps[-1]["labels"])


def advanced_open(me: Person) -> None:
    """Every fold open: the dock still fits the 1280×800 screen and scrolls to its last setting."""
    t = time.time()
    s = me.state()
    for fold in ("labels_fold", "record_fold"):
        if not s[fold + "_open"]:
            me.see(fold, fold)
            me.click(me.state()[fold])
    s = me.state()
    me.xdo("mousemove", s["area"][0] + 4, s["area"][1] + s["area"][3] // 2)
    for _ in range(60):
        me.xdo("click", 5)
    time.sleep(0.5)
    s = me.state()
    me.shoot("tryout-advanced-open-bottom")
    me.check("every fold open: the dock fits and scrolls to the end", t, window_fits=s["window"][3] <= 800,
             dock_fits=s["dock"][1] + s["dock"][3] <= 800, scrolls=s["scroll"][1] > 0,
             at_the_end=s["scroll"][0] == s["scroll"][1], last_setting_visible=s["last_setting"][4],
             nothing_cut_at_the_sides=s["content_fits"])


if __name__ == "__main__":
    if sys.argv[1] == "--app":
        app(Path(sys.argv[2]))
    else:
        target = Path(sys.argv[1]).resolve()
        target.mkdir(parents=True, exist_ok=True)
        sys.exit(0 if tryout(target) else 1)

