"""Shared fixtures of the Python tests (pytest tests/python, against the installed package)."""
import os
import shutil
import subprocess

import numpy as np
import pytest

import eqflow

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")
TOOLS = os.path.join(ROOT, "tools")

# Seeded inputs; the seed is printed by pytest's -rs/-v output through the test ids.
SEED = int(os.environ.get("EQFLOW_TEST_SEED", "1234"))


def fixture(name, what):
    return np.load(os.path.join(DATA, f"egnn_{name}_{what}.npy"))


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


@pytest.fixture(scope="session")
def dw4_model():
    return eqflow.load_model(os.path.join(DATA, "egnn_dw4.safetensors"))


def cli_path():
    """The command-line program: EQFLOW_CLI, else the one inside the installed package, else
    `eqflow` on PATH."""
    candidates = [os.environ.get("EQFLOW_CLI", ""),
                  os.path.join(os.path.dirname(eqflow.__file__), "bin", "eqflow"),
                  shutil.which("eqflow") or ""]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


@pytest.fixture(scope="session")
def cli():
    path = cli_path()
    if path is None:
        pytest.skip("no eqflow command-line program (set EQFLOW_CLI)")

    def run(*args):
        r = subprocess.run([path, *map(str, args)], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise AssertionError(f"eqflow {' '.join(map(str, args))} failed ({r.returncode}):\n"
                                 f"{r.stdout}\n{r.stderr}")
        return r

    return run


def centred(x):
    return x - x.mean(axis=1, keepdims=True)
