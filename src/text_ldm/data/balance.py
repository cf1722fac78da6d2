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
    if not power >= 0.0:
        raise ValueError(f"data.balance_power={power} must be >= 0 (0: data frequencies, 1: all equal, "
                         "above 1: the rarer combinations drawn more often than the common ones)")
    return float(power)


def balance_groups(attributes: Sequence | None, power: float | Sequence[float]
                   ) -> tuple[list[list[str]], list[float]]:
    """Config -> (groups, one power per group). `attributes`: names (one group), or a list of name lists."""
    attributes = list(attributes or [])
    if not attributes:
        return [], []
    if all(isinstance(a, str) for a in attributes):
        groups = [attributes]
    elif all(isinstance(a, (list, tuple)) and a and all(isinstance(n, str) for n in a) for a in attributes):
        groups = [list(a) for a in attributes]
    else:
        raise ValueError(f"data.balance_attributes={attributes}: give attribute names, or a list of non-empty "
                         "lists of them (one per group), not a mix")
    powers = list(power) if isinstance(power, (list, tuple)) else [power] * len(groups)
    if len(powers) != len(groups):
        raise ValueError(f"data.balance_power: {len(powers)} powers for {len(groups)} attribute groups; "
                         "give one number, or one per group")
    return groups, [check_balance_power(p) for p in powers]


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
    power 1 draws every combination that occurs equally often, 0 keeps the data's frequencies, and above 1
    the rarer a combination, the more often it is drawn.
    """
    power = check_balance_power(power)
    combos = attribute_combinations(rows, attributes)
    counts = Counter(combos)
    share = np.array([counts[c] / len(combos) for c in combos], dtype=np.float64)
    return share ** -power


def grouped_balance_weights(rows: Sequence[Mapping[str, bool]], groups: Sequence[Sequence[str]],
                            powers: Sequence[float]) -> np.ndarray:
    """(N,) float64 weights: the product over `groups` of each group's attribute_balance_weights at its power.

    Why more than one group: one flat group of three attributes draws every combination equally, which halves
    one rare case's share to give another its own. Two groups that share an attribute ([Male, No_Beard] at 1,
    [Male, Wearing_Lipstick] at 0.5) keep the first balance nearly intact and raise the second case partway.
    The groups' balances interact, so read the resulting shares (combination_shares) rather than predict them.
    """
    if not groups:
        raise ValueError("balance needs at least one group of attribute names")
    weights = np.ones(len(rows), dtype=np.float64)
    for group, power in zip(groups, powers, strict=True):  # balance_groups() names a count mismatch in config terms
        weights *= attribute_balance_weights(rows, group, power)
    return weights


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
