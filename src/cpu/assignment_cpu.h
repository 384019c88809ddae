// src/cpu/assignment_cpu.h: CPU reference of the linear sum assignment (see eqflow/assignment.h).
#pragma once

#include <cstdint>
#include <vector>

#include "eqflow/assignment.h"

namespace eqflow::cpu {

// Scratch of one solver, reused across the problems of a batch (sized for n on first use).
struct AssignmentScratch {
    std::vector<double> u, v, spc;  // row / column potentials, shortest path costs [n]
    std::vector<int> path, row4col, col4row, remaining;
    std::vector<char> scanned_row;
    // solve_assignment_wide only: predecessors as 64-bit lanes, the open-column bytes, the
    // columns taken by the current search, and the positions of `remaining` (ties only).
    std::vector<int64_t> path64;
    std::vector<unsigned char> open;
    std::vector<int> picked, pos, ties;
};

// Index of the first problem with a NaN or -inf cost in cost [P][n][n], or -1 when none.
template <class T>
int64_t first_invalid_problem(const T* cost, int64_t P, int64_t n);

// One problem: cost [n][n] (finite or +inf, no NaN) -> perm [n], *total. Returns `infeasible`
// (perm all -1, total +inf) when every permutation uses a +inf entry.
// Where the CPU has AVX-512 or AVX2 (padded_assignment_available()) and n > kSmallAssignmentN,
// this runs solve_assignment_wide, otherwise solve_assignment_scalar: the same results bit for
// bit.
template <class T>
AssignmentStatus solve_assignment(const T* cost, int64_t n, int64_t* perm, double* total,
                                  AssignmentScratch& scratch);

// The plain-loop solver (the reference every other copy is tested against).
template <class T>
EQFLOW_API AssignmentStatus solve_assignment_scalar(const T* cost, int64_t n, int64_t* perm,
                                                    double* total, AssignmentScratch& scratch);

// solve_assignment_scalar step for step with AVX-512 (src/cpu/assignment_wide.cpp): each scan of
// the Dijkstra search is a pass over whole vectors of 8 columns, masked by the open columns,
// instead of a loop over `remaining`; the tie rules, which depend on the `remaining` order, are
// applied exactly from that order, kept up to date once a minimum is attained twice. The same
// permutation, total and status on every input (tests/test_assignment.cpp, hence exported). On a
// CPU with AVX2 but not AVX-512 it runs its AVX2 twin, solve_assignment_wide_avx2. Call only where
// padded_assignment_available() (src/cpu/assignment_simd.h); it throws when built without it.
template <class T>
EQFLOW_API AssignmentStatus solve_assignment_wide(const T* cost, int64_t n, int64_t* perm,
                                                  double* total, AssignmentScratch& scratch);

// The AVX2 twin of solve_assignment_wide (each vector of 8 columns as two 4-wide vectors), the
// same results; exported so that the tests run it on AVX-512 CPUs too. Call only where
// avx2_assignment_available().
template <class T>
EQFLOW_API AssignmentStatus solve_assignment_wide_avx2(const T* cost, int64_t n, int64_t* perm,
                                                       double* total, AssignmentScratch& scratch);

}  // namespace eqflow::cpu
