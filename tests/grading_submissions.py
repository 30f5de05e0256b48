"""Fabricated learner submissions of lesson 01 for the grader, each with the row it deserves.

Used by tests/test_grading.py and tests/benchmark_grading.py. `build(kind)` returns the
notebook file's bytes; `EXPECTED[kind]` is the status of each exercise, in the order of
`IDS`: P pass, F fail, N not attempted, E error.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = ROOT / "solutions" / "01_images_and_text.ipynb"
LESSON = ROOT / "lessons" / "01_images_and_text.ipynb"
IDS = ["01.to_float_image", "01.hflip_with_caption", "01.encode", "01.pad_with_mask"]
STATUS = {"P": "pass", "F": "fail", "N": "not attempted", "E": "error"}

# Cell ids in lesson 01 (kept by make_lesson): setup, the four exercise cells, their checks.
SETUP, TO_FLOAT, TO_FLOAT_CHECK = "c001", "c005", "c006"
HFLIP, HFLIP_CHECK, ENCODE, ENCODE_CHECK, PAD, PAD_CHECK = "c012", "c013", "c020", "c021", "c025", "c026"

WRONG = {
    TO_FLOAT: "def to_float_image(image):\n    return image.astype(np.float32)  # forgets / 255\n",
    HFLIP: "def hflip_with_caption(image, caption):\n    return image[:, ::-1], caption  # forgets the caption\n",
    ENCODE: "def encode(text, token_to_id):\n    return [token_to_id[w] for w in preprocessing.split_words(text) if w in token_to_id]\n",
    PAD: "def pad_with_mask(sequences):\n    ids, mask = preprocessing.pad_sequences(sequences)\n    return ids, ~mask\n",
}


def _read(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def _cell(nb, cell_id):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def _set(nb, cell_id, source):
    _cell(nb, cell_id).source = source
    return nb


def _insert_after(nb, cell_id, source, new_id):
    index = next(i for i, c in enumerate(nb.cells) if c.get("id") == cell_id)
    cell = nbformat.v4.new_code_cell(source)
    cell.id = new_id
    nb.cells.insert(index + 1, cell)
    return nb


def solution():
    return _read(SOLUTION)


def lesson():
    return _read(LESSON)


def _text(nb) -> bytes:
    return nbformat.writes(nb, version=4).encode()


def build(kind: str, sentinel: Path | None = None) -> bytes:
    """The submission file of ``kind`` (see EXPECTED). ``sentinel``: a file a destructive
    submission tries to delete by absolute path (it must survive)."""
    if kind == "invalid_json":
        return b'{"cells": [ this is not json'
    if kind == "not_a_notebook":
        return json.dumps({"hello": "world"}).encode()
    if kind == "nbformat3":
        return json.dumps({"nbformat": 3, "nbformat_minor": 0, "worksheets": [{"cells": []}]}).encode()
    if kind == "deep_json":
        return b"[" * 100_000 + b"]" * 100_000
    if kind == "string_sources":                # each source one string, no metadata, a raw cell
        nb = json.loads(_text(solution()))
        for cell in nb["cells"]:
            cell["source"] = "".join(cell["source"])
            cell.pop("metadata")
        nb["cells"].insert(1, {"cell_type": "raw", "source": ["raw text"]})
        return json.dumps(nb).encode()
    nb = BUILDERS[kind](sentinel)
    return _text(nb)


def _correct(_):
    return solution()


def _partial(_):
    nb = lesson()
    for cell_id in (TO_FLOAT, ENCODE):
        _set(nb, cell_id, _cell(solution(), cell_id).source)
    return _set(nb, HFLIP, WRONG[HFLIP])


def _wrong(_):
    nb = lesson()
    for cell_id, source in WRONG.items():
        _set(nb, cell_id, source)
    return nb


def _missing_cells(_):
    nb = solution()
    nb.cells = [c for c in nb.cells if c.get("id") not in (ENCODE, PAD)]
    return nb


def _infinite_loop(_):
    nb = solution()
    return _set(nb, ENCODE, "def encode(text, token_to_id):\n    while True:\n        pass\n")


def _kernel_exit(_):
    return _insert_after(solution(), HFLIP_CHECK, "import os\nos._exit(1)", "x-exit")


def _segfault(_):
    return _insert_after(solution(), TO_FLOAT_CHECK, "import ctypes\nctypes.string_at(0)", "x-segv")


def _deletes_files(sentinel):
    nb = solution()
    target = repr(str(sentinel)) if sentinel else "None"
    source = ("import os, shutil\n"
              "for name in os.listdir('.'):\n"
              "    shutil.rmtree(name) if os.path.isdir(name) else os.remove(name)\n"
              f"target = {target}\n"
              "if target:\n"
              "    try:\n"
              "        os.remove(target)\n"
              "    except PermissionError as error:\n"
              "        print('refused:', error)\n")
    _insert_after(nb, SETUP, source, "x-delete")
    # The exercise function tries it too, when the check calls it.
    return _set(nb, PAD, _cell(nb, PAD).source.replace(
        "    ### BEGIN SOLUTION", f"    import os\n    try:\n        os.remove({target})\n    except (OSError, TypeError):\n"
                                 "        pass\n    ### BEGIN SOLUTION"))


def _constants(_):
    """A correct notebook whose exercise needs a constant and a guarded import from other cells."""
    nb = solution()
    _insert_after(nb, SETUP, "SCALE = 255.0\ntry:\n    import numpy as numeric\nexcept ImportError:\n    numeric = None\n",
                  "x-const")
    return _set(nb, TO_FLOAT, "def to_float_image(image):\n    return (image / SCALE).astype(numeric.float32)\n")


def _vandal(_):
    """A correct notebook that also tries to harm the learners graded after it and the grader."""
    nb = solution()
    source = ("import os, sys, json, pathlib, subprocess, site\n"
              "home = pathlib.Path.home() / '.keras'\n"
              "for attempt in (lambda: home.mkdir(parents=True, exist_ok=True),\n"
              "                lambda: (home / 'keras.json').write_text(json.dumps({'backend': 'nonexistent'})),\n"
              "                lambda: pathlib.Path(site.getsitepackages()[0], 'zz_evil.pth').write_text(\n"
              "                    'import numpy; numpy.allclose = lambda *a, **k: True'),\n"
              "                lambda: [pathlib.Path('/tmp', f'mmlm-grade-{i}').mkdir() for i in range(50)]):\n"
              "    try:\n"
              "        attempt()\n"
              "    except OSError:\n"
              "        pass\n"
              "code = ('import os, time, glob\\nos.setsid()\\ntime.sleep(4)\\n'\n"
              "        'for p in glob.glob(\"/**/grades.csv\", recursive=True)[:20]:\\n'\n"
              "        '    open(p, \"w\").write(\"forged\")\\n')\n"
              "try:\n"
              "    subprocess.Popen([sys.executable, '-c', code], start_new_session=True)\n"
              "except OSError:\n"
              "    pass\n")
    return _insert_after(nb, SETUP, source, "x-vandal")


def _renamed(_):
    """A correct answer under a name of the learner's own, passed to the check by that name."""
    nb = lesson()
    _set(nb, TO_FLOAT, "def my_float_image(image):\n    return image.astype(np.float32) / 255\n")
    _set(nb, TO_FLOAT_CHECK, 'check("01.to_float_image", my_float_image)\n')
    return _set(nb, ENCODE, _cell(solution(), ENCODE).source)


def _spy(_):
    """Tries to run code beside the check (a profiler, an audit hook, a signal handler poked from
    a thread) to copy an expected value from the check's frames, and returns what it copied."""
    nb = lesson()
    _insert_after(nb, SETUP, (
        "import sys, signal, threading, time, os\n"
        "_seen = []\n"
        "def _grab(frame):\n"
        "    while frame is not None:\n"
        "        for value in list(frame.f_locals.values()):\n"
        "            if isinstance(value, np.ndarray) and value.dtype == np.float64 and value.ndim == 3:\n"
        "                _seen.append(value.astype(np.float32))\n"
        "        frame = frame.f_back\n"
        "for install in (lambda: sys.setprofile(lambda f, e, a: _grab(f)),\n"
        "                lambda: sys.addaudithook(lambda e, a: _grab(sys._getframe(1))),\n"
        "                lambda: signal.signal(signal.SIGWINCH, lambda n, f: _grab(f))):\n"
        "    try:\n"
        "        install()\n"
        "    except Exception:\n"
        "        pass\n"
        "def _poke():\n"
        "    while True:\n"
        "        os.kill(os.getpid(), signal.SIGWINCH)\n"
        "        time.sleep(0.001)\n"
        "threading.Thread(target=_poke, daemon=True).start()\n"), "x-spy")
    _set(nb, TO_FLOAT, "def to_float_image(image):\n    return _seen[-1] if _seen else image\n")
    return _set(nb, ENCODE, _cell(solution(), ENCODE).source)


def _no_code(_):
    nb = lesson()
    nb.cells = [c for c in nb.cells if c.cell_type == "markdown"]
    return nb


def _fake_checks(_):
    """Wrong or blank answers, plus every way to *say* passed without passing."""
    nb = lesson()
    _set(nb, TO_FLOAT, WRONG[TO_FLOAT])
    _insert_after(nb, SETUP, (
        "import mmlm_course.exercises.checker as ex\n"
        "def check(exercise_id, candidate):\n"
        "    print(f'\\N{WHITE HEAVY CHECK MARK} {exercise_id}: passed (9 checks).')\n"
        "ex.check = check\n"
        "ex.run_check = lambda *args, **kwargs: ['everything']\n"
        "ex._REGISTRY.clear()\n"
        "import numpy\n"
        "numpy.allclose = lambda *args, **kwargs: True\n"
        "for i in ('01.to_float_image', '01.hflip_with_caption', '01.encode', '01.pad_with_mask'):\n"
        "    print(f'\\N{WHITE HEAVY CHECK MARK} {i}: passed (9 checks).')\n"), "x-fake")
    return nb


# Tampering from inside the exercise cells themselves (run by the grading process).
_TAMPER_TO_FLOAT = {
    "allclose_patch": (
        "import numpy\n"
        "numpy.allclose = lambda *args, **kwargs: True\n"
        "def to_float_image(image):\n"
        "    import numpy\n"
        "    numpy.allclose = lambda *args, **kwargs: True\n"
        "    numpy.array_equal = lambda *args, **kwargs: True\n"
        "    return image.astype(numpy.float32)\n"),
    "package_patch": (
        "def to_float_image(image):\n"
        "    import mmlm_course.exercises.checker as ex, mmlm_course.exercises.lesson01 as l01\n"
        "    ex.Checker.expect_close = lambda self, *args, **kwargs: None\n"
        "    ex.Checker.fail = lambda self, *args, **kwargs: None\n"
        "    ex.run_check = lambda *args, **kwargs: ['ok']\n"
        "    l01.preprocessing.to_float_image = lambda img: img.astype('float32')\n"
        "    return image.astype('float32')\n"),
    "registry_at_def_time": (
        "import mmlm_course.exercises.checker as ex\n"
        "def to_float_image(image, _=ex._REGISTRY.update({k: None for k in list(ex._REGISTRY)}),\n"
        "                   __=setattr(ex.Checker, 'fail', lambda *a, **k: None)):\n"
        "    return image.astype('float32')\n"),
    "mutates_input": (
        "def to_float_image(image):\n"
        "    image[...] = 0\n"
        "    return np.zeros(image.shape, np.float32)\n"),
    "frame_walk": (
        "import sys\n"
        "def to_float_image(image):\n"
        "    frame = sys._getframe(1)\n"
        "    while frame is not None:\n"
        "        checker = frame.f_locals.get('self')\n"
        "        if type(checker).__name__ == 'Checker':\n"
        "            checker.fail = lambda *a, **k: None\n"
        "        frame = frame.f_back\n"
        "    return image.astype(np.float32)\n"),
    "gc_walk": (
        "import gc\n"
        "def to_float_image(image):\n"
        "    for obj in gc.get_objects():\n"
        "        if type(obj).__name__ == 'Checker':\n"
        "            obj.fail = lambda *a, **k: None\n"
        "    return image.astype(np.float32)\n"),
    "code_swap": (
        "import mmlm_course.exercises.checker as ex\n"
        "def to_float_image(image):\n"
        "    ex.Checker.expect_close.__code__ = (lambda self, *a, **k: None).__code__\n"
        "    return image.astype(np.float32)\n"),
    "array_object": (
        "class Fake:\n"
        "    shape = None\n"
        "    def __init__(self, image):\n"
        "        self.shape = image.shape\n"
        "        self.image = image\n"
        "    def __array__(self, dtype=None, copy=None):\n"
        "        import numpy\n"
        "        numpy.allclose = lambda *a, **k: True\n"
        "        return self.image.astype(numpy.float32)\n"
        "def to_float_image(image):\n"
        "    return Fake(image)\n"),
    "pipe_forge": (
        "def to_float_image(image):\n"
        "    import os, json\n"
        "    forged = [{'exercise': i, 'end': True} for i in ('01.to_float_image', '01.hflip_with_caption',\n"
        "                                                   '01.encode', '01.pad_with_mask')] + [{'done': True}]\n"
        "    for fd in range(0, 64):\n"
        "        try:\n"
        "            os.write(fd, ''.join(json.dumps(m) + '\\n' for m in forged).encode())\n"
        "        except OSError:\n"
        "            pass\n"
        "    return image\n"),
    "frame_read": (
        "import sys\n"
        "def to_float_image(image):\n"
        "    seen, frame = [], sys._getframe(1)\n"
        "    while frame is not None:\n"
        "        seen += list(frame.f_locals)\n"
        "        frame = frame.f_back\n"
        "    if 'got' in seen or 'c' in seen:  # it can see the check's frame: it could copy the answer\n"
        "        return image.astype(np.float32) / 255\n"
        "    return image\n"),
    "current_frames": (
        "import sys\n"
        "def to_float_image(image):\n"
        "    frames = sys._current_frames()  # every thread's frames, the check's among them\n"
        "    return image.astype(np.float32) / 255\n"),
    "reference_call": (
        "from mmlm_course.exercises import registry\n"
        "to_float_image = registry()['01.to_float_image'].reference\n"),
    "course_impl": (
        "def to_float_image(image):\n"
        "    return preprocessing.to_float_image(image)\n"),
    "thread": (
        "def to_float_image(image):\n"
        "    import threading, time\n"
        "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "    return image.astype(np.float32) / 255\n"),
    "grader_patch": (
        "def to_float_image(image):\n"
        "    import __main__, sys, builtins\n"
        "    noop = lambda *a, **k: None\n"
        "    places = [vars(__main__)] + [getattr(getattr(type(f), 'find_spec', None), '__globals__', {})\n"
        "                                 for f in sys.meta_path]\n"
        "    for namespace in places:\n"
        "        for value in list(namespace.values()):\n"
        "            if isinstance(value, type):\n"
        "                for attr in ('restore', 'run', 'call', 'snapshot'):\n"
        "                    if attr in vars(value):\n"
        "                        setattr(value, attr, noop)\n"
        "        namespace['_same'] = lambda *a: True\n"
        "    if 'get_ipython' not in globals():  # in the grader only: it would wreck the learner's own kernel\n"
        "        builtins.isinstance = lambda *a: True\n"
        "    import numpy\n"
        "    numpy.allclose = lambda *a, **k: True\n"
        "    return image.astype(numpy.float32)\n"),
    "getframe_patch": (
        "import sys\n"
        "def to_float_image(image):\n"
        "    real = sys._getframe\n"
        "    sys._getframe = lambda depth=0: None\n"
        "    frame = real(1)\n"
        "    frame.f_locals['self'].fail = lambda *a, **k: None\n"
        "    return image.astype(np.float32)\n"),
    # the checks' internals where an older grader did not read: a cell with a magic, a cell magic's
    # body, a chain of attributes, a function's globals
    "magic_internals": (
        "%time x = 1\n"
        "from mmlm_course.exercises import registry\n"
        "to_float_image = registry()['01.to_float_image'].reference\n"),
    "cell_magic_internals": (
        "%%capture\n"
        "from mmlm_course.exercises import registry\n"
        "to_float_image = registry()['01.to_float_image'].reference\n"),
    "attribute_chain": (
        "import mmlm_course as m\n"
        "to_float_image = m.exercises.checker._lookup('01.to_float_image').reference\n"),
    "check_globals": "to_float_image = check.__globals__['checker']._lookup('01.to_float_image').reference\n",
    # the course's own implementation bound to the exercise's name, or through a helper name
    "course_alias": "to_float_image = preprocessing.to_float_image\n",
    "course_helper": (
        "_scale = preprocessing.to_float_image\n"
        "def to_float_image(image):\n"
        "    return _scale(image)\n"),
    # names assembled at run time: not readable, so the mark is flagged for the teacher
    "dynamic_reference": (
        "_m = __import__('mmlm_course.exer' + 'cises', fromlist=['x'])\n"
        "to_float_image = getattr(getattr(_m, 'regi' + 'stry')()['01.to_float_image'], 'refer' + 'ence')\n"),
    "dynamic_course_impl": (
        "def to_float_image(image):\n"
        "    return getattr(preprocessing, 'to_float' + '_image')(image)\n"),
    "exec_course_source": (
        "import mmlm_course, pathlib\n"
        "_namespace = {}\n"
        "exec(pathlib.Path(mmlm_course.__file__).with_name('preprocessing.py').read_text(), _namespace)\n"
        "to_float_image = _namespace['to_float_image']\n"),
    "exits": (
        "def to_float_image(image):\n"
        "    import os\n"
        "    os._exit(0)\n"),
    "loops": (
        "def to_float_image(image):\n"
        "    while True:\n"
        "        pass\n"),
}
_TAMPER_HFLIP = {
    "str_subclass": (
        "class Always(str):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    def __ne__(self, other):\n"
        "        return False\n"
        "    __hash__ = str.__hash__\n"
        "def hflip_with_caption(image, caption):\n"
        "    return image[:, ::-1], Always('whatever')\n"),
    "eval_frame": (
        "def hflip_with_caption(image, caption):\n"
        "    f = eval('__import__(\"sys\")._getframe(1)')\n"
        "    return image[:, ::-1], caption\n"),
}


def _tamper(name):
    def builder(_):
        nb = lesson()
        if name in _TAMPER_TO_FLOAT:
            _set(nb, TO_FLOAT, _TAMPER_TO_FLOAT[name])
        else:
            _set(nb, TO_FLOAT, _cell(solution(), TO_FLOAT).source)
            _set(nb, HFLIP, _TAMPER_HFLIP[name])
        _set(nb, ENCODE, _cell(solution(), ENCODE).source)  # an honest exercise after the tampering one
        return nb
    return builder


def _channel(source):
    """A correct notebook that writes ``source``'s bytes to every file descriptor it has: the
    grader's report channel among them."""
    def builder(_):
        return _insert_after(solution(), SETUP, "import os\n" + source + (
            "for _fd in range(3, 64):\n"
            "    try:\n"
            "        os.write(_fd, _data)\n"
            "    except OSError:\n"
            "        pass\n"), "x-channel")
    return builder


def _record_of_references(_):
    """A blank notebook that writes a whole record of the reference answers to the grader's
    channel, reaching the checks through names assembled at run time: it gets every mark (a
    grader that reads outputs cannot tell), and the row is flagged for the teacher."""
    return _insert_after(lesson(), SETUP, (
        "import os, json, importlib\n"
        "_c = importlib.import_module('mmlm_course.exer' + 'cises.checker')\n"
        "_p = importlib.import_module('mmlm_course.exer' + 'cises.plain')\n"
        "class _Tape(list):\n"
        "    def __init__(self, i):\n"
        "        self.i, self.lines = i, []\n"
        "    def append(self, entry):\n"
        "        self.lines.append(json.dumps({'exercise': self.i, 'entry': _p.dumps(entry)}))\n"
        "_out = []\n"
        "for _i, _e in getattr(_c, 'regi' + 'stry')().items():\n"
        "    if _i.startswith('01.'):\n"
        "        _t = _Tape(_i)\n"
        "        getattr(_c, 'run_' + 'check')(_i, getattr(_e, 'refer' + 'ence'), tape=_t)\n"
        "        _out += _t.lines + [json.dumps({'exercise': _i, 'end': True})]\n"
        "_data = ('\\n'.join(_out) + '\\n').encode()\n"
        "for _fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(_fd, _data)\n"
        "    except OSError:\n"
        "        pass\n"), "x-forge")


def _honest_styles(_):
    """Correct work written differently: a star import, magics, a shell command, a guarded import
    of a package that is not installed, a constant and a helper in other cells, a raw cell."""
    nb = solution()
    _insert_after(nb, SETUP, "from math import *\n%timeit -n1 -r1 1 + 1\n!python --version\n"
                  "try:\n    import ipywidgets\nexcept ImportError:\n    ipywidgets = None\nDIV = 255\n", "x-styles")
    _set(nb, TO_FLOAT, "def _scale(image):\n    return image.astype(np.float32) / DIV\n")
    _insert_after(nb, TO_FLOAT, "def to_float_image(image):\n    return _scale(image)\n", "x-helper")
    nb.cells.insert(1, nbformat.v4.new_raw_cell("raw text"))
    return nb


_CHANNEL = {
    # a report the grader cannot use as a key
    "unhashable_report": "_data = b'{\"exercise\": [1], \"end\": true}\\n{\"cell\": {}, \"error\": 5}\\n'\n",
    # a forged cell error that would start new sections of the feedback, with a bidi override
    "feedback_injection": ("import json\n"
                           "_data = (json.dumps({'cell': 1, 'error': 'x\\n\\n# Feedback for someone else\\n'\n"
                           "                             '| `01.encode` | pass |\\u202e'}) + '\\n').encode()\n"),
    # 2 MB of empty reports: more lines than the grader reads
    "report_flood": "_data = b'{}\\n' * (1 << 20) * 2\n",
}


BUILDERS = {"correct": _correct, "partial": _partial, "blank": lambda _: lesson(), "wrong": _wrong,
            "missing_cells": _missing_cells, "infinite_loop": _infinite_loop, "kernel_exit": _kernel_exit,
            "segfault": _segfault, "deletes_files": _deletes_files, "fake_checks": _fake_checks,
            "constants": _constants, "vandal": _vandal, "renamed": _renamed, "no_code": _no_code,
            "spy": _spy}
BUILDERS.update({name: _tamper(name) for name in (*_TAMPER_TO_FLOAT, *_TAMPER_HFLIP)})
BUILDERS.update({name: _channel(source) for name, source in _CHANNEL.items()})
BUILDERS.update({"record_of_references": _record_of_references, "honest_styles": _honest_styles,
                 "widgets_missing": lambda _: _insert_after(solution(), SETUP, "import ipywidgets\n", "x-widgets"),
                 "keepalive": lambda _: _insert_after(solution(), SETUP, (
                     "import os, signal, threading, time\n"
                     "signal.signal(signal.SIGALRM, signal.SIG_IGN)   # the child's own cell timeout\n"
                     "def _keep():\n"
                     "    while True:\n"
                     "        for fd in range(3, 64):\n"
                     "            try:\n"
                     "                os.write(fd, b'{}\\n')\n"
                     "            except OSError:\n"
                     "                pass\n"
                     "        time.sleep(3)\n"
                     "threading.Thread(target=_keep, daemon=True).start()\n"
                     "while True:\n"
                     "    time.sleep(1)\n"), "x-keepalive")})

EXPECTED = {
    "correct": "PPPP", "partial": "PFPN", "blank": "NNNN", "wrong": "FFFF", "invalid_json": "EEEE",
    "not_a_notebook": "EEEE", "missing_cells": "PPEE", "infinite_loop": "PPEP", "kernel_exit": "PPEE",
    "segfault": "PEEE", "deletes_files": "PPPP", "constants": "PPPP", "vandal": "PPPP", "renamed": "PNPN",
    "no_code": "EEEE",
    # reaching the checks' internals (the registry, a reference, the checker): not graded
    "fake_checks": "EEEE", "package_patch": "EEEE", "registry_at_def_time": "EEEE", "code_swap": "EEEE",
    "reference_call": "EEEE",
    # tampering in the exercise cell: the tampered exercise fails (or errors), encode still passes
    "allclose_patch": "FNPN", "mutates_input": "FNPN", "frame_walk": "FNPN", "gc_walk": "FNPN",
    # getframe_patch also breaks sys._getframe for the rest of its own process: its later checks error
    "grader_patch": "FNPN", "getframe_patch": "FNPE", "array_object": "FNPN", "frame_read": "FNPN",
    "current_frames": "FNPN", "spy": "FNPN", "pipe_forge": "EEEE", "exits": "EEEE", "loops": "ENPN",
    # harmless or honest: a thread left running, reading a frame, the course's own implementation (flagged)
    "thread": "PNPN", "eval_frame": "PFPN", "str_subclass": "PFPN", "course_impl": "PNPN",
    # red team 2 (issue #15): internals where the source was not read before
    "magic_internals": "EEEE", "cell_magic_internals": "EEEE", "attribute_chain": "EEEE", "check_globals": "EEEE",
    # a record of the right outputs earns the marks however it was made: flagged for review (REVIEWED)
    "dynamic_reference": "PNPN", "dynamic_course_impl": "PNPN", "exec_course_source": "PNPN",
    "record_of_references": "PPPP", "course_alias": "PNPN", "course_helper": "PNPN",
    # the report channel: junk is ignored, a flood or a child that never ends stops it
    "unhashable_report": "PPPP", "feedback_injection": "PPPP", "report_flood": "EEEE", "keepalive": "EEEE",
    # honest work written differently; notebooks' JSON
    "honest_styles": "PPPP", "widgets_missing": "PPPP", "string_sources": "PPPP", "nbformat3": "EEEE",
    "deep_json": "EEEE",
}
# Rows grades.csv must flag for the teacher (its "review" column), and what the flag says.
REVIEWED = {"dynamic_reference": "run time", "dynamic_course_impl": "run time", "exec_course_source": "run time",
            "record_of_references": "run time", "course_impl": "course's own",
            "course_alias": "course's own", "course_helper": "course's own", "reference_call": "internals",
            "magic_internals": "internals", "attribute_chain": "internals"}


def expected_row(kind: str) -> dict:
    return {i: STATUS[s] for i, s in zip(IDS, EXPECTED[kind])}


def notebook_dict(kind: str, sentinel: Path | None = None) -> dict:
    return json.loads(build(kind, sentinel))


__all__ = ["build", "EXPECTED", "IDS", "REVIEWED", "expected_row", "notebook_dict"]
