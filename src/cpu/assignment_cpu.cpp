// CPU reference of the linear sum assignment: shortest augmenting paths with dual potentials.
//
// For each row `cur` in turn, a Dijkstra search over the reduced costs
// c[i][j] - u[i] - v[j] (>= 0 on the current partial matching) finds the cheapest alternating
// path from `cur` to a free column; the matching is flipped along it and the potentials are
// updated so that the reduced costs stay non-negative and zero on matched pairs. After row n-1
// the matching is optimal (complementary slackness). Column costs of the search live in spc[j];
// the potentials of the scanned rows and columns are updated once per row, at the end
// ("lazy" duals), so one search step costs one pass over the unscanned columns.
//
// Shapes: cost [n][n] (T = float or double, read as double), u [n], v [n], spc [n], path [n]
// (row that reached column j), row4col [n], col4row [n], remaining [n] (unscanned columns first,
// scanned ones collected at the back in scan order).
#include "cpu/assignment_cpu.h"

#include "cpu/assignment_simd.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

namespace eqflow::cpu {

template <class T>
int64_t first_invalid_problem(const T* cost, int64_t P, int64_t n) {
    const int64_t nn = n * n;
    for (int64_t p = 0; p < P; ++p) {
        const T* c = cost + p * nn;
        for (int64_t k = 0; k < nn; ++k) {
            const double x = static_cast<double>(c[k]);
            if (std::isnan(x) || x == -std::numeric_limits<double>::infinity()) return p;
        }
    }
    return -1;
}

template <class T>
AssignmentStatus solve_assignment(const T* cost, int64_t n, int64_t* perm, double* total,
                                  AssignmentScratch& s) {
    if (n > kSmallAssignmentN && padded_assignment_available())
        return solve_assignment_wide(cost, n, perm, total, s);
    return solve_assignment_scalar(cost, n, perm, total, s);
}

template <class T>
AssignmentStatus solve_assignment_scalar(const T* cost, int64_t n64, int64_t* perm, double* total,
                                         AssignmentScratch& s) {
    const int n = static_cast<int>(n64);
    const double inf = std::numeric_limits<double>::infinity();
    s.u.assign(n, 0.0);
    s.v.assign(n, 0.0);
    s.spc.assign(n, inf);
    s.path.assign(n, -1);
    s.row4col.assign(n, -1);
    s.col4row.assign(n, -1);
    s.remaining.resize(n);

    // Initial duals and a partial matching (Jonker-Volgenant's reductions): v[j] = column
    // minimum, u[i] = row minimum of the column-reduced costs; then each row takes a free column
    // where its reduced cost is zero. Dual feasibility and tight matched pairs are all the
    // augmentation below needs; on random costs this matches most rows without a search.
    // A column or row without a finite entry makes the problem infeasible at once.
    const auto infeasible = [&] {
        for (int r = 0; r < n; ++r) perm[r] = -1;
        *total = inf;
        return AssignmentStatus::infeasible;
    };
    for (int j = 0; j < n; ++j) {
        double m = inf;
        for (int i = 0; i < n; ++i)
            m = std::min(m, static_cast<double>(cost[static_cast<int64_t>(i) * n + j]));
        if (!(m < inf)) return infeasible();
        s.v[j] = m;
    }
    for (int i = 0; i < n; ++i) {
        const T* row = cost + static_cast<int64_t>(i) * n;
        double m = inf;
        int arg = -1;
        for (int j = 0; j < n; ++j) {
            const double r = static_cast<double>(row[j]) - s.v[j];
            if (r < m || (r == m && s.row4col[j] < 0 && arg >= 0 && s.row4col[arg] >= 0)) {
                m = r;
                arg = j;
            }
        }
        if (!(m < inf)) return infeasible();
        s.u[i] = m;
        if (s.row4col[arg] < 0) {
            s.row4col[arg] = i;
            s.col4row[i] = arg;
        }
    }

    for (int cur = 0; cur < n; ++cur) {
        if (s.col4row[cur] >= 0) continue;  // matched by the initialisation
        for (int j = 0; j < n; ++j) {
            s.spc[j] = inf;
            s.remaining[j] = n - 1 - j;
        }
        int num_remaining = n;
        double min_val = 0.0;
        int i = cur;
        int sink = -1;
        while (sink < 0) {
            const T* row = cost + static_cast<int64_t>(i) * n;
            const double ui = s.u[i];
            double lowest = inf;
            int index = -1;
            for (int k = 0; k < num_remaining; ++k) {
                const int j = s.remaining[k];
                const double r = min_val + static_cast<double>(row[j]) - ui - s.v[j];
                if (r < s.spc[j]) {
                    s.path[j] = i;
                    s.spc[j] = r;
                }
                // Prefer a free column on ties: the path ends there, which keeps ties cheap.
                if (s.spc[j] < lowest || (s.spc[j] == lowest && lowest < inf && s.row4col[j] < 0)) {
                    lowest = s.spc[j];
                    index = k;
                }
            }
            if (index < 0 || !(lowest < inf)) {
                // No finite alternating path from `cur`: by Hall's theorem the rows reached so far
                // have fewer finite neighbours than members, so no finite perfect matching exists.
                return infeasible();
            }
            min_val = lowest;
            const int j = s.remaining[index];
            if (s.row4col[j] < 0) {
                sink = j;
            } else {
                i = s.row4col[j];
            }
            std::swap(s.remaining[index], s.remaining[num_remaining - 1]);
            --num_remaining;
        }
        // Dual update over the scanned rows and columns (remaining[num_remaining..n)); the rows
        // scanned besides `cur` are exactly those matched to scanned columns other than the sink.
        s.u[cur] += min_val;
        for (int k = num_remaining; k < n; ++k) {
            const int j = s.remaining[k];
            const double delta = min_val - s.spc[j];
            s.v[j] -= delta;
            if (j != sink) s.u[s.row4col[j]] += delta;
        }
        // Flip the matching along the path, from the sink back to `cur`.
        int j = sink;
        for (;;) {
            const int r = s.path[j];
            s.row4col[j] = r;
            std::swap(s.col4row[r], j);
            if (r == cur) break;
        }
    }
    double sum = 0.0;
    for (int r = 0; r < n; ++r) {
        perm[r] = s.col4row[r];
        sum += static_cast<double>(cost[static_cast<int64_t>(r) * n + s.col4row[r]]);
    }
    *total = sum;
    return AssignmentStatus::ok;
}

template int64_t first_invalid_problem<float>(const float*, int64_t, int64_t);
template int64_t first_invalid_problem<double>(const double*, int64_t, int64_t);
template AssignmentStatus solve_assignment<float>(const float*, int64_t, int64_t*, double*,
                                                  AssignmentScratch&);
template AssignmentStatus solve_assignment_scalar<float>(const float*, int64_t, int64_t*, double*,
                                                         AssignmentScratch&);
template AssignmentStatus solve_assignment_scalar<double>(const double*, int64_t, int64_t*, double*,
                                                          AssignmentScratch&);
template AssignmentStatus solve_assignment<double>(const double*, int64_t, int64_t*, double*,
                                                   AssignmentScratch&);

}  // namespace eqflow::cpu
