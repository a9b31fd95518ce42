"""Turn the notebook sources (notebooks/src/NN_name.py, cells split by ``# %%``) into notebooks.

    python tools/build_notebooks.py [NAME ...]        # build and execute (stores outputs)
    python tools/build_notebooks.py --no-run [NAME ...]
    python tools/build_notebooks.py --allow-errors [NAME ...]   # while drafting

Sources are plain Python files so that reviews show real diffs; ``# %% [markdown]`` starts a
markdown cell (each line's leading ``# `` is removed), and a ``# %% [colab]`` line becomes the
Colab install cell: every notebook opens on its own Colab runtime, so each needs it, and the
repository address it installs from is read from pyproject.toml (written in one place).
Executing stores the outputs the course ships (nbval compares cells marked
``# NBVAL_CHECK_OUTPUT`` against them).
"""
from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SRC, OUT = ROOT / "notebooks" / "src", ROOT / "notebooks"


#: The course's dependencies that its notebooks do not import: `sdcourse run` and the tests
#: execute notebooks with them. Colab runs its own Jupyter and pins its ipykernel and ipython;
#: upgrading them (as jupyterlab and ipykernel's bounds would) can crash the runtime, so the
#: Colab cell leaves them out.
RUNNER_ONLY = ("jupyterlab", "ipykernel", "nbformat", "nbclient", "nbconvert")


def colab_cell() -> str:
    """The code of the Colab install cell: the dependencies the notebooks import (all but
    :data:`RUNNER_ONLY`), then the course from the repository pyproject.toml names, without its
    dependencies (last: pip then checks nothing, so no complaint about the runner's)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the [dev] extra installs tomli
        import tomli as tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    url = project["urls"]["Repository"]
    needs = [r for r in project["dependencies"] if Requirement(r).name not in RUNNER_ONLY]
    listed = textwrap.fill(" ".join(f'"{r}",' for r in needs), width=96,
                           initial_indent=" " * 8, subsequent_indent=" " * 8)
    return (
        "# On Google Colab, install the course into this runtime (elsewhere this cell does nothing).\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        f'COURSE_REPO = "{url}"\n'
        'if "google.colab" in sys.modules:\n'
        "    # what the notebooks import, then the course itself without the Jupyter packages its\n"
        "    # notebook runner needs: Colab pins its own, and upgrading them can crash the runtime\n"
        '    pip = [sys.executable, "-m", "pip", "install", "-q"]\n'
        "    subprocess.run(pip + [\n" + listed + "\n    ], check=True)\n"
        '    subprocess.run(pip + ["--no-deps", f"git+{COURSE_REPO}"], check=True)\n'
        '    from google.colab import output  # ipywidgets 8 (the course\'s sliders) draw through\n'
        '    output.enable_custom_widget_manager()  # Colab\'s widget manager for version 8')


def parse(text: str) -> list:
    cells, kind, lines = [], None, []

    def flush():
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body))
        elif kind == "code" and body:
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        if line.startswith("# %% [colab]"):
            flush()
            cells.append(nbformat.v4.new_code_cell(colab_cell()))
            kind, lines = None, []
        elif line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    return cells


def build(src: Path, run: bool = True, allow_errors: bool = False) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    nb.cells = parse(src.read_text())
    target = OUT / (src.stem + ".ipynb")
    if run:
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["SDCOURSE_HEADLESS"] = "1"
        # the stored outputs are the mini model's on a CPU, as the tests (conftest.py) compare
        # them, also when this runs on a GPU machine: on the CPU the course picks the mini model
        # itself, so they say what a learner's CPU says. Set SDCOURSE_DEVICE to build elsewhere
        os.environ.setdefault("SDCOURSE_DEVICE", "cpu")
        from sdcourse.cli import notebook_client  # this Python's kernel, as `sdcourse run` takes

        notebook_client(nb, timeout=900, allow_errors=allow_errors,
                        resources={"metadata": {"path": str(OUT)}}).execute()
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
        cell["id"] = f"{src.stem[:2]}-{i:02d}"
        cell.get("metadata", {}).pop("execution", None)
    tmp = target.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(target)
    return target


if __name__ == "__main__":
    options = {"--no-run", "--allow-errors"}
    unknown = [a for a in sys.argv[1:] if a.startswith("-") and a not in options]
    if unknown:  # e.g. --help: say how to call it instead of building every notebook
        sys.exit(f"unknown option {unknown[0]}: use {' '.join(sorted(options))} and notebook names\n"
                 + __doc__.split("\n\n")[1])
    sources = ([SRC / (Path(a).stem + ".py") for a in sys.argv[1:] if not a.startswith("-")]
               or sorted(SRC.glob("[0-9][0-9]_*.py")))
    missing = [src for src in sources if not src.exists()]
    if missing:
        sys.exit(f"no notebook source {missing[0].relative_to(ROOT)}: "
                 f"names are e.g. 03_guidance_and_sampling")
    for src in sources:
        target = build(src, run="--no-run" not in sys.argv, allow_errors="--allow-errors" in sys.argv)
        print("built", target.relative_to(ROOT), flush=True)
