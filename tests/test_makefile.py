"""The Makefile's interpreter and torch-build choice, checked with dry runs (`make -n`, `make python`).

Each test runs make with PATH set to a temporary folder holding only the interpreters under test, so
what the Makefile finds is exactly what the test put there; nothing is installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make")
TRIED = "python3.11 python3.12 python3.13 python3.10 python3"

pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def _runs_as(path: str, version: tuple[int, int]) -> bool:
    try:
        out = subprocess.run(
            [path, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.split() == [str(v) for v in version]


def _real_python(version: tuple[int, int]) -> str | None:
    """A working interpreter of that version on this machine (PATH, pyenv, the usual prefixes), if any."""
    name = "python{}.{}".format(*version)
    found = [shutil.which(name)]
    for root in (os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv"), "/root/.pyenv"):
        if root:
            found += sorted(glob.glob(f"{root}/versions/{version[0]}.{version[1]}.*/bin/{name}"), reverse=True)
    found += [f"{prefix}/bin/{name}" for prefix in ("/usr", "/usr/local", "/opt/homebrew")]
    return next((p for p in found if p and _runs_as(p, version)), None)


def _add(bin_dir: Path, name: str, target: str | None = None) -> Path:
    """Put `name` into bin_dir: a symlink to `target`, else a wrapper that execs this test's interpreter."""
    link = bin_dir / name
    if target:
        link.symlink_to(target)
    else:
        link.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        link.chmod(0o755)
    return link


def _make(bin_dir: Path, *args: str, venv: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHON", "TORCH_SPEC", "VENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    env["PATH"] = str(bin_dir)
    extra = [f"VENV={venv}"] if venv else []
    return subprocess.run(
        [MAKE, "--no-print-directory", *args, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    return d


@pytest.mark.slow
def test_picks_python312_when_python311_is_missing(bin_dir: Path, tmp_path: Path) -> None:
    _add(bin_dir, "python3.12", _real_python((3, 12)))  # a real 3.12 where one exists, else a wrapper
    out = _make(bin_dir, "python")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("python3.12: ")
    dry = _make(bin_dir, "-n", "setup", venv=tmp_path / "venv")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == f"python3.12 -m venv {tmp_path / 'venv'}"


def test_candidate_order(bin_dir: Path) -> None:
    for name in ("python3", "python3.10", "python3.13", "python3.12"):
        _add(bin_dir, name)
    assert _make(bin_dir, "python").stdout.startswith("python3.12: ")
    _add(bin_dir, "python3.11")
    assert _make(bin_dir, "python").stdout.startswith("python3.11: ")


def test_python3_only_when_its_version_is_supported(bin_dir: Path) -> None:
    _add(bin_dir, "python3")  # this interpreter: 3.10-3.13
    assert _make(bin_dir, "python").stdout.startswith("python3: ")
    (bin_dir / "python3").unlink()
    # Stands in for a python3 outside 3.10-3.13 (e.g. 3.14): the version check exits non-zero.
    fake = bin_dir / "python3"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    out = _make(bin_dir, "python")
    assert out.returncode != 0
    assert "no supported Python" in out.stderr


def test_no_supported_python_fails_clearly(bin_dir: Path, tmp_path: Path) -> None:
    out = _make(bin_dir, "-n", "setup", venv=tmp_path / "venv")
    assert out.returncode != 0
    assert "no supported Python (3.10-3.13) found on PATH" in out.stderr
    assert f"tried: {TRIED}" in out.stderr
    assert "PYTHON=" in out.stderr
    assert "-m venv" not in out.stdout
    # Targets that need no interpreter do not look for one.
    assert _make(bin_dir, "-n", "clean").returncode == 0


def test_explicit_python_wins(bin_dir: Path, tmp_path: Path) -> None:
    _add(bin_dir, "python3.11")
    chosen = _add(tmp_path, "my-python")
    out = _make(bin_dir, "python", f"PYTHON={chosen}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{chosen}: ")
    dry = _make(bin_dir, "-n", "setup", f"PYTHON={chosen}", venv=tmp_path / "venv")
    assert dry.stdout.splitlines()[0] == f"{chosen} -m venv {tmp_path / 'venv'}"
    # Also with no interpreter on PATH at all.
    (bin_dir / "python3.11").unlink()
    assert _make(bin_dir, "python", f"PYTHON={chosen}").stdout.startswith(f"{chosen}: ")


def test_torch_fallback_only_for_the_default_pin(bin_dir: Path, tmp_path: Path) -> None:
    _add(bin_dir, "python3.12")
    venv = tmp_path / "venv"
    pip = f"{venv}/bin/pip install"
    default = _make(bin_dir, "-n", "setup", venv=venv).stdout
    assert f"{pip} torch==2.14.1 torchvision==0.29.1 || {{" in default
    assert f"{pip} torch torchvision; }}" in default
    assert "installing the regular wheels" in default
    custom = _make(bin_dir, "-n", "setup", "TORCH_SPEC=torch==2.5.1", venv=venv).stdout
    assert f"{pip} torch==2.5.1\n" in custom
    assert "||" not in custom and "regular wheels" not in custom


def test_torch_fallback_runs(tmp_path: Path) -> None:
    """`make setup` for real, with a stand-in interpreter and pip: the pinned spec fails, the fallback runs."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    pip = venv / "bin" / "pip"
    pip.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\ncase "$*" in *==2.14.1*|*==9.9*) exit 1;; esac\n')
    pip.chmod(0o755)
    no_op = tmp_path / "python-stand-in"
    no_op.write_text("#!/bin/sh\nexit 0\n")
    no_op.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in {"TORCH_SPEC", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    run = [MAKE, "--no-print-directory", "setup", f"PYTHON={no_op}", f"VENV={venv}"]

    out = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "installing the regular wheels: pip install torch torchvision" in out.stdout
    assert log.read_text().splitlines()[1:] == [
        "install torch==2.14.1 torchvision==0.29.1",
        "install torch torchvision",
        "install -e .[dev]",
    ]
    assert (venv / ".installed").exists()

    # A TORCH_SPEC the user gives is not replaced: its failure stops make.
    (venv / ".installed").unlink()
    log.unlink()
    out = subprocess.run([*run, "TORCH_SPEC=torch==9.9"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert log.read_text().splitlines()[1:] == ["install torch==9.9"]
    assert not (venv / ".installed").exists()
