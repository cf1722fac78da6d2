"""Attribute-balanced training draws: the weights, the resumable sampler that uses them, the data module."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from test_datamodule import _datamodule
from text_ldm.data.balance import attribute_balance_weights, balance_groups, combination_shares, grouped_balance_weights
from text_ldm.data.celeba_layout import read_attributes
from text_ldm.data.resumable import ResumableDataLoader, ResumableSampler

# 60 % common-common, 30 % and 10 % rarer combinations of two attributes
ROWS = ([{"A": True, "B": True}] * 6 + [{"A": True, "B": False}] * 3 + [{"A": False, "B": False}]) * 10


def test_power_one_draws_every_combination_equally_and_zero_keeps_the_data():
    flat = combination_shares(ROWS, ["A", "B"], attribute_balance_weights(ROWS, ["A", "B"], 1.0))
    assert all(drawn == pytest.approx(1 / 3) for _, drawn in flat.values())
    assert {c: round(d, 6) for c, (d, _) in flat.items()} == {(False, False): 0.1, (True, False): 0.3,
                                                              (True, True): 0.6}
    assert np.array_equal(attribute_balance_weights(ROWS, ["A", "B"], 0.0), np.ones(len(ROWS)))
    half = combination_shares(ROWS, ["A", "B"], attribute_balance_weights(ROWS, ["A", "B"], 0.5))
    root = {c: np.sqrt(d) for c, (d, _) in half.items()}
    assert all(drawn == pytest.approx(root[c] / sum(root.values())) for c, (_, drawn) in half.items())
    # above 1 the order flips: the rarest combination is drawn most, in proportion to share ** (1 - power)
    over = combination_shares(ROWS, ["A", "B"], attribute_balance_weights(ROWS, ["A", "B"], 1.5))
    inverse_root = {c: d ** -0.5 for c, (d, _) in over.items()}
    assert all(drawn == pytest.approx(inverse_root[c] / sum(inverse_root.values())) for c, (_, drawn) in over.items())
    assert over[(False, False)][1] > over[(True, False)][1] > over[(True, True)][1]


def test_bad_balance_settings_are_named():
    with pytest.raises(ValueError, match="unknown \\['C'\\]"):
        attribute_balance_weights(ROWS, ["A", "C"])
    with pytest.raises(ValueError, match="balance_power"):
        attribute_balance_weights(ROWS, ["A"], -0.5)
    with pytest.raises(ValueError, match="at least one"):
        attribute_balance_weights(ROWS, [])
    with pytest.raises(ValueError, match="non-negative"):
        ResumableSampler(list(range(3)), weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="3 finite"):
        ResumableSampler(list(range(3)), weights=[1.0, 1.0])


# A and C independent (each 80 / 20), so balancing each alone should flatten both marginals at once
INDEPENDENT = [{"A": a, "C": c} for a in [True] * 4 + [False] for c in [True] * 4 + [False]]


def _marginal(rows, weights, name: str) -> float:
    return float(sum(w for r, w in zip(rows, weights) if r[name]) / np.sum(weights))


def test_groups_multiply_their_balances():
    one = grouped_balance_weights(ROWS, [["A", "B"]], [0.5])
    assert np.array_equal(one, attribute_balance_weights(ROWS, ["A", "B"], 0.5))
    both = grouped_balance_weights(INDEPENDENT, [["A"], ["C"]], [1.0, 1.0])
    assert _marginal(INDEPENDENT, both, "A") == pytest.approx(0.5)
    assert _marginal(INDEPENDENT, both, "C") == pytest.approx(0.5)
    partial = grouped_balance_weights(INDEPENDENT, [["A"], ["C"]], [1.0, 0.5])
    assert _marginal(INDEPENDENT, partial, "A") == pytest.approx(0.5)
    assert _marginal(INDEPENDENT, partial, "C") == pytest.approx(2 / 3)  # 0.8 ** 0.5 : 0.2 ** 0.5


def test_balance_config_reads_names_or_groups_and_names_its_mistakes():
    assert balance_groups(None, 1.0) == ([], [])
    assert balance_groups(["A", "B"], 0.5) == ([["A", "B"]], [0.5])
    assert balance_groups([["A", "B"], ["A", "C"]], 1.0) == ([["A", "B"], ["A", "C"]], [1.0, 1.0])
    assert balance_groups([["A", "B"], ["A", "C"]], [1.0, 0.5]) == ([["A", "B"], ["A", "C"]], [1.0, 0.5])
    with pytest.raises(ValueError, match="not a mix"):
        balance_groups(["A", ["B"]], 1.0)
    with pytest.raises(ValueError, match="not a mix"):
        balance_groups([["A"], []], 1.0)
    with pytest.raises(ValueError, match="2 powers for 1 attribute groups"):
        balance_groups(["A", "B"], [1.0, 0.5])
    with pytest.raises(ValueError, match="balance_power"):
        balance_groups([["A"], ["B"]], [1.0, -1.0])


def _epoch(sampler: ResumableSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_weighted_sampler_is_reproducible_per_epoch_and_follows_the_weights():
    weights = attribute_balance_weights(ROWS, ["A", "B"])
    sampler = ResumableSampler(list(range(len(ROWS))), seed=4, weights=weights)
    assert _epoch(sampler, 0) == _epoch(sampler, 0) and _epoch(sampler, 0) != _epoch(sampler, 1)
    draws = [i for epoch in range(200) for i in _epoch(sampler, epoch)]
    assert len(draws) == 200 * len(ROWS)
    rare = sum(1 for i in draws if not ROWS[i]["A"]) / len(draws)
    assert rare == pytest.approx(1 / 3, abs=0.02)  # 0.10 unweighted; 200 x 100 draws: sd ~0.003


def test_ranks_split_one_weighted_draw_between_them():
    weights = np.arange(1.0, 11.0)
    ranks = [ResumableSampler(list(range(10)), seed=1, weights=weights) for _ in range(2)]
    for rank, sampler in enumerate(ranks):
        sampler.num_replicas, sampler.rank = 2, rank
        sampler.num_samples, sampler.total_size = 5, 10
    single = ResumableSampler(list(range(10)), seed=1, weights=weights)
    whole = _epoch(single, 3)
    assert _epoch(ranks[0], 3) == whole[0::2] and _epoch(ranks[1], 3) == whole[1::2]


def test_weighted_loader_resumes_mid_epoch_with_the_remaining_batches():
    data = torch.arange(40)
    weights = np.linspace(1.0, 5.0, 40)
    straight = ResumableDataLoader(data, batch_size=4, seed=2, weights=weights)
    straight.sampler.set_epoch(1)
    batches = [b.tolist() for b in straight]
    resumed = ResumableDataLoader(data, batch_size=4, seed=2, weights=weights)
    resumed.load_state_dict({"epoch": 1, "batches": 3})
    resumed.sampler.set_epoch(1)
    assert [b.tolist() for b in resumed] == batches[3:]
    assert resumed.state_dict() == {"epoch": 1, "batches": 10}


def test_datamodule_draws_the_rare_combination_more_often(tmp_path, tiny_vq_dir):
    dm = _datamodule(tmp_path, tiny_vq_dir, balance_attributes=["Male", "Wearing_Lipstick"])
    dm.prepare_data()
    dm.setup("fit")
    _, table = read_attributes(dm.layout.attribute_path)
    ids = dm.layout.split_ids("train")
    combos = [(table[i]["Male"], table[i]["Wearing_Lipstick"]) for i in ids]
    loader = dm.train_dataloader()
    drawn = Counter()
    for epoch in range(300):
        loader.sampler.set_epoch(epoch)
        drawn.update(combos[i] for i in loader.sampler)
    shares = {c: n / sum(drawn.values()) for c, n in drawn.items()}
    assert len(set(combos)) >= 2  # the 12 toy faces hold more than one combination
    assert all(s == pytest.approx(1 / len(set(combos)), abs=0.03) for s in shares.values())
    grouped = _datamodule(tmp_path, tiny_vq_dir, balance_attributes=[["Male"], ["Male", "Wearing_Lipstick"]],
                          balance_power=[1.0, 0.5])
    grouped.setup("fit")
    rows = [table[i] for i in ids]
    expected = attribute_balance_weights(rows, ["Male"]) * attribute_balance_weights(rows, ["Male", "Wearing_Lipstick"], 0.5)
    assert np.allclose(grouped.train_weights, expected)
    with pytest.raises(ValueError, match="unknown"):
        dm2 = _datamodule(tmp_path, tiny_vq_dir, balance_attributes=["Wears_Cape"])
        dm2.setup("fit")
    with pytest.raises(ValueError, match="mode=latents"):
        _datamodule(tmp_path, None, mode="images", autoencoder=None, cache_dir=None, balance_attributes=["Male"])
