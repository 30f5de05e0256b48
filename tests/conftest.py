"""How `pytest -n 2` (pytest-xdist, `--dist loadgroup`) splits the suite between workers.

Every test of one file stays on one worker (a notebook's cells share one kernel; a module's
fixtures run once), except the untouched-lesson tests of `test_notebooks.py`, which each get
a group of their own so that the lessons spread over the workers. Without xdist the marks
do nothing.
"""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(str(item.path.relative_to(config.rootpath))))
