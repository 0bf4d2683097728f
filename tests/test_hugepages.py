"""The rrm-jax command gives itself glibc's huge pages by re-executing once at start (rrm_jax.core.hugepages)."""

import os
import subprocess
import sys

import pytest

from rrm_jax.core import hugepages


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RRM_JAX_HUGEPAGES")}
    return env | extra


def test_tunable_joins_the_others_and_is_asked_for_once():
    env = hugepages.environ_with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "1"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "A": "1"}
    assert hugepages.environ_with_tunable({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert not hugepages.wanted(env)  # already there: the re-executed process does not go round again
    assert not hugepages.wanted({"RRM_JAX_HUGEPAGES": "0"})


def test_the_command_starts_without_jax():
    # the re-execution happens before any work, so the command's own imports must not pull jax in first
    code = "import sys, rrm_jax, rrm_jax.cli; assert 'jax' not in sys.modules, 'jax imported'; rrm_jax.init"
    subprocess.run([sys.executable, "-c", code], check=True, env=_clean_env())


def test_reexecution_keeps_the_command_line_and_sets_the_tunable():
    if not hugepages.wanted(_clean_env()):
        pytest.skip("this host does not take the tunable (needs Linux, glibc >= 2.35, THP in madvise mode)")
    code = (
        "import os, sys; from rrm_jax.core import hugepages; hugepages.reexec_if_wanted(); "
        "print(os.environ['GLIBC_TUNABLES'], sys.argv[1:], os.getpid())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "a b", "--x=1"], env=_clean_env(), stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.split()[:-1] == ["glibc.malloc.hugetlb=1", "['a", "b',", "'--x=1']"]
    assert int(out.split()[-1]) == proc.pid  # the same process, re-executed, not a child
    off = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(RRM_JAX_HUGEPAGES="0"), capture_output=True, text=True
    )
    assert off.returncode == 1 and "KeyError: 'GLIBC_TUNABLES'" in off.stderr
