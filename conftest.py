"""Test-wide settings, loaded before any test or notebook kernel starts.

Notebook kernels started by nbval inherit this environment: with TQDM_DISABLE set, the
diffusers progress bars (ipywidgets in a kernel) stay out of the outputs nbval compares.
"""
import os

os.environ.setdefault("TQDM_DISABLE", "1")
