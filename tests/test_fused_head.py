"""The fused output layer + log-prob + entropy (rl/core/fused_head.py): the plain head's values and gradients, and
memory that grows with the chunk, not with the number of tokens."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from rl.core.fused_head import fused_logprobs_entropy


def _plain(h, w, b, y):
    z = h @ w.t() + (b if b is not None else 0)
    logp_all = torch.log_softmax(z, -1)
    return logp_all.gather(-1, y[:, None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


def _grads(fn, h, w, b, y, g_logp, g_h):
    for t in (h, w, b):
        if t is not None:
            t.grad = None
    logp, ent = fn(h, w, b, y)
    (logp * g_logp + (ent * g_h if g_h is not None else 0)).sum().backward()
    return logp.detach(), ent.detach(), [t.grad.clone() for t in (h, w, b) if t is not None]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("entropy_in_loss", [True, False])
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_values_and_gradients_equal_the_plain_head_in_float64(bias, entropy_in_loss, chunk):
    g = torch.Generator().manual_seed(0)
    n, hid, vocab = 23, 8, 40
    h = torch.randn(n, hid, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hid, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    y = torch.randint(0, vocab, (n,), generator=g)
    g_logp = torch.randn(n, generator=g, dtype=torch.float64)
    g_h = torch.randn(n, generator=g, dtype=torch.float64) if entropy_in_loss else None
    fused = _grads(lambda *a: fused_logprobs_entropy(*a, chunk_size=chunk), h, w, b, y, g_logp, g_h)
    plain = _grads(_plain, h, w, b, y, g_logp, g_h)
    for a, p in zip([fused[0], fused[1], *fused[2]], [plain[0], plain[1], *plain[2]]):
        torch.testing.assert_close(a, p, rtol=1e-12, atol=1e-12)


def test_bfloat16_layer_matches_the_plain_head_to_bfloat16_rounding():
    """A bf16 layer: logits from the bf16 matmul, then float32 (as the learner's plain head did)."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(17, 16, generator=g).bfloat16().requires_grad_()
    w = (torch.randn(64, 16, generator=g) * 0.1).bfloat16().requires_grad_()
    y = torch.randint(0, 64, (17,), generator=g)
    logp, ent = fused_logprobs_entropy(h, w, None, y, chunk_size=4)
    assert logp.dtype == ent.dtype == torch.float32
    ref_logp, ref_ent = _plain(h.float(), w.float(), None, y)
    torch.testing.assert_close(logp, ref_logp, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ent, ref_ent, rtol=2e-2, atol=2e-2)
    logp.sum().backward()
    assert h.grad.dtype == w.grad.dtype == torch.bfloat16 and w.grad.isfinite().all()


@pytest.mark.parametrize("bias", [True, False])
def test_bf16_matmuls_on_float32_weights_are_the_bf16_logits_head(bias):
    """learner.head_autocast: float32 masters, the matmuls' inputs in bf16, softmax and entropy in float32. Values
    equal a plain head fed bf16 logits (to float32 rounding) and differ from the float32 head; the gradients are
    float32 and within bf16 rounding of the float32 head's."""
    g = torch.Generator().manual_seed(3)
    n, hid, vocab = 37, 32, 300
    h = torch.randn(n, hid, generator=g, requires_grad=True)
    w = (torch.randn(vocab, hid, generator=g) * 0.3).requires_grad_()
    b = torch.randn(vocab, generator=g).requires_grad_() if bias else None
    y = torch.randint(0, vocab, (n,), generator=g)
    g_logp, g_h = torch.randn(n, generator=g), torch.randn(n, generator=g)

    def bf16_logits(h, w, b, y):
        z = (h.bfloat16() @ w.bfloat16().t()).float() + (b if b is not None else 0)
        logp_all = torch.log_softmax(z, -1)
        return logp_all.gather(-1, y[:, None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)

    fused = _grads(lambda *a: fused_logprobs_entropy(*a, chunk_size=8, matmul_dtype=torch.bfloat16),
                   h, w, b, y, g_logp, g_h)
    rounded = _grads(bf16_logits, h, w, b, y, g_logp, g_h)
    exact = _grads(_plain, h, w, b, y, g_logp, g_h)
    torch.testing.assert_close(fused[0], rounded[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[1], rounded[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fused[0], exact[0], rtol=1e-5, atol=1e-5)  # the option changes the matmul
    for a, e in zip(fused[2], exact[2]):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, e, rtol=3e-2, atol=3e-2 * e.abs().max().item())


def test_without_entropy_the_log_probs_are_the_same():
    g = torch.Generator().manual_seed(2)
    h, w, y = torch.randn(9, 4, generator=g), torch.randn(11, 4, generator=g), torch.randint(0, 11, (9,), generator=g)
    a, _ = fused_logprobs_entropy(h, w, None, y, chunk_size=3)
    b, ent = fused_logprobs_entropy(h, w, None, y, chunk_size=3, with_entropy=False)
    assert torch.equal(a, b) and not ent.any()


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by tensors created inside the mode (each storage counted once, released when the
    last tensor on it is collected)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._seen:
                    self._seen.add(key)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def _peak_bytes(fn, n: int, hidden: int, vocab: int) -> int:
    g = torch.Generator().manual_seed(3)
    h = torch.randn(n, hidden, generator=g, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, requires_grad=True)
    y = torch.randint(0, vocab, (n,), generator=g)
    with LiveBytes() as mode:
        logp, ent = fn(h, w, None, y)
        (logp.sum() + 0.1 * ent.sum()).backward()
        del logp, ent
    return mode.peak


def test_the_fused_heads_memory_grows_with_the_chunk_not_with_the_tokens():
    """Measured, in forward and backward: the plain head holds [N, V] logits (and more) at its peak; the fused one at
    most a few [chunk, V] float32 buffers beyond the gradients it must return ([N, H] and [V, H])."""
    hidden, vocab, chunk = 16, 4096, 64
    fixed = lambda n: 4 * (n * hidden + vocab * hidden) * 2  # noqa: E731  inputs' gradients (+ one accumulator)
    for n in (1024, 4096):
        fused = _peak_bytes(lambda *a: fused_logprobs_entropy(*a, chunk_size=chunk), n, hidden, vocab)
        plain = _peak_bytes(_plain, n, hidden, vocab)
        logits = 4 * n * vocab
        assert plain >= 2 * logits, (n, plain, logits)
        assert fused - fixed(n) <= 4 * 4 * chunk * vocab, (n, fused, fixed(n))
