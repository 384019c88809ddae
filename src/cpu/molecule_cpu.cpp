// CPU reference of the molecular force field (see eqflow/molecule.h). Plain loops in double.
//
// Every term adds its energy and, on request, dE/dx into grad [n][3]. The GB term is the one
// with a non-local gradient: E_GB depends on the Born radii B_i, each of which depends on all
// distances r_ij, so dE/dx = (explicit pair part) + sum_i dE/dB_i * dB_i/dPsi_i * dPsi_i/dx.
#include "cpu/molecule_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "eqflow/molecule_analysis.h"
#include "eqflow/parallel.h"

namespace eqflow::cpu {

namespace {
constexpr double kPi = 3.14159265358979323846;

struct Vec3 {
    double x, y, z;
};
inline Vec3 operator-(Vec3 a, Vec3 b) {
    return {a.x - b.x, a.y - b.y, a.z - b.z};
}
inline Vec3 operator+(Vec3 a, Vec3 b) {
    return {a.x + b.x, a.y + b.y, a.z + b.z};
}
inline Vec3 operator*(double s, Vec3 a) {
    return {s * a.x, s * a.y, s * a.z};
}
inline double dot(Vec3 a, Vec3 b) {
    return a.x * b.x + a.y * b.y + a.z * b.z;
}
inline Vec3 cross(Vec3 a, Vec3 b) {
    return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}
inline double norm(Vec3 a) {
    return std::sqrt(dot(a, a));
}
inline Vec3 at(const double* x, int i) {
    return {x[3 * i], x[3 * i + 1], x[3 * i + 2]};
}
inline void add(double* g, int i, Vec3 v) {
    g[3 * i] += v.x;
    g[3 * i + 1] += v.y;
    g[3 * i + 2] += v.z;
}

double bonds(const ForceField& ff, const double* x, double* g) {
    double e = 0.0;
    for (const HarmonicBond& b : ff.bonds) {
        const Vec3 d = at(x, b.i) - at(x, b.j);
        const double r = norm(d);
        const double dr = r - b.length;
        e += 0.5 * b.k * dr * dr;
        if (g) {
            const Vec3 gi = (b.k * dr / r) * d;
            add(g, b.i, gi);
            add(g, b.j, -1.0 * gi);
        }
    }
    return e;
}

double angles(const ForceField& ff, const double* x, double* g) {
    double e = 0.0;
    for (const HarmonicAngle& a : ff.angles) {
        const Vec3 u = at(x, a.i) - at(x, a.j), v = at(x, a.k) - at(x, a.j);
        const double nu = norm(u), nv = norm(v);
        const double c = std::clamp(dot(u, v) / (nu * nv), -1.0, 1.0);
        const double theta = std::acos(c);
        const double dt = theta - a.angle;
        e += 0.5 * a.k_theta * dt * dt;
        if (g) {
            // dtheta/du = -(v/|v| - c u/|u|) / (|u| sin theta), likewise for v.
            const double s = std::max(std::sqrt(1.0 - c * c), 1e-12);
            const double f = a.k_theta * dt;
            const Vec3 gi = (-f / (nu * s)) * ((1.0 / nv) * v - (c / nu) * u);
            const Vec3 gk = (-f / (nv * s)) * ((1.0 / nu) * u - (c / nv) * v);
            add(g, a.i, gi);
            add(g, a.k, gk);
            add(g, a.j, -1.0 * (gi + gk));
        }
    }
    return e;
}

double torsions(const ForceField& ff, const double* x, double* g) {
    double e = 0.0;
    for (const PeriodicTorsion& t : ff.torsions) {
        const double phi = dihedral_angle(x, t.i, t.j, t.k, t.l);
        e += t.k_phi * (1.0 + std::cos(t.periodicity * phi - t.phase));
        if (g) {
            // Blondel & Karplus (1996): F = x_i - x_j, G = x_j - x_k, H = x_l - x_k, A = F x G, B =
            // H x G.
            const Vec3 F = at(x, t.i) - at(x, t.j), G = at(x, t.j) - at(x, t.k),
                       H = at(x, t.l) - at(x, t.k);
            const Vec3 A = cross(F, G), B = cross(H, G);
            const double A2 = dot(A, A), B2 = dot(B, B), nG = norm(G);
            const double dE_dphi =
                -t.k_phi * t.periodicity * std::sin(t.periodicity * phi - t.phase);
            const Vec3 dphi_di = (-nG / A2) * A;
            const Vec3 dphi_dl = (nG / B2) * B;
            const Vec3 mid = (dot(F, G) / (A2 * nG)) * A - (dot(H, G) / (B2 * nG)) * B;
            const Vec3 dphi_dj = (-1.0 * dphi_di) + mid;
            const Vec3 dphi_dk = (-1.0 * dphi_dl) - mid;
            add(g, t.i, dE_dphi * dphi_di);
            add(g, t.j, dE_dphi * dphi_dj);
            add(g, t.k, dE_dphi * dphi_dk);
            add(g, t.l, dE_dphi * dphi_dl);
        }
    }
    return e;
}

double nonbonded(const ForceField& ff, const double* x, double* g) {
    double e = 0.0;
    for (const NonbondedPair& p : ff.pairs) {
        const Vec3 d = at(x, p.i) - at(x, p.j);
        const double r2 = dot(d, d), r = std::sqrt(r2);
        const double s2 = p.sigma * p.sigma / r2;
        const double s6 = s2 * s2 * s2, s12 = s6 * s6;
        const double coul = kCoulombConstant * p.charge_prod / r;
        e += 4.0 * p.epsilon * (s12 - s6) + coul;
        if (g) {
            const double dE_dr = 4.0 * p.epsilon * (-12.0 * s12 + 6.0 * s6) / r - coul / r;
            const Vec3 gi = (dE_dr / r) * d;
            add(g, p.i, gi);
            add(g, p.j, -1.0 * gi);
        }
    }
    return e;
}

// The OBC descreening integral of atom i (offset radius ori) by atom j (scaled offset radius sj)
// at distance r, and its derivative with respect to r (OpenMM's GBSAOBCForce / HCT form).
double obc_pair_term(double r, double ori, double sj, double* dterm_dr) {
    *dterm_dr = 0.0;
    if (ori >= r + sj)
        return 0.0;  // atom i lies inside the descreening sphere's shadow: no overlap
    const double diff = std::fabs(r - sj);
    double l, dl;
    if (ori > diff) {
        l = 1.0 / ori;
        dl = 0.0;
    } else {
        l = 1.0 / diff;
        dl = (r > sj ? -1.0 : 1.0) * l * l;
    }
    const double u = 1.0 / (r + sj), du = -u * u;
    const double l2 = l * l, u2 = u * u;
    const double log_ul = std::log(u / l);
    double term = l - u + 0.25 * r * (u2 - l2) + 0.5 * log_ul / r + 0.25 * sj * sj * (l2 - u2) / r;
    double dterm = dl - du + 0.25 * (u2 - l2) + 0.5 * r * (u * du - l * dl) +
                   0.5 * ((du / u - dl / l) / r - log_ul / (r * r)) +
                   0.25 * sj * sj * (2.0 * (l * dl - u * du) / r - (l2 - u2) / (r * r));
    if (ori < sj - r) {  // atom i entirely inside atom j's sphere
        term += 2.0 * (1.0 / ori - l);
        dterm += -2.0 * dl;
    }
    *dterm_dr = dterm;
    return term;
}

double gb(const ForceField& ff, const double* x, double* g) {
    const int n = ff.n_atoms;
    std::vector<double> born(n), psi(n), chain(n), dE_dB(n, 0.0);
    obc_born_radii(ff, x, born.data(), psi.data(), chain.data());
    const bool dielectrics = ff.solute_dielectric != 0.0 && ff.solvent_dielectric != 0.0;
    const double pre =
        dielectrics ? -kCoulombConstant * (1.0 / ff.solute_dielectric - 1.0 / ff.solvent_dielectric)
                    : 0.0;
    double e = 0.0;
    // Surface-area (ACE) term and the self energies.
    for (int i = 0; i < n; ++i) {
        if (ff.surface_area_energy != 0.0 && born[i] > 0.0) {
            const double r = ff.gb_radii[i] + kObcProbeRadius;
            const double ratio = ff.gb_radii[i] / born[i];
            const double ratio6 = ratio * ratio * ratio * ratio * ratio * ratio;
            const double sa = 4.0 * kPi * ff.surface_area_energy * r * r * ratio6;
            e += sa;
            dE_dB[i] += -6.0 * sa / born[i];
        }
        const double q2 = ff.gb_charges[i] * ff.gb_charges[i];
        e += 0.5 * pre * q2 / born[i];
        dE_dB[i] += -0.5 * pre * q2 / (born[i] * born[i]);
    }
    // Pair terms: pre q_i q_j / f_ij, f = sqrt(r^2 + B_i B_j exp(-r^2 / (4 B_i B_j))).
    for (int i = 0; i < n; ++i) {
        for (int j = i + 1; j < n; ++j) {
            const Vec3 d = at(x, i) - at(x, j);
            const double r2 = dot(d, d);
            const double bb = born[i] * born[j];
            const double D = r2 / (4.0 * bb);
            const double ex = std::exp(-D);
            const double f2 = r2 + bb * ex;
            const double f = std::sqrt(f2);
            const double qq = pre * ff.gb_charges[i] * ff.gb_charges[j];
            e += qq / f;
            if (g) {
                const double dE_dbb = -0.5 * qq * ex * (1.0 + D) / (f2 * f);
                dE_dB[i] += dE_dbb * born[j];
                dE_dB[j] += dE_dbb * born[i];
                // dE/dr / r = -qq (1 - ex/4) / f^3
                const Vec3 gi = (-qq * (1.0 - 0.25 * ex) / (f2 * f)) * d;
                add(g, i, gi);
                add(g, j, -1.0 * gi);
            }
        }
    }
    if (g) {
        // Born-radius chain rule: B_i depends on Psi_i = ori/2 sum_j term(r_ij).
        for (int i = 0; i < n; ++i) {
            const double ori = ff.gb_radii[i] - kObcDielectricOffset;
            const double c = dE_dB[i] * chain[i] * 0.5 * ori;
            if (c == 0.0) continue;
            for (int j = 0; j < n; ++j) {
                if (j == i) continue;
                const double sj = (ff.gb_radii[j] - kObcDielectricOffset) * ff.gb_scales[j];
                const Vec3 d = at(x, i) - at(x, j);
                const double r = norm(d);
                double dterm;
                obc_pair_term(r, ori, sj, &dterm);
                const Vec3 gi = (c * dterm / r) * d;
                add(g, i, gi);
                add(g, j, -1.0 * gi);
            }
        }
    }
    return e;
}
}  // namespace

void obc_born_radii(const ForceField& ff, const double* x, double* born, double* psi,
                    double* chain) {
    const int n = ff.n_atoms;
    for (int i = 0; i < n; ++i) {
        const double ori = ff.gb_radii[i] - kObcDielectricOffset;
        double sum = 0.0;
        for (int j = 0; j < n; ++j) {
            if (j == i) continue;
            const double sj = (ff.gb_radii[j] - kObcDielectricOffset) * ff.gb_scales[j];
            const double r = norm(at(x, i) - at(x, j));
            double dterm;
            sum += obc_pair_term(r, ori, sj, &dterm);
        }
        const double p = 0.5 * ori * sum;
        const double arg = kObcAlpha * p - kObcBeta * p * p + kObcGamma * p * p * p;
        const double th = std::tanh(arg);
        const double b = 1.0 / (1.0 / ori - th / ff.gb_radii[i]);
        born[i] = b;
        if (psi) psi[i] = p;
        if (chain) {
            const double darg = kObcAlpha - 2.0 * kObcBeta * p + 3.0 * kObcGamma * p * p;
            chain[i] = b * b * (1.0 - th * th) * darg / ff.gb_radii[i];
        }
    }
}

double molecule_energy_one(const ForceField& ff, const double* x, double* grad, unsigned terms) {
    if (grad)
        for (int k = 0; k < 3 * ff.n_atoms; ++k) grad[k] = 0.0;
    double e = 0.0;
    if (terms & kTermBonds) e += bonds(ff, x, grad);
    if (terms & kTermAngles) e += angles(ff, x, grad);
    if (terms & kTermTorsions) e += torsions(ff, x, grad);
    if (terms & kTermNonbonded) e += nonbonded(ff, x, grad);
    if ((terms & kTermGB) && ff.has_gb) e += gb(ff, x, grad);
    return e;
}

template <class T>
void molecule_energy_forces(const ForceField& ff, const T* x, int64_t B, T* energy, T* forces,
                            unsigned terms, double energy_scale) {
    const int nd = 3 * ff.n_atoms;
    // Configurations are independent: contiguous chunks, one per thread of the pool (at least
    // kMinPerThread configurations each). Every result is computed the same way whatever the split.
    constexpr int64_t kMinPerThread = 64;
    auto chunk = [&](int64_t begin, int64_t end) {
        std::vector<double> xd(static_cast<size_t>(nd)), g(static_cast<size_t>(nd));
        for (int64_t b = begin; b < end; ++b) {
            for (int k = 0; k < nd; ++k) xd[k] = static_cast<double>(x[b * nd + k]);
            const double e = molecule_energy_one(ff, xd.data(), forces ? g.data() : nullptr, terms);
            energy[b] = static_cast<T>(e * energy_scale);
            if (forces)
                for (int k = 0; k < nd; ++k) forces[b * nd + k] = static_cast<T>(-g[k]);
        }
    };
    const int64_t chunks =
        std::min<int64_t>(default_thread_count(), std::max<int64_t>(1, B / kMinPerThread));
    parallel_for(
        chunks, [&](int64_t t) { chunk(B * t / chunks, B * (t + 1) / chunks); },
        static_cast<int>(chunks));
}

template void molecule_energy_forces<double>(const ForceField&, const double*, int64_t, double*,
                                             double*, unsigned, double);
template void molecule_energy_forces<float>(const ForceField&, const float*, int64_t, float*,
                                            float*, unsigned, double);

}  // namespace eqflow::cpu
