"""The `mmlm-course` command line: build-lessons, check, execute, doctor, benchmark."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Importing env first sets TF_CPP_MIN_LOG_LEVEL before anything loads TensorFlow.
from mmlm_course import env

SYMBOL = {"pass": "\N{WHITE HEAVY CHECK MARK}", "fail": "\N{CROSS MARK}", "not attempted": "\N{HOURGLASS}",
          "not run": "\N{WARNING SIGN}"}


def course_root() -> Path:
    """The course folder: the checkout this package lives in, else the current folder."""
    checkout = Path(__file__).resolve().parent.parent
    return checkout if (checkout / "solutions").is_dir() else Path.cwd()


def cmd_build_lessons(args) -> int:
    from mmlm_course import notebooks

    try:
        stale = notebooks.build_lessons(args.solutions, args.lessons, check_only=args.check)
    except notebooks.MarkerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        if stale:
            print("Stale lessons (run `mmlm-course build-lessons`):\n" + "\n".join(f"  {s}" for s in stale))
            return 1
        print("lessons/ is in sync with solutions/.")
        return 0
    print(f"Wrote {len(stale)} lesson(s)" + (": " + ", ".join(stale) if stale else "; all were up to date."))
    return 0


def cmd_check(args) -> int:
    from mmlm_course import notebooks

    worst = 0
    for path in args.notebooks:
        print(f"Running {path} ...", flush=True)
        try:
            execution = notebooks.execute_notebook(Path(path), timeout=args.timeout)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        rows = notebooks.exercise_report(execution)
        width = max((len(r[0]) for r in rows), default=10)
        for exercise_id, status, message in rows:
            first_line = message.splitlines()[0] if message else ""
            print(f"  {SYMBOL[status]} {exercise_id:<{width}}  {status}" + (f"  - {first_line}" if status != "pass" else ""))
        counts = {s: sum(r[1] == s for r in rows) for s in notebooks.STATUS_ORDER}
        print("  " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" ({execution.seconds:.0f} s)")
        other = [e for e in execution.errors if e.ename not in ("CheckFailed", "ExerciseNotAttempted")]
        for error in other:
            print(f"  note: cell {error.index} raised {error.ename}: {error.evalue.splitlines()[0] if error.evalue else ''}")
        if not rows:
            print("  (this notebook has no exercises)")
        if any(r[1] != "pass" for r in rows):
            worst = 1
    return worst


def cmd_execute(args) -> int:
    from mmlm_course import notebooks

    failed = 0
    for path in args.notebooks:
        execution = notebooks.save_executed(Path(path), timeout=args.timeout)
        print(f"{path}: {execution.seconds:.1f} s, {len(execution.errors)} error(s)")
        for error in execution.errors:
            print(f"  cell {error.index}: {error.ename}: {error.evalue}")
        failed += bool(execution.errors)
    return 1 if failed else 0


def cmd_doctor(args) -> int:
    report = env.environment_report()
    print(json.dumps(report, indent=2) if args.json else env.format_report(report))
    return 1 if report["warnings"] and args.strict else 0


def cmd_benchmark(args) -> int:
    from mmlm_course import benchmark

    root = course_root()
    paths = [Path(p) for p in args.notebooks] or sorted((root / "solutions").glob("*.ipynb"))
    print("Executing notebooks ...", flush=True)
    rows = [] if args.skip_notebooks else benchmark.time_notebooks(paths)
    quality = []
    from mmlm_course.quality import all_tasks

    for name, task in all_tasks().items():
        if args.only and name not in args.only:
            continue
        print(f"Quality task {name} ...", flush=True)
        quality.append({"task": name, **task()})
    print()
    print(benchmark.format_table(rows) if rows else "")
    for row in quality:
        print()
        print(benchmark.format_table([row]))
    if args.json:
        Path(args.json).write_text(json.dumps({"notebooks": rows, "quality": quality}, indent=2))
    return 0 if all(r["within"] and not r["errors"] for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    root = course_root()
    parser = argparse.ArgumentParser(prog="mmlm-course", description="Tools for the mmlm-course notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-lessons", help="write lessons/ from solutions/ (solutions stubbed, outputs cleared)",
                       description="Generate the student notebooks in lessons/ from the solution notebooks.")
    p.add_argument("--solutions", type=Path, default=root / "solutions", help="solution notebooks folder (default: %(default)s)")
    p.add_argument("--lessons", type=Path, default=root / "lessons", help="lesson notebooks folder (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 and name each stale lesson")
    p.set_defaults(func=cmd_build_lessons)

    p = sub.add_parser("check", help="run a notebook and report each exercise: pass / fail / not attempted",
                       description="Execute your notebook in a fresh kernel and print one line per exercise.")
    p.add_argument("notebooks", nargs="+", help="notebook file(s), e.g. lessons/01_images_and_text.ipynb")
    p.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default: %(default)s)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("execute", help="execute notebooks and save them with their outputs (for teachers)",
                       description="Run solution notebooks top to bottom and save their outputs in place.")
    p.add_argument("notebooks", nargs="+", help="notebook file(s) to execute in place")
    p.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default: %(default)s)")
    p.set_defaults(func=cmd_execute)

    p = sub.add_parser("doctor", help="versions, CPU / GPU, Colab, and warnings for known-bad set-ups",
                       description="Report the environment and warn about set-ups known to break the course.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 when there is any warning")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("benchmark", help="time every solution notebook and measure model quality; print one table",
                       description="Execute the solution notebooks, time them against their budgets, and run "
                                   "the model-quality tasks the lessons register.")
    p.add_argument("notebooks", nargs="*", help="notebooks to time (default: all of solutions/)")
    p.add_argument("--skip-notebooks", action="store_true", help="run only the quality tasks")
    p.add_argument("--only", nargs="*", help="quality tasks to run (default: all)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
