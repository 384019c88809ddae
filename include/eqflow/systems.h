// eqflow/systems.h: the target systems of docs/design.md section 3, with batched reduced energies
// and forces on both backends.
//
//   dw4      n = 4,  d = 2:  E = sum_{i<j} [ a (r_ij - d0)^4 + b (r_ij - d0)^2 ],  a = 0.9, b = -4,
//   d0 = 4 lj13     n = 13, d = 3:  E = sum_{i != j} eps [ (rm/r_ij)^12 - 2 (rm/r_ij)^6 ] + c *
//   sum_i |x_i - xbar|^2 lj55     n = 55, d = 3:  as lj13;  lj:N for any N >= 2;  eps = rm = 1, c =
//   1/2, kT = 1
//
// The LJ sum runs over ORDERED pairs (twice the sum over unique pairs): the convention of the
// published LJ13/LJ55 data. Counting each pair once is a different temperature.
//
// Units: u = E / kT is the reduced energy (nats); forces are -dE/dx in the units of E. With
// kT = 1 (all built-in particle systems) the two coincide.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "eqflow/device.h"
#include "eqflow/export.h"
#include "eqflow/tensor.h"

namespace eqflow {

// molecule: a molecular force field (eqflow/molecule.h), e.g. `aldp` (alanine dipeptide, 22 atoms,
// Amber ff99SB-ILDN + OBC, nm and kJ/mol, kT = k_B * 300 K).
enum class PotentialKind { double_well, lennard_jones, molecule };

struct ForceField;  // eqflow/molecule.h

struct System {
    std::string name;  // "dw4", "lj13", "lj55", "lj:N", "aldp"
    PotentialKind kind = PotentialKind::double_well;
    int n = 0;  // particles
    int d = 0;  // spatial dimension
    double kT = 1.0;
    // Double well: a (r - d0)^4 + b (r - d0)^2 per unordered pair.
    double dw_a = 0.9;
    double dw_b = -4.0;
    double dw_d0 = 4.0;
    // Lennard-Jones over ordered pairs, plus the harmonic term c * sum_i |x_i - xbar|^2.
    double lj_eps = 1.0;
    double lj_rm = 1.0;
    double lj_oscillator = 0.5;
    // Optional per-particle type index (empty: all particles identical).
    std::vector<int> atom_types;
    // The force field of a `molecule` system (shared, immutable).
    std::shared_ptr<const ForceField> force_field;

    int dof() const { return (n - 1) * d; }  // dimension of the mean-free subspace
    int num_types() const {                  // 1 when untyped
        int m = 0;
        for (int t : atom_types) m = t + 1 > m ? t + 1 : m;
        return atom_types.empty() ? 1 : m;
    }
};

// "dw4", "lj13", "lj55", "lj:N" (N >= 2) or "aldp" (reads data/aldp, see eqflow/molecule.h).
// Unknown names throw an Error listing the choices.
EQFLOW_API System make_system(const std::string& name);
EQFLOW_API std::vector<std::string> builtin_system_names();

// Batched reduced energy and forces. x: [B][n][d]; u: [B] (reduced, E/kT); forces: [B][n][d]
// (-dE/dx) or an undefined view to skip them. All views on the same device; the CPU path
// computes in double whatever T is, the CUDA path in T (double accumulation for energies).
EQFLOW_API void energy_forces(const System& system, TensorView<const double> x,
                              TensorView<double> u, TensorView<double> forces = {},
                              Stream stream = nullptr);
EQFLOW_API void energy_forces(const System& system, TensorView<const float> x, TensorView<float> u,
                              TensorView<float> forces = {}, Stream stream = nullptr);

// CPU reference for one configuration x [n][d]: returns E (not reduced); fills grad [n][d] with
// dE/dx when non-null, and *laplacian with the full-space Laplacian of E when non-null (the
// configurational-temperature estimator needs it; not available for `molecule` systems).
EQFLOW_API double energy_reference(const System& system, const double* x, double* grad = nullptr,
                                   double* laplacian = nullptr);

// Pair potential phi(r) and its first two derivatives, per pair as it enters E: for LJ the value
// is for one ORDERED pair (E sums it over i != j), for DW4 for one unordered pair.
EQFLOW_API void pair_potential(const System& system, double r, double* phi, double* dphi = nullptr,
                               double* d2phi = nullptr);

}  // namespace eqflow
