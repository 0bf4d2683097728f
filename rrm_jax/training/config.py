"""Typed training configuration: frozen dataclasses read from a recipe TOML plus ``key=value`` overrides.

A recipe has top-level keys (model, run_dir, steps, ...) and the sections ``[optim]``, ``[grpo]``,
``[sampling]`` (the rollouts' :class:`~rrm_jax.sampler.SamplingConfig`) and ``[data]``; an override names a
field as ``steps=10`` or ``optim.lr=1e-6``. Loading and writing is :mod:`rrm_jax.core.configs`; the resolved
config is written beside the run's outputs (``run_dir/config.toml``) so a run can be reproduced from its directory.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from pathlib import Path

import jax

from rrm_jax.core import configs, shipped
from rrm_jax.core.errors import ConfigError
from rrm_jax.core.model import REMAT
from rrm_jax.core.ops import ATTENTION_IMPLS
from rrm_jax.core.sharding import DEFAULT_RULES, ShardingRules, mesh_misfit
from rrm_jax.data.answers import EXTRACTORS
from rrm_jax.judge.prompt import get_prompt
from rrm_jax.sampler.config import SamplingConfig
from rrm_jax.training.rl.dpo import DPOConfig
from rrm_jax.training.rl.loss import AGGREGATIONS


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-6
    warmup_steps: int = 0  # optimizer updates of linear warm-up (first update at lr / warmup_steps)
    decay_steps: int = 0  # cosine length in updates (incl. warm-up); 0 -> steps * inner_iters
    end_lr_ratio: float = 0.0  # the cosine ends at lr * end_lr_ratio
    weight_decay: float = 0.0  # AdamW decoupled decay (never on norms or biases)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0  # global-norm gradient clipping; 0 disables
    micro_batches: int = 1  # gradient accumulation: the batch is split into this many micro-batches


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    prompts_per_step: int = 8  # preference pairs per rollout batch
    group_size: int = 8  # G completions per prompt (one prefill each)
    advantage: str = "grpo"  # grpo | drgrpo | rloo
    adv_eps: float = 1e-6
    inner_iters: int = 1  # mu: optimizer steps on one rollout batch (old policy = the rollout's log-probs)
    old_logprobs: str = "sampler"  # sampler: the sampler's log-probs | recompute: a trainer forward pass
    reward: str = "verdict"  # name in rl.rewards.REWARDS or "module:function"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0  # k3 KL to the frozen initial policy; 0 skips the reference pass
    aggregation: str = "seq-mean-token-mean"
    norm_length: int = 0  # Dr.GRPO constant length; 0 -> sampling.max_new_tokens
    logprob_chunk: int = 256
    seq_bucket: int = 0  # fixed padded length of training rows; 0 -> next power of two (few compiles)
    # DAPO's soft overlong penalty: over the last `overlong_buffer` tokens before sampling.max_new_tokens the
    # reward falls linearly by up to `overlong_factor` (0 = off)
    overlong_buffer: int = 0
    overlong_factor: float = 1.0
    # a policy run's rule reward beside the judge's: + rule_weight x (+1 when the response's answer, by
    # judge.extract, equals the data's `reference`, else -1); 0 = the judge's reward alone
    rule_weight: float = 0.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    path: str = ""  # JSONL of {query, chosen, rejected} (GRPO), {query[, answer, reference]} (policy GRPO) or {prompt, completion} (SFT)
    synthetic: int = (
        0  # > 0: write this many synthetic arithmetic pairs (queries for a policy run) to run_dir and use them
    )
    prompt: str = "rrm-v1"  # rrm-v1 (the released RRMs' prompt) | short (for tiny byte-level models)
    max_prompt_tokens: int = 4096  # longer pairs are dropped (counted) when loading
    swap: bool = True  # random per-example position swap (else chosen is always shown first)
    shuffle_seed: int = 0


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """The frozen judge whose verdicts are a policy's reward (grpo.reward = judge_elo | judge_knockout |
    judge_reference); it is loaded onto the policy's mesh and never trained."""

    model: str = ""  # preset, models/*.toml, HF checkpoint directory or hub id
    tokenizer: str = ""  # "" -> the checkpoint's own (as TrainConfig.tokenizer)
    prompt: str = "rrm-v1"
    votes: int = 1  # samples per comparison (one prefill)
    show: str = "response"  # response: the text after </think> | answer: the extracted final answer
    extract: str = ""  # math | choice: the answer extractor (show = answer; also scores answer_accuracy)
    max_prompt_tokens: int = 0  # longer comparisons are cut in the middle of each response; 0 = no limit
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=1024, temperature=0.6, max_slots=64)


JUDGE_REWARDS = ("judge_elo", "judge_knockout", "judge_reference")
JUDGE_SHOW = ("response", "answer")  # what the judge sees: the text after </think>, or the extracted final answer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str = "tiny"  # preset name, models/*.toml, or an HF checkpoint directory (loaded)
    tokenizer: str = ""  # "" -> the checkpoint's own; "bytes" -> a generated byte-level tokenizer; or a path
    mode: str = "grpo"  # grpo | sft | dpo (training.modes: what each one is)
    run_dir: str = "runs/tiny"
    steps: int = 100  # rollout batches (GRPO) or optimizer steps (SFT)
    batch_size: int = 8  # SFT sequences per step
    seed: int = 0
    dtype: str = "float32"  # master weights
    compute_dtype: str = "bfloat16"
    remat: str = "none"  # none | dots | full | offload (rrm_jax.core.model.REMAT)
    attention: str = "auto"  # auto | xla | cudnn | splash (rrm_jax.core.ops.attention_form: auto is by platform)
    mesh: tuple[int, ...] = (1, -1, 1)  # (data, fsdp, tensor); -1 fills the devices (of every host)
    sequence_parallel: bool = True  # the residual stream between layers split over tensor (ShardingRules.act_sequence)
    distributed: bool = False  # one process per host: jax.distributed.initialize() first (rrm_jax.core.distributed)
    save_every: int = 50
    keep: int = 3
    async_checkpoint: bool = True
    export_hf: bool = True
    tensorboard: bool = True  # also RUN_DIR/tb scalars when the tensorboard package is installed
    optim: OptimConfig = OptimConfig()
    grpo: GRPOConfig = GRPOConfig()
    # rollouts; n is grpo.group_size and the seed comes from `seed` and the step (Trainer.sampling)
    sampling: SamplingConfig = SamplingConfig(max_slots=64)
    data: DataConfig = DataConfig()
    dpo: DPOConfig = DPOConfig()  # mode = "dpo": batch_size pairs per step from data.path {query, chosen, rejected}
    judge: JudgeConfig = JudgeConfig()

    @property
    def sharding_rules(self) -> ShardingRules:
        return DEFAULT_RULES if self.sequence_parallel else dataclasses.replace(DEFAULT_RULES, act_sequence=None)

    @property
    def policy(self) -> bool:
        """A policy run: plain queries in, a judge's verdicts as the reward (not a judge trained on pairs)."""
        return self.mode == "grpo" and self.grpo.reward in JUDGE_REWARDS

    def __post_init__(self):
        checks = [
            (self.mode in ("grpo", "sft", "dpo"), f"mode must be grpo, sft or dpo, got {self.mode!r}"),
            (self.remat in REMAT, f"remat must be {'|'.join(REMAT)}, got {self.remat!r}"),
            (
                self.attention in ATTENTION_IMPLS,
                f"attention must be {'|'.join(ATTENTION_IMPLS)}, got {self.attention!r}",
            ),
            (self.grpo.advantage in ("grpo", "drgrpo", "rloo"), f"unknown grpo.advantage {self.grpo.advantage!r}"),
            (self.grpo.old_logprobs in ("sampler", "recompute"), "grpo.old_logprobs must be sampler|recompute"),
            (
                self.optim.micro_batches >= 1 and self.grpo.inner_iters >= 1,
                "micro_batches and inner_iters must be >= 1",
            ),
            (self.steps >= 0 and self.save_every >= 1, "steps must be >= 0 and save_every >= 1"),
            (self.sampling.n == 1, "sampling.n is set by grpo.group_size (the samples per prompt); leave it at 1"),
            (self.sampling.seed == 0, "sampling.seed is derived from seed and the step; set seed instead"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"TrainConfig: {msg}")
        # Every other value is checked here too, so a bad recipe fails in one line before any model is built
        # (a negative group size, say, used to surface as a traceback from deep inside the first rollout).
        o, g, d = self.optim, self.grpo, self.data
        fields = [
            ("keep", self.keep, self.keep >= 1, "must be >= 1 (the checkpoints a killed run resumes from)"),
            ("batch_size", self.batch_size, self.batch_size >= 1, "must be >= 1"),
            ("dtype", self.dtype, self.dtype in FLOAT_DTYPES, f"must be one of {', '.join(FLOAT_DTYPES)}"),
            (
                "compute_dtype",
                self.compute_dtype,
                self.compute_dtype in FLOAT_DTYPES,
                f"must be one of {', '.join(FLOAT_DTYPES)}",
            ),
            (
                "mesh",
                list(self.mesh),
                _mesh_ok(self.mesh),
                "must be 3 sizes [data, fsdp, tensor], each >= 1 or one -1 (fills the devices), e.g. [1, -1, 1]",
            ),
            ("optim.lr", o.lr, o.lr > 0, "must be > 0"),
            ("optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, "must be >= 0"),
            ("optim.decay_steps", o.decay_steps, o.decay_steps >= 0, "must be >= 0 (0 = steps * inner_iters)"),
            ("optim.end_lr_ratio", o.end_lr_ratio, 0 <= o.end_lr_ratio <= 1, "must lie in [0, 1]"),
            ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, "must be >= 0"),
            ("optim.b1", o.b1, 0 <= o.b1 < 1, "must lie in [0, 1)"),
            ("optim.b2", o.b2, 0 <= o.b2 < 1, "must lie in [0, 1)"),
            ("optim.eps", o.eps, o.eps > 0, "must be > 0"),
            ("optim.clip_norm", o.clip_norm, o.clip_norm >= 0, "must be >= 0 (0 disables clipping)"),
            ("grpo.prompts_per_step", g.prompts_per_step, g.prompts_per_step >= 1, "must be >= 1"),
            ("grpo.group_size", g.group_size, g.group_size >= 1, "must be >= 1 (completions per prompt)"),
            ("grpo.adv_eps", g.adv_eps, g.adv_eps >= 0, "must be >= 0"),
            ("grpo.eps_low", g.eps_low, g.eps_low >= 0, "must be >= 0"),
            ("grpo.eps_high", g.eps_high, g.eps_high >= 0, "must be >= 0"),
            ("grpo.beta", g.beta, g.beta >= 0, "must be >= 0 (0 = no KL term)"),
            (
                "grpo.aggregation",
                g.aggregation,
                g.aggregation in AGGREGATIONS,
                f"must be one of {', '.join(AGGREGATIONS)}",
            ),
            ("grpo.norm_length", g.norm_length, g.norm_length >= 0, "must be >= 0 (0 = sampling.max_new_tokens)"),
            ("grpo.logprob_chunk", g.logprob_chunk, g.logprob_chunk >= 1, "must be >= 1"),
            ("grpo.seq_bucket", g.seq_bucket, g.seq_bucket >= 0, "must be >= 0 (0 = next power of two)"),
            ("data.synthetic", d.synthetic, d.synthetic >= 0, "must be >= 0 (0 = read data.path)"),
            ("data.max_prompt_tokens", d.max_prompt_tokens, d.max_prompt_tokens >= 1, "must be >= 1"),
            ("dpo.beta", self.dpo.beta, self.dpo.beta > 0, "must be > 0 (the implicit reward's scale)"),
            (
                "dpo.label_smoothing",
                self.dpo.label_smoothing,
                0 <= self.dpo.label_smoothing < 0.5,
                "must lie in [0, 0.5) (the share of labels assumed flipped)",
            ),
        ]
        for name, value, ok, why in fields:
            if not ok:
                raise ConfigError(f"TrainConfig.{name}={value!r}: {why}")
        j = self.judge
        judge_fields = [
            (
                "judge.model",
                j.model,
                bool(j.model) or not self.policy,
                f"is empty: grpo.reward = {g.reward!r} needs the judge checkpoint (or preset)",
            ),
            ("judge.votes", j.votes, j.votes >= 1, "must be >= 1"),
            ("judge.show", j.show, j.show in JUDGE_SHOW, f"must be one of {', '.join(JUDGE_SHOW)}"),
            (
                "judge.extract",
                j.extract,
                j.extract in ("", *EXTRACTORS),
                f"must be one of {', '.join(EXTRACTORS)} or empty",
            ),
            (
                "judge.extract",
                j.extract,
                j.show != "answer" or j.extract,
                f"must be one of {', '.join(EXTRACTORS)} when show = 'answer'",
            ),
            ("judge.max_prompt_tokens", j.max_prompt_tokens, j.max_prompt_tokens >= 0, "must be >= 0 (0 = no limit)"),
            (
                "grpo.rule_weight",
                g.rule_weight,
                g.rule_weight == 0 or (self.policy and j.extract),
                "needs a policy run (grpo.reward = judge_*) and judge.extract, which reads the answer it checks",
            ),
            (
                "grpo.overlong_buffer",
                g.overlong_buffer,
                0 <= g.overlong_buffer < self.sampling.max_new_tokens,
                f"must lie in [0, sampling.max_new_tokens={self.sampling.max_new_tokens})",
            ),
        ]
        for name, value, ok, why in judge_fields:
            if not ok:
                raise ConfigError(f"TrainConfig.{name}={value!r}: {why}")
        try:
            get_prompt(j.prompt)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"TrainConfig.judge.prompt={j.prompt!r}: {e.args[0] if e.args else e}") from None
        try:
            get_prompt(d.prompt)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"TrainConfig.data.prompt={d.prompt!r}: {e.args[0] if e.args else e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def upgrade(values: dict, source: str) -> dict:
        """Old spellings, for :func:`rrm_jax.core.configs.load`: the rollouts' sampling keys moved from
        ``[grpo]`` to ``[sampling]`` (a warning names the new key); a demo recipe is refused by name."""
        if DEMO_KEYS & values.keys():
            raise ConfigError(
                f"{source}: this is an `rrm-jax demo` recipe, not a training recipe; run it with "
                f"rrm-jax demo --recipe {_demo_name(source)}"
            )
        grpo = values.get("grpo")
        old = {k: v for k, v in grpo.items() if k in MOVED_TO_SAMPLING} if isinstance(grpo, dict) else {}
        if not old:
            return values
        grpo = {k: v for k, v in grpo.items() if k not in old}
        sampling = dict(values.get("sampling") or {})
        for key, value in old.items():
            warnings.warn(f"{source}: grpo.{key} is deprecated; use sampling.{key}", DeprecationWarning, stacklevel=4)
            if key == "max_think_tokens" and value in (0, "0"):
                value = "none"  # [grpo] spelled "no budget" as 0; [sampling] as none (0 is a real budget there)
            sampling.setdefault(key, value)
        return {**values, "grpo": grpo, "sampling": sampling}


FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def _mesh_ok(mesh) -> bool:
    return len(mesh) == 3 and all(s >= 1 or s == -1 for s in mesh) and list(mesh).count(-1) <= 1


MOVED_TO_SAMPLING = ("max_new_tokens", "temperature", "top_p", "top_k", "max_think_tokens", "max_slots")
DEMO_KEYS = {"sft_steps", "grpo_steps"}  # train/demo.toml's (rrm_jax.demo.recipe.Recipe), never TrainConfig's


def _demo_name(source: str) -> str:
    """How ``rrm-jax demo --recipe`` names the file: the shipped train/demo.toml is plain ``demo``."""
    demo = shipped.shipped_dir("train") / "demo.toml"
    return "demo" if Path(source).resolve() == demo.resolve() else source


def preflight(cfg: TrainConfig, devices: int | None) -> None:
    """What a recipe needs of this machine, checked before anything is loaded: its data and, when ``devices`` is
    given (the model is built from ``mesh``), a mesh that fits that many devices."""
    d = cfg.data
    if not d.synthetic and not d.path:
        raise ConfigError(
            "TrainConfig.data.path is empty: set data.path=FILE.jsonl, or data.synthetic=N for N generated pairs"
        )
    if not d.synthetic and not Path(d.path).is_file():
        raise ConfigError(f"TrainConfig.data.path={d.path!r}: no such file")
    if devices is None:
        return
    why = mesh_misfit(cfg.mesh, devices)
    if why:
        raise ConfigError(f"TrainConfig.mesh={list(cfg.mesh)}: {why}; e.g. mesh=[1,-1,1] (FSDP over all {devices})")
    if cfg.remat == "offload":
        dev = jax.devices()[0]
        if "pinned_host" not in {m.kind for m in dev.addressable_memories()}:
            raise ConfigError(
                f'TrainConfig.remat="offload": {dev.platform} devices here have no host memory space (pinned_host) '
                'to keep the saved layer inputs in; use remat="full"'
            )


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """TrainConfig from a recipe TOML (or the defaults) with ``key=value`` / ``section.key=value`` overrides."""
    return configs.load(TrainConfig, path, overrides)
