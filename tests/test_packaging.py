"""environment.yml (conda) installs the same package with the same version ranges as pyproject.toml."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("lab", "test"):
        reqs += project["optional-dependencies"][extra]
    return {re.split(r"[<>=!~ ]", r, maxsplit=1)[0].lower(): r.replace(" ", "") for r in reqs}


def _environment_pip_requirements():
    text = (ROOT / "environment.yml").read_text()
    pip_block = text.split("- pip:", 1)[1]
    lines = [line.strip()[2:].strip().strip('"') for line in pip_block.splitlines() if line.strip().startswith("- ")]
    return lines


def test_environment_yml_matches_pyproject():
    expected = _pyproject_requirements()
    lines = _environment_pip_requirements()
    assert "-e .[lab,test]" in lines, "environment.yml must install the course package itself"
    listed = {re.split(r"[<>=!~ ]", r, maxsplit=1)[0].lower(): r.replace(" ", "") for r in lines if not r.startswith("-e")}
    assert listed == expected


def test_environment_yml_python_matches_requires_python():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"python{requires.replace('>=', '>=')}" in (ROOT / "environment.yml").read_text().replace(" ", "")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    assert command in ci


def test_tensorflow_and_keras_are_floors_only_so_colab_keeps_its_own():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("tensorflow", "keras"):
        (requirement,) = [d for d in deps if re.match(rf"{name}\b", d) and not d.startswith("tf-")]
        assert re.fullmatch(rf"{name}>=[\d.]+", requirement), requirement
