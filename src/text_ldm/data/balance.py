"""Sampling weights that flatten the joint distribution of a few attributes over the training set.

Why: a conditional model learns a rare combination (a woman without lipstick is 10 % of the toy faces, a
man without a beard 10 %) from few examples, and draws the common look for the sex whatever the caption
says. Drawing the rare combinations more often gives the caption's negation more gradient. Captions that
do not state an attribute then see the re-weighted, not the data's, frequencies of it.
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np


def check_balance_power(power: float) -> float:
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"data.balance_power={power} must be in [0, 1] (0: data frequencies, 1: all equal)")
    return float(power)


def attribute_combinations(rows: Sequence[Mapping[str, bool]], attributes: Sequence[str]) -> list[tuple[bool, ...]]:
    """Each row's values of `attributes`, in that order. Names a missing attribute in the error."""
    if not attributes:
        raise ValueError("balance needs at least one attribute name")
    known = set(rows[0]) if rows else set()
    unknown = [a for a in attributes if a not in known]
    if unknown:
        raise ValueError(f"data.balance_attributes: unknown {unknown}; the attribute file has {sorted(known)}")
    return [tuple(bool(row[a]) for a in attributes) for row in rows]


def attribute_balance_weights(rows: Sequence[Mapping[str, bool]], attributes: Sequence[str],
                              power: float = 1.0) -> np.ndarray:
    """(N,) float64 weights, row i's = (share of rows with row i's combination of `attributes`) ** -power.

    Under these weights a combination with share p is drawn in proportion to p ** (1 - power):
    power 1 draws every combination that occurs equally often, 0 keeps the data's frequencies.
    """
    power = check_balance_power(power)
    combos = attribute_combinations(rows, attributes)
    counts = Counter(combos)
    share = np.array([counts[c] / len(combos) for c in combos], dtype=np.float64)
    return share ** -power


def combination_shares(rows: Sequence[Mapping[str, bool]], attributes: Sequence[str],
                       weights: np.ndarray) -> dict[tuple[bool, ...], tuple[float, float]]:
    """{combination: (share in the data, share of weighted draws)}, for the log line at setup."""
    combos = attribute_combinations(rows, attributes)
    total = float(np.sum(weights))
    shares: dict[tuple[bool, ...], list[float]] = {}
    for combo, weight in zip(combos, weights):
        entry = shares.setdefault(combo, [0.0, 0.0])
        entry[0] += 1 / len(combos)
        entry[1] += float(weight) / total
    return {c: (data, drawn) for c, (data, drawn) in sorted(shares.items())}
