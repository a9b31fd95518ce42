"""Test-wide settings, loaded before any test or notebook kernel starts.

Notebook kernels started by nbval inherit this environment: with TQDM_DISABLE set, the
diffusers progress bars (ipywidgets in a kernel) stay out of the outputs nbval compares;
with SDCOURSE_HEADLESS set, notebooks draw an interactive widget's default once instead of
showing the widget (no front end answers it, and widget messages can hang the runner:
jupyter/nbclient#312).
"""
import os
import shutil
import tempfile

import pytest

from sdcourse.messages import skip_reason

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("SDCOURSE_HEADLESS", "1")
# The stored outputs nbval compares were recorded on the mini model on a CPU: a machine with
# a GPU (and the Hub) would otherwise run the notebooks on real checkpoints, download
# gigabytes and differ. Set either variable to run the notebooks elsewhere.
os.environ.setdefault("SDCOURSE_MODEL", "mini")
os.environ.setdefault("SDCOURSE_DEVICE", "cpu")
# The course's cache (mini model folders, downloads, DreamBooth runs) in a folder of this test
# run's own, removed at its end: the tests neither depend on nor change ~/.cache/sdcourse, and
# two runs at once do not share one.
if "SDCOURSE_CACHE" not in os.environ:
    _TEST_CACHE = os.environ["SDCOURSE_CACHE"] = tempfile.mkdtemp(prefix="sdcourse-tests-")
else:
    _TEST_CACHE = None


def pytest_unconfigure(config):
    if _TEST_CACHE:
        shutil.rmtree(_TEST_CACHE, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """nbval counts a cell that ran as passed; one that printed "SKIPPED: why" (no GPU, no
    Hub, not the mini model: sdcourse.messages.SKIP_MARK) is reported as skipped with that
    reason, so a run can tell the lessons it checked from those it did not."""
    outcome = yield
    report = outcome.get_result()
    if call.when == "call" and report.passed:
        reason = skip_reason(getattr(item, "test_outputs", None))  # (nbval's cell items only)
        if reason is not None:
            report.outcome = "skipped"  # (named by its cell: nbval's line numbers are all 0)
            report.longrepr = (str(item.location[0]), None, f"Skipped: {item.name}: {reason}")


_HOLD_RUN = """import sys
from sdcourse.train import common
common.claim_run(sys.argv[1])
print("held", flush=True)
sys.stdin.read()  # until the test closes this stdin, or kills the process
"""


@pytest.fixture
def hold_run_folder():
    """``hold_run_folder(folder)``: a new process that claims the run folder
    (``sdcourse.train.common.claim_run``), returned once it holds it; it lets go when its
    stdin is closed or it is killed (any still running at the test's end are killed)."""
    import subprocess
    import sys

    children = []

    def hold(folder):
        child = subprocess.Popen([sys.executable, "-c", _HOLD_RUN, str(folder)], text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        children.append(child)
        line = child.stdout.readline()
        assert line == "held\n", child.stderr.read()
        return child

    yield hold
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout, child.stderr):
            if not stream.closed:
                stream.close()
