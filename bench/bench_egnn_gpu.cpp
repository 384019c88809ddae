// GPU EGNN (fused kernels, float32): forward, backward and exact divergence at the DW4, LJ13
// and LJ55 default sizes for B = 256 and 1024. Reports samples/s and achieved FLOP/s from the
// layer formula (kernels/egnn.cu header), to compare with the H200's ~67 TFLOP/s FP32.
// Also the whole flow-matching training step on the device (FlowMatchingStep<float>: draws,
// coupling, forward, loss, backward, Adam) for fm and eqot at B = 256, the step the targets of
// bench/RESULTS.md compare with PyTorch's. And the likelihood-training step on the CUDA
// kernel-dynamics field (LikelihoodStep<float>), with and without its CUDA graph.
// Timing: the device is synchronised after every iteration; real time.
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "egnn_flops.h"
#include "eqflow/device.h"
#include "eqflow/egnn.h"
#include "eqflow/field.h"
#include "eqflow/kernel_dynamics.h"
#include "eqflow/likelihood.h"
#include "eqflow/systems.h"
#include "eqflow/tensor.h"
#include "eqflow/train_step.h"

namespace {

// Matrix FLOPs of one forward pass of one sample: bench/egnn_flops.h (shared with the unfused
// baseline, bench_egnn_unfused).
double forward_flops(const eqflow::EgnnConfig& c) {
    return eqflow::bench::egnn_forward_flops(c);
}

struct Setup {
    eqflow::EgnnModel model;
    eqflow::Tensor<float> x, t, v, div, g, gp, gx;
};

Setup make(const std::string& name, int64_t B) {
    const eqflow::System s = eqflow::make_system(name);
    Setup st;
    st.model = eqflow::bench::benchmark_model(name);
    std::mt19937_64 gen(2);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(B * s.n * s.d)), t(static_cast<size_t>(B)),
        g(x.size());
    for (auto& v : x) v = dist(gen);
    for (auto& v : g) v = dist(gen);
    for (size_t b = 0; b < t.size(); ++b) t[b] = static_cast<float>(b) / B;
    const eqflow::Device dev = eqflow::Device::cuda;
    st.x = eqflow::Tensor<float>::from_host(x, {B, s.n, s.d}, dev);
    st.t = eqflow::Tensor<float>::from_host(t, {B}, dev);
    st.g = eqflow::Tensor<float>::from_host(g, {B, s.n, s.d}, dev);
    st.v = eqflow::Tensor<float>({B, s.n, s.d}, dev);
    st.div = eqflow::Tensor<float>({B}, dev);
    st.gx = eqflow::Tensor<float>({B, s.n, s.d}, dev);
    st.gp = eqflow::Tensor<float>::zeros({eqflow::egnn_parameter_count(st.model.config)}, dev);
    return st;
}

enum class Op { forward, backward, divergence };

void run(benchmark::State& state, const char* name, Op op) {
    if (eqflow::bench::skip_without_gpu(state)) return;
    const int64_t B = state.range(0);
    Setup st = make(name, B);
    const std::unique_ptr<eqflow::Field<float>> gpu = eqflow::make_cuda_field(st.model);
    // The caller's workspace, sized once outside the timed loop (eqflow/field.h).
    eqflow::FieldWorkspace fw;
    using eqflow::FieldOp;
    const auto ws_fwd = fw.get(*gpu, FieldOp::forward, B);
    eqflow::FieldWorkspace bw, dw;
    const auto ws_bwd = bw.get(*gpu, FieldOp::backward, B);
    const auto ws_div = dw.get(*gpu, FieldOp::divergence, B);
    auto step = [&] {
        switch (op) {
            case Op::forward:
                gpu->forward(st.x.cview(), st.t.cview(), st.v.view(), ws_fwd);
                break;
            case Op::backward:
                gpu->backward(st.x.cview(), st.t.cview(), st.g.cview(), st.gp.view(), st.gx.view(),
                              ws_bwd);
                break;
            case Op::divergence:
                gpu->divergence(st.x.cview(), st.t.cview(), st.v.view(), st.div.view(), ws_div);
                break;
        }
    };
    step();  // sizes the workspace
    eqflow::synchronize();
    for (auto _ : state) {
        step();
        eqflow::synchronize();
    }
    const eqflow::EgnnConfig& c = st.model.config;
    const double fwd = forward_flops(c);
    // Backward: the forward with storage, a recompute of every edge, and about twice the
    // forward's matrix work for the input and parameter gradients. Divergence: one primal and
    // n*d tangents, each tangent about the forward's matrix work.
    const double per_sample = op == Op::forward    ? fwd
                              : op == Op::backward ? 4 * fwd
                                                   : (1 + c.n_particles * c.dim) * fwd;
    state.SetItemsProcessed(state.iterations() * B);
    state.counters["FLOP/s"] =
        benchmark::Counter(per_sample * B * state.iterations(), benchmark::Counter::kIsRate);
    state.counters["fp32_peak_frac"] = benchmark::Counter(
        per_sample * B * state.iterations() / 67e12, benchmark::Counter::kIsRate);
}

void BM_EgnnForward_CUDA(benchmark::State& s, const char* name) {
    run(s, name, Op::forward);
}
void BM_EgnnBackward_CUDA(benchmark::State& s, const char* name) {
    run(s, name, Op::backward);
}
void BM_EgnnDivergence_CUDA(benchmark::State& s, const char* name) {
    run(s, name, Op::divergence);
}

// count configurations of s with N(0, 1) coordinates (a step's cost does not depend on their
// distribution).
std::vector<double> normal_rows(const eqflow::System& s, int64_t count, uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<double> dist(0.0, 1.0);
    std::vector<double> data(static_cast<size_t>(count * s.n * s.d));
    for (auto& v : data) v = dist(gen);
    return data;
}

// Times step.step() over the batches of an identity order of 4 batches, after one untimed step
// (the graph, when on, is captured at the first timed one); counters() waits for the device after
// each. The label says whether the graph ran.
template <class Step>
void time_steps(benchmark::State& state, Step& step, int64_t B) {
    std::vector<int64_t> order(static_cast<size_t>(4 * B));
    for (int64_t i = 0; i < 4 * B; ++i) order[static_cast<size_t>(i)] = i;
    step.set_order(order);
    int64_t k = 0;
    step.step(k++, 0, 1e-4);
    (void)step.counters();  // synchronises
    for (auto _ : state) {
        step.step(k, k % 4, 1e-4);
        ++k;
        (void)step.counters();
    }
    state.SetItemsProcessed(state.iterations() * B);
    state.SetLabel("graph " + step.cuda_graph_status().substr(0, 3));
}

// One training step on the device; data: N(0, 1) configurations, 4 batches' worth. Second
// argument: 1 replays the step as a CUDA graph (the default), 0 launches its kernels one by one;
// the label says which ran.
void BM_TrainStep_CUDA(benchmark::State& state, const char* name, eqflow::CouplingKind kind) {
    if (eqflow::bench::skip_without_gpu(state)) return;
    const int64_t B = state.range(0);
    const eqflow::System s = eqflow::make_system(name);
    const eqflow::EgnnModel model = eqflow::bench::benchmark_model(name);
    const std::vector<double> data = normal_rows(s, 4 * B, 3);
    const std::unique_ptr<eqflow::Field<float>> field = eqflow::make_cuda_field(model);
    eqflow::FlowMatchingStepOptions o;
    o.objective = kind;
    o.batch = B;
    o.cuda_graph = state.range(1) != 0;
    eqflow::FlowMatchingStep<float> step(*field, o, data.data(), 4 * B);
    time_steps(state, step, B);
}

// One likelihood-training step (LikelihoodStep<float>: RK4 solve with the exact divergence and
// the reverse sweep through it, Adam) on the CUDA kernel-dynamics field at the system's default
// bases, 40 RK4 steps (scripts/reproduce.sh's setting): ~2000 launches a step, so the graph (1)
// against launch by launch (0) shows what launch latency costs. Data as above.
void BM_LikelihoodStep_CUDA(benchmark::State& state, const char* name) {
    if (eqflow::bench::skip_without_gpu(state)) return;
    const int64_t B = state.range(0);
    const eqflow::System s = eqflow::make_system(name);
    eqflow::KernelModel model;
    model.config = eqflow::default_kernel_config(name, s.n, s.d);
    model.params = eqflow::kernel_init_parameters(model.config, 1);
    const std::vector<double> data = normal_rows(s, 4 * B, 4);
    const std::unique_ptr<eqflow::Field<float>> field = eqflow::make_cuda_field(model);
    eqflow::LikelihoodStepOptions o;
    o.ode_steps = 40;
    o.batch = B;
    o.cuda_graph = state.range(1) != 0;
    eqflow::LikelihoodStep<float> step(*field, o, data.data(), 4 * B);
    time_steps(state, step, B);
}

}  // namespace

// BM_LikelihoodStep_CUDA/<system>/256/<graph>/real_time.
const bool kLikelihoodStepBenchmarks = [] {
    for (const char* system : {"dw4", "lj13"})
        benchmark::RegisterBenchmark((std::string("BM_LikelihoodStep_CUDA/") + system).c_str(),
                                     BM_LikelihoodStep_CUDA, system)
            ->Args({256, 1})
            ->Args({256, 0})
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
    return true;
}();

// BM_TrainStep_CUDA/<system>_<coupling>/256/<graph>/real_time, from a table.
const bool kTrainStepBenchmarks = [] {
    struct Case {
        const char* name;
        const char* system;
        eqflow::CouplingKind kind;
    };
    for (const Case& c : {Case{"dw4_fm", "dw4", eqflow::CouplingKind::fm},
                          Case{"dw4_eqot", "dw4", eqflow::CouplingKind::eqot},
                          Case{"lj13_fm", "lj13", eqflow::CouplingKind::fm},
                          Case{"lj13_eqot", "lj13", eqflow::CouplingKind::eqot},
                          Case{"lj55_fm", "lj55", eqflow::CouplingKind::fm}})
        benchmark::RegisterBenchmark((std::string("BM_TrainStep_CUDA/") + c.name).c_str(),
                                     BM_TrainStep_CUDA, c.system, c.kind)
            ->Args({256, 1})
            ->Args({256, 0})
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
    return true;
}();

#define EQFLOW_EGNN_BENCH(fn)            \
    BENCHMARK_CAPTURE(fn, dw4, "dw4")    \
        ->Arg(256)                       \
        ->Arg(1024)                      \
        ->UseRealTime()                  \
        ->Unit(benchmark::kMillisecond); \
    BENCHMARK_CAPTURE(fn, lj13, "lj13")  \
        ->Arg(256)                       \
        ->Arg(1024)                      \
        ->UseRealTime()                  \
        ->Unit(benchmark::kMillisecond); \
    BENCHMARK_CAPTURE(fn, lj55, "lj55")  \
        ->Arg(256)                       \
        ->Arg(1024)                      \
        ->UseRealTime()                  \
        ->Unit(benchmark::kMillisecond);

EQFLOW_EGNN_BENCH(BM_EgnnForward_CUDA)
EQFLOW_EGNN_BENCH(BM_EgnnBackward_CUDA)
EQFLOW_EGNN_BENCH(BM_EgnnDivergence_CUDA)

BENCHMARK_MAIN();
