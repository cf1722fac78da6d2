"""MuonWithAdamW: which parameters get which rule, what a Muon step does, and that it resumes exactly."""
import pytest
import torch
from torch import nn

from text_ldm.utils.muon import MuonWithAdamW, orthogonalize


class TinyNet(nn.Module):
    """Names as in diffusers' UNet: the input / output maps and the timestep projection stay AdamW."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(4, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.time_emb_proj = nn.Linear(16, 8)
        self.attn = nn.Linear(8, 24)
        self.conv_out = nn.Conv2d(8, 4, 3, padding=1)


def _net(seed=0):
    torch.manual_seed(seed)
    return TinyNet()


def _grads(net, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_matrices_and_kernels_get_muon_and_the_rest_adamw():
    net = _net()
    opt = MuonWithAdamW(net.named_parameters())
    muon, adamw = opt.param_groups
    assert muon["muon"] and not adamw["muon"]
    assert set(muon["param_names"]) == {"conv.weight", "attn.weight"}
    assert set(adamw["param_names"]) == {n for n, _ in net.named_parameters()} - {"conv.weight", "attn.weight"}


def test_unnamed_parameters_are_refused_with_the_fix():
    with pytest.raises(TypeError, match="named_parameters"):
        MuonWithAdamW(_net().parameters())


def test_orthogonalize_brings_every_singular_value_near_one():
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(24, 24, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(72, 72, generator=gen))
    spread = torch.logspace(-1, 1, 24)  # singular values over two decades
    for matrix in (u @ torch.diag(spread) @ v[:24], (u @ torch.diag(spread) @ v[:24]).T):
        singular = torch.linalg.svdvals(orthogonalize(matrix, 5))
        assert singular.min() > 0.3 and singular.max() < 1.3  # Muon's iteration: about U V^T, not exact
        assert torch.linalg.svdvals(matrix).max() / torch.linalg.svdvals(matrix).min() > 50


def test_a_muon_step_moves_a_kernel_by_its_orthogonalised_gradient_at_adamw_size():
    net = _net()
    opt = MuonWithAdamW(net.named_parameters(), lr=0.01, weight_decay=0.0, momentum=0.0)
    before = net.conv.weight.detach().clone()
    _grads(net, 1)
    grad = net.conv.weight.grad.clone()
    opt.step()
    step = (before - net.conv.weight.detach()).reshape(8, -1)
    expected = 0.01 * 0.2 * 72 ** 0.5 * orthogonalize(grad.reshape(8, -1), 5)
    torch.testing.assert_close(step, expected)
    # Moonlight's scale: the update's RMS is about AdamW's first step (lr), whatever the gradient's size.
    assert 0.5 < step.pow(2).mean().sqrt().item() / 0.01 / 0.2 < 2.0
    assert net.conv.weight.grad is not None  # gradients are left as found, for whoever logs them


def test_the_adamw_group_takes_torch_adamw_steps():
    ours, reference = _net(), _net()
    opt = MuonWithAdamW(ours.named_parameters(), lr=0.01, weight_decay=0.1)
    ref_params = [p for n, p in reference.named_parameters() if n in opt.param_groups[1]["param_names"]]
    ref_opt = torch.optim.AdamW(ref_params, lr=0.01, weight_decay=0.1)
    for seed in range(3):
        _grads(ours, seed)
        _grads(reference, seed)
        opt.step()
        ref_opt.step()
    for name, p in ours.named_parameters():
        if name in opt.param_groups[1]["param_names"]:
            torch.testing.assert_close(p, dict(reference.named_parameters())[name])


def test_a_reloaded_optimizer_continues_bit_for_bit():
    def run(steps, net, opt):
        for seed in steps:
            _grads(net, seed)
            opt.step()

    straight = _net()
    straight_opt = MuonWithAdamW(straight.named_parameters(), lr=0.01)
    run(range(5), straight, straight_opt)

    first = _net()
    first_opt = MuonWithAdamW(first.named_parameters(), lr=0.01)
    run(range(3), first, first_opt)
    resumed = _net(seed=1)
    resumed.load_state_dict(first.state_dict())
    resumed_opt = MuonWithAdamW(resumed.named_parameters(), lr=0.01)
    resumed_opt.load_state_dict(first_opt.state_dict())
    run(range(3, 5), resumed, resumed_opt)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def _ddp_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    import text_ldm.utils.muon as muon

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    calls = []
    real = muon.orthogonalize
    muon.orthogonalize = lambda matrix, steps: calls.append(matrix.shape) or real(matrix, steps)
    net = _net()
    opt = MuonWithAdamW(net.named_parameters(), lr=0.01)
    for seed in range(3):
        _grads(net, seed)  # the same on every rank, as after DDP's all-reduce
        opt.step()
    torch.save({"weights": net.state_dict(), "calls": len(calls)}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_under_ddp_each_rank_orthogonalises_its_share_and_all_end_with_one_process_weights(tmp_path):
    import torch.multiprocessing as mp

    alone = _net()
    opt = MuonWithAdamW(alone.named_parameters(), lr=0.01)
    for seed in range(3):
        _grads(alone, seed)
        opt.step()
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for rank in ranks:
        for name, weight in alone.state_dict().items():
            assert torch.equal(rank["weights"][name], weight), name
    # two matrices, three steps: one matrix a step on each rank, not both
    assert [rank["calls"] for rank in ranks] == [3, 3]
