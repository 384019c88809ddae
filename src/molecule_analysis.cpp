// Observables of molecular configurations (eqflow/molecule_analysis.h): dihedrals, chirality
// and mirror images, and phi free-energy differences with block error bars.
#include "eqflow/molecule_analysis.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/dihedral.h"
#include "eqflow/error.h"

namespace eqflow {

// ---------------------------------------------------------------------------------------------
// Dihedrals and chirality
// ---------------------------------------------------------------------------------------------
double dihedral_angle(const double* x, int i, int j, int k, int l) {
    return geometry::dihedral(x, i, j, k, l);
}

void aldp_phi_psi(const double* x, int64_t B, double* phi, double* psi) {
    for (int64_t b = 0; b < B; ++b) {
        const double* xb = x + b * kAldpAtoms * 3;
        const auto& f = kAldpPhiAtoms;
        const auto& s = kAldpPsiAtoms;
        if (phi) phi[b] = dihedral_angle(xb, f[0], f[1], f[2], f[3]);
        if (psi) psi[b] = dihedral_angle(xb, s[0], s[1], s[2], s[3]);
    }
}

int chirality_sign(const double* x, int a, int centre, int b, int s) {
    double u[3], v[3], w[3];
    for (int k = 0; k < 3; ++k) {
        u[k] = x[3 * a + k] - x[3 * centre + k];
        v[k] = x[3 * b + k] - x[3 * centre + k];
        w[k] = x[3 * s + k] - x[3 * centre + k];
    }
    const double triple = u[0] * (v[1] * w[2] - v[2] * w[1]) + u[1] * (v[2] * w[0] - v[0] * w[2]) +
                          u[2] * (v[0] * w[1] - v[1] * w[0]);
    return (triple > 0) - (triple < 0);
}

bool aldp_is_l(const double* x) {
    return chirality_sign(x, kAldpN, kAldpCA, kAldpC, kAldpCB) > 0;
}

void mirror(double* x, int n) {
    for (int k = 0; k < 3 * n; ++k) x[k] = -x[k];
}

int64_t aldp_fix_chirality(double* x, int64_t B, uint8_t* is_d) {
    int64_t count = 0;
    for (int64_t b = 0; b < B; ++b) {
        double* xb = x + b * kAldpAtoms * 3;
        const bool d = !aldp_is_l(xb);
        if (d) {
            mirror(xb, kAldpAtoms);
            ++count;
        }
        if (is_d) is_d[b] = d ? 1 : 0;
    }
    return count;
}

// ---------------------------------------------------------------------------------------------
// Free energies
// ---------------------------------------------------------------------------------------------
FreeEnergyDifference phi_free_energy_difference(const double* phi, const double* log_w, int64_t N,
                                                int blocks) {
    EQFLOW_CHECK(N > 0, "free-energy difference of an empty sample");
    EQFLOW_CHECK(blocks >= 2, "free-energy difference: need at least 2 blocks, got " << blocks);
    blocks = static_cast<int>(std::min<int64_t>(blocks, N));
    // Weights relative to the largest log weight, so exp() cannot overflow.
    double max_lw = 0.0;
    if (log_w) {
        max_lw = -std::numeric_limits<double>::infinity();
        for (int64_t i = 0; i < N; ++i)
            if (std::isfinite(log_w[i])) max_lw = std::max(max_lw, log_w[i]);
        EQFLOW_CHECK(std::isfinite(max_lw), "free-energy difference: no finite weight");
    }
    auto weight = [&](int64_t i) {
        if (!log_w) return 1.0;
        return std::isfinite(log_w[i]) ? std::exp(log_w[i] - max_lw) : 0.0;
    };
    FreeEnergyDifference r;
    double w_pos = 0.0, w_neg = 0.0;
    std::vector<double> p_block;
    for (int k = 0; k < blocks; ++k) {
        const int64_t begin = N * k / blocks, end = N * (k + 1) / blocks;
        double bp = 0.0, bn = 0.0;
        for (int64_t i = begin; i < end; ++i) {
            EQFLOW_CHECK(std::isfinite(phi[i]),
                         "free-energy difference: phi[" << i << "] is not finite");
            const double w = weight(i);
            if (phi[i] > 0) {
                bp += w;
                ++r.n_pos;
            } else {
                bn += w;
                ++r.n_neg;
            }
        }
        w_pos += bp;
        w_neg += bn;
        if (bp + bn > 0) p_block.push_back(bp / (bp + bn));
    }
    const double inf = std::numeric_limits<double>::infinity();
    if (w_pos == 0.0 || w_neg == 0.0) {
        r.delta_f = w_pos == 0.0 ? inf : -inf;
        r.error = inf;
        return r;
    }
    const double p = w_pos / (w_pos + w_neg);
    r.delta_f = -std::log(w_pos / w_neg);
    double mean = 0.0, var = 0.0;
    for (double v : p_block) mean += v / p_block.size();
    for (double v : p_block) var += (v - mean) * (v - mean);
    const double se =
        p_block.size() > 1 ? std::sqrt(var / (p_block.size() - 1) / p_block.size()) : inf;
    r.error = se / (p * (1.0 - p));
    return r;
}

}  // namespace eqflow
