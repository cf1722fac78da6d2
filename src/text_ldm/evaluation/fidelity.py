"""Attribute-fidelity scores: accuracy of predicted attributes against stated targets, the
majority-class floor, and the table that puts ceiling, samples and floors side by side."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

Scores = dict[str, float | None]  # attribute -> accuracy (None: no prompt states it), plus "mean"


def _with_mean(per_attr: dict[str, float | None]) -> Scores:
    known = [v for v in per_attr.values() if v is not None]
    return {**per_attr, "mean": sum(known) / len(known) if known else None}


def accuracy_vs_targets(predictions: torch.Tensor, targets: Sequence[Mapping[str, bool]],
                        names: Sequence[str]) -> Scores:
    """predictions: (N, A) bool in `names` order; targets[i] holds only the attributes image i's
    prompt states. Each attribute is scored over the images whose prompt states it; the mean is
    over attributes (macro), so frequent attributes do not dominate."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} target sets")
    per_attr: dict[str, float | None] = {}
    for a, name in enumerate(names):
        hits = [bool(predictions[i, a]) == t[name] for i, t in enumerate(targets) if name in t]
        per_attr[name] = sum(hits) / len(hits) if hits else None
    return _with_mean(per_attr)


def accuracy_by_target(predictions: torch.Tensor, targets: Sequence[Mapping[str, bool]],
                       names: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """`accuracy_vs_targets` split by what the prompt says: {name: {"yes": ..., "no": ...}}, so a clause
    whose negation is ignored ("wears no lipstick" drawn with lipstick) shows apart from its positive."""
    split = {}
    for said, key in ((True, "yes"), (False, "no")):
        chosen = [i for i, t in enumerate(targets) if any(v == said for v in t.values())]
        said_only = [{n: v for n, v in targets[i].items() if v == said} for i in chosen]
        scores = accuracy_vs_targets(predictions[chosen], said_only, names) if chosen else {n: None for n in names}
        for name in names:
            split.setdefault(name, {})[key] = scores[name]
    return split


def format_by_target(split: Mapping[str, Mapping[str, float | None]]) -> str:
    """One line: each attribute's accuracy where the prompt says yes / no (%)."""
    return ", ".join(f"{name} {_cell(s['yes']).strip()} / {_cell(s['no']).strip()}" for name, s in split.items())


def majority_values(names: Sequence[str], rows: Mapping[str, Mapping[str, bool]],
                    train_ids: Sequence[str]) -> dict[str, bool]:
    """Each attribute's most frequent value over the training rows (ties -> False)."""
    ids = [i for i in train_ids if i in rows]
    if not ids:
        raise ValueError("no training rows to take majorities from")
    return {n: sum(rows[i][n] for i in ids) * 2 > len(ids) for n in names}


def majority_floor(targets: Sequence[Mapping[str, bool]], majority: Mapping[str, bool],
                   names: Sequence[str]) -> Scores:
    """The score of always guessing each attribute's training majority."""
    guess = torch.tensor([[majority[n] for n in names]] * len(targets), dtype=torch.bool)
    return accuracy_vs_targets(guess.reshape(len(targets), len(names)), targets, names)


def _cell(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:5.1f}"


def format_table(names: Sequence[str], columns: Mapping[str, Scores]) -> str:
    """Attribute rows x score columns (accuracy in %), plus a final macro-mean row."""
    first = max(len("attribute"), *(len(n) for n in names), len("mean"))
    widths = [max(len(c), 5) for c in columns]
    header = "attribute".ljust(first) + "".join(f"  {c:>{w}}" for c, w in zip(columns, widths))
    lines = [header, "-" * len(header)]
    for name in [*names, "mean"]:
        if name == "mean":
            lines.append("-" * len(header))
        cells = "".join(f"  {_cell(col.get(name)):>{w}}" for col, w in zip(columns.values(), widths))
        lines.append(name.ljust(first) + cells)
    return "\n".join(lines)
