// CPU reference of DW4 and LJ energies, forces and Laplacians. Plain loops in double.
#include "cpu/systems_cpu.h"

#include <cmath>
#include <vector>

namespace eqflow::cpu {

namespace {
// Pair factor of the unordered-pair loop: LJ sums ordered pairs (both (i,j) and (j,i)), so each
// unordered pair counts twice; DW4 sums unordered pairs once.
double pair_multiplicity(const System& s) {
    return s.kind == PotentialKind::lennard_jones ? 2.0 : 1.0;
}

double distance(const double* a, const double* b, int d) {
    double r2 = 0.0;
    for (int k = 0; k < d; ++k) {
        const double diff = a[k] - b[k];
        r2 += diff * diff;
    }
    return std::sqrt(r2);
}
}  // namespace

void pair_terms(const System& s, double r, double* phi, double* dphi, double* d2phi) {
    if (s.kind == PotentialKind::double_well) {
        const double y = r - s.dw_d0;
        if (phi) *phi = s.dw_a * y * y * y * y + s.dw_b * y * y;
        if (dphi) *dphi = 4.0 * s.dw_a * y * y * y + 2.0 * s.dw_b * y;
        if (d2phi) *d2phi = 12.0 * s.dw_a * y * y + 2.0 * s.dw_b;
        return;
    }
    // eps [ (rm/r)^12 - 2 (rm/r)^6 ]
    const double q = s.lj_rm / r;
    const double q6 = q * q * q * q * q * q;
    const double q12 = q6 * q6;
    if (phi) *phi = s.lj_eps * (q12 - 2.0 * q6);
    if (dphi) *dphi = s.lj_eps * (-12.0 * q12 + 12.0 * q6) / r;
    if (d2phi) *d2phi = s.lj_eps * (156.0 * q12 - 84.0 * q6) / (r * r);
}

double energy_one(const System& s, const double* x, double* grad, double* laplacian) {
    const int n = s.n, d = s.d;
    const double mult = pair_multiplicity(s);
    double e = 0.0, lap = 0.0;
    if (grad)
        for (int i = 0; i < n * d; ++i) grad[i] = 0.0;
    for (int i = 0; i < n; ++i) {
        for (int j = i + 1; j < n; ++j) {
            const double r = distance(x + i * d, x + j * d, d);
            double phi, dphi, d2phi;
            pair_terms(s, r, &phi, &dphi, &d2phi);
            e += mult * phi;
            if (grad) {
                for (int k = 0; k < d; ++k) {
                    const double g = mult * dphi * (x[i * d + k] - x[j * d + k]) / r;
                    grad[i * d + k] += g;
                    grad[j * d + k] -= g;
                }
            }
            // Laplacian of phi(|x_i - x_j|) over both particles: 2 [phi'' + (d-1) phi' / r].
            lap += mult * 2.0 * (d2phi + (d - 1) * dphi / r);
        }
    }
    if (s.kind == PotentialKind::lennard_jones && s.lj_oscillator != 0.0) {
        // c * sum_i |x_i - xbar|^2: gradient 2c (x_i - xbar); Hessian 2c (I - 11^T/n) (x) I_d.
        std::vector<double> mean(static_cast<size_t>(d), 0.0);
        for (int i = 0; i < n; ++i)
            for (int k = 0; k < d; ++k) mean[k] += x[i * d + k] / n;
        for (int i = 0; i < n; ++i) {
            for (int k = 0; k < d; ++k) {
                const double c = x[i * d + k] - mean[k];
                e += s.lj_oscillator * c * c;
                if (grad) grad[i * d + k] += 2.0 * s.lj_oscillator * c;
            }
        }
        lap += 2.0 * s.lj_oscillator * (n - 1) * d;
    }
    if (laplacian) *laplacian = lap;
    return e;
}

template <class T>
void energy_forces(const System& s, const T* x, int64_t B, T* u, T* forces) {
    const int nd = s.n * s.d;
    std::vector<double> xd(static_cast<size_t>(nd)), g(static_cast<size_t>(nd));
    for (int64_t b = 0; b < B; ++b) {
        for (int i = 0; i < nd; ++i) xd[i] = static_cast<double>(x[b * nd + i]);
        const double e = energy_one(s, xd.data(), forces ? g.data() : nullptr, nullptr);
        u[b] = static_cast<T>(e / s.kT);
        if (forces)
            for (int i = 0; i < nd; ++i) forces[b * nd + i] = static_cast<T>(-g[i]);
    }
}

template void energy_forces<double>(const System&, const double*, int64_t, double*, double*);
template void energy_forces<float>(const System&, const float*, int64_t, float*, float*);

double energy_delta_move(const System& s, const double* x, int k, const double* new_pos) {
    const int n = s.n, d = s.d;
    const double mult = pair_multiplicity(s);
    double delta = 0.0;
    for (int j = 0; j < n; ++j) {
        if (j == k) continue;
        double phi_old, phi_new;
        pair_terms(s, distance(x + k * d, x + j * d, d), &phi_old, nullptr, nullptr);
        pair_terms(s, distance(new_pos, x + j * d, d), &phi_new, nullptr, nullptr);
        delta += mult * (phi_new - phi_old);
    }
    if (s.kind == PotentialKind::lennard_jones && s.lj_oscillator != 0.0) {
        // sum_i |x_i - xbar|^2 = sum_i |x_i|^2 - n |xbar|^2; moving particle k by dx changes it by
        // |x_k + dx|^2 - |x_k|^2 - (|S + dx|^2 - |S|^2) / n, with S = sum_i x_i.
        for (int a = 0; a < d; ++a) {
            double sum = 0.0;
            for (int i = 0; i < n; ++i) sum += x[i * d + a];
            const double old_k = x[k * d + a], new_k = new_pos[a];
            const double sum_new = sum - old_k + new_k;
            delta += s.lj_oscillator *
                     ((new_k * new_k - old_k * old_k) - (sum_new * sum_new - sum * sum) / n);
        }
    }
    return delta;
}

}  // namespace eqflow::cpu
