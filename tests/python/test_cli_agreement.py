"""The package against the command-line program: a model trained by `eqflow train` gives, loaded
in Python, the field and divergence of `eqflow field`; training, sampling and evaluation in
Python reproduce the commands."""
import json
import os

import numpy as np
import pytest

import eqflow

# Both sides compute in double on the CPU reference (the CLI with --reference); the CLI's .npy
# files are float64.
TOL = 1e-9
# The CLI's default CPU field is the fast float32 backend: float32 through a few layers, as the
# C++ tests of that backend against the reference (test_egnn_fast) allow.
FLOAT_TOL = 2e-4

TRAIN = dict(objective="ot", epochs=2, batch=16, hidden=8, layers=2, seed=5, threads=1)


@pytest.fixture(scope="module")
def run(cli, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cli("data", "--system", "dw4", "--samples", 64, "--out", d / "train.npy", "--seed", 1,
        "--burn-in", 100)
    cli("train", "--system", "dw4", "--data", d / "train.npy", "--out", d / "run",
        "--device", "cpu", *[a for k, v in TRAIN.items() for a in (f"--{k}", v)])
    return d


def test_field_matches_cli(cli, run, rng):
    x = rng.normal(size=(7, 8))
    x = (x.reshape(7, 4, 2) - x.reshape(7, 4, 2).mean(axis=1, keepdims=True)).reshape(7, 8)
    np.save(run / "x.npy", x)
    model = eqflow.load_model(run / "run" / "model.safetensors")
    for t in (0.0, 0.37, 1.0):
        v, div = model.field_and_divergence(x, t)
        assert np.abs(v).max() > 0
        for flags, tol in ((["--reference"], TOL), ([], FLOAT_TOL)):
            cli("field", "--model", run / "run" / "model.safetensors", "--in", run / "x.npy",
                "--t", t, "--out", run / "v.npy", "--div-out", run / "div.npy", "--device", "cpu",
                *flags)
            scale = np.abs(v).max()
            np.testing.assert_allclose(v, np.load(run / "v.npy"), rtol=tol, atol=tol * scale)
            np.testing.assert_allclose(div, np.load(run / "div.npy"), rtol=tol,
                                       atol=tol * max(1.0, np.abs(div).max()))


def test_train_matches_cli(run, tmp_path):
    data = np.load(run / "train.npy")
    model, info = eqflow.train("dw4", data, out_dir=tmp_path / "py", device="cpu", **TRAIN)
    cli_model = eqflow.load_model(run / "run" / "model.safetensors")
    # The trainer is deterministic on the CPU whatever the thread count: the same weights.
    np.testing.assert_array_equal(model.parameters(), cli_model.parameters())
    assert info["step"] == info["total_steps"] > 0 and not info["interrupted"]
    assert os.path.isfile(tmp_path / "py" / "model.safetensors")
    np.testing.assert_array_equal(
        eqflow.load_model(tmp_path / "py" / "model.safetensors").parameters(), model.parameters())


def test_sample_matches_cli(cli, run):
    path = run / "run" / "model.safetensors"
    cli("sample", "--model", path, "--samples", 6, "--out-dir", run / "s", "--seed", 2,
        "--solver", "rk4", "--steps", 4, "--device", "cpu")
    s = eqflow.sample(eqflow.load_model(path), 6, seed=2, solver="rk4", steps=4, device="cpu")
    np.testing.assert_allclose(s["x"].reshape(6, 8), np.load(run / "s" / "x.npy"), rtol=TOL,
                               atol=TOL)
    for key in ("log_q", "u", "log_w"):
        np.testing.assert_allclose(s[key], np.load(run / "s" / f"{key}.npy"), rtol=TOL, atol=TOL)
    summary = json.load(open(run / "s" / "summary.json"))
    assert s["ess"] == pytest.approx(summary["ess"], rel=1e-12)


def test_evaluate_matches_cli(cli, run):
    path = run / "run" / "model.safetensors"
    test = np.load(run / "train.npy")[:8]
    np.save(run / "test.npy", test)
    cli("eval", "--model", path, "--test", run / "test.npy", "--out", run / "m.json",
        "--samples", 8, "--solver", "rk4", "--steps", 4, "--device", "cpu")
    ref = json.load(open(run / "m.json"))
    m = eqflow.evaluate(eqflow.load_model(path), test, samples=8, solver="rk4", steps=4,
                        device="cpu")
    for key in ("nll", "nll_normalized", "ess", "path_length", "energy_mean_test", "nll_stderr",
                "ess_stderr", "path_length_stderr", "kl_test", "kl_test_stderr", "entropy_test",
                "log_z"):
        assert m[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert m["samples"].shape == (8, 4, 2)
    ll = eqflow.log_likelihood(eqflow.load_model(path), test, solver="rk4", steps=4, device="cpu")
    assert -ll["log_q"].mean() == pytest.approx(m["nll_normalized"], rel=1e-9)


def test_cli_version(cli):
    assert cli("--version").stdout.strip() == f"eqflow {eqflow.__version__}"


def test_train_refuses_another_run(run):
    data = np.load(run / "train.npy")
    with pytest.raises(eqflow.Error, match="overwrite"):
        eqflow.train("dw4", data, out_dir=run / "run", device="cpu", **TRAIN)
