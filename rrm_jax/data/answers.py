"""Final answers pulled out of a policy's free text, for reward-guided best-of-N and majority voting.

Two extractors (``EXTRACTORS``), each ``text -> answer | None``:

- ``choice`` (:func:`choice_answer`): multiple choice in the MMLU-Pro / GPQA style. The last "the answer is (X)" (or "Answer: X"), else a
  ``\\boxed{X}``, else the last option letter written as ``(X)``. Letters are A-J (MMLU-Pro has ten options).
- ``math`` (:func:`math_answer`): the content of the last ``\\boxed{...}`` (braces balanced), normalised so that spellings of one value
  compare equal: spaces, ``$``, ``\\left``/``\\right``, ``\\!``, ``^\\circ``, ``\\text{}``, ``\\dfrac``/``\\tfrac``, a
  trailing period; numbers (integers, decimals, ``a/b`` and ``\\frac{a}{b}``) become one canonical fraction.

``same_answer(kind, extracted, reference)`` compares an extraction with a reference answer written either way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

LETTERS = "ABCDEFGHIJ"
_STATED = re.compile(r"answer\s*(?:is|:)\s*[\(\[]?\s*([A-J])\s*[\)\]]?(?![A-Za-z])", re.IGNORECASE)
_PAREN = re.compile(r"\(([A-J])\)")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, braces balanced (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced: the text was cut off inside the box


def choice_answer(text: str) -> str | None:
    stated = _STATED.findall(text)
    if stated:
        return stated[-1].upper()
    boxed = last_boxed(text)
    if boxed is not None:
        letter = re.sub(r"\\text\{([^{}]*)\}", r"\1", boxed).strip(" ()$")
        return letter.upper() if len(letter) == 1 and letter.upper() in LETTERS else None
    parens = _PAREN.findall(text)
    return parens[-1] if parens else None


_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "$", "^\\circ", "^{\\circ}", "\\%", "%")


def normalise_math(answer: str) -> str:
    s = answer.strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for token in _DROP:
        s = s.replace(token, "")
    s = re.sub(r"\s+", "", s).rstrip(".")
    value = _number(s)
    return s if value is None else str(value)


def _number(s: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s) or re.fullmatch(r"(-?)(-?\d+)/(-?\d+)", s)
    try:
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
        if re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", s.replace(",", "")):
            return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def math_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    return None if boxed is None else normalise_math(boxed)


EXTRACTORS: dict[str, Callable[[str], str | None]] = {"choice": choice_answer, "math": math_answer}


def same_answer(kind: str, extracted: str | None, reference: str) -> bool:
    """Whether an extracted answer equals a reference answer (written as a letter, a boxed or a plain value)."""
    if extracted is None:
        return False
    if kind == "choice":
        ref = choice_answer(reference) or reference.strip(" ()").upper()
        return extracted == ref
    if kind == "math":
        return extracted == normalise_math(last_boxed(reference) or reference)
    raise ValueError(f"unknown answer kind {kind!r}; known: {', '.join(EXTRACTORS)}")
