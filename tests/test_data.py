"""Readers, bad-input policy, TFDS ArrayRecord builders and grain reading."""

import json
from collections import Counter
from pathlib import Path

import pytest

from rrm_jax.data import (
    DataError,
    PairRecord,
    read_llmbar,
    read_pairs,
    read_pairs_jsonl,
    read_pandalm,
    read_rewardbench,
)


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


RB_ROWS = [
    {
        "prompt": "2+2?",
        "chosen": "4",
        "chosen_model": "m1",
        "rejected": "5",
        "rejected_model": "m2",
        "subset": "math-prm",
        "id": 30,
    },
    {
        "prompt": "Say hi",
        "chosen": "hi",
        "chosen_model": "m1",
        "rejected": "no",
        "rejected_model": "m2",
        "subset": "alpacaeval-easy",
        "id": 7,
    },
]


# ------------------------------------------------------------------ real files in ../shared
def test_pandalm_reader_on_shared(shared_dir):
    path = shared_dir / "data" / "pandalm" / "testset-v1.json"
    raw = json.loads(path.read_text())
    ps = read_pandalm(path)
    assert len(ps) == 999 and ps.problems == []
    # gold = majority of the three annotators (README: 105 tie / 422 / 472)
    assert Counter(r.label for r in ps.records) == {None: 105, 0: 422, 1: 472}
    for r, item in zip(ps.records, raw):
        votes = Counter([item["annotator1"], item["annotator2"], item["annotator3"]]).most_common(1)[0][0]
        assert r.label == {0: None, 1: 0, 2: 1}[votes]
        want = item["instruction"] + ("\n" + item["input"] if item["input"].strip() else "")
        assert r.query == want
        assert r.response_a == str(item["response1"]) and r.response_b == str(item["response2"])
        assert r.id == str(item["idx"]) and r.source == "pandalm"
    # kept-but-noted items: empty responses and JSON booleans standing for "True"
    fields = ("instruction", "response1", "response2")
    empties = sum(1 for it in raw for k in fields if isinstance(it[k], str) and not it[k].strip())
    bools = sum(1 for it in raw for k in fields if isinstance(it[k], bool))
    assert empties == 55 and bools == 6
    assert Counter("empty" in n.message for n in ps.notes) == {True: empties, False: bools}


def test_llmbar_reader_on_shared(shared_dir):
    d = shared_dir / "data" / "llmbar"
    ps = read_llmbar(d)
    sizes = Counter(r.subset for r in ps.records)
    assert sizes == {
        "Natural": 100,
        "Adversarial_Neighbor": 134,
        "Adversarial_GPTInst": 92,
        "Adversarial_GPTOut": 47,
        "Adversarial_Manual": 46,
    }
    raw = json.loads((d / "Adversarial_GPTOut.json").read_text())
    recs = [r for r in ps.records if r.subset == "Adversarial_GPTOut"]
    for r, item in zip(recs, raw):
        assert (r.query, r.response_a, r.response_b) == (item["input"], item["output_1"], item["output_2"])
        assert r.label == item["label"] - 1
    one = read_llmbar(d / "Processed_LLMEval2.json")
    assert len(one) == 200 and one.records[0].subset == "Processed_LLMEval2"
    assert len(one.notes) == 1 and "empty" in one.notes[0].message


# ------------------------------------------------------------------ RewardBench schema + generic JSONL
@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_rewardbench_schema_files(tmp_path, fmt):
    path = tmp_path / f"filtered.{fmt}"
    if fmt == "jsonl":
        _write_jsonl(path, RB_ROWS)
    elif fmt == "json":
        path.write_text(json.dumps(RB_ROWS))
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(RB_ROWS), path)
    ps = read_pairs("rewardbench", path)
    assert ps.records == [
        PairRecord("30", "2+2?", "4", "5", 0, "math-prm", "rewardbench"),
        PairRecord("7", "Say hi", "hi", "no", 0, "alpacaeval-easy", "rewardbench"),
    ]


def test_rewardbench_download_reads_the_filtered_shards_of_a_hub_snapshot(tmp_path, monkeypatch):
    """The hub is offline here: a stand-in snapshot_download lays files out as the hub's dataset repo does."""
    pa = pytest.importorskip("pyarrow")
    import huggingface_hub
    import pyarrow.parquet as pq

    from rrm_jax.data import download_rewardbench

    calls = []

    def fake_snapshot(repo_id, *, repo_type, allow_patterns, cache_dir):
        calls.append((repo_id, repo_type, allow_patterns))
        data = Path(cache_dir) / "snapshot" / "data"
        data.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(RB_ROWS), data / "filtered-00000-of-00001.parquet")
        pq.write_table(pa.Table.from_pylist(RB_ROWS[:1] * 3), data / "raw-00000-of-00001.parquet")  # an old fetch
        return str(Path(cache_dir) / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    ps = read_pairs("rewardbench", download_rewardbench(tmp_path))
    assert calls == [("allenai/reward-bench", "dataset", ["data/filtered*"])]
    assert [r.id for r in ps.records] == ["30", "7"]

    def offline(*a, **k):
        raise OSError("no route to host")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DataError, match="download the `filtered` split yourself"):
        download_rewardbench(tmp_path)


def test_generic_jsonl_labels(tmp_path):
    rows = [{"query": "q", "response_a": "x", "response_b": "y", "label": lab} for lab in (0, 1, None, "a", "b", "tie")]
    rows[0]["id"] = "first"
    rows[1]["subset"] = "s"
    ps = read_pairs_jsonl(_write_jsonl(tmp_path / "p.jsonl", rows))
    assert [r.label for r in ps.records] == [0, 1, None, 0, 1, None]
    assert ps.records[0].id == "first" and ps.records[1].id == "p-2" and ps.records[1].subset == "s"
    unl = read_pairs_jsonl(
        _write_jsonl(tmp_path / "u.jsonl", [{"query": "q", "response_a": "x", "response_b": "y"}]), require_label=False
    )
    assert unl.records[0].label is None
    with pytest.raises(DataError, match=r"u\.jsonl:1:label: missing field"):
        read_pairs_jsonl(tmp_path / "u.jsonl")


# ------------------------------------------------------------------ bad input
GOOD = {"query": "q", "response_a": "x", "response_b": "y", "label": 0}


@pytest.mark.parametrize(
    "bad,where",
    [
        ('{"query": "q", "response_a": "x"', ":2: malformed JSON"),
        ({"query": "q", "response_a": "x", "label": 1}, ":2:response_b: missing field"),
        ({**GOOD, "response_b": "   "}, ":2:response_b: empty"),
        ({**GOOD, "response_a": 3}, ":2:response_a: expected a string, got int"),
        ({**GOOD, "label": 2}, ":2:label: expected 0, 1, null"),
        ({**GOOD, "label": True}, ":2:label: expected"),
        ("[1, 2]", ":2: expected a JSON object"),
        ({**GOOD, "id": "p-1"}, ":2:id: duplicate id 'p-1'"),
    ],
)
def test_bad_jsonl_raise_and_skip(tmp_path, bad, where):
    path = _write_jsonl(tmp_path / "p.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(DataError) as e:
        read_pairs_jsonl(path)
    assert f"{path}{where}" in str(e.value)
    ps = read_pairs_jsonl(path, on_bad="skip")
    assert len(ps.records) == 2 and len(ps.problems) == 1
    assert str(ps.problems[0]).startswith(f"{path}{where}")


def test_bad_benchmark_items(tmp_path):
    pl = tmp_path / "pandalm.json"
    item = {
        "idx": 0,
        "instruction": "i",
        "input": "",
        "response1": "a",
        "response2": "b",
        "annotator1": 1,
        "annotator2": 1,
        "annotator3": 3,
    }
    pl.write_text(json.dumps([item]))
    with pytest.raises(DataError, match=r"pandalm\.json:1:annotator3: expected 0 \(tie\), 1 or 2, got 3"):
        read_pandalm(pl)
    lb = tmp_path / "Natural.json"
    lb.write_text(json.dumps([{"input": "i", "output_1": "a", "output_2": "b"}]))
    with pytest.raises(DataError, match=r"Natural\.json:1:label: missing field"):
        read_llmbar(lb)
    rb = _write_jsonl(tmp_path / "rb.jsonl", [{k: v for k, v in RB_ROWS[0].items() if k != "subset"}])
    with pytest.raises(DataError, match=r"rb\.jsonl:1:subset: missing field"):
        read_rewardbench(rb)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"input": ')
    with pytest.raises(DataError, match="broken.json:1: malformed JSON"):
        read_llmbar(broken)
    with pytest.raises(DataError, match="no such file"):
        read_pairs("jsonl", tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unknown dataset kind"):
        read_pairs("mmlu", pl)


# ------------------------------------------------------------------ TFDS ArrayRecord + grain
def test_build_and_read_through_grain(tmp_path, monkeypatch):
    import tempfile

    import grain

    from rrm_jax.data import load_pairs

    rows = [
        {"query": "héllo ✓", "response_a": "x" * 5, "response_b": "y", "label": lab, "subset": "s"}
        for lab in (0, 1, None)
    ]
    src = _write_jsonl(tmp_path / "p.jsonl", rows + ['{"broken'])
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(DataError, match=r"p\.jsonl:4: malformed JSON"):
        load_pairs("jsonl", src, data_dir=tmp_path / "tfds")
    pairs = load_pairs("jsonl", src, data_dir=tmp_path / "tfds", on_bad="skip")
    assert isinstance(pairs.dataset, grain.MapDataset)
    assert list(pairs) == read_pairs_jsonl(src, on_bad="skip").records  # order, tie label, unicode kept
    assert len(pairs.problems) == 1 and str(pairs.problems[0]).startswith(f"{src}:4: malformed JSON")
    files = list(Path(pairs.data_dir).glob("*.array_record*"))
    assert files, "expected ArrayRecord shards"
    # cached: a second load reuses the files (and the recorded problems); an edited source rebuilds
    mtime = files[0].stat().st_mtime_ns
    again = load_pairs("jsonl", src, data_dir=tmp_path / "tfds", on_bad="skip")
    assert files[0].stat().st_mtime_ns == mtime and len(again.problems) == 1
    _write_jsonl(src, rows[:2])
    edited = load_pairs("jsonl", src, data_dir=tmp_path / "tfds", on_bad="skip")
    assert len(edited) == 2 and edited.problems == [] and edited.data_dir != pairs.data_dir
    assert not list(scratch.iterdir()), "a build left temp files behind"
    # grain transformations compose on top
    assert [r.label for r in pairs.dataset.filter(lambda r: r.label is not None)] == [0, 1]


def test_build_pandalm_slice(shared_dir, tmp_path):
    from rrm_jax.data import load_pairs

    path = shared_dir / "data" / "pandalm" / "testset-v1.json"
    pairs = load_pairs("pandalm", path, data_dir=tmp_path, split="test[:25]")
    assert list(pairs) == read_pandalm(path).records[:25]
    assert len(pairs.notes) == len(read_pandalm(path).notes)  # recorded at build time for the whole set
