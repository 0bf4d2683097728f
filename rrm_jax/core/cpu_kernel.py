"""The CPU decode step's small-row matmul: ``cpu_matmul.cc``, compiled at first use and called through XLA's FFI.

A decode step multiplies B rows (the batch) by every weight once; on XLA:CPU that dot runs at about half the
read bandwidth, which made the weight matmuls alone slower than the decode targets of issue 12
(``python tools/decode_floor.py`` times both side by side). The kernel streams each weight once per
8 rows, from column panels laid out contiguously, with the rows' partial sums held in registers.

It is built with the machine's C++ compiler (``$CXX``, else ``g++``/``c++``) against jaxlib's FFI headers,
``-O3 -march=native -fopenmp``, into ``$RRM_JAX_CACHE`` (default ``~/.cache/rrm_jax``) under a name hashed from
the source, compiler, jaxlib and CPU, so one build serves every later process. Only x86-64 CPUs with AVX-512 get
it (the only ones it was measured on); elsewhere, without a compiler, or with ``RRM_JAX_CPU_KERNEL=0``,
:func:`available` is False and callers keep XLA's dot. Only the sampler's CPU decode step calls it
(:class:`rrm_jax.sampler.loop.SamplerLoop`), for float32 weights on a one-device mesh (an FFI call has no
sharding rule), over weights :func:`pack`-ed once per generate call (by the kernel's own packing routine).
:func:`fuse_layers` and :func:`decoder_layer` are that decode step's weights and layer.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rrm_jax.core.config import ModelConfig
from rrm_jax.core.kv_cache import HEADS_MAJOR
from rrm_jax.core.ops import attention, rms_norm, rope

TARGET, PACK_TARGET = "rrm_cpu_matmul", "rrm_cpu_pack"
SOURCE = Path(__file__).with_name("cpu_matmul.cc")
PANEL = 48  # columns per packed panel: three 16-float vectors (cpu_matmul.cc's PW)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _build(cxx: str) -> Path:
    include = jax.ffi.include_dir()
    flags = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-w"]
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\n".join(
            [SOURCE.read_text(), version, " ".join(flags), jax.__version__, platform.machine(), _cpu_flags()]
        ).encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("RRM_JAX_CACHE", Path.home() / ".cache" / "rrm_jax")) / "kernels"
    lib = cache / f"cpu_matmul-{key}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # build beside the target and rename: processes starting together never load a half-written library
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        run = subprocess.run([cxx, *flags, "-I", include, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if run.returncode:
            os.unlink(tmp)
            raise RuntimeError((run.stderr.strip().splitlines() or ["no output"])[-1])
        os.replace(tmp, lib)
    return lib


@functools.cache
def available() -> bool:
    """Whether the kernel is built, loaded and registered with XLA (once per process; the build is cached)."""
    if os.environ.get("RRM_JAX_CPU_KERNEL", "1") == "0":
        return False
    if platform.machine() not in ("x86_64", "AMD64") or " avx512f" not in _cpu_flags():
        return False
    cxx = _compiler()
    if cxx is None:
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(str(_build(cxx)))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.RrmCpuMatmul), platform="cpu")
        jax.ffi.register_ffi_target(PACK_TARGET, jax.ffi.pycapsule(lib.RrmCpuPack), platform="cpu")
    except Exception as e:  # a failed build only costs speed: say why once and keep XLA's dot
        warnings.warn(
            f"rrm-jax: the CPU matmul kernel did not build ({cxx}: {e}); decode uses XLA's dot",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def pack(*ws: jax.Array, transposed: bool = False) -> jax.Array:
    """The column-wise concatenation of ``ws``, each ``[L, K, N_i]`` or ``[K, N_i]`` (``[.., N_i, K]`` when
    ``transposed``), as the kernel's column panels ``[L, P, K, PANEL]`` (L = 1 for 2-D inputs), zero-padded.

    Call :func:`available` first (outside jit): this only emits the FFI call.
    """
    ws = tuple(w[None] if w.ndim == 2 else w for w in ws)
    for w in ws:
        if w.dtype != jnp.float32:
            raise TypeError(f"the CPU matmul kernel is float32 only, got {w.dtype}")
    n = sum(w.shape[1 if transposed else 2] for w in ws)
    lead, k = ws[0].shape[0], ws[0].shape[2 if transposed else 1]
    out = jax.ShapeDtypeStruct((lead, -(-n // PANEL), k, PANEL), jnp.float32)
    return jax.ffi.ffi_call(PACK_TARGET, out)(*ws, transposed=transposed)


def matmul(x: jax.Array, packed: jax.Array, n: int, layer: int = 0) -> jax.Array:
    """``x [M, K]`` (float32) times layer ``layer`` of a :func:`pack`-ed weight with ``n`` columns -> ``[M, n]``.

    The kernel reads the layer in place: the stacked weights are not split per layer.
    """
    if x.dtype != jnp.float32:
        raise TypeError(f"the CPU matmul kernel is float32 only, got {x.dtype}")
    out = jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out)(x, packed, layer=np.int64(layer))


# ------------------------------------------------------------------------------ the decode layer over it
def fuse_layers(cfg: ModelConfig, p: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Stacked float32 layer weights -> the CPU matmul kernel's form (same maths, fewer and wider matmuls).

    ``qkv`` ([D, (H + 2K) hd]) with ``qkv_bias``, ``o_proj`` ([H hd, D]), ``gate_up`` ([D, 2F]) and ``down_proj``,
    each :func:`pack`-ed and still stacked over layers; the norms as they are. One call per projection
    group keeps both cores busy: k and v alone are 8 vectors wide at Qwen2.5-0.5B's shape.
    """
    lead = lambda w: w.reshape(w.shape[:2] + (-1,))  # [L, D, heads, hd] -> [L, D, heads * hd]
    out = {
        "attn_norm": p["attn_norm"],
        "mlp_norm": p["mlp_norm"],
        "qkv": pack(lead(p["q_proj"]), lead(p["k_proj"]), lead(p["v_proj"])),
        "o_proj": pack(p["o_proj"].reshape(cfg.num_layers, -1, cfg.hidden_size)),
        "gate_up": pack(p["gate_proj"], p["up_proj"]),
        "down_proj": pack(p["down_proj"]),
    }
    if "q_bias" in p:
        flat = lambda b: b.reshape(b.shape[0], -1)
        out["qkv_bias"] = jnp.concatenate([flat(p["q_bias"]), flat(p["k_bias"]), flat(p["v_bias"])], axis=-1)
    return out


def _fused_dense(x: jax.Array, w: jax.Array, n: int, layer: int) -> jax.Array:
    """x [B, T, ...] through layer ``layer`` of a packed weight of ``n`` columns -> [B, T, n]."""
    b, t = x.shape[:2]
    return matmul(x.reshape(b * t, -1), w, n, layer).reshape(b, t, n)


def decoder_layer(cfg: ModelConfig, p: dict, i: int, x, positions, mask, kv, write):
    """:func:`rrm_jax.core.model.decoder_layer` for layer ``i`` of :func:`fuse_layers` weights (float32, heads-major
    cache, one token per row)."""
    nq, nk, f = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    h = rms_norm(x, p["attn_norm"][i], cfg.rms_norm_eps)
    y = _fused_dense(h, p["qkv"], nq + 2 * nk, i)
    if "qkv_bias" in p:
        y = y + p["qkv_bias"][i]
    heads = lambda z, n: z.reshape(z.shape[:2] + (n, cfg.head_dim))
    q = rope(heads(y[..., :nq], cfg.num_heads), positions, cfg.rope_theta)
    k = rope(heads(y[..., nq : nq + nk], cfg.num_kv_heads), positions, cfg.rope_theta)
    v = heads(y[..., nq + nk :], cfg.num_kv_heads)
    ck, cv = HEADS_MAJOR.write(*kv, k, v, write)
    x = x + _fused_dense(attention(q, ck, cv, mask), p["o_proj"], cfg.hidden_size, i)
    h = rms_norm(x, p["mlp_norm"][i], cfg.rms_norm_eps)
    y = _fused_dense(h, p["gate_up"], 2 * f, i)
    x = x + _fused_dense(jax.nn.silu(y[..., :f]) * y[..., f:], p["down_proj"], cfg.hidden_size, i)
    return x, (ck, cv)
