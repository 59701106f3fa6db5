"""Per-token log-probs and entropies from logits, and the masked mean used to report per-token quantities.

Both logit functions compute in float32 over chunks of rows, because a float32 copy of [B, T, V] logits is large.
When gradients are needed, each chunk is recomputed in the backward pass (activation checkpointing), so the float32
copy is never held whole for autograd either. Chunking changes neither values nor gradients.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_ROWS = 1024


def _over_row_chunks(fn: Callable[..., Tensor], rows: Tensor, *per_row: Tensor, chunk_size: int) -> Tensor:
    """fn applied to consecutive chunks of `chunk_size` rows of `rows` [M, V] (and the matching rows of `per_row`)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    recompute = torch.is_grad_enabled() and rows.requires_grad
    out = []
    for start in range(0, rows.shape[0], chunk_size):
        args = (rows[start : start + chunk_size], *(t[start : start + chunk_size] for t in per_row))
        out.append(checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args))
    return torch.cat(out) if out else rows.new_zeros(0, dtype=torch.float32)


def _token_logprobs(z: Tensor, y: Tensor) -> Tensor:
    z = z.float()
    return z.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)


def _entropy(z: Tensor) -> Tensor:
    """H = log S - sum_v e_v u_v / S with u = z - max z (<= 0), e = exp(u), S = sum_v e_v (>= 1), in float32.

    Shifting by the max makes the result independent of a constant offset of the logits, and both terms are >= 0, so
    H >= 0 even for a near-deterministic token. The max is detached: H does not depend on the shift, so the gradient
    is that of the entropy, -p (log p + H).
    """
    u = z.float()
    u = u - u.amax(-1, keepdim=True).detach()
    e = u.exp()
    s = e.sum(-1)
    return s.log() - (e * u).sum(-1) / s


def logprobs_from_logits(logits: Tensor, labels: Tensor, chunk_size: int = DEFAULT_CHUNK_ROWS) -> Tensor:
    """log pi(y) = log_softmax(z)_y = z_y - logsumexp(z), in float32. Shapes [..., V], [...] -> float32 [...]."""
    rows = logits.reshape(-1, logits.shape[-1])
    out = _over_row_chunks(_token_logprobs, rows, labels.reshape(-1), chunk_size=chunk_size)
    return out.reshape(labels.shape)


def entropy_from_logits(logits: Tensor, chunk_size: int = DEFAULT_CHUNK_ROWS) -> Tensor:
    """H(pi) = -sum_v p_v log p_v, in float32 and never negative. [..., V] -> float32 [...].

    Computed as log S - sum_v e_v u_v / S (u = z - max z, e = exp(u), S = sum_v e_v), which is accurate to about
    1e-6 nats against float64 for peaky, offset or near-deterministic logits; the unshifted
    logsumexp(z) - sum_v softmax(z)_v z_v loses up to several nats when the logits carry a large constant offset and
    goes negative for near-deterministic tokens.
    """
    rows = logits.reshape(-1, logits.shape[-1])
    return _over_row_chunks(_entropy, rows, chunk_size=chunk_size).reshape(logits.shape[:-1])


def quantile(values: Tensor, q: float | Sequence[float]) -> Tensor:
    """torch.quantile's default (linear interpolation between the order statistics at (n - 1) q), for a 1-D tensor
    of any size: torch.quantile refuses more than 2^24 elements, which one step of long responses exceeds."""
    qs = torch.as_tensor(q, dtype=torch.float64)
    if values.numel() == 0:
        raise ValueError("quantile of an empty tensor")
    s = values.flatten().sort().values
    pos = qs * (s.numel() - 1)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, torch.tensor(s.numel() - 1))
    frac = (pos - lo).to(s.dtype)
    return torch.lerp(s[lo], s[hi], frac)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(x M) / max(sum(M), 1), over `dim` or over everything."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)
