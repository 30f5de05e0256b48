"""The benchmark's calibration: notebooks are judged as a ratio to a fixed workload."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from mmlm_course.tools import benchmark


def test_the_calibration_notebook_runs_without_error():
    assert benchmark.calibrate() > 0


def test_notebooks_are_judged_by_their_ratio_to_the_calibration(monkeypatch):
    calibrations = iter([10.0, 12.0])                         # the machine slowed down during the run
    monkeypatch.setattr(benchmark, "calibrate", lambda: next(calibrations))
    seconds = {"00_a.ipynb": 50.0, "01_b.ipynb": 75.0, "10_capstone.ipynb": 120.0}
    monkeypatch.setattr(benchmark.notebooks, "execute_notebook",
                        lambda path: SimpleNamespace(seconds=seconds[Path(path).name], errors=[]))
    monkeypatch.setattr(benchmark, "REFERENCE_CALIBRATION_S", 15.0)
    rows, calibration = benchmark.time_notebooks([Path(name) for name in seconds])
    assert calibration["unit_s"] == 11.0
    by_name = {row["notebook"]: row for row in rows}
    assert by_name["00_a.ipynb"]["ratio"] == pytest.approx(50 / 11, abs=0.01)
    assert by_name["00_a.ipynb"]["budget_ratio"] == pytest.approx(6.0)        # 90 s / 15 s
    assert by_name["00_a.ipynb"]["within"] and not by_name["01_b.ipynb"]["within"]   # 4.5 vs 6.8 (> 6.0)
    assert by_name["10_capstone.ipynb"]["budget_ratio"] == pytest.approx(12.0) and by_name["10_capstone.ipynb"]["within"]
