"""An exported checkpoint's tokenizer reloads through transformers' AutoTokenizer to the same token ids (issue 22.8).

AutoTokenizer reloads every tokenizer saved beside a ``qwen2`` config as Qwen2Tokenizer, which keeps the
vocabulary but imposes Qwen2's byte-level pipeline: the demo's character tokenizer came back without its spaces
and newlines, and the demo's saved judge read other text than it was trained on.
"""

import json

import jax.numpy as jnp
import pytest
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

import rrm_jax
from rrm_jax import CheckpointError
from rrm_jax.core.tokenizers import CHAT_TEMPLATE, EOS, PAD, UNK, WORD_TOKENS, byte_tokenizer, char_tokenizer
from rrm_jax.demo import task

# every character the demo's vocabulary holds, its word tokens, and its special tokens, in one text
ALPHABET = "".join(chr(i) for i in range(32, 127)) + "\n" + "".join(WORD_TOKENS) + f"{EOS}{PAD}"


def _export(tokenizer, mesh, out, vocab_size=128):
    model = rrm_jax.init(task.model_config(vocab_size=vocab_size), seed=0, mesh=mesh, tokenizer=tokenizer)
    return rrm_jax.save_hf(model, out, dtype=jnp.float32)


def _same_encodings(saved, again, texts):
    for text in texts:
        assert again.encode(text, add_special_tokens=False) == saved.encode(text, add_special_tokens=False), text
        assert again.decode(again.encode(text, add_special_tokens=False)) == text
    assert (again.eos_token_id, again.pad_token_id) == (saved.eos_token_id, saved.pad_token_id)


def test_the_demo_tokenizer_reloads_through_auto_tokenizer(mesh1, tmp_path):
    tok = char_tokenizer()
    out = _export(tok, mesh1, tmp_path / "judge")
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    again = transformers.AutoTokenizer.from_pretrained(str(out))
    turn = [{"role": "user", "content": "3+4=?\n1:7\n2:8"}]
    rendered = tok.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    assert again.apply_chat_template(turn, add_generation_prompt=True, tokenize=False) == rendered
    _same_encodings(tok, again, [ALPHABET, "a\nb 1:2\n3+4=?", rendered, task.snap_judgment(2)])
    # every character is one token, as the demo was trained: ids 0..104, each character its own
    assert len(again.encode(ALPHABET[:96], add_special_tokens=False)) == 96
    assert rrm_jax.load(out, mesh=mesh1, dtype=jnp.float32).tokenizer.encode("1 2\n") == tok.encode("1 2\n")


def test_bpe_tokenizers_reload_through_auto_tokenizer(mesh1, tmp_path, shared_dir):
    r1 = transformers.AutoTokenizer.from_pretrained(str(shared_dir / "tokenizers" / "deepseek-r1-distill-qwen"))
    for name, tok, vocab in (("bytes", byte_tokenizer(), 320), ("r1", r1, len(r1))):
        out = _export(tok, mesh1, tmp_path / name, vocab_size=vocab)
        again = transformers.AutoTokenizer.from_pretrained(str(out))
        _same_encodings(tok, again, [ALPHABET, "Hello world\n\n  x = 1\t# ok", "<think>\n1+1=2\n</think>"])


def test_a_tokenizer_auto_tokenizer_would_change_is_refused_before_anything_is_written(mesh1, tmp_path):
    # the demo's character tokenizer as it was: a word-level vocabulary split per character
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate([PAD, EOS, UNK, *WORD_TOKENS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD, EOS, UNK)])
    old = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK)
    old.chat_template = CHAT_TEMPLATE
    with pytest.raises(CheckpointError, match="AutoTokenizer would reload this tokenizer as Qwen2Tokenizer"):
        _export(old, mesh1, tmp_path / "judge")
    assert not (tmp_path / "judge").exists()


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(mesh1, tmp_path, shared_dir, capsys):
    """Issue 22.9: ids past the embedding were clamped to its last row (silently other text)."""
    with pytest.raises(rrm_jax.ConfigError, match="has 105 tokens but the model rrm-demo embeds 64: ids past"):
        rrm_jax.init(task.model_config(vocab_size=64), mesh=mesh1, tokenizer=char_tokenizer())
    from rrm_jax.cli import main

    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query": "q", "candidates": ["a", "b"]}) + "\n")
    r1 = str(shared_dir / "tokenizers" / "deepseek-r1-distill-qwen")
    argv = ["rank", "--queries", str(queries), "--out", str(tmp_path / "r.jsonl"), "--model", "tiny"]
    assert main(argv + ["--tokenizer", r1]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokens but the model tiny embeds 512" in err, err
