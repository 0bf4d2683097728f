"""The demo's synthetic, verifiable preference task and the small tokenizer it runs on.

A query asks for ``a+b`` or ``a-b`` (single digits, single-digit result: 110 problems); two candidate
answers are shown, exactly one right, the other a near miss (±1..3), so no surface feature gives it away.
Judging needs the result: the reasoning works it out step by step (:func:`chain`), checks candidate 1
against it by subtraction (``1:8-7=1``: a direct "is 8 equal to 7" step sits on a long learning plateau in a
tiny model, a subtraction fact does not), closes the thought and gives the verdict in the real RRM format
(``</think>`` then ``\\boxed{Assistant N}``), which the real parser reads.

The tokenizer is character level (printable ASCII) plus a few whole-word tokens (``<think>``,
``</think>``, ``\\boxed{``, ``Assistant``, chat roles) and a one-line chat template, built with the
``tokenizers`` library as a ``transformers.PreTrainedTokenizerFast``: no download, and the same
prompt/parse code paths as a real checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from rrm_jax.core.config import ModelConfig

WRONG_OFFSETS = (-3, -2, -1, 1, 2, 3)


@dataclasses.dataclass(frozen=True)
class ArithmeticProblem:
    """``a op b`` with single digits (op ``+`` or ``-``)."""

    a: int
    b: int
    op: str = "+"

    @property
    def query(self) -> str:
        return f"{self.a}{self.op}{self.b}=?"

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b


@dataclasses.dataclass(frozen=True)
class Pair:
    """A preference pair: ``chosen`` is the right sum, ``rejected`` a near miss."""

    problem: ArithmeticProblem
    wrong: int

    @property
    def query(self) -> str:
        return self.problem.query

    @property
    def chosen(self) -> str:
        return str(self.problem.answer)

    @property
    def rejected(self) -> str:
        return str(self.wrong)


def all_problems() -> list[ArithmeticProblem]:
    """Every single-digit ``a+b`` and ``a-b`` whose result is a single digit (110 problems)."""
    every = (ArithmeticProblem(a, b, op) for op in "+-" for a in range(10) for b in range(10))
    return [p for p in every if 0 <= p.answer <= 9]


def all_pairs() -> list[Pair]:
    out = []
    for p in all_problems():
        out += [Pair(p, p.answer + d) for d in WRONG_OFFSETS if 0 <= p.answer + d <= 9]
    return out


def split_pairs(seed: int, heldout_fraction: float = 0.2) -> tuple[list[Pair], list[Pair]]:
    """Disjoint train / held-out pairs (a held-out pair's (query, wrong answer) never appears in training)."""
    pairs = all_pairs()
    perm = np.random.default_rng(seed).permutation(len(pairs))
    n_held = int(round(len(pairs) * heldout_fraction))
    return [pairs[i] for i in perm[n_held:]], [pairs[i] for i in perm[:n_held]]


def snap_judgment(pick: int) -> str:
    """Close the thought and give the verdict; on its own, a judgment with no reasoning."""
    return f"</think>\n\n\\boxed{{Assistant {pick}}}"


def chain(problem: ArithmeticProblem) -> str:
    """The result worked out one unit at a time: ``3+4=4+3=5+2=6+1=7``, ``8-3=7-2=6-1=5``.

    Every step is a successor/predecessor of a token four places back, the same rule for every problem, so
    the skill carries over to problems never traced in SFT; writing ``3+4=7`` directly lets a tiny model
    copy one of the two shown candidates instead of adding (held-out sums ~50% right vs ~90%)."""
    a, b, op = problem.a, problem.b, problem.op
    if b == 0:
        return f"{a}{op}0={a}"
    steps = [f"{a}{op}{b}"]
    while b > 0:
        a, b = (a + 1 if op == "+" else a - 1), b - 1
        steps.append(f"{a}{op}{b}" if b else str(a))
    return "=".join(steps)


def reasoning(problem: ArithmeticProblem, first: str, second: str) -> str:
    """The completion after ``<think>\\n``: the chain, a check of candidate 1 by subtraction (0 <=> it is the
    result; the ``1:`` label lets the model find the candidate by content, not by a length-dependent offset),
    then the verdict."""
    s = problem.answer
    pick = 1 if str(s) == first else 2 if str(s) == second else None
    if pick is None:
        raise ValueError(f"{problem.query}: neither {first!r} nor {second!r} equals {s}")
    c = int(first)
    return f"{chain(problem)}\n1:{c}-{s}={c - s}\n" + snap_judgment(pick)


def careless_chain(problem: ArithmeticProblem, slip: int = 0) -> str:
    """:func:`chain` whose first step is off by ``slip`` (-1, 0 or +1), carried through to a wrong result:
    ``3+4=5+3=6+2=7+1=8``. The demo's policy starts out with this habit (a careless first step)."""
    if problem.b == 0 or slip == 0:
        return chain(problem)
    step = 1 if problem.op == "+" else -1
    first = ArithmeticProblem(problem.a + step + slip, problem.b - 1, problem.op)
    return f"{problem.query[:-2]}={chain(first)}" if first.b else f"{problem.query[:-2]}={first.a}"


def slips(problem: ArithmeticProblem) -> list[int]:
    """The first-step slips that keep every number of the chain a single digit (none when b = 0)."""
    if problem.b == 0:
        return []
    end = problem.answer
    return [d for d in (-1, 1) if 0 <= end + d <= 9 and 0 <= problem.a + (1 if problem.op == "+" else -1) + d <= 9]


def policy_answer(problem: ArithmeticProblem, slip: int = 0) -> str:
    """A policy's whole response after ``<think>\n``: its chain, then the boxed result the chain arrived at."""
    text = careless_chain(problem, slip)
    return f"{text}\n</think>\n\n\\boxed{{{text.rsplit('=', 1)[1]}}}"


def policy_batch(problems: list[ArithmeticProblem], size: int, rng: np.random.Generator, tokenizer, careless: float):
    """(prompt_ids, completion_ids) for the policy's warm start: a teacher that slips on the first step of a
    share ``careless`` of the problems where a slip is possible."""
    from rrm_jax.core.tokenizers import chat_prompt

    prompts, comps = [], []
    for i in rng.integers(0, len(problems), size):
        p = problems[i]
        options = slips(p)
        slip = int(rng.choice(options)) if options and rng.random() < careless else 0
        prompts.append(chat_prompt(tokenizer, p.query))
        comps.append(tokenizer.encode(policy_answer(p, slip), add_special_tokens=False) + [tokenizer.eos_token_id])
    return prompts, comps


def split_problems(seed: int, heldout: int) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
    """The policy's questions: (training, held-out), disjoint; the held-out ones are never trained on."""
    probs = all_problems()
    perm = np.random.default_rng([seed, 0x90]).permutation(len(probs))
    return [probs[i] for i in perm[heldout:]], [probs[i] for i in perm[:heldout]]


def knockout_candidates(problem: ArithmeticProblem, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct answers for best-of-N: the right one plus n-1 near misses, shuffled."""
    s = problem.answer
    pool = [x for x in range(10) if x != s]
    if n - 1 > len(pool):
        raise ValueError(f"at most {len(pool) + 1} candidates for {problem.query}")
    cands = [s] + list(rng.choice(pool, size=n - 1, replace=False))
    rng.shuffle(cands)
    return [str(int(c)) for c in cands]


def iterate(pairs: list[Pair], batch: int, seed: int) -> Iterator[list[Pair]]:
    """Endless seeded shuffled batches."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(len(pairs))
        for i in range(0, len(perm) - batch + 1, batch):
            yield [pairs[j] for j in perm[i : i + batch]]


def model_config(hidden: int = 64, layers: int = 2, vocab_size: int = 128):
    """The demo's tiny Qwen2 (qkv bias, tied embeddings, GQA 4:2)."""
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_layers=layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=hidden // 4,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        qkv_bias=True,
        max_position_embeddings=256,
        name="rrm-demo",
    )


def sft_batch(pairs: list[Pair], size: int, rng: np.random.Generator, tokenizer, render, snap_fraction: float = 0.0):
    """(prompt_ids, completion_ids) for ``size`` random pairs in random order. With probability ``snap_fraction``
    the teacher judges without thinking (a coin-flip verdict); otherwise it writes the reasoning trace."""
    prompts, comps = [], []
    eos = tokenizer.eos_token_id
    for i in rng.integers(0, len(pairs), size):
        p = pairs[i]
        first, second = (p.rejected, p.chosen) if rng.random() < 0.5 else (p.chosen, p.rejected)
        if rng.random() < snap_fraction:
            trace = snap_judgment(int(rng.integers(1, 3)))
        else:
            trace = reasoning(p.problem, first, second)
        prompts.append(tokenizer.encode(render(p.query, first, second), add_special_tokens=False))
        comps.append(tokenizer.encode(trace, add_special_tokens=False) + [eos])
    return prompts, comps
