"""pyproject.toml and environment.yml describe the same environment; the wheel holds the data.

If you add a dependency or change a bound, change both files: this test names the difference.
"""
import re
from pathlib import Path

import pytest
import yaml  # pyyaml, in the [dev] extra
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sdcourse"

#: pip name -> conda-forge name, where they differ.
CONDA_NAMES = {"torch": "pytorch"}


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _pip_requirements(pyproject) -> dict[str, SpecifierSet]:
    """conda-spelled name -> bounds, for the runtime dependencies and the [dev] extra."""
    project = pyproject["project"]
    found = {}
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        found[CONDA_NAMES.get(name, name)] = req.specifier
    return found


def _conda_requirements(environment) -> dict[str, SpecifierSet]:
    """name -> bounds of the conda packages (python and pip themselves left out)."""
    found = {}
    for entry in environment["dependencies"]:
        if not isinstance(entry, str):
            continue  # the pip: section
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", entry.strip())
        name, spec = canonicalize_name(match.group(1)), match.group(2)
        if name not in ("python", "pip"):
            found[name] = SpecifierSet(spec)
    return found


def test_same_packages(pyproject, environment):
    pip, conda = _pip_requirements(pyproject), _conda_requirements(environment)
    assert sorted(set(pip) - set(conda)) == [], "in pyproject.toml but not in environment.yml"
    assert sorted(set(conda) - set(pip)) == [], "in environment.yml but not in pyproject.toml"


def test_same_bounds(pyproject, environment):
    pip, conda = _pip_requirements(pyproject), _conda_requirements(environment)
    differ = {name: (str(pip[name]), str(conda[name])) for name in pip
              if name in conda and pip[name] != conda[name]}
    assert differ == {}, "bounds differ (pyproject, environment.yml)"


def test_same_python(pyproject, environment):
    conda_python = [e for e in environment["dependencies"]
                    if isinstance(e, str) and re.match(r"python\b", e)]
    assert conda_python == ["python" + pyproject["project"]["requires-python"]]


def test_conda_installs_the_package(environment):
    pip = [e for e in environment["dependencies"] if isinstance(e, dict)]
    assert pip and "-e .[dev]" in pip[0]["pip"]
    assert environment["name"] == "sdcourse"
    assert environment["channels"][0] == "conda-forge"


def test_torchvision_is_not_a_dependency(pyproject):
    names = {Requirement(r).name for r in pyproject["project"]["dependencies"]}
    assert "torchvision" not in names


def test_console_script(pyproject):
    """pyproject names cli.main, and the installed `sdcourse` command is that function."""
    from importlib.metadata import entry_points

    from sdcourse import cli

    assert pyproject["project"]["scripts"]["sdcourse"] == "sdcourse.cli:main"
    (script,) = entry_points(group="console_scripts", name="sdcourse")
    assert script.load() is cli.main


def _data_files() -> list[Path]:
    """Every file in the package that is not Python source or a bytecode cache."""
    return [p for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]


def test_package_data_covers_every_data_file(pyproject):
    globs = pyproject["tool"]["setuptools"]["package-data"]["sdcourse"]
    assert "mini/**/*" in globs and "samples/*" in globs
    covered = {p for pattern in globs for p in PACKAGE.glob(pattern) if p.is_file()}
    missing = [str(p.relative_to(PACKAGE)) for p in _data_files() if p not in covered]
    assert missing == [], "not shipped in the wheel: add a glob to [tool.setuptools.package-data]"


@pytest.mark.parametrize("folder", ["mini", "samples"])
def test_data_folders_are_shipped(pyproject, folder):
    files = [p for p in _data_files() if p.relative_to(PACKAGE).parts[0] == folder]
    assert files, f"sdcourse/{folder} has no files: the repository ships them"
    globs = pyproject["tool"]["setuptools"]["package-data"]["sdcourse"]
    covered = {p for pattern in globs for p in PACKAGE.glob(pattern)}
    assert set(files) <= covered


def test_pytest_runs_tests_and_notebooks(pyproject):
    options = pyproject["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == ["tests", "notebooks"]
    assert "--nbval-lax" in options["addopts"]


def test_every_notebook_installs_the_course_on_colab_from_the_project_repository():
    """Each notebook opens on its own Colab runtime, so each starts with the install cell; the
    cell installs from the one repository address pyproject names (sources never spell it)."""
    import json
    import re

    root = Path(__file__).resolve().parent.parent
    url = tomllib.loads((root / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        first = "".join(code[0]["source"])
        assert "google.colab" in first, f"{path.name}: the first code cell is not the Colab install"
        assert re.search(r'COURSE_REPO = "([^"]+)"', first).group(1) == url, path.name
    sources = (root / "notebooks" / "src").glob("*.py")
    assert not any("github.com" in p.read_text() for p in sources), "the URL lives in pyproject.toml"


#: The dependencies only the notebook runner (`sdcourse run`, nbval) needs: Colab has its own
#: Jupyter, with ipykernel and ipython pinned, so its install cell must not upgrade them.
RUNNER_ONLY = {"jupyterlab", "ipykernel", "nbformat", "nbclient", "nbconvert"}


def test_the_colab_cell_installs_what_the_notebooks_import_and_leaves_colabs_jupyter_alone(pyproject):
    """The course goes in without its dependencies (--no-deps), then every dependency of
    pyproject.toml but the Jupyter runner's, each with its bound."""
    import json

    wanted = [r for r in pyproject["project"]["dependencies"] if Requirement(r).name not in RUNNER_ONLY]
    assert len(wanted) == len(pyproject["project"]["dependencies"]) - len(RUNNER_ONLY)
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        first = "".join(code[0]["source"])
        assert '"--no-deps", f"git+{COURSE_REPO}"' in first, path.name
        installed = re.findall(r'"([A-Za-z_-]+[<>=!~][^"]*)"', first)
        assert installed == wanted, path.name


def test_the_notebooks_modules_import_no_jupyter_runner_package():
    """What the Colab cell leaves out must not be needed: importing the package and the
    modules the notebooks use loads none of the runner's packages."""
    import subprocess
    import sys

    modules = ["sdcourse", "sdcourse.evaluate", "sdcourse.world", "sdcourse.bench", "sdcourse.sizes",
               "sdcourse.train.dreambooth", "sdcourse.dreambooth_subject", "sdcourse.images"]
    code = (f"import sys; import {', '.join(modules)}; "
            f"print(sorted(m for m in {sorted(RUNNER_ONLY)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_reads_no_pickles():
    """Weights, optimizer states and cached training sets are read with safetensors only:
    unpickling a file can run code, so no module calls ``torch.load`` or ``pickle``."""
    unpickling = re.compile(r"\btorch\.load\(|\bimport pickle\b|\bpickle\.loads?\(|\bweights_only\b")
    found = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "sdcourse").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if unpickling.search(line) and not line.lstrip().startswith(("#", '"', "'", "``"))]
    assert found == []
