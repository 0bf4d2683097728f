"""TRL's GRPOTrainer trains a tiny torch policy for two steps on rewards from an rrm-jax judge (issue 23.4): TRL calls
`rrm_jax.rewards.reward_function` with its own layout (each prompt's generations consecutive) and the rewards it
logs are the judge's."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


def test_trl_grpo_trains_two_steps_on_rrm_jax_rewards(tmp_path, mesh1):
    import jax.numpy as jnp
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import rrm_jax
    from rrm_jax.core.tokenizers import byte_tokenizer
    from rrm_jax.judge.judge import Judge
    from rrm_jax.rewards import reward_function

    tok = byte_tokenizer()
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, bos_token_id=None,
        )
    )  # fmt: skip
    before = [p.detach().clone() for p in policy.parameters()]
    judge = Judge(rrm_jax.init("tiny", seed=0, mesh=mesh1, dtype=jnp.float32, tokenizer=tok), prompt="demo")
    inner = reward_function(judge, "judge_knockout")
    calls = []

    def reward(prompts, completions, **kwargs):
        out = inner(prompts, completions, **kwargs)
        calls.append((list(prompts), out))
        return out

    reward.__name__ = inner.__name__
    data = datasets.Dataset.from_dict({"prompt": [f"{i} plus {i} is" for i in range(8)]})
    args = trl.GRPOConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=8, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        learning_rate=1e-2, temperature=1.0, seed=0,
    )  # fmt: skip
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    assert trainer.state.global_step == 2 and len(calls) >= 2
    for prompts, out in calls:  # TRL's layout: each prompt's 2 generations side by side, a reward each
        assert len(out) == len(prompts) and all(prompts[k] == prompts[k + 1] for k in range(0, len(prompts), 2))
    logged = [
        h[f"rewards/{reward.__name__}/mean"]
        for h in trainer.state.log_history
        if f"rewards/{reward.__name__}/mean" in h
    ]
    assert logged and logged[0] == pytest.approx(np.mean(calls[0][1]), abs=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))  # the policy moved
