"""What a learner rank needs of torch.distributed: the group, the FSDP2 shards, the row split and the reductions.

One rank (no process group) is the special case of every function here: the split gives it every row, the
reductions return their input, nothing is sharded. The same code runs on gloo (CPU, the tests) and NCCL (GPUs).

The learner keeps every step-global quantity exact across ranks by giving each rank the whole optimizer step's batch:
token and sequence counts, STEER's batch statistics and the 80/20 quantile are computed from it identically on every
rank. A rank runs the forward and backward passes of its own rows only (split_rows: balanced by tokens), and the
log-probs the loss terms read before the update are assembled from every rank's rows (all_sum of zero-filled [B, T]
tensors: exact, each position has one non-zero contribution). Each rank's loss is its share of the step's loss (the
normalisers are global), so the gradient is the sum of the ranks' gradients: FSDP's reduce-scatter sums
(gradient divide factor 1), it does not average.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def listen(address: str, world_size: int, timeout_s: float = 600.0) -> dist.TCPStore:
    """Rank 0's rendezvous: a TCPStore on a port the OS picks and this store holds from now on (`.port`), so no other
    process can take it between choosing and joining."""
    return dist.TCPStore(address, 0, world_size, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=timeout_s))


def init_group(rank: int, world_size: int, address: str, port: int, timeout_s: float = 600.0,
               store: dist.TCPStore | None = None) -> None:
    """Join the learner's process group at rank 0's store (`store` on rank 0, from `listen`; the others connect to
    address:port): NCCL when this rank has a GPU, else gloo."""
    if world_size <= 1 or dist.is_initialized():
        return
    timeout = timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(address, port, world_size, is_master=rank == 0, timeout=timeout)
    backend = "gloo"
    if torch.cuda.is_available():  # NCCL for GPU tensors; gloo too, for CPU ones (learner.offload keeps shards there)
        backend = "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(0)  # Ray gives each rank its own GPU, seen as device 0
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def split_rows(lengths: Tensor, groups: Tensor | None, world_size: int, rank: int) -> Tensor:
    """This rank's rows of a batch, balanced by tokens: whole groups when `groups` is given (rows that share a
    prompt are packed together), largest first, each to the rank with the fewest tokens so far (ties: lowest rank).
    Deterministic, so every rank computes the same split."""
    if world_size == 1:
        return torch.arange(len(lengths))
    units = groups if groups is not None else torch.arange(len(lengths))
    ids, inverse = torch.unique(units, return_inverse=True)
    tokens = torch.zeros(len(ids), dtype=torch.long).index_add_(0, inverse, lengths.long())
    load = [0] * world_size
    owner = torch.empty(len(ids), dtype=torch.long)
    for u in sorted(range(len(ids)), key=lambda u: (-int(tokens[u]), u)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[u] = r
        load[r] += int(tokens[u])
    return torch.nonzero(owner[inverse] == rank, as_tuple=True)[0]


def all_sum(x: Tensor) -> Tensor:
    """The sum over ranks (in place; the input itself with one rank). Over the group's device (NCCL: GPU)."""
    if world()[1] == 1:
        return x
    y = x.to(_device())
    dist.all_reduce(y)
    if y is not x:
        x.copy_(y)
    return x


def all_max(n: int) -> int:
    if world()[1] == 1:
        return n
    t = torch.tensor([n], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def gather_objects(obj) -> list:
    """Every rank's `obj` (small Python objects: metrics, a list of CPU tensors), in rank order."""
    if world()[1] == 1:
        return [obj]
    out = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks: the ModuleList the decoder iterates (model.model.layers for Llama, Qwen...)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no decoder.layers ModuleList to shard; the FSDP learner "
                         "(learner.num_ranks > 1) supports decoder-only models with one")
    return list(layers)


def shard(root: torch.nn.Module, model: torch.nn.Module, compute_dtype: torch.dtype | None, offload: bool) -> None:
    """FSDP2 over the learner's ranks: each decoder layer is its own unit (its weights gathered for its forward and
    backward only), and `root` (the module whose forward runs decoder and fused head: rl/train/learner.py
    PolicyForward) holds the rest (embeddings, final norm, output layer: tied weights stay in one unit, and the head's
    weight, read directly by the fused head, is gathered by the root's forward). Layers compute in `compute_dtype`
    (MixedPrecisionPolicy: weights gathered in it, gradients reduced in float32; the masters stay in learner.dtype);
    the root computes in the masters' dtype, as the one-rank learner's head does. `offload`: parameters, gradients
    and optimizer state live on the CPU between uses."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    extra = {"offload_policy": CPUOffloadPolicy()} if offload else {}
    layer_mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if compute_dtype else None
    for layer in decoder_layers(model):
        fully_shard(layer, **({"mp_policy": layer_mp} if layer_mp else {}), **extra)
    fully_shard(root, **extra)
    for m in root.modules():
        if hasattr(m, "set_gradient_divide_factor"):  # each rank's loss is its share of the step's: sum, not mean
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)


def full_tensor(t: Tensor) -> Tensor:
    """A parameter's whole value (a collective for a sharded DTensor: every rank calls it, in the same order)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
