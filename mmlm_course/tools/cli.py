"""The `mmlm-course` command line: build-lessons, check, execute, doctor, benchmark, grade, train, generate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Importing env first sets TF_CPP_MIN_LOG_LEVEL before anything loads TensorFlow.
from mmlm_course import env

SYMBOL = {"pass": "\N{WHITE HEAVY CHECK MARK}", "fail": "\N{CROSS MARK}", "not attempted": "\N{HOURGLASS WITH FLOWING SAND}",
          "not run": "\N{WARNING SIGN}"}


def course_root() -> Path:
    """The course folder: the checkout this package lives in, else the current folder."""
    checkout = Path(__file__).resolve().parents[2]  # mmlm_course/tools/cli.py -> the checkout
    return checkout if (checkout / "solutions").is_dir() else Path.cwd()


def cmd_build_lessons(args) -> int:
    from mmlm_course.tools import notebooks

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
    from mmlm_course.tools import notebooks

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
    from mmlm_course.tools import notebooks

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
    env.quiet_import_tensorflow()              # before the quality modules import it
    from mmlm_course.tools import benchmark
    from mmlm_course.quality import all_tasks

    unknown = sorted(set(args.only or ()) - set(all_tasks()))
    if unknown:
        print(f"error: unknown quality task(s) {unknown}; the tasks are: {', '.join(all_tasks())}", file=sys.stderr)
        return 2
    tasks = {} if args.skip_quality else all_tasks()
    root = course_root()
    paths = [Path(p) for p in args.notebooks] or sorted((root / "solutions").glob("*.ipynb"))
    print("Executing notebooks ...", flush=True)
    rows, calibration = ([], None) if args.skip_notebooks else benchmark.time_notebooks(paths)
    quality = []
    for name, task in tasks.items():
        if args.only and name not in args.only:
            continue
        print(f"Quality task {name} ...", flush=True)
        quality.append({"task": name, **task()})
    print()
    if calibration:
        print(f"calibration notebook: {calibration['before_s']} s before, {calibration['after_s']} s after the "
              f"notebooks (reference machine: {calibration['reference_s']} s); ratio = seconds / "
              f"{calibration['unit_s']} s")
    print(benchmark.format_table(rows) if rows else "")
    for row in quality:
        print()
        print(benchmark.format_table([row]))
    if args.json:
        Path(args.json).write_text(json.dumps({"calibration": calibration, "notebooks": rows, "quality": quality}, indent=2))
    return 0 if all(r["within"] and not r["errors"] for r in rows) else 1


def cmd_grade(args) -> int:
    from mmlm_course.tools import grading

    try:
        grades = grading.grade(args.submissions, args.out, timeout=args.timeout, lesson=args.lesson,
                               solutions_dir=args.solutions, jobs=args.jobs)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nGraded {len(grades)} submission(s): {Path(args.out) / 'grades.csv'}, "
          f"{Path(args.out) / 'feedback'}/, {Path(args.out) / 'report.json'}")
    return 0


def cmd_train(args) -> int:
    env.quiet_import_tensorflow()              # before capstone's imports load it
    from mmlm_course import capstone

    overrides = {"seed": args.seed} if args.seed is not None else {}
    if args.batch_size is not None:
        if args.batch_size < 1:
            print(f"error: --batch-size must be at least 1, got {args.batch_size}", file=sys.stderr)
            return 2
        overrides["batch_size"] = args.batch_size
    if args.steps is not None:
        if args.steps < 4:
            print(f"error: --steps must be at least 4 (two per training stage: a stage's warmup-cosine learning "
                  f"rate needs two steps), got {args.steps}", file=sys.stderr)
            return 2
        stage1 = max(2, args.steps // 10)
        overrides.update(stage1_steps=stage1, stage2_steps=args.steps - stage1)
    try:
        config = capstone.resolve_config(args.preset, args.data, args.modality, **overrides)
        metrics = capstone.train(config, args.out, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nstopped: run the same command again to resume {args.out} from its last checkpoint.", file=sys.stderr)
        return 130
    made = [name for name in ("metrics.json", "samples.png", "model.keras", "checkpoints/", "tensorboard/")
            if (args.out / name).exists()]
    print(f"run folder: {args.out} ({', '.join(made)})")
    print(json.dumps({k: v for k, v in metrics.items() if k in ("test", "compositional", "held_out")}, indent=1))
    return 0


def cmd_generate(args) -> int:
    env.quiet_import_tensorflow()              # before capstone's imports load it
    from mmlm_course import capstone

    given = {(True, False): "image", (False, True): "audio", (True, True): "both"}.get(
        (args.image is not None, args.audio is not None))
    try:
        config = capstone.load_config(args.run)
        allowed = capstone.accepted_inputs(config)
        if given not in allowed:
            wanted = " or ".join({"both": "--image FILE --audio FILE"}.get(a, f"--{a} FILE") for a in allowed)
            got = {"both": "--image and --audio", None: "neither --image nor --audio"}.get(given, f"--{given}")
            model = "image and audio" if config.modality == "both" else config.modality
            raise ValueError(f"{args.run} is a run of the {model} model: give it {wanted}, not {got}.")
        note = lambda line: print(line, file=sys.stderr)         # noqa: E731 - stdout is the answer alone
        if config.modality == "both":
            print(capstone.generate_from_run(args.run, args.image, args.prompt, args.max_new_tokens, audio=args.audio,
                                             log=note))
        else:
            print(capstone.generate_from_run(args.run, args.audio or args.image, args.prompt, args.max_new_tokens,
                                             log=note))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


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
    p.add_argument("--skip-quality", action="store_true", help="only time the notebooks")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("grade", help="grade learners' notebooks: grades.csv and one feedback file per learner (for teachers)",
                       description="Run each learner's notebook in its own kernel (scratch folder, per-cell timeout), "
                                   "then run the course's checks on the learner's exercise functions in a separate, "
                                   "fresh process that the notebook cannot influence. Writes OUT/grades.csv (one row "
                                   "per learner, one column per exercise: pass / fail / not attempted / error, and a "
                                   "total), OUT/feedback/<learner>.md and OUT/report.json. A learner is named after "
                                   "the file (alice.ipynb, alice_01_images_and_text.ipynb) or, when the file is named "
                                   "like the lesson (alice/01_images_and_text.ipynb), after its folder.")
    p.add_argument("submissions", nargs="+", help="learner notebooks, or folders searched for .ipynb files")
    p.add_argument("--out", type=Path, required=True, help="folder for grades.csv, feedback/ and report.json (created)")
    p.add_argument("--timeout", type=int, default=60,
                   help="seconds allowed per notebook cell and per exercise check; the first code cell gets at "
                        "least 180 s for its imports (default: %(default)s)")
    p.add_argument("--lesson", help="grade every submission against this lesson (01 or 01_images_and_text) when "
                                    "the file names do not say which lesson they are")
    p.add_argument("--jobs", type=int, default=2, help="submissions graded at the same time (default: %(default)s)")
    p.add_argument("--solutions", type=Path, default=root / "solutions",
                   help="solution notebooks folder, the source of the exercises (default: %(default)s)")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("train", help="train the capstone multimodal LLM (the main job); resumable",
                       description="Train lesson 08's LLaVA-style model as a job: prints the preset and the device, "
                                   "shows a progress bar, checkpoints atomically, and writes a run folder with "
                                   "config.json, history.jsonl, metrics.json, samples.png, checkpoints/, "
                                   "tensorboard/ and model.keras. Started again with the same --out, it resumes "
                                   "from the last checkpoint.")
    p.add_argument("--preset", default="cpu",
                   help="tiny (seconds), notebook, cpu (default: at most 10 min on 2 CPU cores), colab-t4, gpu-large "
                        "(mixed precision and XLA when a GPU is found)")
    p.add_argument("--data", default="shapeworld",
                   help="shapeworld (default, generated), flickr8k:ROOT, coco:CAPTIONS_JSON,IMAGE_DIR or "
                        "vqa:QUESTIONS_JSON,ANNOTATIONS_JSON,IMAGE_DIR (real data you downloaded yourself)")
    p.add_argument("--modality", default="image", choices=("image", "audio", "both"),
                   help="image (default): lesson 08's model; audio: lesson 09's model on ShapeWorld's sounds; both: "
                        "one model that sees the picture and hears the sound of each scene")
    p.add_argument("--out", type=Path, default=Path("runs") / "capstone",
                   help="run folder; an existing one is resumed (default: %(default)s)")
    p.add_argument("--steps", type=int, help="total training steps, overriding the preset's (10%% projector-only)")
    p.add_argument("--seed", type=int, help="random seed (default: the preset's, 0)")
    p.add_argument("--batch-size", type=int, help="examples per training step, overriding the preset's")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="caption an image or a sound, or answer a question, with a trained run",
                       description="Load a run folder written by `mmlm-course train` and answer a prompt about an "
                                   "image (an image run), a sound file (an audio run) or both (a run of both).")
    p.add_argument("--run", type=Path, required=True, help="run folder written by `mmlm-course train`")
    p.add_argument("--image", type=Path, help="image file (any size or mode; converted to RGB and resized)")
    p.add_argument("--audio", type=Path,
                   help="sound file for an audio run (or, with --image, a run of both): WAV, FLAC, OGG or MP3 (any "
                        "rate and channels; at most 1.6 s)")
    p.add_argument("--prompt", default="", help="a question; empty (default) asks for a caption")
    p.add_argument("--max-new-tokens", type=int, default=20, help="longest answer in tokens (default: %(default)s)")
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
