"""Faults in what the core reads: corrupt or truncated safetensors, malformed config.json, inputs past the model's
context and bad ``--model``/``dtype`` values. Each must fail as ONE line naming the file and tensor or field,
before any device work."""

from __future__ import annotations

import json
import shutil
import struct

import jax.numpy as jnp
import numpy as np
import pytest

import rrm_jax
from rrm_jax.core import hf_io
from rrm_jax.core.config import MODELS_DIR, ModelConfig, resolve_config
from rrm_jax.core.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def saved(tmp_path_factory, mesh1):
    model = rrm_jax.init("tiny", mesh=mesh1)
    return rrm_jax.save_hf(model, tmp_path_factory.mktemp("tiny") / "ck")


@pytest.fixture
def ckpt(saved, tmp_path):
    dst = tmp_path / "ck"
    shutil.copytree(saved, dst)
    return dst


def _one_line(exc_type, fn, *args, **kw) -> str:
    with pytest.raises(exc_type) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def _load_error(path, mesh1) -> str:
    return _one_line(CheckpointError, rrm_jax.load, path, mesh=mesh1, dtype=jnp.float32, tokenizer=None)


def _split(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _rewrite(path, header, data):
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


# ------------------------------------------------------------------------------------------ safetensors
@pytest.mark.parametrize(
    "how",
    ["cut-50%", "cut-99%", "cut-in-header", "random-bytes", "header-length-1e12", "header-not-an-object", "empty"],
)
def test_truncated_or_corrupt_file_is_named(ckpt, mesh1, how):
    f = ckpt / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    bad = {
        "cut-50%": raw[: len(raw) // 2],
        "cut-99%": raw[: len(raw) * 99 // 100],
        "cut-in-header": raw[: 8 + n // 2],
        "random-bytes": np.random.default_rng(0).bytes(len(raw)),
        "header-length-1e12": struct.pack("<Q", 10**12) + raw[8:],
        "header-not-an-object": struct.pack("<Q", 2) + b"[]",
        "empty": b"",
    }[how]
    f.write_bytes(bad)
    msg = _load_error(ckpt, mesh1)
    assert str(f) in msg, msg
    # the reader alone fails the same way (at open time, not at first use of a tensor)
    assert _one_line(CheckpointError, hf_io.SafetensorsFile, f) == msg


@pytest.mark.parametrize(
    "how, fragments",
    [
        ("size", ["holds", "needs"]),
        ("out-of-bounds", ["ends at byte", "truncated"]),
        ("overlap", ["overlap"]),
        ("dtype", ["unsupported dtype", "'F8'"]),
        ("shape", ["shape"]),
        ("offsets", ["data_offsets"]),
        ("entry", ["corrupt header entry"]),
    ],
)
def test_bad_tensor_entry_is_named(ckpt, mesh1, how, fragments):
    f = ckpt / "model.safetensors"
    header, data = _split(f)
    key = "model.layers.1.mlp.up_proj.weight"
    info = header[key]
    start, end = info["data_offsets"]
    if how == "size":
        info["shape"] = [info["shape"][0] + 1, info["shape"][1]]
    elif how == "out-of-bounds":
        info["data_offsets"] = [len(data) - (end - start) + 4, len(data) + 4]
    elif how == "overlap":
        other = next(v for k, v in header.items() if k != key and k != "__metadata__" and v["data_offsets"][0] > 0)
        other["data_offsets"] = [start + 4, start + 4 + other["data_offsets"][1] - other["data_offsets"][0]]
    elif how == "dtype":
        info["dtype"] = "F8"
    elif how == "shape":
        info["shape"] = "big"
    elif how == "offsets":
        info["data_offsets"] = [end, start]
    else:
        header[key] = 3
    _rewrite(f, header, data)
    msg = _load_error(ckpt, mesh1)
    assert str(f) in msg, msg
    if how != "overlap":
        assert repr(key) in msg, msg
    for frag in fragments:
        assert frag in msg, msg


def test_well_formed_files_still_read(tmp_path):
    """Zero-size tensors, gaps between tensors and the metadata entry are all valid safetensors."""
    f = tmp_path / "a.safetensors"
    hf_io.write_safetensors(f, {"e": np.zeros((0, 3), np.float32), "w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    header, data = _split(f)
    header["w"]["data_offsets"] = [8, 32]
    _rewrite(f, header, b"\0" * 8 + data)
    r = hf_io.SafetensorsFile(f)
    np.testing.assert_array_equal(r.get("w"), np.arange(6).reshape(2, 3))
    assert r.get("e").shape == (0, 3)


def test_export_over_an_earlier_export_leaves_one_checkpoint(tmp_path, mesh1):
    """Re-saving into a directory that held a sharded export: the old shards would be read as duplicates."""
    model = rrm_jax.init("tiny", mesh=mesh1)
    out = rrm_jax.save_hf(model, tmp_path / "ck", max_shard_bytes=100_000)
    assert len(list(out.glob("model-*.safetensors"))) > 1
    other = rrm_jax.init("tiny", mesh=mesh1, seed=1)
    rrm_jax.save_hf(other, out)
    assert sorted(f.name for f in out.iterdir()) == ["config.json", "model.safetensors"]
    back = rrm_jax.load(out, mesh=mesh1, dtype=jnp.float32, tokenizer=None)
    ids = np.arange(12).reshape(1, 12)
    np.testing.assert_array_equal(np.asarray(back.logits(ids)), np.asarray(other.logits(ids)))


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    """A full disk (or a kill) while the tensors are written leaves the previous file whole."""
    f = tmp_path / "a.safetensors"
    hf_io.write_safetensors(f, {"w": np.ones(4, np.float32)})

    def disk_full(v):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hf_io.np, "ascontiguousarray", disk_full)
    with pytest.raises(OSError):
        hf_io.write_safetensors(f, {"w": np.zeros(4, np.float32)})
    monkeypatch.undo()
    np.testing.assert_array_equal(hf_io.SafetensorsFile(f).get("w"), np.ones(4))


def _two_shards(ckpt, key):
    """Split the checkpoint in two files that both store ``key``."""
    reader = hf_io.SafetensorsFile(ckpt / "model.safetensors")
    arrays = {k: np.array(reader.get(k)) for k in reader.keys()}
    keys = sorted(arrays)
    first = {k: arrays[k] for k in keys[: len(keys) // 2]} | {key: arrays[key]}
    second = {k: arrays[k] for k in keys[len(keys) // 2 :]} | {key: arrays[key]}
    del reader
    (ckpt / "model.safetensors").unlink()
    hf_io.write_safetensors(ckpt / "model-00001-of-00002.safetensors", first)
    hf_io.write_safetensors(ckpt / "model-00002-of-00002.safetensors", second)
    return keys


def test_tensor_stored_in_two_shards_names_both(ckpt, mesh1):
    key = "model.layers.0.mlp.down_proj.weight"
    keys = _two_shards(ckpt, key)
    for indexed in (False, True):
        if indexed:
            wm = {
                k: "model-00001-of-00002.safetensors" if i < len(keys) // 2 else "model-00002-of-00002.safetensors"
                for i, k in enumerate(keys)
            }
            (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
        msg = _load_error(ckpt, mesh1)
        assert repr(key) in msg and "model-00001-of-00002.safetensors" in msg, msg
        assert "model-00002-of-00002.safetensors" in msg and "twice" in msg, msg


def test_index_entry_missing_from_its_shard_is_named(ckpt, mesh1):
    keys = _two_shards(ckpt, "model.norm.weight")
    wm = {k: "model-00001-of-00002.safetensors" for k in keys}  # claims every tensor is in shard 1
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    msg = _load_error(ckpt, mesh1)
    assert "model-00001-of-00002.safetensors" in msg and "not stored" in msg, msg
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["not", "a", "map"]}))
    assert "model.safetensors.index.json" in _load_error(ckpt, mesh1)
    (ckpt / "model.safetensors.index.json").write_bytes(b'{"weight_map": {"\xff": 1}}')
    assert "model.safetensors.index.json" in _load_error(ckpt, mesh1)


@pytest.mark.parametrize("dtype, name", [(np.int32, "I32"), (np.bool_, "BOOL"), (np.int8, "I8")])
def test_integer_weights_are_refused(ckpt, mesh1, dtype, name):
    f = ckpt / "model.safetensors"
    reader = hf_io.SafetensorsFile(f)
    arrays = {k: np.array(reader.get(k)) for k in reader.keys()}
    del reader
    key = "model.layers.1.self_attn.q_proj.weight"
    arrays[key] = arrays[key].astype(dtype)
    hf_io.write_safetensors(f, arrays)
    msg = _load_error(ckpt, mesh1)
    assert repr(key) in msg and name in msg and str(f) in msg, msg


# ------------------------------------------------------------------------------------------ config.json
BASE = resolve_config("tiny").to_hf_dict()


@pytest.mark.parametrize(
    "content, fragments",
    [
        (b"[1, 2]", ["JSON object", "list"]),
        (b'{"model_type": "qwen2", "hidden_size": \xff\xfe}', ["not UTF-8", "byte"]),
        (json.dumps(BASE | {"hidden_size": "64"}).encode(), ["'hidden_size'", "expected int", "'64'"]),
        (json.dumps(BASE | {"num_hidden_layers": True}).encode(), ["'num_hidden_layers'", "expected int"]),
        (json.dumps(BASE | {"vocab_size": 51.2}).encode(), ["'vocab_size'", "expected int"]),
        (json.dumps(BASE | {"intermediate_size": 0}).encode(), ["'intermediate_size'", "positive"]),
        (json.dumps(BASE | {"num_key_value_heads": -2}).encode(), ["'num_key_value_heads'", "positive"]),
        (json.dumps(BASE | {"rope_theta": "1e4"}).encode(), ["'rope_theta'", "expected float"]),
        (json.dumps(BASE | {"rms_norm_eps": -1}).encode(), ["'rms_norm_eps'"]),
        (json.dumps(BASE | {"tie_word_embeddings": "false"}).encode(), ["'tie_word_embeddings'", "expected bool"]),
        (json.dumps(BASE | {"eos_token_id": "2"}).encode(), ["'eos_token_id'"]),
        (json.dumps(BASE | {"max_position_embeddings": None}).encode(), ["'max_position_embeddings'"]),
        (json.dumps(BASE | {"rope_scaling": "yarn"}).encode(), ["'rope_scaling'", "object"]),
        (json.dumps(BASE | {"rope_parameters": [1]}).encode(), ["'rope_parameters'", "object"]),
        (json.dumps(BASE | {"layer_types": "full_attention"}).encode(), ["'layer_types'", "list"]),
        (json.dumps(BASE | {"use_sliding_window": True, "max_window_layers": "2"}).encode(), ["'max_window_layers'"]),
        (json.dumps(BASE | {"model_type": ["qwen2"]}).encode(), ["'model_type'"]),
        (json.dumps(BASE | {"num_key_value_heads": 3}).encode(), ["num_key_value_heads=3"]),
    ],
    ids=[
        "top-level-list",
        "not-utf8",
        "str-for-int",
        "bool-for-int",
        "float-for-int",
        "zero-size",
        "negative-size",
        "str-for-float",
        "negative-eps",
        "str-for-bool",
        "str-eos",
        "null-int",
        "rope-scaling-str",
        "rope-params-list",
        "layer-types-str",
        "max-window-layers-str",
        "model-type-list",
        "kv-heads-not-divisor",
    ],
)
def test_malformed_config_json_is_one_line_naming_file_and_field(tmp_path, content, fragments):
    p = tmp_path / "config.json"
    p.write_bytes(content)
    msg = _one_line(ConfigError, ModelConfig.from_json, p)
    assert str(p) in msg, msg
    for f in fragments:
        assert f in msg, msg
    assert _one_line(ConfigError, rrm_jax.load, tmp_path) == msg  # before any weights are looked for


def test_well_typed_config_json_still_parses(tmp_path):
    """Ints are fine floats, null head_dim/num_key_value_heads fall back, a list of eos ids stays a list."""
    d = BASE | {
        "rope_theta": 10000,
        "head_dim": None,
        "num_key_value_heads": None,
        "eos_token_id": [1, 2],
        "num_attention_heads": 4,
    }
    got = ModelConfig.from_hf_dict(d)
    assert got.rope_theta == 10000.0 and isinstance(got.rope_theta, float)
    assert got.head_dim == 16 and got.num_kv_heads == 4 and got.eos_token_id == [1, 2]


def test_preset_with_a_zero_size_is_refused(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text((MODELS_DIR / "tiny.toml").read_text().replace("num_kv_heads = 2", "num_kv_heads = 0"))
    msg = _one_line(ConfigError, resolve_config, p)
    assert str(p) in msg and "num_kv_heads=0" in msg, msg


# ------------------------------------------------------------------------------------------ positions, flags
def test_logits_past_max_position_embeddings_are_refused(mesh1):
    model = rrm_jax.init(resolve_config("tiny").replace(max_position_embeddings=8), mesh=mesh1)
    assert model.logits(np.ones((1, 8), np.int32)).shape == (1, 8, 512)  # exactly the context is fine
    msg = _one_line(ValueError, model.logits, np.ones((1, 9), np.int32))
    assert "length 9" in msg and "max_position_embeddings=8" in msg, msg
    # left padding keeps real positions inside the context: allowed
    mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]], bool)
    assert model.logits(np.ones((1, 10), np.int32), attention_mask=mask).shape == (1, 10, 512)
    _one_line(ValueError, model.logits, np.ones((1, 4), np.int32), positions=np.array([[0, 1, 2, 8]]))
    _one_line(ValueError, model.logits, np.ones((1, 4), np.int32), positions=np.array([[-1, 0, 1, 2]]))
    _one_line(ValueError, model.logits, np.ones((1, 4), np.int32), positions=np.arange(4))
    # a padding slot's position is masked out, whatever it holds
    out = model.logits(np.ones((1, 4), np.int32), attention_mask=[[1, 1, 1, 0]], positions=[[0, 1, 2, 99]])
    assert out.shape == (1, 4, 512)
    _one_line(ValueError, model.logits, np.ones((1, 4), np.int32), attention_mask=np.ones((1, 3)))


@pytest.mark.parametrize("spec", ["/nonexistent", "/nonexistent/model", "./no-such-dir/x"])
def test_missing_model_path_is_one_line(spec, mesh1):
    msg = _one_line(ConfigError, rrm_jax.core.api.load_or_init, spec, mesh=mesh1)
    assert spec in msg, msg
    msg = _one_line(CheckpointError, rrm_jax.load, spec, mesh=mesh1)
    assert spec in msg, msg


def test_a_file_given_as_the_model_is_one_line(tmp_path, mesh1):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 4)
    msg = _one_line(ConfigError, rrm_jax.core.api.load_or_init, weights, mesh=mesh1)
    assert str(weights) in msg and "not a checkpoint directory" in msg, msg
    binary_toml = tmp_path / "m.toml"
    binary_toml.write_bytes(bytes(range(256)))
    msg = _one_line(ConfigError, rrm_jax.core.api.load_or_init, binary_toml, mesh=mesh1)
    assert str(binary_toml) in msg and "UTF-8" in msg, msg


def test_bad_dtype_is_one_line_before_any_work(saved, mesh1):
    msg = _one_line(ConfigError, rrm_jax.init, "tiny", mesh=mesh1, dtype="float33")
    assert "dtype='float33'" in msg, msg
    msg = _one_line(ConfigError, rrm_jax.load, saved, mesh=mesh1, dtype="int32", tokenizer=None)
    assert "dtype='int32'" in msg, msg
    _one_line(ConfigError, rrm_jax.init, "tiny", mesh=mesh1, compute_dtype="float33")


def test_corrupt_tokenizer_file_is_named_before_the_weights(ckpt, mesh1):
    rrm_jax.core.tokenizers.byte_tokenizer().save_pretrained(str(ckpt))
    (ckpt / "tokenizer.json").write_text('{"version": ')
    (ckpt / "model.safetensors").write_bytes(b"")  # not reached: the tokenizer fails first
    msg = _one_line(CheckpointError, rrm_jax.load, ckpt, mesh=mesh1, dtype=jnp.float32)
    assert str(ckpt) in msg and "cannot load its tokenizer (JSONDecodeError" in msg, msg


def test_cli_prints_core_faults_as_one_line(ckpt, tmp_path, capsys):
    from rrm_jax.cli import main

    (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:1000])
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(BASE | {"hidden_size": "64"}))
    for model in (ckpt, tmp_path / "cfg", "/nonexistent"):
        rc = main(["generate", "--model", str(model), "--prompt", "hi"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and str(model) in err, err


def test_help_lists_every_benchmark_and_asking_for_it_is_no_error(capsys):
    """Issue 22.14: `rrm-jax bench --help` exited 2 and `rrm-jax --help` left `device` out of the bench list."""
    from rrm_jax.benchmarks import BENCHES
    from rrm_jax.cli import main

    assert main(["--help"]) == 0
    bench_line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("bench"))
    assert all(b in bench_line for b in BENCHES) and "device" in BENCHES
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr()
    assert all(b in out.out for b in BENCHES) and out.err == ""
    assert main(["bench", "nosuch"]) == 2 and "unknown benchmark 'nosuch'" in capsys.readouterr().err


def test_bon_strategy_help_names_all_five(capsys):
    from rrm_jax.evaluation.bon_cli import bon_main
    from rrm_jax.evaluation.config import BON_STRATEGIES

    with pytest.raises(SystemExit):
        bon_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "--strategy" in text and ", ".join(BON_STRATEGIES) in text


@pytest.mark.parametrize(
    "key,value", [("model.layers.1.mlp.down_proj.weight", np.nan), ("model.embed_tokens.weight", -np.inf)]
)
def test_non_finite_weights_are_refused_at_load(ckpt, mesh1, key, value):
    """Issue 22.12: a checkpoint with a NaN judged "!!!!!!!!" for every sample and reported 50%, rc 0."""
    import safetensors.numpy

    path = ckpt / "model.safetensors"
    tensors = safetensors.numpy.load_file(path)
    bad = tensors[key].copy()
    bad.flat[7] = value
    tensors[key] = bad
    hf_io.write_safetensors(path, tensors)
    msg = _load_error(ckpt, mesh1)
    assert f"{path}: tensor {key!r} holds non-finite values (NaN or inf)" == msg


def test_bench_forward_without_torch_says_so_or_skips_its_column(monkeypatch, capsys):
    """Issue 22.14: `bench forward` needed torch in a plain install; now a missing torch is one line, and
    `--skip torch` runs the rrm-jax column alone, as its help promises."""
    import sys

    from rrm_jax.benchmarks import forward

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError, as in a plain install
    small = ["--model", "tiny", "--batch", "1", "--seq", "16", "--repeats", "1", "--matmul-n", "64"]
    with pytest.raises(ConfigError, match="the transformers column runs in torch, which is not installed"):
        forward.main(small)
    assert forward.main([*small, "--skip", "torch,compile"]) == 0
    out = capsys.readouterr().out
    assert "no torch" in out and "rrm-jax      :" in out and "transformers :" not in out
