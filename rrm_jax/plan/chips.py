"""TPU chips and slices: the peak table the roofline uses, and slice names (``v5p-64``) -> compile-only devices.

Cloud TPU names a slice by TensorCores for v4 and v5p (two per chip: ``v5p-64`` is 32 chips) and by chips for
v5e and v6e (``v5e-16`` is 16 chips, also spelled ``v5litepod-16``). libtpu's ``get_topology_desc`` wants
``generation:AxBxC`` in chips instead; the table below holds the standard slice shapes. A topology is built
without any TPU attached (libtpu compiles ahead of time), so planning runs on any machine with libtpu.
"""

from __future__ import annotations

import dataclasses
import os
import re

from rrm_jax.core.errors import ConfigError

INSTALL = 'pip install "rrm-jax[tpu]"  (or: pip install "jax[tpu]==<your jax version>"; best in its own venv)'


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bf16_flops: float  # peak dense bf16 FLOP/s per chip
    hbm_bytes_per_s: float  # HBM bandwidth per chip
    hbm_gib: float  # HBM capacity per chip
    source: str


# Per-chip peaks, as the Cloud TPU documentation states them (its "System architecture" pages, one per
# generation: "TPU v4", "TPU v5e", "TPU v5p", "TPU v6e"). The cpu row is not hardware: it gives the fake
# host-device topology (tests, CI without libtpu) round numbers so the arithmetic can be exercised.
CHIPS = {
    # "TPU v4" page: 275 TFLOP/s bf16, 32 GiB HBM2, 1200 GB/s per chip
    "v4": Chip("TPU v4", 275e12, 1200e9, 32.0, 'Cloud TPU docs, "TPU v4"'),
    # "TPU v5e" page: 197 TFLOP/s bf16, 16 GiB HBM2, 819 GB/s per chip
    "v5e": Chip("TPU v5e", 197e12, 819e9, 16.0, 'Cloud TPU docs, "TPU v5e"'),
    # "TPU v5p" page: 459 TFLOP/s bf16, 95 GiB HBM2e, 2765 GB/s per chip
    "v5p": Chip("TPU v5p", 459e12, 2765e9, 95.0, 'Cloud TPU docs, "TPU v5p"'),
    # "TPU v6e" page (Trillium): 918 TFLOP/s bf16, 32 GiB HBM, 1640 GB/s per chip
    "v6e": Chip("TPU v6e", 918e12, 1640e9, 32.0, 'Cloud TPU docs, "TPU v6e"'),
    "cpu": Chip("host CPU (fake devices)", 1e12, 20e9, 4.0, "not hardware: round numbers for tests"),
}

# chips -> libtpu shape. v4/v5p slices are 3-D tori (twisted or not, the compiler sees the same chip count);
# v5e/v6e are 2-D.
SHAPES_3D = {
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8",
    1024: "8x8x16",
    2048: "8x16x16",
    4096: "16x16x16",
}
SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user wrote it
    generation: str  # v4 | v5e | v5p | v6e | cpu
    chips: int
    libtpu_name: str  # e.g. "v5p:2x4x4" ("" for cpu)

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]


def known_names() -> list[str]:
    names = [f"{g}-{c * CORES_PER_CHIP[g]}" for g in ("v4", "v5p") for c in SHAPES_3D]
    names += [f"{g}-{c}" for g in ("v5e", "v6e") for c in SHAPES_2D]
    return names + ["cpu-N (N fake host devices)"]


def parse(name: str) -> Topology:
    """``v5p-64`` / ``v5e-16`` / ``v5litepod-16`` / ``v5e:4x4`` / ``cpu-8`` -> Topology, or a ConfigError listing
    the names it knows."""
    s = name.strip().lower()
    m = re.fullmatch(r"(v4|v5p|v5e|v6e|v5litepod|v5lite|v6|cpu)[-:](\w+)", s)
    if m:
        gen, size = ALIASES.get(m.group(1), m.group(1)), m.group(2)
        if gen == "cpu" and size.isdigit() and int(size) >= 1:
            return Topology(name, "cpu", int(size), "")
        if "x" in size and re.fullmatch(r"\d+(x\d+){1,2}", size):  # libtpu's own spelling, in chips
            chips = 1
            for d in size.split("x"):
                chips *= int(d)
            return Topology(name, gen, chips, f"{gen}:{size}")
        if size.isdigit() and gen in CORES_PER_CHIP:
            per = CORES_PER_CHIP[gen]
            chips, shapes = int(size) // per, SHAPES_3D if per == 2 else SHAPES_2D
            if int(size) % per == 0 and chips in shapes:
                return Topology(name, gen, chips, f"{gen}:{shapes[chips]}")
    raise ConfigError(
        f"--topology {name!r}: not a TPU slice name this command knows. Known: "
        f"{', '.join(known_names())}; or libtpu's own form GEN:AxB[xC] in chips (e.g. v5e:4x4)"
    )


def have_libtpu() -> bool:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


def devices(topo: Topology) -> list:
    """Compile-only devices of the slice (libtpu), or the first N host CPU devices for ``cpu-N``."""
    import jax

    if topo.generation == "cpu":
        cpus = jax.devices("cpu")
        if len(cpus) < topo.chips:
            raise ConfigError(
                f"--topology {topo.name}: this process has {len(cpus)} CPU devices; start it with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={topo.chips}"
            )
        return cpus[: topo.chips]
    if not have_libtpu():
        raise ConfigError(
            f"--topology {topo.name}: compiling for a TPU needs libtpu, which is not installed; {INSTALL}"
        )
    # libtpu reads these to find a real slice; with no TPU here, set them so it does not warn that it cannot.
    # Compiling touches no TPU, so two plans may run at once (libtpu otherwise takes a machine-wide lock).
    for key, value in (
        ("TPU_ACCELERATOR_TYPE", f"{topo.generation}-{topo.chips * CORES_PER_CHIP[topo.generation]}"),
        ("TPU_WORKER_HOSTNAMES", "localhost"),
        ("TPU_SKIP_MDS_QUERY", "1"),
        ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
    ):
        os.environ.setdefault(key, value)
    from jax.experimental import topologies

    # v4 exposes each TensorCore as a device unless asked for megacore (one device per chip, as on a v4 VM)
    kw = {"chip_config_name": "megacore"} if topo.generation == "v4" else {}
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topo.libtpu_name, **kw)
    out = list(desc.devices)
    if len(out) != topo.chips:
        raise ConfigError(
            f"--topology {topo.name}: libtpu gave {len(out)} devices for {topo.libtpu_name}, "
            f"expected {topo.chips} chips"
        )
    return out
