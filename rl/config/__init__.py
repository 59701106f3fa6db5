"""Typed configuration: one dataclass tree, loaded from a recipe YAML plus `key=value` overrides, validated at start.

Each module owns the dataclass of its own knobs (rl/core/losses.py owns PolicyLossConfig, rollout/fleet.py owns
RolloutConfig, ...); this file only assembles them and checks what spans several of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import os
import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
import yaml
from omegaconf.errors import OmegaConfBaseException

from rewards import RewardPolicyConfig, RewardSpec, check_spec
from rl.core.advantages import ADVANTAGE_ESTIMATORS, WHITEN_LEVELS, AdvantageConfig
from rl.core.divergences import F_DIVERGENCES, DivergenceConfig
from rl.data.prompts import DataConfig, DatasetConfig, check_dataset_config, check_prompt_limits
from rl.core.kl import KL_ESTIMATORS, KLConfig
from rl.train.learner import DTYPES as LEARNER_DTYPES, SCHEDULES, LearnerConfig
from rl.core.losses import LOSS_AGGREGATIONS, POLICY_LOSSES, PolicyLossConfig, resolve_agg_mode
from rl.methods.hicra import PLANNING, HicraConfig
from rl.core.token_weights import SCOPES, TOKEN_WEIGHTS, TokenWeightConfig
from rl.models.precision import DTYPES
from rollout.fleet import ENGINES, RolloutConfig, check_sampling


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
    token_weights: TokenWeightConfig = field(default_factory=TokenWeightConfig)  # STEER, 80/20
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)  # DPH-RL
    hicra: HicraConfig = field(default_factory=HicraConfig)  # planning-token advantage boost
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
    max_bad_steps: int = 3  # stop after this many optimizer steps in a row skipped for non-finite loss/gradients


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
    resume: str = "auto"  # auto: continue from output_dir's latest checkpoint if any | none | a checkpoint folder
    resume_force: bool = False  # resume even though the config changed in a way that changes the run
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval_sets: dict[str, DatasetConfig] = field(default_factory=dict)  # extra held-out sets, evaluated with data.eval
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec(name="math_verify")])
    reward_policy: RewardPolicyConfig = field(default_factory=RewardPolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(mixed_precision="auto"))  # rl/models/precision.py
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- recipe YAML <- `key=value` overrides; unknown keys and wrong types fail here, by name.

    Every problem becomes one ConfigError that names the recipe file or the override, and the key.
    `rewards[0].weight=2` sets one field of a list item; `eval_sets={}` (a free-keyed mapping given whole) replaces the
    recipe's mapping, while `trainer={total_steps: 3}` sets that one field of the section."""
    cfg = OmegaConf.structured(Config)
    if recipe is not None:
        for path, tree in _recipe_layers(Path(recipe)):
            _rebase_input_paths(tree, path.parent)
            for key, value in tree.items():
                cfg = _merge(cfg, {key: value}, f"recipe {str(path)!r}")
    for item in overrides or []:
        key, eq, text = (part.strip() for part in item.partition("="))
        where = f"override {item!r}"
        if not eq or not key:
            raise ConfigError(f"{where} is not of the form key=value (e.g. trainer.total_steps=10)")
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"_={text}"]))["_"]  # YAML, as OmegaConf reads it
        except Exception as e:  # noqa: BLE001 -- any YAML problem of the value
            raise ConfigError(f"{where}: the value is not valid YAML ({_first_line(e)}); quote it") from None
        if "[" in key:  # one field of a list item, e.g. rewards[0].weight=2
            cfg = cfg.copy()
            try:
                _call(lambda: OmegaConf.update(cfg, key, value, merge=True), where, key)
            except ConfigError as e:
                raise ConfigError(f"{e} (an override sets a field of an existing item; to add items give the whole "
                                  f"list, e.g. rewards=[{{name: math_verify}}, {{name: format, weight: 0.1}}])") from None
        else:
            node = _call(lambda: OmegaConf.select(cfg, key, default=None), where, key)
            if isinstance(value, dict) and isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict:
                cfg = cfg.copy()  # a free-keyed mapping (eval_sets, kwargs) given whole replaces the old one
                OmegaConf.update(cfg, key, {}, merge=False)
            cfg = _merge(cfg, _nest(key, value), where)
    obj: Config = _call(lambda: OmegaConf.to_object(cfg), "config", _unresolvable(cfg) or "")
    validate(obj)
    return obj


def _recipe_layers(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The recipe and the recipes it extends, base first: `base: other.yaml` (relative to the recipe's folder) is
    read first and this recipe's keys are merged over it, so a variant recipe states only what it changes."""
    tree = _read_recipe(path)
    base = tree.pop("base", None)
    if base is None:
        return [(path, tree)]
    where = f"recipe {str(path)!r}"
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{where}: base must be the path of another recipe (e.g. base: quickstart.yaml)")
    base_path = path.parent / base
    if base_path.resolve() in chain + (path.resolve(),):
        raise ConfigError(f"{where}: base: {base} makes a cycle of recipes; remove one of the base keys")
    if not base_path.is_file():
        raise ConfigError(f"{where}: base: {base} names {str(base_path)!r}, which is not a file; give a path relative "
                          "to the recipe's folder")
    return _recipe_layers(base_path, chain + (path.resolve(),)) + [(path, tree)]


# Keys that name files or folders to read ("*": every item; "**": every path-like string below). In a recipe, a relative
# one resolves against the recipe's folder when it exists there, else (as in overrides) against the current directory;
# outputs (output_dir, runs/...) always against the current directory.
INPUT_PATHS = ("model.path", "data.mirror", "data.train.source", "data.eval.source", "eval_sets.*.source",
               "rewards.*.fn", "rewards.*.kwargs.**", "algorithm.divergence.data", "rollout.search.knowledge.passages",
               "rollout.search.knowledge.qa_data")


def _rebase_input_paths(tree: dict, folder: Path) -> None:
    """Rewrite, in place, the INPUT_PATHS values of a recipe's tree that exist relative to its folder to absolute
    paths; anything else (a hub id, a named data set, a file found nowhere) is left as written."""
    if folder.absolute() == Path.cwd():
        return
    for key in INPUT_PATHS:
        _rebase_at(tree, key.split("."), folder)


def _rebase_at(node, keys: list[str], folder: Path):
    if not keys:
        return _rebased(node, folder)
    if keys == ["**"]:
        if isinstance(node, (dict, list)):
            for k, v in list(node.items() if isinstance(node, dict) else enumerate(node)):
                node[k] = _rebase_at(v, keys, folder)
            return node
        return _rebased(node, folder, path_like=True)
    key, rest = keys[0], keys[1:]
    items = (node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()) \
        if key == "*" else [(key, node[key])] if isinstance(node, dict) and key in node else ()
    for k, v in list(items):
        node[k] = _rebase_at(v, rest, folder)
    return node


def _rebased(value, folder: Path, path_like: bool = False):
    """folder/value, absolute, when value is a relative path that exists there (for 'file.py:function', the file);
    else value. `path_like`: only values with a '/' or a file suffix (free-form reward kwargs)."""
    if not isinstance(value, str) or not value.strip():
        return value
    head, colon, attr = value.rpartition(":")
    path, tail = (head, colon + attr) if colon and head.endswith(".py") else (value, "")
    try:
        p = Path(path).expanduser()
        if p.is_absolute() or (path_like and "/" not in path and not p.suffix) or not (folder / p).exists():
            return value
    except (OSError, ValueError):  # a NUL byte, a name too long: not a file here, the later check names it
        return value
    return os.path.abspath(folder / p) + tail


def _read_recipe(path: Path) -> dict:
    """The recipe's top-level mapping, or a ConfigError naming the file and what to fix."""
    where = f"recipe {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where} {'is not a file' if path.exists() else 'does not exist'}; "
                          "give the path of a YAML file (see recipes/)")
    try:
        tree = OmegaConf.to_container(OmegaConf.load(path))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:  # also a key given twice
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}; fix that line") from None
    except (OSError, OmegaConfBaseException) as e:  # a scalar at the top, a null key
        raise ConfigError(f"{where} is not a mapping of `key: value` lines ({_first_line(e)}); "
                          "write it like the files in recipes/") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{where} holds a {type(tree).__name__}, not a mapping of `key: value` lines; "
                          "write it like the files in recipes/")
    if not tree:
        raise ConfigError(f"{where} is empty: it would train on the built-in defaults; write the keys of a run in it "
                          "(see recipes/quickstart.yaml), or omit the recipe to use the defaults on purpose")
    return tree


def _merge(cfg, tree: dict, where: str):
    """cfg merged with `tree`, or a ConfigError naming `where` and the key; for a list of sections (rewards), the
    first item that is wrong."""
    key, value = _path(cfg, tree)
    try:
        return _call(lambda: OmegaConf.merge(cfg, tree), where, key)
    except ConfigError:
        if isinstance(value, list) and isinstance(OmegaConf.select(cfg, key), ListConfig):
            for i, item in enumerate(value):
                _call(lambda: OmegaConf.merge(cfg, _nest(key, [item])), where, f"{key}[{i}]")
        raise


def _path(cfg, tree) -> tuple[str, object]:
    """(dotted key, value) of `tree` down to where it leaves the config's sections or branches out:
    ({'trainer': {'total_steps': 3}} -> 'trainer.total_steps')."""
    keys: list[str] = []
    while isinstance(tree, dict) and len(tree) == 1 and isinstance(OmegaConf.select(cfg, ".".join(keys)) if keys
                                                                     else cfg, DictConfig):
        key, tree = next(iter(tree.items()))
        keys.append(str(key))
    return ".".join(keys), tree


def _nest(key: str, value) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _unresolvable(node, prefix: str = "") -> str | None:
    """The first key whose value (an interpolation such as ${seed}) cannot be read, or None."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for k in keys:
        key = f"{prefix}[{k}]" if isinstance(node, ListConfig) else f"{prefix}.{k}" if prefix else str(k)
        try:
            child = node[k]
        except Exception:  # noqa: BLE001 -- whatever OmegaConf raises: this is the key to name
            return key
        if isinstance(child, (DictConfig, ListConfig)) and (bad := _unresolvable(child, key)):
            return bad
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _call(fn, where: str, key: str = ""):
    """fn(), with an OmegaConf or type error turned into a ConfigError naming `where` and the key."""
    try:
        return fn()
    except (OmegaConfBaseException, TypeError, ValueError, KeyError, AttributeError) as e:
        full = getattr(e, "full_key", None) or ""
        name = full if full.split(".")[0].split("[")[0] == key.split(".")[0].split("[")[0] or not key else \
            f"{key}.{full}" if full else key
        msg = (getattr(e, "msg", None) or str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "incompatible container types" in msg:
            msg = "a list given where a mapping of keys is expected, or the other way round"
        raise ConfigError(f"bad {where}{f' at {name!r}' if name else ''}: {msg}") from None


_SECRET = re.compile(r"(?:^|[_-])(?:(?:api|access|secret|private)[_-]?key|token|secret|password|passwd|credentials?)$",
                     re.IGNORECASE)


def redact(tree):
    """A copy of a config dict with the values of secret-looking keys (api_key, token, password, ...) replaced."""
    if isinstance(tree, dict):
        return {k: "***" if _SECRET.search(str(k)) and v is not None else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def to_dict(cfg: Config) -> dict:
    """The config as plain containers, secrets redacted: what is printed, logged and saved with checkpoints."""
    return redact(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))


# Keys that may change between a checkpoint and its resumed run without changing what the run computes.
HARMLESS_ON_RESUME = (
    "name", "output_dir", "resume", "resume_force", "logging.", "ray.", "eval_sets", "data.eval", "data.mirror",
    "data.train.optional",  # only false is valid: absent from checkpoints written before it existed
    "trainer.total_steps", "trainer.eval_every", "trainer.eval_at_start", "trainer.save_every",
    "trainer.keep_checkpoints", "trainer.print_samples", "trainer.max_bad_steps",
    "rollout.eval_sampling", "rollout.num_engines", "rollout.num_cpus_per_engine", "rollout.num_gpus_per_engine",
    "rollout.num_threads", "rollout.gpu_memory_utilization", "rollout.kv_cache_gib", "rollout.max_engine_restarts",
    "learner.num_cpus", "learner.num_gpus", "learner.num_threads", "learner.micro_batch_size",
    "learner.gradient_checkpointing", "learner.share_prompts", "learner.pack_max_tokens", "reward_policy.timeout_s",
    "rollout.dtype", "learner.mixed_precision",  # numerics, not the run; auto may choose otherwise on another machine
)


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list) and tree:
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix[:-1]}[{i}].").items()}
    return {prefix[:-1]: tree}


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(changes that would change the run, harmless changes) between a checkpoint's config and this run's,
    each as 'key: old -> new'."""
    a, b = _flatten(old), _flatten(new)
    harmful, harmless = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            line = f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}"
            ok = any(key == h or key.startswith(h if h.endswith(".") else h + ".") or key.startswith(h + "[")
                     for h in HARMLESS_ON_RESUME)
            (harmless if ok else harmful).append(line)
    return harmful, harmless


def _did_you_mean(value, choices) -> str:
    import difflib

    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Semantic checks that types alone cannot express; each message names the key to change."""
    alg, t, r = cfg.algorithm, cfg.trainer, cfg.rollout
    _check(alg.advantage.estimator in ADVANTAGE_ESTIMATORS,
           f"algorithm.advantage.estimator={alg.advantage.estimator!r}; choose one of {ADVANTAGE_ESTIMATORS.names()}")
    _check(alg.advantage.whiten in WHITEN_LEVELS,
           f"algorithm.advantage.whiten={alg.advantage.whiten!r}; choose one of {list(WHITEN_LEVELS)}")
    _check(alg.loss.name in POLICY_LOSSES, f"algorithm.loss.name={alg.loss.name!r}; choose one of {POLICY_LOSSES.names()}")
    _check(resolve_agg_mode(alg.loss) in LOSS_AGGREGATIONS,
           f"algorithm.loss.agg_mode={alg.loss.agg_mode!r}; choose one of {LOSS_AGGREGATIONS.names()} or null "
           "(the loss's own)")
    _check(alg.kl.estimator in KL_ESTIMATORS, f"algorithm.kl.estimator={alg.kl.estimator!r}; choose one of {KL_ESTIMATORS.names()}")
    _check(alg.kl.coef >= 0, "algorithm.kl.coef must be >= 0")
    _check(alg.loss.clip_low >= 0 and alg.loss.clip_high >= 0, "algorithm.loss.clip_low/clip_high must be >= 0")
    _check(alg.loss.clip_low < 1, "algorithm.loss.clip_low must be < 1 (the ratio is clipped to [1 - clip_low, ...])")
    _check(alg.loss.dual_clip is None or alg.loss.dual_clip > 1, "algorithm.loss.dual_clip must be > 1 (or null)")
    tw = alg.token_weights
    for i, name in enumerate(tw.methods):
        _check(name in TOKEN_WEIGHTS, f"algorithm.token_weights.methods[{i}]={name!r}; choose from {TOKEN_WEIGHTS.names()}")
    _check(len(set(tw.methods)) == len(tw.methods), "algorithm.token_weights.methods lists a method twice")
    _check(tw.scope in SCOPES, f"algorithm.token_weights.scope={tw.scope!r}; choose one of {list(SCOPES)}")
    _check(0 < tw.steer.lambda_min <= 1, "algorithm.token_weights.steer.lambda_min must be in (0, 1]")
    _check(tw.steer.lambda_min <= tw.steer.lambda_max, "algorithm.token_weights.steer.lambda_max must be >= lambda_min")
    _check(0 < tw.high_entropy.rho <= 1, "algorithm.token_weights.high_entropy.rho must be in (0, 1] (1 keeps all tokens)")
    hc = alg.hicra
    _check(hc.alpha >= 0, "algorithm.hicra.alpha must be >= 0 (0 turns HICRA off; the paper uses 0.2)")
    _check(hc.planning in PLANNING, f"algorithm.hicra.planning={hc.planning!r}; choose one of {list(PLANNING)}")
    _check(1 <= hc.ngram_min <= hc.ngram_max, "algorithm.hicra.ngram_min/ngram_max: need 1 <= ngram_min <= ngram_max")
    _check(hc.num_clusters >= 1 and hc.max_ngrams >= 1 and hc.min_doc_freq >= 1,
           "algorithm.hicra.num_clusters, max_ngrams and min_doc_freq must be >= 1")
    _check(0 < hc.top_frac <= 1, "algorithm.hicra.top_frac must be in (0, 1]")
    _check(hc.refit_every >= 0, "algorithm.hicra.refit_every must be >= 0 (0: fit once)")
    _check(hc.planning != "phrases" or any(p.strip() for p in hc.phrases),
           "algorithm.hicra.phrases is empty; list phrases or use planning=strategic_grams")
    dv = alg.divergence
    _check(dv.name == "none" or dv.name in F_DIVERGENCES,
           f"algorithm.divergence.name={dv.name!r}; choose none or one of {F_DIVERGENCES.names()}")
    _check(dv.eta >= 0, "algorithm.divergence.eta must be >= 0")
    _check(0 < dv.alpha < 1, "algorithm.divergence.alpha must be in (0, 1)")
    _check(dv.samples_per_step >= 1, "algorithm.divergence.samples_per_step must be >= 1")
    _check(dv.prepare_k >= 1, "algorithm.divergence.prepare_k must be >= 1")
    _check(0 < dv.perfect_threshold <= 1, "algorithm.divergence.perfect_threshold must be in (0, 1]")
    _check(dv.name == "none" or dv.data is not None,
           f"algorithm.divergence.name={dv.name!r} needs algorithm.divergence.data: the folder `rlvr dph-prepare` writes")
    _check(r.engine in ENGINES, f"rollout.engine={r.engine!r}; choose one of {sorted(ENGINES)}")
    _check(r.num_engines >= 1, "rollout.num_engines must be >= 1")
    _check(r.sampling.n >= 1, "rollout.sampling.n must be >= 1")
    _check(r.cure.branches >= 1, "rollout.cure.branches (n2 continuations per response) must be >= 1")
    _check(r.cure.top_entropy >= 1, "rollout.cure.top_entropy must be >= 1")
    _check(r.cure.min_token_chars >= 0, "rollout.cure.min_token_chars must be >= 0")
    _check(r.sampling.n >= 2 or r.cure.enabled or alg.advantage.estimator not in ("grpo", "rloo", "dr_grpo"),
           f"rollout.sampling.n=1 leaves every {alg.advantage.estimator} group with one sample (zero advantage); use n >= 2")
    sets = {"data.train": cfg.data.train, "data.eval": cfg.data.eval, **{f"eval_sets.{k}": v for k, v in cfg.eval_sets.items()}}
    try:
        check_prompt_limits(cfg.data)
        for key, ds in sets.items():
            if ds is not None:
                check_dataset_config(ds, key)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        for key in ("sampling", "eval_sampling"):
            check_sampling(getattr(r, key), f"rollout.{key}", cfg.data.max_prompt_tokens, r.max_model_len)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check(r.dtype in DTYPES, f"rollout.dtype={r.dtype!r}; choose one of {list(DTYPES)}{_did_you_mean(r.dtype, DTYPES)}"
           " (auto: bfloat16 where the hardware has native bf16, else float32)")
    _check(t.total_steps >= 1, "trainer.total_steps must be >= 1")
    _check(t.prompts_per_step >= 1, "trainer.prompts_per_step must be >= 1")
    _check(t.eval_every >= 0 and t.save_every >= 0, "trainer.eval_every and trainer.save_every must be >= 0")
    _check(t.keep_checkpoints >= 1, "trainer.keep_checkpoints must be >= 1")
    _check(t.max_bad_steps >= 1, "trainer.max_bad_steps must be >= 1")
    _check(r.max_engine_restarts >= 0, "rollout.max_engine_restarts must be >= 0")
    se = r.search
    if se.enabled:
        _check((se.knowledge.passages is None) != (se.knowledge.qa_data is None),
               "rollout.search.enabled needs exactly one of rollout.search.knowledge.passages (a JSONL of {title, text}) "
               "or rollout.search.knowledge.qa_data (a question-answer file)")
        _check(se.max_searches >= 1 and se.top_k >= 1, "rollout.search.max_searches and top_k must be >= 1")
        _check(not r.cure.enabled, "rollout.search and rollout.cure cannot be on together")
    at = r.adaptive_thinking
    if at.enabled:
        _check(not (r.cure.enabled or se.enabled), "rollout.adaptive_thinking cannot be on with rollout.cure or "
               "rollout.search")
        _check(r.sampling.n >= 2, "rollout.adaptive_thinking splits each group in two halves: rollout.sampling.n >= 2")
        _check(bool(at.close_tag) and bool(at.thinking_prefix),
               "rollout.adaptive_thinking.close_tag and thinking_prefix must not be empty")
        longest = max(at.thinking_max_tokens, at.nothinking_max_tokens)
        _check(min(at.thinking_max_tokens, at.nothinking_max_tokens) >= 8,
               "rollout.adaptive_thinking.thinking_max_tokens and nothinking_max_tokens must be >= 8")
        _check(cfg.data.max_prompt_tokens + longest + 8 <= r.max_model_len,
               f"data.max_prompt_tokens ({cfg.data.max_prompt_tokens}) + the longer adaptive_thinking limit ({longest})"
               f" + the open tag exceeds rollout.max_model_len ({r.max_model_len}); raise it or shorten one")
    rp = cfg.reward_policy
    _check(rp.on_error in ("fail", "skip"), f"reward_policy.on_error={rp.on_error!r}; choose fail or skip")
    _check(rp.timeout_s is None or rp.timeout_s > 0, "reward_policy.timeout_s must be > 0 (or null for no limit)")
    _check(0 <= rp.max_skip_frac <= 1, "reward_policy.max_skip_frac must be in [0, 1]")
    _check(cfg.resume in ("auto", "none") or bool(cfg.resume.strip()),
           "resume must be auto, none, or a checkpoint folder")
    lr = cfg.learner
    _check(lr.micro_batch_size >= 1, "learner.micro_batch_size must be >= 1")
    _check(lr.pack_max_tokens >= 1, f"learner.pack_max_tokens={lr.pack_max_tokens}: must be >= 1 (tokens per packed row)")
    _check(lr.ppo_epochs >= 1 and lr.mini_batches >= 1, "learner.ppo_epochs and learner.mini_batches must be >= 1")
    _check(lr.mini_batches <= t.prompts_per_step * r.sampling.n,
           "learner.mini_batches is larger than the number of samples per step")
    _check(lr.optim.lr > 0, "learner.optim.lr must be > 0")
    _check(lr.optim.schedule in SCHEDULES, f"learner.optim.schedule={lr.optim.schedule!r} is not a schedule the learner "
           f"can step; choose one of {list(SCHEDULES)}{_did_you_mean(lr.optim.schedule, SCHEDULES)}")
    _check(lr.dtype in LEARNER_DTYPES, f"learner.dtype={lr.dtype!r}; choose one of {list(LEARNER_DTYPES)}"
           f"{_did_you_mean(lr.dtype, LEARNER_DTYPES)}")
    _check(lr.mixed_precision in DTYPES or lr.mixed_precision is None,
           f"learner.mixed_precision={lr.mixed_precision!r}; choose one of {list(DTYPES)} or null"
           f"{_did_you_mean(lr.mixed_precision, DTYPES)} (off: float32 and "
           "null both run the decoder in learner.dtype; auto: bfloat16 where the hardware has native bf16)")
    _check(alg.overlong.buffer >= 0 and alg.overlong.buffer < r.sampling.max_tokens,
           "algorithm.overlong.buffer must be in [0, rollout.sampling.max_tokens)")
    _check(alg.dynamic_sampling.max_tries >= 1, "algorithm.dynamic_sampling.max_tries must be >= 1")
    _check(len(cfg.rewards) >= 1, "rewards: give at least one reward function")
    for i, spec in enumerate(cfg.rewards):
        try:
            check_spec(spec, i)  # the user's modules are imported later, when the trainer loads them
        except ValueError as e:
            raise ConfigError(str(e)) from None
