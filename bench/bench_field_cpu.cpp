// The two CPU backends of the field interface side by side: the fast float32 backend
// (make_fast_field) and the double reference (make_reference_field), one thread each, on the
// operations of eqflow/field.h and the whole flow-matching training step (FlowMatchingStep, fm
// objective: draws, interpolation, forward_backward, loss, Adam; `fm_plain`: the same step through
// forward, then backward, as before the fast field's forward_backward). Sizes as the paper's
// models: DW4 and LJ13 (H 32, L 3) at B 256, LJ55 (H 64, L 7) at B 64.
//
//   taskset -c 0 build/cpu/bench/bench_field_cpu --benchmark_format=json
//
// tools/bench_cpu_vs_torch.py runs this next to tools/bench_torch.py on the same core and prints
// the ratios. `per_sample` is seconds per configuration (CPU time). The reference's divergence is
// measured on fewer rows (it takes seconds a batch); per_sample makes the two comparable.
#include <benchmark/benchmark.h>

#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "eqflow/egnn.h"
#include "eqflow/field.h"
#include "eqflow/train_step.h"

namespace {

using namespace eqflow;

struct Size {
    const char* system;
    int n, d, hidden, layers;
    int64_t batch;
};

const Size kDw4{"dw4", 4, 2, 32, 3, 256};
const Size kLj13{"lj13", 13, 3, 32, 3, 256};
const Size kLj55{"lj55", 55, 3, 64, 7, 64};

EgnnModel make_model(const Size& s) {
    EgnnModel m;
    m.config = default_egnn_config(s.system, s.n, s.d);
    m.config.hidden = s.hidden;
    m.config.layers = s.layers;
    m.params = egnn_init_parameters(m.config, 1);
    return m;
}

template <class T>
std::unique_ptr<Field<T>> make_field(const EgnnModel& m);
template <>
std::unique_ptr<Field<float>> make_field<float>(const EgnnModel& m) {
    return make_fast_field(m, 1);
}
template <>
std::unique_ptr<Field<double>> make_field<double>(const EgnnModel& m) {
    return make_reference_field(m, 1);
}

std::vector<double> random_rows(const Size& s, int64_t B, uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<double> dist(0.0, s.n == 4 ? 2.0 : 1.0);
    std::vector<double> x(static_cast<size_t>(B * s.n * s.d));
    for (double& v : x) v = dist(gen);
    return x;
}

void report(benchmark::State& state, int64_t B) {
    state.SetItemsProcessed(state.iterations() * B);
    state.counters["per_sample"] =
        benchmark::Counter(static_cast<double>(state.iterations() * B),
                           benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

enum class Op { forward, backward, divergence };

template <class T>
void BM_Field(benchmark::State& state, Size s, Op op, int64_t B) {
    const EgnnModel model = make_model(s);
    auto field = make_field<T>(model);
    const std::vector<double> xd = random_rows(s, B, 7), gd = random_rows(s, B, 8);
    std::vector<T> x(xd.begin(), xd.end()), g(gd.begin(), gd.end()), v(x.size()),
        t(static_cast<size_t>(B)), div(static_cast<size_t>(B)),
        gp(static_cast<size_t>(field->parameter_count()));
    for (int64_t b = 0; b < B; ++b) t[static_cast<size_t>(b)] = T((b + 0.5) / B);
    const Shape xs{B, s.n, s.d};
    FieldWorkspace ws;
    const FieldOp fop = op == Op::forward    ? FieldOp::forward
                        : op == Op::backward ? FieldOp::backward
                                             : FieldOp::divergence;
    const TensorView<unsigned char> w = ws.get(*field, fop, B);
    const TensorView<const T> xv(x.data(), xs), tv(t.data(), Shape{B});
    for (auto _ : state) {
        switch (op) {
            case Op::forward:
                field->forward(xv, tv, TensorView<T>(v.data(), xs), w);
                break;
            case Op::backward:
                field->backward(xv, tv, TensorView<const T>(g.data(), xs),
                                TensorView<T>(gp.data(), Shape{field->parameter_count()}),
                                TensorView<T>(v.data(), xs), w);
                break;
            case Op::divergence:
                field->divergence(xv, tv, TensorView<T>(v.data(), xs),
                                  TensorView<T>(div.data(), Shape{B}), w);
                break;
        }
        benchmark::DoNotOptimize(v.data());
    }
    report(state, B);
}

// A field that passes every operation to another one, so the training step takes the
// interface's default forward_backward (forward, then backward, which repeats the forward): the
// step as it was before the fast field's forward_backward.
template <class T>
class PlainPath final : public Field<T> {
  public:
    explicit PlainPath(Field<T>& f)
        : Field<T>(f.n_particles(), f.dim(), f.parameter_count(), f.device()), f_(f) {}

  protected:
    TensorView<T> do_parameters() override { return f_.parameters(); }
    std::vector<double> do_parameters_to_host() const override { return f_.parameters_to_host(); }
    void do_set_parameters(const std::vector<double>& p) override { f_.set_parameters(p); }
    size_t do_workspace_bytes(FieldOp op, int64_t B, int K) const override {
        return f_.workspace_bytes(op, B, K);
    }
    void do_forward(TensorView<const T> x, TensorView<const T> t, TensorView<T> v,
                    TensorView<unsigned char> ws, Stream st) override {
        f_.forward(x, t, v, ws, st);
    }
    void do_backward(TensorView<const T> x, TensorView<const T> t, TensorView<const T> g,
                     TensorView<T> gp, TensorView<T> gx, TensorView<unsigned char> ws,
                     Stream st) override {
        f_.backward(x, t, g, gp, gx, ws, st);
    }
    void do_divergence(TensorView<const T> x, TensorView<const T> t, TensorView<T> v,
                       TensorView<T> div, TensorView<unsigned char> ws, Stream st) override {
        f_.divergence(x, t, v, div, ws, st);
    }
    void do_jvp_trace(TensorView<const T> x, TensorView<const T> t, TensorView<const T> dirs,
                      TensorView<T> v, TensorView<T> tr, TensorView<unsigned char> ws,
                      Stream st) override {
        f_.jvp_trace(x, t, dirs, v, tr, ws, st);
    }

  private:
    Field<T>& f_;
};

// One whole training step (fm) of FlowMatchingStep<T> on the field (plain: through PlainPath).
template <class T>
void BM_TrainStep(benchmark::State& state, Size s, bool plain = false) {
    const int64_t B = s.batch, count = 4 * B;
    const EgnnModel model = make_model(s);
    auto inner = make_field<T>(model);
    PlainPath<T> wrapped(*inner);
    Field<T>* field = plain ? static_cast<Field<T>*>(&wrapped) : inner.get();
    const std::vector<double> data = random_rows(s, count, 9);
    FlowMatchingStepOptions o;
    o.objective = CouplingKind::fm;
    o.batch = B;
    FlowMatchingStep<T> step(*field, o, data.data(), count);
    std::vector<int64_t> order(static_cast<size_t>(count));
    std::iota(order.begin(), order.end(), int64_t{0});
    step.set_order(order);
    int64_t k = 0;
    for (auto _ : state) {
        step.step(k, k % 4, 5e-4);
        ++k;
    }
    benchmark::DoNotOptimize(step.last_loss());
    report(state, B);
}

void BM_Field_Fast(benchmark::State& state, Size s, Op op, int64_t B) {
    BM_Field<float>(state, s, op, B);
}
void BM_Field_Reference(benchmark::State& state, Size s, Op op, int64_t B) {
    BM_Field<double>(state, s, op, B);
}
void BM_TrainStep_Fast(benchmark::State& state, Size s, bool plain) {
    BM_TrainStep<float>(state, s, plain);
}
void BM_TrainStep_Reference(benchmark::State& state, Size s) {
    BM_TrainStep<double>(state, s);
}

}  // namespace

#define EQFLOW_FIELD_BENCH(SIZE, NAME, B_FAST, B_REF)                                            \
    BENCHMARK_CAPTURE(BM_Field_Fast, NAME##_forward, SIZE, Op::forward, SIZE.batch)              \
        ->Unit(benchmark::kMillisecond);                                                         \
    BENCHMARK_CAPTURE(BM_Field_Reference, NAME##_forward, SIZE, Op::forward, SIZE.batch)         \
        ->Unit(benchmark::kMillisecond);                                                         \
    BENCHMARK_CAPTURE(BM_Field_Fast, NAME##_backward, SIZE, Op::backward, SIZE.batch)            \
        ->Unit(benchmark::kMillisecond);                                                         \
    BENCHMARK_CAPTURE(BM_Field_Reference, NAME##_backward, SIZE, Op::backward, SIZE.batch)       \
        ->Unit(benchmark::kMillisecond);                                                         \
    BENCHMARK_CAPTURE(BM_Field_Fast, NAME##_divergence, SIZE, Op::divergence, B_FAST)            \
        ->Unit(benchmark::kMillisecond);                                                         \
    BENCHMARK_CAPTURE(BM_Field_Reference, NAME##_divergence, SIZE, Op::divergence, B_REF)        \
        ->Unit(benchmark::kMillisecond)                                                          \
        ->Iterations(1);                                                                         \
    BENCHMARK_CAPTURE(BM_TrainStep_Fast, NAME##_fm, SIZE, false)->Unit(benchmark::kMillisecond); \
    BENCHMARK_CAPTURE(BM_TrainStep_Fast, NAME##_fm_plain, SIZE, true)                            \
        ->Unit(benchmark::kMillisecond);                                                         \
    BENCHMARK_CAPTURE(BM_TrainStep_Reference, NAME##_fm, SIZE)                                   \
        ->Unit(benchmark::kMillisecond)                                                          \
        ->MinTime(2.0);

EQFLOW_FIELD_BENCH(kDw4, dw4, 64, 16)
EQFLOW_FIELD_BENCH(kLj13, lj13, 16, 4)
EQFLOW_FIELD_BENCH(kLj55, lj55, 1, 1)

BENCHMARK_MAIN();
