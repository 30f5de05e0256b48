"""What pytest needs to know about this course, for the test suite and for learners.

1. ``pytest --nbval-lax lessons/NN_*.ipynb`` is how a learner asks "do my exercises pass?".
   In a notebook a check only *shows* ✅ / ❌ / ⏳ and lets Run All go on; under nbval it must
   also fail the cell, so `pytest_configure` sets ``MMLM_COURSE_STRICT_CHECKS=1`` (inherited
   by the kernels nbval starts), and a wrong or missing answer raises at its check.

2. How `pytest -n auto` (pytest-xdist) splits the suite between workers.

A worker takes a whole file at a time: a notebook's cells share one kernel, and a test
module's fixtures run once. The one exception is the untouched-lesson test of
`tests/test_notebooks.py`: each lesson is a unit of its own, so that the lessons spread over
the workers instead of running one after the other on one of them.
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
    return FileScheduling(config, log)


def pytest_configure(config):
    if config.getoption("nbval", False) or config.getoption("nbval_lax", False):
        os.environ["MMLM_COURSE_STRICT_CHECKS"] = "1"      # = mmlm_course.exercises.STRICT_ENV
