"""Answer extraction for best-of-N, against answers worked out by hand."""

from fractions import Fraction

import pytest

from rrm_jax.data.answers import EXTRACTORS, choice_answer, last_boxed, math_answer, normalise_math, same_answer


@pytest.mark.parametrize(
    "text, want",
    [
        ("Let's think. (A) is wrong, (C) fits. The answer is (C).", "C"),
        ("the answer is B", "B"),
        ("Answer: (J)", "J"),
        ("First I thought the answer is (A). On reflection the answer is (D)", "D"),  # the last statement wins
        ("So we get \\boxed{E}.", "E"),
        ("\\boxed{\\text{(G)}}", "G"),
        ("Options (A) and (B) remain; I pick (B)", "B"),  # no statement, no box: the last (X)
        ("The answer is 42", None),
        ("no letters here", None),
        ("\\boxed{AB}", None),
    ],
)
def test_choice_answer(text, want):
    assert choice_answer(text) == want


def test_last_boxed_balances_braces_and_refuses_a_cut_box():
    assert last_boxed("x \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\frac{1}{2") is None
    assert last_boxed("no box") is None


@pytest.mark.parametrize(
    "a, b",
    [
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac{3}{6}", "1/2"),
        ("-\\frac{2}{4}", "-0.5"),
        ("1,000", "1000"),
        ("90^\\circ", "90"),
        ("$12$", "12"),
        ("\\left(1,2\\right)", "(1, 2)"),
        ("7.", "7"),
        ("\\text{5}", "5"),
    ],
)
def test_spellings_of_one_value_normalise_equal(a, b):
    assert normalise_math(a) == normalise_math(b)


def test_numbers_become_exact_fractions():
    assert normalise_math("0.1") == str(Fraction(1, 10)) and normalise_math("\\frac{6}{4}") == "3/2"
    assert normalise_math("x^2+1") == "x^2+1" and normalise_math("1/0") == "1/0"  # not a number: the text


def test_math_answer_and_same_answer():
    assert math_answer("so $x = \\boxed{\\dfrac{10}{4}}$.") == "5/2"
    assert math_answer("no final box") is None
    assert same_answer("math", math_answer("\\boxed{2.5}"), "\\boxed{\\frac{5}{2}}")
    assert same_answer("math", math_answer("\\boxed{2.5}"), "5/2")
    assert not same_answer("math", math_answer("\\boxed{2.4}"), "5/2")
    assert same_answer("choice", choice_answer("the answer is (c)"), "C")
    assert same_answer("choice", "C", "(C)") and not same_answer("choice", None, "C")
    assert set(EXTRACTORS) == {"choice", "math"}
    with pytest.raises(ValueError, match="unknown answer kind"):
        same_answer("essay", "x", "y")
