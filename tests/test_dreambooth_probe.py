"""benchmarks/dreambooth_probe.py: a wrong run folder is refused before any model loads."""
import pytest
from benchmark_scripts import load_script


def load_probe():
    return load_script("dreambooth_probe")


def test_missing_run_folder_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_probe().main([str(tmp_path / "no_such_run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no_such_run does not exist" in err and "train_dreambooth" in err
