"""Registry of editing-model families, keyed on the diffusers pipeline class a model folder
names in its ``model_index.json`` (``"_class_name"``), as segment-anything keys its builders.

Each entry points at an :class:`~napari_editseg.core.backbones.base.EditingModel` subclass as
``"module:Class"`` (a module name starting with "." lies in this package), imported only when a
model of that class is loaded or the families are listed. Each family owns everything particular
to it — its module holds its layout, capture, forward and memory estimate, and its class names the
pipeline components it loads and its known hub ids, which :mod:`napari_editseg.hub` reads from
here. Adding a family is one module and one line here (docs/method.md, "Adding a backbone").
"""

from __future__ import annotations

import importlib

from .base import EditingModel, Layout

BACKBONES: dict[str, str] = {
    "StableDiffusionInstructPix2PixPipeline": ".instruct_pix2pix:InstructPix2Pix",
    "StableDiffusionXLInstructPix2PixPipeline": ".sdxl_instruct_pix2pix:SDXLInstructPix2Pix",
    "FluxKontextPipeline": ".flux_kontext:FluxKontext",
}


class UnknownPipelineError(ValueError):
    """The model is a diffusers pipeline of a class no registered family reads."""


def backbone_for(pipeline_class: str) -> type[EditingModel]:
    """The family that reads models of ``pipeline_class``; a ValueError naming the known ones otherwise."""
    if pipeline_class not in BACKBONES:
        raise UnknownPipelineError(
            f"a {pipeline_class or 'nameless'} pipeline is not an editing model napari-editseg can read; "
            f"it reads {', '.join(sorted(BACKBONES))}"
        )
    module, name = BACKBONES[pipeline_class].split(":")
    return getattr(importlib.import_module(module, package=__name__), name)


def families() -> list[type[EditingModel]]:
    """Every registered family, in registry order."""
    return [backbone_for(pipeline_class) for pipeline_class in BACKBONES]


__all__ = ["BACKBONES", "EditingModel", "Layout", "UnknownPipelineError", "backbone_for", "families"]
