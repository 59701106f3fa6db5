"""Typed configuration: one dataclass tree, loaded from a recipe YAML plus `key=value` overrides, validated at start.

Each module owns the dataclass of its own knobs (rl/losses.py owns PolicyLossConfig, rollout/fleet.py owns
RolloutConfig, ...); this file only assembles them and checks what spans several of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rewards import REWARDS, RewardSpec
from rl.advantages import ADVANTAGE_ESTIMATORS, AdvantageConfig
from rl.data import DataConfig, DatasetConfig
from rl.kl import KL_ESTIMATORS, KLConfig
from rl.learner import LearnerConfig
from rl.losses import LOSS_AGGREGATIONS, POLICY_LOSSES, PolicyLossConfig
from rollout.fleet import ENGINES, RolloutConfig


class ConfigError(ValueError):
    """A config problem, stated with the key to change."""


@dataclass
class ModelConfig:
    path: str = "smollm2-135m-instruct"  # an embedded model name, a save_pretrained folder, or a hub id


@dataclass
class DynamicSamplingConfig:
    enabled: bool = False  # DAPO: drop groups whose rewards are all equal, sample more prompts to refill
    max_tries: int = 3  # generation rounds per step before training on what was collected


@dataclass
class OverlongConfig:
    buffer: int = 0  # DAPO soft overlong punishment over the last `buffer` tokens before max_tokens; 0 disables
    factor: float = 1.0
    mask_truncated: bool = False  # drop responses that hit max_tokens from the loss


@dataclass
class AlgorithmConfig:
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)


@dataclass
class TrainerConfig:
    total_steps: int = 20
    prompts_per_step: int = 8  # each gets rollout.sampling.n samples
    eval_every: int = 0  # 0: evaluate only before the first and after the last step
    eval_at_start: bool = True
    save_every: int = 0  # 0: checkpoint only at the end
    keep_checkpoints: int = 2
    print_samples: int = 1  # completions printed per step, to see what the model does


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


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs/${name}"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval_sets: dict[str, DatasetConfig] = field(default_factory=dict)  # extra held-out sets, evaluated with data.eval
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec(name="math_verify")])
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- recipe YAML <- `key=value` overrides; unknown keys and wrong types fail here, by name."""
    try:
        cfg = OmegaConf.structured(Config)
        if recipe is not None:
            path = Path(recipe)
            if not path.exists():
                raise ConfigError(f"recipe {str(path)!r} does not exist")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        obj: Config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"bad config{f' at {key!r}' if key else ''}: {e.msg if hasattr(e, 'msg') else e}") from None
    validate(obj)
    return obj


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Semantic checks that types alone cannot express; each message names the key to change."""
    alg, t, r = cfg.algorithm, cfg.trainer, cfg.rollout
    _check(alg.advantage.estimator in ADVANTAGE_ESTIMATORS,
           f"algorithm.advantage.estimator={alg.advantage.estimator!r}; choose one of {ADVANTAGE_ESTIMATORS.names()}")
    _check(alg.loss.name in POLICY_LOSSES, f"algorithm.loss.name={alg.loss.name!r}; choose one of {POLICY_LOSSES.names()}")
    _check(alg.loss.agg_mode in LOSS_AGGREGATIONS,
           f"algorithm.loss.agg_mode={alg.loss.agg_mode!r}; choose one of {LOSS_AGGREGATIONS.names()}")
    _check(alg.kl.estimator in KL_ESTIMATORS, f"algorithm.kl.estimator={alg.kl.estimator!r}; choose one of {KL_ESTIMATORS.names()}")
    _check(alg.kl.coef >= 0, "algorithm.kl.coef must be >= 0")
    _check(alg.loss.clip_low >= 0 and alg.loss.clip_high >= 0, "algorithm.loss.clip_low/clip_high must be >= 0")
    _check(alg.loss.clip_low < 1, "algorithm.loss.clip_low must be < 1 (the ratio is clipped to [1 - clip_low, ...])")
    _check(alg.loss.dual_clip is None or alg.loss.dual_clip > 1, "algorithm.loss.dual_clip must be > 1 (or null)")
    _check(r.engine in ENGINES, f"rollout.engine={r.engine!r}; choose one of {sorted(ENGINES)}")
    _check(r.num_engines >= 1, "rollout.num_engines must be >= 1")
    _check(r.sampling.n >= 1, "rollout.sampling.n must be >= 1")
    _check(r.sampling.n >= 2 or alg.advantage.estimator not in ("grpo", "rloo", "dr_grpo"),
           f"rollout.sampling.n=1 leaves every {alg.advantage.estimator} group with one sample (zero advantage); use n >= 2")
    _check(r.sampling.max_tokens >= 1, "rollout.sampling.max_tokens must be >= 1")
    _check(r.sampling.temperature >= 0, "rollout.sampling.temperature must be >= 0")
    _check(cfg.data.max_prompt_tokens + r.sampling.max_tokens <= r.max_model_len,
           f"data.max_prompt_tokens ({cfg.data.max_prompt_tokens}) + rollout.sampling.max_tokens "
           f"({r.sampling.max_tokens}) exceeds rollout.max_model_len ({r.max_model_len}); raise it or shorten one")
    _check(t.total_steps >= 1, "trainer.total_steps must be >= 1")
    _check(t.prompts_per_step >= 1, "trainer.prompts_per_step must be >= 1")
    _check(t.eval_every >= 0 and t.save_every >= 0, "trainer.eval_every and trainer.save_every must be >= 0")
    _check(t.keep_checkpoints >= 1, "trainer.keep_checkpoints must be >= 1")
    lr = cfg.learner
    _check(lr.micro_batch_size >= 1, "learner.micro_batch_size must be >= 1")
    _check(lr.ppo_epochs >= 1 and lr.mini_batches >= 1, "learner.ppo_epochs and learner.mini_batches must be >= 1")
    _check(lr.mini_batches <= t.prompts_per_step * r.sampling.n,
           "learner.mini_batches is larger than the number of samples per step")
    _check(lr.optim.lr > 0, "learner.optim.lr must be > 0")
    _check(alg.overlong.buffer >= 0 and alg.overlong.buffer < r.sampling.max_tokens,
           "algorithm.overlong.buffer must be in [0, rollout.sampling.max_tokens)")
    _check(alg.dynamic_sampling.max_tries >= 1, "algorithm.dynamic_sampling.max_tries must be >= 1")
    _check(len(cfg.rewards) >= 1, "rewards: give at least one reward function")
    for i, spec in enumerate(cfg.rewards):
        _check((spec.name is None) != (spec.fn is None), f"rewards[{i}]: give exactly one of name or fn")
        _check(spec.name is None or spec.name in REWARDS,
               f"rewards[{i}].name={spec.name!r}; built-ins are {REWARDS.names()}, or use fn: my_pkg.my_mod:my_fn")
