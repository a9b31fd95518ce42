"""benchmarks/dreambooth_memory.py: refuses the real architecture without a GPU; its runs
go through the course's trainer (checked on the mini model, where memory is not measured)."""
import json

import pytest
import torch
from benchmark_scripts import load_script as load


def load_script():
    return load("dreambooth_memory")


@pytest.fixture
def no_gpu(monkeypatch, request):
    """A machine without CUDA, also where there is one (as tests/test_device.py pretends).
    accelerate keeps one device and precision per process: reset before (a GPU test's state
    would refuse cpu=True) and after (ours would refuse the next GPU test's fp16)."""
    from accelerate.state import AcceleratorState

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("SDCOURSE_DEVICE", raising=False)
    AcceleratorState._reset_state(True)
    request.addfinalizer(lambda: AcceleratorState._reset_state(True))


def test_the_real_architecture_needs_a_gpu(capsys, no_gpu):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--base", "sd21"])
    assert exit_info.value.code == 2
    assert "--base sd21 needs a CUDA GPU" in capsys.readouterr().err.strip().splitlines()[-1]


def test_every_setting_trains_and_is_reported(tmp_path, no_gpu):
    script = load_script()
    out = tmp_path / "memory.json"
    assert script.main(["--base", "mini", "--steps", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    settings = [(r["pictures_per_step"] // 2, r["gradient_checkpointing"]) for r in result["runs"][1:]]
    assert settings == script.SETTINGS and result["steps"] == 1
    assert all(r["allocated_gib"] is None for r in result["runs"])  # no GPU: nothing measured
