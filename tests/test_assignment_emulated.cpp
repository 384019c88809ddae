// The assignment kernels' own source (kernels/assignment_kernels.cuh), run on the CPU by the
// execution-model emulator of emu/: the block solver (one block of 256 threads per problem)
// against the warp solver and the CPU reference, under three thread orders. Label cpu: it runs
// in every CI job, with AddressSanitizer in the asan one.
//
// The block solver must return what the warp solver returns, bit for bit and ties included (the
// same steps, tie rule and arithmetic; docs/design.md section 10), and its results must not
// depend on the order of the threads between barriers (a race would show as a difference). The
// CPU reference takes the same steps but breaks ties between equal path costs by its own scan
// order, so it is compared exactly where there are no ties (random real costs) and by the
// optimal total where there are (small integers).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "eqflow/assignment.h"
#include "eqflow/tensor.h"
#include "test_util.h"

// After the standard and GoogleTest headers: the emulator defines CUDA's keywords as macros.
#include "cuda_emu.h"
#include "kernels/assignment_kernels.cuh"

namespace eqflow {
namespace {

using cuda::kBlockLsaThreads;
using namespace cuda::assignment_detail;

const double kInf = std::numeric_limits<double>::infinity();
const emu::Schedule kSchedules[] = {emu::Schedule::forward, emu::Schedule::reverse,
                                    emu::Schedule::shuffled};

const char* schedule_name(emu::Schedule s) {
    return s == emu::Schedule::forward   ? "forward"
           : s == emu::Schedule::reverse ? "reverse"
                                         : "shuffled";
}

struct Out {
    std::vector<int64_t> perm;
    std::vector<double> total;
    std::vector<int32_t> status;
    std::vector<unsigned long long> flags;
};

// Bitwise equality, so that totals that differ only in the last bit (or NaN payloads) show.
bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

void expect_same(const Out& a, const Out& b, const std::string& what) {
    EXPECT_EQ(a.perm, b.perm) << what;
    EXPECT_TRUE(same_bits(a.total, b.total)) << what;
    EXPECT_EQ(a.status, b.status) << what;
    EXPECT_EQ(a.flags, b.flags) << what;
}

enum class Solver { warp, block };

// One launch of the chosen kernel, exactly as kernels/assignment.cu makes it (the warp solver
// one warp per block with the matrix read from memory, as the launcher does at these sizes).
// Outputs start as sentinels, so that an output the kernel should not write stays visible.
template <class T>
Out run(Solver solver, const std::vector<T>& cost, int P, int n, emu::Schedule schedule) {
    Out o;
    o.perm.assign(static_cast<size_t>(P) * n, -7);
    o.total.assign(P, -7.0);
    o.status.assign(P, -7);
    o.flags.assign(2, ~0ull);
    emu::LaunchConfig cfg;
    cfg.grid = static_cast<unsigned>(P);
    cfg.schedule = schedule;
    cfg.seed = 29;
    if (solver == Solver::warp) {
        cfg.block = 32;
        cfg.dynamic_smem = cuda::warp_lsa_state_bytes(n);
        emu::launch(cfg, assignment_kernel<T, false>, cost.data(), static_cast<int64_t>(P), n,
                    o.perm.data(), o.total.data(), o.status.data(), o.flags.data(),
                    cfg.dynamic_smem);
        return o;
    }
    cfg.block = kBlockLsaThreads;
    cfg.dynamic_smem = cuda::block_lsa_state_bytes(n);
    const auto go = [&](auto kernel) {
        emu::launch(cfg, kernel, cost.data(), n, o.perm.data(), o.total.data(), o.status.data(),
                    o.flags.data());
    };
    switch (block_columns(n)) {
        case 1:
            go(assignment_block_kernel<T, 1>);
            break;
        case 2:
            go(assignment_block_kernel<T, 2>);
            break;
        default:
            go(assignment_block_kernel<T, 4>);
            break;
    }
    return o;
}

template <class T>
Out run_cpu(const std::vector<T>& cost, int P, int n) {
    Out o;
    o.perm.assign(static_cast<size_t>(P) * n, -7);
    o.total.assign(P, -7.0);
    o.status.assign(P, -7);
    linear_sum_assignment(TensorView<const T>(cost.data(), Shape{P, n, n}),
                          TensorView<int64_t>(o.perm.data(), Shape{P, n}),
                          TensorView<double>(o.total.data(), Shape{P}),
                          TensorView<int32_t>(o.status.data(), Shape{P}));
    return o;
}

// The block solver under every schedule against the warp solver (thread order): bit-identical.
template <class T>
Out block_matches_warp_under_every_schedule(const std::vector<T>& cost, int P, int n) {
    const Out warp = run(Solver::warp, cost, P, n, emu::Schedule::forward);
    for (emu::Schedule s : kSchedules)
        expect_same(
            run(Solver::block, cost, P, n, s), warp,
            std::string("block solver, schedule ") + schedule_name(s) + ", n " + std::to_string(n));
    return warp;
}

struct Case {
    int n, P;
};

// n 1 and 33: the edges of one column per thread; 128 and 256: one column per thread, half and
// all of the threads busy; 300 (not a multiple of the block): two; 1024: four, the largest n.
// Sizes and cases are capped for the emulator's speed: the whole file takes ~16 s in the emu
// build (ASan) on the shared 2-core development machine, 9 s of it at n = 1024.
const Case kCases[] = {{1, 3}, {33, 2}, {128, 1}, {256, 1}, {300, 1}, {1024, 1}};

class AssignmentEmulated : public ::testing::TestWithParam<Case> {};

TEST_P(AssignmentEmulated, RandomCostsMatchWarpSolverAndCpuExactly) {
    // Random reals: no two path costs tie, so the CPU reference takes the same path at every
    // step and all three agree exactly, totals to the bit (each summed in row order in double).
    const auto [n, P] = GetParam();
    auto gen = test::rng(1400 + n);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<double> cd(static_cast<size_t>(P) * n * n);
    for (auto& c : cd) c = u(gen);
    const Out d = block_matches_warp_under_every_schedule(cd, P, n);
    const Out dc = run_cpu(cd, P, n);
    EXPECT_EQ(d.perm, dc.perm);
    EXPECT_TRUE(same_bits(d.total, dc.total));
    EXPECT_EQ(d.status, dc.status);
    EXPECT_EQ(d.flags, (std::vector<unsigned long long>{~0ull, ~0ull}));
    EXPECT_TRUE(test::not_all_zero(d.total));
    // Float only where the double case is cheap: the kernels differ only in the load's
    // conversion, and at n = 1024 a float case would double the test's slowest one.
    if (n == 256 || n > 300) return;
    std::vector<float> cf(cd.size());
    for (auto& c : cf) c = static_cast<float>(u(gen) * 100.0);
    const Out f = block_matches_warp_under_every_schedule(cf, P, n);
    const Out fc = run_cpu(cf, P, n);
    EXPECT_EQ(f.perm, fc.perm);
    EXPECT_TRUE(same_bits(f.total, fc.total));
}

INSTANTIATE_TEST_SUITE_P(Sizes, AssignmentEmulated, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return "n" + std::to_string(info.param.n); });

TEST(AssignmentEmulatedEdge, TiesMatchWarpSolverExactly) {
    // Small integers: many equal path costs, so the tie rule decides most steps (smallest value,
    // then free columns, then the smallest index); the warp and block solvers must agree on
    // every choice. The CPU reference may pick another optimum among the ties: only its total
    // is compared (exact: integer sums).
    for (const int n : {128, 300}) {
        auto gen = test::rng(1450 + n);
        std::uniform_int_distribution<int> u(0, 9);
        const int P = 2;
        std::vector<float> cf(static_cast<size_t>(P) * n * n);
        for (auto& c : cf) c = static_cast<float>(u(gen));
        // Problem 1: duplicate rows in pairs, more ties still.
        for (int i = 1; i < n; i += 2)
            for (int j = 0; j < n; ++j)
                cf[(static_cast<size_t>(n) + i) * n + j] =
                    cf[(static_cast<size_t>(n) + i - 1) * n + j];
        const Out f = block_matches_warp_under_every_schedule(cf, P, n);
        EXPECT_EQ(f.total, run_cpu(cf, P, n).total) << "n " << n;
        const std::vector<double> cd(cf.begin(), cf.end());
        const Out d = block_matches_warp_under_every_schedule(cd, P, n);
        expect_same(d, f, "double vs float, n " + std::to_string(n));
    }
}

TEST(AssignmentEmulatedEdge, ForbiddenPairsInfeasibleNanAndMinusInf) {
    const int n = 128, P = 5;
    auto gen = test::rng(1480);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<double> cost(static_cast<size_t>(P) * n * n);
    const auto at = [&](int p, int i, int j) -> double& {
        return cost[(static_cast<size_t>(p) * n + i) * n + j];
    };
    for (int p = 0; p < P; ++p)
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < n; ++j) {
                const double v = u(gen);
                // Half the pairs forbidden, the diagonal kept: feasible, long detours.
                at(p, i, j) = (i != j && v < 0.5) ? kInf : v;
            }
    // Problem 1: rows 3 and 7 may only take column 5. Every row and column keeps a finite entry,
    // so the reductions pass and the search finds no augmenting path for the second row.
    for (int j = 0; j < n; ++j) at(1, 3, j) = at(1, 7, j) = kInf;
    at(1, 3, 5) = at(1, 7, 5) = 0.25;
    // Problem 2: column 9 forbidden everywhere (caught by the column reduction).
    for (int i = 0; i < n; ++i) at(2, i, 9) = kInf;
    const Out ok = block_matches_warp_under_every_schedule(cost, P, n);
    const Out cpu = run_cpu(cost, P, n);
    EXPECT_EQ(ok.status, (std::vector<int32_t>{0, 1, 1, 0, 0}));
    EXPECT_EQ(ok.status, cpu.status);
    EXPECT_EQ(ok.perm, cpu.perm);
    EXPECT_TRUE(same_bits(ok.total, cpu.total));
    EXPECT_EQ(ok.total[1], kInf);
    EXPECT_EQ(ok.flags, (std::vector<unsigned long long>{~0ull, 1ull}));
    for (int i = 0; i < n; ++i) EXPECT_EQ(ok.perm[static_cast<size_t>(n) + i], -1);

    // A NaN in problem 4 and -inf in problem 3: flags[0] names the first, their outputs stay
    // unwritten, the others are solved as before.
    at(4, 100, 17) = std::nan("");
    at(3, 0, 0) = -kInf;
    const Out bad = block_matches_warp_under_every_schedule(cost, P, n);
    EXPECT_EQ(bad.flags, (std::vector<unsigned long long>{3ull, 1ull}));
    for (int p : {3, 4}) {
        EXPECT_EQ(bad.status[p], -7) << p;
        EXPECT_EQ(bad.total[p], -7.0) << p;
        EXPECT_EQ(bad.perm[static_cast<size_t>(p) * n], -7) << p;
    }
    for (int p : {0, 1, 2}) {
        EXPECT_EQ(bad.status[p], ok.status[p]) << p;
        EXPECT_EQ(bad.total[p], ok.total[p]) << p;
    }
}

}  // namespace
}  // namespace eqflow
