// src/cpu/assignment_small.h: the CPU assignment solver for n <= kSmallAssignmentN, with its state
// in fixed arrays (no allocation, no vector bookkeeping per call). The eqot coupling solves B^2
// (starts x rounds) problems of the particle count's size, and the public batched assignment uses
// it for small n as well.
//
// It is the algorithm of src/cpu/assignment_cpu.cpp step for step -- the same reductions, the same
// Dijkstra search over the same `remaining` order with the same tie-breaking, the same dual
// updates -- so it returns the same permutation and the same total, bit for bit, on every input
// (tests/test_assignment.cpp checks this against the general solver and brute force). Only the
// storage differs: cost is a dense [n][n] double matrix, indices are int.
#pragma once

#include <algorithm>
#include <limits>
#include <utility>

namespace eqflow::cpu {

constexpr int kSmallAssignmentN = 32;

struct SmallAssignment {
    double u[kSmallAssignmentN], v[kSmallAssignmentN], spc[kSmallAssignmentN];
    int path[kSmallAssignmentN], row4col[kSmallAssignmentN], col4row[kSmallAssignmentN];
    int remaining[kSmallAssignmentN];
};

// The minimum of x[0..n) (x finite or +inf, no NaN). Four independent chains, so the compare
// latency overlaps; the minimum of a set is exact, so the order does not matter.
inline double small_min(const double* __restrict x, int n) {
    const double inf = std::numeric_limits<double>::infinity();
    double m0 = inf, m1 = inf, m2 = inf, m3 = inf;
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        m0 = x[j] < m0 ? x[j] : m0;
        m1 = x[j + 1] < m1 ? x[j + 1] : m1;
        m2 = x[j + 2] < m2 ? x[j + 2] : m2;
        m3 = x[j + 3] < m3 ? x[j + 3] : m3;
    }
    for (; j < n; ++j) m0 = x[j] < m0 ? x[j] : m0;
    m0 = m1 < m0 ? m1 : m0;
    m2 = m3 < m2 ? m3 : m2;
    return m2 < m0 ? m2 : m0;
}

// cost [n][n] (finite or +inf; no NaN, no -inf), 1 <= n <= kSmallAssignmentN. Returns false when
// no finite perfect matching exists; otherwise s.col4row[r] is the column of row r.
//
// The general solver's argmin scans pick, among equal values, by rules that depend on the scan
// order: the row reduction the first free column at the row minimum, else the first column there;
// the search the last free column at the minimum in `remaining` order, else the first. Both are
// kept exactly, each scan in two passes: first the minimum (exact, so order-free; only
// comparisons decide, which do not see the sign of a zero), with the search's path-cost updates
// as selects rather than branches on coin-toss comparisons; then a pass that applies the tie rule
// to the columns at the minimum (its test is rarely true, so its branches predict well; making
// them selects too measured slower).
inline bool solve_assignment_small(const double* __restrict cost, int n, SmallAssignment& s) {
    constexpr int kN = kSmallAssignmentN;
    const double inf = std::numeric_limits<double>::infinity();
    double* __restrict u = s.u;
    double* __restrict v = s.v;
    double* __restrict spc = s.spc;
    int* __restrict path = s.path;
    int* __restrict row4col = s.row4col;
    int* __restrict col4row = s.col4row;
    int* __restrict remaining = s.remaining;
    // Column reduction: v[j] = min_i cost[i][j].
    for (int j = 0; j < n; ++j) {
        v[j] = inf;
        row4col[j] = -1;
        col4row[j] = -1;
    }
    for (int i = 0; i < n; ++i) {
        const double* __restrict row = cost + i * n;
        for (int j = 0; j < n; ++j) v[j] = row[j] < v[j] ? row[j] : v[j];
    }
    for (int j = 0; j < n; ++j)
        if (!(v[j] < inf)) return false;
    // Row reduction and the partial matching: the row minimum, a free column preferred on ties.
    double red[kN];
    for (int i = 0; i < n; ++i) {
        const double* __restrict row = cost + i * n;
        for (int j = 0; j < n; ++j) red[j] = row[j] - v[j];
        const double m = small_min(red, n);
        if (!(m < inf)) return false;
        int arg = -1;
        for (int j = 0; j < n; ++j) {
            if (red[j] == m) {
                if (row4col[j] < 0) {
                    arg = j;
                    break;
                }
                if (arg < 0) arg = j;
            }
        }
        u[i] = m;
        if (row4col[arg] < 0) {
            row4col[arg] = i;
            col4row[i] = arg;
        }
    }
    for (int cur = 0; cur < n; ++cur) {
        if (col4row[cur] >= 0) continue;
        for (int j = 0; j < n; ++j) {
            spc[j] = inf;
            remaining[j] = n - 1 - j;
        }
        int num_remaining = n;
        double min_val = 0.0;
        int i = cur;
        int sink = -1;
        while (sink < 0) {
            const double* __restrict row = cost + i * n;
            const double ui = u[i];
            // The general solver's scan in two passes. The first updates the path costs and takes
            // their minimum with selects only: on random costs each comparison is a coin toss, and
            // a branch on it would be mispredicted half the time. The second applies the general
            // solver's tie rule (the last free column at the minimum, else the first column
            // there); its test is almost always false, so its branch predicts well.
            double lowest = inf;
            for (int k = 0; k < num_remaining; ++k) {
                const int j = remaining[k];
                const double r = min_val + row[j] - ui - v[j];
                const double old = spc[j];
                const int better = r < old;
                const double now = better ? r : old;
                spc[j] = now;
                path[j] = better * i + (1 - better) * path[j];
                lowest = now < lowest ? now : lowest;
            }
            if (!(lowest < inf)) return false;
            int first = -1, last_free = -1;
            for (int k = 0; k < num_remaining; ++k) {
                const int j = remaining[k];
                if (spc[j] == lowest) {
                    if (first < 0) first = k;
                    if (row4col[j] < 0) last_free = k;
                }
            }
            const int index = last_free >= 0 ? last_free : first;
            min_val = lowest;
            const int j = remaining[index];
            if (row4col[j] < 0) {
                sink = j;
            } else {
                i = row4col[j];
            }
            std::swap(remaining[index], remaining[num_remaining - 1]);
            --num_remaining;
        }
        u[cur] += min_val;
        for (int k = num_remaining; k < n; ++k) {
            const int j = remaining[k];
            const double delta = min_val - spc[j];
            v[j] -= delta;
            if (j != sink) u[row4col[j]] += delta;
        }
        int j = sink;
        for (;;) {
            const int r = path[j];
            row4col[j] = r;
            std::swap(col4row[r], j);
            if (r == cur) break;
        }
    }
    return true;
}

}  // namespace eqflow::cpu
