// Linear sum assignment: the CUDA solver against the CPU reference (label gpu).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "eqflow/assignment.h"
#include "eqflow/buffer.h"
#include "eqflow/error.h"
#include "eqflow/tensor.h"
#include "test_util.h"

namespace eqflow {
namespace {

const double kInf = std::numeric_limits<double>::infinity();

struct Result {
    std::vector<int64_t> perm;
    std::vector<double> total;
    std::vector<int32_t> status;
};

template <class T>
Result solve(const std::vector<T>& cost, int64_t P, int64_t n, Device device,
             bool with_status = true) {
    Tensor<T> c = Tensor<T>::from_host(cost, Shape{P, n, n}, device);
    Tensor<int64_t> perm(Shape{P, n}, device);
    Tensor<double> total(Shape{P}, device);
    Tensor<int32_t> status(Shape{P}, device);
    const std::size_t bytes = assignment_workspace_bytes(device, P, n);
    Buffer<unsigned char> ws(bytes, device);
    linear_sum_assignment(c.cview(), perm.view(), total.view(),
                          with_status ? status.view() : TensorView<int32_t>(), ws.data(), bytes);
    return {perm.to_vector(), total.to_vector(), status.to_vector()};
}

template <class T>
void expect_valid(const std::vector<T>& cost, const Result& r, int64_t P, int64_t n) {
    for (int64_t p = 0; p < P; ++p) {
        std::vector<int> seen(n, 0);
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            const int64_t j = r.perm[p * n + i];
            ASSERT_TRUE(j >= 0 && j < n && !seen[j]) << "problem " << p << " row " << i;
            seen[j] = 1;
            sum += static_cast<double>(cost[(p * n + i) * n + j]);
        }
        EXPECT_EQ(sum, r.total[p]) << "problem " << p;  // both sum in row order, in double
    }
}

class AssignmentGpu : public ::testing::TestWithParam<int> {};

TEST_P(AssignmentGpu, RandomDoubleMatchesCpu) {
    // Equal optimal totals: the permutations can differ only between optima, whose totals then
    // differ only by the rounding of n-term sums (~n * 1e-16 relative).
    constexpr double kRtol = 1e-12;
    const int n = GetParam();
    const int P = n <= 55 ? 300 : 24;
    auto gen = test::rng(700 + n);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<double> cost(static_cast<size_t>(P) * n * n);
    for (auto& c : cost) c = u(gen);
    const Result cpu = solve(cost, P, n, Device::cpu);
    const Result gpu = solve(cost, P, n, Device::cuda);
    expect_valid(cost, gpu, P, n);
    EXPECT_ALL_CLOSE(gpu.total, cpu.total, 0.0, kRtol);
    EXPECT_TRUE(test::not_all_zero(gpu.total));
}

TEST_P(AssignmentGpu, FloatAndIntegerCostsExact) {
    // Small integers: many ties and duplicate rows, exact sums, so the optimal totals are equal.
    const int n = GetParam();
    const int P = n <= 55 ? 200 : 16;
    auto gen = test::rng(710 + n);
    std::uniform_int_distribution<int> u(0, 9);
    std::vector<float> cost(static_cast<size_t>(P) * n * n);
    for (auto& c : cost) c = static_cast<float>(u(gen));
    const Result cpu = solve(cost, P, n, Device::cpu);
    const Result gpu = solve(cost, P, n, Device::cuda);
    expect_valid(cost, gpu, P, n);
    EXPECT_EQ(gpu.total, cpu.total);
}

INSTANTIATE_TEST_SUITE_P(Sizes, AssignmentGpu,
                         ::testing::Values(1, 2, 4, 13, 22, 33, 55, 64, 100, 128, 300));

TEST(AssignmentGpuEdge, ScalesForbiddenInfeasibleNan) {
    const int n = 8, P = 40;
    auto gen = test::rng(720);
    std::uniform_int_distribution<int> u(1, 50);
    for (double scale : {1e30, 1e-30}) {
        std::vector<double> cost(P * n * n);
        for (auto& c : cost) c = u(gen) * scale;
        const Result cpu = solve(cost, P, n, Device::cpu), gpu = solve(cost, P, n, Device::cuda);
        EXPECT_ALL_CLOSE(gpu.total, cpu.total, 0.0, 1e-13);
    }
    // Forbidden pairs, one infeasible problem (row 3 all +inf in problem 5).
    std::vector<double> cost(P * n * n);
    std::uniform_real_distribution<double> r(0.0, 1.0);
    for (int p = 0; p < P; ++p)
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < n; ++j) {
                const double v = r(gen);
                cost[(p * n + i) * n + j] = (i != j && v < 0.5) ? kInf : v;
            }
    for (int j = 0; j < n; ++j) cost[(5 * n + 3) * n + j] = kInf;
    const Result cpu = solve(cost, P, n, Device::cpu), gpu = solve(cost, P, n, Device::cuda);
    EXPECT_EQ(gpu.status, cpu.status);
    EXPECT_EQ(gpu.status[5], static_cast<int32_t>(AssignmentStatus::infeasible));
    EXPECT_EQ(gpu.total[5], kInf);
    for (int i = 0; i < n; ++i) EXPECT_EQ(gpu.perm[5 * n + i], -1);
    for (int p = 0; p < P; ++p)
        if (p != 5) EXPECT_NEAR(gpu.total[p], cpu.total[p], 1e-12 * cpu.total[p]) << p;
    EXPECT_THROW(solve(cost, P, n, Device::cuda, /*with_status=*/false), Error);
    cost[(7 * n + 1) * n + 2] = std::nan("");
    try {
        solve(cost, P, n, Device::cuda);
        FAIL() << "NaN accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("problem 7 has a NaN"), std::string::npos) << e.what();
    }
}

TEST(AssignmentGpuEdge, OneLargeProblemMatchesCpuExactly) {
    // The coupling's shape: one n x n problem, which the launcher gives a block of threads
    // (n >= 128, no more problems than SMs). Random reals have no ties, so the GPU takes the CPU
    // reference's steps with the same double arithmetic: the same permutation, the same total
    // to the bit. n = 1024 is the largest the GPU accepts.
    for (const int n : {256, 1024}) {
        auto gen = test::rng(730 + n);
        std::uniform_real_distribution<double> u(0.0, 1.0);
        std::vector<double> cost(static_cast<size_t>(n) * n);
        for (auto& c : cost) c = u(gen);
        const Result cpu = solve(cost, 1, n, Device::cpu);
        const Result gpu = solve(cost, 1, n, Device::cuda);
        EXPECT_EQ(gpu.perm, cpu.perm) << "n " << n;
        EXPECT_EQ(gpu.total, cpu.total) << "n " << n;
        EXPECT_EQ(gpu.status, cpu.status) << "n " << n;
    }
}

TEST(AssignmentGpuEdge, WorkspaceAndEmpty) {
    Tensor<double> c = Tensor<double>::zeros(Shape{3, 4, 4}, Device::cuda);
    Tensor<int64_t> perm(Shape{3, 4}, Device::cuda);
    EXPECT_THROW(linear_sum_assignment(c.cview(), perm.view(), {}, {}, nullptr, 0), Error);
    Tensor<double> e(Shape{0, 4, 4}, Device::cuda);
    Tensor<int64_t> pe(Shape{0, 4}, Device::cuda);
    EXPECT_NO_THROW(linear_sum_assignment(e.cview(), pe.view()));
}

}  // namespace
}  // namespace eqflow
