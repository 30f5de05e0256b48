"""Run untrusted Python (a learner's notebook) in a child process the grader does not trust.

`start` launches the grading child (`mmlm_course.tools.grading_child`) with the job on its stdin
and reads what it reports on stdout. Where Bubblewrap (``bwrap``, Debian's ``bubblewrap``)
can create namespaces, the child gets:

- the whole file system read-only, a fresh empty ``/tmp`` (its HOME, temp and working folder:
  nothing persists from one submission to the next), the grader's output and scratch
  folders and the submissions' folders hidden behind empty ones;
- no network, its own process tree (every process it starts dies with it), its own session;
- an unprivileged user: ``nobody`` inside the namespace; outside it, where the grader runs as
  root and the Python installation is readable by others, a user of its own (one of
  `CHILD_UIDS`, no account, mapped to ``nobody`` inside), else root without capabilities,
  confined to the read-only view above;
- resource limits: address space, CPU seconds, file size, open files, and processes when it
  has a user of its own (Linux counts that limit per user, so children graded side by side
  each have their own: a notebook that starts hundreds of threads uses up its own limit, not
  its neighbour's; each child's TensorFlow still gets small thread pools).

Without Bubblewrap (macOS, a container that forbids namespaces) the child is an ordinary
process with the limits, its own fresh HOME and temp folder and its own session; it can then
read and write whatever the grader's user can. `isolation()` says which one applies; the
README's grading section lists what each guarantees.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEMORY_BYTES = 6 << 30            # address space; TensorFlow alone maps about 2 GiB
CPU_SECONDS = 1800
FILE_BYTES = 256 << 20
OPEN_FILES = 1024
PROCESSES = 512                  # threads count too; per child, where it has a user of its own
THREADS = "2"                    # TensorFlow's and OpenMP's pools, else a thread per core per pool
COURSE = Path(__file__).resolve().parents[2]
START_TRIES = 30                 # a second apart: the last child of this user is still ending
NOBODY = 65534
# One user per child graded at the same time, above the uids systemd gives containers
# (524288-1879048191); a uid that has an account here is skipped.
CHILD_UIDS = range(1_900_000_000, 1_900_000_064)


def _child_uids() -> list[int]:
    """The users of `CHILD_UIDS` that no account has."""
    def unused(uid: int) -> bool:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return True
        return False
    return [uid for uid in CHILD_UIDS if unused(uid)]


def _take_uid() -> tuple[int, socket.socket]:
    """The lowest child user that no child on this machine has, and the lock that holds it
    (an abstract Unix socket bound to the uid's name: the kernel frees it when the grader
    exits, however it exits). Waits while every child user is taken."""
    while True:
        for uid in _child_uids():
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                lock.bind(f"\0mmlm-course-child-user-{uid}")
                return uid, lock
            except OSError:                      # another child, here or in another grader, has it
                lock.close()
        time.sleep(0.5)


def _limits(uid: int | None) -> None:
    """Runs in the child between fork and exec; ``uid``: the child's own user, or None."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if uid is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (PROCESSES, PROCESSES))
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _needed() -> list[Path]:
    """What the child must see: the course and the Python installation it runs."""
    return [COURSE, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve()]


def _bwrap_command(hide: list[Path]) -> list[str]:
    command = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in _needed():                   # a course or a venv under /tmp: seen through the fresh /tmp
        if Path("/tmp") in path.parents:
            command += ["--ro-bind", str(path), str(path)]
    command += ["--dir", "/tmp/home", "--dir", "/tmp/work", "--chdir", "/tmp/work", "--unshare-all",
                "--uid", str(NOBODY), "--gid", str(NOBODY), "--die-with-parent", "--new-session",
                "--setenv", "HOME", "/tmp/home", "--setenv", "TMPDIR", "/tmp"]
    for path in hide:
        command += ["--tmpfs", str(path)]
    return command


def _works(command: list[str], uid: int | None) -> bool:
    try:
        done = subprocess.run([*command, sys.executable, "-I", "-c", "import numpy"], capture_output=True,
                              timeout=60, preexec_fn=functools.partial(_limits, uid))
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.lru_cache(maxsize=1)
def isolation() -> str:
    """``"bubblewrap (nobody)"``, ``"bubblewrap"`` or ``"none"``: what `start` will use here."""
    if os.environ.get("MMLM_COURSE_SANDBOX") == "none" or shutil.which("bwrap") is None:
        return "none"
    return _probe()


@functools.cache
def _probe() -> str:
    """Tried once per process: a grading run must not switch to a weaker sandbox half-way."""
    if os.geteuid() == 0 and _child_uids() and _works(_bwrap_command([]), _child_uids()[0]):
        return "bubblewrap (nobody)"
    return "bubblewrap" if _works(_bwrap_command([]), None) else "none"


def _hideable(path: Path, keep: list[Path]) -> bool:
    """A folder may be hidden unless the child needs something inside it (the course, Python)."""
    path = path.resolve()
    return path.is_dir() and path != Path("/") and not any(k == path or path in k.parents for k in keep)


@dataclasses.dataclass
class Child:
    process: subprocess.Popen
    home: Path | None             # the fresh HOME of an unsandboxed child, removed by `stop`
    uid: int | None               # its own user (see `CHILD_UIDS`), free again after `stop`
    uid_lock: socket.socket | None

    def stop(self) -> None:
        """Kill the child and everything it started, and wait for it."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
        if self.uid_lock is not None:
            self.uid_lock.close()


def _popen(argv: list[str], cwd, env: dict, uid: int | None) -> subprocess.Popen:
    for attempt in range(START_TRIES):
        try:
            return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    cwd=cwd, env=env, start_new_session=True,
                                    preexec_fn=functools.partial(_limits, uid))
        except BlockingIOError as error:         # the user is at PROCESSES: its last child is still ending
            if attempt == START_TRIES - 1:
                who = "the grader's user" if uid is None else f"user {uid} (see `ps -u {uid}`)"
                raise RuntimeError(f"could not start the sandboxed child for {START_TRIES} s: {who} is at its limit "
                                   "of processes and threads (the child before it still ending, or a program "
                                   "outside the grader)") from error
            time.sleep(1)


def start(job: bytes, hide: list[Path]) -> Child:
    """Start the grading child on ``job`` (its stdin, then closed). Read its reports from
    ``child.process.stdout``; its stderr is discarded. ``hide``: folders the child must not see
    (the other submissions, the grader's outputs and scratch)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(COURSE), "PYTHONHASHSEED": "0",
           "TF_NUM_INTEROP_THREADS": THREADS, "TF_NUM_INTRAOP_THREADS": THREADS, "OMP_NUM_THREADS": THREADS}
    mode = isolation()
    home = None
    if mode == "none":
        home = Path(tempfile.mkdtemp(prefix="mmlm-child-"))
        env.update(HOME=str(home), TMPDIR=str(home))
        command, cwd = [], home
    else:
        command, cwd = _bwrap_command([p for p in hide if _hideable(Path(p), _needed())]), None
    # -I would drop PYTHONPATH; -E -s keep user site-packages and PYTHON* variables out instead
    argv = [*command, sys.executable, "-E", "-s", "-c",
            f"import sys; sys.path.insert(0, {str(COURSE)!r}); "
            "from mmlm_course.tools.grading_child import main; main()"]
    uid, uid_lock = _take_uid() if mode == "bubblewrap (nobody)" else (None, None)
    try:
        process = _popen(argv, cwd, env, uid)
    except BaseException:
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
        if uid_lock is not None:
            uid_lock.close()
        raise
    try:
        process.stdin.write(job)
        process.stdin.close()
    except OSError:                              # the child died at once: its reports say nothing
        pass
    return Child(process, home, uid, uid_lock)
