"""HF checkpoints in and out: a streaming sharded safetensors loader, and export.

Loading never builds the whole model on one host in float32: safetensors files are memory-mapped, and
each device's shard is sliced from the mapped tensor and cast on its own (``make_array_from_callback``).
Only safetensors are read — pickled ``pytorch_model.bin`` files are refused, never unpickled.
Which HF tensor holds which parameter, and how its layout converts, is the parameter table
(:mod:`rrm_jax.core.params`).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

from rrm_jax.core.config import ModelConfig
from rrm_jax.core.distributed import is_main, to_host
from rrm_jax.core.errors import CheckpointError
from rrm_jax.core.params import PARAMS, param_name, params_of

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
_FLOAT_NAMES = ("F64", "F32", "F16", "BF16")
_FLOAT_DTYPES = {np.dtype(_ST_DTYPES[k]) for k in _FLOAT_NAMES}


# ------------------------------------------------------------------------------ safetensors, by hand
class SafetensorsFile:
    """A memory-mapped safetensors file; ``get(key)`` returns a zero-copy numpy view (bf16 included).

    The header is checked against the file at open time (O(tensors), the data is never read), so a truncated or
    corrupt file fails with a CheckpointError naming it and the tensor instead of a numpy error at first use."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:  # checked before reading: random bytes make n up to 2**64
                raise CheckpointError(
                    f"{path}: not a safetensors file or truncated (header length {n} bytes, file {size} bytes)"
                )
            try:
                self.header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
            if not isinstance(self.header, dict):
                raise CheckpointError(
                    f"{path}: corrupt safetensors header: expected a JSON object, got {type(self.header).__name__}"
                )
            self.header.pop("__metadata__", None)
            _check_layout(path, self.header, size - 8 - n)
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._offset = 8 + n

    def keys(self):
        return self.header.keys()

    def dtype(self, key: str) -> str:
        """The tensor's safetensors dtype name (``BF16``, ``I64``...), from the header."""
        return self.header[key]["dtype"]

    def get(self, key: str) -> np.ndarray:
        info = self.header[key]
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        if start == end:  # an empty tensor: np.frombuffer refuses a zero count past the buffer's end
            return np.zeros(info["shape"], dtype)
        arr = np.frombuffer(self._mm, dtype=dtype, count=(end - start) // dtype.itemsize, offset=self._offset + start)
        return arr.reshape(info["shape"])


def _check_layout(path: Path, header: dict, data_bytes: int) -> None:
    """Every tensor's dtype, shape and byte range is well formed, in the file, of the right size and not shared."""
    spans = []
    for key, info in header.items():
        where = f"{path}: tensor {key!r}"
        if not isinstance(info, dict):
            raise CheckpointError(f"{where}: corrupt header entry {info!r}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
            raise CheckpointError(f"{where} has unsupported dtype {dtype!r} (supported: {', '.join(_ST_DTYPES)})")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise CheckpointError(f"{where}: corrupt header: shape {shape!r} is not a list of sizes")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise CheckpointError(f"{where}: corrupt header: data_offsets {offsets!r} is not [begin, end]")
        start, end = offsets
        want = math.prod(shape) * np.dtype(_ST_DTYPES[dtype]).itemsize
        if end - start != want:
            raise CheckpointError(f"{where} holds {end - start} bytes but {dtype} {shape} needs {want}")
        if end > data_bytes:
            raise CheckpointError(
                f"{where} ends at byte {end} of the data but the file has {data_bytes} (truncated file?)"
            )
        spans.append((start, end, key))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise CheckpointError(f"{path}: tensors {a!r} and {b!r} overlap in the file (corrupt header)")


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset = {}, 0
    for k, v in tensors.items():
        n = v.nbytes
        header[k] = {"dtype": _ST_NAMES[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    # Written aside and renamed: a crash mid-write must not replace a good file by a truncated one.
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for v in tensors.values():
            f.write(np.ascontiguousarray(v).tobytes())
    os.replace(tmp, path)


class CheckpointReader:
    """All tensors of an HF checkpoint directory (single file or sharded index)."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        if not self.dir.is_dir():
            raise CheckpointError(f"{self.dir}: not a directory")
        index = self.dir / "model.safetensors.index.json"
        self._files: dict[str, SafetensorsFile] = {}
        if index.exists():
            try:
                self._where = dict(json.loads(index.read_bytes())["weight_map"])
            except (KeyError, TypeError, ValueError) as e:  # JSON and UTF-8 errors are ValueErrors
                raise CheckpointError(f"{index}: malformed index ({type(e).__name__}: {e})") from None
            bad = next((k for k, v in self._where.items() if not isinstance(v, str)), None)
            if bad is not None:
                raise CheckpointError(f"{index}: weight_map[{bad!r}] is {self._where[bad]!r}, not a file name")
            # Every shard's header, read once: a tensor the index places in a shard that lacks it, or one stored
            # twice, would otherwise fail at first use or silently pick one copy.
            stored = self._stored(sorted(set(self._where.values())))
            for key, name in self._where.items():
                if key not in stored:
                    raise CheckpointError(
                        f"{self.dir / name}: tensor {key!r} is listed in {index.name} but not stored in the file"
                    )
            return
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            pickles = sorted(p.name for p in self.dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            if pickles:
                raise CheckpointError(
                    f"{self.dir}: only pickle checkpoints found ({', '.join(pickles)}); rrm-jax reads safetensors "
                    "only and never unpickles. Convert once with transformers: "
                    "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
                )
            raise CheckpointError(f"{self.dir}: no model.safetensors or model.safetensors.index.json")
        self._where = self._stored([f.name for f in files])

    def _stored(self, names: list[str]) -> dict[str, str]:
        """tensor -> the shard holding it; a tensor in two shards is refused, naming both."""
        where: dict[str, str] = {}
        for name in names:
            for key in self._open(name).keys():
                if key in where:
                    raise CheckpointError(f"{self.dir}: tensor {key!r} is stored twice, in {where[key]} and {name}")
                where[key] = name
        return where

    def _open(self, name: str) -> SafetensorsFile:
        if name not in self._files:
            p = self.dir / name
            if not p.is_file():
                raise CheckpointError(f"{p}: listed in model.safetensors.index.json but missing")
            self._files[name] = SafetensorsFile(p)
        return self._files[name]

    def __contains__(self, key):
        return key in self._where

    def keys(self):
        return self._where.keys()

    def get(self, key: str) -> np.ndarray:
        if key not in self._where:
            raise CheckpointError(f"{self.dir}: tensor {key!r} is missing from the checkpoint")
        return self._open(self._where[key]).get(key)

    def dtype(self, key: str) -> str:
        return self._open(self._where[key]).dtype(key)

    def where(self, key: str) -> str:
        return str(self.dir / self._where.get(key, "?"))


# ------------------------------------------------------------------------------ load
def _ignorable(key: str, cfg: ModelConfig) -> bool:
    # old checkpoints store RoPE's inv_freq buffer; tied checkpoints sometimes store the head copy too
    return key.endswith("rotary_emb.inv_freq") or (cfg.tie_word_embeddings and key == "lm_head.weight")


def load_params(path: str | Path, cfg: ModelConfig, abstract_state, shardings, dtype) -> object:
    """Fill an abstract ``nnx.State`` from an HF checkpoint, each device reading only its shard."""
    reader = CheckpointReader(path)
    specs = params_of(cfg)
    dtype = np.dtype(dtype)

    def fetch(name: str, layer: int | None) -> np.ndarray:
        spec = specs[name]
        key = spec.hf_name(layer)
        raw = reader.get(key)
        if raw.dtype not in _FLOAT_DTYPES:  # an integer cast to weights would load as garbage, silently
            raise CheckpointError(
                f"{reader.where(key)}: tensor {key!r} has dtype {reader.dtype(key)}; "
                f"weights must be floating point ({', '.join(_FLOAT_NAMES)})"
            )
        try:
            out = spec.to_ours(raw, cfg)
        except ValueError:
            out = None
        want = spec.shape(cfg)[1:] if spec.stacked else spec.shape(cfg)
        if out is None or out.shape != tuple(want):
            raise CheckpointError(
                f"{reader.where(key)}: tensor {key!r} has shape {list(raw.shape)}, which does not fit the config "
                f"(expected {name} {list(want)} after conversion)"
            )
        return out

    # Validate every tensor up front (cheap: headers only) so a bad checkpoint fails before any device work.
    expected = set()
    for name, spec in specs.items():
        for layer in range(cfg.num_layers) if spec.stacked else [None]:
            fetch(name, layer)
            expected.add(spec.hf_name(layer))
    # A tensor we would not read means the checkpoint has maths we do not implement (e.g. an o_proj bias).
    unused = sorted(k for k in reader.keys() if k not in expected and not _ignorable(k, cfg))
    if unused:
        raise CheckpointError(
            f"{reader.where(unused[0])}: tensor {unused[0]!r} is not used by a {cfg.model_type} decoder with this "
            f"config ({len(unused)} unused tensor(s): {unused[:4]})"
        )

    def build(path_keys, leaf, sharding):
        name = param_name(path_keys)
        stacked = PARAMS[name].stacked

        def read(layer, index):
            # checked as it is read (each device its shard): a NaN or inf weight would otherwise judge garbage
            # ("!!!!" for every sample) without a word
            out = np.asarray(fetch(name, layer)[index]).astype(dtype)
            if not np.isfinite(out).all():
                key = specs[name].hf_name(layer)
                raise CheckpointError(f"{reader.where(key)}: tensor {key!r} holds non-finite values (NaN or inf)")
            return out

        def cb(index):
            if stacked:
                return np.stack([read(l, index[1:]) for l in range(cfg.num_layers)[index[0]]])
            return read(None, index)

        return jax.make_array_from_callback(leaf.shape, sharding, cb)

    return jax.tree_util.tree_map_with_path(build, abstract_state, shardings)


# ------------------------------------------------------------------------------ export
def export_tensors(cfg: ModelConfig, params: dict[str, np.ndarray | jax.Array]):
    """Yield (HF key, numpy array) for every tensor, one layer at a time (bounded host memory)."""
    for name, spec in PARAMS.items():
        if name not in params:
            continue
        arr = params[name]
        if spec.stacked:
            for l in range(cfg.num_layers):
                yield spec.hf_name(l), np.ascontiguousarray(spec.to_hf(np.asarray(to_host(arr[l])), cfg))
        else:
            yield spec.hf_name(), np.ascontiguousarray(spec.to_hf(np.asarray(to_host(arr)), cfg))


def save_checkpoint(out_dir: str | Path, cfg: ModelConfig, params: dict, max_shard_bytes: int = 4 << 30) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype_name = None
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, arr in export_tensors(cfg, params):
        dtype_name = dtype_name or {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(
            arr.dtype.name, "float32"
        )
        if size and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = arr
        size += arr.nbytes
    if not is_main():  # every process took part in the gathers above; one writes
        return out
    # Weights of an earlier export to this directory would be read with (or instead of) the new ones.
    stale = {*out.glob("model-*-of-*.safetensors"), out / "model.safetensors"}
    if len(shards) == 1:
        write_safetensors(out / "model.safetensors", shards[0])
        (out / "model.safetensors.index.json").unlink(missing_ok=True)
        written = {out / "model.safetensors"}
    else:
        weight_map, total, written = {}, 0, set()
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(out / fname, shard)
            written.add(out / fname)
            weight_map.update({k: fname for k in shard})
            total += sum(v.nbytes for v in shard.values())
        _write_text(
            out / "model.safetensors.index.json",
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2),
        )
    for f in stale - written:
        f.unlink(missing_ok=True)
    _write_text(out / "config.json", json.dumps(cfg.to_hf_dict(dtype_name or "float32"), indent=2))
    return out


# the files besides the weights that change what a checkpoint computes or reads
_IDENTITY_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.model")


def checkpoint_fingerprint(path: str | Path, blocks: int = 16, block_bytes: int = 1 << 16) -> str:
    """A short content identity of a checkpoint directory, cheap beside loading it: its config and tokenizer files
    whole, and every safetensors file's name, size, header and ``blocks`` evenly spaced blocks of its data (all
    of a small file). New weights at the same path give another identity (training moves every tensor, so every
    block); the same checkpoint under two spellings of its path gives one. Records are resumed only under the
    identity they were written with (rrm_jax.evaluation.records)."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    for name in _IDENTITY_FILES:
        if (path / name).is_file():
            h.update(name.encode() + b"\0" + (path / name).read_bytes() + b"\0")
    for f in sorted(path.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= blocks * block_bytes:
                h.update(fh.read())
                continue
            header = struct.unpack("<Q", fh.read(8))[0]
            h.update(fh.read(min(header, size - 8)))  # names, dtypes, shapes, offsets
            for i in range(blocks):
                fh.seek(i * (size - block_bytes) // (blocks - 1))
                h.update(fh.read(block_bytes))
    return h.hexdigest()[:16]


def _write_text(path: Path, text: str) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
