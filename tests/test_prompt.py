"""The RRM prompt: constants equal the shared reference, rendering through the real R1-distill chat template."""

import json

import pytest

from rrm_jax.core.errors import ConfigError
from rrm_jax.judge.prompt import (
    RRM_PROMPT_V1,
    SHORT_PROMPT,
    JudgePrompt,
    get_prompt,
    list_prompts,
    make_render,
    register_prompt,
    render_prompt,
)


@pytest.fixture(scope="module")
def reference(shared_dir):
    return json.loads((shared_dir / "reference" / "rrm_prompt.json").read_text())


@pytest.fixture(scope="module")
def r1_tokenizer(shared_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(shared_dir / "tokenizers" / "deepseek-r1-distill-qwen"))


def test_constants_equal_reference(reference):
    assert RRM_PROMPT_V1.system == reference["system"]
    assert RRM_PROMPT_V1.user_template == reference["user_template"]
    assert RRM_PROMPT_V1.analysis_suffix == reference["analysis_suffix"]


def test_user_message_is_template_plus_suffix(reference):
    q, a1, a2 = "What is {x}?", "It is {y}.", "No idea"
    expected = reference["user_template"].format(question=q, answer1=a1, answer2=a2) + reference["analysis_suffix"]
    assert RRM_PROMPT_V1.user_message(q, a1, a2) == expected
    assert "What is {x}?" in expected  # braces inside texts survive formatting


def test_render_through_r1_template(reference, r1_tokenizer):
    q, a1, a2 = "Write a haiku about rain.", "Soft rain on the roof\nwhispers ...", "Rain is wet."
    user = reference["user_template"].format(question=q, answer1=a1, answer2=a2) + reference["analysis_suffix"]
    # The R1-distill template: bos + system + "<｜User｜>" + user + "<｜Assistant｜>"; its generation prompt lacks
    # "<think>\n", which the released checkpoints were trained to continue from.
    expected = "<｜begin▁of▁sentence｜>" + reference["system"] + "<｜User｜>" + user + "<｜Assistant｜>" + "<think>\n"
    text = render_prompt(r1_tokenizer, RRM_PROMPT_V1, q, a1, a2)
    assert text == expected
    ids = r1_tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == 151646 and ids[-3:-1] == [151645, 151648]  # bos ... Assistant, <think>


class _FakeTemplateTokenizer:
    """A template that already opens the thinking block, to check "<think>\\n" is not added twice."""

    chat_template = "x"

    def __init__(self, gen_suffix):
        self.gen_suffix = gen_suffix

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + self.gen_suffix


@pytest.mark.parametrize(
    "suffix,end", [("<A>", "<A><think>\n"), ("<A><think>\n", "<A><think>\n"), ("<A><think>", "<A><think>\n")]
)
def test_think_start_added_once(suffix, end):
    text = render_prompt(_FakeTemplateTokenizer(suffix), "rrm", "q", "a", "b")
    assert text.endswith(end) and text.count("<think>") == 1
    assert text.startswith("[system]" + RRM_PROMPT_V1.system + "[user]## Query\n\nq\n\n")


def test_registry_and_validation():
    assert get_prompt("rrm") is RRM_PROMPT_V1 and get_prompt("rrm-v1") is RRM_PROMPT_V1
    assert "rrm-v1" in list_prompts()
    custom = JudgePrompt("plain", 1, "", "Q: {question}\n1: {answer1}\n2: {answer2}\n", "Which? ")
    register_prompt(custom)
    assert get_prompt("plain-v1") is custom and custom.messages("q", "a", "b") == [
        {"role": "user", "content": "Q: q\n1: a\n2: b\nWhich? "}
    ]
    with pytest.raises(ValueError, match="already registered"):
        register_prompt(JudgePrompt("plain", 1, "x", "{question}{answer1}{answer2}", ""))
    with pytest.raises(ValueError, match="answer2"):
        JudgePrompt("bad", 1, "", "{question} {answer1}", "")
    with pytest.raises(ConfigError, match="unknown judge prompt"):
        get_prompt("nope")
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(type("T", (), {"chat_template": None})(), "rrm", "q", "a", "b")


def test_short_prompt_and_make_render():
    assert get_prompt("short") is SHORT_PROMPT and get_prompt("short-v1") is SHORT_PROMPT
    tok = _FakeTemplateTokenizer("<A>")
    render = make_render(tok, "short")
    assert (
        render("q", "a", "b")
        == render_prompt(tok, SHORT_PROMPT, "q", "a", "b")
        == (
            "[system]Pick the better answer.[user]Q: q\nA1: a\nA2: b\n"
            "Answer \\boxed{Assistant 1} or \\boxed{Assistant 2}.<A><think>\n"
        )
    )
    assert make_render(tok, RRM_PROMPT_V1)("q", "a", "b") == render_prompt(tok, "rrm-v1", "q", "a", "b")
    with pytest.raises(ConfigError, match="unknown judge prompt"):
        make_render(tok, "nope")  # at once, not on the first render
    # an equal prompt registered again (a module imported twice) changes nothing
    again = JudgePrompt("short", 1, SHORT_PROMPT.system, SHORT_PROMPT.user_template, SHORT_PROMPT.analysis_suffix)
    assert register_prompt(again, aliases=("short",)) is SHORT_PROMPT and get_prompt("short") is SHORT_PROMPT
