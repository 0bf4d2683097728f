"""TFDS dataset builders for the pairwise benchmarks, written as ArrayRecord (no TensorFlow needed).

Each builder wraps one reader from :mod:`rrm_jax.data.records`: it reads a local source file (or, for
RewardBench, the hub download), and writes a single ``test`` split of PairRecord features in the original
item order (``disable_shuffling``). Skipped bad items (``on_bad="skip"``) are stored in the dataset's
metadata (``metadata.json``) so a cached build still reports them. Read the result with
``builder.as_data_source("test")`` (random access, no TensorFlow) — :mod:`rrm_jax.data.pipeline` wraps
it in grain.

Builds are cached under ``data_dir/<name>/<fingerprint>/``: the fingerprint hashes the source file(s) and
the bad-input policy, so editing the source rebuilds instead of serving stale data.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from rrm_jax.data.records import KINDS, DataError, PairRecord, PairSet, Problem, download_rewardbench, read_pairs
from rrm_jax.data.sources import hash_file

TIE = -1  # how a None label (tie / unknown) is stored: TFDS scalars cannot be None
SPLIT = "test"
FEATURES_VERSION = "1.0.0"


def _features() -> tfds.features.FeaturesDict:
    text = tfds.features.Text()
    return tfds.features.FeaturesDict(
        {
            "id": text,
            "query": text,
            "response_a": text,
            "response_b": text,
            "label": np.int32,
            "subset": text,
            "source": text,
        }
    )


class _LocalInfo(tfds.core.DatasetInfo):
    # A first build asks gs://tfds-data for pre-computed info through a fresh `mkdtemp` it never removes: one
    # empty temp dir per build. These sets are local files, never in the bucket.
    def initialize_from_bucket(self) -> None:
        pass


class PairsBuilder(tfds.core.GeneratorBasedBuilder):
    """Base builder: PairRecords from ``read_pairs(KIND, source)``; subclasses set KIND and a docstring."""

    VERSION = tfds.core.Version(FEATURES_VERSION)
    RELEASE_NOTES = {FEATURES_VERSION: "PairRecord features: id, query, response_a, response_b, label, subset, source."}
    KIND = "jsonl"

    # TFDS looks for a checksums file next to the builder's code through `importlib_resources`, a backport
    # that tfds 4.9.10 lazily imports but does not depend on. Local builders download nothing: no code path.
    @tfds_utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def __init__(self, *, source: str | Path | None, on_bad: str = "raise", **kwargs):
        # `source` is needed only to generate; reading a finished build works with source=None.
        self._source = None if source is None else Path(source)
        self._on_bad = on_bad
        self._pairs: PairSet | None = None  # read by build() first, so an empty source fails before TFDS
        self.problems: list[Problem] = []
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalInfo(
            builder=self,
            description=(type(self).__doc__ or "").strip(),
            features=_features(),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        if self._source is None:
            raise ValueError(f"{self.name}: a source file is needed to build the dataset")
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
        pairs = self._pairs
        if pairs is None:
            pairs = read_pairs(self.KIND, self._source, on_bad=self._on_bad)
        self.problems = pairs.problems
        self.info.metadata["source"] = str(self._source)
        self.info.metadata["problems"] = [[p.path, p.line, p.field, p.message] for p in pairs.problems]
        self.info.metadata["notes"] = [[p.path, p.line, p.field, p.message] for p in pairs.notes]
        for i, r in enumerate(pairs.records):
            ex = r.to_dict()
            ex["label"] = TIE if r.label is None else r.label
            yield i, ex


class RewardBench(PairsBuilder):
    """RewardBench v1 `filtered` split: chosen -> response_a (label 0), rejected -> response_b."""

    KIND = "rewardbench"


class PandaLM(PairsBuilder):
    """PandaLM human-annotated test set; gold = majority of three annotators (label -1 = tie)."""

    KIND = "pandalm"


class LLMBar(PairsBuilder):
    """LLMBar (Natural + Adversarial subsets); subset = source file stem."""

    KIND = "llmbar"


class JudgeBench(PairsBuilder):
    """JudgeBench pairs (label A>B -> 0); subset = the pair's source."""

    KIND = "judgebench"


class RMBench(PairsBuilder):
    """RM-Bench: each item's 3 x 3 chosen-vs-rejected style pairs (ids <id>/c<i>r<j>); subset = the domain."""

    KIND = "rmbench"


class PairsJsonl(PairsBuilder):
    """Generic pairs JSONL {query, response_a, response_b, label}."""

    KIND = "jsonl"


BUILDERS: dict[str, type[PairsBuilder]] = {
    "rewardbench": RewardBench,
    "pandalm": PandaLM,
    "llmbar": LLMBar,
    "judgebench": JudgeBench,
    "rmbench": RMBench,
    "jsonl": PairsJsonl,
}
assert set(BUILDERS) == set(KINDS)


def default_data_dir() -> Path:
    return Path.home() / ".cache" / "rrm_jax" / "tfds"


def fingerprint(source: Path, on_bad: str) -> str:
    """Short content hash of the source (file or directory of files) and the policy."""
    h = hashlib.sha256(f"{FEATURES_VERSION}|{on_bad}".encode())
    files = sorted(q for q in source.rglob("*") if q.is_file()) if source.is_dir() else [source]
    for f in files:
        h.update(f.name.encode())
        hash_file(h, f)
    return h.hexdigest()[:16]


def build(
    kind: str, source: str | Path | None, *, data_dir: str | Path | None = None, on_bad: str = "raise"
) -> PairsBuilder:
    """Build (or reuse) the ArrayRecord dataset for ``kind`` from ``source`` and return the builder.

    ``source=None`` for RewardBench downloads the hub's filtered split (needs internet)."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(BUILDERS)}")
    if source is None:
        if kind != "rewardbench":
            raise ValueError(f"{kind}: a source file (--data) is required")
        source = download_rewardbench()
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    ddir = root / kind / fingerprint(source, on_bad)
    with _quiet_tfds():
        builder = BUILDERS[kind](source=source, on_bad=on_bad, data_dir=str(ddir))
        if not builder.is_prepared():
            builder._pairs = _nonempty(read_pairs(kind, source, on_bad=on_bad), source)
            builder.download_and_prepare()
    return builder


def _nonempty(pairs: PairSet, source: Path) -> PairSet:
    """TFDS cannot write an empty split (``AssertionError: No examples were yielded``): say so in one line first."""
    if pairs.records:
        return pairs
    if pairs.problems:
        raise DataError(
            f"{source}: no pairs left to judge: all {len(pairs.problems)} items are bad (first: {pairs.problems[0]})"
        )
    raise DataError(f"{source}: no pairs to judge (the file holds no items)")


def problems_of(builder: PairsBuilder) -> tuple[list[Problem], list[Problem]]:
    """(skipped bad items, kept-but-noted items) recorded when the dataset was built."""
    md = builder.info.metadata
    return [Problem(*p) for p in md.get("problems", [])], [Problem(*p) for p in md.get("notes", [])]


def decode(ex: dict) -> PairRecord:
    """A data-source example (bytes text, int label) -> PairRecord."""

    def s(v):
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)

    label = int(ex["label"])
    return PairRecord(
        s(ex["id"]),
        s(ex["query"]),
        s(ex["response_a"]),
        s(ex["response_b"]),
        None if label == TIE else label,
        s(ex["subset"]),
        s(ex["source"]),
    )


class _quiet_tfds:
    """TFDS prints tqdm bars, banners and absl warnings on every build; keep the CLI's output ours."""

    def __enter__(self):
        tfds.disable_progress_bar()
        self._logger = logging.getLogger("absl")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)
        self._stdout = contextlib.redirect_stdout(io.StringIO())
        self._stdout.__enter__()
        return self

    def __exit__(self, *exc):
        self._stdout.__exit__(*exc)
        self._logger.setLevel(self._level)
        return False
