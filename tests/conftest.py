import atexit
import os
import shutil
import tempfile
from importlib.metadata import version

# Set before jax is imported anywhere; pytest-xdist's workers and the tests' subprocesses inherit them.
# 8 fake CPU devices for the sharding tests. The suite's programs are tiny and compiling them is most of its
# time, so they are compiled for speed of compiling: LLVM at level 0 (-36% wall on test_train.py), and on jaxlib
# 0.10 the pre-MLIR fusion emitters (a sampler call's compiles 14.2 -> 7.8 s); jaxlib 0.12 no longer has the
# flag, and an unknown XLA flag aborts the process. The same HLO runs; the dots go to the same runtime kernels.
TEST_XLA_FLAGS = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
if version("jaxlib").startswith("0.10."):
    TEST_XLA_FLAGS += " --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# 512-token prefill chunks (the default is 128): a chunk's cache window is a compiled program, and the judge
# prompts of tests on tiny models run ~1100 tokens; tests about chunking pass their own prefill_chunk
os.environ.setdefault("RRM_JAX_PREFILL_CHUNK", "512")
# One persistent compilation cache for the session's processes (workers, CLI subprocesses), so a program that
# several tests compile is compiled once; new per session unless the caller names one (CI does, per run).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache = tempfile.mkdtemp(prefix="rrm-jax-test-xla-")
    atexit.register(shutil.rmtree, _cache, True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# glibc's huge pages for XLA's buffers, as the rrm-jax command gives itself (rrm_jax.core.hugepages): read at
# process start, so it reaches the workers and subprocesses, not this process
from rrm_jax.core import hugepages  # noqa: E402

if hugepages.wanted():
    os.environ.update(hugepages.environ_with_tunable())

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 2. Each worker is a whole jax process with 8 fake devices and
    XLA's own thread pool, ~2 GiB resident: more of them would contend for memory and XLA's threads."""
    return max(1, min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mesh1():
    """A one-device mesh: the default for tests that are not about sharding (fast on 2 cores)."""
    from rrm_jax.core.sharding import make_mesh

    return make_mesh((1, 1, 1), devices=jax.devices()[:1])


@pytest.fixture(scope="session")
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (it exists only beside the development checkout)")
    return SHARED


# ------------------------------------------------------------------ the default tier's time budget
# Each default-tier test (its setup, call and teardown: a module fixture is billed to the first test that uses it)
# must finish within `max_test_seconds` (pyproject), so a new feature cannot quietly double the suite: a test that
# needs longer is marked `slow` (CI runs only that tier's demo tests). 0 turns the check off.
def pytest_addoption(parser):
    parser.addini("max_test_seconds", "per-test budget of the default tier, in seconds (0: no budget)", default="0")


def pytest_collection_modifyitems(config, items):
    """Longest first: a slow test may state its usual seconds, ``@pytest.mark.slow(170)``, so pytest-xdist starts
    the long ones at once on different workers and the short ones fill in behind (others keep their order)."""
    items.sort(key=lambda item: -max([m.args[0] for m in item.iter_markers("slow") if m.args] or [0]))


_spent: dict[str, float] = {}
_slow: set[str] = set()


def pytest_runtest_logreport(report):
    _spent[report.nodeid] = _spent.get(report.nodeid, 0.0) + report.duration
    if "slow" in report.keywords:
        _slow.add(report.nodeid)


def _over_budget(config) -> list[tuple[str, float]]:
    budget = float(config.getini("max_test_seconds") or 0)
    if budget <= 0 or config.getoption("markexpr", "") == "slow":
        return []
    return sorted(((n, s) for n, s in _spent.items() if n not in _slow and s > budget), key=lambda x: -x[1])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    over = _over_budget(config)
    if over:
        budget = config.getini("max_test_seconds")
        terminalreporter.section(
            f"over the default tier's per-test budget of {budget} s (mark them slow or shrink them)"
        )
        for nodeid, s in over:
            terminalreporter.line(f"{s:7.1f} s  {nodeid}")


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0 and _over_budget(session.config):
        session.exitstatus = 1
