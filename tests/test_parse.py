"""Verdict parsing: the official rule (last \\boxed{} after the last </think>) on real-looking outputs."""

import pytest

from rrm_jax.judge.parse import boxed_contents, parse_verdict

THINK = "Okay, let me compare both. Assistant 1 lists three points; Assistant 2 is vaguer.\n"
CASES = [
    # (generated text after the prompt's "<think>\n", expected)
    (THINK + "</think>\n\n\\boxed{Assistant 1}", 0),
    (THINK + "</think>\n\n\\boxed{Assistant 2}", 1),
    (THINK + "</think>\n\nFinal: \\boxed{Assistant 1} ... on reflection \\boxed{Assistant 2}", 1),  # last box
    (THINK + "</think>\n\n\\boxed{ Assistant  2 }", 1),  # whitespace
    (THINK + "</think>\n\n\\boxed{\\text{Assistant 1}}", 0),  # \text wrapper
    (THINK + "</think>\n\n\\boxed{assistant 2}", 1),  # case
    (THINK + "</think>\n\n\\boxed{Assistant 3}", None),
    (THINK + "</think>\n\n\\boxed{Assistant 1 and Assistant 2}", None),  # both
    (THINK + "</think>\n\n\\boxed{Neither}", None),
    (THINK + "</think>\n\n\\boxed{}", None),
    (THINK + "</think>\n\nAssistant 1 is better.", None),  # no box
    (THINK + "so the answer is \\boxed{Assistant 1} but let me check", None),  # no </think>: truncated
    ("\\boxed{Assistant 2} in thought</think>\n\nI pick the first.", None),  # box only in thinking
    ("first \\boxed{Assistant 2}</think> x </think>\n\n\\boxed{Assistant 1}", 0),  # last </think>
    ("a</think>\\boxed{Assistant 2} then </think> nothing", None),  # after LAST </think>
    (THINK + "</think>\n\n\\boxed{Assistant 2} and \\boxed{Assistant 1", 1),  # unterminated last box
    (THINK + "\n</think>\n\n\\boxed{Assistant 2}<｜end▁of▁sentence｜>", 1),  # eos text kept
    (THINK + "</think>\n\n\\boxed{\\text{Assistant} 1}", None),  # mangled
    ("", None),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_parse_table(text, expected):
    assert parse_verdict(text) == expected


def test_prepend_think_only_matters_for_full_texts():
    full = "<think>\nhmm</think>\\boxed{Assistant 2}"
    assert parse_verdict(full, prepend_think=False) == 1 == parse_verdict(full)
    assert parse_verdict("no think tags \\boxed{Assistant 2}", prepend_think=False) is None


def test_boxed_contents_nesting():
    assert boxed_contents(r"\boxed{a{b}c} x \boxed{\frac{1}{2}} \boxed{open") == ["a{b}c", r"\frac{1}{2}"]
    assert boxed_contents(r"\boxed{\{x\}}") == [r"\{x\}"]
