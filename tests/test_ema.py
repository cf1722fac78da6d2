"""TrainableEMA: the same EMA as Lightning's stock callback on the trainable weights, nothing on frozen ones."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from text_ldm.callbacks.ema import TrainableEMAModel


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model[0].requires_grad_(False)  # the "frozen encoder"
    return model


def test_matches_torch_ema_on_trainable_and_leaves_frozen_alone():
    decay = 0.9
    model = _model()
    reference = AveragedModel(model, avg_fn=get_ema_avg_fn(decay), use_buffers=False)
    ours = TrainableEMAModel(model, decay)
    frozen_before = copy.deepcopy(ours.module[0].state_dict())
    for step in range(6):
        with torch.no_grad():
            for q in model.parameters():
                if q.requires_grad:
                    q.add_(torch.randn_like(q))
            model[0].weight.add_(1.0)  # a frozen weight that moves anyway must not be averaged
        reference.update_parameters(model)
        ours.update_parameters(model)
    for name in ("1.weight", "1.bias", "2.weight", "2.bias"):
        torch.testing.assert_close(ours.module.state_dict()[name], reference.module.state_dict()[name])
    assert not torch.equal(ours.module[2].weight, model[2].weight)  # it is an average, not a copy
    assert torch.equal(ours.module[0].weight, frozen_before["weight"])
    assert int(ours.n_averaged) == int(reference.n_averaged) == 6
    assert ours.state_dict().keys() == reference.state_dict().keys()  # checkpoint layout unchanged


def test_first_update_copies():
    model = _model()
    ours = TrainableEMAModel(model, 0.999)
    with torch.no_grad():
        model[2].weight.add_(5.0)
    ours.update_parameters(model)
    assert torch.equal(ours.module[2].weight, model[2].weight)
