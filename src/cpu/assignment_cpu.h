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
};

// Index of the first problem with a NaN or -inf cost in cost [P][n][n], or -1 when none.
template <class T>
int64_t first_invalid_problem(const T* cost, int64_t P, int64_t n);

// One problem: cost [n][n] (finite or +inf, no NaN) -> perm [n], *total. Returns `infeasible`
// (perm all -1, total +inf) when every permutation uses a +inf entry.
template <class T>
AssignmentStatus solve_assignment(const T* cost, int64_t n, int64_t* perm, double* total,
                                  AssignmentScratch& scratch);

}  // namespace eqflow::cpu
