"""Verdict parsing exactly as the released RRM evaluation reads its outputs.

Rule (../shared/reference/rrm_prompt.json): prepend "<think>" to the generated text (the prompt ended with it);
without "</think>" there is no verdict (e.g. truncated at the token limit); otherwise read the LAST complete
\\boxed{...} after the LAST "</think>". "Assistant 1" -> 0 (first shown), "Assistant 2" -> 1.

Tolerances chosen here (all unambiguous): surrounding/internal whitespace ("\\boxed{ Assistant  1 }"), letter
case, and one layer of \\text{}/\\textbf{}/\\mathrm{}/\\texttt{} around the label ("\\boxed{\\text{Assistant 1}}").
Anything else - "Assistant 3", "Assistant 1 and 2", "Both", an empty box, a box only inside the thinking, or an
unterminated final box "\\boxed{Assistant 1" (it is skipped and an earlier complete box, if any, counts) - is None.
"""

from __future__ import annotations

import re

BOX = "\\boxed{"
_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|texttt|mathbf|textrm)\s*\{(.*)\}$", re.S)
_LABEL = re.compile(r"^assistant ([12])$", re.I)


def boxed_contents(text: str) -> list[str]:
    """The contents of every complete \\boxed{...} in `text`, in order (nested braces balanced)."""
    out = []
    i = text.find(BOX)
    while i >= 0:
        j, depth = i + len(BOX), 1
        while j < len(text) and depth:
            c = text[j]
            if c == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
                j += 2  # an escaped brace does not nest
                continue
            depth += c == "{"
            depth -= c == "}"
            j += 1
        if depth:  # unterminated: no later box can be complete inside it either, but keep scanning after it
            i = text.find(BOX, i + len(BOX))
            continue
        out.append(text[i + len(BOX) : j - 1])
        i = text.find(BOX, j)
    return out


def label_of(content: str) -> int | None:
    """0 for "Assistant 1", 1 for "Assistant 2" (tolerances in the module doc), else None."""
    s = content.strip()
    m = _WRAPPER.match(s)
    if m:
        s = m.group(1).strip()
    s = re.sub(r"\s+", " ", s)
    m = _LABEL.match(s)
    return None if m is None else int(m.group(1)) - 1


def answer_section(text: str, *, prepend_think: bool = True) -> str | None:
    """The text after the last "</think>", or None when the thinking never closed."""
    if prepend_think:
        text = "<think>" + text
    k = text.rfind("</think>")
    return None if k < 0 else text[k + len("</think>") :]


def parse_verdict(text: str, *, prepend_think: bool = True) -> int | None:
    """0 = Assistant 1 (the first response shown) preferred, 1 = Assistant 2, None = no valid verdict."""
    tail = answer_section(text, prepend_think=prepend_think)
    if tail is None:
        return None
    boxes = boxed_contents(tail)
    return label_of(boxes[-1]) if boxes else None
