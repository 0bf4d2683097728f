"""HF checkpoints in and out: a streaming sharded safetensors loader, and export.

Loading never builds the whole model on one host in float32: safetensors files are memory-mapped, and
each device's shard is sliced from the mapped tensor and cast on its own (``make_array_from_callback``).
Only safetensors are read — pickled ``pytorch_model.bin`` files are refused, never unpickled.
Which HF tensor holds which parameter, and how its layout converts, is the parameter table
(:mod:`rrm_jax.core.params`).
"""

from __future__ import annotations

import json
import mmap
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


# ------------------------------------------------------------------------------ safetensors, by hand
class SafetensorsFile:
    """A memory-mapped safetensors file; ``get(key)`` returns a zero-copy numpy view (bf16 included)."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            try:
                self.header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._offset = 8 + n
        self.header.pop("__metadata__", None)

    def keys(self):
        return self.header.keys()

    def get(self, key: str) -> np.ndarray:
        info = self.header[key]
        if info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        arr = np.frombuffer(self._mm, dtype=_ST_DTYPES[info["dtype"]], count=(end - start) // np.dtype(_ST_DTYPES[info["dtype"]]).itemsize, offset=self._offset + start)
        return arr.reshape(info["shape"])


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset = {}, 0
    for k, v in tensors.items():
        n = v.nbytes
        header[k] = {"dtype": _ST_NAMES[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for v in tensors.values():
            f.write(np.ascontiguousarray(v).tobytes())


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
                self._where = dict(json.loads(index.read_text())["weight_map"])
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: malformed index ({e})") from None
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
        self._where = {k: f.name for f in files for k in self._open(f.name).keys()}

    def _open(self, name: str) -> SafetensorsFile:
        if name not in self._files:
            p = self.dir / name
            if not p.exists():
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

        def cb(index):
            if stacked:
                layers = range(cfg.num_layers)[index[0]]
                return np.stack([fetch(name, l)[index[1:]].astype(dtype) for l in layers])
            return np.asarray(fetch(name, None)[index]).astype(dtype)

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
        dtype_name = dtype_name or {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(arr.dtype.name, "float32")
        if size and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = arr
        size += arr.nbytes
    if not is_main():  # every process took part in the gathers above; one writes
        return out
    if len(shards) == 1:
        write_safetensors(out / "model.safetensors", shards[0])
        (out / "model.safetensors.index.json").unlink(missing_ok=True)
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(out / fname, shard)
            weight_map.update({k: fname for k in shard})
            total += sum(v.nbytes for v in shard.values())
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(dtype_name or "float32"), indent=2))
    return out
