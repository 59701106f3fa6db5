"""The output layer fused with the token log-prob and entropy, chunk by chunk: the [N, vocab] logits are never built.

For hidden states h [N, H], the output layer (W [V, H], optional bias b [V]) and the tokens y [N]:

    z_n = W h_n + b                               logits of token n, float32, one chunk of rows at a time
    log pi(y_n) = z_n[y_n] - logsumexp(z_n)
    H_n = -sum_v p_nv log p_nv                    p_n = softmax(z_n)

The forward keeps only the [N] results (and logsumexp); the backward recomputes each chunk's logits and applies

    dL/dz_n = g_logp_n (onehot(y_n) - p_n) - g_H_n p_n (log p_n + H_n)

then dL/dh_n = dL/dz_n W and dL/dW = sum_n dL/dz_n h_n^T (dL/db = sum_n dL/dz_n). Memory for the head is
O(chunk x V) in forward and backward, against about 3.4 x N x V x 4 bytes for the plain head (logits, their float32
copy, and the full-size gradient each slice's backward allocates). Values and gradients equal the plain head's to
float rounding (the matmul is blocked differently).

With matmul_dtype (bfloat16 or float16) the three matmuls (W h, dz W, dz^T h) take their inputs in that dtype, as
autocast would (the weight cast once per call); the logits are turned to float32 before the log-softmax, and dW is
summed over chunks in float32. That is bf16 compute with fp32 softmax, about twice as fast as a float32 head where
the hardware has native bf16, at the price of logits rounded to the compute dtype (as vLLM's own head rounds them).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _acc(weight: Tensor) -> torch.dtype:
    """float32, or float64 for a float64 layer (tests)."""
    return torch.promote_types(weight.dtype, torch.float32)


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, acc: torch.dtype) -> Tensor:
    """Logits of one chunk in `acc`; `weight` is already in the matmul dtype."""
    z = h.to(weight.dtype) @ weight.t()
    if bias is not None:
        z = z + bias
    return z.to(acc)


def _entropy_(z: Tensor) -> Tensor:
    """H = log S - sum_v e_v u_v / S, u = z - max z: never negative, accurate for peaky rows (rl/core/entropy.py).
    Overwrites z with u (one [chunk, V] buffer fewer)."""
    u = z.sub_(z.amax(-1, keepdim=True))
    e = u.exp()
    s = e.sum(-1)
    return s.log() - torch.bmm(e.unsqueeze(1), u.unsqueeze(2)).view(-1) / s


class _FusedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, with_entropy, matmul_dtype):
        n, acc = hidden.shape[0], _acc(weight)
        logp, entropy, lse = (hidden.new_empty(n, dtype=acc) for _ in range(3))
        w = weight.to(matmul_dtype or weight.dtype)
        for s in range(0, n, chunk_size):
            rows = slice(s, s + chunk_size)
            z = _chunk_logits(hidden[rows], w, bias, acc)
            lse[rows] = torch.logsumexp(z, dim=-1)
            logp[rows] = z.gather(-1, targets[rows, None]).squeeze(-1) - lse[rows]
            if with_entropy:
                entropy[rows] = _entropy_(z)
        if not with_entropy:
            entropy.zero_()
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.chunk_size, ctx.with_entropy, ctx.matmul_dtype = chunk_size, with_entropy, matmul_dtype
        ctx.set_materialize_grads(False)  # an output the loss does not use gets None, and no work
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        c = ctx.chunk_size
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        acc, w = _acc(weight), weight.to(ctx.matmul_dtype or weight.dtype)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if ctx.needs_input_grad[1] else None
        grad_b = (torch.zeros(bias.shape, dtype=acc, device=bias.device)
                  if bias is not None and ctx.needs_input_grad[2] else None)
        for s in range(0, hidden.shape[0], c):
            rows = slice(s, s + c)
            h = hidden[rows]
            logp_all = _chunk_logits(h, w, bias, acc).sub_(lse[rows, None])
            p = logp_all.exp()
            # dz = -g_H p (log p + H) - g_logp p + g_logp onehot(y), in place: two [chunk, V] buffers at a time
            if g_entropy is not None and ctx.with_entropy:
                dz = logp_all.add_(entropy[rows, None]).mul_(p).mul_(-g_entropy[rows, None])
            else:
                dz = logp_all.zero_()
            if g_logp is not None:
                gl = g_logp[rows, None].to(p.dtype)
                dz.sub_(p.mul_(gl)).scatter_add_(-1, targets[rows, None], gl)
            del p
            dz_w = dz.to(w.dtype)
            if grad_h is not None:
                grad_h[s : s + c] = (dz_w @ w).to(hidden.dtype)
            if grad_w is not None:  # (without matmul_dtype dW is a float32 product, as dz is)
                grad_w += dz_w.t() @ h.to(w.dtype) if ctx.matmul_dtype else dz.t() @ h.to(acc)
            if grad_b is not None:
                grad_b += dz.sum(0)
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None, None, None)


def fused_logprobs_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                           chunk_size: int = 1024, with_entropy: bool = True,
                           matmul_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """(log pi(y_n), H_n) for hidden states [N, H] under the output layer (weight [V, H], bias [V] or None), both
    float32 [N] (float64 for a float64 layer) and differentiable (module docstring), with at most `chunk_size` rows
    of logits alive at a time. with_entropy=False skips H (zeros). matmul_dtype: the matmuls' input dtype (None:
    the weight's)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _FusedHead.apply(hidden, weight, bias, targets, chunk_size, with_entropy, matmul_dtype)
