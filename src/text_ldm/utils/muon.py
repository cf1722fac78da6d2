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

# torch.optim.Muon's quintic Newton-Schulz coefficients (Keller Jordan's).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# Left to AdamW: the input and output maps (Muon's authors' advice), and the layers that see one vector per
# image (timestep and pooled-text embeddings), whose orthogonalisation costs far more than their training.
ADAMW_NAMES = ("conv_in.", "conv_out.", "time_emb", "add_embedding.")


def orthogonalize(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """(A, B) -> (A, B) with singular values near 1: torch.optim.Muon's iteration, in the input's
    dtype. torch's own runs in bf16, which CPUs without bf16 kernels emulate 300x slower."""
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
                for param in group["params"]:
                    if param.grad is not None:
                        self._muon_update(param, group)
                        muon_grads.append((param, param.grad))
                        param.grad = None  # AdamW's step below skips parameters without a gradient
        super().step()
        for param, grad in muon_grads:
            param.grad = grad
        return loss

    def _muon_update(self, param: torch.Tensor, group: dict) -> None:
        state = self.state[param]
        if "momentum_buffer" not in state:
            # AdamW's load_state_dict expects a step count in every state.
            state["step"] = torch.tensor(0.0)
            state["momentum_buffer"] = torch.zeros_like(param)
        state["step"] += 1
        buf = state["momentum_buffer"]
        buf.lerp_(param.grad, 1 - group["momentum"])
        update = param.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
        matrix = update.reshape(update.shape[0], -1)
        orthogonal = orthogonalize(matrix, group["ns_steps"])
        # Moonlight's scale: an orthogonal update's RMS is 1/sqrt(max(A, B)); 0.2 * sqrt(max(A, B)) gives it AdamW's ~0.2.
        scale = 0.2 * math.sqrt(max(matrix.shape))
        lr = float(group["lr"])
        param.mul_(1 - lr * group["weight_decay"])
        param.add_(orthogonal.view_as(param).to(param.dtype), alpha=-lr * scale)
