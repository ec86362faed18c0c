"""Canvas keys for the annotator's loop, registered with napari's action manager so that they are
listed (and can be changed) in napari's Preferences > Shortcuts, under the viewer's key bindings.

The actions are napari-wide; each calls the EditSeg widget docked in the viewer the key was
pressed in.
"""

from __future__ import annotations

import weakref

from ._panels import KEYS

DESCRIPTIONS = {
    "segment": "EditSeg: segment (again: replaces the current object)",
    "commit": "EditSeg: commit the current object (the next run makes a new label)",
    "clear": "EditSeg: clear the current object, the box and the clicks",
}
_WIDGETS: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_REGISTERED: set[str] = set()


def action_name(what: str) -> str:
    return f"napari-editseg:{what}"


def _command(what: str):
    from napari.components import ViewerModel

    def command(viewer: ViewerModel) -> None:
        widget = _WIDGETS.get(id(viewer))
        if widget is not None:
            getattr(widget, what)()

    command.__name__ = f"editseg_{what}"
    return command


def register(widget, viewer) -> None:
    """Route the keys pressed in ``viewer`` to ``widget``; register the actions once per process (a
    shortcut the user changed in the preferences is kept). ``viewer`` is the viewer itself, not napari's
    ``PublicOnlyProxy`` of it (the keys' action gets the viewer itself)."""
    from napari.components import ViewerModel
    from napari.utils.action_manager import action_manager

    _WIDGETS[id(viewer)] = widget
    for what, description in DESCRIPTIONS.items():
        name = action_name(what)
        if name in _REGISTERED:
            continue
        action_manager.register_action(name, _command(what), description, ViewerModel)
        action_manager.bind_shortcut(name, KEYS[what].replace("+", "-"))
        _REGISTERED.add(name)
