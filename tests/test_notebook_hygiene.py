"""The committed notebooks: executed, small, checked, clean, and in sync with their sources."""
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
sys.path.insert(0, str(ROOT / "tools"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_executed_small_and_clean(path):
    assert path.stat().st_size <= 1_048_576, f"{path.name} is over 1 MB"
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "committed without running every cell"
    assert any("NBVAL_CHECK_OUTPUT" in "".join(c["source"]) for c in code)
    for c in code:
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", f"error output in {path.name}"
            text = "".join(out.get("text", "")) if out["output_type"] == "stream" else ""
            assert not re.search(r"warn|deprecat", text, re.I), f"warning text: {text[:80]}"
            assert "/root/" not in text and "/home/" not in text, "machine path in output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_matches_its_source(path):
    from build_notebooks import SRC, parse

    src = SRC / (path.stem + ".py")
    assert src.exists(), f"{path.name} has no source in notebooks/src"
    built = [(c["cell_type"], c["source"]) for c in parse(src.read_text())]
    committed = [(c["cell_type"], "".join(c["source"])) for c in json.loads(path.read_text())["cells"]]
    assert built == committed, f"{path.name} differs from {src.name}: rebuild with tools/build_notebooks.py"


def test_every_notebook_opens_with_goals_and_needs():
    for path in NOTEBOOKS:
        first = "".join(json.loads(path.read_text())["cells"][0]["source"])
        assert "What you will learn" in first and "What you need" in first, path.name
