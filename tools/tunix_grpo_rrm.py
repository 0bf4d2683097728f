"""Tunix's GRPO learner (google-tunix) for 2 steps, its reward from rrm-jax's adapter `rrm_jax.rewards.reward_function`.

Everything is random weights and local: a tiny rrm-jax judge (byte tokenizer, the "demo" judge prompt) and a tiny
Tunix Qwen2 policy with a byte-level tokenizer of its own. Run:

    /tmp/venv-tunix/bin/python tools/tunix_grpo_rrm.py
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from tunix.models.qwen2 import model as qwen2_lib  # noqa: E402
from tunix.rl import rl_cluster as rl_cluster_lib  # noqa: E402
from tunix.rl.grpo import grpo_learner as grpo_lib  # noqa: E402
from tunix.rl.rollout import base_rollout  # noqa: E402

import rrm_jax  # noqa: E402
import rrm_jax.rewards  # noqa: E402  (a submodule: `import rrm_jax` alone does not expose it)
from rrm_jax.core.tokenizers import byte_tokenizer  # noqa: E402
from rrm_jax.judge.judge import Judge  # noqa: E402
from rrm_jax.sampler import SamplingConfig  # noqa: E402

MAX_STEPS = 2
NUM_GENERATIONS = 2
BATCH = 2  # prompts per step -> BATCH * NUM_GENERATIONS completions per reward call
GEN_TOKENS = 16


# ---------------------------------------------------------------- 1. the rrm-jax judge and its reward function
mesh_rrm = rrm_jax.make_mesh((1, 1, 1), devices=jax.devices()[:1])
jm = rrm_jax.init("tiny", seed=0, mesh=mesh_rrm, dtype=jnp.float32, tokenizer=byte_tokenizer())
judge = Judge(
    jm,
    prompt="demo",
    sampling=SamplingConfig(max_new_tokens=16, max_think_tokens=8, temperature=0.6, max_slots=8),
)
adapter = rrm_jax.rewards.reward_function(judge, "judge_elo")

CALLS: list[dict] = []


def rrm_judge_elo(prompts, completions, **kwargs):
    """The adapter, logged: what Tunix passed in and what came back."""
    t = time.perf_counter()
    out = adapter(prompts, completions, **kwargs)
    rec = {
        "call": len(CALLS),
        "n_prompts": len(prompts),
        "n_completions": len(completions),
        "distinct_prompts": len(dict.fromkeys(map(str, prompts))),
        "kwargs": {
            k: (type(v).__name__, (len(v) if hasattr(v, "__len__") and not isinstance(v, str) else v))
            for k, v in kwargs.items()
        },  # fmt: skip
        "prompt_types": sorted({type(p).__name__ for p in prompts}),
        "rewards": [round(float(r), 4) for r in out],
        "seconds": round(time.perf_counter() - t, 2),
    }
    CALLS.append(rec)
    print(
        f"[reward] call {rec['call']}: {rec['n_prompts']} prompts ({rec['distinct_prompts']} distinct, types "
        f"{rec['prompt_types']}), {rec['n_completions']} completions, kwargs {rec['kwargs']}",
        flush=True,
    )
    for p, c, r in zip(prompts, completions, out):
        print(f"[reward]   {str(p)!r:>16} -> {c!r:.60} : {r:+.4f}", flush=True)
    print(f"[reward]   rewards {rec['rewards']} in {rec['seconds']} s", flush=True)
    return out


rrm_judge_elo.__name__ = adapter.__name__  # Tunix logs rewards/<name>


# ---------------------------------------------------------------- 2. the tiny Tunix policy and its tokenizer
class ByteTokenizer:
    """pad 0, bos 1, eos 2, byte b -> b + 3 (the duck-typed tokenizer Tunix's TokenizerAdapter accepts)."""

    OFFSET = 3

    def encode(self, text: str, **_) -> list[int]:
        return [b + self.OFFSET for b in str(text).encode("utf-8")]

    def decode(self, ids, **_) -> str:
        bs = bytes(int(i) - self.OFFSET for i in ids if self.OFFSET <= int(i) < 256 + self.OFFSET)
        return bs.decode("utf-8", errors="replace")

    def bos_id(self) -> int:
        return 1

    def eos_id(self) -> int:
        return 2

    def pad_id(self) -> int:
        return 0


tok = ByteTokenizer()
cfg = qwen2_lib.ModelConfig(
    num_layers=2,
    vocab_size=264,  # 256 bytes + 3 specials, rounded up
    embed_dim=64,
    hidden_dim=128,
    num_heads=4,
    head_dim=16,
    num_kv_heads=2,
    rope_theta=10_000,
    norm_eps=1e-6,
    use_tied_embedding=False,
)
mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1], axis_types=(jax.sharding.AxisType.Auto,) * 2)


# Created unsharded; RLCluster reshards both onto `mesh` (it logs "Resharding model from None to Mesh(...)").
def tiny_qwen2(seed: int = 0) -> qwen2_lib.Qwen2:
    """Tunix's Qwen2 with random weights. Its MLP kernels are zero-initialised (the class is meant to be loaded
    from a checkpoint), and an all-zero MLP gets zero gradients forever, so they are filled with N(0, 0.02) here."""
    m = qwen2_lib.Qwen2(cfg, rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 1)
    for i, layer in enumerate(m.layers):
        for j, name in enumerate(("gate_proj", "up_proj", "down_proj")):
            k = getattr(layer.mlp, name).kernel
            k[...] = 0.02 * jax.random.normal(jax.random.fold_in(key, 3 * i + j), k.shape, k.dtype)
    return m


policy = tiny_qwen2(0)
reference = tiny_qwen2(0)  # the same random weights, a separate copy
before = jax.tree.map(jnp.copy, nnx.state(policy, nnx.Param))

# ---------------------------------------------------------------- 3. RLCluster, GRPO, data
cluster_config = rl_cluster_lib.ClusterConfig(
    role_to_mesh={
        rl_cluster_lib.Role.ACTOR: mesh,
        rl_cluster_lib.Role.REFERENCE: mesh,
        rl_cluster_lib.Role.ROLLOUT: mesh,
    },
    rollout_engine="vanilla",
    offload_to_cpu=False,
    training_config=rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optax.adamw(1e-3),
        eval_every_n_steps=100,  # no eval in 2 steps
        max_steps=MAX_STEPS,
    ),
    rollout_config=base_rollout.RolloutConfig(
        max_tokens_to_generate=GEN_TOKENS,
        max_prompt_length=32,
        kv_cache_size=64,
        temperature=0.9,
    ),
)
rl_cluster = rl_cluster_lib.RLCluster(actor=policy, reference=reference, tokenizer=tok, cluster_config=cluster_config)


def show_metrics(buf):
    scalars = {}
    for k, (v, op) in buf.metrics.items():
        try:
            a = np.asarray(v)
            if a.dtype.kind in "fiub" and a.size:
                scalars[k] = float(op(a)) if op is not None else float(a.mean())
        except Exception:  # noqa: BLE001
            pass
    shown = {k: round(v, 4) for k, v in scalars.items() if k.startswith(("rewards/", "completions/", "global/"))}
    print(f"[tunix metrics] mode={buf.mode} global_step={buf.global_steps} {shown}", flush=True)


rl_cluster.with_external_metrics_logger(show_metrics)

learner = grpo_lib.GRPOLearner(
    rl_cluster=rl_cluster,
    algo_config=grpo_lib.GRPOConfig(num_generations=NUM_GENERATIONS, num_iterations=1, beta=0.04),
    reward_fns=[rrm_judge_elo],
)

PROMPTS = ["What is 2+3?", "What is 4+1?", "What is 7-2?", "What is 3*3?", "What is 9-4?", "What is 1+1?"]
train_ds = [{"prompts": np.array(PROMPTS[i : i + BATCH])} for i in range(0, len(PROMPTS), BATCH)]

print(f"[setup] judge + policy built in {time.perf_counter() - T0:.1f} s; devices {jax.devices()}", flush=True)
t_train = time.perf_counter()
learner.train(train_ds)
t_train = time.perf_counter() - t_train

# ---------------------------------------------------------------- 4. what happened
after = nnx.state(rl_cluster.actor_trainer.model, nnx.Param)  # RLCluster may have resharded `policy`
flat_b = dict(jax.tree_util.tree_leaves_with_path(before))
flat_a = dict(jax.tree_util.tree_leaves_with_path(after))
same = [jax.tree_util.keystr(k) for k in flat_a if np.allclose(np.asarray(flat_a[k]), np.asarray(flat_b[k]))]
changed = len(flat_a) - len(same)
steps = rl_cluster.actor_trainer.train_steps
ml = rl_cluster.actor_trainer.metrics_logger
for name in ("loss", "kl", "pg_clipfrac"):
    try:
        hist = ml.get_metric_history("actor", name, "train")
        print(f"[tunix actor/{name}] per step: {[round(float(x), 6) for x in np.ravel(hist)]}")
    except Exception as e:  # noqa: BLE001
        print(f"[tunix actor/{name}] not logged ({type(e).__name__}: {e})".splitlines()[0])
rml = rl_cluster._rl_metrics_logger
for name in ("rrm_judge_elo", "mean", "min", "max"):
    try:
        print(
            f"[tunix rewards/{name}] per step: "
            f"{[round(float(x), 4) for x in np.ravel(rml.get_metric_history('rewards', name, 'train'))]}"
        )
    except Exception as e:  # noqa: BLE001
        print(f"[tunix rewards/{name}] not logged ({type(e).__name__})")
print(
    f"[result] train steps {steps}, global steps {rl_cluster.global_steps}, policy params changed "
    f"{changed}/{len(jax.tree.leaves(after))}, train {t_train:.1f} s, total {time.perf_counter() - T0:.1f} s"
)
print(f"[result] unchanged params: {same}")
print(f"[result] kwargs Tunix passed to the reward fn: {sorted(CALLS[0]['kwargs']) if CALLS else None}")
print(f"TUNIX GRPO OK: {steps} steps, {len(CALLS)} reward calls")
