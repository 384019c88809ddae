// src/cpu/coupling_cpu.h: CPU reference of the couplings (see eqflow/coupling.h). Double.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/assignment_cpu.h"
#include "cpu/assignment_small.h"
#include "eqflow/coupling.h"

namespace eqflow::cpu {

struct EqotScratch {
    std::vector<double> cost;         // [n][n] squared particle distances (+inf across types)
    std::vector<double> y;            // [n][d] the rotated x1
    std::vector<double> starts;       // [S][d][d] start orientations
    std::vector<int64_t> cand, prev;  // [n] candidate / previous particle assignment
    AssignmentScratch lsa;
};

// One pair: x0, x1 [n][d], types [n] or nullptr -> perm [n], rotation [d][d]; returns the cost.
double eqot_align_pair(const CouplingOptions& o, const double* x0, const double* x1, int n, int d,
                       const int* types, int64_t* perm, double* rotation, EqotScratch& s);

// eqot_align_pair when o.exhaustive and eqot_exhaustive::applies(n, d): every permutation within
// the types (src/common/eqot_exhaustive.h); returns the exact minimum, its perm and rotation.
bool use_exhaustive(const CouplingOptions& o, int n, int d);
double align_exhaustive(const CouplingOptions& o, const double* x0, const double* x1, int n,
                        const int* types, int64_t* perm, double* rotation);

// The principal axes of x [n][d] (eigenvectors of sum_i x_i x_i^T by decreasing eigenvalue, as
// the columns of f [d][d]): what eqot_align_pair computes for each of its two inputs.
void principal_frame_of(const double* x, int n, int d, double* f);

// eqot_align_pair for n <= kSmallAssignmentN (src/cpu/assignment_small.h) and d = 2 or 3, with
// the principal frames f0, f1 of x0, x1 given (read only when o.frame_starts): the same result,
// bit for bit, without allocation (src/cpu/coupling_small.cpp).
double eqot_align_pair_small(const CouplingOptions& o, const double* x0, const double* x1, int n,
                             int d, const int* types, const double* f0, const double* f1,
                             int64_t* perm, double* rotation);

// Scratch of eqot_align_pair_wide, reused across the pairs of a thread.
struct EqotWideScratch {
    std::vector<double> cost, y;   // [n][n] squared particle distances, [d][n] rotated x1
    std::vector<int> cand, prev;   // [n] candidate / previous particle assignment
    std::vector<int64_t> col4row;  // [n] the assignment's answer
    AssignmentScratch lsa;
};

// Whether couple() aligns eqot pairs with eqot_align_pair_wide: n > kSmallAssignmentN (LJ55),
// d = 2 or 3, no exhaustive alignment, and a CPU with AVX-512, or with AVX2 and n <= 64.
bool use_eqot_wide(const CouplingOptions& o, int n, int d);

// eqot_align_pair_small for n > kSmallAssignmentN (where use_eqot_wide): the same result as
// eqot_align_pair, bit for bit, with frames given, the particle assignments on
// solve_assignment_wide and the state in `scratch` (src/cpu/coupling_small.cpp).
double eqot_align_pair_wide(const CouplingOptions& o, const double* x0, const double* x1, int n,
                            int d, const int* types, const double* f0, const double* f1,
                            int64_t* perm, double* rotation, EqotWideScratch& scratch);

// Batched: x0, x1 [B][n][d] -> x1_paired [B][n][d], pairing [B] and cost [B] (both nullable).
void couple(const CouplingOptions& o, const double* x0, const double* x1, int64_t B, int n, int d,
            double* x1_paired, int64_t* pairing, double* cost);

}  // namespace eqflow::cpu
