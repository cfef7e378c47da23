"""The install is reproducible: pyproject.toml, uv.lock and the hashed exports agree."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).parent / "uv"
EXPORT = [
    str(UV),
    "export",
    "--quiet",
    "--frozen",
    "--no-emit-project",
    "--format",
    "requirements-txt",
]
EXPORTS = {
    "service.txt": ["--no-dev"],
    "dev.txt": ["--extra", "dev"],
}


def _pinned(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a requirements file."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, rest = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = rest.split()[0].rstrip(";")
    return pins


def _without_header(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_lock_is_current_with_pyproject() -> None:
    """`uv lock --check` passes offline: no dependency was changed without re-locking."""
    done = subprocess.run(
        [str(UV), "lock", "--check", "--offline"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"uv.lock is stale, run `make lock`:\n{done.stderr}"


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_exports_match_the_lock(name: str, tmp_path: Path) -> None:
    """requirements/<name> is exactly what `uv export` makes of uv.lock today."""
    out = tmp_path / name
    subprocess.run(
        [*EXPORT, *EXPORTS[name], "-o", str(out)],
        cwd=ROOT,
        check=True,
    )
    committed = (ROOT / "requirements" / name).read_text()
    assert _without_header(out.read_text()) == _without_header(committed), (
        f"requirements/{name} differs from uv.lock: run `make lock`"
    )


@pytest.mark.parametrize(("extra", "name"), [(None, "service.txt"), ("dev", "dev.txt")])
def test_every_dependency_is_pinned_inside_its_bounds_with_hashes(
    extra: str | None, name: str
) -> None:
    """Each pyproject dependency has one pinned, hashed version its own bounds allow."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    if extra:
        wanted += project["optional-dependencies"][extra]
    path = ROOT / "requirements" / name
    pins = _pinned(path)
    for spec in wanted:
        req = Requirement(spec)
        key = req.name.lower().replace("_", "-")
        assert key in pins, f"{req.name} is not in requirements/{name}"
        assert req.specifier.contains(pins[key], prereleases=True), (
            f"{req.name}=={pins[key]} is outside {req.specifier}"
        )
    pin_lines = [
        line for line in path.read_text().splitlines() if "==" in line and line[0] not in " #"
    ]
    unhashed = [line for line in pin_lines if not line.rstrip().endswith("\\")]
    assert not unhashed, f"pins without a hash in requirements/{name}: {unhashed}"


def test_one_version_everywhere() -> None:
    """The installed metadata, --version and the User-Agent all read killswitch.__version__."""
    from importlib.metadata import version

    import killswitch
    from killswitch.exchange import transport

    assert version("killswitch") == killswitch.__version__
    assert f"killswitch/{killswitch.__version__}" == transport._USER_AGENT
    done = subprocess.run(
        [sys.executable, "-m", "killswitch", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == f"killswitch {killswitch.__version__}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {killswitch.__version__} " in changelog or "## Unreleased" in changelog


def test_package_is_typed() -> None:
    """py.typed ships with the package, so mypy users of killswitch get its types."""
    import killswitch

    assert (Path(killswitch.__file__).parent / "py.typed").is_file()
