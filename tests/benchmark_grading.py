"""Grade 30 fabricated submissions of lesson 01 and check every row (not a test: a figure).

    .venv/bin/python tests/benchmark_grading.py [--n 30] [--timeout 30] [--jobs 2] [--keep DIR]

The mix cycles through every kind in tests/grading_submissions.py: correct, partial, blank,
wrong, broken (invalid JSON, missing cells, an infinite loop, os._exit, a segfault, a cell
that deletes files) and tampering (fake checks, patched numpy / package / registry, frame and
gc walks, forged results, threads...). It prints the wall time and every row that is not
what it deserves; the exit status is 1 when any row is wrong. It calls `grading.grade` (the
engine of `mmlm-course grade`) with `watch` set to a folder of its own, so that other people
editing the course while it runs do not count as tampering.
"""

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grading_submissions as subs  # noqa: E402

from mmlm_course.tools import grading  # noqa: E402

SHORT = {"pass": "P", "fail": "F", "not attempted": "N", "error": "E"}


def mix(n: int) -> list[str]:
    kinds = list(subs.EXPECTED) + ["correct", "partial", "blank", "wrong"]
    return [kinds[i % len(kinds)] for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="number of submissions (default: %(default)s)")
    parser.add_argument("--timeout", type=int, default=30, help="per-cell / per-check timeout (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="submissions at once (default: %(default)s)")
    parser.add_argument("--keep", type=Path, help="write the submissions and the results here and keep them")
    args = parser.parse_args()

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mmlm-grade-bench-"))
    course = base / "course"
    course.mkdir(parents=True, exist_ok=True)
    sentinel = course / "precious.txt"
    sentinel.write_text("keep me")
    kinds = mix(args.n)
    learners = {}
    for i, kind in enumerate(kinds):
        learner = f"learner{i + 1:02d}-{kind}"
        folder = base / "submissions" / learner
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "01_images_and_text.ipynb").write_bytes(subs.build(kind, sentinel))
        learners[learner] = kind
    print(f"{len(kinds)} submissions, timeout {args.timeout} s, {args.jobs} jobs, {os.cpu_count()} CPUs", flush=True)
    start = time.perf_counter()
    grading.grade([base / "submissions"], base / "out", timeout=args.timeout, jobs=args.jobs, watch=[course],
                  progress=lambda line: print("  " + line, flush=True))
    seconds = time.perf_counter() - start
    rows = {r["learner"]: r for r in csv.DictReader(open(base / "out" / "grades.csv", encoding="utf-8"))}
    wrong = []
    for learner, kind in learners.items():
        got = "".join(SHORT[rows[learner][i]] for i in subs.IDS) if learner in rows else "missing"
        if got != subs.EXPECTED[kind]:
            wrong.append(f"{learner}: got {got}, expected {subs.EXPECTED[kind]}")
    if not sentinel.exists():
        wrong.append("a submission deleted the protected sentinel file")
    print(f"\ngraded {len(kinds)} submissions in {seconds:.0f} s ({seconds / 60:.1f} min); "
          f"rows right: {len(kinds) - len([w for w in wrong if ':' in w])}/{len(kinds)}")
    for line in wrong:
        print("  WRONG " + line)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"results in {base / 'out'}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
