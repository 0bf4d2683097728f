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
    """A char-level ``PreTrainedTokenizerFast`` (vocab ~105) with think tags, eos, pad and a chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, UNK]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + list(WORD_TOKENS) + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # tokens are characters: join them without spaces
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    # think tags stay non-special (as in DeepSeek-R1 tokenizers) so decoded text keeps them for the parser.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in WORD_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK)
    fast.chat_template = CHAT_TEMPLATE
    return fast


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
