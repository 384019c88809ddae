// The CPU backends of the field interface (eqflow/field.h) for the kernel-dynamics field
// (eqflow/kernel_dynamics.h, docs/design.md section 4b): one implementation, templated on the
// precision T. T = double is the reference; T = float is the fast backend, which keeps its long
// sums (divergence, traces, parameter gradients) in double.
//
// Per sample: alpha(t) = W phi(t) + b (in double), then one walk over the unordered pairs i < j.
// A pair's displacement delta = x_i - x_j, r = |delta|, u = delta / r and its radial values, with
// g_k = exp(-gamma_k (r - mu_k)^2) and z_k = r - mu_k. Nothing divides by r but u, and u always
// multiplies a bounded term. For coincident particles (r = 0) u is 0: there v is C^1 (the pair's
// Jacobian tends to f(0) I), but the divergence d f + r f' has a kink when f'(0) != 0, so its
// gradient (d + 1) f'(0) u depends on the direction of approach; 0 is the symmetric choice.
//   f   = sum_k alpha_k g_k
//   f'  = sum_k alpha_k g_k (-2 gamma_k z_k)
//   f'' = sum_k alpha_k g_k 2 gamma_k (2 gamma_k z_k^2 - 1)
// The pair adds f delta to v_i and subtracts it from v_j. Its Jacobian block is
// A = f I + f' r u u^T (d v_i / d x_i = A, d v_i / d x_j = -A), so
//   divergence   sum over pairs of 2 (d f + r f')
//   jvp_trace    sum over pairs and directions e of  f |q|^2 + r f' (u . q)^2,  q = e_i - e_j
//   backward     with c = dL_dv_i - dL_dv_j: dL/dalpha_k += (c . delta) g_k, and
//                dL/dx_i = -dL/dx_j += c f + (c . delta) f' u
//   div backward d div / d alpha_k = 2 (d g_k + r g_k'), d div / dx_i = 2 ((d + 1) f' + r f'') u
// and dL/dW_km = dL/dalpha_k phi_m(t), dL/db_k = dL/dalpha_k.
//
// Threads: rows in fixed chunks of kChunkRows over the pool; every row's outputs are computed by
// one thread, and the parameter gradient of each chunk goes to its own slot of the workspace,
// the slots summed in chunk order. So no result depends on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "eqflow/field.h"
#include "eqflow/kernel_dynamics.h"
#include "eqflow/parallel.h"

namespace eqflow {

namespace {

constexpr int64_t kChunkRows = 16;

int64_t chunk_count(int64_t B) {
    return (B + kChunkRows - 1) / kChunkRows;
}

// The float backend skips a Gaussian whose exponent gamma z^2 exceeds 30: exp(-30) = 9e-14 is six
// orders below float's resolution of the O(1) sums it would join, and past an exponent of 87 the
// float term turns subnormal, where x86 arithmetic takes a slow path (measured: the float field
// was 1.4x slower than the double one without the skip). The double reference keeps every term:
// it is the plain definition that the tests compare to.
template <class T>
constexpr T kSkipExponent = T(30);
template <>
constexpr double kSkipExponent<double> = std::numeric_limits<double>::infinity();

// The radial function of one sample: f(r) = sum_k alpha_k exp(-gamma_k (r - mu_k)^2).
template <class T>
struct Radial {
    int K;
    const T* mu;
    const T* gamma;
    const T* alpha;

    T f(T r) const {
        T s = 0;
        for (int k = 0; k < K; ++k) {
            const T z = r - mu[k], e = gamma[k] * z * z;
            if (e > kSkipExponent<T>) continue;
            s += alpha[k] * std::exp(-e);
        }
        return s;
    }
    // f and f'.
    void f1(T r, T& f, T& fp) const {
        f = 0;
        fp = 0;
        for (int k = 0; k < K; ++k) {
            const T z = r - mu[k], e = gamma[k] * z * z;
            if (e > kSkipExponent<T>) continue;
            const T ag = alpha[k] * std::exp(-e);
            f += ag;
            fp += ag * (T(-2) * gamma[k] * z);
        }
    }
};

// One pair's geometry: delta = x_i - x_j, r = |delta|, u = delta / r (0 when r = 0).
template <class T>
struct Pair {
    T delta[kKernelMaxDim];
    T u[kKernelMaxDim];
    T r;

    void set(const T* xi, const T* xj, int d) {
        T r2 = 0;
        for (int a = 0; a < d; ++a) {
            delta[a] = xi[a] - xj[a];
            r2 += delta[a] * delta[a];
        }
        r = std::sqrt(r2);
        const T inv = r > 0 ? T(1) / r : T(0);
        for (int a = 0; a < d; ++a) u[a] = delta[a] * inv;
    }
};

template <class T>
class KernelField final : public Field<T> {
  public:
    KernelField(const KernelModel& model, int threads)
        : Field<T>(model.config.n_particles, model.config.dim, kernel_parameter_count(model.config),
                   Device::cpu),
          K_(model.config.radial_count()),
          M_(model.config.time_count()),
          mu_(model.config.radial_centres.begin(), model.config.radial_centres.end()),
          gamma_(model.config.radial_widths.begin(), model.config.radial_widths.end()),
          time_centres_(model.config.time_centres),
          time_width_(model.config.time_width),
          params_(model.params.begin(), model.params.end()),
          threads_(threads) {}

    bool supports_divergence_backward() const override { return true; }

  protected:
    TensorView<T> do_parameters() override {
        return TensorView<T>(params_.data(), Shape{this->parameter_count()}, Device::cpu);
    }
    std::vector<double> do_parameters_to_host() const override {
        return std::vector<double>(params_.begin(), params_.end());
    }
    void do_set_parameters(const std::vector<double>& params) override {
        params_.assign(params.begin(), params.end());
    }

    // Per chunk: doubles phi [M], dL/dalpha [K] and (gradients only) a parameter slot [P], then
    // alpha [K] in T.
    size_t do_workspace_bytes(FieldOp op, int64_t B, int) const override {
        return static_cast<size_t>(chunk_count(B)) * chunk_bytes(has_slot(op));
    }

    void do_forward(TensorView<const T> x, TensorView<const T> t, TensorView<T> v,
                    TensorView<unsigned char> ws, Stream) override {
        const int n = this->n_particles(), d = this->dim();
        const int64_t nd = row_size();
        for_chunks(x.size(0), ws, false, [&](int64_t b, const Scratch& s) {
            const Radial<T> rad = radial_at(t.data[b], s);
            const T* xb = x.data + b * nd;
            T* vb = v.data + b * nd;
            std::fill(vb, vb + nd, T(0));
            Pair<T> p;
            for (int i = 0; i < n; ++i)
                for (int j = i + 1; j < n; ++j) {
                    p.set(xb + i * d, xb + j * d, d);
                    const T f = rad.f(p.r);
                    for (int a = 0; a < d; ++a) {
                        vb[i * d + a] += f * p.delta[a];
                        vb[j * d + a] -= f * p.delta[a];
                    }
                }
        });
    }

    void do_backward(TensorView<const T> x, TensorView<const T> t, TensorView<const T> dL_dv,
                     TensorView<T> dL_dparams, TensorView<T> dL_dx, TensorView<unsigned char> ws,
                     Stream) override {
        const int n = this->n_particles(), d = this->dim();
        const int64_t nd = row_size();
        const bool want_x = dL_dx.defined();
        for_chunks(x.size(0), ws, true, [&](int64_t b, const Scratch& s) {
            radial_at(t.data[b], s);  // phi and alpha of the row into s
            const T* xb = x.data + b * nd;
            const T* gb = dL_dv.data + b * nd;
            T* dxb = want_x ? dL_dx.data + b * nd : nullptr;
            if (dxb) std::fill(dxb, dxb + nd, T(0));
            std::fill(s.dalpha, s.dalpha + K_, 0.0);
            Pair<T> p;
            T c[kKernelMaxDim];
            for (int i = 0; i < n; ++i)
                for (int j = i + 1; j < n; ++j) {
                    p.set(xb + i * d, xb + j * d, d);
                    T cd = 0;
                    for (int a = 0; a < d; ++a) {
                        c[a] = gb[i * d + a] - gb[j * d + a];
                        cd += c[a] * p.delta[a];
                    }
                    T f = 0, fp = 0;
                    for (int k = 0; k < K_; ++k) {
                        const T z = p.r - mu_[k], e = gamma_[k] * z * z;
                        if (e > kSkipExponent<T>) continue;
                        const T g = std::exp(-e);
                        s.dalpha[k] += static_cast<double>(cd * g);
                        const T ag = s.alpha[k] * g;
                        f += ag;
                        fp += ag * (T(-2) * gamma_[k] * z);
                    }
                    if (!dxb) continue;
                    for (int a = 0; a < d; ++a) {
                        const T grad = c[a] * f + cd * fp * p.u[a];
                        dxb[i * d + a] += grad;
                        dxb[j * d + a] -= grad;
                    }
                }
            add_alpha_gradient(s, 1.0);
        });
        reduce_slots(x.size(0), ws, dL_dparams);
    }

    void do_divergence(TensorView<const T> x, TensorView<const T> t, TensorView<T> v,
                       TensorView<T> div, TensorView<unsigned char> ws, Stream) override {
        const int n = this->n_particles(), d = this->dim();
        const int64_t nd = row_size();
        const bool want_v = v.defined();
        for_chunks(x.size(0), ws, false, [&](int64_t b, const Scratch& s) {
            const Radial<T> rad = radial_at(t.data[b], s);
            const T* xb = x.data + b * nd;
            T* vb = want_v ? v.data + b * nd : nullptr;
            if (vb) std::fill(vb, vb + nd, T(0));
            double sum = 0.0;
            Pair<T> p;
            for (int i = 0; i < n; ++i)
                for (int j = i + 1; j < n; ++j) {
                    p.set(xb + i * d, xb + j * d, d);
                    T f, fp;
                    rad.f1(p.r, f, fp);
                    sum += static_cast<double>(T(d) * f + p.r * fp);
                    if (!vb) continue;
                    for (int a = 0; a < d; ++a) {
                        vb[i * d + a] += f * p.delta[a];
                        vb[j * d + a] -= f * p.delta[a];
                    }
                }
            div.data[b] = static_cast<T>(2.0 * sum);  // each unordered pair is two ordered ones
        });
    }

    void do_jvp_trace(TensorView<const T> x, TensorView<const T> t, TensorView<const T> dirs,
                      TensorView<T> v, TensorView<T> trace, TensorView<unsigned char> ws,
                      Stream) override {
        const int n = this->n_particles(), d = this->dim();
        const int64_t nd = row_size();
        const int K = static_cast<int>(dirs.size(1));
        const bool want_v = v.defined();
        for_chunks(x.size(0), ws, false, [&](int64_t b, const Scratch& s) {
            const Radial<T> rad = radial_at(t.data[b], s);
            const T* xb = x.data + b * nd;
            const T* eb = dirs.data + b * K * nd;
            T* vb = want_v ? v.data + b * nd : nullptr;
            if (vb) std::fill(vb, vb + nd, T(0));
            double sum = 0.0;
            Pair<T> p;
            for (int i = 0; i < n; ++i)
                for (int j = i + 1; j < n; ++j) {
                    p.set(xb + i * d, xb + j * d, d);
                    T f, fp;
                    rad.f1(p.r, f, fp);
                    const T rfp = p.r * fp;
                    for (int k = 0; k < K; ++k) {
                        const T* e = eb + k * nd;
                        T qq = 0, uq = 0;
                        for (int a = 0; a < d; ++a) {
                            const T q = e[i * d + a] - e[j * d + a];
                            qq += q * q;
                            uq += p.u[a] * q;
                        }
                        sum += static_cast<double>(f * qq + rfp * uq * uq);
                    }
                    if (!vb) continue;
                    for (int a = 0; a < d; ++a) {
                        vb[i * d + a] += f * p.delta[a];
                        vb[j * d + a] -= f * p.delta[a];
                    }
                }
            trace.data[b] = static_cast<T>(sum / K);
        });
    }

    void do_divergence_backward(TensorView<const T> x, TensorView<const T> t,
                                TensorView<const T> dL_ddiv, TensorView<T> dL_dparams,
                                TensorView<T> dL_dx, TensorView<unsigned char> ws,
                                Stream) override {
        const int n = this->n_particles(), d = this->dim();
        const int64_t nd = row_size();
        const bool want_x = dL_dx.defined();
        for_chunks(x.size(0), ws, true, [&](int64_t b, const Scratch& s) {
            radial_at(t.data[b], s);  // phi and alpha of the row into s
            const T* xb = x.data + b * nd;
            // div = sum over pairs of 2 h(r), h = d f + r f'.
            const T g_div = dL_ddiv.data[b];
            T* dxb = want_x ? dL_dx.data + b * nd : nullptr;
            if (dxb) std::fill(dxb, dxb + nd, T(0));
            std::fill(s.dalpha, s.dalpha + K_, 0.0);
            const T dimT = static_cast<T>(d);
            Pair<T> p;
            for (int i = 0; i < n; ++i)
                for (int j = i + 1; j < n; ++j) {
                    p.set(xb + i * d, xb + j * d, d);
                    T fp = 0, fpp = 0;
                    for (int k = 0; k < K_; ++k) {
                        const T z = p.r - mu_[k], e = gamma_[k] * z * z;
                        if (e > kSkipExponent<T>) continue;
                        const T g = std::exp(-e);
                        const T gp = T(-2) * gamma_[k] * z * g;                               // g'
                        const T gpp = T(2) * gamma_[k] * (T(2) * gamma_[k] * z * z - 1) * g;  // g''
                        s.dalpha[k] += static_cast<double>(dimT * g + p.r * gp);
                        fp += s.alpha[k] * gp;
                        fpp += s.alpha[k] * gpp;
                    }
                    if (!dxb) continue;
                    // h' = (d + 1) f' + r f''
                    const T w = T(2) * g_div * ((dimT + 1) * fp + p.r * fpp);
                    for (int a = 0; a < d; ++a) {
                        dxb[i * d + a] += w * p.u[a];
                        dxb[j * d + a] -= w * p.u[a];
                    }
                }
            add_alpha_gradient(s, 2.0 * static_cast<double>(g_div));
        });
        reduce_slots(x.size(0), ws, dL_dparams);
    }

  private:
    // One chunk's scratch (see do_workspace_bytes).
    struct Scratch {
        double* phi;     // [M] time basis of the current row
        double* dalpha;  // [K] the current row's dL/dalpha
        double* slot;    // [P] the chunk's parameter gradient (gradients only)
        T* alpha;        // [K] the current row's alpha(t)
    };

    int64_t row_size() const { return static_cast<int64_t>(this->n_particles()) * this->dim(); }
    static bool has_slot(FieldOp op) {
        return op == FieldOp::backward || op == FieldOp::divergence_backward;
    }
    size_t chunk_bytes(bool slot) const {
        const size_t doubles = static_cast<size_t>(M_ + K_) +
                               (slot ? static_cast<size_t>(this->parameter_count()) : 0);
        const size_t ts = (static_cast<size_t>(K_) * sizeof(T) + 7) / 8 * 8;
        return doubles * sizeof(double) + ts;
    }
    Scratch scratch(TensorView<unsigned char> ws, int64_t chunk, bool slot) const {
        unsigned char* base = ws.data + static_cast<size_t>(chunk) * chunk_bytes(slot);
        double* dbl = reinterpret_cast<double*>(base);
        Scratch s;
        s.phi = dbl;
        s.dalpha = dbl + M_;
        s.slot = slot ? dbl + M_ + K_ : nullptr;
        const size_t doubles = static_cast<size_t>(M_ + K_) +
                               (slot ? static_cast<size_t>(this->parameter_count()) : 0);
        s.alpha = reinterpret_cast<T*>(base + doubles * sizeof(double));
        return s;
    }

    // phi(t) and alpha(t) = W phi(t) + b into the scratch; the radial function over them.
    Radial<T> radial_at(T t, const Scratch& s) const {
        const double td = static_cast<double>(t);
        for (int m = 0; m < M_; ++m) {
            const double z = td - time_centres_[m];
            s.phi[m] = std::exp(-time_width_ * z * z);
        }
        const T* W = params_.data();
        const T* bias = W + static_cast<size_t>(K_) * M_;
        for (int k = 0; k < K_; ++k) {
            double a = static_cast<double>(bias[k]);
            for (int m = 0; m < M_; ++m) a += static_cast<double>(W[k * M_ + m]) * s.phi[m];
            s.alpha[k] = static_cast<T>(a);
        }
        return Radial<T>{K_, mu_.data(), gamma_.data(), s.alpha};
    }

    // The row's dL/dalpha (times `scale`) into the chunk's slot: W += dalpha phi^T, b += dalpha.
    void add_alpha_gradient(const Scratch& s, double scale) const {
        double* gW = s.slot;
        double* gb = s.slot + static_cast<size_t>(K_) * M_;
        for (int k = 0; k < K_; ++k) {
            const double ga = scale * s.dalpha[k];
            for (int m = 0; m < M_; ++m) gW[k * M_ + m] += ga * s.phi[m];
            gb[k] += ga;
        }
    }

    // fn(row, scratch) for every row, chunk by chunk over the pool; with `slot`, each chunk's
    // parameter slot starts at zero.
    template <class Fn>
    void for_chunks(int64_t B, TensorView<unsigned char> ws, bool slot, const Fn& fn) const {
        parallel_for(
            chunk_count(B),
            [&](int64_t chunk) {
                const Scratch s = scratch(ws, chunk, slot);
                if (slot) std::fill(s.slot, s.slot + this->parameter_count(), 0.0);
                const int64_t b0 = chunk * kChunkRows, b1 = std::min(B, b0 + kChunkRows);
                for (int64_t b = b0; b < b1; ++b) fn(b, s);
            },
            threads_);
    }

    // dL_dparams += the chunks' slots, summed in chunk order.
    void reduce_slots(int64_t B, TensorView<unsigned char> ws, TensorView<T> dL_dparams) const {
        const int64_t P = this->parameter_count(), chunks = chunk_count(B);
        for (int64_t i = 0; i < P; ++i) {
            double sum = 0.0;
            for (int64_t chunk = 0; chunk < chunks; ++chunk)
                sum += scratch(ws, chunk, true).slot[i];
            dL_dparams.data[i] += static_cast<T>(sum);
        }
    }

    int K_, M_;
    std::vector<T> mu_, gamma_;
    std::vector<double> time_centres_;
    double time_width_;
    std::vector<T> params_;  // time_map.weight [K][M], then time_map.bias [K]
    int threads_;
};

}  // namespace

std::unique_ptr<Field<double>> make_reference_field(const KernelModel& model, int threads) {
    validate_kernel_model(model);
    return std::make_unique<KernelField<double>>(model, threads);
}

std::unique_ptr<Field<float>> make_fast_field(const KernelModel& model, int threads) {
    validate_kernel_model(model);
    return std::make_unique<KernelField<float>>(model, threads);
}

}  // namespace eqflow
