"""HF checkpoints in and out: HF -> rrm-jax -> HF round trips that transformers reloads, and bad checkpoints."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import transformers

import rrm_jax
from hf_reference import TINY_CONFIGS, hf_config, hf_logits, random_hf_model, save, torch  # skips without torch
from rrm_jax import CheckpointError

# isort: split
import safetensors.torch  # after hf_reference, which skips this module without torch

UNTIED = "qwen2-untied-g2-hd128-1e6"
TIED = "llama-tied-g7-hd128-1e4"


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """{name: (HF torch model, its save_pretrained dir)} for a tied Llama and an untied Qwen2."""
    out = {}
    for name in (UNTIED, TIED):
        hf = random_hf_model(hf_config(**TINY_CONFIGS[name], num_hidden_layers=3), seed=7)
        out[name] = hf, save(hf, tmp_path_factory.mktemp(name))
    return out


def _ids(vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (2, 10))


def _reload(path, dtype=None):
    kw = {} if dtype is None else {"dtype": dtype}
    kw["attn_implementation"] = "eager"  # as the reference models use
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), **kw).eval()


@pytest.mark.parametrize("name", [UNTIED, TIED])
def test_round_trip_fp32_is_exact(hf_dirs, name, mesh1, tmp_path):
    hf, src = hf_dirs[name]
    model = rrm_jax.load(src, mesh=mesh1, dtype=jnp.float32, tokenizer=None)
    out = rrm_jax.save_hf(model, tmp_path / "export")
    assert (out / "model.safetensors").exists() and not (out / "model.safetensors.index.json").exists()
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    back = _reload(out)
    assert type(back) is type(hf)
    want = hf.state_dict()
    got = back.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    ids = _ids(hf.config.vocab_size)
    np.testing.assert_array_equal(hf_logits(back, ids), hf_logits(hf, ids))
    # and the export loads back into rrm-jax with the same logits
    again = rrm_jax.load(out, mesh=mesh1, dtype=jnp.float32, tokenizer=None)
    np.testing.assert_array_equal(np.asarray(again.logits(ids)), np.asarray(model.logits(ids)))


def test_sharded_export_and_load(hf_dirs, mesh1, tmp_path):
    hf, src = hf_dirs[UNTIED]
    model = rrm_jax.load(src, mesh=mesh1, dtype=jnp.float32, tokenizer=None)
    out = rrm_jax.save_hf(model, tmp_path / "sharded", max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and not (out / "model.safetensors").exists()
    assert all((out / f).exists() for f in files)
    assert set(index["weight_map"]) == set(hf.state_dict())
    sizes = {f: (out / f).stat().st_size for f in files}
    biggest_tensor = max(p.numel() * 4 for p in hf.parameters())
    assert max(sizes.values()) <= max(200_000, biggest_tensor) + 4096, sizes  # + header
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in hf.parameters())
    back = _reload(out)
    ids = _ids(hf.config.vocab_size, 1)
    np.testing.assert_array_equal(hf_logits(back, ids), hf_logits(hf, ids))
    # rrm-jax reads the sharded index too (transformers wrote one file, we wrote several)
    again = rrm_jax.load(out, mesh=mesh1, dtype=jnp.float32, tokenizer=None)
    np.testing.assert_array_equal(np.asarray(again.logits(ids)), np.asarray(model.logits(ids)))


def test_transformers_sharded_checkpoint_loads(hf_dirs, mesh1, tmp_path):
    """A sharded checkpoint written by transformers itself (its own index format)."""
    hf, _ = hf_dirs[TIED]
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model = rrm_jax.load(tmp_path, mesh=mesh1, dtype=jnp.float32, tokenizer=None)
    ids = _ids(hf.config.vocab_size, 2)
    want = hf_logits(hf, ids)
    err = np.max(np.abs(np.asarray(model.logits(ids)) - want))
    assert err <= 1e-4 * np.max(np.abs(want))


@pytest.mark.parametrize("how", ["bf16-params", "cast-on-export"])
def test_bf16_round_trip(hf_dirs, how, mesh1, tmp_path):
    hf, src = hf_dirs[TIED]
    if how == "bf16-params":
        model = rrm_jax.load(src, mesh=mesh1, dtype=jnp.bfloat16, tokenizer=None)
        out = rrm_jax.save_hf(model, tmp_path / "bf16")
    else:
        model = rrm_jax.load(src, mesh=mesh1, dtype=jnp.float32, tokenizer=None)
        out = rrm_jax.save_hf(model, tmp_path / "bf16", dtype=jnp.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    header = rrm_jax.core.hf_io.SafetensorsFile(out / "model.safetensors").header
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    back = _reload(out, dtype="auto")
    assert back.dtype == torch.bfloat16
    # transformers reading the original fp32 checkpoint as bf16 (not hf.to(bf16), which also rounds RoPE's
    # inv_freq buffer): the same round-to-nearest-even cast of every weight, so identical logits
    ref = _reload(src, dtype=torch.bfloat16)
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    ids = _ids(hf.config.vocab_size, 3)
    np.testing.assert_array_equal(hf_logits(back, ids), hf_logits(ref, ids))


def test_tokenizer_travels_with_the_checkpoint(shared_dir, hf_dirs, mesh1, tmp_path):
    tok_dir = shared_dir / "tokenizers" / "deepseek-r1-distill-qwen"
    hf, src = hf_dirs[UNTIED]
    ck = tmp_path / "with-tok"
    shutil.copytree(src, ck)
    for f in tok_dir.iterdir():
        shutil.copy(f, ck / f.name)
    model = rrm_jax.load(ck, mesh=mesh1, dtype=jnp.float32)
    assert model.tokenizer.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    out = rrm_jax.save_hf(model, tmp_path / "export")
    again = transformers.AutoTokenizer.from_pretrained(str(out))
    assert again.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert rrm_jax.load(tmp_path / "export", mesh=mesh1, dtype=jnp.float32).tokenizer is not None
    assert rrm_jax.load(src, mesh=mesh1, dtype=jnp.float32).tokenizer is None  # no tokenizer files, no tokenizer


# ------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def ckpt(hf_dirs, tmp_path):
    """A writable copy of the untied checkpoint and its tensors."""
    _, src = hf_dirs[UNTIED]
    dst = tmp_path / "ck"
    shutil.copytree(src, dst)
    return dst, safetensors.numpy.load_file(str(dst / "model.safetensors"))


def _load_error(path, mesh1) -> str:
    with pytest.raises(CheckpointError) as e:
        rrm_jax.load(path, mesh=mesh1, dtype=jnp.float32, tokenizer=None)
    return str(e.value)


def test_missing_tensor_is_named(ckpt, mesh1):
    path, tensors = ckpt
    del tensors["model.layers.1.mlp.up_proj.weight"]
    rrm_jax.core.hf_io.write_safetensors(path / "model.safetensors", tensors)
    msg = _load_error(path, mesh1)
    assert "'model.layers.1.mlp.up_proj.weight'" in msg and "missing" in msg and str(path) in msg


def test_shape_mismatch_is_named(ckpt, mesh1):
    path, tensors = ckpt
    tensors["model.layers.2.self_attn.k_proj.weight"] = tensors["model.layers.2.self_attn.k_proj.weight"][:-1]
    rrm_jax.core.hf_io.write_safetensors(path / "model.safetensors", tensors)
    msg = _load_error(path, mesh1)
    assert "'model.layers.2.self_attn.k_proj.weight'" in msg and "[255, 96]" in msg
    assert str(path / "model.safetensors") in msg


def test_config_that_does_not_match_the_weights(ckpt, mesh1):
    path, _ = ckpt
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(cfg | {"intermediate_size": 128}))
    msg = _load_error(path, mesh1)
    assert "mlp.gate_proj.weight" in msg and "[160, 96]" in msg


def test_unused_tensor_is_refused(ckpt, mesh1):
    """A tensor the decoder would ignore (here an o_proj bias) means different maths: refuse, naming it."""
    path, tensors = ckpt
    tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros(96, np.float32)
    rrm_jax.core.hf_io.write_safetensors(path / "model.safetensors", tensors)
    assert "'model.layers.0.self_attn.o_proj.bias'" in _load_error(path, mesh1)


def test_bin_only_checkpoint_is_refused_without_unpickling(ckpt, mesh1):
    path, _ = ckpt
    (path / "model.safetensors").unlink()
    # a pickle that would run code if loaded
    (path / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'touch " + str(path / "pwned").encode() + b"'\ntR.")
    msg = _load_error(path, mesh1)
    assert "pytorch_model.bin" in msg and "safetensors" in msg
    assert not (path / "pwned").exists()


def test_empty_directory_and_missing_shard(ckpt, mesh1, tmp_path):
    path, tensors = ckpt
    (path / "model.safetensors").unlink()
    assert "model.safetensors" in _load_error(path, mesh1)
    keys = list(tensors)
    rrm_jax.core.hf_io.write_safetensors(path / "model-00001-of-00002.safetensors", {k: tensors[k] for k in keys[:5]})
    index = {
        "metadata": {},
        "weight_map": {
            k: ("model-00001-of-00002.safetensors" if i < 5 else "model-00002-of-00002.safetensors")
            for i, k in enumerate(keys)
        },
    }
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    msg = _load_error(path, mesh1)
    assert str(path / "model-00002-of-00002.safetensors") in msg and "missing" in msg


def test_corrupt_safetensors_header_is_named(ckpt, mesh1):
    path, _ = ckpt
    raw = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(raw[:8] + b"{not json" + raw[17:])
    msg = _load_error(path, mesh1)
    assert str(path / "model.safetensors") in msg and "header" in msg


def test_bf16_safetensors_read_bit_exact(tmp_path):
    """Our mmap reader vs the safetensors library on a bf16 file (the dtype numpy lacks)."""
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(ml_dtypes.bfloat16)
    rrm_jax.core.hf_io.write_safetensors(tmp_path / "a.safetensors", {"w": x, "b": np.arange(4, dtype=np.int64)})
    theirs = safetensors.torch.load_file(str(tmp_path / "a.safetensors"))
    assert theirs["w"].dtype == torch.bfloat16
    np.testing.assert_array_equal(theirs["w"].float().numpy(), x.astype(np.float32))
    f = rrm_jax.core.hf_io.SafetensorsFile(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(f.get("w"), x)
    np.testing.assert_array_equal(f.get("b"), np.arange(4))
