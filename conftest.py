"""Test-wide settings, loaded before any test or notebook kernel starts.

Notebook kernels started by nbval inherit this environment: with TQDM_DISABLE set, the
diffusers progress bars (ipywidgets in a kernel) stay out of the outputs nbval compares;
with SDCOURSE_HEADLESS set, notebooks draw an interactive widget's default once instead of
showing the widget (no front end answers it, and widget messages can hang the runner:
jupyter/nbclient#312).
"""
import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("SDCOURSE_HEADLESS", "1")
# The stored outputs nbval compares were recorded on the mini model on a CPU: a machine with
# a GPU (and the Hub) would otherwise run the notebooks on real checkpoints, download
# gigabytes and differ. Set either variable to run the notebooks elsewhere.
os.environ.setdefault("SDCOURSE_MODEL", "mini")
os.environ.setdefault("SDCOURSE_DEVICE", "cpu")
