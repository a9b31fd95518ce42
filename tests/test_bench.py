"""The benchmark behind notebook 08 (sdcourse.bench) and the size check (sdcourse.sizes)."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sdcourse import bench
from sdcourse.sizes import check_size

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- check_size


@pytest.mark.parametrize("width, height", [(512, 512), (512, 768), (8, 8), (64, 1024), (1000, 496)])
def test_check_size_accepts_multiples_of_8(width, height):
    assert check_size(width, height) == (width, height)


def test_check_size_names_the_side_and_the_nearest_sizes():
    with pytest.raises(ValueError) as error:
        check_size(500, 512)
    assert str(error.value) == ("width 500 is not a multiple of 8: use 496 or 504 "
                                "(the VAE halves the size 3 times)")
    with pytest.raises(ValueError, match=r"^height 1001 is not a multiple of 8: use 1000 or 1008 "):
        check_size(512, 1001)


@pytest.mark.parametrize("width, height, message", [
    (0, 512, "width 0 is too small: use 8 or more"),
    (4, 512, "width 4 is too small: use 8 or more"),
    (-16, 512, "width -16 is too small"),
    (512.0, 512, "width must be a whole number of pixels, got 512.0"),
    (512, "512", "height must be a whole number of pixels, got '512'"),
    (True, 512, "width must be a whole number of pixels, got True"),
])
def test_check_size_rejects_non_sizes(width, height, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        check_size(width, height)


def test_check_size_messages_are_one_line_and_other_multiples_work():
    for args in [(500, 512), (3, 8), (512, 1.5)]:
        with pytest.raises(ValueError) as error:
            check_size(*args)
        assert "\n" not in str(error.value)
    assert check_size(128, 192, multiple=64) == (128, 192)
    with pytest.raises(ValueError, match="^width 100 is not a multiple of 64: use 64 or 128 "
                                         r"\(the VAE halves the size 6 times\)$"):
        check_size(100, 128, multiple=64)
    with pytest.raises(ValueError, match="^width 25 is not a multiple of 10: use 20 or 30$"):
        check_size(25, 30, multiple=10)


# --------------------------------------------------------------------------- architectures


def test_sd21_configs_rebuild_the_published_parameter_counts():
    with torch.device("meta"):  # shapes only: nothing allocated
        unet, vae = bench.build_unet(), bench.build_vae()
        text_encoder = bench.build_text_encoder()
    assert bench.count_params(unet) == bench.SD21_PARAMS["unet"]  # 865.9 M
    assert bench.count_params(vae) == bench.SD21_PARAMS["vae"]  # 83.7 M
    assert round(bench.count_params(unet) / 1e6, 1) == 865.9
    assert round(bench.count_params(vae) / 1e6, 1) == 83.7
    assert round(bench.count_params(text_encoder) / 1e6) == 340  # OpenCLIP ViT-H/14 text tower
    assert unet.device.type == "meta"


def test_random_models_are_built_in_the_asked_dtype_with_sane_weights():
    from sdcourse.train.text2img import UNET_CONFIG

    unet = bench.build_unet(UNET_CONFIG, dtype=torch.bfloat16, device="cpu")
    assert unet.dtype == torch.bfloat16 and unet.device.type == "cpu"
    weights = torch.cat([p.detach().float().flatten() for p in unet.parameters()])
    assert torch.isfinite(weights).all() and weights.abs().max() <= 1.0 and weights.std() > 0
    out = bench.unet_step(unet, 8)()
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    assert bench.model_bytes(unet) == 2 * bench.count_params(unet)


def test_flops_of_the_mini_unet_config_are_counted():
    from sdcourse.train.text2img import UNET_CONFIG

    flops = bench.unet_flops(UNET_CONFIG, UNET_CONFIG["sample_size"])
    assert flops > 0
    assert bench.unet_flops(UNET_CONFIG, 16) > 3 * flops  # 4x the positions, ~4x the work
    assert bench.unet_flops(UNET_CONFIG, 8, batch=1) * 2 == flops


def test_peak_memory_counts_tensors_alive_during_the_call():
    def two_buffers():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = torch.ones(1024, 1024)  # 4 MiB, while a is alive
        return float(a[0, 0] + b[0, 0])

    peak = bench.peak_memory(two_buffers)
    assert peak is not None and 8 * 2**20 <= peak < 9 * 2**20


def test_time_call_times_each_rep_after_untimed_warmup(monkeypatch):
    """On a fake clock where the k-th call of fn takes k seconds: warmup + reps calls, and
    only the last reps are timed, each on its own."""
    clock, calls = [100.0], []

    def fn():
        calls.append(1)
        clock[0] += len(calls)

    # bench's own clock only (patching time.perf_counter itself would also fool pytest)
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    assert bench.time_call(fn, reps=3, warmup=2) == [3.0, 4.0, 5.0]
    assert len(calls) == 5
    calls.clear()
    assert bench.time_call(fn, reps=2, warmup=0) == [1.0, 2.0]
    assert len(calls) == 2


def test_matmul_rate_is_two_n_cubed_flops_over_the_best_time(monkeypatch):
    asked = []

    def fake_time_call(fn, device="cpu", reps=3, warmup=1):
        asked.append((device, reps, warmup))
        assert fn().shape == (64, 64)  # what is timed is the n x n product
        return [0.5, 0.25, 0.4]

    monkeypatch.setattr(bench, "time_call", fake_time_call)
    assert bench.matmul_gflops(64, reps=3) == 2 * 64 ** 3 / 0.25 / 1e9
    assert asked == [("cpu", 3, 1)]


def test_table_and_markdown_render_skipped_and_measured_rows():
    report = bench.Report(machine={"cpu": "test", "usable_cores": 1, "torch_threads": 1,
                                   "load_average_1min": 0.0, "torch": "x", "diffusers": "y",
                                   "transformers": "z", "python": "3", "date": "today"}, quick=True)
    report.add(bench.Row("SD 2.1 UNet step", "fp32, SDPA", "256 px", 1.5, 3 * 2**30, 2**30), echo=False)
    report.add(bench.Row("SD 2.1 pipeline", "offload", "512 px", note="skipped (no GPU)"), echo=False)
    report.targets.append(dict(name="x", target="<= 1 s", value="0.5 s", ok=True))
    report.targets.append(dict(name="y", target="<= 4 s", value="4.1 s", ok=False))
    report.targets.append(dict(name="z", target=">= 100x", value="not measured", ok=None))
    table = bench.format_table(report)
    assert "1.50 s" in table and "3.00 GiB" in table and "skipped (no GPU)" in table
    markdown = bench.to_markdown(report)
    assert "| SD 2.1 pipeline | offload | 512 px | - | - | - | skipped (no GPU) |" in markdown
    verdicts = ["target x <= 1 s: 0.5 s -> PASS", "target y <= 4 s: 4.1 s -> FAIL",
                "target z >= 100x: not measured -> n/a"]
    assert bench.format_summary(report).splitlines()[-3:] == verdicts
    assert all(f"- {line}" in markdown for line in verdicts)


# --------------------------------------------------------------------------- the whole run


def _fake_run(monkeypatch, to_image_s=3.5, seconds_per_image=0.8, real_step=2.0, elapsed_s=100.0):
    """bench.run with the measurements replaced by known numbers (mini UNet step 10 ms), and
    its clock by one on which the whole run takes ``elapsed_s``."""
    import itertools

    from sdcourse.train.text2img import UNET_CONFIG

    clock = itertools.chain([1000.0], itertools.repeat(1000.0 + elapsed_s))
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: next(clock)))

    mini = {"first_image": {"to_image_s": to_image_s, "total_s": 5.0, "import_s": 1.6,
                            "load_s": 1.4, "generate_s": 0.4,
                            "startup_s": 0.1, "exit_s": 1.5, "size": [64, 64]},
            "seconds_per_image": seconds_per_image, "unet_step_s": 0.01,
            "unet_config": dict(UNET_CONFIG), "unet_params": 5_835_012}
    monkeypatch.setattr(bench, "matmul_gflops", lambda *a, **k: 100.0)
    monkeypatch.setattr(bench, "mini_available", lambda: True)
    monkeypatch.setattr(bench, "bench_mini", lambda report, plan: mini)
    monkeypatch.setattr(bench, "bench_real_unet", lambda report, plan, device: real_step)
    monkeypatch.setattr(bench, "bench_real_vae", lambda report, plan, device: None)
    monkeypatch.setattr(bench, "bench_offload", lambda report, plan, device: None)
    return bench.run(quick=False, device="cpu")


def test_summary_and_targets_of_a_full_run(monkeypatch):
    """The summary's arithmetic, with the measurements replaced by known numbers."""
    from sdcourse.train.text2img import UNET_CONFIG

    report = _fake_run(monkeypatch)
    numbers = report.numbers
    assert numbers["real_over_mini_step"] == pytest.approx(200)
    assert numbers["real_unet_step_cpu_px"] == 512
    flops = bench.unet_flops(UNET_CONFIG, 8)
    assert numbers["mini_unet_share_of_matmul_peak"] == pytest.approx(flops / 0.01 / 1e9 / 100)
    assert [t["ok"] for t in report.targets] == [True, True, True, True]
    assert "real 512 px / mini UNet step: 200x" in bench.format_summary(report)
    assert "3.50 s (start, import and load 3.10 s, 25 steps 0.40 s)" in bench.format_summary(report)
    assert bench.format_summary(report).count(" -> PASS") == 4
    assert report.targets[-1] == dict(name="the whole benchmark", target="<= 10 min",
                                      value="100 s", ok=True)


@pytest.mark.parametrize("elapsed_s, ok", [(600.0, True), (601.0, False)])
def test_the_whole_benchmark_passes_within_ten_minutes(monkeypatch, elapsed_s, ok):
    report = _fake_run(monkeypatch, elapsed_s=elapsed_s)
    assert report.targets[-1]["ok"] is ok and report.targets[-1]["value"] == f"{elapsed_s:.0f} s"
    assert bench.format_summary(report).splitlines()[-1].endswith("-> PASS" if ok else "-> FAIL")


def test_out_of_memory_is_a_row_and_any_other_error_propagates():
    """On a GPU a setting that does not fit is a result ("out of memory"), not the end of the
    run; any other failure is a bug to see."""
    def raising(error):
        def factory():
            raise error
        return factory

    report = bench.Report(machine={}, quick=False)
    row = bench.measure(report, "SD 2.1 UNet", "fp32", "512 px",
                        raising(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")),
                        "cpu", weights=0, reps=1)
    assert (row.seconds, row.note) == (None, "out of memory") and report.rows == [row]
    with pytest.raises(RuntimeError, match="shape mismatch"):
        bench.measure(report, "SD 2.1 UNet", "fp32", "512 px", raising(RuntimeError("shape mismatch")),
                      "cpu", weights=0, reps=1)
    assert report.rows == [row]


def test_missed_targets_fail_and_an_unmeasured_one_is_na(monkeypatch):
    """Just past each target is FAIL (4.1 s vs <= 4 s, 1.2 s vs <= 1 s, 99x vs >= 100x);
    without the real UNet's step there is no ratio: n/a, not PASS or FAIL."""
    report = _fake_run(monkeypatch, to_image_s=4.1, seconds_per_image=1.2, real_step=0.99)
    assert [t["ok"] for t in report.targets] == [False, False, False, True]
    assert bench.format_summary(report).splitlines()[-4:-1] == [
        "target time to first image <= 4 s: 4.10 s (start, import and load 3.70 s, 25 steps "
        "0.40 s) -> FAIL",
        "target seconds per 25-step image <= 1 s: 1.20 s -> FAIL",
        "target mini step speed-up (vs the real UNet at 512 px) >= 100x: 99x -> FAIL"]
    report = _fake_run(monkeypatch, real_step=None)
    assert [t["ok"] for t in report.targets] == [True, True, None, True]
    assert bench.format_summary(report).splitlines()[-2] == (
        "target mini step speed-up >= 100x: not measured in --quick -> n/a")


def test_the_first_image_is_the_median_of_its_children(monkeypatch):
    """Three new processes, the median one's split counts; every child's time is kept, the
    first (cold disk caches after an install) in its place."""
    times = iter([5.0, 3.0, 4.0])
    monkeypatch.setattr(bench, "first_image_in_new_process",
                        lambda: {"to_image_s": (t := next(times)), "load_s": t / 2})
    assert bench.first_image_median(3) == {"to_image_s": 4.0, "load_s": 2.0,
                                           "children_to_image_s": [5.0, 3.0, 4.0]}


def test_a_busy_machine_is_recorded_and_said_in_the_summary(monkeypatch):
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    report = _fake_run(monkeypatch)
    assert report.machine["busy"] is True
    assert bench.format_summary(report).count("the machine was busy at the start (load 9.0") == 1
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    report = _fake_run(monkeypatch)
    assert report.machine["busy"] is False and "busy" not in bench.format_summary(report)


def test_the_run_records_the_commit_it_measured(tmp_path, monkeypatch):
    """Results outlive the code: each records the git commit of the course it measured (the
    checkout its module lies in), None outside a checkout (an installed wheel)."""
    repo = tmp_path / "checkout"
    (repo / "sdcourse").mkdir(parents=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "sdcourse" / "bench.py").write_text("")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "a commit"], check=True)
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.setattr(bench, "__file__", str(repo / "sdcourse" / "bench.py"))
    assert bench.machine_info("cpu")["commit"] == head
    (tmp_path / "installed" / "sdcourse").mkdir(parents=True)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # (a temp folder inside a checkout)
    monkeypatch.setattr(bench, "__file__", str(tmp_path / "installed" / "sdcourse" / "bench.py"))
    assert bench.machine_info("cpu")["commit"] is None


def test_quick_benchmark_runs_end_to_end(tmp_path):
    """``python -m sdcourse.bench --quick`` in a fresh process: every section, tiny sizes."""
    # the mini model ships in sdcourse/mini: its absence is a broken package, not a skip
    assert bench.mini_available(), "the mini model is missing from sdcourse/mini"
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    env = dict(os.environ, SDCOURSE_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "sdcourse.bench", "--quick", "--device", "cpu",
                           "--json", str(out_json), "--markdown", str(out_md)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr, done.stderr[-2000:]
    result = json.loads(out_json.read_text())
    assert result["quick"] is True
    settings = {(r["section"], r["setting"]) for r in result["rows"]}
    assert ("mini model (CPU)", "time to first image, new process") in settings
    assert ("SD 2.1 UNet step (batch 2)", "bf16, SDPA (default)") in settings
    assert ("SD 2.1 VAE decode (2 images)", "fp32, vae.enable_tiling()") in settings
    offload = [r for r in result["rows"] if r["section"].startswith("SD 2.1 pipeline")]
    assert offload and all(r["note"] == "skipped (no GPU)" for r in offload)
    measured = [r for r in result["rows"] if not r["note"].startswith("skipped")]
    assert all(r["seconds"] and r["seconds"] > 0 for r in measured)
    first = result["numbers"]["first_image"]
    assert first["size"] == [64, 64] and first["total_s"] >= first["to_image_s"] > first["import_s"] > 0
    parts = sum(first[k] for k in ("startup_s", "import_s", "load_s", "generate_s"))
    assert parts == pytest.approx(first["to_image_s"]) and first["startup_s"] > 0
    assert 0 < result["numbers"]["mini_unet_share_of_matmul_peak"]
    assert result["machine"]["torch"] == torch.__version__
    assert out_md.read_text().startswith("# sdcourse benchmark (--quick)")


@pytest.mark.parametrize("option", ["--json", "--markdown"])
def test_unwritable_output_paths_fail_before_any_measurement(tmp_path, monkeypatch, capsys, option):
    """A --json/--markdown path that cannot be written stops the CLI at once, naming the path,
    instead of after the whole benchmark; a missing folder is still fine (created at the end)."""
    def no_run(**kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(bench, "run", no_run)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    for path, words in ((a_file / "missing" / "out", "is a file, not a folder"),
                        (tmp_path, "is a folder: give a file name"), ("", "is empty: give a file name")):
        with pytest.raises(SystemExit) as exit_info:
            bench.main([option, str(path)])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("sdcourse: error: ") and words in error, error
        assert f"{option} {path}" in error
    assert bench._output_problem(option, tmp_path / "new" / "folder" / "bench.out") is None


def test_output_paths_that_would_clash_or_name_a_folder_fail_in_one_line(tmp_path, monkeypatch, capsys):
    """The same file for --json and --markdown (the Markdown overwrote the JSON at the end) and a
    path ending in a separator (meant as a folder, written as a file) stop the CLI before any
    measurement, in the one-line style of `sdcourse`, as argparse's own errors do."""
    def no_run(**kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(bench, "run", no_run)
    monkeypatch.chdir(tmp_path)
    same = tmp_path / "out.txt"
    folder = f"results{os.sep}"
    for argv, message in (
        (["--json", str(same), "--markdown", "out.txt"],
         f"--json {same} and --markdown out.txt are the same file: the Markdown would overwrite the "
         f"JSON; give two different paths"),
        (["--json", folder], f"--json {folder} ends with {os.sep}, so names a folder: give a file name, "
                             f"e.g. {folder}bench.json"),
        (["--markdown", folder], f"--markdown {folder} ends with {os.sep}, so names a folder: give a "
                                 f"file name, e.g. {folder}bench.md"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(argv)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == (f"sdcourse: error: {message} "
                                           f"(see `python -m sdcourse.bench --help`)\n")
    assert not (tmp_path / "results").exists()
