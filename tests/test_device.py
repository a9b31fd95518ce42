"""sdcourse.device: device preference, the SDCOURSE_DEVICE override, dtypes, seeded generators.

The GPUs are simulated by patching torch's availability checks, so these run on any CPU.
"""
import pytest
import torch

from sdcourse import device as dev


@pytest.fixture
def machine(monkeypatch):
    """Pretend this machine has the given GPUs: machine(cuda=True, mps=False, cuda_count=1)."""
    monkeypatch.delenv(dev.ENV_VAR, raising=False)

    def fake(cuda=False, mps=False, cuda_count=1):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count if cuda else 0)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return fake


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "mps"),   # the seed article's order: mps first,
    (True, False, "cuda"),  # then cuda,
    (False, True, "mps"),
    (False, False, "cpu"),  # then the CPU
])
def test_preference_order(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert dev.pick_device() == expected


@pytest.mark.parametrize("value, expected", [("cpu", "cpu"), ("CUDA", "cuda"), ("cuda:1", "cuda:1"),
                                             (" mps ", "mps"), ("", "mps")])
def test_env_override(machine, monkeypatch, value, expected):
    machine(cuda=True, mps=True, cuda_count=2)
    monkeypatch.setenv(dev.ENV_VAR, value)
    assert dev.pick_device() == expected


@pytest.mark.parametrize("value", ["gpu", "tpu", "cuda:x", "mps:1", "cpu:1"])
def test_env_override_unknown_value(machine, monkeypatch, value):
    machine()
    monkeypatch.setenv(dev.ENV_VAR, value)
    with pytest.raises(ValueError, match=r"SDCOURSE_DEVICE=.*use one of cpu, cuda, cuda:N, mps") as info:
        dev.pick_device()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value, message", [
    ("cuda", "SDCOURSE_DEVICE='cuda' but PyTorch sees no cuda device on this machine: "
             "unset SDCOURSE_DEVICE or set it to cpu"),
    ("mps", "SDCOURSE_DEVICE='mps' but PyTorch sees no mps device on this machine: "
            "unset SDCOURSE_DEVICE or set it to cpu"),
    ("cuda:3", "SDCOURSE_DEVICE='cuda:3' but this machine has 1 CUDA device(s): use cuda:0 .. cuda:0"),
])
def test_env_override_unavailable_device(machine, monkeypatch, value, message):
    machine(cuda=value == "cuda:3", cuda_count=1)
    monkeypatch.setenv(dev.ENV_VAR, value)
    with pytest.raises(RuntimeError) as info:
        dev.pick_device()
    assert str(info.value) == message  # what was wrong, then what to do, on one line


@pytest.mark.parametrize("device, expected", [("cpu", "cpu"), (torch.device("cuda", 1), "cuda:1"),
                                              ("CUDA", "cuda"), ("mps", "mps")])
def test_check_device_accepts_what_this_machine_has(machine, device, expected):
    machine(cuda=True, mps=True, cuda_count=2)
    assert dev.check_device(device) == expected


@pytest.mark.parametrize("device, error, message", [
    ("tpu", ValueError, "device 'tpu' is not a device: use one of cpu, cuda, cuda:N, mps"),
    ("cuda", RuntimeError, "device 'cuda' but PyTorch sees no cuda device on this machine: "
                           "use device=sdc.pick_device() or 'cpu'"),
    (torch.device("cuda", 3), RuntimeError, "device 'cuda:3' but PyTorch sees no cuda device"),
])
def test_check_device_refuses_in_one_line(machine, device, error, message):
    machine(cuda=False, mps=False)
    with pytest.raises(error) as info:
        dev.check_device(device)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_check_device_takes_the_last_cuda_index_and_refuses_the_next(machine):
    """Two GPUs are cuda:0 and cuda:1: cuda:2 is one past the end, refused in one line."""
    machine(cuda=True, cuda_count=2)
    assert dev.check_device("cuda:1") == "cuda:1"
    with pytest.raises(RuntimeError) as info:
        dev.check_device("cuda:2")
    assert str(info.value) == ("device 'cuda:2' but this machine has 2 CUDA device(s): "
                               "use cuda:0 .. cuda:1")


def test_load_pipeline_checks_an_explicit_device_before_loading(machine, monkeypatch):
    """Without a GPU, device="cuda" used to load the whole pipeline (or download a real
    checkpoint) and only then fail in torch."""
    from sdcourse import models

    machine(cuda=False, mps=False)
    monkeypatch.setattr(models, "choose_model", lambda *a, **k: pytest.fail("went on to choose"))
    with pytest.raises(RuntimeError, match="sees no cuda device"):
        models.load_pipeline("text2img", model="mini", device="cuda", verbose=False)
    with pytest.raises(ValueError, match="'tpu' is not a device"):
        models.load_pipeline("text2img", device="tpu", verbose=False)


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.float32), ("cuda", torch.float16), ("cuda:1", torch.float16),
    ("mps", torch.float16), (torch.device("cpu"), torch.float32),
])
def test_dtype(device, dtype):
    assert dev.pick_dtype(device) == dtype


@pytest.mark.parametrize("cuda, dtype", [(True, torch.float16), (False, torch.float32)])
def test_dtype_of_none_is_the_picked_devices(machine, cuda, dtype):
    """None used to give torch's multi-line "invalid combination of arguments"."""
    machine(cuda=cuda)
    assert dev.pick_dtype(None) == dev.pick_dtype() == dtype


def test_not_a_device_name_is_the_one_line_check(machine, monkeypatch):
    """"gpu" gave torch's "Expected one of cpu, cuda, ipu, xpu, ... device type at start of
    device string: gpu", also from choose_model, which asks is_gpu."""
    from sdcourse import models

    machine()
    monkeypatch.delenv("SDCOURSE_MODEL", raising=False)
    message = "^device 'gpu' is not a device: use one of cpu, cuda, cuda:N, mps$"
    for ask in (dev.pick_dtype, dev.is_gpu, lambda d: models.choose_model("text2img", None, d)):
        with pytest.raises(ValueError, match=message):
            ask("gpu")
    with pytest.raises(ValueError, match="^device 'cuda:x' is not a device"):
        dev.pick_dtype("cuda:x")
    assert dev.pick_dtype("cuda") == torch.float16  # naming a GPU this machine lacks is fine


def test_same_seed_same_draws():
    a = torch.randn(4, 8, generator=dev.make_generator(42, "cpu"))
    b = torch.randn(4, 8, generator=dev.make_generator(42, "cpu"))
    c = torch.randn(4, 8, generator=dev.make_generator(43, "cpu"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_on_mps_is_a_cpu_generator(machine):
    machine(mps=True)
    assert dev.make_generator(0, "mps").device == torch.device("cpu")
    assert torch.equal(torch.randn(3, generator=dev.make_generator(7, "mps")),
                       torch.randn(3, generator=dev.make_generator(7, "cpu")))


def test_generator_default_device_is_picked(machine):
    machine()
    assert dev.make_generator(0).device == torch.device("cpu")


def test_generator_accepts_numpy_integers():
    """Notebooks seed from loops and arrays: a numpy int is the same seed as the int."""
    import numpy as np

    assert torch.equal(torch.randn(3, generator=dev.make_generator(np.int64(7), "cpu")),
                       torch.randn(3, generator=dev.make_generator(7, "cpu")))


@pytest.mark.parametrize("seed, error, message", [
    (1.7, TypeError, "seed 1.7 is not a whole number: pass an int, e.g. make_generator(0)"),
    (2.0, TypeError, "seed 2.0 is not a whole number: pass an int, e.g. make_generator(0)"),
    (True, TypeError, "seed True is not a whole number: pass an int, e.g. make_generator(0)"),
    ("0", TypeError, "seed '0' is not a whole number: pass an int, e.g. make_generator(0)"),
    (2**64, ValueError, f"seed {2**64} is out of range: pass a whole number from -2**63 to 2**64 - 1"),
])
def test_generator_refuses_seeds_that_are_not_whole_numbers(seed, error, message):
    """1.7 used to draw seed 1's picture without a word."""
    with pytest.raises(error) as info:
        dev.make_generator(seed, "cpu")
    assert str(info.value) == message


@pytest.mark.parametrize("seed", [-1, -2**63, 2**64 - 1])
def test_generator_takes_every_seed_torch_takes(seed):
    """torch's manual_seed takes -2**63 .. 2**64 - 1 (a negative seed wraps around to an
    unsigned one): the ends of that range, and -1, are seeds like any other."""
    assert dev.make_generator(seed, "cpu").initial_seed() == seed % 2**64
    assert torch.equal(torch.randn(3, generator=dev.make_generator(seed, "cpu")),
                       torch.randn(3, generator=torch.Generator().manual_seed(seed)))


def test_generator_refuses_a_seed_below_torchs_range():
    """One below -2**63: the package's one line, not torch's "Overflow when unpacking long long"."""
    with pytest.raises(ValueError) as info:
        dev.make_generator(-2**63 - 1, "cpu")
    assert str(info.value) == (f"seed {-2**63 - 1} is out of range: pass a whole number from "
                               "-2**63 to 2**64 - 1")


@pytest.mark.parametrize("device, error, message", [
    ("gpu", ValueError, "device 'gpu' is not a device: use one of cpu, cuda, cuda:N, mps"),
    ("cuda", RuntimeError, "device 'cuda' but PyTorch sees no cuda device on this machine: "
                           "use device=sdc.pick_device() or 'cpu'"),
    ("mps", RuntimeError, "device 'mps' but PyTorch sees no mps device on this machine: "
                          "use device=sdc.pick_device() or 'cpu'"),
])
def test_generator_checks_the_device_in_one_line(machine, device, error, message):
    """Without the check torch answered "Cannot get CUDA generator without ATen_cuda library..."
    or its list of every device type it knows."""
    machine(cuda=False, mps=False)
    with pytest.raises(error) as info:
        dev.make_generator(0, device)
    assert str(info.value) == message


def test_generator_on_an_available_gpu(machine, monkeypatch):
    """cuda passes the check and gets a generator of its own (torch's, faked here)."""
    machine(cuda=True, cuda_count=2)
    made, real = [], torch.Generator
    monkeypatch.setattr(torch, "Generator", lambda device: made.append(device) or real())
    dev.make_generator(0, "CUDA:1")
    assert made == [torch.device("cuda", 1)]


def test_public_names():
    import sdcourse

    assert sdcourse.pick_device is dev.pick_device
    assert sdcourse.pick_dtype is dev.pick_dtype
    assert sdcourse.make_generator is dev.make_generator


def test_mps_0_is_the_apple_gpu_as_in_torch(machine):
    """On a Mac, pipe.device and tensor.device say "mps:0": passed on (make_generator(0,
    pipe.device)), it was refused as "not a device" where "cuda:0" worked."""
    machine(cuda=False, mps=True)
    assert dev.check_device("mps:0") == "mps:0"
    assert dev.check_device(torch.device("mps", 0)) == "mps:0"
    assert dev.is_gpu("mps:0") is True and dev.pick_dtype("mps:0") == torch.float16
    assert dev.make_generator(0, "mps:0").device.type == "cpu"  # MPS draws with a CPU generator


def test_cpu_0_is_the_cpu_as_in_torch(machine):
    """"cpu:0" is how torch names the CPU (tensor.device of some code paths): it was refused
    as "not a device". There is one CPU, so cpu:1 still is."""
    machine(cuda=False)
    assert dev.check_device("cpu:0") == "cpu:0"
    assert dev.check_device(torch.device("cpu", 0)) == "cpu:0"
    assert dev.is_gpu("cpu:0") is False and dev.pick_dtype("cpu:0") == torch.float32
    assert dev.make_generator(0, "cpu:0").device.type == "cpu"
    assert torch.equal(torch.rand(3, generator=dev.make_generator(0, "cpu:0")),
                       torch.rand(3, generator=dev.make_generator(0, "cpu")))
    with pytest.raises(ValueError) as info:
        dev.check_device("cpu:1")
    assert str(info.value) == "device 'cpu:1' is not a device: use one of cpu, cuda, cuda:N, mps"


@pytest.mark.parametrize("name", ["cpu:", "cuda:", "cuda:01", "cuda:-1", "mps:", " cuda : 0"])
def test_names_torch_would_refuse_are_refused_in_one_line(machine, name):
    """An empty index or a leading zero passed the name check and failed inside torch
    ("Invalid device string") once something moved there."""
    machine(cuda=True)
    with pytest.raises(ValueError) as info:
        dev.check_device(name)
    assert str(info.value) == (f"device {name.strip().lower()!r} is not a device: use one of cpu, "
                               "cuda, cuda:N, mps")
