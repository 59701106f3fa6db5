"""Per-token log-probs and entropies from logits, in float32 and in chunks (a [B, T, V] float32 copy is large)."""

from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """log softmax(z)[y] = z_y - logsumexp(z), float32, over chunks of rows. Shapes [..., V], [...] -> [...]."""
    flat, y = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    out = [
        flat[i : i + chunk_size].float().gather(-1, y[i : i + chunk_size, None]).squeeze(-1)
        - torch.logsumexp(flat[i : i + chunk_size].float(), dim=-1)
        for i in range(0, flat.shape[0], chunk_size)
    ]
    return (torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)).reshape(labels.shape)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """H = logsumexp(z) - sum_v softmax(z)_v z_v, float32, over chunks of rows. Shape [..., V] -> [...]."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    for i in range(0, flat.shape[0], chunk_size):
        z = flat[i : i + chunk_size].float()
        out.append(torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1))
    return (torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)).reshape(logits.shape[:-1])


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) / max(sum(mask), 1), over `dim` or everything."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)
