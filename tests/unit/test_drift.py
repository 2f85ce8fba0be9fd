from __future__ import annotations

import math

import numpy as np
import pytest

from stream.monitor.drift import PSI_EPSILON, js_distance, ks_statistic, psi


def test_psi_hand_computed() -> None:
    ref = np.array([50, 30, 20])
    cur = np.array([30, 30, 40])
    # (0.3-0.5)ln(0.3/0.5) + 0 + (0.4-0.2)ln(0.4/0.2)
    expected = (-0.2) * math.log(0.6) + 0.2 * math.log(2.0)
    assert psi(ref, cur) == pytest.approx(expected, rel=1e-12)


def test_psi_identical_is_zero_and_scale_free() -> None:
    ref = np.array([10, 20, 30, 40])
    assert psi(ref, ref * 7) == pytest.approx(0.0, abs=1e-15)


def test_psi_smooths_empty_bins() -> None:
    ref = np.array([100, 0])
    cur = np.array([50, 50])
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - PSI_EPSILON) * math.log(0.5 / PSI_EPSILON)
    assert psi(ref, cur) == pytest.approx(expected, rel=1e-9)


def test_js_distance_bounds_and_value() -> None:
    assert js_distance(np.array([1, 1]), np.array([5, 5])) == pytest.approx(0.0, abs=1e-12)
    assert js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
    # p = (1/2, 1/2), q = (1, 0): JS divergence = 1.5 - 0.75*log2(3) bits... computed by hand:
    p = np.array([0.5, 0.5])
    q = np.array([1.0, 0.0])
    m = (p + q) / 2
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = 1.0 * math.log2(1.0 / 0.75)
    assert js_distance(p * 10, q * 10) == pytest.approx(math.sqrt((kl_p + kl_q) / 2))
    assert m.sum() == pytest.approx(1.0)


def test_ks_from_binned_cdfs() -> None:
    ref = np.array([25, 25, 25, 25])  # cdf .25 .5 .75 1
    cur = np.array([10, 10, 40, 40])  # cdf .1 .2 .6 1
    assert ks_statistic(ref, cur) == pytest.approx(0.3)
    assert ks_statistic(ref, ref) == pytest.approx(0.0)
