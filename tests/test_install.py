"""`pip install -e .` (pyproject.toml) gives a `backdrop` command that works outside the repository.

The project is installed, editable and without its dependencies (they are this Python's), into a
throw-away virtual environment that sees this Python's packages; the command then runs from another
folder, so it finds `pipelines` through the install, not through the current directory. Offline:
no build isolation (setuptools comes from requirements-dev.txt), no package index.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The virtual environment's bin folder, with Backdrop installed from this checkout."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                           "--no-build-isolation", "--no-index", "--editable", str(ROOT)],
                          capture_output=True, text=True, cwd=venv)
    assert done.returncode == 0, done.stderr
    yield venv / "bin"
    shutil.rmtree(venv, ignore_errors=True)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_backdrop_lists_every_subcommand(installed, tmp_path):
    done = run([str(installed / "backdrop"), "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: backdrop ")
    assert "{edit,batch,presets,erase,download,page}" in done.stdout


def test_backdrop_edit_help_is_the_edit_commands(installed, tmp_path):
    done = run([str(installed / "backdrop"), "edit", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: backdrop edit ")
    assert "--point X,Y[,LABEL]" in done.stdout and "--keyword" in done.stdout


def test_the_install_points_at_this_checkout(installed, tmp_path):
    """The page's modules and the prompts are read from the checkout (without importing Gradio)."""
    code = ("import importlib.util as u; from pipelines.prompting.templates import PROMPTS_DIR; "
            "print(*(u.find_spec(m).origin for m in ('app', 'app_layout', 'app_handlers', 'app_api')), "
            "u.find_spec('pipelines').origin, "
            "PROMPTS_DIR)")
    done = run([str(installed / "python"), "-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [*(str(ROOT / f"{m}.py") for m in ("app", "app_layout", "app_handlers", "app_api")),
                                   str(ROOT / "pipelines" / "__init__.py"), str(ROOT / "prompts")]
