import os

# 8 fake CPU devices for the sharding tests; set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
