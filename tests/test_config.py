"""Config loading: recipes resolve, overrides apply, bad values fail early with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl.config import ConfigError, load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(recipe):
    cfg = load_config(recipe)
    assert cfg.trainer.total_steps >= 1


def test_overrides_apply_with_types():
    cfg = load_config(None, ["trainer.total_steps=7", "learner.optim.lr=3e-6", "algorithm.loss.clip_high=0.28",
                             "rewards=[{name: math_verify}, {fn: 'tests.reward_fixtures:constant', weight: 0.5}]"])
    assert cfg.trainer.total_steps == 7
    assert cfg.learner.optim.lr == pytest.approx(3e-6)
    assert cfg.algorithm.loss.clip_high == pytest.approx(0.28)
    assert cfg.rewards[1].weight == 0.5
    assert cfg.output_dir == "runs/run"  # interpolation of ${name}


@pytest.mark.parametrize(
    "override, words",
    [
        ("trainer.total_stepz=3", "total_stepz"),
        ("trainer.total_steps=many", "total_steps"),
        ("algorithm.loss.name=ppo_typo", "algorithm.loss.name"),
        ("algorithm.advantage.estimator=nope", "algorithm.advantage.estimator"),
        ("algorithm.loss.dual_clip=0.5", "dual_clip"),
        ("rollout.sampling.n=1", "rollout.sampling.n"),
        ("rollout.sampling.max_tokens=4000", "rollout.max_model_len"),
        ("rewards=[{name: nope}]", "rewards[0].name"),
        ("rewards=[{}]", "rewards[0]"),
        ("trainer.total_steps", "key=value"),
        ("learner.num_ranks=0", "learner.num_ranks"),
        ("rollout.weight_sync=nccl", "rollout.weight_sync"),
        ("rollout.weight_transfer_backend=ucx", "rollout.weight_transfer_backend"),
        ("rollout.num_cpus_per_engine=0", "rollout.num_cpus_per_engine=0"),
        ("learner.num_cpus=0", "learner.num_cpus=0"),
        (["rollout.weight_sync=object_store", "rollout.weight_transfer_backend=nccl"], "rollout.weight_sync=transfer"),
        ("rollout.tensor_parallel_size=0", "rollout.tensor_parallel_size"),
        (["rollout.tensor_parallel_size=2", "rollout.num_gpus_per_engine=1"], "rollout.num_gpus_per_engine"),
        ("learner.offload=true", "learner.num_ranks > 1"),
    ],
)
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override] if isinstance(override, str) else override)
    assert words in str(e.value)


def test_lora_is_allowed_on_several_ranks():  # sharded like the rest: tests/test_distributed_learner.py lora_kl_varlen
    assert load_config(None, ["learner.lora={rank: 8}", "learner.num_ranks=2"]).learner.num_ranks == 2


def test_varlen_needs_share_prompts_off_and_attention_is_checked():
    with pytest.raises(ConfigError, match="set learner.share_prompts=false"):
        load_config(None, ["learner.varlen=true"])
    assert load_config(None, ["learner.varlen=true", "learner.share_prompts=false"]).learner.varlen
    with pytest.raises(ConfigError, match="learner.attn_implementation='flash_attn_2'.*did you mean 'flash_attention_2'"):
        load_config(None, ["learner.attn_implementation=flash_attn_2"])
    assert load_config(None, ["learner.attn_implementation=kernels-community/flash-attn"]).learner.attn_implementation
    with pytest.raises(ConfigError, match="takes no .L, L. mask.*set learner.share_prompts=false"):
        load_config(None, ["learner.attn_implementation=flash_attention_2"])
    assert load_config(None, ["learner.attn_implementation=flash_attention_2", "learner.varlen=true",
                              "learner.share_prompts=false"]).learner.varlen


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("recipes/nope.yaml")


def test_recipe_base_layers_and_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\ntrainer: {total_steps: 5, prompts_per_step: 3}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\ntrainer: {total_steps: 9}\n")
    cfg = load_config(tmp_path / "b.yaml", ["trainer.prompts_per_step=4"])
    assert (cfg.name, cfg.trainer.total_steps, cfg.trainer.prompts_per_step) == ("b", 9, 4)  # b over a, overrides last
    assert cfg.output_dir == "runs/b"
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "e.yaml")
    (tmp_path / "f.yaml").write_text("base: 3\n")
    with pytest.raises(ConfigError, match="base must be the path"):
        load_config(tmp_path / "f.yaml")


def test_variant_recipes_extend_their_bases():
    steer, base = load_config("recipes/steer.yaml"), load_config("recipes/dapo_math.yaml")
    assert steer.algorithm.token_weights.methods == ["steer_exp"] and steer.name == "steer"
    assert steer.algorithm.loss == base.algorithm.loss and steer.rollout.max_model_len == base.rollout.max_model_len
    js = load_config("recipes/dph_js.yaml")
    assert (js.algorithm.divergence.name, js.algorithm.divergence.data) == ("js", "runs/dph_math_pi0")
    cure = load_config("recipes/cure_stage1_cpu.yaml")
    assert cure.rollout.cure is not None and cure.rollout.sampling.n * (1 + cure.rollout.cure.branches) == 8


# -- dtype auto (rl/models/precision.py) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, gpu_bf16, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, None, "bfloat16"),  # AVX-512 with BF16 (the project's first machine)
    ({"avx2", "amx_tile", "amx_bf16"}, None, "bfloat16"),  # AMX
    ({"avx2", "fma"}, None, "float32"),  # AVX2 only: bf16 would run a slow fallback kernel
    ({"avx2", "avx512f", "avx512bw"}, None, "float32"),  # AVX-512 without its BF16 extension
    (set(), None, "float32"),
    ({"avx2"}, True, "bfloat16"),  # a GPU with bf16 decides, whatever the CPU
    ({"avx512_bf16"}, False, "float32"),  # a GPU without bf16 (V100, T4)
])
def test_auto_dtype_is_bfloat16_only_where_the_hardware_has_it(flags, gpu_bf16, expected):
    from rl.models.precision import auto_dtype

    assert auto_dtype(flags, gpu_bf16) == expected


def test_auto_is_the_default_and_resolves_once_for_both_keys(monkeypatch, capsys):
    from rl.models import precision

    cfg = load_config(None)
    assert (cfg.rollout.dtype, cfg.learner.mixed_precision) == ("auto", "auto")
    quick = load_config("recipes/quickstart.yaml")
    assert (quick.rollout.dtype, quick.learner.mixed_precision) == ("auto", "auto")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})  # an AVX2-only CPU
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = precision.resolve_precision(cfg)
    assert (out.rollout.dtype, out.learner.mixed_precision) == ("float32", None)  # None: no autocast
    assert "auto -> float32" in capsys.readouterr().err
    assert precision.resolve_precision(out) is out  # nothing left to resolve: no second line
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    out = precision.resolve_precision(cfg)
    assert (out.rollout.dtype, out.learner.mixed_precision) == ("bfloat16", "bfloat16")
    explicit = load_config(None, ["rollout.dtype=float16", "learner.mixed_precision=float32"])
    out = precision.resolve_precision(explicit)
    assert (out.rollout.dtype, out.learner.mixed_precision) == ("float16", None)  # float32 autocast means off


def test_a_run_resumed_where_auto_chose_otherwise_is_allowed():
    from rl.config import config_changes, to_dict

    old = to_dict(load_config(None, ["rollout.dtype=bfloat16", "learner.mixed_precision=bfloat16"]))
    new = to_dict(load_config(None, ["rollout.dtype=float32", "learner.mixed_precision=null"]))
    harmful, harmless = config_changes(old, new)
    assert harmful == [] and len(harmless) == 2


# -- relative paths in a recipe --------------------------------------------------------------------------------------


def test_relative_input_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    (folder / "reward.py").write_text("def f(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    (folder / "recipe.yaml").write_text(
        "model: {path: Qwen/Qwen2.5-0.5B}\n"
        "data:\n  train: {source: data/train.jsonl}\n  eval: {source: knowrl/train.json}\n"
        "eval_sets: {gsm8k: {source: openai/gsm8k, subset: main, split: test}}\n"
        "rewards:\n  - {fn: 'reward.py:f', kwargs: {table: data/train.jsonl, mode: strict}}\n"
        "  - {fn: 'tests.reward_fixtures:constant'}\n"
        "output_dir: runs/here\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(folder / "recipe.yaml")
    assert cfg.data.train.source == str(folder / "data" / "train.jsonl")
    assert cfg.rewards[0].fn == f"{folder / 'reward.py'}:f"
    assert cfg.rewards[0].kwargs == {"table": str(folder / "data" / "train.jsonl"), "mode": "strict"}
    # found nowhere beside the recipe: left as written (hub ids, named sets, mirror files, modules)
    assert (cfg.model.path, cfg.data.eval.source, cfg.eval_sets["gsm8k"].source, cfg.rewards[1].fn) == (
        "Qwen/Qwen2.5-0.5B", "knowrl/train.json", "openai/gsm8k", "tests.reward_fixtures:constant")
    assert cfg.output_dir == "runs/here"  # outputs stay relative to the current directory
    # overrides are read from the current directory, as before
    assert load_config(folder / "recipe.yaml", ["data.train.source=data/train.jsonl"]).data.train.source == \
        "data/train.jsonl"
    monkeypatch.chdir(folder)  # run from the recipe's folder: nothing to rewrite
    assert load_config("recipe.yaml").data.train.source == "data/train.jsonl"


# -- the config package is a leaf ------------------------------------------------------------------------------------

HEAVY = ("torch", "ray", "vllm", "transformers", "datasets", "sklearn")


def test_the_config_command_imports_no_heavy_package():
    """`rlvr config` reads, checks and prints a recipe (and resolves auto precision on a CPU) without torch & co."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "rl.cli", "config", "recipes/quickstart.yaml"],
                         cwd=root, capture_output=True, text=True, check=True)
    assert "name: quickstart" in out.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "omegaconf" in imported and "rl" in imported  # the import log is read
    assert not set(HEAVY) & imported, sorted(set(HEAVY) & imported)


def test_harmless_keys_on_resume_come_from_field_metadata():
    """The keys that may change on resume are the fields marked {"resume": "any"}: the same set as the list kept by
    hand before (a section or mapping key covers all keys below it)."""
    from rl.config import config_changes, harmless_on_resume, to_dict

    assert set(harmless_on_resume()) == {
        "name", "output_dir", "resume", "resume_force", "logging", "ray", "eval_sets", "data.eval", "data.mirror",
        "data.train.optional", "trainer.total_steps", "trainer.eval_every", "trainer.eval_at_start",
        "trainer.save_every", "trainer.keep_checkpoints", "trainer.print_samples", "trainer.max_bad_steps",
        "rollout.eval_sampling", "rollout.num_engines", "rollout.num_cpus_per_engine", "rollout.num_gpus_per_engine",
        "rollout.num_threads", "rollout.gpu_memory_utilization", "rollout.kv_cache_gib", "rollout.max_engine_restarts",
        "learner.num_cpus", "learner.num_gpus", "learner.num_threads", "learner.micro_batch_size",
        "learner.gradient_checkpointing", "learner.head_chunk_tokens", "learner.head_autocast", "learner.block_attention",
        "learner.max_tokens_per_micro_batch",
        "learner.share_prompts", "learner.pack_max_tokens", "learner.num_ranks", "learner.offload",
        "learner.varlen", "learner.attn_implementation", "rollout.weight_sync", "rollout.tensor_parallel_size", "rollout.weight_bucket_mib", "rollout.weight_transfer_timeout_s",
        "rollout.weight_transfer_backend",
        "reward_policy.timeout_s",
        "rollout.dtype", "learner.mixed_precision"}
    old = to_dict(load_config("recipes/quickstart.yaml"))
    new = to_dict(load_config("recipes/quickstart.yaml", [
        "logging.wandb=true", "eval_sets={}", "data.eval.limit=3", "rollout.eval_sampling.n=4", "trainer.save_every=5",
        "learner.optim.lr=1e-3", "data.train.limit=5", "rollout.sampling.n=4", "trainer.prompts_per_step=2"]))
    harmful, harmless = config_changes(old, new)
    assert [h.split(":")[0] for h in harmful] == ["data.train.limit", "learner.optim.lr", "rollout.sampling.n",
                                                  "trainer.prompts_per_step"]
    keys = {h.split(":")[0] for h in harmless}
    assert {k for k in keys if not k.startswith("eval_sets")} == {"logging.wandb", "data.eval.limit",
                                                                  "rollout.eval_sampling.n", "trainer.save_every"}
    assert "eval_sets" in keys and "eval_sets.svamp.source" in keys  # {} on one side, svamp's keys on the other


def test_a_key_added_after_the_checkpoint_is_harmless_only_at_its_default():
    import copy

    from rl.config import config_changes, to_dict

    new = to_dict(load_config(None))
    old = copy.deepcopy(new)
    del old["algorithm"]["advantage"]["singleton_group"]  # a checkpoint written before the key existed
    harmful, harmless = config_changes(old, new)
    assert harmful == [] and harmless == ["algorithm.advantage.singleton_group: '<unset>' -> 'zero'"]
    new["algorithm"]["advantage"]["singleton_group"] = "reward"  # not the default: the run computes something else
    harmful, _ = config_changes(old, new)
    assert harmful == ["algorithm.advantage.singleton_group: '<unset>' -> 'reward'"]
    new = to_dict(load_config(None, ["algorithm.length_penalty.coef=0.5"]))  # a method turned on
    harmful, _ = config_changes(old, new)
    assert harmful == ["algorithm.length_penalty.coef: '<unset>' -> 0.5",
                       "algorithm.length_penalty.correct_reward: '<unset>' -> 1.0"]


# -- optional method sections: absent (or null) is off, present is on -----------------------------------------------
def test_a_method_section_is_on_when_present_and_off_when_absent_or_null():
    from rl.config.algorithm import DEFAULT_PHRASES

    cfg = load_config(None)
    assert cfg.algorithm.hicra is None and cfg.algorithm.kl is None and cfg.rollout.cure is None
    on = load_config(None, ["algorithm.hicra.planning=phrases", "rollout.cure={}"])
    assert on.algorithm.hicra.alpha == 0.2 and on.algorithm.hicra.phrases == DEFAULT_PHRASES  # the paper's defaults
    assert on.rollout.cure.branches == 3
    dapo = load_config("recipes/dapo_math.yaml")
    assert dapo.algorithm.dynamic_sampling.max_tries == 3 and dapo.algorithm.overlong.buffer == 1024
    off = load_config("recipes/dapo_math.yaml", ["algorithm.dynamic_sampling=null"])  # a recipe turns its base's off
    assert off.algorithm.dynamic_sampling is None and off.algorithm.overlong.buffer == 1024


@pytest.mark.parametrize("override, message", [
    ("rollout.cure.enabled=true", r"a method's section is on when present: remove `enabled` \(to turn rollout.cure "
                                  r"off, remove the section or set it to null\)"),
    ("algorithm.dynamic_sampling.enabled=false", "remove `enabled`"),
    ("algorithm.divergence.name=none", r"algorithm.divergence.name='none'; choose one of .* or remove "
                                       "algorithm.divergence"),
    ("algorithm.kl.coef=0", r"algorithm.kl.coef=0.0: give the KL weight .* or remove algorithm.kl"),
    ("algorithm.kl.in_reward=true", r"algorithm.kl.coef=None: give the KL weight"),
    ("algorithm.hicra.alpha=0", r"algorithm.hicra.alpha must be > 0 .* remove algorithm.hicra"),
    ("algorithm.token_weights.scope=micro", r"algorithm.token_weights.methods is empty"),
    ("algorithm.overlong.factor=2", r"algorithm.overlong does nothing: set algorithm.overlong.buffer > 0"),
    ("algorithm.length_penalty.coef=0", r"algorithm.length_penalty.coef=0.0: give the weight"),
    ("algorithm.divergence.name=js", r"algorithm.divergence.eta=None: give the term's weight"),
    ("rollout.search.top_k=2", r"rollout.search needs exactly one of rollout.search.knowledge.passages"),
])
def test_the_old_ways_of_saying_on_and_off_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_an_overlong_buffer_that_does_not_fit_names_both_ways_out():
    """The quickstart shapes the last 32 of its 96 tokens; a user who cuts max_tokens below that is told both fixes."""
    assert load_config("recipes/quickstart.yaml").algorithm.overlong.buffer == 32
    with pytest.raises(ConfigError, match=r"algorithm.overlong.buffer=32 must be in \[0, rollout.sampling.max_tokens=12\): "
                                          r"lower algorithm.overlong.buffer, or set algorithm.overlong=null"):
        load_config("recipes/quickstart.yaml", ["rollout.sampling.max_tokens=12"])
    assert load_config("recipes/quickstart.yaml", ["rollout.sampling.max_tokens=12", "algorithm.overlong=null"])


def test_two_rollout_modes_are_refused_together():
    with pytest.raises(ConfigError, match="rollout.adaptive_thinking and rollout.cure cannot be on together"):
        load_config(None, ["rollout.cure={}", "rollout.adaptive_thinking={}"])


def test_the_resolved_config_leaves_off_sections_out_and_loads_back_as_a_recipe(tmp_path):
    from rl.config import to_dict, to_yaml

    for recipe in RECIPES:
        cfg = load_config(recipe)
        text = to_yaml(cfg)
        (tmp_path / "resolved.yaml").write_text(text)
        again = load_config(tmp_path / "resolved.yaml")
        assert to_dict(again) == to_dict(cfg), recipe.name  # config.yaml of a run is a recipe of the same run
    text = to_yaml(load_config("recipes/quickstart.yaml"))
    assert "hicra" not in text.split("# off (absent)")[0] and "algorithm.hicra" in text.split("# off (absent)")[1]
    assert "betas: [0.9, 0.999]" in text


def test_a_checkpoint_config_in_the_old_spelling_reads_as_the_same_run():
    """Before sections were optional, an off method was a section with `enabled: false`, `name: none`, a zero weight
    or an empty list, and an on one carried `enabled: true`: such a checkpoint's config is the same run today."""
    import copy

    from rl.config import config_changes, to_dict
    from rl.config.resume import upgrade

    new = to_dict(load_config("recipes/dapo_math.yaml"))
    old = copy.deepcopy(new)
    old["rollout"]["cure"] = {"enabled": False, "branches": 3, "top_entropy": 20, "min_token_chars": 2}
    old["rollout"]["search"] = {"enabled": False, "max_searches": 3, "knowledge": {"passages": None}}
    old["rollout"]["adaptive_thinking"] = {"enabled": False, "forced_modes": True}
    old["algorithm"]["kl"] = {"coef": 0.0, "estimator": "k3", "in_reward": False}
    old["algorithm"]["token_weights"] = {"methods": [], "scope": "batch", "steer": {"lambda_min": 0.8}}
    old["algorithm"]["divergence"] = {"name": "none", "eta": 0.0, "data": None}
    old["algorithm"]["hicra"] = {"alpha": 0.0, "planning": "phrases"}
    old["algorithm"]["length_penalty"] = {"coef": 0.0, "correct_reward": 1.0}
    old["algorithm"]["dynamic_sampling"] = {"enabled": True, "max_tries": 3}  # on: the same as today's section
    assert config_changes(old, new) == ([], [])
    for recipe in RECIPES:  # today's configs, with sections on, pass through as they are
        today = to_dict(load_config(recipe))
        assert upgrade(today) == today and config_changes(today, today) == ([], []), recipe.name
    old["algorithm"]["hicra"]["alpha"] = 0.2  # HICRA was on in that run and is off in this one
    harmful, _ = config_changes(old, new)
    assert harmful == ["algorithm.hicra.alpha: 0.2 -> '<unset>'", "algorithm.hicra.planning: 'phrases' -> '<unset>'"]


@pytest.mark.parametrize("overrides, message", [
    (["rollout.engine=hf", "rollout.sampling.regex='<a>'"],
     r"rollout.sampling.regex needs rollout.engine=vllm .* remove rollout.sampling.regex"),
    (["rollout.eval_sampling.regex='(unclosed'"], r"rollout.eval_sampling.regex='\(unclosed' is not a regular expression"),
])
def test_a_sampling_regex_is_refused_where_it_cannot_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
