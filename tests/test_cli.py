"""The ``sdcourse`` command: run (with real kernels on tiny notebooks), doctor, models path."""
import json
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import sdcourse
from sdcourse import cli, models


def write_notebook(path, *cells):
    """A notebook whose cells are code, except strings starting with '#' (markdown)."""
    nb = new_notebook(cells=[new_markdown_cell(c[1:]) if c.startswith("#") else new_code_cell(c)
                             for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def hub(monkeypatch):
    """A fake Hugging Face Hub, online (no test asks the real one): Hub ids in ``hub.cached``
    were downloaded before, those in ``hub.served`` are on the Hub, and ``hub.reachable``
    says whether huggingface.co answers. No SDCOURSE_MODEL, no offline mode."""
    state = types.SimpleNamespace(cached=set(), served=set(), reachable=True)
    monkeypatch.setattr(models, "in_local_cache", lambda repo: repo in state.cached)
    monkeypatch.setattr(models, "on_hub", lambda repo: repo in state.served)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: state.reachable)
    for name in ("SDCOURSE_MODEL", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return state


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail the test if anything tries to execute a notebook."""
    import nbclient

    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was started")

    monkeypatch.setattr(nbclient, "NotebookClient", refuse)


def test_help_via_python_m():
    result = subprocess.run([sys.executable, "-m", "sdcourse", "run", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--out", "--timeout", "--model", "NOTEBOOK"):
        assert option in result.stdout


def test_main_needs_a_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("sdcourse: error: the following arguments are required: "
                                       "COMMAND (see `sdcourse --help`)\n")


@pytest.mark.parametrize("argv, message", [
    (["train", "vae", "--steps", "x"],
     "argument --steps: invalid int value: 'x' (see `sdcourse train --help`)"),
    (["train"], "the following arguments are required: MODEL (see `sdcourse train --help`)"),
    (["evaluate", "video"], "argument SUITE: invalid choice: 'video' (choose from "),
    (["evaluate"], "the following arguments are required: SUITE (see `sdcourse evaluate --help`)"),
    (["models", "path"], "required: TASK (see `sdcourse models path --help`)"),
    (["doctor", "--verbose"], "unrecognized arguments: --verbose (see `sdcourse doctor --help`)"),
    (["train", "vae", "--stpes", "5"], "unrecognized arguments: --stpes 5 (see `sdcourse train --help`)"),
    (["models", "path", "text2img", "-x"], "unrecognized arguments: -x (see `sdcourse models path --help`)"),
])
def test_command_line_errors_are_one_line_in_the_package_style(argv, message, capsys):
    """argparse's errors too: `sdcourse: error: ...` and where to look, not 11 lines of usage
    under a prefix of their own (`sdcourse train: error:`); exit status 2."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("sdcourse: error: ") and message in err, err
    assert len(err.splitlines()) == 1 and "usage:" not in err


def test_version_is_the_installed_packages(capsys):
    from importlib import metadata

    for option in ("--version", "-V"):  # -V as python -V
        with pytest.raises(SystemExit) as info:
            cli.main([option])
        assert info.value.code == 0
        assert capsys.readouterr().out == f"sdcourse {metadata.version('sdcourse')}\n"


def test_help_lists_the_choices_and_defaults(capsys, monkeypatch):
    """`evaluate` names its suites, `models path` its tasks, `train` each trainer's --steps
    default and DIR for --out."""
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps help at the terminal's width
    helps = {}
    for argv in (["evaluate"], ["models", "path"], ["train"]):
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--help"])
        assert info.value.code == 0
        helps[argv[0]] = capsys.readouterr().out
    assert "what to measure: " + ", ".join(cli.EVALUATIONS) in helps["evaluate"]
    assert "one of: " + ", ".join(models.TASKS) in helps["models"]
    assert "--out DIR" in helps["train"] and ("total optimisation steps (default: vae 4000, text2img "
                                              "7000, inpaint 7000, depth 7000, depth-estimator "
                                              "1500, dreambooth 400)") in helps["train"]
    assert "3 or more pictures of the subject (3-5 is typical)" in helps["train"]


def test_case_counts_in_the_help_are_the_suites():
    """DEFAULT_CASES (shown by `evaluate --help`) is what each suite measures without --n."""
    import inspect

    from sdcourse import evaluate

    assert cli.DEFAULT_CASES == {
        suite: inspect.signature(getattr(evaluate, f"evaluate_{suite}")).parameters["n"].default
        for suite in cli.EVALUATIONS}
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["evaluate"]
                    .format_help().split())
    assert ("(default 256 vae, 200 text2img, 100 img2img, inpaint, depth2img, 50 dreambooth; "
            "at most 10000)") in text


def test_steps_defaults_in_the_help_are_the_trainers():
    """DEFAULT_STEPS (shown by `train --help`) is what each trainer does without --steps."""
    import inspect

    from sdcourse.train import depth_estimator, dreambooth, text2img, vae

    def default(function):
        return inspect.signature(function).parameters["steps"].default

    assert cli.DEFAULT_STEPS == {
        "vae": default(vae.train), "text2img": default(text2img.train),
        "inpaint": default(text2img.train), "depth": default(text2img.train),
        "depth-estimator": default(depth_estimator.train),
        "dreambooth": default(dreambooth.train_dreambooth)}
    assert list(cli.DEFAULT_STEPS) == list(cli.TRAINERS)


def test_run_writes_notebook_and_html(tmp_path, capsys):
    nb = write_notebook(tmp_path / "ok.ipynb", "# Title", "import os\nx = 6 * 7\nprint(x)",
                        "print(os.environ.get('SDCOURSE_MODEL'), os.environ.get('TQDM_DISABLE'))")
    out = tmp_path / "out"
    assert cli.main(["run", str(nb), "--out", str(out), "--model", "mini", "--timeout", "120"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ok.html", "ok.ipynb"]
    executed = nbformat.read(out / "ok.ipynb", as_version=4)
    texts = ["".join(o.get("text", "") for o in c.get("outputs", [])) for c in executed.cells]
    assert texts[1] == "42\n" and texts[2] == "mini 1\n"
    assert "42" in (out / "ok.html").read_text()
    assert "1 notebook(s) ran" in capsys.readouterr().out


def test_the_kernel_runs_in_the_notebooks_folder(tmp_path, monkeypatch):
    """Notebooks open and write files by relative paths (07 does): the kernel's working folder
    is the notebook's, wherever `sdcourse run` was started."""
    folder = tmp_path / "course"
    folder.mkdir()
    nb = write_notebook(folder / "where.ipynb",
                        "import os\nprint(os.getcwd())\nopen('made.txt', 'w').close()")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "out"
    assert cli.main(["run", str(nb), "--out", str(out), "--model", "mini", "--timeout", "120"]) == 0
    executed = nbformat.read(out / "where.ipynb", as_version=4)
    printed = executed.cells[0].outputs[0]["text"]
    assert Path(printed.strip()).resolve() == folder.resolve(), printed
    assert (folder / "made.txt").is_file() and not (elsewhere / "made.txt").exists()


def test_run_stops_at_failing_cell(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # to see the progress bar
    bad = write_notebook(tmp_path / "a_bad.ipynb", "print('before')", "# text", "1 / 0", "print('after')")
    never = write_notebook(tmp_path / "b_next.ipynb", "print('not reached')")
    out = tmp_path / "out"
    assert cli.main(["run", str(never), str(bad), "--out", str(out), "--timeout", "120"]) == 1
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()[-1]
    assert "a_bad.ipynb" in err and "cell 3" in err
    assert "ZeroDivisionError: division by zero" in err
    assert "2/4" in stderr and "3/4" not in stderr  # the bar stops before the failed cell
    assert sorted(p.name for p in out.iterdir()) == ["a_bad.html", "a_bad.ipynb"]  # stopped
    executed = nbformat.read(out / "a_bad.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "before\n"
    assert executed.cells[2].outputs[0]["ename"] == "ZeroDivisionError"
    assert executed.cells[3].outputs == []


def test_run_names_the_cells_that_skipped_their_lesson(tmp_path, capsys):
    """A cell that needs what the machine lacks prints "SKIPPED: why"; the run goes on and
    says which cells did not run here, so a teacher knows before the class."""
    nb = write_notebook(tmp_path / "lesson.ipynb", "print('ran')", "# text",
                        "print('SKIPPED: needs a CUDA GPU')", "print('a line; SKIPPED: not at the start')")
    assert cli.main(["run", str(nb), "--out", str(tmp_path / "out"), "--timeout", "120"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "skipped" in line] == [
        "sdcourse run: lesson.ipynb: cell 3 skipped: needs a CUDA GPU"]


@pytest.mark.parametrize("name, message", [("missing.ipynb", "no such notebook"),
                                           ("notes.txt", "not a notebook"),
                                           ("folder.ipynb", "a folder, not a notebook: give .ipynb "
                                                            "files")])
def test_bad_argument_fails_before_any_kernel(tmp_path, capsys, no_kernel, name, message):
    good = write_notebook(tmp_path / "good.ipynb", "print(1)")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "folder.ipynb").mkdir()
    assert cli.main(["run", str(good), str(tmp_path / name), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert name in err and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_cell_error_of_several_lines_is_reported_in_one(tmp_path, capsys):
    bad = write_notebook(tmp_path / "bad.ipynb", "raise ValueError('line one\\nline two')")
    assert cli.main(["run", str(bad), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f"{bad}: cell 1: ValueError: line one "
                                             f"(partial output in {tmp_path / 'out'})")


def test_notebooks_may_stand_on_both_sides_of_an_option(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(cli, "run_notebook", lambda path, out, timeout, env: ran.append(path.name))
    first = write_notebook(tmp_path / "a.ipynb", "print(1)")
    second = write_notebook(tmp_path / "b.ipynb", "print(2)")
    assert cli.main(["run", str(first), "--timeout", "5", str(second),
                     "--out", str(tmp_path / "out")]) == 0
    assert ran == ["a.ipynb", "b.ipynb"]


def test_two_notebooks_of_one_name_are_refused_before_any_kernel(tmp_path, capsys, no_kernel):
    """Their executed copies would both be --out/<name>: the second would replace the first."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_notebook(tmp_path / "a" / "ok.ipynb", "print('a')")
    second = write_notebook(tmp_path / "b" / "ok.ipynb", "print('b')")
    assert cli.main(["run", str(first), str(second), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "both would be written to --out as ok.ipynb" in err[0]
    assert "different --out folders" in err[0] and not (tmp_path / "out").exists()


def test_a_bad_out_or_timeout_is_refused_before_the_notebooks_are_read(tmp_path, capsys, monkeypatch):
    """Cheap checks first: reading the notebooks imports nbformat, the device check torch."""
    monkeypatch.setattr(cli, "resolve_notebooks", lambda paths: pytest.fail("read the notebooks"))
    (tmp_path / "file").write_text("notes")
    assert cli.main(["run", "--out", str(tmp_path / "file")]) == 2
    assert "--out" in capsys.readouterr().err
    assert cli.main(["run", "--timeout", "0"]) == 2
    assert "--timeout 0: must be a positive number" in capsys.readouterr().err
    assert cli.main(["run", "--timeout", "inf"]) == 2  # the kernel client needs a number
    assert "--timeout inf: must be a positive number" in capsys.readouterr().err


def test_a_timeout_in_fractions_of_a_second_is_rounded_up(tmp_path, monkeypatch):
    """The kernel client takes whole seconds (2.5 was a traceback from traitlets)."""
    seen = []
    monkeypatch.setattr(cli, "run_notebook", lambda path, out, timeout, env: seen.append(timeout))
    nb = write_notebook(tmp_path / "a.ipynb", "print(1)")
    assert cli.main(["run", str(nb), "--timeout", "2.5", "--out", str(tmp_path / "out")]) == 0
    assert seen == [3] and isinstance(seen[0], int)


def test_the_kernel_is_this_python_whatever_kernelspec_jupyter_finds_first(tmp_path, monkeypatch):
    """A user's own python3 kernelspec (here one whose Python does not exist) does not decide
    which Python runs the notebooks: the one running `sdcourse run` does, where sdcourse is."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text('{"argv": ["/nonexistent/bin/python", "-m", "ipykernel_launcher", '
                                      '"-f", "{connection_file}"], "display_name": "stale", "language": "python"}')
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == "/nonexistent/bin/python"  # the trap
    nb = write_notebook(tmp_path / "which.ipynb", "import sys\nprint(sys.executable)")
    out = tmp_path / "out"
    assert cli.main(["run", str(nb), "--out", str(out), "--timeout", "120"]) == 0
    printed = nbformat.read(out / "which.ipynb", as_version=4).cells[0].outputs[0]["text"].strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()


def test_each_notebooks_kernel_is_gone_before_the_next_starts(tmp_path):
    """nbclient keeps a kernel alive to the end of the process unless it owns its manager: a
    whole course run kept nine kernels (600 MB and busy threads each) alongside notebook 07's
    training. The second notebook looks for the first one's kernel process."""
    pid_file = tmp_path / "first.pid"
    first = write_notebook(tmp_path / "a.ipynb", f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))")
    second = write_notebook(tmp_path / "b.ipynb", "import os\n"
                            f"pid = int(open({str(pid_file)!r}).read())\n"
                            "try:\n    os.kill(pid, 0)\n    print('alive', pid)\n"
                            "except ProcessLookupError:\n    print('gone')")
    out = tmp_path / "out"
    assert cli.main(["run", str(first), str(second), "--out", str(out), "--timeout", "120"]) == 0
    printed = nbformat.read(out / "b.ipynb", as_version=4).cells[0].outputs[0]["text"].strip()
    assert printed == "gone"


def test_ctrl_c_stops_the_run_in_one_line_with_what_ran_written(tmp_path):
    """Ctrl-C in a terminal (SIGINT to the process group, the kernel's too) is an interruption,
    status 130, not a notebook that failed; the executed part is written."""
    import os
    import signal
    import time

    nb = write_notebook(tmp_path / "slow.ipynb", "print('first')",
                        "import pathlib, time\npathlib.Path('started').touch()\ntime.sleep(120)")
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "sdcourse", "run", str(nb), "--out", str(out)],
                           start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline and run.poll() is None, "the notebook did not start"
            time.sleep(0.1)
        os.killpg(run.pid, signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert run.returncode == 130, err
    assert last == f"sdcourse run: interrupted in {nb}: cell 2 (partial output in {out})"
    assert nbformat.read(out / "slow.ipynb", as_version=4).cells[0].outputs[0]["text"] == "first\n"


@pytest.mark.parametrize("content", ['{"cells": [', "[]", '{"nbformat": 4}', "\udcff"])
def test_corrupt_notebook_fails_before_any_kernel(tmp_path, capsys, monkeypatch, no_kernel, content):
    """A notebook that does not parse (cut short, not a notebook, not UTF-8) is one line
    naming it, before the first notebook runs, whether named or found in notebooks/."""
    good = write_notebook(tmp_path / "00_good.ipynb", "print(1)")
    bad = tmp_path / "01_bad.ipynb"
    bad.write_bytes(content.encode("utf-8", "surrogateescape"))
    assert cli.main(["run", str(good), str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "01_bad.ipynb: not a readable notebook" in err and "restore it" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    monkeypatch.setattr(cli, "default_notebooks_dir", lambda: tmp_path)
    assert cli.main(["run", "--out", str(tmp_path / "out")]) == 2
    assert "01_bad.ipynb: not a readable notebook" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_bad_timeout(tmp_path, capsys, no_kernel, value):
    """A timeout that is not a positive number is one line, before --out is created."""
    good = write_notebook(tmp_path / "good.ipynb", "print(1)")
    out = tmp_path / "out"
    assert cli.main(["run", str(good), "--timeout", value, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"sdcourse: error: --timeout {value}: must be a positive number of seconds\n"
    assert not out.exists()


@pytest.mark.parametrize("under", ["file", "file/sub"])
def test_out_that_cannot_be_created_fails_before_any_kernel(tmp_path, capsys, no_kernel, under):
    """--out inside a regular file: exit status 2, one line naming --out, no kernel."""
    good = write_notebook(tmp_path / "good.ipynb", "print(1)")
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / under / "out"
    assert cli.main(["run", str(good), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"sdcourse: error: --out {out}: a file, not a folder ({tmp_path / 'file'} is): "
                   "choose another folder\n")
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize("argv", [["run", "good.ipynb"], ["train", "vae"]])
@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_out_is_refused_not_taken_for_the_current_folder(argv, value, tmp_path, capsys,
                                                                  monkeypatch, no_kernel):
    """`--out "$DIR"` with DIR unset once ran and wrote the executed copies into the current
    folder (Path("") is "."); for train it silently used the default folder."""
    monkeypatch.chdir(tmp_path)
    write_notebook(tmp_path / "good.ipynb", "print(1)")
    with pytest.raises(SystemExit) as stop:
        cli.main(argv + ["--out", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --out: an empty folder name: give the folder to write to" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.ipynb"]


def test_out_in_the_notebooks_own_folder_is_refused(tmp_path, capsys, monkeypatch, no_kernel):
    """The executed copy has the notebook's name: written beside it, it would replace it."""
    good = write_notebook(tmp_path / "good.ipynb", "print(1)")
    before = good.read_bytes()
    monkeypatch.chdir(tmp_path)
    for out in (str(tmp_path), ".", f"{tmp_path}/"):
        assert cli.main(["run", str(good), "--out", out]) == 2
        assert capsys.readouterr().err == (f"sdcourse: error: --out {Path(out)}: the folder of good.ipynb, "
                                           "which the executed copy would replace: choose another folder\n")
    assert good.read_bytes() == before and sorted(tmp_path.iterdir()) == [good]


@pytest.mark.parametrize("under", ["file", "file/sub"])
def test_a_cache_that_cannot_be_written_fails_run_before_any_kernel(under, tmp_path, capsys,
                                                                    monkeypatch, no_kernel):
    """SDCOURSE_CACHE naming a file: each notebook would fail assembling the mini model after
    its kernel started and leave partial output; now one line first, and doctor says so."""
    good = write_notebook(tmp_path / "good.ipynb", "print(1)")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path / under))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["run", str(good), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sdcourse: error: SDCOURSE_CACHE={tmp_path / under}: a file, not a folder")
    assert err.endswith(": point it at a writable folder or unset it\n") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"cache         error (SDCOURSE_CACHE={tmp_path / under}: a file, not a folder" in out
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path / "cache"))
    assert cli.main(["doctor"]) == 0
    assert f"cache         {tmp_path / 'cache'}\n" in capsys.readouterr().out


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_where_nothing_can_be_written_fails_before_any_kernel(tmp_path, capsys, no_kernel):
    """An --out whose folder takes no files (here /proc, even for root) is one line before
    the first kernel starts, not a traceback after the notebook ran."""
    good = write_notebook(tmp_path / "good.ipynb", "print(1)")
    assert cli.main(["run", str(good), "--out", "/proc/sdcourse-out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdcourse: error: --out /proc/sdcourse-out: cannot write in /proc (")
    assert err.endswith("): choose another folder\n")


def test_cell_past_the_timeout_fails_naming_notebook_and_cell(tmp_path, capfd, monkeypatch):
    """A cell that runs past --timeout stops the run: status 1, one line naming the notebook
    and the cell, the notebooks after it not run. capfd, not capsys: the kernel process writes
    to the same stderr, and its log (a traceback as it is shut down mid-cell) must not show."""
    import nbclient

    monkeypatch.setenv("TQDM_DISABLE", "1")  # the progress bar would add lines to stderr
    timeouts = []

    class Patient(nbclient.NotebookClient):
        """The client run_notebook makes, except that the cells without a sleep get 120 s
        whatever --timeout says: on a loaded machine cell 1 might take more than 5 s to print,
        and the test would fail at the wrong cell. The sleeping cell gets --timeout as given."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            timeouts.append(self.timeout)
            self.timeout_func = lambda cell: self.timeout if "sleep" in cell.source else 120

    monkeypatch.setattr(nbclient, "NotebookClient", Patient)
    # cell 2 would need 600 s: the run ends when its 5 s are up
    slow = write_notebook(tmp_path / "a_slow.ipynb", "print('cell 1 ran')",
                          "import time\ntime.sleep(600)", "x = 2")
    never = write_notebook(tmp_path / "b_next.ipynb", "print('not reached')")
    out = tmp_path / "out"
    assert cli.main(["run", str(slow), str(never), "--out", str(out), "--timeout", "5"]) == 1
    assert timeouts == [5]  # one client, given --timeout; b_next never started
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"sdcourse run: FAILED {slow}: cell 2: CellTimeoutError: ")
    assert "timed out" in err and f"(partial output in {out})" in err
    assert "allow more with --timeout SECONDS" in err
    assert sorted(p.name for p in out.iterdir()) == ["a_slow.html", "a_slow.ipynb"]
    partial = nbformat.read(out / "a_slow.ipynb", as_version=4)
    assert [o.get("text") for o in partial.cells[0].outputs] == ["cell 1 ran\n"]
    assert partial.cells[2].outputs == []  # cell 3 never ran


def test_bad_model_fails_before_any_kernel(tmp_path, capsys, no_kernel):
    good = write_notebook(tmp_path / "good.ipynb", "print(1)")
    typo = str(tmp_path / "no_such_model")
    assert cli.main(["run", str(good), "--model", typo, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "neither a folder nor a Hub id" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_empty_model_fails_before_any_kernel(tmp_path, capsys, no_kernel):
    """--model '' (an unset shell variable) is refused, not silently the default."""
    good = write_notebook(tmp_path / "good.ipynb", "print(1)")
    assert cli.main(["run", str(good), "--model", "", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("sdcourse: error: --model is empty: give mini, real, a Hub id "
                                       "or a pipeline folder\n")


def test_doctor_says_when_the_chosen_checkpoint_cannot_load(monkeypatch, capsys, hub):
    """A Hub id never downloaded, the Hub unreachable or offline mode on: doctor says now that
    it will not load, and what to do (connect, or turn offline mode off); status 1."""
    monkeypatch.setenv("SDCOURSE_MODEL", "someone/not-downloaded")
    hub.reachable = False
    for offline, fix in ((None, "the Hub is unreachable, so it cannot load; connect"),
                         ("1", "offline mode is on (HF_HUB_OFFLINE=1), so it cannot load; unset "
                          "it to reach the Hub")):
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        assert cli.main(["doctor"]) == 1
        line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("text2img"))
        assert line.endswith(f"(asked for by SDCOURSE_MODEL): not downloaded before and {fix}, "
                             "or set SDCOURSE_MODEL=mini"), line
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.reachable = True  # online, but the id is not on the Hub (a typo): what `run` refuses
    assert cli.main(["doctor"]) == 1
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("text2img"))
    assert line.endswith("(asked for by SDCOURSE_MODEL): not on the Hugging Face Hub (no "
                         "model_index.json there), so it cannot load; check the id, or set "
                         "SDCOURSE_MODEL=mini"), line
    hub.served.add("someone/not-downloaded")
    assert cli.main(["doctor"]) == 0
    assert "cannot load" not in capsys.readouterr().out
    monkeypatch.setenv("SDCOURSE_MODEL", "mini")
    assert cli.main(["doctor"]) == 0
    assert "cannot load" not in capsys.readouterr().out


def test_no_notebooks_found(monkeypatch, capsys, no_kernel):
    monkeypatch.setattr(cli, "default_notebooks_dir", lambda: None)
    assert cli.main(["run"]) == 2
    assert "no notebooks found" in capsys.readouterr().err


def test_run_order_and_kernel_environment(tmp_path, monkeypatch, capsys, hub):
    """Notebooks run in name order; the kernel gets SDCOURSE_MODEL, TQDM_DISABLE and
    SDCOURSE_HEADLESS."""
    paths = [write_notebook(tmp_path / f"{name}.ipynb", "pass") for name in ("02_b", "00_a", "01_c")]
    calls = []
    monkeypatch.setattr(cli, "run_notebook", lambda path, out, timeout, env: calls.append((path.name, env)))
    hub.served.add("runwayml/x")
    assert cli.main(["run", *map(str, paths), "--model", "runwayml/x", "--out", str(tmp_path / "o")]) == 0
    assert [name for name, _ in calls] == ["00_a.ipynb", "01_c.ipynb", "02_b.ipynb"]
    assert all(env["SDCOURSE_MODEL"] == "runwayml/x" and env["TQDM_DISABLE"] == "1"
               and env["SDCOURSE_HEADLESS"] == "1" for _, env in calls)


def test_run_refuses_a_model_folder_a_notebook_cannot_use_before_any_kernel(tmp_path, capsys,
                                                                           monkeypatch, no_kernel):
    """A text-to-image folder with notebook 05 (which asks for inpaint) would fail minutes into
    the run: refused first, naming the notebook; without such a notebook it is taken."""
    folder = tmp_path / "t2i"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "config.json").write_text('{"in_channels": 4}')
    text = write_notebook(tmp_path / "00_text.ipynb", 'choice = sdc.choose_model("text2img", device=device)')
    paint = write_notebook(tmp_path / "05_paint.ipynb", "choice = sdc.choose_model('inpaint')")
    assert cli.tasks_of(text) == ["text2img"] and cli.tasks_of(paint) == ["inpaint"]
    out = tmp_path / "out"
    assert cli.main(["run", str(text), str(paint), "--model", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sdcourse: error: --model {folder}: 05_paint.ipynb "
                                               f"needs inpaint: {folder} is a text-to-image checkpoint")
    assert err[0].endswith("or leave 05_paint.ipynb out of this run") and not out.exists()
    ran = []
    monkeypatch.setattr(cli, "run_notebook", lambda path, out, timeout, env: ran.append(path.name))
    assert cli.main(["run", str(text), "--model", str(folder), "--out", str(out)]) == 0
    assert ran == ["00_text.ipynb"]
    (folder / "unet" / "config.json").write_text('{"in_channels": 9}')  # an inpainting folder
    assert cli.main(["run", str(paint), "--model", str(folder), "--out", str(out)]) == 0
    assert ran == ["00_text.ipynb", "05_paint.ipynb"]
    assert cli.main(["run", str(text), "--model", str(folder), "--out", str(out)]) == 2
    assert "00_text.ipynb needs text2img: " in capsys.readouterr().err


def test_a_relative_model_folder_reaches_the_kernel_as_an_absolute_path(tmp_path, monkeypatch, hub):
    """`--model ./folder` is checked here, but the kernel runs in the notebook's folder: it
    gets the folder's absolute path. Keywords and Hub ids pass on as they are."""
    (tmp_path / "nbs").mkdir()
    nb = write_notebook(tmp_path / "nbs" / "00.ipynb", "pass")
    (tmp_path / "work" / "my_model").mkdir(parents=True)
    (tmp_path / "work" / "my_model" / "model_index.json").write_text("{}")
    (tmp_path / "work" / "mini").mkdir()  # a folder named like a keyword: still the keyword
    monkeypatch.chdir(tmp_path / "work")
    hub.cached.add("some/repo")
    seen = []
    monkeypatch.setattr(cli, "run_notebook",
                        lambda path, out, timeout, env: seen.append(env["SDCOURSE_MODEL"]))
    for model in ("./my_model", "my_model", "mini", "some/repo"):
        assert cli.main(["run", str(nb), "--model", model, "--out", str(tmp_path / "o")]) == 0
    model_dir = str(tmp_path / "work" / "my_model")
    assert seen == [model_dir, model_dir, "mini", "some/repo"]
    monkeypatch.setenv("SDCOURSE_MODEL", "my_model")  # so is a folder in the environment
    assert cli.main(["run", str(nb), "--out", str(tmp_path / "o")]) == 0
    assert seen[-1] == model_dir
    monkeypatch.setenv("SDCOURSE_MODEL", "  ")  # blank: unset, as the notebooks read it
    assert cli.main(["run", str(nb), "--out", str(tmp_path / "o")]) == 0
    assert seen[-1].strip() == ""


def test_a_relative_cache_folder_reaches_the_kernel_as_an_absolute_path(tmp_path, monkeypatch):
    """SDCOURSE_CACHE=cache is checked (and would be created) here, but each kernel runs in its
    notebook's folder and would have used another "cache" there: it gets the absolute path."""
    (tmp_path / "nbs").mkdir()
    nb = write_notebook(tmp_path / "nbs" / "00.ipynb", "pass")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("SDCOURSE_CACHE", "cache")
    seen = []
    monkeypatch.setattr(cli, "run_notebook",
                        lambda path, out, timeout, env: seen.append(env["SDCOURSE_CACHE"]))
    assert cli.main(["run", str(nb), "--model", "mini", "--out", str(tmp_path / "o")]) == 0
    assert seen == [str(tmp_path / "work" / "cache")]


@pytest.mark.parametrize("setting, message", [
    ({"SDCOURSE_DEVICE": "tpu"}, "SDCOURSE_DEVICE='tpu' is not a device: use one of cpu, cuda, "
     "cuda:N, mps (or unset SDCOURSE_DEVICE to choose automatically)"),
    ({"SDCOURSE_DEVICE": "cuda:99"}, "SDCOURSE_DEVICE='cuda:99' but "),  # absent, with or without GPU
    ({"SDCOURSE_MODEL": "/nonexistent/folder"}, "SDCOURSE_MODEL=/nonexistent/folder: "
     "'/nonexistent/folder' is neither a folder nor a Hub id"),
    ({"SDCOURSE_MODEL": "nobody/cached", "HF_HUB_OFFLINE": "1"}, "SDCOURSE_MODEL=nobody/cached: "
     "nobody/cached is not in the local Hugging Face cache and offline mode is on "
     "(HF_HUB_OFFLINE=1): unset it to download the model, or use --model mini"),
])
def test_run_checks_the_environment_before_any_kernel(setting, message, tmp_path, monkeypatch,
                                                     capsys, no_kernel, hub):
    """A bad SDCOURSE_DEVICE or SDCOURSE_MODEL is one line (status 2) before a kernel starts,
    not a failure in every notebook's first cell."""
    good = write_notebook(tmp_path / "good.ipynb", "print(1)")
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["run", str(good), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sdcourse: error: {message}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_run_model_option_overrides_the_environment(tmp_path, monkeypatch, hub):
    """--model mini runs although SDCOURSE_MODEL names no model: the option is what the
    kernels get, so the setting it replaces is not checked."""
    nb = write_notebook(tmp_path / "00.ipynb", "pass")
    seen = []
    monkeypatch.setattr(cli, "run_notebook",
                        lambda path, out, timeout, env: seen.append(env["SDCOURSE_MODEL"]))
    monkeypatch.setenv("SDCOURSE_MODEL", "/nonexistent/folder")
    assert cli.main(["run", str(nb), "--model", "mini", "--out", str(tmp_path / "o")]) == 0
    assert seen == ["mini"]


@pytest.mark.parametrize("offline, reachable, message", [
    ("HF_HUB_OFFLINE", True, "offline mode is on (HF_HUB_OFFLINE=1): unset it to download the "
     "model, or use --model mini"),
    ("TRANSFORMERS_OFFLINE", True, "offline mode is on (TRANSFORMERS_OFFLINE=1)"),
    (None, False, "huggingface.co cannot be reached: connect, or use --model mini"),
])
def test_run_refuses_a_hub_id_it_cannot_download(offline, reachable, message, tmp_path, monkeypatch,
                                                 capsys, no_kernel, hub):
    good = write_notebook(tmp_path / "good.ipynb", "print(1)")
    hub.served.add("someone/model")  # on the Hub, but the Hub cannot be asked
    hub.reachable = reachable
    if offline:
        monkeypatch.setenv(offline, "1")
    assert cli.main(["run", str(good), "--model", "someone/model", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdcourse: error: --model someone/model: someone/model is not in the "
                          "local Hugging Face cache and ") and message in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_run_refuses_a_hub_id_the_hub_does_not_have(tmp_path, capsys, no_kernel, hub):
    good = write_notebook(tmp_path / "good.ipynb", "print(1)")
    assert cli.main(["run", str(good), "--model", "nonexistent/repo", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        "sdcourse: error: --model nonexistent/repo: nonexistent/repo is not on the Hugging Face Hub "
        "(no model_index.json there): check the id, or use --model mini\n")
    assert not (tmp_path / "out").exists()


def test_run_takes_a_hub_id_that_can_load(tmp_path, monkeypatch, hub):
    """Downloaded before: runs offline too. On the Hub: runs when it answers."""
    nb = write_notebook(tmp_path / "00.ipynb", "pass")
    seen = []
    monkeypatch.setattr(cli, "run_notebook",
                        lambda path, out, timeout, env: seen.append(env["SDCOURSE_MODEL"]))
    hub.cached.add("someone/cached")
    hub.served.add("someone/served")
    assert cli.main(["run", str(nb), "--model", "someone/served", "--out", str(tmp_path / "o")]) == 0
    hub.reachable = False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["run", str(nb), "--model", "someone/cached", "--out", str(tmp_path / "o")]) == 0
    assert seen == ["someone/served", "someone/cached"]


def test_run_takes_the_course_notebooks_by_name(tmp_path, monkeypatch, capsys):
    """`sdcourse run 00_setup` (the README's names) finds notebooks/00_setup.ipynb, with or
    without .ipynb, from any folder; an unknown name is one line listing the names there are."""
    monkeypatch.chdir(tmp_path)  # no 00_setup.ipynb here
    assert cli.resolve_notebooks(["00_setup"]) == [cli.default_notebooks_dir() / "00_setup.ipynb"]
    folder = tmp_path / "course"
    folder.mkdir()
    for name in ("00_a", "01_b"):
        write_notebook(folder / f"{name}.ipynb", "pass")
    monkeypatch.setattr(cli, "default_notebooks_dir", lambda: folder)
    ran = []
    monkeypatch.setattr(cli, "run_notebook", lambda path, out, timeout, env: ran.append(path))
    assert cli.main(["run", "01_b.ipynb", "00_a", "--out", str(tmp_path / "o")]) == 0
    assert ran == [folder / "00_a.ipynb", folder / "01_b.ipynb"]
    for name in ("00_setp", "sub/00_a"):  # a typo; a path is a path, not a name
        assert cli.main(["run", name, "--out", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err == (f"sdcourse: error: {name}: no such notebook (the "
                                           f"course's in {folder}: 00_a, 01_b)\n")


def test_a_notebook_named_twice_runs_once(tmp_path, monkeypatch, capsys):
    """The same notebook given twice (the same path twice; its name with and without .ipynb;
    its name and its path, absolute or relative) runs once, in its place in name order, and is counted once."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "course"
    folder.mkdir()
    a, b = (write_notebook(folder / f"{name}.ipynb", "pass") for name in ("00_a", "01_b"))
    monkeypatch.setattr(cli, "default_notebooks_dir", lambda: folder)
    ran = []
    monkeypatch.setattr(cli, "run_notebook", lambda path, out, timeout, env: ran.append(path))
    out = str(tmp_path / "o")
    for argv in ([str(b), str(a), str(b), str(a)], ["01_b", "00_a", "01_b.ipynb", "00_a.ipynb"],
                 ["01_b", str(a), str(b), "00_a"],
                 ["01_b", "course/01_b.ipynb", "00_a", "course/../course/00_a.ipynb"]):
        ran.clear()
        assert cli.main(["run", *argv, "--out", out]) == 0, argv
        assert ran == [a, b], argv
        assert "sdcourse run: 2 notebook(s) ran" in capsys.readouterr().out
    assert cli.resolve_notebooks([str(a), str(a)]) == [a]


def test_a_name_without_a_course_folder_asks_for_a_path(tmp_path, monkeypatch, capsys, no_kernel):
    """Installed without the checkout (no notebooks/ anywhere): a name finds nothing, and the
    line says why and to give a path instead."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "default_notebooks_dir", lambda: None)
    assert cli.main(["run", "00_setup", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        "sdcourse: error: 00_setup: no such notebook (no course notebooks/ folder next to the "
        "sdcourse package or in the current directory): give the path of an existing .ipynb "
        "file\n")
    assert not (tmp_path / "out").exists()


def test_default_notebooks_are_the_checkouts(monkeypatch, tmp_path):
    folder = cli.default_notebooks_dir()
    assert folder is not None, "the checkout's notebooks/ folder was not found"
    assert folder == Path(__file__).resolve().parents[1] / "notebooks"
    assert folder.name == "notebooks" and any(folder.glob("*.ipynb"))


@pytest.fixture
def offline(monkeypatch):
    """No network probes in doctor tests: models.hub_reachable() answers False at once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_doctor_prints_versions_and_device(capsys, offline):
    import torch

    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out
    assert "diffusers" in out and "transformers" in out and sys.version.split()[0] in out
    assert f"device        {sdcourse.pick_device()}" in out
    assert "torch threads" in out


def test_doctor_prints_the_dtype_the_device_gets(capsys, offline, monkeypatch):
    """float32 on a CPU, float16 on a GPU (here a faked one): what pick_dtype says, not one
    dtype for every machine."""
    import torch

    monkeypatch.delenv("SDCOURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)  # on one with a GPU
    assert cli.main(["doctor"]) == 0
    assert "device        cpu (dtype float32)" in capsys.readouterr().out.splitlines()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cli.main(["doctor"])  # the task lines may now name real checkpoints not downloaded here
    assert "device        cuda (dtype float16)" in capsys.readouterr().out.splitlines()


def test_doctor_survives_missing_models(monkeypatch, capsys):
    monkeypatch.delattr(sdcourse, "models", raising=False)
    monkeypatch.setitem(sys.modules, "sdcourse.models", None)  # import fails
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "models        error (import of sdcourse.models halted" in out and "Error" not in out


def test_doctor_reports_a_bad_device_setting_once(monkeypatch, capsys, offline):
    """The device line says what is wrong; the tasks, whose automatic choice needs the device,
    point to it instead of repeating it; no exception class names; status 1."""
    monkeypatch.setenv("SDCOURSE_DEVICE", "tpu")
    monkeypatch.delenv("SDCOURSE_MODEL", raising=False)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert out.count("SDCOURSE_DEVICE='tpu' is not a device") == 1
    assert "device        error (SDCOURSE_DEVICE='tpu' is not a device: use one of cpu, cuda, " \
        "cuda:N, mps (or unset SDCOURSE_DEVICE to choose automatically))" in out.splitlines()
    tasks = out.splitlines()[-len(models.TASKS):]
    assert tasks == [f"{task:<13} error (the one above)" for task in models.TASKS]
    assert "ValueError" not in out


def test_doctor_lists_every_task(capsys, offline):
    """Offline: the hub line says unreachable, and each task has its line
    ``<task padded to 13> <kind>: <source> (<reason>)`` with the choice models makes."""
    assert cli.main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "hub           offline mode is on (HF_HUB_OFFLINE=1): unset it to reach the Hub" in lines
    for task in models.TASKS:
        choice = models.choose_model(task)
        assert f"{task:<13} {choice.kind}: {choice.source} ({choice.reason})" in lines, task
    assert not [line for line in lines if "error (" in line]


def test_doctor_names_a_model_folder_a_folder(capsys, offline, monkeypatch, tmp_path):
    """A local folder in SDCOURSE_MODEL is listed as a folder, not as "real"."""
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "unet" / "config.json").write_text('{"in_channels": 4}')
    monkeypatch.setenv("SDCOURSE_MODEL", str(tmp_path))
    cli.main(["doctor"])
    lines = capsys.readouterr().out.splitlines()
    assert f"text2img      folder: {tmp_path} (asked for by SDCOURSE_MODEL)" in lines


def test_doctor_hub_line_follows_hub_reachable(capsys, monkeypatch):
    # no test asks the Hub: every checkpoint is on it, none in the local cache
    monkeypatch.setattr(models, "on_hub", lambda repo: True)
    monkeypatch.setattr(models, "in_local_cache", lambda repo: False)
    monkeypatch.delenv("SDCOURSE_MODEL", raising=False)
    for reachable, word in ((True, "reachable"), (False, "unreachable")):
        monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: reachable)
        assert cli.main(["doctor"]) == 0
        hub = [line for line in capsys.readouterr().out.splitlines() if line.startswith("hub ")]
        assert hub == [f"hub           {word}"]


def test_models_path(capsys, monkeypatch, tmp_path):
    """Every task's shipped mini model resolves to a diffusers folder the CLI prints."""
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path))
    for task in models.TASKS:
        assert cli.main(["models", "path", task]) == 0
        printed = capsys.readouterr().out.strip()
        assert printed == str(models.mini_model_path(task))
        assert (tmp_path / "mini").resolve() in Path(printed).resolve().parents
        assert (Path(printed) / "model_index.json").is_file()


def test_models_path_missing_checkpoint(capsys, monkeypatch, tmp_path):
    """Without the shipped weights (a broken install) it fails with a one-line error."""
    monkeypatch.setattr(models, "MINI_DIR", tmp_path / "empty")
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path))
    assert cli.main(["models", "path", "text2img"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdcourse: error: the mini model for text2img lacks") and "\n" not in err


def test_models_path_without_the_models_module(monkeypatch, capsys):
    """sdcourse.models that does not import (a broken install): one line, status 1, saying
    what failed and what to do, not a traceback."""
    monkeypatch.delattr(sdcourse, "models", raising=False)
    monkeypatch.setitem(sys.modules, "sdcourse.models", None)  # import fails
    assert cli.main(["models", "path", "text2img"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sdcourse: error: models: unavailable (import of sdcourse.models "
                          "halted") and err.count("\n") == 1
    assert err.endswith("): reinstall sdcourse (pip install -e . in the course's checkout), then "
                        "run `sdcourse doctor`\n")


def test_models_path_unknown_task(capsys):
    assert cli.main(["models", "path", "video"]) == 2
    assert "unknown task 'video'" in capsys.readouterr().err


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any trainer starts."""
    from sdcourse.train import depth_estimator, dreambooth, text2img, vae

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    for module, name in [(vae, "train"), (text2img, "train"), (depth_estimator, "train"),
                         (dreambooth, "train_dreambooth")]:
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("model", ["vae", "dreambooth"])
def test_train_out_that_is_a_file_fails_before_work(model, capsys, tmp_path, no_training):
    """A file as --out (or inside one) is one line before any training, and stays as it was."""
    (tmp_path / "file").write_text("keep me")
    extra = (["--instance-dir", str(tmp_path), "--instance-prompt", "a sks circle"]
             if model == "dreambooth" else [])
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert cli.main(["train", model, "--out", str(out)] + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sdcourse: error: --out {out}: a file, not a folder"), err
    assert (tmp_path / "file").read_text() == "keep me"


@pytest.mark.parametrize("argv", [["train", "vae"], ["evaluate", "vae"],
                                  ["evaluate", "dreambooth", "--train-seed"]])
@pytest.mark.parametrize("seed", ["-1", "4294967296", "1.5", "x"])
def test_a_seed_outside_what_generators_take_is_a_usage_error(argv, seed, capsys, no_training):
    """torch.manual_seed and numpy take 0 <= seed < 2**32: anything else stops at the command
    line, not with an overflow traceback after the model has loaded."""
    if argv[-1] != "--train-seed":
        argv = argv + ["--seed"]
    with pytest.raises(SystemExit) as stop:
        cli.main(argv + [seed])
    assert stop.value.code == 2
    assert f"{seed!r} is not a seed: use a whole number from 0 to 4294967295" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "vae", "--stop-at", "0"], "--stop-at must be at least 1, got 0"),
    (["train", "depth-estimator", "--stop-at", "10"], "--stop-at: not for `sdcourse train depth-estimator`"),
    (["train", "vae", "--init", "runs"], "--init: only for `sdcourse train text2img|inpaint|depth`"),
    (["train", "text2img", "--init", "/nonexistent"], "--init /nonexistent: no such folder: give a folder "
     "holding the text2img unet and text_encoder as safetensors"),
    (["train", "inpaint", "--caption-noise", "0.3"], "--caption-noise: only for `sdcourse train text2img`"),
    (["train", "text2img", "--caption-noise", "1.5"], "--caption-noise must be in [0, 1), got 1.5"),
    (["train", "inpaint", "--init", "/nonexistent"], "--init /nonexistent: no such folder"),
    (["train", "inpaint", "--init", __file__], f"--init {__file__}: a file, not a folder: give a folder"),
    (["train", "vae", "--stop-at", "5000"], "--stop-at 5000: beyond the 4000 steps of vae's default "
     "schedule: give --steps too"),
    (["train", "vae", "--token", "foo"], "--token: only for `sdcourse train dreambooth`"),
    (["train", "vae", "--prior-loss-weight", "2"], "--prior-loss-weight: only for `sdcourse train dreambooth`"),
    (["train", "vae", "--prior-loss-weight", "0"], "--prior-loss-weight: only for `sdcourse train dreambooth`"),
    (["train", "depth", "--lr", "0"], "--lr: only for `sdcourse train dreambooth`"),
    (["train", "vae", "--class-dir", "classes"], "--class-dir: only for `sdcourse train dreambooth`"),
    (["train", "vae", "--gradient-checkpointing"], "--gradient-checkpointing: only for `sdcourse train dreambooth`"),
    (["train", "vae", "--steps", "100", "--stop-at", "500"], "--stop-at 500: beyond --steps 100"),
])
def test_train_rejects_bad_options_before_work(argv, message, capsys, tmp_path, no_training):
    assert cli.main(argv + ["--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "text2img", "--init", ""], "argument --init: an empty folder name: give the folder to start from"),
    (["train", "dreambooth", "--instance-dir", " ", "--instance-prompt", "a sks dog"],
     "argument --instance-dir: an empty folder name: give the folder of the subject's pictures"),
    (["train", "dreambooth", "--class-dir", ""], "argument --class-dir: an empty folder name: give "
     "the folder to write to"),
    (["train", "dreambooth", "--token-init", ""], "argument --token-init: an empty value: give words "
     "describing the subject, e.g. 'white black'"),
    (["train", "dreambooth", "--token", ""], "argument --token: an empty value: give a rare token such as sks"),
    (["train", "dreambooth", "--base", ""], "argument --base: an empty value: give a diffusers folder or "
     "Hub id, or leave --base out"),
    (["train", "vae", "--step", "5"], "unrecognized arguments: --step 5 (see `sdcourse train --help`)"),
    (["train", "vae", "--stop", "5"], "unrecognized arguments: --stop 5"),
    (["evaluate", "dreambooth", "--train", "3"], "unrecognized arguments: --train 3"),
])
def test_empty_values_and_shortened_options_are_refused(argv, message, capsys, tmp_path, no_training):
    """An empty value (an unset $VAR in a script) was ignored (--token-init) or read as the
    current folder (--instance-dir, --init); an option's beginning (--step) was taken for the
    option (--steps), so a typo could land on another one."""
    with pytest.raises(SystemExit) as stop:
        cli.main(argv + ["--out", str(tmp_path / "run")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_an_out_that_is_a_link_to_nowhere_is_one_line(capsys, tmp_path, no_training, no_kernel):
    """A dangling link passed the "can --out be written" check, then mkdir failed with a
    traceback (FileExistsError)."""
    (tmp_path / "link").symlink_to(tmp_path / "gone" / "x")
    write_notebook(tmp_path / "a.ipynb", "print(1)")
    for argv in (["train", "vae"], ["run", str(tmp_path / "a.ipynb")]):
        assert cli.main(argv + ["--out", str(tmp_path / "link")]) == 2
        assert capsys.readouterr().err == (
            f"sdcourse: error: --out {tmp_path / 'link'}: {tmp_path / 'link'} is a link to "
            f"{tmp_path / 'gone' / 'x'}, which does not exist: choose another folder\n")
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "text2img", "--n", "0"], "--n must be at least 1, got 0"),
    (["evaluate", "vae", "--train-seed", "1"], "--train-seed is for `evaluate dreambooth`"),
])
def test_evaluate_rejects_bad_options_before_work(argv, message, capsys, monkeypatch):
    from sdcourse import evaluate

    def never(**kwargs):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr(evaluate, f"evaluate_{argv[1]}", never)
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_dreambooth_errors_name_the_command_line_options(tmp_path, capsys):
    """The trainer's checks, reached from the command line, speak of --class-prompt and
    --no-prior, not of the Python arguments class_prompt and prior_preservation=False."""
    from sdcourse import dreambooth_subject

    pictures = tmp_path / "subject"
    pictures.mkdir()
    for i, image in enumerate(dreambooth_subject.make_instance_images(3)):
        image.save(pictures / f"{i}.png")
    base = ["train", "dreambooth", "--instance-prompt", "a sks circle", "--out", str(tmp_path / "run")]
    assert cli.main(base + ["--instance-dir", str(pictures)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdcourse: error: prior preservation needs a --class-prompt: ")
    assert err.endswith("or pass --no-prior\n") and "prior_preservation" not in err
    assert cli.main(base + ["--instance-dir", str(pictures / "0.png")]) == 2
    assert f"instance folder {pictures / '0.png'} is a file, not a folder: " in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("options, message", [
    (["--class-prompt", "a dog"], "--class-prompt: only for prior preservation, which --no-prior "
     "turns off: drop --no-prior or drop it"),
    (["--class-dir", "classes", "--prior-loss-weight", "0"], "--class-dir, --prior-loss-weight: "
     "only for prior preservation, which --no-prior turns off: drop --no-prior or drop them"),
])
def test_train_dreambooth_refuses_prior_options_with_no_prior(options, message, tmp_path, capsys,
                                                              no_training):
    """--no-prior with an option that only prior preservation uses: one line, not ignored."""
    argv = ["train", "dreambooth", "--instance-dir", str(tmp_path), "--instance-prompt",
            "a sks dog", "--no-prior", "--out", str(tmp_path / "run")]
    assert cli.main(argv + options) == 2
    assert capsys.readouterr().err == f"sdcourse: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_train_dreambooth_refuses_publish(tmp_path, capsys, no_training):
    """--publish copies a mini model's weights into the package: a DreamBooth run has none to
    ship, so the option is refused before any training, not ignored."""
    argv = ["train", "dreambooth", "--instance-dir", str(tmp_path), "--instance-prompt",
            "a sks dog", "--out", str(tmp_path / "run")]
    assert cli.main(argv + ["--publish"]) == 2
    assert capsys.readouterr().err == ("sdcourse: error: --publish ships parts of the mini model; "
                                       "a DreamBooth run stays in --out: drop --publish\n")
    assert not (tmp_path / "run").exists()


def test_a_cache_that_is_a_file_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    """SDCOURSE_CACHE naming a file: the mini model's folder cannot be assembled there. `train
    dreambooth` and `evaluate` say so in one line (status 1), before any model loads. (A
    cache that cannot be written but already holds the folder is fine: it is only read.)"""
    from sdcourse import dreambooth_subject
    from sdcourse.train import dreambooth

    def refuse(*args, **kwargs):
        raise AssertionError("got past the mini model's folder")

    monkeypatch.setattr(dreambooth, "load_tokenizer", refuse)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path / "file"))
    pictures = tmp_path / "subject"
    pictures.mkdir()
    for i, image in enumerate(dreambooth_subject.make_instance_images(3)):
        image.save(pictures / f"{i}.png")
    expected = (f"sdcourse: error: cannot assemble the mini model's folder in {tmp_path / 'file'} "
                "(Not a directory): point SDCOURSE_CACHE at a writable folder or unset it\n")
    assert cli.main(["train", "dreambooth", "--instance-dir", str(pictures), "--instance-prompt",
                     "a sks dog", "--no-prior", "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == expected
    assert cli.main(["evaluate", "text2img", "--n", "1"]) == 1
    assert capsys.readouterr().err == expected


def test_evaluate_dreambooth_in_a_cache_it_cannot_train_in_is_one_line(tmp_path, capsys,
                                                                       monkeypatch):
    """A cache that holds the mini model's folder but where the runs cannot be written (here
    its dreambooth folder is a file; read-only in a classroom) was a traceback. It says which
    setting to change, before any model loads."""
    from sdcourse.train import dreambooth

    def refuse(*args, **kwargs):
        raise AssertionError("the base model was loaded")

    monkeypatch.setattr(dreambooth, "load_components", refuse)
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path))
    (tmp_path / "dreambooth").write_text("not a folder")
    assert cli.main(["evaluate", "dreambooth", "--n", "1"]) == 1
    assert capsys.readouterr().err == (
        f"sdcourse: error: cannot train in the cache folder {tmp_path} (a file, not a folder "
        f"({tmp_path / 'dreambooth'} is)): point SDCOURSE_CACHE at a writable folder or unset it\n")


@pytest.mark.parametrize("error", ["sdcourse.models.ModelChoiceError",
                                   "sdcourse.train.dreambooth.DreamBoothError",
                                   "sdcourse.train.common.CheckpointError"])
def test_evaluate_reports_the_packages_setup_errors_in_one_line(error, capsys, monkeypatch):
    """The errors the package raises on purpose, with a message saying what to do, are that
    message; anything else (a bug) still shows its traceback."""
    import importlib

    from sdcourse import evaluate

    module, name = error.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)

    def fail(**kwargs):
        raise cls("something is off: do this")

    monkeypatch.setattr(evaluate, "evaluate_vae", fail)
    assert cli.main(["evaluate", "vae"]) == 1
    assert capsys.readouterr().err == "sdcourse: error: something is off: do this\n"

    def bug(**kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(evaluate, "evaluate_vae", bug)
    with pytest.raises(KeyError):
        cli.main(["evaluate", "vae"])


def test_evaluate_passes_the_training_seed_to_dreambooth(capsys, monkeypatch):
    from sdcourse import evaluate

    calls = []
    monkeypatch.setattr(evaluate, "evaluate_dreambooth", lambda **kw: calls.append(kw) or {"ok": 1})
    assert cli.main(["evaluate", "dreambooth", "--train-seed", "3", "--json"]) == 0
    assert calls == [{"train_seed": 3, "seed": 1234}]
    assert capsys.readouterr().out.strip() == '{"ok": 1}'


def test_evaluate_passes_n_and_prints_a_table(capsys, monkeypatch):
    """`evaluate vae --n 2`: the suite measures 2 cases; without --json each number is a line,
    its name right-aligned in 24 columns, a colon, the value."""
    from sdcourse import evaluate

    calls = []
    monkeypatch.setattr(evaluate, "evaluate_vae",
                        lambda **kw: calls.append(kw) or {"psnr": 31.25, "n": 2})
    assert cli.main(["evaluate", "vae", "--n", "2"]) == 0
    assert calls == [{"n": 2, "seed": 1234}]
    assert capsys.readouterr().out == " " * 20 + "psnr: 31.25\n" + " " * 23 + "n: 2\n"


def test_evaluate_refuses_more_cases_than_a_cpu_can_do_in_one_line(capsys, monkeypatch):
    """--n 1000000000 built a list of 10**9 scenes until memory ran out; the suite's own check
    raised a traceback. Now one line, before the suite is called."""
    from sdcourse import evaluate

    calls = []
    monkeypatch.setattr(evaluate, "evaluate_vae", lambda **kw: calls.append(kw) or {})
    too_many = evaluate.MAX_CASES + 1
    assert cli.main(["evaluate", "vae", "--n", str(too_many)]) == 2
    assert capsys.readouterr().err == (
        f"sdcourse: error: --n {too_many}: that many cases would take hours on a CPU: give "
        f"--n {evaluate.MAX_CASES} or fewer\n")
    assert calls == []


@pytest.fixture
def trainers(monkeypatch, tmp_path):
    """The mini model's trainers and publish functions, faked: each call is recorded as
    (name, args, kwargs) in ``.calls``. models.MINI_DIR is ``.mini`` (tmp_path/mini), with the
    vae and unet the UNet trainers start from, so nothing could be published into the package."""
    from sdcourse.train import depth_estimator, text2img, vae

    mini = tmp_path / "mini"
    for part in ("vae", "unet"):
        (mini / part).mkdir(parents=True)
    monkeypatch.setattr(models, "MINI_DIR", mini)
    calls = []

    def fake(name, result=None):
        return lambda *args, **kwargs: calls.append((name, args, kwargs)) or result

    def unet_train(out, **kwargs):  # recorded; leaves the checkpoint that publishing reads
        calls.append(("text2img.train", (out,), kwargs))
        (out / "checkpoint").mkdir(parents=True, exist_ok=True)
        (out / "checkpoint" / "state.json").write_text(json.dumps(
            {"step": kwargs.get("stop_at") or kwargs.get("steps", 1), "kind": kwargs.get("task", "text2img")}))

    for module, name, result in [(vae, "train", "trained vae"), (vae, "publish", 0.18215),
                                 (depth_estimator, "train", "trained estimator"),
                                 (depth_estimator, "publish", None), (text2img, "publish", None)]:
        short = module.__name__.rsplit(".", 1)[1]  # vae, text2img, depth_estimator
        monkeypatch.setattr(module, name, fake(f"{short}.{name}", result))
    monkeypatch.setattr(text2img, "train", unet_train)
    return types.SimpleNamespace(calls=calls, mini=mini)


def test_ctrl_c_is_one_line_and_status_130(tmp_path, monkeypatch, capsys):
    """Interrupting a run prints one line, no traceback, and exits as shells expect (128 + 2)."""
    (tmp_path / "nbs").mkdir()
    nb = write_notebook(tmp_path / "nbs" / "00.ipynb", "pass")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_notebook", interrupted)
    assert cli.main(["run", str(nb), "--model", "mini", "--out", str(tmp_path / "o")]) == 130
    assert capsys.readouterr().err == "sdcourse: interrupted\n"


@pytest.mark.parametrize("task, remove, message", [
    ("text2img", "vae", "no VAE in {mini}: run `sdcourse train vae --publish` first"),
    ("inpaint", "unet", "the inpaint UNet starts from the text2img one, which is not in {mini}: "
                        "run `sdcourse train text2img --publish` first"),
])
def test_a_unet_without_the_parts_it_starts_from_is_one_line(trainers, tmp_path, capsys, task,
                                                              remove, message):
    import shutil

    shutil.rmtree(trainers.mini / remove)
    assert cli.main(["train", task, "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == f"sdcourse: error: {message.format(mini=trainers.mini)}\n"
    assert trainers.calls == []


def test_train_vae_passes_its_options_on_and_publishes(trainers, tmp_path, capsys):
    out, mini = tmp_path / "run", trainers.mini
    assert cli.main(["train", "vae", "--out", str(out), "--steps", "50", "--stop-at", "20",
                     "--seed", "7", "--publish"]) == 0
    assert trainers.calls == [("vae.train", (out,), {"seed": 7, "steps": 50, "stop_at": 20}),
                              ("vae.publish", ("trained vae", mini / "vae"), {})]
    assert f"published {mini / 'vae'} (scaling_factor 0.18215)" in capsys.readouterr().out
    trainers.calls.clear()
    assert cli.main(["train", "vae", "--out", str(out)]) == 0  # defaults: seed 0, no publish
    assert trainers.calls == [("vae.train", (out,), {"seed": 0})]


def test_train_depth_estimator_passes_its_options_on_and_publishes(trainers, tmp_path, capsys):
    out, mini = tmp_path / "run", trainers.mini
    assert cli.main(["train", "depth-estimator", "--out", str(out), "--steps", "10", "--seed", "3",
                     "--publish"]) == 0
    assert trainers.calls == [("depth_estimator.train", (out,), {"seed": 3, "steps": 10}),
                              ("depth_estimator.publish", ("trained estimator", mini), {})]
    assert f"published depth_estimator and depth_processor into {mini}" in capsys.readouterr().out


def _fake_init(init: Path, weights: str = "safetensors") -> None:
    """A folder shaped like a text2img checkpoint (the trainers are fakes: empty files do)."""
    for part, name in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (init / part).mkdir(parents=True)
        (init / part / "config.json").write_text('{"in_channels": 4}' if part == "unet" else "{}")
        (init / part / f"{name}.{weights}").write_bytes(b"")


def test_train_init_takes_safetensors_only(trainers, tmp_path, capsys):
    """An --init folder of pickled .bin weights is refused in one line before any work: the
    course loads weights from safetensors only."""
    init = tmp_path / "init"
    _fake_init(init, weights="bin")
    assert cli.main(["train", "text2img", "--out", str(tmp_path / "run"), "--init", str(init)]) == 2
    assert (f"--init {init}: no unet/diffusion_pytorch_model.safetensors, "
            "text_encoder/model.safetensors there") in capsys.readouterr().err
    assert trainers.calls == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, message", [
    ('{"in_channels": 9}', "its unet takes 9 input channels, not the text2img UNet's 4"),
    ("", "unet/config.json is not a UNet's config (JSONDecodeError: "),
    ('{"sample_size": 8}', "unet/config.json is not a UNet's config (KeyError: 'in_channels')")])
def test_train_init_must_hold_a_text2img_unet(trainers, tmp_path, capsys, config, message):
    """The inpainting model's folder (9 channels), or a config cut short, is refused in one
    line before any work, not after seconds of loading with a library traceback."""
    init = tmp_path / "init"
    _fake_init(init)
    (init / "unet" / "config.json").write_text(config)
    assert cli.main(["train", "inpaint", "--out", str(tmp_path / "run"), "--init", str(init)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].endswith("runs/text2img/at_text_encoder_freeze")
    assert trainers.calls == [] and not (tmp_path / "run").exists()


def test_train_publish_into_a_package_that_cannot_be_written_is_refused_first(
        trainers, tmp_path, capsys, monkeypatch):
    """--publish writes into the installed package: a read-only install is found out before
    hours of training, not after."""
    from sdcourse import models

    (tmp_path / "a file").write_text("")
    monkeypatch.setattr(models, "MINI_DIR", tmp_path / "a file" / "mini")
    assert cli.main(["train", "vae", "--out", str(tmp_path / "run"), "--publish"]) == 2
    err = capsys.readouterr().err
    assert f"--publish into {tmp_path / 'a file' / 'mini'}: " in err
    assert err.endswith(": install sdcourse where you can write (pip install -e . in a clone) or "
                        "train without --publish\n")
    assert trainers.calls == []
    # DreamBooth keeps its own answer: a run stays in --out, nothing is published
    assert cli.main(["train", "dreambooth", "--out", str(tmp_path / "run"), "--publish"]) == 2
    assert "--publish ships parts of the mini model; a DreamBooth run stays in --out: drop " \
           "--publish" in capsys.readouterr().err


def test_train_text2img_passes_its_options_on_and_publishes(trainers, tmp_path, capsys):
    out, mini, init = tmp_path / "run", trainers.mini, tmp_path / "init"
    _fake_init(init)
    assert cli.main(["train", "text2img", "--out", str(out), "--init", str(init), "--caption-noise",
                     "0.25", "--seed", "5", "--steps", "40", "--stop-at", "4", "--publish"]) == 0
    paths = {"vae_path": mini / "vae", "tokenizer_path": mini / "tokenizer"}
    assert trainers.calls == [
        ("text2img.train", (out,), {**paths, "init": init, "caption_noise": 0.25, "seed": 5,
                                    "steps": 40, "stop_at": 4}),
        ("text2img.publish", (out / "checkpoint", mini), {"task": "text2img"})]
    assert f"published the text2img UNet into {mini}" in capsys.readouterr().out
    trainers.calls.clear()
    assert cli.main(["train", "text2img", "--out", str(out)]) == 0  # from scratch, captions as written
    assert trainers.calls == [("text2img.train", (out,), {**paths, "seed": 0})]


@pytest.mark.parametrize("task", ["inpaint", "depth"])
def test_train_inpaint_and_depth_start_from_the_mini_model_or_init(task, trainers, tmp_path, capsys):
    """Without --init the UNet starts from the shipped text2img one (MINI_DIR); --init names
    another folder. --seed, --stop-at and --publish reach the trainer and publish."""
    out, mini, init = tmp_path / "run", trainers.mini, tmp_path / "init"
    paths = {"vae_path": mini / "vae", "tokenizer_path": mini / "tokenizer"}
    assert cli.main(["train", task, "--out", str(out), "--seed", "11", "--stop-at", "3",
                     "--publish"]) == 0
    assert trainers.calls == [
        ("text2img.train", (out,), {**paths, "task": task, "init": mini, "seed": 11, "stop_at": 3}),
        ("text2img.publish", (out / "checkpoint", mini), {"task": task})]
    assert f"published the {task} UNet into {mini}" in capsys.readouterr().out
    _fake_init(init)
    trainers.calls.clear()
    assert cli.main(["train", task, "--out", str(out), "--init", str(init)]) == 0
    assert trainers.calls == [("text2img.train", (out,),
                               {**paths, "task": task, "init": init, "seed": 0})]


@pytest.mark.parametrize("options, expected", [
    ([], {"lora": True, "train_text_encoder": False, "seed": 0, "gradient_checkpointing": False}),
    (["--full", "--train-text-encoder", "--seed", "9"],
     {"lora": False, "train_text_encoder": True, "seed": 9}),
])
def test_train_dreambooth_passes_full_text_encoder_and_seed_on(options, expected, tmp_path,
                                                               monkeypatch, capsys):
    from sdcourse.train import dreambooth

    seen = []
    monkeypatch.setattr(dreambooth, "train_dreambooth",
                        lambda *args, **kwargs: seen.append(kwargs) or "trained")
    assert cli.main(["train", "dreambooth", "--instance-dir", str(tmp_path), "--instance-prompt",
                     "a sks dog", "--class-prompt", "a dog", "--out", str(tmp_path / "run"),
                     *options]) == 0
    assert len(seen) == 1 and {name: seen[0][name] for name in expected} == expected


def test_train_dreambooth_passes_every_option_on(tmp_path, monkeypatch, capsys):
    """Each option reaches train_dreambooth as the argument it names; a repeated
    --instance-prompt becomes one prompt per picture (a list), a single one stays a string."""
    from sdcourse.train import dreambooth

    seen = []
    monkeypatch.setattr(dreambooth, "train_dreambooth",
                        lambda *args, **kwargs: seen.append((args, kwargs)) or "trained")
    out, instance, classes = tmp_path / "run", tmp_path / "pictures", tmp_path / "classes"
    assert cli.main(["train", "dreambooth", "--instance-dir", str(instance),
                     "--instance-prompt", "a qwx dog on grass", "--instance-prompt", "a qwx dog",
                     "--class-prompt", "a dog", "--out", str(out), "--token", "qwx",
                     "--steps", "30", "--base", "some/base", "--prior-loss-weight", "0.5",
                     "--class-dir", str(classes), "--token-init", "brown dog", "--lr", "2e-4",
                     "--gradient-checkpointing", "--seed", "4"]) == 0
    (args, kwargs), = seen
    assert args == (instance, ["a qwx dog on grass", "a qwx dog"], ["a dog"], out)
    assert kwargs == {"base": "some/base", "lora": True, "train_text_encoder": False,
                      "prior_preservation": True, "lr": 2e-4, "class_dir": classes, "seed": 4,
                      "token_init": "brown dog", "gradient_checkpointing": True, "token": "qwx",
                      "steps": 30, "prior_loss_weight": 0.5}
    seen.clear()
    assert cli.main(["train", "dreambooth", "--instance-dir", str(instance), "--instance-prompt",
                     "a sks dog", "--no-prior", "--out", str(out)]) == 0
    (args, kwargs), = seen
    assert args[1] == "a sks dog" and kwargs["prior_preservation"] is False
    assert not {"token", "steps", "prior_loss_weight"} & kwargs.keys()  # the trainer's defaults


def test_readme_cli_reference_covers_every_command_and_option():
    """README's CLI reference names each subcommand, its choices and every option the parser has."""
    import argparse
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = re.search(r"^## CLI reference\n(.*?)^## ", readme, re.S | re.M).group(1)
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert f"sdcourse {name}" in section, name
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):  # models path
                assert all(f"sdcourse {name} {inner}" in section for inner in action.choices)
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in section, f"sdcourse {name} {option}"
            if not action.option_strings and action.choices and not isinstance(
                    action, argparse._SubParsersAction):
                for choice in action.choices:
                    assert re.search(rf"\b{re.escape(choice)}\b", section), f"sdcourse {name} {choice}"
