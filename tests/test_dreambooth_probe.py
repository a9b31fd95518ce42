"""benchmarks/dreambooth_probe.py: a wrong run folder is refused before any model loads."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "dreambooth_probe.py"


def load_probe():
    spec = importlib.util.spec_from_file_location("dreambooth_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_run_folder_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_probe().main([str(tmp_path / "no_such_run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no_such_run does not exist" in err and "train_dreambooth" in err
