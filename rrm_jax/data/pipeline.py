"""Reading built pair datasets through grain.

``load_pairs(kind, source)`` builds (or reuses) the TFDS ArrayRecord dataset and returns a
:class:`Pairs`: a ``grain.MapDataset`` of :class:`PairRecord` (random access, lazily decoded, sliceable,
shuffle/batch-able with grain's own transformations) plus the problems/notes recorded at build time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import grain

from rrm_jax.core.distributed import barrier, is_main
from rrm_jax.data.builders import SPLIT, build, decode, problems_of
from rrm_jax.data.records import PairRecord, Problem


@dataclasses.dataclass
class Pairs:
    kind: str
    source: str
    dataset: grain.MapDataset  # of PairRecord, in the source's item order
    problems: list[Problem]  # bad items skipped at build time (on_bad="skip")
    notes: list[Problem]  # items kept but worth a mention (empty texts, coerced values)
    data_dir: str  # where the ArrayRecord files live
    fingerprint: str = ""  # content hash of the source (+ policy): identifies the data in run records

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> PairRecord:
        return self.dataset[i]

    def __iter__(self) -> Iterator[PairRecord]:
        return iter(self.dataset)


def load_pairs(
    kind: str,
    source: str | Path | None,
    *,
    data_dir: str | Path | None = None,
    on_bad: str = "raise",
    split: str = SPLIT,
) -> Pairs:
    """Build-or-reuse the ArrayRecord dataset and read it through grain.

    ``split`` accepts TFDS slicing (``"test[:50]"``, ``"test[10%:]"``) to read part of it.
    """
    # multi-host: the main process builds (or validates) the files, the others then reuse them
    if is_main():
        builder = build(kind, source, data_dir=data_dir, on_bad=on_bad)
    barrier("dataset-build")
    if not is_main():
        builder = build(kind, source, data_dir=data_dir, on_bad=on_bad)
    src = builder.as_data_source(split=split)
    ds = grain.MapDataset.source(src).map(decode)
    problems, notes = problems_of(builder)
    fp = Path(builder.data_dir).parents[1].name  # data_dir/<kind>/<fingerprint>/<builder name>/<version>
    return Pairs(kind, str(builder.info.metadata.get("source", source)), ds, problems, notes, str(builder.data_dir), fp)


def batches(records: Sequence[PairRecord] | grain.MapDataset, batch_size: int) -> Iterator[list[PairRecord]]:
    """Consecutive lists of ``batch_size`` records (the last one shorter)."""
    buf: list[PairRecord] = []
    for r in records:
        buf.append(r)
        if len(buf) == batch_size:
            yield buf
            buf = []
    if buf:
        yield buf
