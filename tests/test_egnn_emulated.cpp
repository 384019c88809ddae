// The fused EGNN kernels' own source (kernels/egnn_kernels.cuh, egnn_backward_kernels.cuh), run
// on the CPU by the execution-model emulator of emu/, against the double-precision CPU
// reference. Label cpu: it runs in every CI job, with AddressSanitizer in the asan one.
//
// It checks the kernels' logic before any GPU runs them: the indexing, the shared-memory and
// workspace layouts (the workspace and shared memory are exactly the sizes the launchers use,
// and start as NaN, so a read before a write shows), the barriers (a missing or divergent one
// deadlocks or throws), and order independence (three thread schedules must give bit-identical
// results, so a race between two barriers shows). It does not replace test_egnn_gpu: float
// rounding of the device's math library, the memory model and the launch code are only checked
// on a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "egnn_test_util.h"
#include "eqflow/egnn.h"
#include "test_util.h"

// After the standard and GoogleTest headers: the emulator defines CUDA's keywords as macros.
#include "cuda_emu.h"
#include "kernels/egnn_backward_kernels.cuh"
#include "kernels/egnn_kernels.cuh"
#include "kernels/egnn_net.h"

namespace eqflow {
namespace {

using namespace cuda::egnn_detail;

using Case = test::EgnnCase;

// Small enough for the emulator (every barrier is 256 fiber switches), chosen so that n is
// not a multiple of the 8 warps or of the 8 tangent directions, H is not a multiple of 32, and
// some warps own two targets while others own none.
const Case kCases[] = {
    {"dw4", 4, 2, 32, 3, true, true, false},     {"n9_h48_plain", 9, 3, 48, 2, false, false, false},
    {"n5_typed", 5, 3, 32, 2, true, true, true}, {"n3_h40_notanh", 3, 3, 40, 2, true, false, false},
    {"lj13", 13, 3, 32, 3, true, true, false},
};

// The reference run uses thread order; the others must reproduce it bit for bit.
const emu::Schedule kReferenceSchedule = emu::Schedule::forward;
const emu::Schedule kOtherSchedules[] = {emu::Schedule::reverse, emu::Schedule::shuffled};

// The model in float, in host memory, seen by the kernels as if it were on the device.
struct HostNet {
    std::vector<float> params;
    std::vector<int> types;
    cuda::EgnnNet net;

    explicit HostNet(const EgnnModel& m) : params(m.params.begin(), m.params.end()) {
        for (int ty : m.config.atom_types) types.push_back(ty);
        net = cuda::make_egnn_net(m.config, params.data(), types.empty() ? nullptr : types.data());
    }
};

emu::LaunchConfig config(unsigned grid, size_t smem, emu::Schedule schedule) {
    emu::LaunchConfig cfg;
    cfg.grid = grid;
    cfg.block = kThreads;
    cfg.dynamic_smem = smem;
    cfg.schedule = schedule;
    cfg.seed = 17;
    return cfg;
}

const float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> run_forward(const cuda::EgnnNet& net, int B, const std::vector<float>& x,
                               const std::vector<float>& t, emu::Schedule schedule) {
    std::vector<float> v(x.size(), kNaN);
    emu::launch(config(B, forward_smem_bytes(net), schedule), forward_kernel_for(net), net,
                x.data(), t.data(), v.data());
    return v;
}

// The divergence with `slots` persistent blocks (fewer than the work items, so that blocks
// loop and reuse their workspace slot): exact when dirs is empty, otherwise the mean of
// dirs_k . J dirs_k over the K = dirs.size() / (B n d) directions of each sample. Returns div;
// v is written as well.
std::vector<float> run_divergence(const cuda::EgnnNet& net, int B, int slots,
                                  const std::vector<float>& x, const std::vector<float>& t,
                                  std::vector<float>& v, emu::Schedule schedule,
                                  const std::vector<float>& dirs = {}) {
    const int nd = net.n * net.d;
    const int K = dirs.empty() ? nd : static_cast<int>(dirs.size() / (static_cast<size_t>(B) * nd));
    const int chunks = divergence_chunks(K);
    std::vector<float> partial(static_cast<size_t>(B) * chunks, kNaN);
    std::vector<float> ws(static_cast<size_t>(slots) * tangent_slot_floats(net.n, net.hidden),
                          kNaN);
    v.assign(x.size(), kNaN);
    emu::launch(config(slots, divergence_smem_bytes(net), schedule), divergence_kernel_for(net),
                net, static_cast<int64_t>(B), chunks, K, dirs.empty() ? nullptr : dirs.data(),
                x.data(), t.data(), v.data(), partial.data(), ws.data());
    std::vector<float> div(B, kNaN);
    const float scale = dirs.empty() ? 1.0f : 1.0f / static_cast<float>(K);
    emu::launch(config((B + kThreads - 1) / kThreads, 0, schedule), sum_chunks_kernel,
                static_cast<const float*>(partial.data()), static_cast<int64_t>(B), chunks, scale,
                div.data());
    return div;
}

struct Grads {
    std::vector<float> params, x;
};

// The backward with `slots` persistent blocks. The slots' gradient buffers start at zero (the
// launcher zeroes the workspace); every other workspace word starts as NaN, so that a read of
// a stored activation before the forward pass wrote it shows.
Grads run_backward(const HostNet& h, int B, int slots, const std::vector<float>& x,
                   const std::vector<float>& t, const std::vector<float>& g,
                   emu::Schedule schedule) {
    const cuda::EgnnNet& net = h.net;
    const int64_t P = static_cast<int64_t>(h.params.size());
    const SlotLayout S = slot_layout(net.n, net.d, net.hidden, net.layers, P);
    std::vector<float> ws(static_cast<size_t>(slots) * S.total, kNaN);
    for (int s = 0; s < slots; ++s)
        std::fill_n(ws.begin() + static_cast<size_t>(s) * S.total + S.grad, P, 0.0f);
    Grads out;
    out.x.assign(x.size(), kNaN);
    out.params.assign(static_cast<size_t>(P), 1.0f);  // accumulates: start from ones
    emu::launch(config(slots, backward_smem_bytes(net), schedule), backward_kernel_for(net), net,
                static_cast<const float*>(h.params.data()), P, static_cast<int64_t>(B), x.data(),
                t.data(), g.data(), out.x.data(), ws.data());
    emu::launch(config(static_cast<unsigned>((P + kThreads - 1) / kThreads), 0, schedule),
                reduce_slots_kernel, static_cast<const float*>(ws.data()), S.total, S.grad, slots,
                P, out.params.data());
    for (float& p : out.params) p -= 1.0f;
    return out;
}

double max_abs(const std::vector<double>& v) {
    double m = 0;
    for (double y : v) m = std::max(m, std::fabs(y));
    return m;
}

// The tolerances of test_egnn_gpu (float32 kernels against the double reference); see there.
constexpr double kFieldTol = 2e-4;
constexpr double kDivTol = 1e-3;
constexpr double kGradTol = 1e-3;

class EgnnEmulated : public ::testing::TestWithParam<Case> {
  protected:
    const Case c = GetParam();
};

void check_forward(const Case& c) {
    const EgnnModel model = test::random_egnn_model(c, 7);
    const HostNet h(model);
    const int B = 2;
    const test::EgnnInputs in = test::random_egnn_inputs(c, B, 41);
    std::vector<double> v_ref(in.x.size());
    egnn_forward(model.config, model.params.data(), B, in.x.data(), in.t.data(), v_ref.data());
    const double vscale = max_abs(v_ref);
    ASSERT_GT(vscale, 1e-3) << "the field is too small for the comparison to mean anything";

    const std::vector<float> v0 = run_forward(h.net, B, in.xf, in.tf, kReferenceSchedule);
    EXPECT_ALL_CLOSE(v0, v_ref, kFieldTol * (1 + vscale), kFieldTol) << c.name;
    for (emu::Schedule s : kOtherSchedules)
        EXPECT_EQ(run_forward(h.net, B, in.xf, in.tf, s), v0)
            << "the result depends on the order of the threads: schedule " << static_cast<int>(s);
}

TEST_P(EgnnEmulated, ForwardMatchesCpuUnderEverySchedule) {
    check_forward(c);
}

void check_divergence(const Case& c) {
    const EgnnModel model = test::random_egnn_model(c, 8);
    const HostNet h(model);
    // One sample when it has several chunks of tangent directions (the emulation of the
    // divergence is the slowest part of this test, most of all under AddressSanitizer).
    const int B = c.n * c.d > 2 * kTangents ? 1 : 2;
    const test::EgnnInputs in = test::random_egnn_inputs(c, B, 42);
    std::vector<double> v_ref(in.x.size()), div_ref(B);
    egnn_divergence(model.config, model.params.data(), B, in.x.data(), in.t.data(), v_ref.data(),
                    div_ref.data());
    const double vscale = max_abs(v_ref), dscale = max_abs(div_ref);
    ASSERT_GT(dscale, 1e-3) << "the divergence is too small for the comparison to mean anything";

    // Fewer slots than the B * chunks work items: slots run several items in turn.
    const int slots = std::min(2, B * divergence_chunks(h.net) - 1);
    std::vector<float> v0;
    const std::vector<float> div0 =
        run_divergence(h.net, B, slots, in.xf, in.tf, v0, kReferenceSchedule);
    EXPECT_ALL_CLOSE(v0, v_ref, kFieldTol * (1 + vscale), kFieldTol) << c.name;
    EXPECT_ALL_CLOSE(div0, div_ref, kDivTol * (1 + dscale), kDivTol) << c.name;
    for (emu::Schedule s : kOtherSchedules) {
        std::vector<float> v;
        EXPECT_EQ(run_divergence(h.net, B, slots, in.xf, in.tf, v, s), div0)
            << "schedule " << static_cast<int>(s);
        EXPECT_EQ(v, v0) << "schedule " << static_cast<int>(s);
    }
}

TEST_P(EgnnEmulated, DivergenceMatchesCpuUnderEverySchedule) {
    check_divergence(c);
}

// Hutchinson's estimator: the same kernel with K given directions per sample (here 11
// Rademacher vectors: a full chunk of 8 and a partial one) against the CPU forward-mode JVP.
TEST_P(EgnnEmulated, DirectionTraceMatchesCpuJvpUnderEverySchedule) {
    const EgnnModel model = test::random_egnn_model(c, 10);
    const HostNet h(model);
    const int B = 2, K = 11, nd = c.n * c.d;
    const test::EgnnInputs in = test::random_egnn_inputs(c, B, 45);
    auto gen = test::rng(46);
    std::vector<double> dirs(static_cast<size_t>(B) * K * nd);
    for (double& e : dirs) e = (gen() & 1u) ? 1.0 : -1.0;
    std::vector<double> v_ref(in.x.size()), vdot(dirs.size()), tr_ref(B, 0.0);
    egnn_jvp(model.config, model.params.data(), B, in.x.data(), in.t.data(), K, dirs.data(),
             v_ref.data(), vdot.data());
    for (int b = 0; b < B; ++b) {
        for (size_t k = 0; k < static_cast<size_t>(K) * nd; ++k)
            tr_ref[b] += dirs[b * K * nd + k] * vdot[b * K * nd + k];
        tr_ref[b] /= K;
    }
    const double vscale = max_abs(v_ref), tscale = max_abs(tr_ref);
    ASSERT_GT(tscale, 1e-3) << "the estimate is too small for the comparison to mean anything";

    const std::vector<float> dirs_f(dirs.begin(), dirs.end());
    const int slots = 3;  // B * 2 chunks = 4 items
    std::vector<float> v0;
    const std::vector<float> tr0 =
        run_divergence(h.net, B, slots, in.xf, in.tf, v0, kReferenceSchedule, dirs_f);
    EXPECT_ALL_CLOSE(v0, v_ref, kFieldTol * (1 + vscale), kFieldTol) << c.name;
    EXPECT_ALL_CLOSE(tr0, tr_ref, kDivTol * (1 + tscale), kDivTol) << c.name;
    for (emu::Schedule s : kOtherSchedules) {
        std::vector<float> v;
        EXPECT_EQ(run_divergence(h.net, B, slots, in.xf, in.tf, v, s, dirs_f), tr0)
            << "schedule " << static_cast<int>(s);
    }
}

void check_backward(const Case& c) {
    const EgnnModel model = test::random_egnn_model(c, 9);
    const HostNet h(model);
    const int B = 3;
    const test::EgnnInputs in = test::random_egnn_inputs(c, B, 43);
    auto gen = test::rng(44);
    const std::vector<double> g = test::random_normal(in.x.size(), gen);
    const std::vector<float> gf(g.begin(), g.end());
    const int64_t P = egnn_parameter_count(model.config);
    std::vector<double> gp_ref(static_cast<size_t>(P), 0.0), gx_ref(in.x.size());
    egnn_backward(model.config, model.params.data(), B, in.x.data(), in.t.data(), g.data(),
                  gp_ref.data(), gx_ref.data());

    // Two slots for three samples: slot 0 runs samples 0 and 2 and must not carry anything over.
    const Grads g0 = run_backward(h, B, 2, in.xf, in.tf, gf, kReferenceSchedule);
    EXPECT_ALL_CLOSE(g0.params, gp_ref, kGradTol * max_abs(gp_ref), kGradTol) << c.name;
    EXPECT_ALL_CLOSE(g0.x, gx_ref, kGradTol * max_abs(gx_ref), kGradTol) << c.name;
    for (emu::Schedule s : kOtherSchedules) {
        const Grads gs = run_backward(h, B, 2, in.xf, in.tf, gf, s);
        EXPECT_EQ(gs.params, g0.params) << "schedule " << static_cast<int>(s);
        EXPECT_EQ(gs.x, g0.x) << "schedule " << static_cast<int>(s);
    }
}

TEST_P(EgnnEmulated, BackwardMatchesCpuUnderEverySchedule) {
    check_backward(c);
}

INSTANTIATE_TEST_SUITE_P(Configs, EgnnEmulated, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                             return std::string(info.param.name);
                         });

// The forward kernel is compiled per tile width Hp (H rounded up to 32, 64, 128) and d: these
// cases add what kCases leaves out (Hp = 64 and 128 unpadded, d = 1 and 2 with Hp > 32, and
// several tiles of sources per target at every width), cheaply, as the forward is fast to
// emulate.
const Case kForwardCases[] = {
    {"n17_h64_d2", 17, 2, 64, 2, true, true, false},
    {"n7_h128", 7, 3, 128, 2, true, true, false},
    {"n11_h100_d2_plain", 11, 2, 100, 2, false, false, true},
    {"n21_h20_d1", 21, 1, 20, 2, true, true, false},
};

class EgnnEmulatedForward : public ::testing::TestWithParam<Case> {};

TEST_P(EgnnEmulatedForward, MatchesCpuUnderEverySchedule) {
    check_forward(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Shapes, EgnnEmulatedForward, ::testing::ValuesIn(kForwardCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                             return std::string(info.param.name);
                         });

// The divergence kernel is compiled per Hp and d as well: the tile widths and dimensions
// kCases leaves out (Hp = 128, d = 1, and d = 2 at Hp = 64 and 128).
const Case kDivergenceCases[] = {
    {"n6_h128", 6, 3, 128, 2, true, true, false},
    {"n7_h20_d1", 7, 1, 20, 2, true, true, false},
    {"n5_h100_d2_plain", 5, 2, 100, 2, false, false, true},
    {"n6_h64_d2", 6, 2, 64, 2, true, true, false},
};

class EgnnEmulatedDivergence : public ::testing::TestWithParam<Case> {};

TEST_P(EgnnEmulatedDivergence, MatchesCpuUnderEverySchedule) {
    check_divergence(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Shapes, EgnnEmulatedDivergence, ::testing::ValuesIn(kDivergenceCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                             return std::string(info.param.name);
                         });

// The backward kernel is compiled per Hp and d too: the shapes kCases leaves out (d = 1, d = 2
// at Hp = 64, Hp = 128 (run here whatever its shared memory; a GPU has room for it only at small
// n), and several target groups and source tiles at Hp = 64).
const Case kBackwardCases[] = {
    {"n7_h20_d1", 7, 1, 20, 2, true, true, false},
    {"n6_h64_d2", 6, 2, 64, 2, true, true, false},
    {"n17_h64_plain", 17, 3, 64, 2, false, false, true},
    {"n5_h100_d2", 5, 2, 100, 2, true, true, false},
};

class EgnnEmulatedBackward : public ::testing::TestWithParam<Case> {};

TEST_P(EgnnEmulatedBackward, MatchesCpuUnderEverySchedule) {
    check_backward(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Shapes, EgnnEmulatedBackward, ::testing::ValuesIn(kBackwardCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                             return std::string(info.param.name);
                         });

// The emulator itself must catch what it claims to catch, or the tests above prove little.
__global__ void racy_kernel(float* out) {
    EQFLOW_DYNAMIC_SHARED(float, s);
    s[threadIdx.x] = static_cast<float>(threadIdx.x);
    // Missing __syncthreads(): thread k reads its neighbour's word, written or not yet.
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

emu::LaunchConfig small_block(size_t smem, emu::Schedule schedule) {
    emu::LaunchConfig cfg = config(1, smem, schedule);
    cfg.block = 64;
    return cfg;
}

int count_nan(const std::vector<float>& v) {
    int count = 0;
    for (float y : v) count += std::isnan(y) ? 1 : 0;
    return count;
}

TEST(CudaEmulator, RaceShowsAsScheduleDependence) {
    // Thread order: every thread but the last reads a word its neighbour has not written yet
    // (NaN). Reverse order: only the last one does.
    std::vector<float> a(64), b(64);
    emu::launch(small_block(64 * sizeof(float), emu::Schedule::forward), racy_kernel, a.data());
    emu::launch(small_block(64 * sizeof(float), emu::Schedule::reverse), racy_kernel, b.data());
    EXPECT_EQ(count_nan(a), 63);
    EXPECT_EQ(count_nan(b), 1);
}

__global__ void divergent_barrier_kernel(float* out) {
    // Odd lanes wait for the block, even lanes for their warp: neither barrier can complete.
    if (threadIdx.x % 2 == 1)
        __syncthreads();
    else
        __syncwarp();
    out[threadIdx.x] = 1.0f;
}

__global__ void exited_lane_kernel(float* out) {
    if (threadIdx.x % 32 == 5) return;
    __syncwarp();  // lane 5 has exited: undefined on a GPU
    out[threadIdx.x] = 1.0f;
}

__global__ void shuffle_sum_kernel(float* out) {
    float v = static_cast<float>(threadIdx.x);
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    out[threadIdx.x] = v;
}

TEST(CudaEmulator, BarrierMisuseAndShuffles) {
    std::vector<float> out(64, 0.0f);
    EXPECT_THROW(
        emu::launch(small_block(0, emu::Schedule::forward), divergent_barrier_kernel, out.data()),
        emu::Error);
    EXPECT_THROW(
        emu::launch(small_block(0, emu::Schedule::forward), exited_lane_kernel, out.data()),
        emu::Error);
    emu::launch(small_block(0, emu::Schedule::shuffled), shuffle_sum_kernel, out.data());
    for (int k = 0; k < 64; ++k) EXPECT_EQ(out[k], k < 32 ? 496.0f : 1520.0f) << k;
}

}  // namespace
}  // namespace eqflow
