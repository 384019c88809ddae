// Batched assignment, Kabsch and the couplings: problems (pairs, samples) per second.
//
// BM_Assignment_<Backend>/n: P uniform-random [0, 1) cost matrices of size n (the distribution
// tools/scipy_lsa_bench.py times SciPy on); items = problems. CUDA: P = 65,536 (B^2 at B = 256);
// CPU: a smaller P, same per-problem rate. BM_Kabsch_*: B configuration pairs of n particles in
// 3D. BM_Coupling_<Kind>_<Backend>/<system>: the whole coupling of a batch of B = 256 prior
// (standard normal, centred) and data-like (random, centred) samples; items = batches. CUDA
// timings synchronise after each iteration (the calls do) and use real time. The CPU eqot at
// LJ55 size runs B = 64 (4,096 pair alignments, seconds); B = 256 costs 16 times as much; it
// uses all cores, hence real time. EqotReference: docs/design.md's one-start recipe (identity
// start, one Hungarian + Kabsch per pair), for comparison: eqot / EqotReference is what the
// rotation-invariant starts cost (at LJ13; at DW4 eqot is exhaustive). EqotSearch (DW4): the frame
// starts' search that the exhaustive 2D alignment (CouplingOptions::exhaustive) replaces at n <= 5.
// tools/eqot_vs_scipy.py runs the DW4 and LJ13 cases side by side with the reference
// implementation's SciPy way.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "eqflow/assignment.h"
#include "eqflow/buffer.h"
#include "eqflow/coupling.h"
#include "eqflow/device.h"
#include "eqflow/flow.h"
#include "eqflow/kabsch.h"
#include "eqflow/tensor.h"

namespace {

using eqflow::Device;

bool skip_without_gpu(benchmark::State& state, Device device) {
    if (device == Device::cuda && !eqflow::cuda_available()) {
        state.SkipWithError(("no GPU: " + eqflow::cuda_status()).c_str());
        return true;
    }
    return false;
}

std::vector<double> uniform(size_t count, uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<double> v(count);
    for (auto& x : v) x = u(gen);
    return v;
}

std::vector<double> centred_normal(int64_t B, int n, int d, double scale, uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<double> g(0.0, scale);
    std::vector<double> x(static_cast<size_t>(B * n * d));
    for (auto& v : x) v = g(gen);
    eqflow::remove_mean(B, n, d, x.data());
    return x;
}

template <class T>
void assignment(benchmark::State& state, Device device) {
    if (skip_without_gpu(state, device)) return;
    const int64_t n = state.range(0), P = state.range(1);
    const std::vector<double> c = uniform(static_cast<size_t>(P * n * n), 1);
    const std::vector<T> ct(c.begin(), c.end());
    auto cost = eqflow::Tensor<T>::from_host(ct, {P, n, n}, device);
    eqflow::Tensor<int64_t> perm({P, n}, device);
    eqflow::Tensor<double> total({P}, device);
    const std::size_t bytes = eqflow::assignment_workspace_bytes(device, P, n);
    eqflow::Buffer<unsigned char> ws(bytes, device);
    for (auto _ : state)
        eqflow::linear_sum_assignment(cost.cview(), perm.view(), total.view(), {}, ws.data(),
                                      bytes);
    state.SetItemsProcessed(state.iterations() * P);
    state.SetBytesProcessed(state.iterations() * P * n * n * static_cast<int64_t>(sizeof(T)));
    // Seconds per problem (printed with an SI prefix, e.g. 12.3u), to compare with SciPy.
    state.counters["s/problem"] =
        benchmark::Counter(static_cast<double>(P) * state.iterations(),
                           benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

template <class T>
void kabsch_bench(benchmark::State& state, Device device) {
    if (skip_without_gpu(state, device)) return;
    const int n = static_cast<int>(state.range(0));
    const int64_t B = state.range(1);
    const std::vector<double> a = centred_normal(B, n, 3, 1.0, 2),
                              b = centred_normal(B, n, 3, 1.0, 3);
    auto x = eqflow::Tensor<T>::from_host(std::vector<T>(a.begin(), a.end()), {B, n, 3}, device);
    auto y = eqflow::Tensor<T>::from_host(std::vector<T>(b.begin(), b.end()), {B, n, 3}, device);
    eqflow::Tensor<T> r({B, 3, 3}, device), c({B}, device), al({B, n, 3}, device);
    for (auto _ : state) {
        eqflow::kabsch(x.cview(), y.cview(), r.view(), c.view(), al.view());
        eqflow::synchronize();
    }
    state.SetItemsProcessed(state.iterations() * B);
    state.SetBytesProcessed(state.iterations() * B * (3 * n * 3 + 10) *
                            static_cast<int64_t>(sizeof(T)));
}

// The eqot per-pair alignment: what CouplingOptions gives by default (exhaustive in 2D for n <= 5,
// the frame starts' search otherwise), the search everywhere, docs/design.md's one-start recipe,
// or the frame starts' search cut to the 1 or 2 best-scored starts (CouplingOptions::max_starts).
enum class Search { standard, frames, recipe, best1, best2 };

template <class T>
void coupling(benchmark::State& state, eqflow::CouplingKind kind, Device device, int n, int d,
              Search search = Search::standard) {
    if (skip_without_gpu(state, device)) return;
    const int64_t B = state.range(0);
    eqflow::CouplingOptions o;
    o.kind = kind;
    if (search == Search::recipe) {  // docs/design.md's recipe: identity start, one Hungarian +
        o.frame_starts = false;      // Kabsch per pair
        o.refine_iterations = 0;
    }
    if (search == Search::best1) o.max_starts = 1;
    if (search == Search::best2) o.max_starts = 2;
    if (search != Search::standard) o.exhaustive = false;
    const std::vector<double> a = centred_normal(B, n, d, 1.0, 4),
                              b = centred_normal(B, n, d, 0.7, 5);
    auto x0 = eqflow::Tensor<T>::from_host(std::vector<T>(a.begin(), a.end()), {B, n, d}, device);
    auto x1 = eqflow::Tensor<T>::from_host(std::vector<T>(b.begin(), b.end()), {B, n, d}, device);
    eqflow::Tensor<T> out({B, n, d}, device);
    const std::size_t bytes = eqflow::coupling_workspace_bytes(device, o, B, n, d);
    eqflow::Buffer<unsigned char> ws(bytes, device);
    for (auto _ : state)
        eqflow::couple(o, x0.cview(), x1.cview(), out.view(), {}, {}, ws.data(), bytes);
    state.SetItemsProcessed(state.iterations() * B * (kind == eqflow::CouplingKind::eqot ? B : 1));
    state.SetLabel(kind == eqflow::CouplingKind::eqot ? "items = pair alignments"
                                                      : "items = samples");
}

// Runs of `bench` on `device`, one a row of {n, count}. CUDA timings use real time.
void register_sized(const char* name, void (*bench)(benchmark::State&, Device), Device device,
                    const char* count, const std::vector<std::vector<int64_t>>& args) {
    benchmark::internal::Benchmark* b =
        benchmark::RegisterBenchmark(name, bench, device)->ArgNames({"n", count});
    for (const std::vector<int64_t>& a : args) b->Args(a);
    if (device == Device::cuda) b->UseRealTime();
    b->Unit(benchmark::kMillisecond);
}

struct System {
    const char* name;
    int n, d;
};

// BM_Coupling_<kind>_<Backend>/<system>/B. CUDA and CPU eqot use real time; the CPU eqot runs
// once, at B = 64 for LJ55 (see the top of the file).
void register_coupling(const char* kind_name, eqflow::CouplingKind kind, Search search,
                       Device device, const System& s) {
    const bool cpu = device == Device::cpu, eqot = kind == eqflow::CouplingKind::eqot;
    const std::string name =
        std::string("BM_Coupling_") + kind_name + (cpu ? "_CPU/" : "_CUDA/") + s.name;
    benchmark::internal::Benchmark* b =
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
            if (cpu)
                coupling<double>(state, kind, device, s.n, s.d, search);
            else
                coupling<float>(state, kind, device, s.n, s.d, search);
        });
    b->Arg(cpu && eqot && s.n == 55 ? 64 : 256);
    if (cpu && eqot) b->Iterations(1);
    if (!cpu || eqot) b->UseRealTime();
    b->Unit(benchmark::kMillisecond);
}

void register_benchmarks() {
    const Device devices[] = {Device::cpu, Device::cuda};
    // CPU: a smaller P at larger n, the same per-problem rate.
    register_sized("BM_Assignment_CPU", assignment<double>, Device::cpu, "P",
                   {{4, 65536}, {13, 16384}, {22, 8192}, {55, 2048}, {256, 32}});
    register_sized("BM_Assignment_CUDA", assignment<float>, Device::cuda, "P",
                   {{4, 65536}, {13, 65536}, {22, 65536}, {55, 65536}, {128, 4096}});
    register_sized("BM_Kabsch_CPU", kabsch_bench<double>, Device::cpu, "B",
                   {{13, 65536}, {55, 16384}});
    register_sized("BM_Kabsch_CUDA", kabsch_bench<float>, Device::cuda, "B",
                   {{13, 65536}, {55, 65536}});
    const System lj55{"lj55", 55, 3};
    for (Device device : devices)
        register_coupling("Ot", eqflow::CouplingKind::ot, Search::standard, device, lj55);
    for (Device device : devices)
        for (const System& s : {System{"dw4", 4, 2}, System{"lj13", 13, 3}, lj55})
            register_coupling("Eqot", eqflow::CouplingKind::eqot, Search::standard, device, s);
    // DW4 without the exhaustive 2D alignment: the frame starts' search it replaces.
    for (Device device : devices)
        register_coupling("EqotSearch", eqflow::CouplingKind::eqot, Search::frames, device,
                          System{"dw4", 4, 2});
    // The one-start recipe at every size: eqot / EqotReference is what the starts cost.
    for (Device device : devices)
        for (const System& s : {System{"dw4", 4, 2}, System{"lj13", 13, 3}, lj55})
            register_coupling("EqotReference", eqflow::CouplingKind::eqot, Search::recipe, device,
                              s);
    // Fewer starts (CouplingOptions::max_starts 1 and 2): what searching only the best-scored
    // starts saves where there is a search (DW4's default alignment is exhaustive, no starts).
    for (Device device : devices)
        for (const System& s : {System{"lj13", 13, 3}, lj55}) {
            register_coupling("EqotStarts1", eqflow::CouplingKind::eqot, Search::best1, device, s);
            register_coupling("EqotStarts2", eqflow::CouplingKind::eqot, Search::best2, device, s);
        }
}

}  // namespace

int main(int argc, char** argv) {
    register_benchmarks();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
