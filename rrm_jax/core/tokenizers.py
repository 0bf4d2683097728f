"""Tokenizers: the two generated ones (nothing to download) and ``load_tokenizer``, what every ``tokenizer=`` means.

- ``bytes``: byte-level BPE with no merges (vocab 256 + specials); every string encodes, for random tiny models.
- ``chars``: the demo's character-level vocabulary (~105) with whole-word tokens for the RRM markup.
"""

from __future__ import annotations

from pathlib import Path

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
WORD_TOKENS = ("<think>", "</think>", "\\boxed{", "Assistant", "<|user|>", "<|assistant|>")
# Generation prompt ends with "<think>\n" already, so render_prompt adds nothing.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% if m['content'] %}{{ m['content'] }}\n{% endif %}"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}<eos>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (vocab 256 + a few specials) and a one-line chat template.

    For random tiny models: nothing to download, every string encodes, ids stay below 300.
    """
    # transformers is imported on first use: `import rrm_jax` does not pay for it
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<|user|>", "<|assistant|>", "<think>", "</think>"]
    tok.add_special_tokens([AddedToken(t, special=t in ("<pad>", "<eos>"), normalized=False) for t in specials])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
        "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<eos>"
        "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
    )
    return fast


def char_tokenizer():
    """A char-level ``PreTrainedTokenizerFast`` (vocab ~105) with think tags, eos, pad and a chat template.

    Written as a byte-level BPE without merges (each printable ASCII character and newline one token), because
    transformers' ``AutoTokenizer`` reloads every tokenizer saved beside a ``qwen2`` config as ``Qwen2Tokenizer``,
    which keeps the vocabulary but imposes Qwen2's byte-level pipeline: a plain character vocabulary came back
    without its spaces and newlines. In byte-level form the pipeline is the one it already has, so a saved demo
    judge encodes identically wherever it is loaded (checked at every export: :func:`check_reload`).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = [PAD, EOS, UNK]
    byte_char = bytes_to_unicode()  # byte -> the character byte-level vocabularies spell it with ('Ġ' for space)
    chars = [byte_char[i] for i in range(32, 127)] + [byte_char[ord("\n")]]
    vocab = {t: i for i, t in enumerate(specials + list(WORD_TOKENS) + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    # think tags stay non-special (as in DeepSeek-R1 tokenizers) so decoded text keeps them for the parser.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in WORD_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK)
    fast.chat_template = CHAT_TEMPLATE
    return fast


PROBE = "Query: 3 + 4 = ?\n\nAssistant 1:  7\tok \\boxed{1}\r\n  end. 'quoted' \"x\" 12,345.6 -- _x_ ~`|^"


def check_reload(tokenizer, hf_config: dict) -> None:
    """Raise a CheckpointError unless ``AutoTokenizer`` reloads ``tokenizer``, saved beside ``hf_config``, to the
    same token ids and special tokens (what transformers, and every later rrm-jax command, will load).

    The probe: a text of spaces, newlines, digits and punctuation (the characters it has tokens for), the
    tokenizer's added tokens, its first thousand vocabulary entries decoded, and a chat turn in its template."""
    import json
    import tempfile

    from transformers import AutoTokenizer

    from rrm_jax.core.errors import CheckpointError

    unk = tokenizer.unk_token_id
    known = lambda ch: unk is None or unk not in tokenizer.encode(ch, add_special_tokens=False)
    probe = "".join(ch for ch in PROBE if known(ch))  # characters outside the vocabulary are no text it reads
    texts = [probe, " ".join(t.content for t in tokenizer.added_tokens_decoder.values())]
    texts.append(tokenizer.decode(list(range(min(len(tokenizer), 1000))), skip_special_tokens=True))
    if getattr(tokenizer, "chat_template", None):
        turn = [{"role": "user", "content": probe}, {"role": "assistant", "content": "<think>\n7\n</think> 7"}]
        texts.append(tokenizer.apply_chat_template(turn, tokenize=False))
    with tempfile.TemporaryDirectory(prefix="rrm-jax-tokenizer-") as tmp:
        with open(f"{tmp}/config.json", "w") as f:
            json.dump(hf_config, f)
        tokenizer.save_pretrained(tmp)
        again = AutoTokenizer.from_pretrained(tmp)
    for text in texts:
        want, got = (t.encode(text, add_special_tokens=False) for t in (tokenizer, again))
        if want != got:
            at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            raise CheckpointError(
                f"transformers' AutoTokenizer would reload this tokenizer as {type(again).__name__} with other "
                f"token ids (first difference at token {at} of {text[:60]!r}...: {want[at : at + 4]} saved, "
                f"{got[at : at + 4]} reloaded), so the exported model would read other text than it was trained on"
            )
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(tokenizer, name) != getattr(again, name):
            raise CheckpointError(
                f"transformers' AutoTokenizer would reload this tokenizer with {name}={getattr(again, name)} "
                f"(saved: {getattr(tokenizer, name)})"
            )


def chat_prompt(tokenizer, query: str) -> list[int]:
    """A policy's prompt: ``query`` as the user turn of the tokenizer's chat template, generation prompt added
    (for R1-style templates, and the generated ones, that ends in ``<think>\n``: the policy reasons first)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": query}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer.encode(text, add_special_tokens=False))


GENERATED = {"bytes": byte_tokenizer, "chars": char_tokenizer, "demo": char_tokenizer}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def load_tokenizer(spec: str | Path):
    """A generated tokenizer by name (bytes, chars; demo = chars), or ``AutoTokenizer`` from a directory / hub id.

    A directory that holds no tokenizer files gives None (a checkpoint saved without one)."""
    if str(spec) in GENERATED:
        return GENERATED[str(spec)]()
    path = Path(spec)
    if path.is_dir() and not any((path / f).exists() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(spec))
