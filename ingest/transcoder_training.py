"""A lean skip-transcoder trainer: BatchTopK (saved as JumpReLU) or JumpReLU, with AuxK and resampling.

Invariants:
- Inputs and targets are scaled to unit RMS (`scale_in`, `scale_out`); `export()` folds the scales back.
- Decoder rows stay unit-norm after every step, so decoder cosine is the dot product of rows.
- With BatchTopK only B*k of the B*F activations are non-zero: the sparse path computes the dense encoder
  pre-activations once without autograd, then decodes and back-propagates through sparse matrix products
  (CSR @ dense, sampled dense-dense, COO^T @ dense), which costs nnz*d instead of B*F*d.
- Dead features (silent for `dead_tokens` training tokens) and duplicates (decoder cosine above
  `duplicate_cosine` with a lower-numbered feature) are re-sampled at fixed fractions of training, from inputs
  the model reconstructs worst, and their optimiser state is reset.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ingest.transcoder import Transcoder

RESAMPLE_AT = (0.1, 0.25, 0.4, 0.55)  # fractions of training after which dead and duplicate features are re-drawn


@dataclass
class TrainSettings:
    """Hyper-parameters of one layer's transcoder (the same for every layer of a run)."""

    n_features: int = 4096
    activation: str = "topk"  # topk: BatchTopK in training, a JumpReLU threshold at inference | jumprelu
    k: int = 32  # target active features per token (the L0 target for jumprelu)
    epochs: int = 4
    batch_tokens: int = 512
    lr: float = 1e-3
    aux_k: int = 128
    aux_coefficient: float = 1 / 32
    dead_tokens: int = 4096  # a feature silent for this many training tokens counts as dead (AuxK revives it)
    bandwidth: float = 0.05  # JumpReLU straight-through bandwidth
    skip: bool = True
    seed: int = 0
    duplicate_cosine: float = 0.99  # decoder cosine above which a feature is a duplicate and is re-sampled
    resample: bool = True  # re-draw dead and duplicate features at RESAMPLE_AT
    clip_grad: float = 1.0  # gradient-norm clipping per layer and step
    sparse: bool = True  # sparse decode/backward for topk (False: the dense path, kept for benchmarks)

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


@dataclass
class Selection:
    """Active (token, feature) pairs of a batch in CSR order: rows ascending, features ascending per row."""

    crow: torch.Tensor  # (B+1,)
    rows: torch.Tensor  # (nnz,)
    feats: torch.Tensor  # (nnz,)
    vals: torch.Tensor  # (nnz,) pre-activations (all > 0)


def _selection(values: torch.Tensor, feats: torch.Tensor, keep: torch.Tensor) -> Selection:
    """A Selection from per-row candidates (B, c) with a keep mask."""
    order = feats.argsort(dim=1)
    feats, values, keep = feats.gather(1, order), values.gather(1, order), keep.gather(1, order)
    counts = keep.sum(1)
    crow = torch.zeros(len(values) + 1, dtype=torch.long, device=values.device)
    crow[1:] = counts.cumsum(0)
    rows = torch.repeat_interleave(torch.arange(len(values), device=values.device), counts)
    return Selection(crow, rows, feats[keep], values[keep])


class _SparseDecode(torch.autograd.Function):
    """recon = A @ W_dec with A[rows, feats] = (xn @ W_enc^T + b_enc)[rows, feats]; grads reach W_enc, b_enc, W_dec."""

    @staticmethod
    def forward(ctx: Any, vals: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,
                xn: torch.Tensor, crow: torch.Tensor, feats: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(vals, W_dec, xn, crow, feats, rows)
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore")
            a = torch.sparse_csr_tensor(crow, feats, vals, (xn.shape[0], W_dec.shape[0]), check_invariants=False)
        return torch.sparse.mm(a, W_dec)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        vals, W_dec, xn, crow, feats, rows = ctx.saved_tensors
        n_tok, n_feat = xn.shape[0], W_dec.shape[0]
        pattern = torch.sparse_csr_tensor(crow, feats, torch.zeros_like(vals), (n_tok, n_feat),
                                          check_invariants=False)
        g_vals = torch.sparse.sampled_addmm(pattern, grad.contiguous(), W_dec.T.contiguous(), beta=0.0).values()
        idx = torch.stack([feats, rows])
        grad_dec = torch.sparse.mm(torch.sparse_coo_tensor(idx, vals, (n_feat, n_tok), check_invariants=False),
                                   grad)
        grad_enc = torch.sparse.mm(torch.sparse_coo_tensor(idx, g_vals, (n_feat, n_tok), check_invariants=False),
                                   xn)
        grad_b = torch.zeros(n_feat, dtype=g_vals.dtype, device=g_vals.device).index_add_(0, feats, g_vals)
        return None, grad_enc, grad_b, grad_dec, None, None, None, None


def duplicate_mask(W_dec: torch.Tensor, threshold: float = 0.99, chunk: int = 1024) -> torch.Tensor:
    """(F,) bool: features whose decoder direction has cosine > threshold with a lower-numbered feature."""
    w = W_dec.float()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-8)
    n = len(w)
    out = torch.zeros(n, dtype=torch.bool, device=w.device)
    for i in range(0, n, chunk):
        cos = w[i:i + chunk] @ w[:i + chunk].T  # only lower-numbered partners matter
        rows = torch.arange(i, min(i + chunk, n), device=w.device)
        cos[rows[:, None] <= torch.arange(cos.shape[1], device=w.device)[None, :]] = -1.0
        out[i:i + chunk] = (cos > threshold).any(1)
    return out


def _distinct_rows(x: torch.Tensor) -> torch.Tensor:
    """Indices of rows of x with distinct values (first of each), via a random projection as the key."""
    key = x.float() @ torch.randn(x.shape[1], generator=torch.Generator().manual_seed(1)).to(x.device)
    _, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(x), dtype=torch.long, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(x), device=x.device), reduce="amin")
    return first.sort().values


class SkipTranscoder(nn.Module):
    """y ≈ decode(act(x W_enc^T + b_enc)) + x W_skip^T + b_dec, on inputs and targets scaled to unit RMS.

    W_enc is kept as (F, d_model) rows here (fast row access); export() writes circuit-tracer's layout.
    """

    def __init__(self, d_model: int, s: TrainSettings) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(s.seed)
        w_dec = torch.randn(s.n_features, d_model, generator=g)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(s.n_features))
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        self.W_skip = nn.Parameter(torch.zeros(d_model, d_model)) if s.skip else None
        self.log_threshold = nn.Parameter(torch.full((s.n_features,), math.log(0.1)))
        self.s = s
        self.register_buffer("scale_in", torch.ones(()))
        self.register_buffer("scale_out", torch.ones(()))
        self.register_buffer("mean_in", torch.zeros(d_model))
        self.register_buffer("batch_threshold", torch.zeros(()))  # BatchTopK: calibrated inference threshold
        self.register_buffer("silent_tokens", torch.zeros(s.n_features))
        self.register_buffer("l0_coefficient", torch.tensor(1e-3))
        self.max_pre: torch.Tensor | None = None  # set by calibrate_threshold

    @torch.no_grad()
    def initialise(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Scales from the data, W_skip by ridge regression, b_dec as the mean of what the skip leaves."""
        x, y = x.float(), y.float()
        self.scale_in.fill_(x.pow(2).mean().sqrt())
        self.scale_out.fill_(y.pow(2).mean().sqrt())
        xn, yn = x / self.scale_in, y / self.scale_out
        if self.W_skip is not None:
            gram = xn.T @ xn + 1e-2 * len(xn) * torch.eye(xn.shape[1], device=xn.device) / xn.shape[1]
            self.W_skip.copy_(torch.linalg.solve(gram, xn.T @ yn).T)
            yn = yn - xn @ self.W_skip.T
        self.b_dec.copy_(yn.mean(0))
        self.mean_in.copy_(xn.mean(0))
        # Data-driven start: each feature fires on inputs like one sampled token and writes what the skip missed
        # there. Tokens are drawn among distinct inputs, so repeated text cannot seed identical features.
        distinct = _distinct_rows(xn)
        g = torch.Generator().manual_seed(self.s.seed)
        n = self.s.n_features
        pick = distinct[torch.randperm(len(distinct), generator=g)[:n]] if len(distinct) >= n else \
            distinct[torch.randint(len(distinct), (n,), generator=g)]
        enc, dec = self._directions(xn[pick], yn[pick] - self.b_dec)
        self.W_enc.copy_(enc)
        self.b_enc.copy_(-(self.mean_in @ enc.T))
        self.W_dec.copy_(dec)
        # One scale for every encoder row: the least-squares fit of the initial features to the residual.
        sample = xn[:4096]
        feat = self._dense_topk(sample) @ self.W_dec
        resid = yn[:4096] - self.b_dec
        c = float((feat * resid).sum() / feat.pow(2).sum().clamp_min(1e-12))
        if math.isfinite(c) and c > 0:
            self.W_enc.mul_(c)
            self.b_enc.mul_(c)

    def _directions(self, xn: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = xn - self.mean_in
        enc = enc / enc.norm(dim=1, keepdim=True).clamp_min(1e-8)
        dec = residual / residual.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return enc, dec

    def pre_activations(self, xn: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations for scaled inputs."""
        return torch.addmm(self.b_enc, xn, self.W_enc.T)

    def threshold(self) -> torch.Tensor:
        """The per-feature inference threshold (the JumpReLU form that is saved)."""
        if self.s.activation == "topk":
            return self.batch_threshold.expand(self.s.n_features).clone()
        return self.log_threshold.exp()

    def _skip(self, xn: torch.Tensor) -> torch.Tensor:
        out = self.b_dec.expand(xn.shape[0], -1)
        return out + xn @ self.W_skip.T if self.W_skip is not None else out

    def decode(self, acts: torch.Tensor, xn: torch.Tensor) -> torch.Tensor:
        """Scaled reconstruction from dense feature activations (B, F) and scaled inputs."""
        return acts @ self.W_dec + self._skip(xn)

    def select(self, pre: torch.Tensor) -> Selection:
        """BatchTopK: the k*B largest positive pre-activations of the batch, from each token's top 2k candidates."""
        c = min(2 * self.s.k, pre.shape[1])
        values, feats = pre.topk(c, dim=1, sorted=False)
        want = min(self.s.k * len(pre), values.numel())
        kth = values.flatten().topk(want, sorted=False).values.min()
        return _selection(values, feats, (values >= kth) & (values > 0))

    def train_acts(self, pre: torch.Tensor) -> torch.Tensor:
        """Dense training-time activations: BatchTopK over the batch, or JumpReLU (the non-sparse path)."""
        if self.s.activation == "topk":
            relu = torch.relu(pre)
            kth = relu.detach().flatten().topk(self.s.k * pre.shape[0], sorted=False).values.min()
            return relu * (relu >= kth) * (relu > 0)
        return _JumpReLU.apply(pre, self.log_threshold.exp(), self.s.bandwidth)

    @torch.no_grad()
    def calibrate_threshold(self, x: torch.Tensor, chunk: int = 2048) -> float:
        """BatchTopK to JumpReLU: the global threshold that keeps on average k features per token on `x`.

        Also records each feature's largest pre-activation on `x` (see fired_in_calibration)."""
        self.max_pre = torch.full((self.s.n_features,), -math.inf, device=self.W_enc.device)
        tops = []
        for i in range(0, len(x), chunk):
            pre = self.pre_activations(x[i:i + chunk].float() / self.scale_in)
            self.max_pre = torch.maximum(self.max_pre, pre.max(0).values)
            if self.s.activation == "topk":  # as in training: candidates are each token's 2k largest
                tops.append(torch.relu(pre).topk(min(2 * self.s.k, pre.shape[1]), dim=1, sorted=False).values.flatten())
        if self.s.activation != "topk":
            return float(self.log_threshold.exp().mean())
        want = self.s.k * len(x)
        values = torch.cat(tops)
        self.batch_threshold.fill_(float(values.topk(min(want, len(values)), sorted=False).values.min()))
        return float(self.batch_threshold)

    def fired_in_calibration(self) -> torch.Tensor:
        """(F,) bool: features whose saved activation fires on some input given to calibrate_threshold."""
        return (self.max_pre > self.threshold()).cpu()

    def inference_acts(self, pre: torch.Tensor) -> torch.Tensor:
        """Activations exactly as the saved JumpReLU transcoder computes them."""
        t = self.threshold()
        return pre * (pre > t)

    def _note_fired(self, fired: torch.Tensor, n_tokens: int) -> None:
        with torch.no_grad():
            self.silent_tokens.add_(n_tokens).masked_fill_(fired, 0)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss for a batch (original scale in, scaled loss out) and its parts."""
        if self.s.activation == "topk" and self.s.sparse:
            return self._sparse_loss(x, y)
        xn, yn = x.float() / self.scale_in, y.float() / self.scale_out
        pre = self.pre_activations(xn)
        acts = self.train_acts(pre)
        out = self.decode(acts, xn)
        err = yn - out
        mse = err.pow(2).sum() / (yn - yn.mean(0)).pow(2).sum()
        total = mse
        self._note_fired((acts > 0).any(0), len(x))
        parts = {"fvu": float(mse.detach()), "l0": float((acts > 0).sum(1).float().mean())}
        if self.s.activation == "jumprelu":
            l0 = _Step.apply(pre, self.log_threshold.exp(), self.s.bandwidth).sum(1).mean()
            total = total + float(self.l0_coefficient) * l0
            with torch.no_grad():  # steer the sparsity penalty towards the target L0
                self.l0_coefficient.mul_(math.exp(0.01 * (parts["l0"] - self.s.k) / self.s.k))
        dead = self.silent_tokens >= self.s.dead_tokens
        if self.s.aux_k and dead.any():
            k_aux = min(self.s.aux_k, int(dead.sum()))
            v, i = torch.relu(pre).masked_fill(~dead, 0).topk(k_aux, dim=1)
            aux = torch.zeros_like(pre).scatter(1, i, v)
            total = total + self.s.aux_coefficient * self._aux_loss(err.detach(), aux @ self.W_dec)
        return total, parts

    @staticmethod
    def _aux_loss(e: torch.Tensor, aux_out: torch.Tensor) -> torch.Tensor:
        return ((e - aux_out).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-9)).nan_to_num(0.0)

    def _decode_selection(self, sel: Selection, xn: torch.Tensor) -> torch.Tensor:
        return _SparseDecode.apply(sel.vals, self.W_enc, self.b_enc, self.W_dec, xn, sel.crow, sel.feats, sel.rows)

    def _sparse_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        xn, yn = x.float() / self.scale_in, y.float() / self.scale_out
        with torch.no_grad():
            pre = self.pre_activations(xn)
            sel = self.select(pre)
        err = yn - (self._decode_selection(sel, xn) + self._skip(xn))
        mse = err.pow(2).sum() / (yn - yn.mean(0)).pow(2).sum()
        total = mse
        fired = torch.zeros(self.s.n_features, dtype=torch.bool, device=xn.device)
        fired[sel.feats] = True
        self._note_fired(fired, len(x))
        parts = {"fvu": float(mse.detach()), "l0": len(sel.feats) / len(x)}
        dead = (self.silent_tokens >= self.s.dead_tokens).nonzero().flatten()
        if self.s.aux_k and len(dead):
            with torch.no_grad():
                v, i = pre[:, dead].topk(min(self.s.aux_k, len(dead)), dim=1, sorted=False)
                aux_sel = _selection(v, dead[i], v > 0)
            if len(aux_sel.feats):
                total = total + self.s.aux_coefficient * self._aux_loss(err.detach(),
                                                                        self._decode_selection(aux_sel, xn))
        return total, parts

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Keep decoder rows at unit norm (the scale lives in the activations)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def resample(self, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, seed: int) -> dict[str, int]:
        """Re-draw dead and duplicate features from the batch inputs reconstructed worst; reset their Adam state."""
        dead = self.silent_tokens >= self.s.dead_tokens
        dup = duplicate_mask(self.W_dec, self.s.duplicate_cosine)
        redo = (dead | dup).nonzero().flatten()
        counts = {"dead": int(dead.sum()), "duplicate": int((dup & ~dead).sum())}
        if not len(redo):
            return counts
        xn, yn = x.float() / self.scale_in, y.float() / self.scale_out
        if self.s.activation == "topk":
            recon = self._decode_selection(self.select(self.pre_activations(xn)), xn) + self._skip(xn)
        else:
            recon = self.decode(self.inference_acts(self.pre_activations(xn)), xn)
        err = yn - recon
        weight = err.pow(2).sum(1)
        g = torch.Generator().manual_seed(seed)
        pick = torch.multinomial(weight.cpu() + 1e-12, len(redo), replacement=len(redo) > len(weight), generator=g)
        pick = pick.to(xn.device)
        enc, dec = self._directions(xn[pick], err[pick])
        alive = ~(dead | dup)
        norm = self.W_enc[alive].norm(dim=1).median() if alive.any() else torch.tensor(1.0)
        self.W_enc[redo] = enc * norm
        self.b_enc[redo] = -(self.mean_in @ (enc * norm).T)
        self.W_dec[redo] = dec
        self.silent_tokens[redo] = 0
        for p in (self.W_enc, self.W_dec, self.b_enc, self.log_threshold):
            state = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][redo] = 0
        return counts

    def _dense_topk(self, xn: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(xn)
        sel = self.select(pre)
        return torch.zeros_like(pre).index_put_((sel.rows, sel.feats), sel.vals)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096, features: bool = True
                 ) -> dict[str, Any]:
        """FVU, mean L0 and the features that fired, with the saved (inference) activation; skip-only if not features."""
        sse, sum_y, sum_y2, l0, n = 0.0, torch.zeros(y.shape[1], dtype=torch.float64), 0.0, 0.0, 0
        fired = torch.zeros(self.s.n_features, dtype=torch.bool)
        for i in range(0, len(x), chunk):
            xb, yb = x[i:i + chunk].float(), y[i:i + chunk].float()
            xn = xb / self.scale_in
            if features:
                acts = self.inference_acts(self.pre_activations(xn))
                out = self.decode(acts, xn) * self.scale_out
                l0 += float((acts > 0).sum())
                fired |= (acts > 0).any(0).cpu()
            else:
                out = self._skip(xn) * self.scale_out
            sse += float((yb - out).pow(2).sum())
            sum_y += yb.double().sum(0).cpu()
            sum_y2 += float(yb.double().pow(2).sum())
            n += len(xb)
        total_var = sum_y2 - float(sum_y.pow(2).sum()) / n
        return {"fvu": sse / total_var, "l0": l0 / n, "dead_fraction": float((~fired).float().mean()),
                "fired": fired}

    @torch.no_grad()
    def export(self, layer: int) -> Transcoder:
        """The trained transcoder in the original scale, as a JumpReLU Transcoder (circuit-tracer's layout)."""
        s_in, s_out = float(self.scale_in), float(self.scale_out)
        return Transcoder(
            layer=layer, W_enc=(self.W_enc.T / s_in).detach().cpu().clone(), b_enc=self.b_enc.detach().cpu().clone(),
            W_dec=(self.W_dec * s_out).detach().cpu().clone(), activation="jumprelu",
            threshold=self.threshold().detach().cpu(), b_dec=(self.b_dec * s_out).detach().cpu().clone(),
            W_skip=(self.W_skip * (s_out / s_in)).detach().cpu().clone() if self.W_skip is not None else None)
