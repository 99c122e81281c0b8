"""The noise-corrected PSNR of benchmarks/posterior.py and benchmarks/em_cosmos.py against
a hand computation."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "_cosmos_metrics.py"


@pytest.fixture(scope="module")
def metrics():
    spec = importlib.util.spec_from_file_location("cosmos_metrics", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_noise_corrected_psnr_by_hand(metrics):
    # Two 2x2 "galaxies": truth data ranges 4 and 2; estimates off by 1 everywhere (MSE 1)
    # and by 0.5 (MSE 0.25); truth noise variances 0.5 and 0.05.
    truths = np.array([[[0.0, 4.0], [1.0, 2.0]], [[0.0, 2.0], [1.0, 1.0]]])
    est = truths + np.array([1.0, 0.5])[:, None, None]
    var = np.array([0.5, 0.05])
    excess = metrics.noise_corrected_excess(est, truths, var)
    np.testing.assert_allclose(excess, [(1 - 0.5) / 16, (0.25 - 0.05) / 4])
    want = 10 * np.log10(1 / np.mean([0.5 / 16, 0.2 / 4]))
    assert metrics.noise_corrected_psnr(est, truths, var) == pytest.approx(want)


def test_noise_corrected_psnr_keeps_sign_and_floors_mean(metrics):
    truths = np.array([[[0.0, 1.0]], [[0.0, 1.0]]])
    est = truths + np.array([0.1, 0.3])[:, None, None]  # MSE 0.01 and 0.09
    # The first galaxy's MSE is below its truth's noise variance: kept negative in the mean.
    var = np.array([0.02, 0.04])
    np.testing.assert_allclose(metrics.noise_corrected_excess(est, truths, var), [-0.01, 0.05])
    assert metrics.noise_corrected_psnr(est, truths, var) == pytest.approx(10 * np.log10(1 / 0.02))
    # Every estimate within the truths' noise: no finite PSNR.
    assert metrics.noise_corrected_psnr(est, truths, np.array([0.02, 0.1])) == float("inf")
    with pytest.raises(ValueError, match="noise_var"):
        metrics.noise_corrected_psnr(est, truths, np.array([0.02]))


def test_json_safe_nulls_non_finite(metrics):
    out = metrics.json_safe({"a": float("inf"), "b": [1.0, float("nan")], "c": {"d": 2}})
    assert out == {"a": None, "b": [1.0, None], "c": {"d": 2}}
