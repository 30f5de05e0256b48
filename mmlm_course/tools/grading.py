"""Grade learners' notebooks with the course's own checks, in a way a submission cannot fake.

`grade` (the engine behind ``mmlm-course grade``) takes learner notebooks and writes
``grades.csv`` (one row per learner, one column per exercise: ``pass`` / ``fail`` /
``not attempted`` / ``error``, and a ``total``), ``feedback/<learner>.md`` (each failing
check's message, and what went wrong when the notebook ran) and ``report.json`` (all of it,
for scripts).

How a submission is graded
--------------------------
1. Everything the grade depends on is read into memory before any learner code runs: every
   submission's bytes, the solution notebooks, and the source of every ``mmlm_course`` module.
   What a submission later does to the disk cannot change anyone's grade.
2. **The learner's notebook runs** in its own Jupyter kernel whose working folder is a fresh
   scratch folder, with a per-cell timeout (an interrupted cell is recorded and the run goes on;
   a kernel still stuck after the next cell's timeout, or a dead kernel, stops the run). Only
   the cells up to the last exercise's check cell run: later cells use the course's own code.
   Nothing the kernel prints, logs or writes is trusted. The run only *gates* the grade: an
   exercise whose check cell the notebook never reached (kernel crash: ``os._exit``, a
   segfault; stuck kernel) is an ``error``, since the notebook does not run top to bottom.
3. **The checks run in a separate, fresh Python process** (``python -I``, its own scratch
   folder, output discarded) that imports ``mmlm_course`` from the in-memory sources and
   binds the lesson's check functions, the `Checker` class and the references *before* any
   learner code exists in it. For each exercise it then execs, in a fresh namespace holding
   the solution notebook's setup imports, only the top-level ``import`` / ``def`` / ``class``
   statements of the learner's cells above that exercise's check cell (plus top-level
   assignments in the exercise cells themselves, i.e. the cells that match a solution cell
   with ``### BEGIN SOLUTION`` by id or that define an exercise function). Expressions,
   loops and calls at the top level of a cell are never run there, so a cell that prints
   "passed", redefines ``check``, patches the package or loops forever at top level has no
   effect on the grade. The result goes to the parent over a pipe, each line prefixed with a
   random nonce the learner never sees; anything else on that pipe marks tampering. An
   exercise that runs past the timeout, or that crashes or exits the process, is an
   ``error`` and the remaining exercises are checked in a new process.

What learner code in the grading process meets
----------------------------------------------
Learner code runs there at three moments: when its statements are exec'd, when the check
calls the learner's function, and when the check touches what the function returned. The
first two run inside a *guard*:

- the state of every loaded module (``numpy.allclose``, ``mmlm_course.exercises.run_check``,
  ``builtins``, ``sys.modules``, ``sys.meta_path``...) and the dicts of the classes of
  ``mmlm_course``, ``numpy`` and ``json`` (``Checker.expect_close``) are saved before and
  restored after each entry; signal handlers and timers are reset; the registry's check
  functions were bound beforehand, so editing the registry changes nothing;
- the grader's own code runs in a private namespace with its own copy of the builtins, which
  no module refers to (not even ``__main__``), and binds every function it calls
  (``sys._getframe``, numpy's constructors, ``os.write``, ``json.dumps``) before learner code
  runs: patching ``sys``, ``builtins`` or ``__main__`` does not reach it;
- arguments are defensive copies (a function that overwrites its input array cannot change
  what the check compares against); return values are rebuilt as plain data (exact
  ``str``/``int``/``tuple``/``list``/``dict``/``ndarray``...: a ``str`` subclass whose
  ``__eq__`` is always true, or an object whose ``__array__`` patches numpy, loses that
  power); exceptions are rebuilt with plain arguments;
- an audit hook (PEP 578), which learner code cannot remove, refuses while the guard is
  active: frame access from learner code (``sys._getframe``, ``inspect.currentframe``,
  ``tb_frame``, ``gi_frame``), ``gc.get_objects`` / ``get_referrers`` / ``get_referents``,
  raw-memory ``ctypes`` (``from_address``, ``string_at``, Python C-API symbols),
  ``sys.settrace`` / ``setprofile`` / ``addaudithook``, ``compile`` / ``exec`` / ``eval``
  called directly by learner code, replacing the ``__code__`` or defaults of a course or
  numpy function (or of any function, from learner code), processes (``fork``,
  ``subprocess``, ``os.system``, ``kill``), and writing, deleting or renaming files under
  the course folder, the output folder, the grader's scratch folders and the Python
  installation;
- a learner function that leaves a thread running makes the exercise an ``error`` (the
  process is not trusted further); learner-made callables found in a module, class or code
  object after a check make it an ``error`` too.

The kernel gets the same file guard (as an IPython startup file), so a cell cannot delete
or overwrite course files from Python either; course files (the package, ``solutions/``,
``lessons/``) are also hashed before and after every submission and any change is reported
to the teacher (not held against the learner: no grade depends on the disk, and the teacher
may be editing the course).

Limits (what this does not stop)
--------------------------------
This is a guard within one Python process, not a sandbox. Learner code runs with the
grader's user rights. It does not stop: code run from a *method of an object* the check
keeps using (for instance a learner's Keras layer class, whose ``call`` the check invokes:
such objects pass through unmodified, and methods that run outside the guard could patch
modules before a comparison; the end-of-exercise scan catches patches left behind, not
ones undone in time); native code (a C extension, or ``ctypes`` reached in a way the audit
events do not name); a shell command from the kernel (``!rm -rf ...``, ``os.system``) that
deletes or edits files: it is reported when the file is a course file, not prevented, and
a command that edits installed packages (numpy in the virtual environment) could affect
submissions graded after it; memory or fork bombs; the network. Frame access through a
library helper that is not ``inspect`` / ``logging`` / ``traceback`` (or a signal handler)
is not refused. A learner may call the course's own implementation (``preprocessing.
to_float_image``) from an exercise: that passes, as it would in class. For untrusted
submissions, run ``mmlm-course grade`` in a container or as a user that can only read the
course; tests/test_grading.py shows which tampering this module defeats.

This file also runs as the grading process: ``grade`` starts ``python -I -c _BOOTSTRAP``
and sends this file's source (read at start) and the job on stdin, so the module imports
only the standard library at the top level.
"""

from __future__ import annotations

import ast
import builtins as _builtins_module
import dataclasses
import functools as _functools
import json
import operator as _operator
import os
import re
import sys
import time
import types as _types
from pathlib import Path
from typing import Callable, Iterable

# Bound once, before any learner code runs: the grading process's own code must not look up
# anything learner code can rebind (sys._getframe, types.FunctionType...).
_getframe, _current_frames = sys._getframe, sys._current_frames
_FunctionType, _MethodType, _ModuleType = _types.FunctionType, _types.MethodType, _types.ModuleType
_partial, _is = _functools.partial, _operator.is_

STATUSES = ("pass", "fail", "not attempted", "error")
CHILD_FLAG = "--mmlm-grader-child"
LEARNER_FILE = "<learner cell"
SETUP_CELL_MIN_TIMEOUT = 180  # the first code cell imports TensorFlow: allow a cold machine
DEFAULT_TIMEOUT = 60
BEGIN_SOLUTION = "### BEGIN SOLUTION"
_CHECK_CALL = re.compile(r"""^\s*check\(\s*["']([\w.]+)["']\s*,\s*([A-Za-z_]\w*)""", re.MULTILINE)
_CHECK_ID = re.compile(r"""check\(\s*["']([\w.]+)["']""")
# `python -I -c _BOOTSTRAP`: the first stdin line carries this file's source (read at grading
# start), the rest the job. The source runs in a private namespace with its own copy of the
# builtins, which no module (not even __main__) refers to, so learner code cannot reach the
# grader's functions; the nonce lives only in `_child_main`'s locals.
_BOOTSTRAP = ("import sys, json, builtins\n"
              "(lambda header, namespace: (exec(compile(header['source'], header['path'], 'exec'), namespace),\n"
              "                            namespace['_child_main']()))(\n"
              "    json.loads(sys.stdin.buffer.readline()),\n"
              "    {'__name__': '__main__', '__builtins__': dict(vars(builtins))})\n")


# =========================================================================== file guard
# Installed in the learner's kernel (as an IPython startup file: its source is written out)
# and in the grading process. Self-contained: it must not use anything defined elsewhere.

def _install_file_guard(protected, allowed, active=None, blocked=None, extra=None):
    """Install an audit hook that refuses writes, deletions and renames under ``protected``
    folders (except under ``allowed`` ones) with PermissionError. ``active`` is a one-element
    list: the hook acts only while ``active[0]`` is true (None: always). ``blocked`` collects
    the refused events; ``extra(event, args)`` may refuse more events (return a reason)."""
    import os as _os
    import sys as _sys

    realpath, sep, fspath, _any, _isinstance, _str, _bytes = _os.path.realpath, _os.sep, _os.fspath, any, isinstance, str, bytes
    protected = [realpath(p) for p in protected]
    allowed = [realpath(p) for p in allowed]
    write_flags = _os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_TRUNC | _os.O_APPEND
    path_events = {"os.remove": (0,), "os.rmdir": (0,), "shutil.rmtree": (0,), "os.truncate": (0,),
                   "os.chmod": (0,), "os.chown": (0,), "os.mkdir": (0,), "os.utime": (0,),
                   "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (1,), "shutil.copyfile": (1,),
                   "shutil.copytree": (1,), "shutil.move": (0, 1), "os.chflags": (0,), "os.setxattr": (0,),
                   "os.removexattr": (0,)}
    state = {"busy": False}

    def inside(path):
        if _isinstance(path, int) or path is None:
            return False
        try:
            path = realpath(fspath(path))
        except Exception:
            return False
        if _isinstance(path, _bytes):
            path = path.decode(errors="replace")
        under = lambda root: path == root or path.startswith(root.rstrip(sep) + sep)  # noqa: E731
        return _any(under(r) for r in protected) and not _any(under(a) for a in allowed)

    def hook(event, args):
        if state["busy"] or (active is not None and not active[0]):
            return
        state["busy"] = True
        try:
            reason = None
            if event == "open" and len(args) >= 3:
                path, mode, flags = args[0], args[1], args[2]
                writes = _any(c in mode for c in "wax+") if _isinstance(mode, _str) else bool((flags or 0) & write_flags)
                if writes and inside(path):
                    reason = f"writing {path}"
            elif event in path_events:
                for position in path_events[event]:
                    if position < len(args) and inside(args[position]):
                        reason = f"{event} on {args[position]}"
                        break
            if reason is None and extra is not None:
                reason = extra(event, args)
            if reason is not None:
                if blocked is not None:
                    blocked.append(reason)
                raise PermissionError(f"the mmlm-course grader does not allow {reason}")
        finally:
            state["busy"] = False

    _sys.addaudithook(hook)
    return hook


# =========================================================================== the grading process
# Everything from here to `_child_main` runs inside the fresh grading process.

# Two helpers that learner code can reach (the import finder sits in sys.meta_path, lazy
# modules in its namespace): each is made in a namespace of its own, holding nothing else.
_FINDER_SOURCE = """
class SourceFinder:
    '''Import mmlm_course modules from sources held in memory (read at grading start).'''

    def __init__(self, sources):
        self.sources = sources

    def find_spec(self, name, path=None, target=None):
        entry = self.sources.get(name)
        if entry is None:
            return None
        spec = spec_from_loader(name, self, origin=entry["path"], is_package=entry["package"])
        spec.has_location = True
        if entry["package"]:
            spec.submodule_search_locations = [dirname(entry["path"])]
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        entry = self.sources[module.__name__]
        exec(compile(entry["source"], entry["path"], "exec", dont_inherit=True), module.__dict__)
"""
_LAZY_SOURCE = """
class LazyModule(ModuleType):
    '''A module imported on first attribute access.'''

    def __getattr__(self, attribute):
        return getattr(import_module(self.__name__), attribute)

    def __dir__(self):
        return dir(import_module(self.__name__))


def lazy_module(name):
    return modules[name] if name in modules else LazyModule(name)
"""


def _isolated(source: str, **names) -> dict:
    """Run ``source`` in a fresh namespace (own builtins copy) holding only ``names``."""
    namespace = {"__name__": "mmlm_course_grader", "__builtins__": dict(vars(_builtins_module)), **names}
    exec(compile(source, "<mmlm-grader helper>", "exec"), namespace)
    return namespace


_MISSING = object()
_INTERNALS_SCOPE = ("mmlm_course", "numpy", "json", "__main__", "difflib", "dataclasses")
_FRAME_HELPERS = ("inspect", "logging", "traceback", "<string>")


def _is_heap_type(cls) -> bool:
    return bool(getattr(cls, "__flags__", 0) & (1 << 9))


class _Guard:
    """Save and restore interpreter state around learner code; refuse dangerous operations."""

    def __init__(self, protected: list[str], allowed: list[str], private: Iterable[dict] = ()):
        import signal
        import threading

        import numpy

        self.types, self.signal, self.threading = _types, signal, threading
        self.np = _types.SimpleNamespace(ndarray=numpy.ndarray, array=numpy.array, asarray=numpy.asarray,
                                         empty=numpy.empty, generic=numpy.generic)
        self.private = [(d, dict(d)) for d in private]  # namespaces reachable by learner code
        self.active = [False]
        self.blocked: list[str] = []
        self.compromised: list[str] = []
        self.known_types = self._collect_known_types()
        self.internals = self._snapshot_internals()
        self.protected_functions = {id(state[0]) for state in self.internals[0]}
        self.baseline = self.snapshot()
        self.threads = len(_current_frames())
        self.signals = [s for s in signal.Signals if s not in (signal.SIGKILL, signal.SIGSTOP)]
        hook = _install_file_guard(protected, allowed, active=self.active, blocked=self.blocked, extra=self._refuse)
        self._hook_codes = {hook.__code__, self._refuse.__func__.__code__, self._learner_caller.__func__.__code__}

    # ------------------------------------------------------------------ audit events
    def _learner_caller(self) -> bool:
        """Is the code that raised the audit event learner code (skipping frame helpers)?"""
        frame = _getframe(1)
        while frame is not None and frame.f_code in self._hook_codes:
            frame = frame.f_back
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(LEARNER_FILE):
                return True
            module = frame.f_globals.get("__name__", "")
            if name == "<string>" or str(module).split(".")[0] in _FRAME_HELPERS:
                frame = frame.f_back
                continue
            return False
        return False

    def _refuse(self, event: str, args) -> str | None:
        always = ("sys.addaudithook", "sys.settrace", "sys.setprofile", "gc.get_objects", "gc.get_referrers",
                  "gc.get_referents", "sys._current_frames", "ctypes.cdata", "ctypes.string_at",
                  "ctypes.wstring_at", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec",
                  "os.system", "subprocess.Popen", "os.kill", "os.killpg", "pty.spawn", "signal.pthread_kill")
        if event in always:
            return event
        if event == "ctypes.dlsym" and len(args) > 1 and str(args[1]).lstrip("_").startswith("Py"):
            return f"ctypes access to {args[1]}"
        if event == "sys._getframe" and self._learner_caller():
            return "frame access (sys._getframe)"
        if event == "object.__getattr__" and len(args) > 1 and args[1] in ("tb_frame", "gi_frame", "cr_frame",
                                                                         "ag_frame"):
            if self._learner_caller():
                return f"frame access ({args[1]})"
        if event in ("compile", "exec") and self._learner_caller():
            return "compile / exec / eval"
        if event == "object.__setattr__" and len(args) > 1 and args[1] in ("__code__", "__defaults__", "__kwdefaults__") \
                and (id(args[0]) in self.protected_functions or self._learner_caller()) and not _learner_made(args[0]):
            return f"replacing the {args[1]} of {getattr(args[0], '__qualname__', 'a function')}"
        return None

    # ------------------------------------------------------------------ state
    def _collect_known_types(self) -> set:
        """Every class that exists before learner code runs (module attributes and builtins)."""
        import builtins

        known = {v for v in vars(builtins).values() if isinstance(v, type)}
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if isinstance(namespace, dict):
                known.update(v for v in list(namespace.values()) if isinstance(v, type))
        return known

    def _snapshot_internals(self) -> list:
        """Code objects and defaults of functions, and dicts of classes, in the trusted scope."""
        functions, classes, seen = [], [], set()

        def add_function(fn):
            if id(fn) not in seen:
                seen.add(id(fn))
                functions.append((fn, fn.__code__, fn.__defaults__, fn.__kwdefaults__))

        for name, module in list(sys.modules.items()):
            if not name.startswith(_INTERNALS_SCOPE) or not isinstance(module, self.types.ModuleType):
                continue
            for value in list(vars(module).values()):
                if isinstance(value, self.types.FunctionType):
                    add_function(value)
                elif type(value).__name__ == "_ArrayFunctionDispatcher":
                    impl = getattr(value, "_implementation", None)
                    if isinstance(impl, self.types.FunctionType):
                        add_function(impl)
                elif isinstance(value, type) and _is_heap_type(value) and id(value) not in seen \
                        and str(getattr(value, "__module__", "")).startswith(_INTERNALS_SCOPE):
                    seen.add(id(value))
                    classes.append((value, dict(vars(value))))
                    for member in list(vars(value).values()):
                        member = getattr(member, "__func__", member)
                        if isinstance(member, self.types.FunctionType):
                            add_function(member)
        return [functions, classes]

    def snapshot(self) -> dict:
        modules = dict(sys.modules)
        dicts = [(m, dict(m.__dict__)) for m in modules.values() if isinstance(m, self.types.ModuleType)]
        return {"modules": modules, "dicts": dicts, "meta_path": list(sys.meta_path),
                "path_hooks": list(sys.path_hooks), "path": list(sys.path),
                "importer_cache": dict(sys.path_importer_cache)}

    def restore(self, saved: dict, report: list | None = None, functions: bool = True) -> None:
        """Put module state back as it was in ``saved``; append learner-made leftovers to ``report``.

        ``functions=False`` skips the code objects of functions (the audit hook refuses
        replacing them while learner code runs, so a per-call restore need not look)."""
        module_type, same = self.types.ModuleType, _same
        for module, before in saved["dicts"]:
            current = module.__dict__
            if same(current, before):
                continue
            for key in [k for k in current if k not in before]:
                value = current[key]
                if type(value) is module_type:
                    continue  # a submodule imported meanwhile
                if report is not None and _learner_made(value):
                    report.append(f"{module.__name__}.{key}")
                del current[key]
            for key, value in before.items():
                now = current.get(key, _MISSING)
                if now is value:
                    continue
                if type(now) is module_type and not isinstance(value, module_type):
                    continue  # a lazy loader replaced by its module
                if report is not None and now is not _MISSING and _learner_made(now):
                    report.append(f"{module.__name__}.{key}")
                current[key] = value
        for name, module in saved["modules"].items():
            if sys.modules.get(name) is not module:
                sys.modules[name] = module
        for name in ("meta_path", "path_hooks", "path"):
            items = getattr(sys, name)
            if len(items) != len(saved[name]) or any(a is not b for a, b in zip(items, saved[name])):
                items[:] = saved[name]
        for key, value in saved["importer_cache"].items():
            if sys.path_importer_cache.get(key, _MISSING) is not value:
                sys.path_importer_cache[key] = value
        for namespace, before in self.private:
            if not same(namespace, before):
                namespace.clear()
                namespace.update(before)
        function_states, classes = self.internals
        for cls, before in classes:
            if same(vars(cls), before):
                continue
            for key in [k for k in list(vars(cls)) if k not in before]:
                if report is not None and _learner_made(vars(cls)[key]):
                    report.append(f"{cls.__qualname__}.{key}")
                try:
                    delattr(cls, key)
                except (AttributeError, TypeError):
                    pass
            for key, value in before.items():
                if vars(cls).get(key, _MISSING) is not value and key not in ("__dict__", "__weakref__"):
                    if report is not None and _learner_made(vars(cls).get(key)):
                        report.append(f"{cls.__qualname__}.{key}")
                    try:
                        setattr(cls, key, value)
                    except (AttributeError, TypeError):
                        pass
        for fn, code, defaults, kwdefaults in (function_states if functions else ()):
            if fn.__code__ is not code:
                if report is not None and fn.__code__.co_filename.startswith(LEARNER_FILE):
                    report.append(f"{fn.__qualname__}.__code__")
                fn.__code__ = code
            if fn.__defaults__ is not defaults:
                fn.__defaults__ = defaults
            if fn.__kwdefaults__ is not kwdefaults:
                fn.__kwdefaults__ = kwdefaults

    def _signal_state(self):
        handlers = {}
        for sig in self.signals:
            try:
                handlers[sig] = self.signal.getsignal(sig)
            except (ValueError, OSError):
                pass
        return handlers

    # ------------------------------------------------------------------ running learner code
    def run(self, function: Callable, *args, **kwargs):
        """Call learner code inside the guard; restore state afterwards, whatever happens."""
        saved, handlers = self.snapshot(), self._signal_state()
        frames = min(len(_current_frames()), self.threads)
        self.active[0] = True
        try:
            return function(*args, **kwargs)
        finally:
            self.active[0] = False
            self.restore(saved, functions=False)
            for sig, handler in handlers.items():
                try:
                    if self.signal.getsignal(sig) is not handler:
                        self.signal.signal(sig, handler)
                        self.compromised.append(f"changed the handler of {sig.name}")
                except (ValueError, OSError, TypeError):
                    pass
            for timer in (self.signal.ITIMER_REAL, self.signal.ITIMER_VIRTUAL, self.signal.ITIMER_PROF):
                if self.signal.getitimer(timer) != (0.0, 0.0):
                    self.signal.setitimer(timer, 0)
                    self.compromised.append("started a timer")
            if len(_current_frames()) > frames and "left a thread running" not in self.compromised:
                self.compromised.append("left a thread running")

    def execute(self, statements: list, namespace: dict) -> list[str]:
        """``exec`` compiled learner statements ``[(code, where)]`` in ``namespace`` inside the
        guard, going on after errors; return one line per error."""
        errors: list = []

        def invoke():
            for code, where in statements:
                try:
                    exec(code, namespace)
                except BaseException as error:
                    clean = _clean_exception(error, self.known_types).error
                    errors.append(f"{where}: {type(clean).__name__}: {str.__str__(str(clean))[:300]}")

        self.run(invoke)
        return errors

    def call(self, function: Callable, args: tuple, kwargs: dict, keep_objects: bool):
        """The learner's function as the check sees it: copied inputs, plain outputs, plain errors."""
        args = tuple(_copy_in(a, self.np) for a in args)
        kwargs = {k: _copy_in(v, self.np) for k, v in kwargs.items()}
        clean: list = []

        def invoke():
            try:
                clean.append(_plain(function(*args, **kwargs), self.known_types, keep_objects, self.np))
            except BaseException as error:  # rebuilt inside the guard: its __str__ is learner code
                clean.append(_clean_exception(error, self.known_types))

        self.run(invoke)
        if isinstance(clean[0], _Raised):
            raise clean[0].error from None
        return clean[0]


def _same(current, before: dict) -> bool:
    """Do two mappings hold the very same keys and values, in the same order? (C-speed)"""
    return (len(current) == len(before) and all(map(_is, current.values(), before.values()))
            and all(map(_is, current.keys(), before.keys())))


class _Raised:
    def __init__(self, error):
        self.error = error


def _learner_made(value, depth: int = 0) -> bool:
    """Was ``value`` made by learner code: a function, method, partial, class or instance of such?"""
    kind = type(value)  # exact types only: isinstance() would consult a learner's __class__ property
    if depth > 3:
        return False
    if kind is _FunctionType:
        return value.__code__.co_filename.startswith(LEARNER_FILE)
    if kind is _MethodType:
        return _learner_made(value.__func__, depth + 1)
    if kind is _partial:
        return _learner_made(value.func, depth + 1)
    cls = value if issubclass(kind, type) else kind
    if not _is_heap_type(cls):
        return False
    return any(type(v) is _FunctionType and v.__code__.co_filename.startswith(LEARNER_FILE)
               for v in list(type.__dict__["__dict__"].__get__(cls).values()))


def _copy_in(value, np, depth: int = 0):
    """A defensive copy of plain data handed to learner code (arrays, lists, dicts, sets);
    ``np``: numpy functions bound before learner code ran."""
    if depth > 20:
        return value
    if isinstance(value, np.ndarray):
        return np.ndarray.copy(value)
    if type(value) is list:
        return [_copy_in(v, np, depth + 1) for v in value]
    if type(value) is tuple:
        return tuple(_copy_in(v, np, depth + 1) for v in value)
    if type(value) is dict:
        return {k: _copy_in(v, np, depth + 1) for k, v in value.items()}
    if type(value) is set:
        return set(value)
    return value


_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_BASES = ((bool, bool), (str, str.__str__), (int, int.__int__), (float, float.__float__),
          (complex, complex), (bytes, bytes))


def _plain(value, known: set, keep_objects: bool, np, depth: int = 0):
    """Rebuild a learner's return value from trusted types (run inside the guard).

    Exact builtin scalars, numpy arrays (copied, base class) and containers are rebuilt; a
    subclass of a builtin type made by learner code becomes the builtin; an unknown object
    with ``shape`` or ``__array__`` becomes an ndarray unless ``keep_objects`` (the exercise
    is a class). Other objects (Keras layers, tensors) pass unchanged. ``np``: numpy
    functions bound before learner code ran."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if depth > 50:
        raise TypeError("your function returned a structure nested more than 50 levels deep")
    if isinstance(value, np.ndarray):
        array = np.ndarray.copy(value) if kind in known else np.array(np.ndarray.view(value, np.ndarray), copy=True)
        if kind is not np.ndarray and kind not in known:
            array = np.asarray(array)
        if array.dtype == object:
            out = np.empty(array.shape, dtype=object)
            flat = out.reshape(-1)
            for i, item in enumerate(array.reshape(-1)):
                flat[i] = _plain(item, known, keep_objects, np, depth + 1)
            return out
        return array
    if isinstance(value, (list, tuple)):
        items = [_plain(v, known, keep_objects, np, depth + 1)
                 for v in (list.__iter__(value) if isinstance(value, list) else tuple.__iter__(value))]
        if kind is list or (kind not in known and isinstance(value, list)):
            return items
        if kind is tuple or kind not in known:
            return tuple(items)
        return kind._make(items) if hasattr(kind, "_make") else kind(items)
    if isinstance(value, dict):
        items = {_plain(k, known, keep_objects, np, depth + 1): _plain(v, known, keep_objects, np, depth + 1)
                 for k, v in dict.items(value)}
        return items if (kind is dict or kind not in known) else value
    if isinstance(value, (set, frozenset)):
        items = [_plain(v, known, keep_objects, np, depth + 1) for v in set.__iter__(value)] \
            if isinstance(value, set) else [_plain(v, known, keep_objects, np, depth + 1) for v in frozenset.__iter__(value)]
        return (set if isinstance(value, set) else frozenset)(items)
    if kind in known:
        return value
    for base, convert in _BASES:
        if isinstance(value, base):
            return convert(value)
    if isinstance(value, np.generic):
        return np.asarray(value).copy()[()]
    if not keep_objects and (hasattr(value, "__array__") or hasattr(value, "shape")):
        return _plain(np.asarray(value), known, keep_objects, np, depth + 1)
    return value


def _clean_exception(error: BaseException, known: set) -> _Raised:
    """A trusted copy of an exception raised by learner code, with plain arguments."""
    try:
        text = str.__str__(str(error))[:2000]
    except BaseException:
        text = "(an error whose message could not be read)"
    if isinstance(error, NotImplementedError):
        return _Raised(NotImplementedError(text))
    kind = type(error)
    trusted = next((k for k in kind.__mro__ if k in known and issubclass(k, BaseException)), Exception)
    args = []
    for arg in tuple.__iter__(error.args) if isinstance(error.args, tuple) else ():
        args.append(arg if type(arg) in _SCALARS else text)
    try:
        if trusted is kind:
            clean = kind.__new__(kind)
            clean.args = tuple(args)
        else:  # a class the learner made: keep its name, drop its methods
            name = str.__str__(kind.__name__) if isinstance(kind.__name__, str) else "Error"
            made = type(name, (trusted,), {"__module__": "learner"})
            clean = trusted.__new__(made)
            clean.args = (text,)
    except Exception:
        clean = RuntimeError(f"{type(error).__name__}: {text}")
    return _Raised(clean)


def _kept_statements(source: str, with_assignments: bool) -> list:
    """The top-level statements of a cell the grader runs: imports, defs, classes (and
    assignments when ``with_assignments``); each as a one-statement ``ast.Module``.

    ``import a`` and ``import a.b as c`` of a module not loaded yet bind a `_LazyModule`
    that imports on first use (most exercise functions never touch matplotlib)."""
    tree = ast.parse(source)
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    if with_assignments:
        keep += (ast.Assign, ast.AnnAssign)
    out = []
    for node in tree.body:
        if not isinstance(node, keep):
            continue
        if isinstance(node, ast.Import) and all(a.asname or "." not in a.name for a in node.names) \
                and not all(a.name in sys.modules for a in node.names):
            names = [ast.Name(a.asname or a.name, ast.Store()) for a in node.names]
            loads = [ast.Call(ast.Name("__mmlm_lazy__", ast.Load()), [ast.Constant(a.name)], []) for a in node.names]
            lazy = ast.Assign(targets=[ast.Tuple(names, ast.Store())], value=ast.Tuple(loads, ast.Load()))
            node = ast.fix_missing_locations(ast.copy_location(lazy, node))
        out.append(ast.Module(body=[node], type_ignores=[]))
    return out


def _child_main() -> None:
    """The grading process: read a job on stdin, report results on the pipe ``job['fd']``."""
    import builtins
    import gc
    import importlib

    raw = sys.stdin.buffer.read()  # the line after the bootstrap's: the job
    sys.stdin.close()
    job = json.loads(raw)
    del raw
    nonce = job.pop("nonce").encode()
    fd, write, dumps = job["fd"], os.write, json.dumps

    def send(kind: str, payload=None) -> None:
        data = nonce + b"\t" + kind.encode() + b"\t" + dumps(payload).encode() + b"\n"
        while data:
            data = data[write(fd, data):]

    import importlib.util

    finder_namespace = _isolated(_FINDER_SOURCE, spec_from_loader=importlib.util.spec_from_loader,
                                 dirname=os.path.dirname)
    finder = finder_namespace["SourceFinder"](_types.MappingProxyType(job.pop("sources")))
    sys.meta_path.insert(0, finder)
    lazy = _isolated(_LAZY_SOURCE, ModuleType=_ModuleType, import_module=importlib.import_module,
                     modules=sys.modules)["lazy_module"]
    import numpy  # noqa: F401  (bound before learner code)

    import mmlm_course.exercises.checker as exercises_module

    if job["check_module"]:
        importlib.import_module(job["check_module"])
    registry = dict(exercises_module._REGISTRY)
    runs = {item["id"]: registry[item["id"]].run for item in job["exercises"] if item["id"] in registry}
    Checker, CheckFailed = exercises_module.Checker, exercises_module.CheckFailed
    NotAttempted = exercises_module.ExerciseNotAttempted
    template = {"__name__": "__learner__", "__builtins__": builtins, "__mmlm_lazy__": lazy}
    for source in job["setup"]:
        try:
            for module in _kept_statements(source, with_assignments=False):
                exec(compile(module, "<setup>", "exec"), template)
        except Exception:
            pass
    gc.collect()
    gc.disable()
    guard = _Guard(job["protected"], job["allowed"], private=[vars(finder), finder_namespace])
    baseline = guard.baseline
    send("ready")

    for item in job["exercises"]:
        exercise_id, name = item["id"], item["function"]
        send("start", exercise_id)
        guard.restore(baseline)
        before = guard.snapshot()
        guard.blocked.clear()
        notes: list[str] = []
        namespace = dict(template)
        statements = []
        for cell in item["cells"]:
            try:
                modules = _kept_statements(cell["source"], cell["assignments"])
            except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
                notes.append(f"cell {cell['index']} is not valid Python ({type(error).__name__}: {error})")
                continue
            for module in modules:
                where = f"cell {cell['index']}, line {module.body[0].lineno}"
                try:
                    code = compile(module, f"{LEARNER_FILE} {cell['index']}>", "exec", dont_inherit=True)
                except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
                    notes.append(f"{where}: {type(error).__name__}: {error}")
                    continue
                statements.append((code, where))
        notes += guard.execute(statements, namespace)
        candidate = namespace.get(name, _MISSING)
        result = {"id": exercise_id, "notes": notes}
        if exercise_id not in runs:
            result.update(status="error", message=f"{exercise_id}: the course has no check for this exercise.")
        elif candidate is _MISSING:
            result.update(status="error", message=f"{exercise_id}: no `{name}` is defined above its check cell "
                          "(its cell is missing, or the definition failed).")
        elif not callable(candidate):
            result.update(status="fail", message=f"{exercise_id}: `{name}` is not a function "
                          f"(it is a {type(candidate).__name__}).")
        else:
            keep = issubclass(type(candidate), type)  # the exercise is a class
            holder: list = []

            def learner_function(*args, **kwargs):
                try:
                    return guard.call(candidate, args, kwargs, keep)
                finally:
                    checker = holder[0]
                    object.__setattr__(checker, "__class__", Checker)
                    state = holder[1]
                    for key in [k for k in vars(checker) if k not in state]:
                        del vars(checker)[key]
                    vars(checker).update(state)

            checker = Checker(exercise_id, learner_function)
            holder += [checker, dict(vars(checker))]
            try:
                runs[exercise_id](checker)
                result.update(status="pass", message=f"{len(checker.passed)} checks passed")
            except NotAttempted as error:
                result.update(status="not attempted", message=str(error))
            except CheckFailed as error:
                result.update(status="fail", message=str.__str__(str(error)))
            except BaseException as error:  # the check could not use what the function returned
                result.update(status="fail", message=f"{exercise_id}: the check could not use your result "
                              f"({type(error).__name__}: {str.__str__(str(error))[:300]}).")
        leftovers: list[str] = []
        guard.run(gc.collect)
        guard.restore(before, report=leftovers)
        guard.restore(baseline)
        if leftovers:
            result.update(status="error", message=f"{exercise_id}: tampering detected: your code replaced "
                          f"{', '.join(sorted(set(leftovers))[:5])}.")
        if guard.blocked:
            result["notes"].append("the grader refused: " + "; ".join(sorted(set(guard.blocked))[:5]))
        if guard.compromised:
            result.update(status="error", message=f"{exercise_id}: your code {'; '.join(guard.compromised[:3])}, "
                          "which graded code may not do.", restart=True)
        send("result", result)
        if result.get("restart"):
            os._exit(0)
    send("done")
    os._exit(0)


# =========================================================================== the grader (parent)

@dataclasses.dataclass
class ExerciseSpec:
    """One exercise of a lesson as the solution notebook shows it."""

    id: str
    function: str
    solution_cell_id: str | None  # the cell with ### BEGIN SOLUTION that defines the function
    check_cell_id: str | None


@dataclasses.dataclass
class LessonPlan:
    name: str  # e.g. "01_images_and_text"
    exercises: list[ExerciseSpec]
    solution_cell_ids: set  # ids of every cell holding ### BEGIN SOLUTION
    setup: list[str]  # import sources of the solution's first code cell

    @property
    def number(self) -> str:
        return self.name.split("_", 1)[0]


@dataclasses.dataclass
class ExerciseResult:
    status: str
    message: str = ""
    notes: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LearnerGrade:
    learner: str
    submission: str
    lesson: str | None
    results: dict  # exercise id -> ExerciseResult
    notes: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(r.status == "pass" for r in self.results.values())


def _defined_names(source: str) -> set:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def lesson_plan(name: str, solution: dict) -> LessonPlan:
    """Exercises of a solution notebook: id, function name, and its solution and check cells."""
    cells = solution.get("cells", [])
    code = [c for c in cells if c.get("cell_type") == "code"]
    solution_ids = {c.get("id") for c in code if BEGIN_SOLUTION in _source(c)}
    exercises = []
    for cell in code:
        for exercise_id, function in _CHECK_CALL.findall(_source(cell)):
            definer = next((c.get("id") for c in code if c.get("id") in solution_ids
                            and function in _defined_names(_source(c))), None)
            exercises.append(ExerciseSpec(exercise_id, function, definer, cell.get("id")))
    setup = [_source(code[0])] if code else []
    return LessonPlan(name, exercises, solution_ids, setup)


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _python_source(source: str) -> str:
    """Cell source with IPython syntax (``%magic``, ``!cmd``) turned into Python calls."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)
    except Exception:
        return source


def exercise_cells(plan: LessonPlan, notebook: dict) -> tuple[list[dict], dict]:
    """For each exercise, the learner cells the grading process execs, and the index of the
    cell that gates it (its check cell, else the cell that defines it).

    Returns ``(items, gates)``: ``items`` are the job entries ``{"id", "function", "cells"}``;
    ``gates`` maps exercise id to a cell index, or None when nothing in the notebook matches."""
    cells = notebook.get("cells", [])
    sources = [_source(c) if c.get("cell_type") == "code" else None for c in cells]
    exercise_functions = {e.function for e in plan.exercises}
    defines = [(_defined_names(s) if s is not None else set()) for s in sources]
    is_exercise_cell = [s is not None and (c.get("id") in plan.solution_cell_ids or bool(defines[i] & exercise_functions))
                        for i, (c, s) in enumerate(zip(cells, sources))]
    items, gates = [], {}
    for spec in plan.exercises:
        check_index = next((i for i, c in enumerate(cells) if sources[i] is not None and c.get("id") == spec.check_cell_id
                            and spec.id in _CHECK_ID.findall(sources[i])), None)
        if check_index is None:
            check_index = next((i for i, s in enumerate(sources) if s is not None and spec.id in _CHECK_ID.findall(s)), None)
        definers = [i for i, names in enumerate(defines) if spec.function in names]
        before = [i for i in definers if check_index is None or i < check_index]
        def_index = before[-1] if before else (definers[-1] if definers else None)
        limit = check_index if check_index is not None else (def_index + 1 if def_index is not None else 0)
        if def_index is not None and def_index >= limit:
            limit = def_index + 1
        chosen = [{"index": i, "source": _python_source(sources[i]), "assignments": is_exercise_cell[i]}
                  for i in range(limit) if sources[i] is not None and sources[i].strip()]
        items.append({"id": spec.id, "function": spec.function, "cells": chosen})
        gates[spec.id] = check_index if check_index is not None else def_index
    return items, gates


# --------------------------------------------------------------------------- course snapshot

@dataclasses.dataclass
class CourseSnapshot:
    """What grading relies on, read once before any learner code runs."""

    sources: dict  # module name -> {"path", "source", "package"}
    child_source: str
    plans: dict  # lesson name -> LessonPlan
    check_modules: set

    @classmethod
    def capture(cls, solutions_dir: Path) -> "CourseSnapshot":
        package_dir = Path(__file__).resolve().parents[1]  # mmlm_course/
        sources = {}
        for path in sorted(package_dir.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
            package = parts[-1] == "__init__"
            if package:
                parts = parts[:-1]
            sources[".".join(parts)] = {"path": str(path), "source": path.read_text(encoding="utf-8"),
                                        "package": package}
        plans = {}
        for path in sorted(Path(solutions_dir).glob("*.ipynb")):
            plans[path.stem] = lesson_plan(path.stem, json.loads(path.read_text(encoding="utf-8")))
        checks = {name.rsplit(".", 1)[1] for name in sources if name.startswith("mmlm_course.exercises.lesson")}
        return cls(sources, Path(__file__).resolve().read_text(encoding="utf-8"), plans, checks)


def _hash_files(roots: Iterable[Path]) -> dict:
    import hashlib

    digests = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts
                                                     and ".ipynb_checkpoints" not in p.parts) if root.exists() else []
        for path in files:
            try:
                digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                digests[str(path)] = None
    return digests


def _changed_files(before: dict, after: dict) -> list[str]:
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


# --------------------------------------------------------------------------- submissions

@dataclasses.dataclass
class Submission:
    path: Path
    data: bytes
    lesson: str | None = None
    learner: str = ""
    problem: str | None = None


def find_submissions(paths: Iterable) -> list[Path]:
    """Notebook files from files and folders (folders are searched recursively)."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"No such notebook or folder: {path}")
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        else:
            found.append(path)
    return found


def resolve_lesson(name: str, lessons: Iterable[str]) -> str:
    """``01``, ``1``, ``01_images_and_text`` or a file name -> the lesson name; ValueError otherwise."""
    lessons = sorted(lessons)
    text = Path(str(name)).stem if str(name).endswith(".ipynb") else str(name)
    if text in lessons:
        return text
    if text.isdigit():
        matches = [lesson for lesson in lessons if lesson.split("_", 1)[0] == f"{int(text):02d}"]
        if len(matches) == 1:
            return matches[0]
    raise ValueError(f"Unknown lesson {name!r}: expected a number such as 01 or one of {', '.join(lessons)}.")


def lesson_from_name(path: Path, lessons: list[str]) -> str | None:
    """The lesson a submission's file or folder name names ("carol_01_images_and_text.ipynb",
    "lesson-00/mine.ipynb"), or None when it names none or several."""
    for text in (path.stem, path.parent.name):
        low = text.lower()
        named = [lesson for lesson in lessons if lesson.lower() in low]
        if len(named) == 1:
            return named[0]
        numbers = {n for n in re.findall(r"(?<!\d)(\d{2})(?!\d)", text)}
        by_number = [lesson for lesson in lessons if lesson.split("_", 1)[0] in numbers]
        if len(by_number) == 1:
            return by_number[0]
    return None


def _lesson_from_content(data: bytes, lessons: list[str]) -> str | None:
    numbers = re.findall(rb"""check\(\s*\\?["'](\d{2})\.""", data)
    if not numbers:
        return None
    common = max(set(numbers), key=numbers.count).decode()
    matches = [lesson for lesson in lessons if lesson.split("_", 1)[0] == common]
    return matches[0] if len(matches) == 1 else None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "learner"


def name_learners(submissions: list[Submission], lessons: list[str]) -> None:
    """Learner names from file names: ``alice.ipynb`` or ``alice_01_images_and_text.ipynb`` ->
    alice; when the file name is only the lesson's (``alice/01_images_and_text.ipynb``) or when
    several files share a name, the parent folder's name."""
    def from_file(sub: Submission) -> str:
        stem = sub.path.stem
        for lesson in sorted(lessons, key=len, reverse=True):
            stem = re.sub(re.escape(lesson), "", stem, flags=re.I)
        return stem.strip(" _-.")

    names = [from_file(s) for s in submissions]
    stems = [s.path.name for s in submissions]
    for i, sub in enumerate(submissions):
        shared = stems.count(stems[i]) > 1
        sub.learner = sub.path.resolve().parent.name if (not names[i] or shared) else names[i]
    seen: dict = {}
    for sub in submissions:
        key = (sub.learner, sub.lesson)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            sub.learner = f"{sub.learner}-{seen[key]}"


# --------------------------------------------------------------------------- kernel run

@dataclasses.dataclass
class KernelOutcome:
    stopped_at: int | None = None  # cell index where the run stopped (crash, stuck), None if it finished
    reason: str = ""
    timeouts: list = dataclasses.field(default_factory=list)
    errors: list = dataclasses.field(default_factory=list)  # (cell index, ename, first line of evalue)
    seconds: float = 0.0


def _kernel_startup_file(protected: list[str], allowed: list[str]) -> str:
    import inspect

    return (inspect.getsource(_install_file_guard)
            + f"\n_install_file_guard({protected!r}, {allowed!r})\ndel _install_file_guard\n")


async def run_notebook(notebook: dict, last_cell: int, cwd: Path, ipython_dir: Path, timeout: int,
                       protected: list[str]) -> KernelOutcome:
    """Run the learner's notebook cells ``0..last_cell`` in a fresh kernel in ``cwd``."""
    import copy
    from subprocess import DEVNULL

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    outcome = KernelOutcome()
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-mmlm-grader.py").write_text(_kernel_startup_file(protected, [str(cwd.parent)]))
    nb = nbformat.from_dict(copy.deepcopy(notebook))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMLM_COURSE_", "JPY_"))}
    env["IPYTHONDIR"] = str(ipython_dir)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            interrupt_on_timeout=False, shutdown_kernel="immediate",
                            startup_timeout=max(timeout, SETUP_CELL_MIN_TIMEOUT), record_timing=False)
    start = time.perf_counter()
    first_code = True
    try:
        async with client.async_setup_kernel(cwd=str(cwd), env=env, stdout=DEVNULL, stderr=DEVNULL):
            timed_out_before = False
            for index, cell in enumerate(nb.cells[: last_cell + 1]):
                if cell.get("cell_type") != "code" or not str(cell.get("source", "")).strip():
                    continue
                client.timeout = max(timeout, SETUP_CELL_MIN_TIMEOUT) if first_code else timeout
                first_code = False
                try:
                    await client.async_execute_cell(cell, index, execution_count=index + 1)
                    timed_out_before = False
                except CellTimeoutError:
                    outcome.timeouts.append(index)
                    if timed_out_before:
                        outcome.stopped_at, outcome.reason = index, "the kernel stayed busy after an interrupt"
                        break
                    timed_out_before = True
                    await _maybe_await(client.km.interrupt_kernel())
                except DeadKernelError:
                    outcome.stopped_at, outcome.reason = index, "the kernel died (os._exit, a crash or a segfault)"
                    break
    except DeadKernelError:
        if outcome.stopped_at is None:
            outcome.stopped_at, outcome.reason = 0, "the kernel died"
    except Exception as error:  # could not start the kernel, or lost it
        if outcome.stopped_at is None:
            outcome.stopped_at, outcome.reason = 0, f"the kernel could not run ({type(error).__name__}: {error})"
    outcome.seconds = time.perf_counter() - start
    for index, cell in enumerate(nb.cells[: last_cell + 1]):
        for output in cell.get("outputs", []) or []:
            if output.get("output_type") == "error" and output.get("ename") not in ("CheckFailed", "ExerciseNotAttempted"):
                evalue = str(output.get("evalue", "")).splitlines()
                outcome.errors.append((index, str(output.get("ename", ""))[:80], (evalue[0] if evalue else "")[:200]))
    return outcome


async def _maybe_await(value):
    import inspect

    if inspect.isawaitable(value):
        await value


# --------------------------------------------------------------------------- grading process (parent side)

def check_functions(snapshot: CourseSnapshot, plan: LessonPlan, notebook: dict, timeout: int,
                    protected: list[str], scratch: Path) -> dict:
    """Run the course's checks on the learner's exercise functions in fresh grading processes.

    Returns exercise id -> ExerciseResult. Never raises for anything the submission does."""
    import secrets
    import select
    import signal
    import subprocess

    items, _ = exercise_cells(plan, notebook)
    results: dict = {}
    check_module = f"mmlm_course.exercises.lesson{plan.number}"
    pending = list(items)
    attempt = 0
    while pending:
        attempt += 1
        if attempt > len(items) + 2:
            for item in pending:
                results[item["id"]] = ExerciseResult("error", f"{item['id']}: the grading process kept stopping.")
            break
        nonce = secrets.token_hex(16)
        read_end, write_end = os.pipe()
        work = scratch / f"checks-{attempt}"
        work.mkdir(parents=True, exist_ok=True)
        job = {"nonce": nonce, "fd": write_end, "sources": snapshot.sources, "setup": plan.setup,
               "check_module": check_module if f"lesson{plan.number}" in snapshot.check_modules else None,
               "exercises": pending, "protected": protected, "allowed": [str(work)]}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MMLM_COURSE_"))}
        env.update(MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="3")
        stderr_path = scratch / f"checks-{attempt}.stderr"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen([sys.executable, "-I", "-c", _BOOTSTRAP, CHILD_FLAG],
                                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                                       cwd=work, env=env, pass_fds=(write_end,), start_new_session=True)
        os.close(write_end)
        try:
            header = {"source": snapshot.child_source, "path": str(Path(__file__).resolve())}
            process.stdin.write(json.dumps(header).encode() + b"\n" + json.dumps(job).encode())
            process.stdin.close()
        except OSError:
            pass
        ready, current, buffer = False, None, b""
        deadline = time.monotonic() + max(timeout, SETUP_CELL_MIN_TIMEOUT)
        ended, problem = False, None
        while not ended:
            left = deadline - time.monotonic()
            if left <= 0:
                problem = "timeout"
                break
            readable, _, _ = select.select([read_end], [], [], min(left, 1.0))
            if not readable:
                continue
            chunk = os.read(read_end, 65536)
            if not chunk:
                problem = "eof"
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                parts = line.split(b"\t", 2)
                if len(parts) != 3 or parts[0] != nonce.encode():
                    problem = "tamper"
                    break
                kind, payload = parts[1].decode(), json.loads(parts[2])
                if kind == "ready":
                    ready = True
                elif kind == "start" and ready and current is None:
                    current = payload
                    deadline = time.monotonic() + timeout
                elif kind == "result" and current is not None and payload.get("id") == current:
                    results[current] = ExerciseResult(payload["status"], payload.get("message", ""),
                                                      list(payload.get("notes", [])))
                    pending = [p for p in pending if p["id"] != current]
                    current = None
                elif kind == "done" and current is None:
                    ended = True
                    break
                else:
                    problem = "tamper"
                    break
            if problem:
                break
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        os.close(read_end)
        if ended:
            break
        if not ready:
            tail = stderr_path.read_text(errors="replace")[-2000:] if stderr_path.exists() else ""
            for item in pending:
                results[item["id"]] = ExerciseResult("error", f"{item['id']}: the grading process failed to start "
                                                     f"({problem}). {tail.strip()[-600:]}")
            break
        if current is None and problem == "eof" and pending:
            continue  # the process ended itself between exercises (after a compromised one): go on
        if current is not None:
            message = {"timeout": f"{current}: your code ran for more than {timeout} s (an infinite loop?).",
                       "eof": f"{current}: the grading process crashed while checking this exercise "
                              f"(exit status {process.returncode}: os._exit, a segfault or running out of memory).",
                       "tamper": f"{current}: tampering detected: something wrote to the grader's result channel."}
            results[current] = ExerciseResult("error", message.get(problem, f"{current}: {problem}"))
            pending = [p for p in pending if p["id"] != current]
        elif problem == "tamper" and pending:
            item = pending.pop(0)
            results[item["id"]] = ExerciseResult("error", f"{item['id']}: tampering detected: something wrote "
                                                 "to the grader's result channel.")
        elif problem == "timeout" and pending:
            item = pending.pop(0)
            results[item["id"]] = ExerciseResult("error", f"{item['id']}: the grading process did not answer in time.")
    return results


# --------------------------------------------------------------------------- orchestration

def _gate(grade: LearnerGrade, gates: dict, outcome: KernelOutcome) -> None:
    if outcome.stopped_at is None:
        return
    for exercise_id, result in grade.results.items():
        gate = gates.get(exercise_id)
        if gate is not None and gate >= outcome.stopped_at and result.status != "error":
            result.notes.append(f"the grading process found: {result.status}" + (f" ({result.message})"
                                                                                  if result.status != "pass" else ""))
            result.status = "error"
            result.message = (f"{exercise_id}: your notebook stopped at cell {outcome.stopped_at} "
                              f"({outcome.reason}) before this exercise's check cell; a notebook must run "
                              "top to bottom.")


async def _grade_submission(sub: Submission, snapshot: CourseSnapshot, timeout: int, scratch_root: Path,
                            protected: list[str]) -> LearnerGrade:
    import asyncio

    start = time.perf_counter()
    plan = snapshot.plans.get(sub.lesson) if sub.lesson else None
    grade = LearnerGrade(sub.learner, str(sub.path), sub.lesson, {})
    ids = [e.id for e in plan.exercises] if plan else []
    if plan is None:
        grade.notes.append(sub.problem or "could not tell which lesson this is: pass --lesson")
        return grade
    try:
        import nbformat

        notebook = nbformat.reads(sub.data.decode("utf-8"), as_version=4)
    except Exception as error:
        message = f"not a readable Jupyter notebook ({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})"
        grade.results = {i: ExerciseResult("error", f"{i}: {message}") for i in ids}
        grade.notes.append(message)
        return grade
    scratch = Path(scratch_root) / _safe_name(f"{sub.learner}-{sub.lesson}")
    work = scratch / "work"
    work.mkdir(parents=True)
    (work / sub.path.name).write_bytes(sub.data)
    _, gates = exercise_cells(plan, notebook)
    found = [g for g in gates.values() if g is not None]
    last = max(found) if found else len(notebook.cells) - 1
    outcome = await run_notebook(notebook, last, work, scratch / "ipython", timeout, protected)
    grade.results = await asyncio.to_thread(check_functions, snapshot, plan, notebook, timeout,
                                            protected, scratch)
    for exercise_id in ids:
        grade.results.setdefault(exercise_id, ExerciseResult("error", f"{exercise_id}: not graded"))
    _gate(grade, gates, outcome)
    if outcome.stopped_at is not None:
        grade.notes.append(f"your notebook stopped at cell {outcome.stopped_at}: {outcome.reason}")
    for index in outcome.timeouts:
        grade.notes.append(f"cell {index} ran for more than {timeout} s and was interrupted")
    for index, ename, evalue in outcome.errors[:20]:
        grade.notes.append(f"cell {index} raised {ename}: {evalue}")
    grade.seconds = time.perf_counter() - start
    return grade


def grade(submissions: Iterable, out_dir: Path, *, timeout: int = DEFAULT_TIMEOUT, lesson: str | None = None,
          solutions_dir: Path | None = None, jobs: int = 2, watch: Iterable | None = None,
          progress: Callable[[str], None] | None = print) -> list[LearnerGrade]:
    """Grade learner notebooks; write ``grades.csv``, ``feedback/<learner>.md`` and ``report.json``
    to ``out_dir``; return one `LearnerGrade` per submission.

    ``timeout``: seconds per notebook cell and per exercise check (the first code cell gets at
    least 180 s for imports). ``lesson`` forces the lesson for every submission. ``watch``:
    files or folders that no submission may change (default: the package, solutions/ and
    lessons/ next to it). Raises ValueError / FileNotFoundError for bad arguments, never for
    a bad submission."""
    import asyncio
    import shutil
    import tempfile

    root = Path(__file__).resolve().parents[2]  # the course folder that holds mmlm_course/
    solutions_dir = Path(solutions_dir) if solutions_dir else root / "solutions"
    if not solutions_dir.is_dir():
        raise FileNotFoundError(f"No solutions folder at {solutions_dir}: pass --solutions.")
    paths = find_submissions(submissions)
    if not paths:
        raise ValueError("No submissions: pass notebook files or folders that contain .ipynb files.")
    snapshot = CourseSnapshot.capture(solutions_dir)
    lessons = sorted(snapshot.plans)
    forced = resolve_lesson(lesson, lessons) if lesson else None
    subs = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as error:
            data, problem = b"", f"could not read the file ({error.strerror})"
        else:
            problem = None
        sub = Submission(path, data, problem=problem)
        sub.lesson = forced or lesson_from_name(path, lessons) or _lesson_from_content(data, lessons)
        if sub.lesson is None and problem is None:
            sub.problem = "could not tell the lesson from the file name or its check cells: pass --lesson"
        subs.append(sub)
    name_learners(subs, lessons)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    watch = [Path(w) for w in watch] if watch is not None else [root / "mmlm_course", solutions_dir,
                                                                 solutions_dir.parent / "lessons"]
    scratch_root = Path(tempfile.mkdtemp(prefix="mmlm-grade-"))
    protected = sorted({str(root), str(out_dir.resolve()), str(scratch_root), sys.prefix, sys.base_prefix,
                        *(str(Path(w).resolve()) for w in watch)})

    async def run_all():
        semaphore = asyncio.Semaphore(max(1, jobs))
        hashes = {"now": _hash_files(watch)}
        active: set = set()

        async def one(index, sub):
            async with semaphore:
                active.add(index)
                try:
                    result = await _grade_submission(sub, snapshot, timeout, scratch_root, protected)
                except Exception as error:  # a bug in the grader: that learner's row only
                    result = LearnerGrade(sub.learner, str(sub.path), sub.lesson, {},
                                          [f"the grader failed: {type(error).__name__}: {error}"])
                    plan = snapshot.plans.get(sub.lesson)
                    for spec in plan.exercises if plan else []:
                        result.results[spec.id] = ExerciseResult("error", f"{spec.id}: the grader failed")
                now = _hash_files(watch)
                changed = _changed_files(hashes["now"], now)
                hashes["now"] = now
                if changed:  # grades do not depend on the disk: report it, change no status
                    alone = len(active) == 1
                    note = ("course files changed while this notebook ran: " + ", ".join(changed[:5])
                            + ("" if alone else " (other submissions ran at the same time: re-grade with --jobs 1 "
                                                "to tell which one, or ignore it if you were editing the course)"))
                    result.notes.append(note)
                    if progress:
                        progress(f"WARNING: {sub.learner}: {note}")
                active.discard(index)
                if progress:
                    progress(f"{result.learner} ({result.lesson}): {result.total}/{len(result.results)} passed "
                             f"({result.seconds:.0f} s)")
                return result

        return await asyncio.gather(*(one(i, s) for i, s in enumerate(subs)))

    try:
        grades = asyncio.run(run_all())
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    write_outputs(grades, snapshot, out_dir)
    return grades


# --------------------------------------------------------------------------- outputs

def write_outputs(grades: list[LearnerGrade], snapshot: CourseSnapshot, out_dir: Path) -> None:
    """``grades.csv``, ``feedback/<learner>.md`` and ``report.json`` in ``out_dir``."""
    import csv

    columns = []
    for lesson in sorted({g.lesson for g in grades if g.lesson}):
        columns += [e.id for e in snapshot.plans[lesson].exercises if e.id not in columns]
    with open(out_dir / "grades.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["learner", "lesson", *columns, "total"])
        for g in grades:
            writer.writerow([g.learner, g.lesson or "", *(g.results[c].status if c in g.results else "" for c in columns),
                             g.total])
    feedback = out_dir / "feedback"
    feedback.mkdir(exist_ok=True)
    one_lesson = len({g.lesson for g in grades}) == 1
    for g in grades:
        (feedback / feedback_name(g, one_lesson)).write_text(feedback_text(g), encoding="utf-8")
    report = [{"learner": g.learner, "submission": g.submission, "lesson": g.lesson, "total": g.total,
               "seconds": round(g.seconds, 1), "notes": g.notes,
               "exercises": {k: dataclasses.asdict(v) for k, v in g.results.items()}} for g in grades]
    (out_dir / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")


SYMBOLS = {"pass": "\N{WHITE HEAVY CHECK MARK}", "fail": "\N{CROSS MARK}", "not attempted": "\N{HOURGLASS WITH FLOWING SAND}",
           "error": "\N{WARNING SIGN}"}


def feedback_name(g: LearnerGrade, one_lesson: bool = True) -> str:
    """``alice.md``, or ``alice-01_images_and_text.md`` when several lessons are graded at once."""
    return f"{_safe_name(g.learner)}{'' if one_lesson or not g.lesson else '-' + g.lesson}.md"


def feedback_text(g: LearnerGrade) -> str:
    """The Markdown feedback for one learner."""
    lines = [f"# Feedback for {g.learner}" + (f": {g.lesson}" if g.lesson else ""), "",
             f"Submission: `{Path(g.submission).name}`. Exercises passed: **{g.total} of {len(g.results)}**.", ""]
    if g.results:
        lines += ["| exercise | result |", "|---|---|"]
        lines += [f"| `{k}` | {SYMBOLS[r.status]} {r.status} |" for k, r in g.results.items()]
        lines.append("")
    for exercise_id, result in g.results.items():
        if result.status == "pass" and not result.notes:
            continue
        lines += [f"## {exercise_id}: {result.status}", ""]
        if result.status != "pass" and result.message:
            lines += [result.message, ""]
        lines += [f"- {note}" for note in result.notes]
        if result.notes:
            lines.append("")
    if g.notes:
        lines += ["## Running your notebook", ""] + [f"- {note}" for note in g.notes] + [""]
    lines += ["How this was graded: your notebook ran from the top in a fresh kernel; then the course's "
              "checks ran on the functions your exercise cells define, in a separate process. Put any "
              "import or helper your function needs in a cell above its check."]
    return "\n".join(lines) + "\n"


# =========================================================================== for instructors

def common_mistakes(lesson: str) -> list[dict]:
    """The typical mistakes each exercise of ``lesson`` (``01`` or ``01_images_and_text``)
    registers, with the message the check gives for each. For instructor notes.

    Returns ``[{"exercise": id, "mistakes": [{"mistake": text, "message": str, "hint": str}]}]``
    in registry order."""
    from mmlm_course import exercises

    number = lesson.split("_", 1)[0]
    number = f"{int(number):02d}" if number.isdigit() else number
    out = []
    for exercise_id, exercise in exercises.registry().items():
        if exercise.lesson != number:
            continue
        rows = []
        for mistake, function in exercise.mistakes.items():
            try:
                exercises.run_check(exercise_id, function)
                message = "(not caught by the check)"
            except exercises.CheckFailed as error:
                message = str(error)
            hint = message.split("Hint: ", 1)[1] if "Hint: " in message else ""
            rows.append({"mistake": mistake, "message": message, "hint": hint})
        out.append({"exercise": exercise_id, "mistakes": rows})
    return out


def common_mistakes_markdown(lesson: str) -> str:
    """`common_mistakes` as a Markdown section body, ready to paste into an instructor note."""
    lines = []
    for entry in common_mistakes(lesson):
        lines += [f"**`{entry['exercise']}`**", ""]
        for row in entry["mistakes"]:
            shown = row["message"].split(": ", 1)[1] if ": " in row["message"] else row["message"]
            lines.append(f"- *{row['mistake']}*: the check says \u201c{shown}\u201d")
        lines.append("")
    return "\n".join(lines)

