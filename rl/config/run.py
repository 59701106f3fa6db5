"""The whole run's config (Config) and the sections no other part owns; `validate` checks each section, then what
spans several of them."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from rl.config.algorithm import AlgorithmConfig, RolloutCorrectionConfig
from rl.config.data import DataConfig, DatasetConfig
from rl.config.errors import ANY_ON_RESUME, check
from rl.config.learner import LearnerConfig
from rl.config.rewards import RewardPolicyConfig, RewardSpec
from rl.config.rollout import RolloutConfig


@dataclass
class ModelConfig:
    path: str = "smollm2-135m-instruct"  # an embedded model name, a save_pretrained folder, or a hub id


@dataclass
class TrainerConfig:
    # (total_steps is harmful on resume when the LR schedule is not constant: rl/train/run_folder.py)
    total_steps: int = field(default=20, metadata=ANY_ON_RESUME)
    prompts_per_step: int = 8  # each gets rollout.sampling.n samples
    eval_every: int = field(default=0, metadata=ANY_ON_RESUME)  # 0: evaluate only before the first and after the last
    # step
    eval_at_start: bool = field(default=True, metadata=ANY_ON_RESUME)
    save_every: int = field(default=0, metadata=ANY_ON_RESUME)  # 0: checkpoint only at the end
    keep_checkpoints: int = field(default=2, metadata=ANY_ON_RESUME)
    print_samples: int = field(default=1, metadata=ANY_ON_RESUME)  # completions printed per step, to see what the
    # model does
    max_bad_steps: int = field(default=3, metadata=ANY_ON_RESUME)  # stop after this many optimizer steps in a row
    # skipped for non-finite loss/gradients
    max_staleness: int = 0  # 0: synchronous (generate, then update, then sync); k >= 1: the engines generate step
    # s+k's batch with the weights before step s while the learner trains on step s (asynchronous, up to k steps
    # stale; turns algorithm.rollout_correction on when it is not set)

    def check(self, key: str) -> None:
        check(self.total_steps >= 1, f"{key}.total_steps must be >= 1")
        check(self.prompts_per_step >= 1, f"{key}.prompts_per_step must be >= 1")
        check(self.eval_every >= 0 and self.save_every >= 0, f"{key}.eval_every and {key}.save_every must be >= 0")
        check(self.keep_checkpoints >= 1, f"{key}.keep_checkpoints must be >= 1")
        check(self.max_bad_steps >= 1, f"{key}.max_bad_steps must be >= 1")
        check(self.max_staleness >= 0, f"{key}.max_staleness={self.max_staleness}: 0 (synchronous) or k >= 1 (the "
              "engines sample step s+k while the learner trains on step s)")


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = False  # used when installed and enabled
    mlflow: bool = False
    progress: bool = True


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local cluster; "auto": join the running one (`ray start --head`)
    num_cpus: int | None = None  # local cluster only; None: all cores
    dashboard: bool = False
    dashboard_host: str = "127.0.0.1"  # never listen beyond loopback unless asked
    gpu_memory_gib: float | None = None  # the memory of one GPU of the cluster; set: `rlvr train` refuses a run whose
    # memory estimate (rl/models/memory.py) does not fit it, before anything starts; None: no such check


@dataclass
class Config:
    name: str = field(default="run", metadata=ANY_ON_RESUME)
    seed: int = 0
    output_dir: str = field(default="runs/${name}", metadata=ANY_ON_RESUME)
    resume: str = field(default="auto", metadata=ANY_ON_RESUME)  # auto: continue from output_dir's latest checkpoint
    # if any | none | a checkpoint folder
    resume_force: bool = field(default=False, metadata=ANY_ON_RESUME)  # resume even though the config changed in a
    # way that changes the run
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval_sets: dict[str, DatasetConfig] = field(default_factory=dict, metadata=ANY_ON_RESUME)  # extra held-out sets,
    # evaluated with data.eval
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec(name="math_verify")])
    reward_policy: RewardPolicyConfig = field(default_factory=RewardPolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(mixed_precision="auto"))  # rl/models/precision.py
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata=ANY_ON_RESUME)
    ray: RayConfig = field(default_factory=RayConfig, metadata=ANY_ON_RESUME)


def dependent_defaults(cfg: Config) -> None:
    """Defaults that depend on other keys: an asynchronous loop (trainer.max_staleness >= 1) corrects the
    rollout/learner mismatch with truncated importance sampling unless algorithm.rollout_correction is given."""
    if cfg.trainer.max_staleness > 0 and cfg.algorithm.rollout_correction is None:
        cfg.algorithm.rollout_correction = RolloutCorrectionConfig()


def validate(cfg: Config) -> None:
    """Semantic checks that types alone cannot express, each section's own then those across sections; each message
    names the key to change."""
    alg, t, r, data = cfg.algorithm, cfg.trainer, cfg.rollout, cfg.data
    alg.check("algorithm", r.sampling.max_tokens)
    r.check("rollout")
    check(r.sampling.n >= 2 or r.cure is not None or alg.advantage.estimator not in ("grpo", "rloo", "dr_grpo"),
          f"rollout.sampling.n=1 leaves every {alg.advantage.estimator} group with one sample (zero advantage); "
          "use n >= 2")
    data.check("data")
    for name, ds in cfg.eval_sets.items():
        ds.check(f"eval_sets.{name}")
    for key in ("sampling", "eval_sampling"):
        getattr(r, key).check(f"rollout.{key}", data.max_prompt_tokens, r.max_model_len)
    r.check_dtype("rollout")
    t.check("trainer")
    check(t.max_staleness == 0 or r.cure is None,
          f"trainer.max_staleness={t.max_staleness} with rollout.cure: CURE's branching asks the learner for the "
          "entropy of the policy that sampled, which the learner has already updated; use trainer.max_staleness=0 "
          "with CURE")
    check(r.max_engine_restarts >= 0, "rollout.max_engine_restarts must be >= 0")
    if (at := r.adaptive_thinking) is not None:
        check(r.sampling.n >= 2, "rollout.adaptive_thinking splits each group in two halves: rollout.sampling.n >= 2")
        check(bool(at.close_tag) and bool(at.thinking_prefix),
              "rollout.adaptive_thinking.close_tag and thinking_prefix must not be empty")
        longest = max(at.thinking_max_tokens, at.nothinking_max_tokens)
        check(min(at.thinking_max_tokens, at.nothinking_max_tokens) >= 8,
              "rollout.adaptive_thinking.thinking_max_tokens and nothinking_max_tokens must be >= 8")
        check(data.max_prompt_tokens + longest + 8 <= r.max_model_len,
              f"data.max_prompt_tokens ({data.max_prompt_tokens}) + the longer adaptive_thinking limit ({longest})"
              f" + the open tag exceeds rollout.max_model_len ({r.max_model_len}); raise it or shorten one")
    cfg.reward_policy.check("reward_policy")
    check(cfg.resume in ("auto", "none") or bool(cfg.resume.strip()), "resume must be auto, none, or a checkpoint folder")
    lr = cfg.learner
    lr.check("learner")
    check(lr.mini_batches <= t.prompts_per_step * r.sampling.n,
          "learner.mini_batches is larger than the number of samples per step")
    lr.optim.check("learner.optim")
    lr.check_precision("learner")
    check(len(cfg.rewards) >= 1, "rewards: give at least one reward function")
    for i, spec in enumerate(cfg.rewards):
        spec.check(f"rewards[{i}]")  # the user's modules are imported later, when the trainer loads them


def optional_sections(obj, prefix: str = "") -> dict[str, object]:
    """{dotted key: value} of every optional section below `obj` (a field typed `SomeConfig | None`, None: off),
    e.g. {"algorithm.kl": None, "rollout.cure": CureConfig(...)}."""
    out = {}
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        args = typing.get_args(hints[f.name])
        if type(None) in args and any(dataclasses.is_dataclass(a) for a in args):
            out[key] = value
        elif dataclasses.is_dataclass(value):
            out.update(optional_sections(value, key + "."))
    return out
