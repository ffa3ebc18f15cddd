"""A published study's printed trainable-parameter counts beside ours, for each method as the study's spec sets it
up (built on PyTorch's meta device): `python -m sweep.inspect study-counts` and tests/test_study_methods.py. The
study itself is data (sweep/references); probing our models for it is the planner's side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweep.plan.spec import load_specs
from sweep.references import PrintedCount, Reference
from trainables.tasks import get_task


def study_settings(spec_path: str | Path) -> dict[tuple[str, str], tuple[str, Any, Any]]:
    """(backbone key, method key) -> (task, backbone entry, method entry) over every arm of a study's spec."""
    settings = {}
    for spec in load_specs(spec_path):
        for backbone in spec.backbones:
            for method in spec.methods_for(backbone):
                settings.setdefault((backbone.key, method.key), (spec.task, backbone, method))
    return settings


def count_table(reference: Reference, spec_path: str | Path, image_size: int = 224) -> list[dict[str, Any]]:
    """Every printed trainable count of the study beside ours, for the method as the study's spec sets it up
    (built on the meta device, the study's head size): how ours reads as the printed number, or the note that
    says why it cannot."""
    settings = study_settings(spec_path)
    rows = []
    for printed in reference.printed_counts().itertuples(index=False):
        backbone, method = reference.ours("backbone", printed.backbone), reference.ours("method", printed.method)
        family_methods = {m for (b, m) in settings if b == backbone}
        if (backbone, method) not in settings:
            rows.append({"study_backbone": printed.backbone, "study_method": printed.method, "backbone": backbone,
                         "method": method, "ours": None, "printed": printed.trainable_params_printed,
                         "reading": None, "note": f"not in the study's spec (its methods: {sorted(family_methods)})"})
            continue
        task, b, m = settings[(backbone, method)]
        probe = get_task(task).probe
        count = PrintedCount.parse(printed.trainable_params_printed)
        note = reference.count_notes.get((printed.backbone, printed.method), {})
        if count.low != count.high:  # a range over the study's head sizes (2, 3 and 7 classes)
            ours = [probe(b.name, m.name, m.knobs, None, image_size, num_classes=k, **b.kwargs).trainable_params
                    for k in (2, 3, 7)]
            reading = next((r for r in map(count.matches, ours) if r), None)
            ours_text = " / ".join(f"{n:,}" for n in ours) + " (2 / 3 / 7 classes)"
            value = ours[1]
        else:
            value = probe(b.name, m.name, m.knobs, None, image_size, num_classes=reference.count_classes,
                          **b.kwargs).trainable_params
            reading = count.matches(value / note.get("scale", 1))
            ours_text = f"{value:,}"
            if note.get("scale") and reading:
                reading = f"{reading}, printed {note['scale']}x too small"
        rows.append({"study_backbone": printed.backbone, "study_method": printed.method, "backbone": backbone,
                     "method": method, "ours": value, "ours_text": ours_text,
                     "knobs": dict(m.knobs), "printed": count.text, "reading": reading,
                     "note": " ".join(str(note.get("why", "")).split())})
    return rows
