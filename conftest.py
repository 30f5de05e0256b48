"""How `pytest -n auto` (pytest-xdist) splits the suite between workers.

A worker takes a whole file at a time: a notebook's cells share one kernel, and a test
module's fixtures run once. The one exception is the untouched-lesson test of
`tests/test_notebooks.py`: each lesson is a unit of its own, so that the lessons spread over
the workers instead of running one after the other on one of them.
"""

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
