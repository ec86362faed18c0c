"""How much of what the model knows does the one-step prior read?

    python -m benchmarks.shapes_world.faithfulness            # every member with saved test results
    python -m benchmarks.shapes_world.faithfulness --doc-only

Per member, on the first 100 held-out test scenes (the edit check's): the object the model's own full
20-step edit changes most (its grounding, as ``population.edit_check`` counts it) against the object
the default prior lies on (``population_eval``'s saved row for the default). If the prior read all the
model knows, it would be on the named object wherever the edit is; where the edit is wrong the model
does not know, and no reading of one forward can be expected to. Writes the doc section
"prior-and-edit" of docs/shapes-world.md and per-scene results beside population_eval's.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.docsection import replace_section
from benchmarks.shapes_world.grounding_probe import bootstrap
from benchmarks.shapes_world.population import MEMBERS, report_order, title, world_module
from benchmarks.shapes_world.population_eval import CURRENT_ROW, DOC, RESULTS, results_path

SCENES = 100


def edits(member) -> list[bool]:
    """Per scene: does the model's full edit change the named object most?"""
    import torch

    from benchmarks.shapes_world.probes import edited_object, load_pipeline

    torch.set_num_threads(1)
    world = world_module(member.world)
    pipe = load_pipeline(str(member.checkpoint))
    return [edited_object(pipe, s, i) == s.index for i, s in enumerate(world.held_out(SCENES, world.TEST_SEEDS))]


def summary(edit: list[bool], prior: list[bool]) -> dict:
    e, p = np.asarray(edit, bool), np.asarray(prior[:len(edit)], bool)
    return {"edit": 100 * e.mean(), "prior": 100 * p.mean(), "prior | edit right": 100 * p[e].mean(),
            "prior | edit wrong": 100 * p[~e].mean(),
            # the prior right wherever the edit is, as now elsewhere: what reading the model fully would give
            "read fully": 100 * (e.mean() + (~e).mean() * p[~e].mean()),
            "prior | edit right [95 %]": bootstrap(100.0 * p[e])}


def write_doc(saved: dict) -> None:
    lines = ["<!-- measured:prior-and-edit:start -->",
             "Written by `python -m benchmarks.shapes_world.faithfulness`: the first "
             f"{SCENES} held-out test scenes of each member; the prior is the default's (`{CURRENT_ROW}`). "
             "Chance is 39 %.", "",
             "| member | full edit on the named object | default prior on it | prior on it where the edit is "
             "right [95 %] | where the edit is wrong | the prior right wherever the edit is |",
             "|---|---|---|---|---|---|"]
    for name in report_order(saved):
        s = summary(saved[name]["edit"], saved[name]["prior"])
        low, high = s["prior | edit right [95 %]"]
        lines.append(f"| {title(name)} | {s['edit']:.0f} % | {s['prior']:.0f} % | {s['prior | edit right']:.0f} % "
                     f"[{low:.0f}, {high:.0f}] | {s['prior | edit wrong']:.0f} % | {s['read fully']:.0f} % |")
    lines.append("<!-- measured:prior-and-edit:end -->")
    replace_section(DOC, "prior-and-edit", "\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--doc-only", action="store_true")
    args = parser.parse_args(argv)
    path = RESULTS / "prior-and-edit.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    if not args.doc_only:
        for name, member in MEMBERS.items():
            if name in saved or not results_path(name, "test").exists():
                continue
            prior = json.loads(results_path(name, "test").read_text())["rows"][CURRENT_ROW]["own"][:SCENES]
            saved[name] = {"edit": edits(member), "prior": prior}
            path.write_text(json.dumps(saved) + "\n")
            print(name, summary(saved[name]["edit"], prior), flush=True)
    write_doc(saved)


if __name__ == "__main__":
    main()
