"""A lean skip-transcoder trainer: BatchTopK (saved as JumpReLU) or JumpReLU, with AuxK for dead features."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ingest.transcoder import Transcoder


@dataclass
class TrainSettings:
    """Hyper-parameters of one layer's transcoder (the same for every layer of a run)."""

    n_features: int = 4096
    activation: str = "topk"  # topk: BatchTopK in training, a JumpReLU threshold at inference | jumprelu
    k: int = 32  # target active features per token (the L0 target for jumprelu)
    epochs: int = 4
    batch_tokens: int = 512
    lr: float = 5e-3
    aux_k: int = 256
    aux_coefficient: float = 1 / 32
    dead_tokens: int = 10_000  # a feature silent for this many training tokens counts as dead (AuxK revives it)
    bandwidth: float = 0.05  # JumpReLU straight-through bandwidth
    skip: bool = True
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for config.yaml and checkpoints."""
        return asdict(self)


def _rectangle(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x < 0.5)).to(x.dtype)


class _JumpReLU(torch.autograd.Function):
    """x * (x > t), with a straight-through gradient for the threshold (as circuit-tracer and GemmaScope)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, t: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(x, t)
        ctx.bandwidth = bandwidth
        return x * (x > t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, t = ctx.saved_tensors
        g_t = (-(t / ctx.bandwidth) * _rectangle((x - t) / ctx.bandwidth) * grad).sum(0)
        return (x > t) * grad, g_t, None


class _Step(torch.autograd.Function):
    """Heaviside(x - t) with a straight-through gradient for t: the differentiable L0."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, t: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(x, t)
        ctx.bandwidth = bandwidth
        return (x > t).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        x, t = ctx.saved_tensors
        g_t = (-(1.0 / ctx.bandwidth) * _rectangle((x - t) / ctx.bandwidth) * grad).sum(0)
        return None, g_t, None


class SkipTranscoder(nn.Module):
    """y ≈ decode(act(x W_enc + b_enc)) + x W_skip^T + b_dec, on inputs and targets scaled to unit RMS."""

    def __init__(self, d_model: int, s: TrainSettings) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(s.seed)
        w_dec = torch.randn(s.n_features, d_model, generator=g)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(s.n_features))
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        self.W_skip = nn.Parameter(torch.zeros(d_model, d_model)) if s.skip else None
        self.log_threshold = nn.Parameter(torch.full((s.n_features,), math.log(0.1)))
        self.s = s
        self.register_buffer("scale_in", torch.ones(()))
        self.register_buffer("scale_out", torch.ones(()))
        self.register_buffer("batch_threshold", torch.zeros(()))  # BatchTopK: calibrated inference threshold
        self.register_buffer("silent_tokens", torch.zeros(s.n_features))
        self.register_buffer("l0_coefficient", torch.tensor(1e-3))

    @torch.no_grad()
    def initialise(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Scales from the data, W_skip by ridge regression, b_dec as the mean of what the skip leaves."""
        x, y = x.float(), y.float()
        self.scale_in.fill_(x.pow(2).mean().sqrt())
        self.scale_out.fill_(y.pow(2).mean().sqrt())
        xn, yn = x / self.scale_in, y / self.scale_out
        if self.W_skip is not None:
            gram = xn.T @ xn + 1e-2 * len(xn) * torch.eye(xn.shape[1]) / xn.shape[1]
            self.W_skip.copy_(torch.linalg.solve(gram, xn.T @ yn).T)
            yn = yn - xn @ self.W_skip.T
        self.b_dec.copy_(yn.mean(0))
        # Data-driven start: each feature fires on inputs like one sampled token and writes what the skip missed there.
        g = torch.Generator().manual_seed(self.s.seed)
        pick = torch.randint(len(xn), (self.s.n_features,), generator=g)
        mean_x = xn.mean(0)
        enc = xn[pick] - mean_x
        enc /= enc.norm(dim=1, keepdim=True).clamp_min(1e-8)
        dec = yn[pick] - self.b_dec
        dec /= dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.W_enc.copy_(enc.T)
        self.b_enc.copy_(-(mean_x @ enc.T))
        self.W_dec.copy_(dec)

    def pre_activations(self, xn: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations for scaled inputs."""
        return xn @ self.W_enc + self.b_enc

    def threshold(self) -> torch.Tensor:
        """The per-feature inference threshold (the JumpReLU form that is saved)."""
        if self.s.activation == "topk":
            return self.batch_threshold.expand(self.s.n_features).clone()
        return self.log_threshold.exp()

    def decode(self, acts: torch.Tensor, xn: torch.Tensor) -> torch.Tensor:
        """Scaled reconstruction from feature activations (dense (B, F)) and scaled inputs."""
        idx = acts.nonzero()
        if len(idx) > 256 * acts.shape[0]:  # dense (an untrained threshold): a matmul beats gathering rows
            out = acts @ self.W_dec
        else:
            rows, feats = idx[:, 0], idx[:, 1]
            out = torch.zeros(acts.shape[0], self.W_dec.shape[1], dtype=acts.dtype)
            out = out.index_add(0, rows, acts[rows, feats][:, None] * self.W_dec[feats])
        out = out + self.b_dec
        if self.W_skip is not None:
            out = out + xn @ self.W_skip.T
        return out

    def train_acts(self, pre: torch.Tensor) -> torch.Tensor:
        """Training-time activations: BatchTopK over the batch, or JumpReLU."""
        if self.s.activation == "topk":
            relu = torch.relu(pre)
            kth = relu.detach().flatten().topk(self.s.k * pre.shape[0], sorted=False).values.min()
            return relu * (relu >= kth) * (relu > 0)
        return _JumpReLU.apply(pre, self.log_threshold.exp(), self.s.bandwidth)

    @torch.no_grad()
    def calibrate_threshold(self, x: torch.Tensor, chunk: int = 2048) -> float:
        """BatchTopK to JumpReLU: the global threshold that keeps on average k features per token on `x`."""
        if self.s.activation != "topk":
            return float(self.log_threshold.exp().mean())
        tops = []
        for i in range(0, len(x), chunk):
            relu = torch.relu(self.pre_activations(x[i:i + chunk].float() / self.scale_in)).flatten()
            tops.append(relu.topk(min(len(relu), 2 * self.s.k * chunk), sorted=False).values)
        want = self.s.k * len(x)
        values = torch.cat(tops)
        self.batch_threshold.fill_(float(values.topk(min(want, len(values)), sorted=False).values.min()))
        return float(self.batch_threshold)

    def inference_acts(self, pre: torch.Tensor) -> torch.Tensor:
        """Activations exactly as the saved JumpReLU transcoder computes them."""
        t = self.threshold()
        return pre * (pre > t)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss for a batch (original scale in, scaled loss out) and its parts."""
        xn, yn = x.float() / self.scale_in, y.float() / self.scale_out
        pre = self.pre_activations(xn)
        acts = self.train_acts(pre)
        out = self.decode(acts, xn)
        err = yn - out
        var = (yn - yn.mean(0)).pow(2).sum()
        mse = err.pow(2).sum() / var
        total = mse
        fired = (acts > 0).any(0)
        with torch.no_grad():
            self.silent_tokens.add_(len(x)).masked_fill_(fired, 0)
        dead = self.silent_tokens >= self.s.dead_tokens
        parts = {"fvu": float(mse.detach()), "l0": float((acts > 0).sum(1).float().mean())}
        if self.s.activation == "jumprelu":
            l0 = _Step.apply(pre, self.log_threshold.exp(), self.s.bandwidth).sum(1).mean()
            total = total + float(self.l0_coefficient) * l0
            with torch.no_grad():  # steer the sparsity penalty towards the target L0
                self.l0_coefficient.mul_(math.exp(0.01 * (parts["l0"] - self.s.k) / self.s.k))
        if self.s.aux_k and dead.any():
            k_aux = min(self.s.aux_k, int(dead.sum()))
            dead_pre = torch.relu(pre).masked_fill(~dead, 0)
            v, i = dead_pre.topk(k_aux, dim=1)
            aux = torch.zeros_like(pre).scatter(1, i, v)
            aux_out = self.decode(aux, xn) - self.b_dec - (xn @ self.W_skip.T if self.W_skip is not None else 0)
            e = err.detach()
            aux_loss = (e - aux_out).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-9)
            total = total + self.s.aux_coefficient * aux_loss.nan_to_num(0.0)
        return total, parts

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Keep decoder rows at unit norm (the scale lives in the activations)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
        """FVU, mean L0 and the set of features that fired, with the saved (inference) activation."""
        sse, sum_y, sum_y2, l0, n = 0.0, torch.zeros(y.shape[1], dtype=torch.float64), 0.0, 0.0, 0
        fired = torch.zeros(self.s.n_features, dtype=torch.bool)
        for i in range(0, len(x), chunk):
            xb, yb = x[i:i + chunk].float(), y[i:i + chunk].float()
            xn = xb / self.scale_in
            acts = self.inference_acts(self.pre_activations(xn))
            out = self.decode(acts, xn) * self.scale_out
            sse += float((yb - out).pow(2).sum())
            sum_y += yb.double().sum(0)
            sum_y2 += float(yb.double().pow(2).sum())
            l0 += float((acts > 0).sum())
            fired |= (acts > 0).any(0)
            n += len(xb)
        total_var = sum_y2 - float(sum_y.pow(2).sum()) / n
        return {"fvu": sse / total_var, "l0": l0 / n, "dead_fraction": float((~fired).float().mean()),
                "fired": fired}

    @torch.no_grad()
    def export(self, layer: int) -> Transcoder:
        """The trained transcoder in the original scale, as a JumpReLU Transcoder (circuit-tracer's layout)."""
        s_in, s_out = float(self.scale_in), float(self.scale_out)
        return Transcoder(
            layer=layer, W_enc=(self.W_enc / s_in).detach().clone(), b_enc=self.b_enc.detach().clone(),
            W_dec=(self.W_dec * s_out).detach().clone(), activation="jumprelu", threshold=self.threshold().detach(),
            b_dec=(self.b_dec * s_out).detach().clone(),
            W_skip=(self.W_skip * (s_out / s_in)).detach().clone() if self.W_skip is not None else None)
