"""rrm-jax's JudgeBench score beside JudgeBench's own metric code, on the judges' outputs JudgeBench releases.

``python tools/judgebench_official.py PATH [RUNS...]``, PATH a checkout of github.com/ScalerLab/JudgeBench, RUNS
more files in its runner's format (``rrm-jax eval --dataset judgebench`` writes ``judgebench-*.jsonl``).

Each ``outputs/*.jsonl`` there is a judge's run as JudgeBench's ``run_judge.py`` wrote it: per pair the label and
two judgments (the dataset's order, then swapped, in the swapped frame), with ties (``A=B``) and missing ones. This
prints, per file, JudgeBench's ``utils/metrics.compute_final_metrics`` (imported from PATH, run as they run it) and
``rrm_jax.evaluation.scoring.judgebench_scores`` on the same judgments, overall and per source group, and exits 1
if any differs. Not a test: the suite ships no benchmark data, and their code is not ours to ship.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from rrm_jax.evaluation.scoring import JUDGEBENCH_GROUPS, judgebench_scores

DATASET_FRAME = {"A>B": 0, "B>A": 1}  # the winner as a response index of the dataset's pair
SWAPPED_FRAME = {"A>B": 1, "B>A": 0}  # the second judgment saw the dataset's B as its A


def main(root: Path, runs: list[Path]) -> int:
    spec = importlib.util.spec_from_file_location("jb_metrics", root / "utils" / "metrics.py")
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)
    files = sorted(f for f in (root / "outputs").glob("*.jsonl") if f.stat().st_size) + runs
    if not files:
        print(f"no outputs/*.jsonl under {root}", file=sys.stderr)
        return 2
    worst = 0.0
    print("judge | " + " | ".join(("overall",) + JUDGEBENCH_GROUPS) + "  (JudgeBench's / rrm-jax's, %)")
    for f in files:
        pairs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        decision = lambda j, frame: None if j is None else frame.get(j["decision"])  # A=B and None: no verdict
        verdicts = [
            [decision(p["judgments"][0], DATASET_FRAME), decision(p["judgments"][1], SWAPPED_FRAME)] for p in pairs
        ]
        ours = judgebench_scores(
            [DATASET_FRAME[p["label"]] for p in pairs],
            [("ab", "ba")] * len(pairs),
            verdicts,
            [p["source"] for p in pairs],
        )
        cells = []
        for group in ("",) + JUDGEBENCH_GROUPS:
            if not any(p["source"].startswith(group) for p in pairs):  # a partial run: their metric divides by 0
                cells.append("–")
                continue
            theirs = official.compute_final_metrics(pairs, True, include_fn=lambda p: p["source"].startswith(group))
            mine = 100 * (ours["groups"][group] if group else ours["overall"])
            worst = max(worst, abs(theirs - mine))
            cells.append(f"{theirs:.2f} / {mine:.2f}")
        print(f"{f.stem.split('judge_model=')[-1]} | " + " | ".join(cells))
    print(f"{len(files)} runs; largest difference {worst:.1e} points")
    return int(worst > 1e-9)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]]))
