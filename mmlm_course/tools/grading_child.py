"""The grading child: runs one learner's notebook and records what their functions return.

It runs inside the sandbox (`mmlm_course.tools.sandbox`) and nothing it says is trusted. The
job on stdin (JSON) lists the notebook's code cells and, after each cell, the exercises to
record there: ``{"timeout": s, "cells": [{"index", "source", "record": [{"id", "function"}]}]}``.
It runs the cells in order in an IPython shell (magics work; a cell that raises is reported
and the run goes on, as with Run All under nbclient's ``allow_errors``), with the course's
``check`` made silent. After a cell, for each exercise to record there, it runs the course's
check on the learner's function with a *tape*: every outcome of the learner's code (what it
returned, as plain data, or what it raised) goes to the parent on stdout as it happens. The
parent replays the check on the tape, so a check this process runs or fakes decides nothing.

Reports, one JSON object per line: ``{"cell": i, "error": text or null}``,
``{"exercise": id, "entry": tape entry}``, ``{"exercise": id, "missing": name}``,
``{"exercise": id, "end": true}`` and finally ``{"done": true}``.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading

from mmlm_course.exercises import checker, plain


SETUP_TIMEOUT = 180


class CellTimeout(Exception):
    """Raised into a cell that ran past the per-cell timeout."""


def on_own_thread(timeout: int):
    """A runner for the checks: the learner's code runs on a fresh thread, whose stack holds
    none of the check's frames (so no expected value can be read from them), for at most
    ``timeout`` s."""
    def runner(run):
        box = {}

        def target():
            try:
                box["value"] = run()
            except BaseException as error:     # handed to the check, which records it
                box["error"] = error
            # Finalisers of the learner's garbage run here, not beside the check. Only what was
            # made since the last call is scanned: what is alive now is frozen (never scanned
            # again), as a full scan of TensorFlow's heap takes a quarter of a second per call.
            gc.collect()
            gc.freeze()

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise CellTimeout(f"your function ran for more than {timeout} s")
        if "error" in box:
            raise box["error"]
        return box["value"]
    return runner


def _refuse_introspection(event: str, args) -> None:
    """An audit hook, added before any learner code runs. The learner's functions run on threads
    other than the main one, and there nothing may list every object or every thread's frames
    (the check's frames, on the main thread, hold the inputs and, at times, the expected
    values). Nothing may add a hook, a tracer or a profiler either: those would run beside the
    check's own code."""
    if event in ("sys.addaudithook", "sys.settrace", "sys.setprofile") or (
            event in ("sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents")
            and threading.current_thread() is not threading.main_thread()):
        raise RuntimeError(f"{event} is not allowed while grading")


def _quiet_main_thread() -> None:
    """Before a check: no learner code may run on the main thread beside it, so the signal
    handlers the notebook installed go back to their defaults and the garbage collector waits
    (the learner's garbage is collected on the learner's threads)."""
    for number in signal.valid_signals():
        try:
            handler = signal.getsignal(number)
        except (OSError, ValueError):
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            signal.signal(number, signal.SIG_DFL)
    gc.disable()


class _Tape(list):
    def __init__(self, send, exercise_id):
        super().__init__()
        self._send, self._id = send, exercise_id

    def append(self, entry):
        self._send({"exercise": self._id, "entry": plain.dumps(entry)})


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)                          # the learner's prints go nowhere
    os.dup2(devnull, 2)
    def send(message: dict) -> None:
        channel.write(json.dumps(message, separators=(",", ":")) + "\n")
        channel.flush()

    def silent_check(*args, **kwargs):
        return None

    checker.check = silent_check                 # the learner's own check cells do nothing here
    import mmlm_course.exercises as exercises
    exercises.check = silent_check

    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    timeout = int(job["timeout"])
    checker.registry()                           # the check modules are loaded before any learner code
    sys.addaudithook(_refuse_introspection)
    first = True

    def on_alarm(signum, frame):
        raise CellTimeout(f"the cell ran for more than {timeout} s")

    for cell in job["cells"]:
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(max(timeout, SETUP_TIMEOUT) if first else timeout)   # the first cell imports TensorFlow
        first = False
        try:
            result = shell.run_cell(cell["source"], store_history=False, silent=True)
            error = result.error_before_exec or result.error_in_exec
        except BaseException as raised:          # SystemExit, a timeout outside the shell's own handler
            error = raised
        finally:
            signal.alarm(0)
        send({"cell": cell["index"], "error": None if error is None else
              f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"})
        for exercise in cell["record"]:
            candidate = shell.user_ns.get(exercise["function"], _MISSING)
            if candidate is _MISSING:
                send({"exercise": exercise["id"], "missing": exercise["function"]})
                continue
            _quiet_main_thread()
            try:
                checker.run_check(exercise["id"], candidate, tape=_Tape(send, exercise["id"]),
                                  runner=on_own_thread(timeout))
            except BaseException:                # the verdict is the parent's: only the tape matters
                pass
            gc.enable()
            send({"exercise": exercise["id"], "end": True})
    send({"done": True})
    os._exit(0)


_MISSING = object()
