"""benchmarks/dreambooth_memory.py: refuses the real architecture without a GPU; its runs
go through the course's trainer (checked on the mini model, where memory is not measured)."""
import json

import pytest
import torch
from benchmark_scripts import load_script as load


def load_script():
    return load("dreambooth_memory")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_the_real_architecture_needs_a_gpu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--base", "sd21"])
    assert exit_info.value.code == 2
    assert "--base sd21 needs a CUDA GPU" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the mini run measures memory")
def test_every_setting_trains_and_is_reported(tmp_path):
    script = load_script()
    out = tmp_path / "memory.json"
    assert script.main(["--base", "mini", "--steps", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    settings = [(r["pictures_per_step"] // 2, r["gradient_checkpointing"]) for r in result["runs"][1:]]
    assert settings == script.SETTINGS and result["steps"] == 1
    assert all(r["allocated_gib"] is None for r in result["runs"])  # no GPU: nothing measured
