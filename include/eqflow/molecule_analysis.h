// eqflow/molecule_analysis.h: observables of molecular configurations: dihedral angles, the
// alanine dipeptide's phi/psi, chirality and mirror images, and phi free-energy differences with
// block error bars.
#pragma once

#include <array>
#include <cstdint>

#include "eqflow/export.h"
#include "eqflow/force_field.h"

namespace eqflow {

// Alanine-dipeptide atoms (the order is listed in eqflow/force_field.h): the phi and psi
// dihedrals and the stereocentre.
constexpr std::array<int, 4> kAldpPhiAtoms{{4, 6, 8, 14}};   // C(ACE) N CA C
constexpr std::array<int, 4> kAldpPsiAtoms{{6, 8, 14, 16}};  // N CA C N(NME)
constexpr int kAldpN = 6, kAldpCA = 8, kAldpCB = 10, kAldpC = 14;

// Dihedral angle (rad, in (-pi, pi], IUPAC sign convention as OpenMM) of atoms i-j-k-l of x [n][3].
EQFLOW_API double dihedral_angle(const double* x, int i, int j, int k, int l);
// phi and psi [B] of x [B][22][3].
EQFLOW_API void aldp_phi_psi(const double* x, int64_t B, double* phi, double* psi);

// Handedness of a stereocentre: sign of (x_a - x_c) . ((x_b - x_c) x (x_s - x_c)) for centre c;
// +1 or -1 (0 for a degenerate, planar arrangement). For aldp with (a, c, b, s) = (N, CA, C, CB)
// L-alanine gives +1 (checked by tools/make_aldp_system.py against a protein structure).
EQFLOW_API int chirality_sign(const double* x, int a, int centre, int b, int s);
EQFLOW_API bool aldp_is_l(const double* x);
// Mirror image x -> -x of one configuration [n][3] (inverts every stereocentre; preserves the
// energy, which is invariant under reflections).
EQFLOW_API void mirror(double* x, int n);
// Mirrors in place every configuration of x [B][22][3] whose alanine is D; returns how many.
// is_d [B] (optional) receives 1 for the mirrored ones.
EQFLOW_API int64_t aldp_fix_chirality(double* x, int64_t B, uint8_t* is_d = nullptr);

// Free-energy difference between the phi > 0 and phi < 0 regions, in kT:
//   delta_f = F(phi > 0) - F(phi < 0) = -ln( sum_{phi>0} w / sum_{phi<0} w ),
// with weights w = exp(log_w) (log_w null: uniform, e.g. MD frames). The error is one standard
// error from `blocks` contiguous blocks (so correlated MD frames are handled when the blocks are
// longer than the correlation time): the standard error of the blocks' phi > 0 probability p,
// propagated as se(p) / (p (1 - p)). n_pos / n_neg count the samples in each region; delta_f is
// +inf or -inf when a region has no weight.
struct FreeEnergyDifference {
    double delta_f = 0.0;
    double error = 0.0;
    int64_t n_pos = 0, n_neg = 0;
};
EQFLOW_API FreeEnergyDifference phi_free_energy_difference(const double* phi, const double* log_w,
                                                           int64_t N, int blocks = 10);

}  // namespace eqflow
