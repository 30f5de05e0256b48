"""The `mmlm-course` entry point, run as learners and teachers run it."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat

from mmlm_course.tools import cli

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "mmlm_course.tools.cli"]


def run(*args, cwd=ROOT):
    return subprocess.run(CLI + list(args), cwd=cwd, capture_output=True, text=True, timeout=900)


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "mmlm-course"]
    assert script.value == "mmlm_course.tools.cli:main"


def test_the_course_folder_is_the_checkout_whatever_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.course_root() == ROOT


def test_help_explains_every_command_and_option():
    out = run("--help").stdout
    for command in ("build-lessons", "check", "execute", "doctor", "benchmark"):
        assert command in out
        sub = run(command, "--help")
        assert sub.returncode == 0 and "usage:" in sub.stdout


def test_doctor_json():
    result = run("doctor", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["versions"]["keras"].startswith("3.")


def test_completed_lesson_01_passes_every_check():
    result = run("check", "solutions/01_images_and_text.ipynb")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("pass") >= 4 and "fail" not in result.stdout


def test_check_reports_pass_fail_and_not_attempted_with_one_line_each(tmp_path):
    nb = nbformat.read(ROOT / "lessons" / "01_images_and_text.ipynb", 4)
    stubs = {
        "def to_float_image": "def to_float_image(image):\n    return image.astype('float32') / 255.0",
        "def hflip_with_caption": "def hflip_with_caption(image, caption):\n    return None",
        "def encode": "def encode(text, token_to_id):\n    return [token_to_id[w] for w in text.split()]",
    }
    for cell in nb.cells:
        for start, body in stubs.items():
            if cell.source.startswith(start):
                cell.source = body
    path = tmp_path / "mine.ipynb"
    nbformat.write(nb, path)
    result = run("check", str(path))
    lines = {line.split()[1]: line for line in result.stdout.splitlines()
             if line.strip().startswith(tuple(cli.SYMBOL.values()))}
    assert result.returncode == 1
    assert "pass" in lines["01.to_float_image"]
    assert "fail" in lines["01.hflip_with_caption"] and "returned None" in lines["01.hflip_with_caption"]
    assert "fail" in lines["01.encode"] and "raised KeyError" in lines["01.encode"]
    assert "not attempted" in lines["01.pad_with_mask"]
    assert "Traceback" not in result.stdout


def test_check_rejects_a_file_that_is_not_a_notebook(tmp_path):
    (tmp_path / "broken.ipynb").write_text("{not json")
    result = run("check", str(tmp_path / "broken.ipynb"))
    assert result.returncode == 2 and "not a readable Jupyter notebook" in result.stderr


def test_benchmark_refuses_an_unknown_quality_task_before_running_anything():
    result = run("benchmark", "--only", "no_such_task")
    assert result.returncode == 2
    assert "unknown quality task" in result.stderr and "capstone_train" in result.stderr
