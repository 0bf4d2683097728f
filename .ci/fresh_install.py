"""What a new user does after `pip install .` (no extras, no torch), run from outside the checkout:
a shipped preset by name, the judge with a chat-template tokenizer (needs jinja2), and the sampler.

The 0.5B preset is resolved by name and counted, not initialised: its ~500M random weights and a judge prompt
through 24 layers cost minutes of CPU beside the quick demo; the tiny preset runs the same code paths."""

import numpy as np

import rrm_jax
from rrm_jax.core.config import resolve_config
from rrm_jax.core.tokenizers import byte_tokenizer
from rrm_jax.judge import Judge

assert "site-packages" in rrm_jax.__file__, f"not the installed package: {rrm_jax.__file__}"
big = resolve_config("qwen2.5-0.5b")
assert (big.num_layers, big.hidden_size) == (24, 896), big
print(f"qwen2.5-0.5b preset: {big.num_params / 1e6:.0f}M parameters")
model = rrm_jax.init("tiny", dtype=np.float32, tokenizer=byte_tokenizer())
cfg = rrm_jax.SamplingConfig(max_new_tokens=4, temperature=1.0, seed=0)
out = rrm_jax.generate(model, ["2+2="], cfg)
assert out[0].num_tokens == 4, out[0]
judge = Judge(model, sampling=cfg)
prompt = judge.render("What is 2+2?", "4", "5")
assert "What is 2+2?" in prompt, prompt[:200]
v = judge.compare("What is 2+2?", "4", "5")
print(f"generate: {out[0].num_tokens} tokens; judge verdict {v.winner} from {v.tokens} tokens")

# `rrm-jax serve` without the [serve] extra: one line naming the extra, before any model loads
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

cli = Path(sys.executable).with_name("rrm-jax")
r = subprocess.run([str(cli), "serve", "--model", "tiny"], capture_output=True, text=True)
assert r.returncode == 2 and "pip install 'rrm-jax[serve]'" in r.stderr and r.stderr.count("\n") == 1, r.stderr
print("rrm-jax serve without [serve]: one line naming the extra")
print("fresh install OK")
