"""Muon for the UNet's weight matrices and convolution kernels, AdamW for everything else, as one optimiser.

torch.optim.Muon takes 2-D parameters only; a convolution kernel (out, in, kh, kw) is orthogonalised here
as the (out, in * kh * kw) matrix, as in Keller Jordan's CIFAR-10 speedruns. Biases, norms and the
UNet's first and last convolutions (the model's input and output maps) stay with AdamW, as Muon's
authors advise. Muon's step is scaled to AdamW's update size (torch's `match_rms_adamw`, Moonlight),
so one `lr` and one `weight_decay` serve both kinds, and the LR schedule moves both."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

# torch.optim.Muon's quintic Newton-Schulz coefficients (Keller Jordan's).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# Left to AdamW: the input and output maps (Muon's authors' advice), and the layers that see one vector per
# image (timestep and pooled-text embeddings), whose orthogonalisation costs far more than their training.
ADAMW_NAMES = ("conv_in.", "conv_out.", "time_emb", "add_embedding.")


def orthogonalize(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """(A, B) -> (A, B) with singular values near 1: torch.optim.Muon's iteration, in the input's
    dtype (fp32 here). torch's own runs in bf16, which CPUs without bf16 kernels emulate: 3.3 s instead
    of 0.2 s for unet_demo's matrices on one thread."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.T if matrix.shape[0] > matrix.shape[1] else matrix
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if matrix.shape[0] > matrix.shape[1] else x


def is_muon_parameter(name: str, param: torch.Tensor, adamw_names: Sequence[str]) -> bool:
    return param.ndim >= 2 and not any(part in name for part in adamw_names)


class MuonWithAdamW(torch.optim.AdamW):
    """params: `module.named_parameters()` (names pick the AdamW-only layers). Matrices and kernels
    whose names contain none of `adamw_names` get Muon (momentum, Nesterov, `ns_steps`
    Newton-Schulz iterations); the rest get torch's AdamW with `betas`, `eps`, `fused`."""

    def __init__(self, params: Iterable[tuple[str, torch.nn.Parameter]], lr: float = 1e-3,
                 weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adamw_names: Sequence[str] = ADAMW_NAMES, fused: bool | None = None):
        named = list(params)
        if not named or not all(isinstance(item, tuple) and len(item) == 2 for item in named):
            raise TypeError("MuonWithAdamW needs (name, parameter) pairs: pass module.named_parameters()")
        muon = [item for item in named if is_muon_parameter(*item, adamw_names)]
        adamw = [item for item in named if not is_muon_parameter(*item, adamw_names)]
        if not muon:
            raise ValueError("MuonWithAdamW found no weight matrix to orthogonalise; use torch.optim.AdamW")
        groups = [{"params": muon, "muon": True}]
        if adamw:
            groups.append({"params": adamw, "muon": False})
        super().__init__(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
        for group in self.param_groups:
            group.setdefault("momentum", momentum)
            group.setdefault("nesterov", nesterov)
            group.setdefault("ns_steps", ns_steps)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        muon_grads = []
        for group in self.param_groups:
            if group["muon"]:
                params = [p for p in group["params"] if p.grad is not None]
                self._muon_step(params, group)
                muon_grads += [(p, p.grad) for p in params]
        for param, _ in muon_grads:
            param.grad = None  # AdamW's step below skips parameters without a gradient
        super().step()
        for param, grad in muon_grads:
            param.grad = grad
        return loss

    def _muon_step(self, params: list[torch.Tensor], group: dict) -> None:
        """Under DDP every rank holds the same gradients, so each orthogonalises only its share of the
        matrices and one all-reduce hands every rank all of them: the same numbers as one process,
        1/world of the Newton-Schulz work."""
        if not params:
            return
        directions = [self._momentum_direction(p, group) for p in params]
        world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)
        if world == 1:
            updates = [orthogonalize(d, group["ns_steps"]) for d in directions]
        else:
            owners = share_out([d.shape for d in directions], world)
            flat = torch.zeros(sum(d.numel() for d in directions), device=directions[0].device)
            pieces = list(flat.split([d.numel() for d in directions]))
            for piece, direction, owner in zip(pieces, directions, owners):
                if owner == rank:
                    piece.copy_(orthogonalize(direction, group["ns_steps"]).flatten())
            dist.all_reduce(flat)  # each piece is non-zero on its owner only: the sum is exact
            updates = [piece.view_as(d) for piece, d in zip(pieces, directions)]
        lr = float(group["lr"])
        for param, update in zip(params, updates):
            # Moonlight's scale: an orthogonal (A, B) update has RMS 1/sqrt(max(A, B)); this gives AdamW's ~0.2.
            scale = 0.2 * math.sqrt(max(update.shape))
            param.mul_(1 - lr * group["weight_decay"])
            param.add_(update.view_as(param).to(param.dtype), alpha=-lr * scale)

    def _momentum_direction(self, param: torch.Tensor, group: dict) -> torch.Tensor:
        """Updates the momentum buffer; returns the (out, in * kh * kw) direction to orthogonalise."""
        state = self.state[param]
        if "momentum_buffer" not in state:
            # AdamW's load_state_dict expects a step count in every state.
            state["step"] = torch.tensor(0.0)
            state["momentum_buffer"] = torch.zeros_like(param)
        state["step"] += 1
        buf = state["momentum_buffer"]
        buf.lerp_(param.grad, 1 - group["momentum"])
        direction = param.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
        return direction.reshape(direction.shape[0], -1).float()


def share_out(shapes: Sequence[torch.Size], world: int) -> list[int]:
    """The rank that orthogonalises each matrix: greedily balances Newton-Schulz cost (min(A, B)^2 max(A, B))."""
    load, owners = [0.0] * world, [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: -min(shapes[i]) ** 2 * max(shapes[i])):
        owners[i] = min(range(world), key=load.__getitem__)
        load[owners[i]] += min(shapes[i]) ** 2 * max(shapes[i])
    return owners
