// kernels/molecule.cu: batched Amber + OBC energies and forces, one block per configuration.
//
// Layout: x [B][n][3] row-major (nm), energy [B] (kJ/mol), forces [B][n][3] (-dE/dx).
// Parameters (device, read-only, shared by all blocks): index lists int32 and parameters float64
// packed by pack() below, as in the CPU reference src/cpu/molecule_cpu.cpp, which this mirrors
// term by term.
//
// Block of kThreads threads owns one configuration. Shared memory (n <= kMaxAtoms = 256):
//   xs [n][3] T, grad [n][3] T (atomicAdd), born/chain/dE_dB [n] T, red [kThreads] double.
// Work split: bonded terms and nonbonded pairs strided over threads; GB Born radii one thread per
// atom; GB pairs strided over the n(n-1)/2 unordered pairs; the Born-radius chain rule strided
// over the n(n-1) ordered pairs. Energies are accumulated in double per thread, reduced in shared
// memory; gradients in T via shared atomics (double atomicAdd needs sm_60+).
// Cost for aldp (n = 22, ~21 bonds, 36 angles, ~41 torsions, ~170 pairs, 231 GB pairs): ~3e4
// FLOP per configuration, bytes 2 * 66 * sizeof(T) + sizeof(T): compute bound, latency dominated.
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "common/dihedral.h"
#include "eqflow/buffer.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"
#include "kernels/molecule.cuh"

namespace eqflow::cuda {

namespace {
constexpr int kThreads = 128;
constexpr int kMaxAtoms = 256;

struct MolParams {
    int n, nb, na, nt, np, has_gb;
    unsigned terms;
    const int* bond_idx;      // [nb][2]
    const double* bond_par;   // [nb][2] length, k
    const int* angle_idx;     // [na][3]
    const double* angle_par;  // [na][2] angle, k
    const int* tors_idx;      // [nt][5] i j k l periodicity
    const double* tors_par;   // [nt][2] phase, k
    const int* pair_idx;      // [np][2]
    const double* pair_par;   // [np][3] charge_prod, sigma, epsilon
    const double* gb_par;     // [n][3] charge, radius, scale
    double gb_pre, gb_sa;     // -K (1/eps_in - 1/eps_out); 4 pi * surface-area energy
    double energy_scale;      // energy [b] = energy_scale * E
};

template <class T>
__device__ inline void atomic_add3(T* g, int i, T x, T y, T z) {
    atomicAdd(g + 3 * i, x);
    atomicAdd(g + 3 * i + 1, y);
    atomicAdd(g + 3 * i + 2, z);
}

// OBC descreening integral and d/dr (see obc_pair_term in src/cpu/molecule_cpu.cpp).
template <class T>
__device__ inline T obc_term(T r, T ori, T sj, T* dterm_dr) {
    *dterm_dr = T(0);
    if (ori >= r + sj) return T(0);
    const T diff = fabs(r - sj);
    T l, dl;
    if (ori > diff) {
        l = T(1) / ori;
        dl = T(0);
    } else {
        l = T(1) / diff;
        dl = (r > sj ? T(-1) : T(1)) * l * l;
    }
    const T u = T(1) / (r + sj), du = -u * u;
    const T l2 = l * l, u2 = u * u;
    const T log_ul = log(u / l);
    T term =
        l - u + T(0.25) * r * (u2 - l2) + T(0.5) * log_ul / r + T(0.25) * sj * sj * (l2 - u2) / r;
    T dterm = dl - du + T(0.25) * (u2 - l2) + T(0.5) * r * (u * du - l * dl) +
              T(0.5) * ((du / u - dl / l) / r - log_ul / (r * r)) +
              T(0.25) * sj * sj * (T(2) * (l * dl - u * du) / r - (l2 - u2) / (r * r));
    if (ori < sj - r) {
        term += T(2) * (T(1) / ori - l);
        dterm += T(-2) * dl;
    }
    *dterm_dr = dterm;
    return term;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    molecule_kernel(const T* __restrict__ x, MolParams p, T* __restrict__ energy,
                    T* __restrict__ forces) {
    __shared__ T xs[kMaxAtoms * 3];
    __shared__ T grad[kMaxAtoms * 3];
    __shared__ T born[kMaxAtoms], chain[kMaxAtoms], dE_dB[kMaxAtoms];
    __shared__ double red[kThreads];
    const int n = p.n;
    const int64_t b = blockIdx.x;
    const T* xb = x + b * n * 3;
    for (int k = threadIdx.x; k < n * 3; k += blockDim.x) {
        xs[k] = xb[k];
        grad[k] = T(0);
    }
    for (int k = threadIdx.x; k < n; k += blockDim.x) dE_dB[k] = T(0);
    __syncthreads();
    double e = 0.0;

    if (p.terms & kTermBonds) {
        for (int t = threadIdx.x; t < p.nb; t += blockDim.x) {
            const int i = p.bond_idx[2 * t], j = p.bond_idx[2 * t + 1];
            const T dx = xs[3 * i] - xs[3 * j], dy = xs[3 * i + 1] - xs[3 * j + 1],
                    dz = xs[3 * i + 2] - xs[3 * j + 2];
            const T r = sqrt(dx * dx + dy * dy + dz * dz);
            const T dr = r - T(p.bond_par[2 * t]);
            const T k = T(p.bond_par[2 * t + 1]);
            e += 0.5 * static_cast<double>(k * dr * dr);
            const T f = k * dr / r;
            atomic_add3(grad, i, f * dx, f * dy, f * dz);
            atomic_add3(grad, j, -f * dx, -f * dy, -f * dz);
        }
    }
    if (p.terms & kTermAngles) {
        for (int t = threadIdx.x; t < p.na; t += blockDim.x) {
            const int i = p.angle_idx[3 * t], j = p.angle_idx[3 * t + 1],
                      k = p.angle_idx[3 * t + 2];
            T u[3], v[3];
            for (int a = 0; a < 3; ++a) {
                u[a] = xs[3 * i + a] - xs[3 * j + a];
                v[a] = xs[3 * k + a] - xs[3 * j + a];
            }
            const T nu = sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
            const T nv = sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
            T c = (u[0] * v[0] + u[1] * v[1] + u[2] * v[2]) / (nu * nv);
            c = fmin(fmax(c, T(-1)), T(1));
            const T dt = acos(c) - T(p.angle_par[2 * t]);
            const T kk = T(p.angle_par[2 * t + 1]);
            e += 0.5 * static_cast<double>(kk * dt * dt);
            const T s = fmax(sqrt(T(1) - c * c), T(1e-12));
            const T f = kk * dt;
            T gi[3], gk[3];
            for (int a = 0; a < 3; ++a) {
                gi[a] = (-f / (nu * s)) * (v[a] / nv - c * u[a] / nu);
                gk[a] = (-f / (nv * s)) * (u[a] / nu - c * v[a] / nv);
            }
            atomic_add3(grad, i, gi[0], gi[1], gi[2]);
            atomic_add3(grad, k, gk[0], gk[1], gk[2]);
            atomic_add3(grad, j, -gi[0] - gk[0], -gi[1] - gk[1], -gi[2] - gk[2]);
        }
    }
    if (p.terms & kTermTorsions) {
        for (int t = threadIdx.x; t < p.nt; t += blockDim.x) {
            const int* id = p.tors_idx + 5 * t;
            const int i = id[0], j = id[1], k = id[2], l = id[3], per = id[4];
            const T phase = T(p.tors_par[2 * t]), kt = T(p.tors_par[2 * t + 1]);
            const T phi = geometry::dihedral(xs, i, j, k, l);
            e += static_cast<double>(kt * (T(1) + cos(T(per) * phi - phase)));
            T F[3], G[3], H[3];
            for (int a = 0; a < 3; ++a) {
                F[a] = xs[3 * i + a] - xs[3 * j + a];
                G[a] = xs[3 * j + a] - xs[3 * k + a];
                H[a] = xs[3 * l + a] - xs[3 * k + a];
            }
            const T A[3] = {F[1] * G[2] - F[2] * G[1], F[2] * G[0] - F[0] * G[2],
                            F[0] * G[1] - F[1] * G[0]};
            const T Bv[3] = {H[1] * G[2] - H[2] * G[1], H[2] * G[0] - H[0] * G[2],
                             H[0] * G[1] - H[1] * G[0]};
            const T A2 = A[0] * A[0] + A[1] * A[1] + A[2] * A[2];
            const T B2 = Bv[0] * Bv[0] + Bv[1] * Bv[1] + Bv[2] * Bv[2];
            const T nG = sqrt(G[0] * G[0] + G[1] * G[1] + G[2] * G[2]);
            const T FG = F[0] * G[0] + F[1] * G[1] + F[2] * G[2];
            const T HG = H[0] * G[0] + H[1] * G[1] + H[2] * G[2];
            const T dE = -kt * T(per) * sin(T(per) * phi - phase);
            T gi[3], gl[3], mid[3];
            for (int a = 0; a < 3; ++a) {
                gi[a] = -nG / A2 * A[a];
                gl[a] = nG / B2 * Bv[a];
                mid[a] = FG / (A2 * nG) * A[a] - HG / (B2 * nG) * Bv[a];
            }
            atomic_add3(grad, i, dE * gi[0], dE * gi[1], dE * gi[2]);
            atomic_add3(grad, j, dE * (mid[0] - gi[0]), dE * (mid[1] - gi[1]),
                        dE * (mid[2] - gi[2]));
            atomic_add3(grad, k, dE * (-gl[0] - mid[0]), dE * (-gl[1] - mid[1]),
                        dE * (-gl[2] - mid[2]));
            atomic_add3(grad, l, dE * gl[0], dE * gl[1], dE * gl[2]);
        }
    }
    if (p.terms & kTermNonbonded) {
        for (int t = threadIdx.x; t < p.np; t += blockDim.x) {
            const int i = p.pair_idx[2 * t], j = p.pair_idx[2 * t + 1];
            const T qq = T(p.pair_par[3 * t]), sig = T(p.pair_par[3 * t + 1]),
                    eps = T(p.pair_par[3 * t + 2]);
            const T dx = xs[3 * i] - xs[3 * j], dy = xs[3 * i + 1] - xs[3 * j + 1],
                    dz = xs[3 * i + 2] - xs[3 * j + 2];
            const T r2 = dx * dx + dy * dy + dz * dz, r = sqrt(r2);
            const T s2 = sig * sig / r2, s6 = s2 * s2 * s2, s12 = s6 * s6;
            const T coul = T(kCoulombConstant) * qq / r;
            e += static_cast<double>(T(4) * eps * (s12 - s6) + coul);
            const T f = (T(4) * eps * (T(-12) * s12 + T(6) * s6) - coul) / r2;  // (dE/dr) / r
            atomic_add3(grad, i, f * dx, f * dy, f * dz);
            atomic_add3(grad, j, -f * dx, -f * dy, -f * dz);
        }
    }
    if ((p.terms & kTermGB) && p.has_gb) {
        const double* gp = p.gb_par;
        const T offset = T(kObcDielectricOffset);
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const T ri = T(gp[3 * i + 1]), ori = ri - offset;
            T sum = T(0);
            for (int j = 0; j < n; ++j) {
                if (j == i) continue;
                const T sj = (T(gp[3 * j + 1]) - offset) * T(gp[3 * j + 2]);
                const T dx = xs[3 * i] - xs[3 * j], dy = xs[3 * i + 1] - xs[3 * j + 1],
                        dz = xs[3 * i + 2] - xs[3 * j + 2];
                T dterm;
                sum += obc_term(sqrt(dx * dx + dy * dy + dz * dz), ori, sj, &dterm);
            }
            const T ps = T(0.5) * ori * sum;
            const T th =
                tanh(T(kObcAlpha) * ps - T(kObcBeta) * ps * ps + T(kObcGamma) * ps * ps * ps);
            const T bi = T(1) / (T(1) / ori - th / ri);
            born[i] = bi;
            chain[i] = bi * bi * (T(1) - th * th) *
                       (T(kObcAlpha) - T(2 * kObcBeta) * ps + T(3 * kObcGamma) * ps * ps) / ri;
            // Self energy and the surface-area term depend on B_i only.
            const T qi = T(gp[3 * i]);
            T de = T(-0.5) * T(p.gb_pre) * qi * qi / (bi * bi);
            e += 0.5 * p.gb_pre * static_cast<double>(qi * qi / bi);
            if (p.gb_sa != 0.0 && bi > T(0)) {
                const T rr = ri + T(kObcProbeRadius);
                const T ratio = ri / bi;
                const T r3 = ratio * ratio * ratio;
                const T sa = T(p.gb_sa) * rr * rr * r3 * r3;
                e += static_cast<double>(sa);
                de += T(-6) * sa / bi;
            }
            atomicAdd(dE_dB + i, de);
        }
        __syncthreads();
        const int npairs = n * (n - 1) / 2;
        for (int t = threadIdx.x; t < npairs; t += blockDim.x) {
            // Unordered pair number t -> (i, j), i < j: row i holds n - 1 - i pairs.
            int i = 0, rem = t;
            while (rem >= n - 1 - i) {
                rem -= n - 1 - i;
                ++i;
            }
            const int j = i + 1 + rem;
            const T dx = xs[3 * i] - xs[3 * j], dy = xs[3 * i + 1] - xs[3 * j + 1],
                    dz = xs[3 * i + 2] - xs[3 * j + 2];
            const T r2 = dx * dx + dy * dy + dz * dz;
            const T bb = born[i] * born[j];
            const T D = r2 / (T(4) * bb);
            const T ex = exp(-D);
            const T f2 = r2 + bb * ex, f = sqrt(f2);
            const T qq = T(p.gb_pre) * T(gp[3 * i]) * T(gp[3 * j]);
            e += static_cast<double>(qq / f);
            const T dbb = T(-0.5) * qq * ex * (T(1) + D) / (f2 * f);
            atomicAdd(dE_dB + i, dbb * born[j]);
            atomicAdd(dE_dB + j, dbb * born[i]);
            const T g = -qq * (T(1) - T(0.25) * ex) / (f2 * f);
            atomic_add3(grad, i, g * dx, g * dy, g * dz);
            atomic_add3(grad, j, -g * dx, -g * dy, -g * dz);
        }
        __syncthreads();
        for (int t = threadIdx.x; t < n * n; t += blockDim.x) {
            const int i = t / n, j = t % n;
            if (i == j) continue;
            const T ori = T(gp[3 * i + 1]) - offset;
            const T c = dE_dB[i] * chain[i] * T(0.5) * ori;
            const T sj = (T(gp[3 * j + 1]) - offset) * T(gp[3 * j + 2]);
            const T dx = xs[3 * i] - xs[3 * j], dy = xs[3 * i + 1] - xs[3 * j + 1],
                    dz = xs[3 * i + 2] - xs[3 * j + 2];
            const T r = sqrt(dx * dx + dy * dy + dz * dz);
            T dterm;
            obc_term(r, ori, sj, &dterm);
            const T g = c * dterm / r;
            atomic_add3(grad, i, g * dx, g * dy, g * dz);
            atomic_add3(grad, j, -g * dx, -g * dy, -g * dz);
        }
    }
    red[threadIdx.x] = e;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) red[threadIdx.x] += red[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) energy[b] = static_cast<T>(red[0] * p.energy_scale);
    if (forces != nullptr)
        for (int k = threadIdx.x; k < n * 3; k += blockDim.x) forces[b * n * 3 + k] = -grad[k];
}

// Host-side packing and the per-ForceField device copy.
struct Packed {
    std::vector<int> ints;
    std::vector<double> dbls;
    size_t bond_i, angle_i, tors_i, pair_i;
    size_t bond_d, angle_d, tors_d, pair_d, gb_d;
};

Packed pack(const ForceField& ff) {
    Packed pk;
    auto& I = pk.ints;
    auto& D = pk.dbls;
    pk.bond_i = I.size();
    pk.bond_d = D.size();
    for (const auto& b : ff.bonds) {
        I.insert(I.end(), {b.i, b.j});
        D.insert(D.end(), {b.length, b.k});
    }
    pk.angle_i = I.size();
    pk.angle_d = D.size();
    for (const auto& a : ff.angles) {
        I.insert(I.end(), {a.i, a.j, a.k});
        D.insert(D.end(), {a.angle, a.k_theta});
    }
    pk.tors_i = I.size();
    pk.tors_d = D.size();
    for (const auto& t : ff.torsions) {
        I.insert(I.end(), {t.i, t.j, t.k, t.l, t.periodicity});
        D.insert(D.end(), {t.phase, t.k_phi});
    }
    pk.pair_i = I.size();
    pk.pair_d = D.size();
    for (const auto& p : ff.pairs) {
        I.insert(I.end(), {p.i, p.j});
        D.insert(D.end(), {p.charge_prod, p.sigma, p.epsilon});
    }
    pk.gb_d = D.size();
    if (ff.has_gb)
        for (int i = 0; i < ff.n_atoms; ++i)
            D.insert(D.end(), {ff.gb_charges[i], ff.gb_radii[i], ff.gb_scales[i]});
    I.push_back(0);  // never empty
    D.push_back(0.0);
    return pk;
}

struct DeviceCopy {
    std::vector<int> ints;
    std::vector<double> dbls;
    Buffer<int> d_ints;
    Buffer<double> d_dbls;
};

// Returns device pointers for ff's packed parameters, uploading when first seen or changed.
// Never destroyed (device memory is released with the context at exit).
void device_params(const ForceField& ff, const Packed& pk, const int** ints, const double** dbls) {
    static std::mutex mutex;
    static auto* cache = new std::map<std::pair<const ForceField*, int>, DeviceCopy>();
    int device = 0;
    EQFLOW_CUDA_CHECK(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(mutex);
    DeviceCopy& c = (*cache)[{&ff, device}];
    if (c.ints != pk.ints || c.dbls != pk.dbls) {
        c.ints = pk.ints;
        c.dbls = pk.dbls;
        c.d_ints = Buffer<int>(c.ints.size(), Device::cuda);
        c.d_dbls = Buffer<double>(c.dbls.size(), Device::cuda);
        EQFLOW_CUDA_CHECK(cudaMemcpy(c.d_ints.data(), c.ints.data(), c.ints.size() * sizeof(int),
                                     cudaMemcpyHostToDevice));
        EQFLOW_CUDA_CHECK(cudaMemcpy(c.d_dbls.data(), c.dbls.data(), c.dbls.size() * sizeof(double),
                                     cudaMemcpyHostToDevice));
    }
    *ints = c.d_ints.data();
    *dbls = c.d_dbls.data();
}
}  // namespace

template <class T>
void molecule_energy_forces(const ForceField& ff, const T* x, int64_t B, T* energy, T* forces,
                            unsigned terms, Stream stream, double energy_scale) {
    if (B == 0) return;
    EQFLOW_CHECK(ff.n_atoms <= kMaxAtoms,
                 "GPU force field supports up to " << kMaxAtoms << " atoms, got " << ff.n_atoms);
    EQFLOW_CHECK(B <= 0x7fffffff,
                 "GPU force field: batch of " << B << " is too large for one launch");
    const Packed pk = pack(ff);
    const int* di = nullptr;
    const double* dd = nullptr;
    device_params(ff, pk, &di, &dd);
    MolParams p{};
    p.n = ff.n_atoms;
    p.nb = static_cast<int>(ff.bonds.size());
    p.na = static_cast<int>(ff.angles.size());
    p.nt = static_cast<int>(ff.torsions.size());
    p.np = static_cast<int>(ff.pairs.size());
    p.has_gb = ff.has_gb ? 1 : 0;
    p.terms = terms;
    p.bond_idx = di + pk.bond_i;
    p.bond_par = dd + pk.bond_d;
    p.angle_idx = di + pk.angle_i;
    p.angle_par = dd + pk.angle_d;
    p.tors_idx = di + pk.tors_i;
    p.tors_par = dd + pk.tors_d;
    p.pair_idx = di + pk.pair_i;
    p.pair_par = dd + pk.pair_d;
    p.gb_par = dd + pk.gb_d;
    const bool dielectrics = ff.solute_dielectric != 0.0 && ff.solvent_dielectric != 0.0;
    p.gb_pre = dielectrics
                   ? -kCoulombConstant * (1.0 / ff.solute_dielectric - 1.0 / ff.solvent_dielectric)
                   : 0.0;
    p.gb_sa = 4.0 * 3.14159265358979323846 * ff.surface_area_energy;
    p.energy_scale = energy_scale;
    EQFLOW_LAUNCH(molecule_kernel<T>, static_cast<unsigned>(B), kThreads, 0, EQFLOW_STREAM(stream),
                  x, p, energy, forces);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

template void molecule_energy_forces<float>(const ForceField&, const float*, int64_t, float*,
                                            float*, unsigned, Stream, double);
template void molecule_energy_forces<double>(const ForceField&, const double*, int64_t, double*,
                                             double*, unsigned, Stream, double);

}  // namespace eqflow::cuda
