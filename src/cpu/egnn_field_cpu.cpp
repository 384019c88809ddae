// The CPU reference backend of the field interface (eqflow/field.h) for the EGNN: double
// precision, the plain per-sample loops of src/cpu/egnn_cpu.cpp, rows in fixed chunks of
// kChunkRows over the thread pool.
//
// Results do not depend on the thread count: every row's v, div and dL_dx are computed by one
// thread on its own, and the parameter gradient of each chunk goes to its own slot of the
// workspace ([chunks][P] doubles), then the slots are added to dL_dparams in chunk order.
#include <algorithm>
#include <memory>
#include <vector>

#include "cpu/dual.h"
#include "cpu/egnn_cpu.h"
#include "eqflow/egnn.h"
#include "eqflow/field.h"
#include "eqflow/parallel.h"

namespace eqflow {

namespace {

constexpr int64_t kChunkRows = 16;  // rows per chunk: fixes the gradient's summation order

int64_t chunk_count(int64_t B) {
    return (B + kChunkRows - 1) / kChunkRows;
}

class ReferenceEgnnField final : public Field<double> {
  public:
    ReferenceEgnnField(const EgnnModel& model, int threads)
        : Field<double>(model.config.n_particles, model.config.dim,
                        egnn_parameter_count(model.config), Device::cpu),
          config_(model.config),
          offsets_(cpu::egnn_offsets(model.config)),
          params_(model.params),
          threads_(threads) {}

    bool supports_divergence_backward() const override { return true; }

  protected:
    TensorView<double> do_parameters() override {
        return TensorView<double>(params_.data(), Shape{parameter_count()}, Device::cpu);
    }
    std::vector<double> do_parameters_to_host() const override { return params_; }
    void do_set_parameters(const std::vector<double>& params) override { params_ = params; }

    size_t do_workspace_bytes(FieldOp op, int64_t B, int K) const override {
        const int64_t nd = static_cast<int64_t>(n_particles()) * dim();
        switch (op) {
            case FieldOp::backward:
                return static_cast<size_t>(chunk_count(B) * parameter_count()) * sizeof(double);
            case FieldOp::divergence:  // the n*d unit tangents and their images, per chunk
                return static_cast<size_t>(chunk_count(B) * nd * nd) * sizeof(double);
            case FieldOp::jvp_trace:
                return static_cast<size_t>(B * K * nd) * sizeof(double);
            case FieldOp::divergence_backward:  // a dual gradient slot [P] per chunk
                return static_cast<size_t>(chunk_count(B) * parameter_count()) * sizeof(cpu::Dual);
            case FieldOp::forward:
            case FieldOp::forward_backward:  // sized by Field (forward, then backward)
                break;
        }
        return 0;
    }

    void do_forward(TensorView<const double> x, TensorView<const double> t, TensorView<double> v,
                    TensorView<unsigned char>, Stream) override {
        const int64_t nd = row_size();
        for_chunks(x.size(0), [&](int64_t b0, int64_t m, int64_t) {
            for (int64_t b = b0; b < b0 + m; ++b)
                cpu::egnn_forward_one(config_, offsets_, params_.data(), x.data + b * nd, t.data[b],
                                      v.data + b * nd);
        });
    }

    void do_backward(TensorView<const double> x, TensorView<const double> t,
                     TensorView<const double> dL_dv, TensorView<double> dL_dparams,
                     TensorView<double> dL_dx, TensorView<unsigned char> ws, Stream) override {
        const int64_t nd = row_size(), P = parameter_count(), B = x.size(0);
        double* slots = reinterpret_cast<double*>(ws.data);
        for_chunks(B, [&](int64_t b0, int64_t m, int64_t chunk) {
            double* g = slots + chunk * P;
            std::fill(g, g + P, 0.0);
            for (int64_t b = b0; b < b0 + m; ++b)
                cpu::egnn_backward_one(config_, offsets_, params_.data(), x.data + b * nd,
                                       t.data[b], dL_dv.data + b * nd, g,
                                       dL_dx.defined() ? dL_dx.data + b * nd : nullptr);
        });
        for (int64_t chunk = 0; chunk < chunk_count(B); ++chunk)
            for (int64_t i = 0; i < P; ++i) dL_dparams.data[i] += slots[chunk * P + i];
    }

    void do_divergence(TensorView<const double> x, TensorView<const double> t, TensorView<double> v,
                       TensorView<double> div, TensorView<unsigned char> ws, Stream) override {
        const int64_t nd = row_size();
        // All n*d basis directions at once, one primal pass per sample.
        const std::vector<double> eye = cpu::egnn_unit_tangents(static_cast<int>(nd));
        double* images = reinterpret_cast<double*>(ws.data);
        for_chunks(x.size(0), [&](int64_t b0, int64_t m, int64_t chunk) {
            for (int64_t b = b0; b < b0 + m; ++b)
                div.data[b] = cpu::egnn_divergence_one(
                    config_, offsets_, params_.data(), x.data + b * nd, t.data[b], eye.data(),
                    images + chunk * nd * nd, v.defined() ? v.data + b * nd : nullptr);
        });
    }

    void do_jvp_trace(TensorView<const double> x, TensorView<const double> t,
                      TensorView<const double> dirs, TensorView<double> v, TensorView<double> trace,
                      TensorView<unsigned char> ws, Stream) override {
        const int64_t nd = row_size();
        const int K = static_cast<int>(dirs.size(1));
        double* images = reinterpret_cast<double*>(ws.data);
        for_chunks(x.size(0), [&](int64_t b0, int64_t m, int64_t) {
            for (int64_t b = b0; b < b0 + m; ++b) {
                const double* e = dirs.data + b * K * nd;
                double* vdot = images + b * K * nd;
                cpu::egnn_jvp_one(config_, offsets_, params_.data(), x.data + b * nd, t.data[b], K,
                                  e, v.defined() ? v.data + b * nd : nullptr, vdot);
                double sum = 0.0;
                for (int64_t k = 0; k < K * nd; ++k) sum += e[k] * vdot[k];
                trace.data[b] = sum / K;
            }
        });
    }

    // Forward over reverse (cpu::egnn_divergence_backward_one): each chunk accumulates into its
    // own slot of duals, whose tangents are then added to dL_dparams in chunk order, like
    // do_backward, so the result does not depend on the thread count.
    void do_divergence_backward(TensorView<const double> x, TensorView<const double> t,
                                TensorView<const double> dL_ddiv, TensorView<double> dL_dparams,
                                TensorView<double> dL_dx, TensorView<unsigned char> ws,
                                Stream) override {
        const int64_t nd = row_size(), P = parameter_count(), B = x.size(0);
        cpu::Dual* slots = reinterpret_cast<cpu::Dual*>(ws.data);
        for_chunks(B, [&](int64_t b0, int64_t m, int64_t chunk) {
            cpu::Dual* g = slots + chunk * P;
            std::fill(g, g + P, cpu::Dual(0.0, 0.0));
            for (int64_t b = b0; b < b0 + m; ++b)
                cpu::egnn_divergence_backward_one(config_, offsets_, params_.data(),
                                                  x.data + b * nd, t.data[b], dL_ddiv.data[b], g,
                                                  dL_dx.defined() ? dL_dx.data + b * nd : nullptr);
        });
        for (int64_t chunk = 0; chunk < chunk_count(B); ++chunk)
            for (int64_t i = 0; i < P; ++i) dL_dparams.data[i] += slots[chunk * P + i].d;
    }

  private:
    int64_t row_size() const { return static_cast<int64_t>(n_particles()) * dim(); }

    // fn(first row, rows, chunk index) for every chunk of kChunkRows rows, over the pool.
    template <class Fn>
    void for_chunks(int64_t B, const Fn& fn) const {
        parallel_for(
            chunk_count(B),
            [&](int64_t chunk) {
                const int64_t b0 = chunk * kChunkRows;
                fn(b0, std::min(kChunkRows, B - b0), chunk);
            },
            threads_);
    }

    EgnnConfig config_;
    cpu::EgnnOffsets offsets_;
    std::vector<double> params_;
    int threads_;
};

}  // namespace

std::unique_ptr<Field<double>> make_reference_field(const EgnnModel& model, int threads) {
    validate_egnn_model(model);
    return std::make_unique<ReferenceEgnnField>(model, threads);
}

}  // namespace eqflow
