"""The ``sdcourse`` command: run the course headless, check the machine, train and measure
the mini model.

    sdcourse run [NOTEBOOK ...] [--out DIR] [--timeout SECONDS] [--model mini|real|ID]
    sdcourse doctor
    sdcourse models path TASK
    sdcourse train vae|text2img|inpaint|depth|depth-estimator [--out DIR] [--steps N] ...
    sdcourse train dreambooth --instance-dir DIR --instance-prompt PROMPT [--class-prompt ...] ...
    sdcourse evaluate vae|text2img|img2img|inpaint|depth2img|dreambooth [--n N] [--json] ...

Each subcommand is two small functions: ``_add_<name>(subparsers)`` declares its arguments
and ``cmd_<name>(args) -> int`` does the work. To add one, write the pair and list
``_add_<name>`` in :data:`COMMANDS`.

Errors are one line on stderr (``sdcourse: error: ...``, argparse's own too): exit status 2
for a bad command line or setting, 1 for anything else; a notebook that fails is one line
naming the notebook, the cell and the error, status 1.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from .files import unwritable, write_atomic
from .messages import INIT_HINT, first_line, skip_reason

DEFAULT_OUT = Path("build") / "course"


class CliError(Exception):
    """A failure reported as one line ``sdcourse: error: ...``; ``status`` is the exit status."""

    status = 1


class UsageError(CliError):
    """A mistake in the command line (bad path, bad value): exit status 2, like argparse's."""

    status = 2


class NotebookInterrupted(KeyboardInterrupt):
    """Ctrl-C while `sdcourse run` executed a notebook; its text says where (notebook, cell)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line in the package's style, ``sdcourse: error:
    ...``, with where to look, instead of the whole usage (11 lines for ``train``) under the
    subcommand's own prefix. Subparsers are of this class too (argparse makes them so).

    Options are not matched by their beginnings (``--step`` is not ``--steps``, ``--stop``
    not ``--stop-at``): a typo is refused instead of landing on another option."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"sdcourse: error: {message} (see `{self.prog} --help`)\n")


def given(what: str, convert=str):
    """An argparse type refusing an empty value (an unset ``$DIR`` in a script), which would
    otherwise be ignored or, for a path, mean the current folder; ``what`` says what to give."""
    def parse(text: str):
        if not text.strip():
            empty = "an empty folder name" if convert is Path else "an empty value"
            raise argparse.ArgumentTypeError(f"{empty}: give {what}")
        return convert(text)
    return parse


#: Output folders: an empty value would write into the current folder.
folder_arg = given("the folder to write to", Path)


# --------------------------------------------------------------------------- run


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="execute the course notebooks headless, writing .ipynb and .html",
        description="Execute notebooks in name order with a fresh kernel each, writing the "
        "executed notebook and an HTML copy to --out. Stops at the first failing cell.",
    )
    p.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                   help="notebooks to run: paths, or names of the course's notebooks such as "
                   "00_setup (default: every notebooks/*.ipynb of the course)")
    p.add_argument("--out", type=folder_arg, default=DEFAULT_OUT, metavar="DIR",
                   help=f"where executed notebooks and HTML go (default: {DEFAULT_OUT})")
    p.add_argument("--timeout", type=float, default=3600, metavar="SECONDS",
                   help="limit for one cell, in seconds (default: 3600)")
    p.add_argument("--model", metavar="mini|real|ID",
                   help="which checkpoints the notebooks load: sets SDCOURSE_MODEL for the kernel "
                   "(default: as the environment says, else the notebooks' own choice)")
    p.set_defaults(func=cmd_run)


def default_notebooks_dir() -> Path | None:
    """The course's notebooks/ folder: next to the package (a checkout), else ./notebooks."""
    import sdcourse

    for folder in (Path(sdcourse.__file__).resolve().parent.parent / "notebooks", Path("notebooks")):
        if folder.is_dir() and any(folder.glob("*.ipynb")):
            return folder
    return None


def resolve_notebooks(paths: list[str]) -> list[Path]:
    """Check the requested notebooks (or find the course's) and sort them by name.

    A notebook is a path, or the name of one of the course's (``00_setup`` or
    ``00_setup.ipynb``, as the README's table names them) found in :func:`default_notebooks_dir`.
    Every notebook is parsed here, so a corrupt one is reported before any of them runs."""
    if not paths:
        folder = default_notebooks_dir()
        if folder is None:
            raise UsageError("no notebooks found (looked for notebooks/*.ipynb next to the "
                             "sdcourse package and in the current directory); pass notebook paths")
        found = sorted(folder.glob("*.ipynb"), key=lambda p: p.name)
    else:
        found = []
        for raw in paths:
            path = Path(raw)
            if path.is_dir():
                raise UsageError(f"{raw}: a folder, not a notebook: give .ipynb files (e.g. "
                                 f"{raw.rstrip('/')}/*.ipynb), or no NOTEBOOK to run the whole course")
            if not path.is_file():
                path = _course_notebook(raw)
            if path.suffix != ".ipynb":
                raise UsageError(f"{raw}: not a notebook (expected a .ipynb file)")
            if all(path.resolve() != seen.resolve() for seen in found):  # one file, however named
                found.append(path)
        found.sort(key=lambda p: (p.name, str(p)))
        for first, second in zip(found, found[1:]):
            if first.name == second.name:  # both would be written as out/<name>
                raise UsageError(f"{first} and {second}: both would be written to --out as "
                                 f"{first.name}: run them with different --out folders")
    for path in found:
        _check_readable(path)
    return found


def _course_notebook(name: str) -> Path:
    """The course's notebook called ``name`` (with or without .ipynb), else a one-line
    UsageError that lists the names there are."""
    folder = default_notebooks_dir()
    if folder is None:
        raise UsageError(f"{name}: no such notebook (no course notebooks/ folder next to the "
                         "sdcourse package or in the current directory): give the path of an "
                         "existing .ipynb file")
    if Path(name).name == name:  # a bare name, not a path
        path = folder / (name if name.endswith(".ipynb") else name + ".ipynb")
        if path.is_file():
            return path
    names = ", ".join(sorted(p.stem for p in folder.glob("*.ipynb")))
    raise UsageError(f"{name}: no such notebook (the course's in {folder}: {names})")


def _check_readable(path: Path) -> None:
    """Raise a one-line UsageError unless ``path`` parses as a notebook."""
    import warnings

    import nbformat

    try:
        with warnings.catch_warnings():  # schema warnings: nbclient runs such notebooks anyway
            warnings.simplefilter("ignore")
            nbformat.read(path, as_version=4)
    except Exception as error:  # not JSON, not UTF-8, not a notebook's structure, unreadable
        reason = first_line(error, limit=120, named=True)
        raise UsageError(f"{path}: not a readable notebook ({reason}): restore it from git or "
                         "download it again") from None


def check_out(out: Path, option: str = "--out", advice: str = "choose another folder") -> None:
    """Check, before any work, that the output folder can be made and written to: a run must
    not compute for minutes and then fail to save what it computed."""
    problem = unwritable(out)
    if problem:
        raise UsageError(f"{option} {out}: {problem}: {advice}")


def _write_outputs(nb, source: Path, out: Path) -> None:
    """The executed notebook and its HTML rendering, as out/<name>.ipynb and out/<name>.html."""
    import nbformat
    from nbconvert import HTMLExporter

    write_atomic(out / source.name, nbformat.writes(nb))
    html, _ = HTMLExporter().from_notebook_node(nb)
    write_atomic(out / (source.stem + ".html"), html)


def _failure_line(path: Path, cell: int | None, error: BaseException) -> str:
    """``notebooks/x.ipynb: cell 3: ZeroDivisionError: division by zero``."""
    ename = getattr(error, "ename", None) or type(error).__name__
    # the cell's own exception (its text may run to several lines), else a timeout's or a dead
    # kernel's message: the first line says it
    evalue = getattr(error, "evalue", None)
    evalue = first_line(error if evalue is None else evalue, default="")
    if ename == "CellTimeoutError":
        evalue = f"{evalue.rstrip('.')}: allow more with --timeout SECONDS"
    where = f"cell {cell}" if cell is not None else "before the first cell"
    return f"{path}: {where}: {ename}" + (f": {evalue}" if evalue else "")


def this_python_kernel():
    """A kernel manager for an ipykernel started with this interpreter (``sys.executable``):
    the Python that has sdcourse. Asked for "python3", Jupyter would take the first kernelspec
    of that name it finds, and a user's own (``~/.local/share/jupyter/kernels/python3``) may
    point at another Python, where every notebook would fail to import sdcourse."""
    import ipykernel.kernelspec
    from jupyter_client import AsyncKernelManager  # (nbclient's: a blocking one stalls its loop)
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(resource_dir=ipykernel.kernelspec.RESOURCES,
                              **ipykernel.kernelspec.get_kernel_dict())

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


def notebook_client(nb, **kwargs):
    """An nbclient ``NotebookClient`` for ``nb`` on :func:`this_python_kernel`, which shuts its
    kernel down when the notebook has run.

    Why: nbclient shuts down only the kernels of managers it made itself ("owns"); given one,
    it leaves the kernel running until the process exits. `sdcourse run` then kept every
    notebook's kernel alive to the end, each with its models in memory (about 600 MB) and
    threads still taking CPU time from the notebooks after it.
    """
    from nbclient import NotebookClient

    client = NotebookClient(nb, km=this_python_kernel(), **kwargs)
    client.owns_km = True  # a new manager, made for this notebook alone: nbclient cleans it up
    return client


def run_notebook(path: Path, out: Path, timeout: int, env: dict) -> str | None:
    """Execute one notebook in a fresh kernel; write what ran. None if it passed, else why not.

    The kernel is ipykernel's, run by this interpreter (:func:`this_python_kernel`), its
    working directory is the notebook's folder, and cells are counted from 1 in the message.
    Ctrl-C stops it: what ran is written, then NotebookInterrupted says where.
    """
    import nbformat
    from tqdm.auto import tqdm

    nb = nbformat.read(path, as_version=4)
    current = {"cell": None}
    bar = tqdm(total=len(nb.cells), desc=path.name, unit="cell", file=sys.stderr,
               disable=bool(os.environ.get("TQDM_DISABLE")))  # (as set now: tqdm reads it at import)

    def before(cell, cell_index, **_):
        current["cell"] = cell_index + 1

    def after(cell, cell_index, **_):
        # markdown cells before this one count as done; a cell that raised does not
        failed = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
        bar.update(cell_index + (not failed) - bar.n)

    client = notebook_client(
        nb, timeout=timeout,
        resources={"metadata": {"path": str(path.resolve().parent)}},
        on_cell_execute=before, on_cell_executed=after,
        # the kernel's own log (not the cells' output) would break the progress bar and the
        # one-line failure: a kernel shut down mid-cell (a timeout) logs a ZMQError traceback
        extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
    )
    failure, interrupted = None, False
    try:
        client.execute(env=env)
        bar.update(bar.total - bar.n)  # markdown cells run no hook: fill the bar
    except KeyboardInterrupt:
        interrupted = True
    except Exception as error:  # a cell raised, timed out, or the kernel died
        # On Ctrl-C, nbclient's own signal handler shuts the kernel down, so the cell fails
        # as a "dead kernel"; that handler is what sets this attribute
        interrupted = getattr(client, "_async_cleanup_kernel_future", None) is not None
        failure = None if interrupted else _failure_line(path, current["cell"], error)
    finally:
        bar.close()
    for index, cell in enumerate(nb.cells, 1):  # what did not run here, and why
        reason = skip_reason(cell.get("outputs")) if cell.cell_type == "code" else None
        if reason:
            print(f"sdcourse run: {path.name}: cell {index} skipped: {reason}", file=sys.stderr)
    try:
        _write_outputs(nb, path, out)
    except OSError as error:  # checked writable before, but a disk can fill up meanwhile
        raise CliError(f"{out}: cannot write the executed {path.name} "
                       f"({error.strerror or error})") from None
    if interrupted:
        raise NotebookInterrupted(f"{path}: " + (f"cell {current['cell']}" if current["cell"]
                                                 else "before the first cell"))
    return failure


def check_device_setting() -> None:
    """A one-line UsageError unless SDCOURSE_DEVICE (if set) names a device this machine has:
    every notebook starts with pick_device(), so a bad value would fail each one's first cell."""
    from .device import pick_device

    try:
        pick_device()
    except (ValueError, RuntimeError) as error:  # its one-line messages: unknown, absent
        raise UsageError(str(error)) from None


def check_cache_setting() -> None:
    """A one-line UsageError unless the course's cache folder (SDCOURSE_CACHE, else
    ~/.cache/sdcourse) can be made and written to: every notebook assembles the mini model's
    folder there, so a bad value would fail each one after its kernel started."""
    from .files import cache_root

    root = cache_root()
    problem = unwritable(root)
    if problem and os.environ.get("SDCOURSE_CACHE"):
        raise UsageError(f"SDCOURSE_CACHE={root}: {problem}: point it at a writable folder or unset it")
    if problem:
        raise UsageError(f"the cache folder {root}: {problem}: set SDCOURSE_CACHE to a writable folder")


def tasks_of(notebook: Path) -> list[str]:
    """The tasks a notebook asks the chosen model to serve: its ``choose_model("TASK"`` calls
    (each course notebook makes one; a ``load_pipeline`` given a fixed model needs no check)."""
    import re

    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    return sorted(set(re.findall(r"choose_model\(\s*[\"']([\w]+)[\"']", code)))


def check_model_setting(model: str | None, notebooks: list[Path] = ()) -> str | None:
    """Check the model the kernels will load (``--model``, else SDCOURSE_MODEL) and return the
    value to give them as SDCOURSE_MODEL (None: leave the environment as it is).

    Refused in one line (UsageError): what choose_model refuses (no such folder, not a Hub id,
    a folder whose UNet is another task's than a notebook asks for: a text-to-image folder
    for notebook 05's inpainting), and a Hub id that cannot load: not in the local cache while
    offline or with the Hub unreachable, or not on the Hub. A folder becomes absolute: it is
    given relative to here, but each kernel runs in its notebook's folder."""
    from . import models

    if model is not None and not model.strip():  # (an unset $MODEL in a script): refused, not ignored
        raise UsageError("--model is empty: give mini, real, a Hub id or a pipeline folder")
    if model is not None:
        what = f"--model {model}"
    elif os.environ.get("SDCOURSE_MODEL", "").strip():  # blank: not set, as choose_model reads it
        model = os.environ["SDCOURSE_MODEL"]
        what = f"SDCOURSE_MODEL={model}"
    else:  # the notebooks choose automatically: nothing asked for can be wrong
        return None
    if model.strip().lower() not in ("mini", "real") and os.path.isdir(model):  # a pipeline folder
        try:
            models.check_model_source(model)
        except models.ModelChoiceError as error:
            raise UsageError(f"{what}: {error}") from None
        for notebook in notebooks:  # its UNet must serve what each notebook asks of it
            for task in tasks_of(notebook):
                try:
                    models.check_folder_serves(task, Path(model))
                except models.ModelChoiceError as error:
                    raise UsageError(f"{what}: {notebook.name} needs {task}: {error}; or leave "
                                     f"{notebook.name} out of this run") from None
        return os.path.abspath(model)
    try:
        choice = models.choose_model("text2img", model)
    except models.ModelChoiceError as error:
        raise UsageError(f"{what}: {error}") from None
    if choice.kind == "mini":
        return model
    try:  # a Hub id (for "real", the text2img one)
        models.check_fetchable(choice.source, otherwise="use --model mini")
    except models.ModelChoiceError as error:
        raise UsageError(f"{what}: {error}") from None
    return model


def cmd_run(args) -> int:
    """Run the notebooks one after the other; stop at the first failure."""
    # every check happens before any kernel starts, the cheap ones before the slow imports
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError(f"--timeout {args.timeout:g}: must be a positive number of seconds")
    timeout = math.ceil(args.timeout)  # (the kernel client counts whole seconds)
    check_out(args.out)
    notebooks = resolve_notebooks(args.notebooks)  # (parses each: imports nbformat)
    check_device_setting()  # (imports torch)
    model = check_model_setting(args.model, notebooks)
    sources = [path for path in notebooks if path.parent.resolve() == args.out.resolve()]
    if sources:
        raise UsageError(f"--out {args.out}: the folder of {sources[0].name}, which the executed "
                         "copy would replace: choose another folder")
    check_cache_setting()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {args.out}: cannot create it ({error.strerror})") from None
    # no progress bars in the outputs; SDCOURSE_HEADLESS: no front end, so interactive widgets
    # are drawn once at their default (their messages can hang the runner, jupyter/nbclient#312)
    env = dict(os.environ, TQDM_DISABLE="1", SDCOURSE_HEADLESS="1")
    if model:
        env["SDCOURSE_MODEL"] = model
    if os.environ.get("SDCOURSE_CACHE"):  # checked from here; each kernel runs in its notebook's folder
        from .files import cache_root

        env["SDCOURSE_CACHE"] = str(cache_root())  # (absolute, ~ expanded)
    for path in notebooks:
        try:
            failure = run_notebook(path, args.out, timeout, env)
        except NotebookInterrupted as where:
            print(f"sdcourse run: interrupted in {where} (partial output in {args.out})", file=sys.stderr)
            return 130
        if failure:
            print(f"sdcourse run: FAILED {failure} (partial output in {args.out})", file=sys.stderr)
            return 1
    print(f"sdcourse run: {len(notebooks)} notebook(s) ran; executed copies and HTML in {args.out}")
    return 0


# --------------------------------------------------------------------------- doctor


def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="print versions, device, Hub access and model choices",
                       description="What this machine would run the course with, and why.")
    p.set_defaults(func=cmd_doctor)


def _version(dist: str) -> str:
    """The installed version of ``dist``; for torch its own ``__version__``, which names the
    build (``2.13.0+cpu``, ``2.13.0+cu130``) where PyPI's CUDA wheel's metadata says ``2.13.0``:
    whether a machine has the CPU or the CUDA build is what a teacher asks doctor."""
    if dist == "torch":
        try:
            import torch

            return torch.__version__
        except Exception:  # noqa: BLE001 - a broken torch is reported below, with its error
            pass
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_doctor(args) -> int:
    """A few lines about this machine; every part reports its own problem instead of crashing.

    A problem is printed once, as its one-line message: a bad SDCOURSE_DEVICE also fails each
    task's automatic model choice, and five copies of it hid the rest. The exit status is 1
    when there was a problem, so a script (or a classroom check) can tell."""
    problems: list[str] = []

    def problem(label: str, error: BaseException) -> None:
        message = first_line(error)
        print(f"{label:<13} " + ("error (the one above)" if message in problems else f"error ({message})"))
        problems.append(message)

    print(f"python        {platform.python_version()} ({sys.executable})")
    for dist in ("torch", "diffusers", "transformers"):
        print(f"{dist:<13} {_version(dist)}")
    try:
        import torch

        from .device import pick_device, pick_dtype

        device = pick_device()
        print(f"device        {device} (dtype {str(pick_dtype(device)).removeprefix('torch.')})")
        print(f"torch threads {torch.get_num_threads()}")
    except Exception as error:
        problem("device", error)
    try:
        from . import models
    except Exception as error:
        problem("models", error)
        return 1
    try:  # where the mini model's folders go: every notebook needs it
        check_cache_setting()
        from .files import cache_root

        print(f"cache         {cache_root()}")
    except UsageError as error:
        problem("cache", error)
    hub = None
    offline = models.offline_mode()  # not "unreachable" then: connecting would not help
    why = f"offline mode is on ({models.offline_setting()})" if offline else "the Hub is unreachable"
    fix = "unset it to reach the Hub" if offline else "connect"
    try:
        hub = models.hub_reachable()
        print(f"hub           {'reachable' if hub else f'{why}: {fix}' if offline else 'unreachable'}")
    except Exception as error:
        problem("hub", error)
    for task in models.TASKS:
        try:
            choice = models.choose_model(task)
        except Exception as error:
            problem(task, error)
            continue
        kind = "folder" if choice.kind == "real" and os.path.isdir(choice.source) else choice.kind
        line = f"{task:<13} {kind}: {choice.source} ({choice.reason})"
        if choice.kind == "real" and hub is False and not models.available_offline([choice.source]):
            line += f": not downloaded before and {why}, so it cannot load; {fix}, or set SDCOURSE_MODEL=mini"
            problems.append(line)
        elif (choice.kind == "real" and hub and not models.available_offline([choice.source])
              and not models.on_hub(choice.source)):  # (a typo, or a repository deleted since)
            line += (": not on the Hugging Face Hub (no model_index.json there), so it cannot "
                     "load; check the id, or set SDCOURSE_MODEL=mini")
            problems.append(line)
        print(line)
    return 1 if problems else 0


# --------------------------------------------------------------------------- models


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="where the embedded mini checkpoints are",
                       description="Information about the course's checkpoints.")
    try:
        from .models import TASKS as known
    except ImportError:  # a broken install: `models path` itself says so when run
        known = ()
    tasks = ", ".join(known)
    msub = p.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    path = msub.add_parser("path", help=f"print the folder of a task's mini checkpoint (TASK: {tasks})",
                           description="Print the local diffusers folder of the mini model for "
                           f"TASK, one of: {tasks}.")
    path.add_argument("task", metavar="TASK", help=f"one of: {tasks}")
    path.set_defaults(func=cmd_models_path)


def cmd_models_path(args) -> int:
    """Print the local diffusers folder of the mini model for one task."""
    try:
        from . import models
    except ImportError as error:
        raise CliError(f"models: unavailable ({error}): reinstall sdcourse (pip install -e . "
                       "in the course's checkout), then run `sdcourse doctor`") from None

    if args.task not in models.TASKS:
        raise UsageError(f"unknown task {args.task!r}: use one of {', '.join(models.TASKS)}")
    try:
        print(models.mini_model_path(args.task))
    except (ValueError, OSError) as error:  # e.g. the mini checkpoint is not there
        raise CliError(str(error)) from None
    return 0


# --------------------------------------------------------------------------- train / evaluate

#: The largest seed the commands take: numpy's generators stop at 2**32 - 1, and the code
#: derives others from it (seed + i); the evaluation API takes the same range.
MAX_SEED = 2**32 - 1


def seed_value(text: str) -> int:
    """An argparse type: a seed that every generator takes (the code derives others from it)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed: use a whole number from 0 "
                                         f"to {MAX_SEED}")
    return value


TRAINERS = ("vae", "text2img", "inpaint", "depth", "depth-estimator", "dreambooth")

#: Each trainer's default number of steps, for --help: the ``steps=`` defaults of vae.train,
#: text2img.train (inpaint and depth too), depth_estimator.train and train_dreambooth, written
#: out because reading them would import torch and diffusers for every command (a test checks
#: that they agree).
DEFAULT_STEPS = {"vae": 4000, "text2img": 7000, "inpaint": 7000, "depth": 7000,
                 "depth-estimator": 1500, "dreambooth": 400}
EVALUATIONS = ("vae", "text2img", "img2img", "inpaint", "depth2img", "dreambooth")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a part of the mini model (reproduces the shipped one)",
                       description="Train a part of the embedded mini model. Checkpoints go to "
                       "--out every few hundred steps; running the same command again resumes. "
                       "The mini model's parts train on the CPU, as the shipped weights did (the "
                       "same seed gives the same weights); dreambooth trains on the GPU when "
                       "PyTorch sees one (SDCOURSE_DEVICE does not apply).")
    p.add_argument("model", choices=TRAINERS, metavar="MODEL",
                   help=f"which part to train: {', '.join(TRAINERS)}")
    p.add_argument("--out", type=folder_arg, default=None, metavar="DIR",
                   help="run folder (default runs/MODEL)")
    p.add_argument("--steps", type=int, default=None,
                   help="total optimisation steps (default: " + ", ".join(
                       f"{model} {steps}" for model, steps in DEFAULT_STEPS.items()) + ")")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop at this step of the --steps schedule (vae, text2img, inpaint, depth)")
    p.add_argument("--init", type=given("the folder to start from", Path), default=None, metavar="DIR",
                   help="folder with a text2img unet and text_encoder to start from (inpaint/depth: "
                   "default the shipped mini model; text2img: fine-tune it, text encoder frozen)")
    p.add_argument("--caption-noise", type=float, default=None, metavar="P",
                   help="text2img: share of captions trained with a wrong colour word (default 0)")
    p.add_argument("--seed", type=seed_value, default=0, help="random seed (default 0)")
    p.add_argument("--publish", action="store_true",
                   help="when done, copy the weights into the package (sdcourse/mini)")
    db = p.add_argument_group("dreambooth", "teach a model a new subject (only with `train dreambooth`)")
    db.add_argument("--instance-dir", type=given("the folder of the subject's pictures", Path), metavar="DIR",
                    help="3 or more pictures of the subject (3-5 is typical)")
    db.add_argument("--instance-prompt", action="append", metavar="PROMPT",
                    help="prompt with the rare token, e.g. 'a sks dog'; once for all pictures, "
                    "or once per picture in file-name order")
    db.add_argument("--class-prompt", action="append", metavar="PROMPT",
                    help="the subject's class without the token, e.g. 'a dog' (repeatable)")
    db.add_argument("--token", type=given("a rare token such as sks"), default=None,
                    help="the rare token (default sks)")
    db.add_argument("--base", type=given("a diffusers folder or Hub id, or leave --base out"), metavar="MODEL",
                    help="diffusers folder or Hub id (default: the mini model, also `--base mini`)")
    db.add_argument("--full", action="store_true", help="fine-tune the whole UNet instead of a LoRA")
    db.add_argument("--train-text-encoder", action="store_true", help="train the text encoder too")
    db.add_argument("--no-prior", action="store_true", help="without prior preservation")
    db.add_argument("--prior-loss-weight", type=float, default=None, metavar="W",
                    help="weight of the class pictures' loss (default 1.0, DreamBooth's, "
                    "as `sdcourse evaluate dreambooth` trains the mini model)")
    db.add_argument("--class-dir", type=folder_arg, metavar="DIR",
                    help="folder for the class pictures, reused when they are already there "
                    "(default: OUT/class_images)")
    db.add_argument("--token-init", type=given("words describing the subject, e.g. 'white black'"), metavar="WORDS",
                    help="words describing the subject (e.g. 'white black'): the token's embedding "
                    "starts as their mean (full fine-tune only)")
    db.add_argument("--lr", type=float, default=None,
                    help="default 3e-3 LoRA, 3e-4 full (rates for the mini model; its evaluation uses 4e-4)")
    db.add_argument("--gradient-checkpointing", action="store_true",
                    help="recompute activations in the backward pass: far less GPU memory, slower "
                    "steps (for Stable Diffusion at 512 px on a 16 GB GPU such as Colab's T4)")
    p.set_defaults(func=cmd_train)


#: Options of `train dreambooth` alone (each defaults to None or False: given means set).
_DREAMBOOTH_ONLY = ("instance_dir", "instance_prompt", "class_prompt", "token", "base", "full",
                    "train_text_encoder", "no_prior", "prior_loss_weight", "lr", "class_dir",
                    "token_init", "gradient_checkpointing")


#: The trainer's argument names in its messages, as the command line spells them.
_OPTION_NAMES = {"class_dir / --class-dir": "--class-dir", "prior_preservation=False": "--no-prior",
                 "instance_prompt": "--instance-prompt", "class_prompt": "--class-prompt",
                 "prior_loss_weight": "--prior-loss-weight", "token_init": "--token-init",
                 "class_dir": "--class-dir"}


def _as_options(message: str) -> str:
    """A DreamBoothError's message with the Python argument names it uses replaced by the
    options a command-line user types (``prior_preservation=False`` -> ``--no-prior``)."""
    for name, option in _OPTION_NAMES.items():
        message = message.replace(name, option)
    return message


def _train_dreambooth(args, out: Path) -> int:
    """`sdcourse train dreambooth`: check the options, then train (or resume) a DreamBooth run."""
    if args.publish:
        raise UsageError("--publish ships parts of the mini model; a DreamBooth run stays in "
                         "--out: drop --publish")
    if args.instance_dir is None or not args.instance_prompt:
        raise UsageError("train dreambooth needs --instance-dir DIR and --instance-prompt PROMPT")
    unused = [option for option, value in [("--class-prompt", args.class_prompt),
              ("--class-dir", args.class_dir), ("--prior-loss-weight", args.prior_loss_weight)]
              if args.no_prior and value is not None]
    if unused:  # they only serve prior preservation: given with --no-prior, one is a mistake
        raise UsageError(f"{', '.join(unused)}: only for prior preservation, which --no-prior turns "
                         "off: drop --no-prior or drop " + ("it" if len(unused) == 1 else "them"))
    prompt = args.instance_prompt[0] if len(args.instance_prompt) == 1 else args.instance_prompt
    given = {name: value for name, value in [("token", args.token), ("steps", args.steps),
             ("prior_loss_weight", args.prior_loss_weight)] if value is not None}
    from .models import quiet_loaders
    from .train import dreambooth  # (torch and diffusers: seconds, after the options' checks)

    quiet_loaders()  # the trainer's own bar and lines say how far it is

    try:  # options not given keep train_dreambooth's defaults
        result = dreambooth.train_dreambooth(
            args.instance_dir, prompt, args.class_prompt, out, base=args.base,
            lora=not args.full, train_text_encoder=args.train_text_encoder,
            prior_preservation=not args.no_prior, lr=args.lr, class_dir=args.class_dir,
            seed=args.seed, token_init=args.token_init,
            gradient_checkpointing=args.gradient_checkpointing, **given)
    except dreambooth.DreamBoothError as error:
        raise UsageError(_as_options(str(error))) from None
    print(f"dreambooth: done; load it with sdcourse.train.dreambooth.load_dreambooth({str(out)!r}) "
          f"({result})")
    return 0


def cmd_train(args) -> int:
    """Train (or resume) one part of the mini model, or a DreamBooth run; options checked first."""
    for name in ("steps", "stop_at"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.stop_at and args.model not in ("vae", "text2img", "inpaint", "depth"):
        raise UsageError(f"--stop-at: not for `sdcourse train {args.model}`")
    if args.init and args.model not in ("text2img", "inpaint", "depth"):
        raise UsageError("--init: only for `sdcourse train text2img|inpaint|depth`")
    if args.caption_noise is not None and args.model != "text2img":
        raise UsageError("--caption-noise: only for `sdcourse train text2img`")
    if args.caption_noise is not None and not 0 <= args.caption_noise < 1:
        raise UsageError(f"--caption-noise must be in [0, 1), got {args.caption_noise}")
    if args.init:
        check_init(args.init)
    out = Path(args.out or f"runs/{args.model}")
    if args.model != "dreambooth":
        given = [f"--{name.replace('_', '-')}" for name in _DREAMBOOTH_ONLY  # 0 is given too
                 if getattr(args, name) is not None and getattr(args, name) is not False]
        if given:
            raise UsageError(f"{', '.join(given)}: only for `sdcourse train dreambooth`")
        if args.stop_at and args.stop_at > (args.steps or DEFAULT_STEPS[args.model]):
            raise UsageError(f"--stop-at {args.stop_at}: beyond --steps {args.steps}" if args.steps
                             else f"--stop-at {args.stop_at}: beyond the {DEFAULT_STEPS[args.model]} "
                             f"steps of {args.model}'s default schedule: give --steps too")
    check_out(out)
    if args.publish and args.model != "dreambooth":  # (which refuses --publish itself)
        from .models import MINI_DIR  # it writes into the installed package: find out now

        check_out(MINI_DIR, "--publish into", advice="install sdcourse where you can write "
                  "(pip install -e . in a clone) or train without --publish")
    try:
        if args.model == "dreambooth":
            return _train_dreambooth(args, out)
        return _train_mini(args, out)
    # a damaged checkpoint in --out, a base or mini model that cannot be had (SDCOURSE_CACHE
    # not a folder): their messages are one line saying what to do. Imported here, after the
    # options' checks: the trainers' modules import torch (seconds)
    except Exception as error:
        if isinstance(error, CliError):  # the options' own one-line errors, as they are
            raise
        from .models import ModelChoiceError
        from .train.common import CheckpointError, RunMismatchError

        if isinstance(error, RunMismatchError):  # --out names another run: the options' mistake
            raise UsageError(str(error)) from None
        if isinstance(error, (CheckpointError, ModelChoiceError)):
            raise CliError(str(error)) from None
        raise


def check_init(init: Path) -> None:
    """A one-line UsageError unless ``init`` holds a text2img UNet (4 input channels: not an
    inpaint or depth one) and a text encoder, with configs and safetensors weights (a folder
    of pickled .bin files is refused: the course loads nothing else)."""
    import json

    if not init.is_dir():
        what = "a file, not a folder" if init.exists() else "no such folder"
        raise UsageError(f"--init {init}: {what}: {INIT_HINT}")
    missing = [f"{part}/{name}" for part, weights in (("unet", "diffusion_pytorch_model"),
                                                      ("text_encoder", "model"))
               for name in ("config.json", f"{weights}.safetensors")
               if not (init / part / name).is_file()]
    if missing:
        raise UsageError(f"--init {init}: no {', '.join(missing)} there: {INIT_HINT}")
    try:
        channels = json.loads((init / "unet" / "config.json").read_text())["in_channels"]
    except (OSError, ValueError, KeyError, TypeError) as error:  # unreadable, not JSON, not a UNet's
        raise UsageError(f"--init {init}: unet/config.json is not a UNet's config "
                         f"({first_line(error, named=True)}): {INIT_HINT}") from None
    if channels != 4:
        raise UsageError(f"--init {init}: its unet takes {channels} input channels, not the "
                         f"text2img UNet's 4 (an inpaint or depth UNet?): {INIT_HINT}")


def _train_mini(args, out: Path) -> int:
    """`sdcourse train vae|text2img|inpaint|depth|depth-estimator`, options checked."""
    from .train import common

    # another trainer's --out, a damaged checkpoint or a --stop-at it is past: refused before
    # torch and the libraries load (seconds); the trainer compares the settings it records
    common.resume_point(out, args.model, {}, args.stop_at)
    from .models import MINI_DIR, quiet_loaders

    quiet_loaders()  # the trainer's own bar and lines say how far it is

    kwargs = {"seed": args.seed} | ({"steps": args.steps} if args.steps else {})
    stop = {"stop_at": args.stop_at} if args.stop_at else {}
    if args.model == "vae":
        from .train import vae

        model = vae.train(out, **kwargs, **stop)
        if args.publish:
            factor = vae.publish(model, MINI_DIR / "vae")
            print(f"published {MINI_DIR / 'vae'} (scaling_factor {factor:.5f})")
    elif args.model == "depth-estimator":
        from .train import depth_estimator

        model = depth_estimator.train(out, **kwargs)
        if args.publish:
            depth_estimator.publish(model, MINI_DIR)
            print(f"published depth_estimator and depth_processor into {MINI_DIR}")
    else:  # the UNets: text2img (with the text encoder), inpaint, depth
        from .train import text2img

        if not (MINI_DIR / "vae").is_dir():
            raise CliError(f"no VAE in {MINI_DIR}: run `sdcourse train vae --publish` first")
        task = args.model
        if task != "text2img" and not (MINI_DIR / "unet").is_dir():
            raise CliError(f"the {task} UNet starts from the text2img one, which is not in "
                           f"{MINI_DIR}: run `sdcourse train text2img --publish` first")
        if task == "text2img":
            extra = {"init": args.init} if args.init else {}
            if args.caption_noise is not None:
                extra["caption_noise"] = args.caption_noise
        else:
            extra = {"task": task, "init": args.init or MINI_DIR}
        text2img.train(out, vae_path=MINI_DIR / "vae", tokenizer_path=MINI_DIR / "tokenizer",
                       **extra, **kwargs, **stop)
        if args.publish:  # (a kill between a checkpoint's renames leaves it as checkpoint.old)
            text2img.publish(common.find_checkpoint(out), MINI_DIR, task=task)
            print(f"published the {task} UNet into {MINI_DIR}")
    _report_checkpoint(args.model, out)
    return 0


def _report_checkpoint(model: str, out: Path) -> None:
    """One closing line: where the run stands. A finished run given the same command again
    trains nothing, and without it showed only a full progress bar."""
    from .train.common import checkpoint_step, find_checkpoint

    checkpoint = find_checkpoint(out)
    if checkpoint is not None:
        print(f"sdcourse train {model}: step {checkpoint_step(checkpoint)}, checkpoint in {checkpoint}")


#: The most cases an evaluation takes (--n, and ``n=`` of the ``evaluate_*`` functions): more
#: would take hours on a CPU (and 10**9 scenes fill the memory).
MAX_CASES = 10_000


#: Each suite's default number of cases, for --help: the ``n=`` defaults of the
#: ``evaluate_*`` functions (a test keeps the two equal; the module is not imported for help).
DEFAULT_CASES = {"vae": 256, "text2img": 200, "img2img": 100, "inpaint": 100, "depth2img": 100,
                 "dreambooth": 50}


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="measure a shipped mini model on fresh random cases",
                       description="Measure the shipped mini model on fresh cases drawn from --seed. "
                       "Runs on the CPU, where the recorded numbers were measured (SDCOURSE_DEVICE "
                       "does not apply).")
    p.add_argument("model", choices=EVALUATIONS, metavar="SUITE",
                   help=f"what to measure: {', '.join(EVALUATIONS)}")
    by_count: dict[int, list[str]] = {}
    for suite, n in DEFAULT_CASES.items():
        by_count.setdefault(n, []).append(suite)
    p.add_argument("--n", type=int, default=None, help="how many cases (default " + ", ".join(
        f"{n} {', '.join(suites)}" for n, suites in by_count.items()) + f"; at most {MAX_CASES})")
    p.add_argument("--seed", type=seed_value, default=1234, help="seed of the fresh cases (default 1234)")
    p.add_argument("--train-seed", type=seed_value, default=None, metavar="N",
                   help="dreambooth only: the seed its training runs use (default 0)")
    p.add_argument("--json", action="store_true", help="print one flat JSON object")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    """Run one evaluation suite and print its numbers."""
    import json

    from . import evaluate

    if args.n is not None and args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    if args.n is not None and args.n > MAX_CASES:
        raise UsageError(f"--n {args.n}: that many cases would take hours on a CPU: give "
                         f"--n {MAX_CASES} or fewer")
    extra = {} if args.n is None else {"n": args.n}
    if args.train_seed is not None:
        if args.model != "dreambooth":
            raise UsageError(f"--train-seed is for `evaluate dreambooth` (it trains); "
                             f"`evaluate {args.model}` measures the shipped model as it is")
        extra["train_seed"] = args.train_seed
    from .models import ModelChoiceError, quiet_loaders
    from .train.common import CheckpointError
    from .train.dreambooth import DreamBoothError

    quiet_loaders()  # the suite's own bar says how far it is; --json prints one line
    suite = getattr(evaluate, f"evaluate_{args.model}")
    try:
        result = suite(**extra, seed=args.seed)
    # what the package raises on purpose with a one-line message saying what to do, e.g. the
    # mini model's folder cannot be assembled (SDCOURSE_CACHE not a folder); a bug stays a traceback
    except (ModelChoiceError, DreamBoothError, CheckpointError) as error:
        raise CliError(str(error)) from None
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0


# --------------------------------------------------------------------------- main

#: The subcommands, in the order ``--help`` lists them.
COMMANDS = [_add_run, _add_doctor, _add_models, _add_train, _add_evaluate]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sdcourse",
        description="Stable Diffusion course: run the notebooks, check the machine, train and "
        "evaluate the embedded mini model.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {_version('sdcourse')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sdcourse`` script and of ``python -m sdcourse``; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command == "run" and not any(word.startswith("-") for word in unknown):
        args.notebooks += unknown  # notebooks on both sides of an option: `run a --timeout 5 b`
        unknown = []
    if unknown:  # (argparse's own report points at the top-level help, not the command's)
        command = " ".join(filter(None, ["sdcourse", args.command, getattr(args, "models_command", None)]))
        parser.exit(2, f"sdcourse: error: unrecognized arguments: {' '.join(unknown)} "
                       f"(see `{command} --help`)\n")
    try:
        return args.func(args)
    except CliError as error:
        print(f"sdcourse: error: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        print("sdcourse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
