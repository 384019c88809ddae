"""Energies, forces, assignment and couplings against plain NumPy references."""
import itertools

import numpy as np
import pytest

import eqflow
from conftest import centred

# Energies and forces are computed in double: rounding only.
TOL = 1e-10


def dw4_energy(x):
    # docs/design.md section 3: sum_{i<j} a (r - d0)^4 + b (r - d0)^2, kT = 1.
    a, b, d0 = 0.9, -4.0, 4.0
    e = np.zeros(x.shape[0])
    for i, j in itertools.combinations(range(4), 2):
        r = np.linalg.norm(x[:, i] - x[:, j], axis=-1)
        e += a * (r - d0) ** 4 + b * (r - d0) ** 2
    return e


def test_energy_and_forces(rng):
    x = centred(rng.normal(scale=2.0, size=(6, 4, 2)))
    u, f = eqflow.energy_forces("dw4", x)
    np.testing.assert_allclose(u, dw4_energy(x), rtol=TOL, atol=TOL)
    np.testing.assert_array_equal(eqflow.energy("dw4", x.reshape(6, 8)), u)
    assert f.shape == x.shape
    h = 1e-6  # central differences: error O(h^2) against rounding O(eps / h)
    for i, k in [(0, 0), (2, 1), (3, 0)]:
        xp, xm = x.copy(), x.copy()
        xp[:, i, k] += h
        xm[:, i, k] -= h
        np.testing.assert_allclose(f[:, i, k], -(dw4_energy(xp) - dw4_energy(xm)) / (2 * h),
                                   rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(eqflow.forces(eqflow.system("dw4"), x), f)
    u32 = eqflow.energy("dw4", x.astype(np.float32))
    assert u32.dtype == np.float32


def test_systems():
    assert {"dw4", "lj13", "lj55"} <= set(eqflow.systems())
    s = eqflow.system("lj13")
    assert (s.n, s.d, s.kind) == (13, 3, "lennard_jones")


def test_assign_is_optimal(rng):
    cost = rng.integers(0, 20, size=(5, 5, 5)).astype(np.float64)  # integers: exact totals
    perm, total = eqflow.assign(cost, return_total=True)
    assert perm.shape == (5, 5) and perm.dtype == np.int64
    for p in range(5):
        assert sorted(perm[p]) == list(range(5))
        best = min(sum(cost[p, i, s[i]] for i in range(5))
                   for s in itertools.permutations(range(5)))
        assert total[p] == best == cost[p, np.arange(5), perm[p]].sum()
    single, t1 = eqflow.assign(cost[0].astype(np.float32), return_total=True)
    assert single.shape == (5,) and t1 == total[0]


def test_couplings(rng):
    x0 = centred(rng.normal(size=(8, 4, 2)))
    x1 = centred(rng.normal(size=(8, 4, 2)))
    paired, pairing, cost = eqflow.couple(x0, x1, "fm")
    np.testing.assert_array_equal(pairing, np.arange(8))
    np.testing.assert_array_equal(paired, x1)
    _, p_ot, c_ot = eqflow.couple(x0, x1, "ot")
    assert sorted(p_ot) == list(range(8)) and c_ot.sum() <= cost.sum() + TOL
    paired_eq, p_eq, c_eq = eqflow.couple(x0, x1, "eqot")
    assert c_eq.sum() <= c_ot.sum() + TOL
    np.testing.assert_allclose(c_eq, ((x0 - paired_eq) ** 2).sum(axis=(1, 2)), rtol=1e-9)
    # 2D, n = 4: the exhaustive alignment (default) is the exact minimum per pair, so its batch
    # total is never above the principal-axes search's.
    _, _, c_search = eqflow.couple(x0, x1, "eqot", exhaustive=False)
    assert c_eq.sum() <= c_search.sum() + TOL
    # eqot pairs each x0 with a rotated and permuted copy of its partner: same distances.
    for i in range(8):
        d_a = np.sort(np.linalg.norm(paired_eq[i][:, None] - paired_eq[i][None], axis=-1).ravel())
        d_b = np.sort(np.linalg.norm(x1[p_eq[i]][:, None] - x1[p_eq[i]][None], axis=-1).ravel())
        np.testing.assert_allclose(d_a, d_b, atol=1e-9)


def test_eqot_max_starts(rng):
    # max_starts searches only the best-scored principal-axes starts: with every proper start
    # (4 in 3D) it is the default search exactly; with one it is a valid, aligned coupling whose
    # pairs are no better than the full search's, and it is refused below 0.
    x0 = centred(rng.normal(size=(8, 13, 3)))
    x1 = centred(0.7 * rng.normal(size=(8, 13, 3)))
    p_all, s_all, c_all = eqflow.couple(x0, x1, "eqot")
    p_four, s_four, c_four = eqflow.couple(x0, x1, "eqot", max_starts=4)
    np.testing.assert_array_equal(p_four, p_all)
    np.testing.assert_array_equal(c_four, c_all)
    p_one, s_one, c_one = eqflow.couple(x0, x1, "eqot", max_starts=1)
    assert sorted(s_one) == list(range(8))
    np.testing.assert_allclose(c_one, ((x0 - p_one) ** 2).sum(axis=(1, 2)), rtol=1e-9)
    _, _, c_ot = eqflow.couple(x0, x1, "ot")
    assert c_all.sum() <= c_one.sum() + TOL and c_one.sum() <= c_ot.sum() + TOL
    with pytest.raises(eqflow.Error, match="max_starts"):
        eqflow.couple(x0, x1, "eqot", max_starts=-1)


def test_data_is_seeded():
    a = eqflow.data("dw4", 16, seed=3, burn_in=50, thin=2)
    b = eqflow.data("dw4", 16, seed=3, burn_in=50, thin=2, threads=1)
    assert a.shape == (16, 4, 2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.mean(axis=1), 0, atol=1e-12)
