// src/cpu/coupling_cpu.h: CPU reference of the couplings (see eqflow/coupling.h). Double.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/assignment_cpu.h"
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

// Batched: x0, x1 [B][n][d] -> x1_paired [B][n][d], pairing [B] and cost [B] (both nullable).
void couple(const CouplingOptions& o, const double* x0, const double* x1, int64_t B, int n, int d,
            double* x1_paired, int64_t* pairing, double* cost);

}  // namespace eqflow::cpu
