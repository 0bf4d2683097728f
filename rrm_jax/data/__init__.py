"""Pairwise preference data: the common record, benchmark readers, TFDS builders and grain pipelines.

Readers (``read_pairs``) need nothing but the standard library; builders and pipelines (TFDS + grain) are
imported lazily so that importing ``rrm_jax.data`` stays cheap.
"""

from rrm_jax.data.records import (
    KINDS,
    DataError,
    PairRecord,
    PairSet,
    Problem,
    download_rewardbench,
    pandalm_gold,
    pandalm_query,
    read_llmbar,
    read_pairs,
    read_pairs_jsonl,
    read_pandalm,
    read_rewardbench,
)

__all__ = [
    "KINDS",
    "DataError",
    "PairRecord",
    "PairSet",
    "Problem",
    "download_rewardbench",
    "pandalm_gold",
    "pandalm_query",
    "read_llmbar",
    "read_pairs",
    "read_pairs_jsonl",
    "read_pandalm",
    "read_rewardbench",
    "Pairs",
    "load_pairs",
    "build",
]


def __getattr__(name):
    if name in ("Pairs", "load_pairs"):
        from rrm_jax.data import pipeline

        return getattr(pipeline, name)
    if name == "build":
        from rrm_jax.data.builders import build

        return build
    raise AttributeError(name)
