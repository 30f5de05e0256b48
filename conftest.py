"""What pytest needs to know about this course, for the test suite and for learners.

1. ``pytest --nbval-lax lessons/NN_*.ipynb`` is how a learner asks "do my exercises pass?".
   In a notebook a check only *shows* ✅ / ❌ / ⏳ and lets Run All go on; under nbval it must
   also fail the cell, so `pytest_configure` sets ``MMLM_COURSE_STRICT_CHECKS=1`` (inherited
   by the kernels nbval starts), and a wrong or missing answer raises at its check.

2. How `pytest -n auto` (pytest-xdist) splits the suite between workers.

A worker takes a whole file at a time: a notebook's cells share one kernel, and a test
module's fixtures run once. The one exception is the untouched-lesson test of
`tests/test_notebooks.py`: each lesson is a unit of its own, so that the lessons spread over
the workers instead of running one after the other on one of them. Workers take the units in
collection order, so `pytest_collection_modifyitems` puts the longest first (longest
processing time first: the short ones then fill the gaps instead of one long notebook
running alone at the end).
"""

import os

import pytest

try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pytest-xdist is not installed: the suite runs in one process
    LoadScopeScheduling = None


if LoadScopeScheduling is not None:
    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if "::test_untouched_lesson" in nodeid:
                return nodeid                      # one lesson, one unit of work
            return nodeid.split("::", 1)[0]        # otherwise one file, one unit of work


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    config.option.loadscopereorder = False   # xdist >= 3.7 would put the units with most tests first
    return FileScheduling(config, log)


# Seconds per unit in a `pytest -n auto --durations=80` run on the 2-core machine (2026-12-06,
# at 3ccde66); only the order matters, not the values.
NOTEBOOK_SECONDS = {"10": 254, "04": 110, "09": 102, "06": 100, "08": 93, "07": 31, "05": 24, "03": 16, "02": 10,
                    "01": 9, "00": 9}
FILE_SECONDS = {"tests/test_grading.py": 225, "tests/test_capstone_run.py": 205, "tests/test_backends.py": 200,
                "tests/test_mllm.py": 60, "tests/test_check_replay.py": 50, "tests/test_notebooks.py": 45,
                "tests/test_cli.py": 40}


def _unit_seconds(item) -> float:
    path = item.nodeid.split("::", 1)[0]
    if path.startswith(("solutions/", "lessons/")):                       # a notebook under nbval
        return NOTEBOOK_SECONDS.get(os.path.basename(path)[:2], 0)
    if "::test_untouched_lesson" in item.nodeid:                          # an untouched lesson, run by nbclient
        return NOTEBOOK_SECONDS.get(item.nodeid.split("[", 1)[-1][:2], 0)
    return FILE_SECONDS.get(path, 0.0)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_unit_seconds, reverse=True)   # stable: a file's items stay together and in order


def pytest_configure(config):
    if config.getoption("nbval", False) or config.getoption("nbval_lax", False):
        os.environ["MMLM_COURSE_STRICT_CHECKS"] = "1"      # = mmlm_course.exercises.STRICT_ENV
