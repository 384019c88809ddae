// Linear sum assignment: argument checks, then dispatch on where the costs live.
#include "eqflow/assignment.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "cpu/assignment_cpu.h"
#include "cpu/assignment_simd.h"
#include "cpu/assignment_small.h"
#include "eqflow/error.h"
#include "eqflow/parallel.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/assignment.cuh"
#endif

namespace eqflow {

std::size_t assignment_workspace_bytes(Device device, int64_t P, int64_t n) {
    EQFLOW_CHECK(P >= 0 && n >= 0, "assignment workspace: negative size P=" << P << " n=" << n);
    if (device == Device::cpu) return 0;
#if defined(EQFLOW_HAVE_CUDA)
    return cuda::assignment_workspace_bytes(P, n);
#else
    EQFLOW_THROW("assignment on the GPU: eqflow was built without CUDA");
#endif
}

namespace {

// The n <= 32 solver, out of line: inlined into the batch loop below, its AVX-512 dispatch slowed
// that loop's n > 32 path (the general solver) by ~6% at n = 55.
[[gnu::noinline]] bool solve_small(const double* cost, int n, cpu::SmallAssignment& s) {
    return cpu::solve_assignment_small_auto(cost, n, s);
}

// 32 < n <= 64 on an AVX-512 or AVX2 CPU: cost [n][n] copied into rows of 64 (+inf padding) for
// solve_assignment_padded<8>, which returns the general solver's assignment bit for bit; the total
// is summed in row order as that solver does. Out of line, like solve_small.
template <class T>
[[gnu::noinline]] AssignmentStatus solve_padded64(const T* cost, int n, int64_t* perm,
                                                  double* total, std::vector<double>& padded) {
#if EQFLOW_HAVE_SIMD_ASSIGNMENT
    padded.assign(static_cast<size_t>(n) * 64, std::numeric_limits<double>::infinity());
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) padded[i * 64 + j] = static_cast<double>(cost[i * n + j]);
    cpu::SimdAssignment<8> s;
    if (!cpu::solve_assignment_padded<8>(padded.data(), n, s)) {
        for (int r = 0; r < n; ++r) perm[r] = -1;
        *total = std::numeric_limits<double>::infinity();
        return AssignmentStatus::infeasible;
    }
    double sum = 0.0;
    for (int r = 0; r < n; ++r) {
        perm[r] = s.col4row[r];
        sum += static_cast<double>(cost[r * n + s.col4row[r]]);
    }
    *total = sum;
    return AssignmentStatus::ok;
#else
    (void)padded;
    cpu::AssignmentScratch scratch;
    return cpu::solve_assignment(cost, n, perm, total, scratch);
#endif
}

template <class T>
void lsa_impl(TensorView<const T> cost, TensorView<int64_t> perm, TensorView<double> total,
              TensorView<int32_t> status, void* workspace, std::size_t workspace_bytes,
              Stream stream) {
    EQFLOW_CHECK(cost.rank() == 2 || cost.rank() == 3, "assignment: cost has shape "
                                                           << shape_string(cost.shape)
                                                           << ", expected [P, n, n] or [n, n]");
    const bool single = cost.rank() == 2;
    const int64_t P = single ? 1 : cost.size(0);
    const int64_t n = cost.size(-1);
    EQFLOW_CHECK(cost.size(-2) == n,
                 "assignment: cost matrices must be square, got " << shape_string(cost.shape));
    EQFLOW_CHECK(cost.data != nullptr || cost.numel() == 0, "assignment: cost has no data");
    EQFLOW_CHECK(perm.numel() == P * n && perm.rank() == (single ? 1 : 2) && perm.size(-1) == n,
                 "assignment: perm has shape "
                     << shape_string(perm.shape) << ", expected "
                     << (single ? shape_string({n}) : shape_string({P, n})));
    EQFLOW_CHECK(perm.data != nullptr || perm.numel() == 0, "assignment: perm has no data");
    EQFLOW_CHECK(perm.device == cost.device, "assignment: perm and cost live on different devices");
    if (total.defined()) {
        EQFLOW_CHECK(total.numel() == P && total.rank() <= 1, "assignment: total has shape "
                                                                  << shape_string(total.shape)
                                                                  << ", expected [" << P << "]");
        EQFLOW_CHECK(total.device == cost.device,
                     "assignment: total and cost live on different devices");
    }
    if (status.defined()) {
        EQFLOW_CHECK(status.numel() == P && status.rank() <= 1, "assignment: status has shape "
                                                                    << shape_string(status.shape)
                                                                    << ", expected [" << P << "]");
        EQFLOW_CHECK(status.device == cost.device,
                     "assignment: status and cost live on different devices");
    }
    if (P == 0) return;

    int64_t first_invalid = -1, first_infeasible = -1;
    if (cost.device == Device::cpu) {
        first_invalid = cpu::first_invalid_problem(cost.data, P, n);
        if (first_invalid < 0) {
            // Problems are independent: chunks of them go to the pool's threads, each with its own
            // scratch; every output is per problem, so nothing depends on the thread count. Small
            // problems take the fixed-size copy of the solver, vectorised with AVX-512 where the
            // CPU has it (src/cpu/assignment_simd.h; bit-identical results).
            constexpr int64_t kChunk = 64;
            std::vector<unsigned char> ok(static_cast<size_t>(P));
            parallel_for((P + kChunk - 1) / kChunk, [&](int64_t chunk) {
                cpu::AssignmentScratch scratch;
                cpu::SmallAssignment small;
                std::vector<double> padded;  // [n][64] for 32 < n <= 64
                double local[cpu::kSmallAssignmentN * cpu::kSmallAssignmentN];
                const int64_t end = std::min(P, (chunk + 1) * kChunk);
                for (int64_t p = chunk * kChunk; p < end; ++p) {
                    const T* c = cost.data + p * n * n;
                    int64_t* pp = perm.data + p * n;
                    double t = 0.0;
                    AssignmentStatus st;
                    if (n <= cpu::kSmallAssignmentN) {
                        for (int64_t k = 0; k < n * n; ++k) local[k] = static_cast<double>(c[k]);
                        const int ni = static_cast<int>(n);
                        if (n > 0 && !solve_small(local, ni, small)) {
                            for (int64_t r = 0; r < n; ++r) pp[r] = -1;
                            t = std::numeric_limits<double>::infinity();
                            st = AssignmentStatus::infeasible;
                        } else {
                            for (int r = 0; r < ni; ++r) {
                                pp[r] = small.col4row[r];
                                t += local[r * ni + small.col4row[r]];
                            }
                            st = AssignmentStatus::ok;
                        }
                    } else if (n <= 64 && cpu::padded_assignment_available()) {
                        // 33..64 (LJ55): the fixed-size AVX-512 or AVX2 solver with 8 vectors
                        // a row (the general solver's results bit for bit), rows padded with
                        // +inf.
                        st = solve_padded64(c, static_cast<int>(n), pp, &t, padded);
                    } else {
                        st = cpu::solve_assignment(c, n, pp, &t, scratch);
                    }
                    if (total.defined()) total.data[p] = t;
                    if (status.defined()) status.data[p] = static_cast<int32_t>(st);
                    ok[p] = st == AssignmentStatus::ok;
                }
            });
            for (int64_t p = 0; p < P && first_infeasible < 0; ++p)
                if (!ok[p]) first_infeasible = p;
        }
    } else {
#if defined(EQFLOW_HAVE_CUDA)
        cuda::linear_sum_assignment(cost.data, P, n, perm.data,
                                    total.defined() ? total.data : nullptr,
                                    status.defined() ? status.data : nullptr, workspace,
                                    workspace_bytes, stream, &first_invalid, &first_infeasible);
#else
        (void)workspace;
        (void)workspace_bytes;
        (void)stream;
        EQFLOW_THROW("assignment on the GPU: eqflow was built without CUDA");
#endif
    }
    EQFLOW_CHECK(first_invalid < 0, "assignment: problem "
                                        << first_invalid
                                        << " has a NaN or -inf cost (+inf marks a forbidden pair)");
    EQFLOW_CHECK(first_infeasible < 0 || status.defined(),
                 "assignment: problem "
                     << first_infeasible
                     << " is infeasible (every assignment uses a forbidden +inf pair)");
}

}  // namespace

void linear_sum_assignment(TensorView<const double> cost, TensorView<int64_t> perm,
                           TensorView<double> total, TensorView<int32_t> status, void* workspace,
                           std::size_t workspace_bytes, Stream stream) {
    lsa_impl<double>(cost, perm, total, status, workspace, workspace_bytes, stream);
}
void linear_sum_assignment(TensorView<const float> cost, TensorView<int64_t> perm,
                           TensorView<double> total, TensorView<int32_t> status, void* workspace,
                           std::size_t workspace_bytes, Stream stream) {
    lsa_impl<float>(cost, perm, total, status, workspace, workspace_bytes, stream);
}

double linear_sum_assignment_host(const double* cost, int64_t n, int64_t* perm) {
    double total = 0.0;
    linear_sum_assignment(TensorView<const double>(cost, Shape{n, n}),
                          TensorView<int64_t>(perm, Shape{n}),
                          TensorView<double>(&total, Shape{1}));
    return total;
}

}  // namespace eqflow
