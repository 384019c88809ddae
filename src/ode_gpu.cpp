// The device ODE integrator: argument checks, chunking and the step loop on the host; the state
// and all per-sample work on the device (kernels/ode_gpu.cu, src/common/ode_step.h). See
// eqflow/ode_gpu.h for the design and the memory budget.
#include "eqflow/ode_gpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/ode_step.h"
#include "eqflow/buffer.h"
#include "eqflow/error.h"
#include "eqflow/tensor.h"
#include "ode_host.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/ode_gpu.cuh"
#endif

namespace eqflow {

namespace {

constexpr int64_t kMaxDefaultChunk = 65536;
constexpr size_t kDefaultChunkBudget = size_t{2} << 30;  // 2 GiB of integrator buffers

int stage_count(OdeMethod method) {
    switch (method) {
        case OdeMethod::dopri5:
            return 7;
        case OdeMethod::rk4:
            return 4;
        case OdeMethod::euler:
            return 1;
    }
    return 7;
}

void check_options(const OdeOptions& o) {
    if (o.method == OdeMethod::dopri5) {
        EQFLOW_CHECK(o.atol > 0 && o.rtol >= 0, "ODE tolerances must be atol > 0, rtol >= 0");
    } else {
        EQFLOW_CHECK(o.steps > 0, "fixed-step ODE solver needs steps > 0, got " << o.steps);
    }
}

#if defined(EQFLOW_HAVE_CUDA)
using cuda::OdeOp;
using cuda::OdeOpArgs;

// Device buffers of one chunk of capacity C; allocated once per call, reused by every chunk.
struct Workspace {
    Buffer<double> y, ynew, k, t, h;
    Buffer<int64_t> steps, accepted, rejected;
    Buffer<int> flags, idx, count;
    Buffer<float> xf, tf, vf, divf;
    ode_step::Chunk chunk;
    FieldWorkspace field;  // the field's scratch, sized on the first (largest) stage

    Workspace(int64_t C, int64_t D, OdeMethod method) {
        const size_t c = static_cast<size_t>(C), S = static_cast<size_t>(D + 2);
        const Device dev = Device::cuda;
        y = Buffer<double>(c * S, dev);
        if (method == OdeMethod::dopri5) ynew = Buffer<double>(c * S, dev);
        k = Buffer<double>(static_cast<size_t>(stage_count(method)) * c * S, dev);
        t = Buffer<double>(c, dev);
        h = Buffer<double>(c, dev);
        steps = Buffer<int64_t>(c, dev);
        accepted = Buffer<int64_t>(c, dev);
        rejected = Buffer<int64_t>(c, dev);
        flags = Buffer<int>(c, dev);
        idx = Buffer<int>(c, dev);
        count = Buffer<int>(1, dev);
        xf = Buffer<float>(c * static_cast<size_t>(D), dev);
        vf = Buffer<float>(c * static_cast<size_t>(D), dev);
        tf = Buffer<float>(c, dev);
        divf = Buffer<float>(c, dev);
        chunk.C = C;
        chunk.D = D;
        chunk.y = y.data();
        chunk.ynew = ynew.data();
        chunk.k = k.data();
        chunk.t = t.data();
        chunk.h = h.data();
        chunk.steps = steps.data();
        chunk.accepted = accepted.data();
        chunk.rejected = rejected.data();
        chunk.flags = flags.data();
    }
};

// Integrates one chunk of B <= C samples; the state stays in `ws` for the caller to read back.
class ChunkRun {
  public:
    ChunkRun(Field<float>& gpu, Workspace& ws, const ode_step::Params& params, OdeStats& stats)
        : gpu_(gpu), ws_(ws), p_(params), stats_(stats) {}

    void start(int64_t B, const double* x_host) {
        // The k buffer (>= C S doubles) stages the [B][D] inputs before the first evaluation.
        ws_.k.copy_from_host(x_host, static_cast<size_t>(B * ws_.chunk.D));
        cuda::ode_init(ws_.chunk, p_, B, ws_.k.data(), ws_.idx.data(), nullptr);
        B_ = B;
        m_ = B;
    }

    void dopri5() {
        op(OdeOp::gather, with_xt());
        field(0);
        if (p_.first_step > 0) {
            op(OdeOp::given_first_step, {});
        } else {
            op(OdeOp::hairer_trial, with_xt());
            field(1);
            op(OdeOp::hairer_finish, {});
        }
        op(OdeOp::check_start, {});
        compact();
        while (m_ > 0) {
            for (int s = 1; s < 7; ++s) {
                OdeOpArgs a = with_xt();
                a.stage = s;
                op(OdeOp::dopri5_stage, a);
                field(s);
            }
            op(OdeOp::dopri5_finish, {});
            compact();  // the one device-to-host transfer of a step: the active count
        }
    }

    // All samples move together (as in ode_integrate), so every step evaluates every row.
    void fixed(const OdeOptions& o) {
        const bool rk4 = o.method == OdeMethod::rk4;
        const double t0 = p_.t0, t1 = p_.t1;
        const double h = (t1 - t0) / o.steps;
        for (int step = 0; step < o.steps; ++step) {
            // The stage times exactly as ode_integrate computes them.
            const double t = t0 + (t1 - t0) * step / o.steps;
            const double t_end = t0 + (t1 - t0) * (step + 1) / o.steps;
            const double times[4] = {t, t + 0.5 * h, t + 0.5 * h, t_end};
            for (int s = 0; s < (rk4 ? 4 : 1); ++s) {
                OdeOpArgs a = with_xt();
                a.stage = s;
                a.h = h;
                a.t_stage = times[s];
                op(OdeOp::fixed_stage, a);
                field(s);
            }
            OdeOpArgs a;
            a.rk4 = rk4;
            a.h = h;
            op(OdeOp::fixed_update, a);
        }
        op(OdeOp::fixed_check_end, {});
    }

  private:
    OdeOpArgs with_xt() const {
        OdeOpArgs a;
        a.xf = ws_.xf.data();
        a.tf = ws_.tf.data();
        return a;
    }
    void op(OdeOp which, const OdeOpArgs& a) {
        cuda::ode_per_sample(which, ws_.chunk, p_, ws_.idx.data(), m_, a, nullptr);
    }
    // The field on the m compact rows of xf / tf, then k[stage] of their samples.
    void field(int stage) {
        if (m_ == 0) return;
        const Shape xs{m_, gpu_.n_particles(), gpu_.dim()};
        gpu_.divergence(TensorView<const float>(ws_.xf.data(), xs, Device::cuda),
                        TensorView<const float>(ws_.tf.data(), Shape{m_}, Device::cuda),
                        TensorView<float>(ws_.vf.data(), xs, Device::cuda),
                        TensorView<float>(ws_.divf.data(), Shape{m_}, Device::cuda),
                        ws_.field.get(gpu_, FieldOp::divergence, m_));
        stats_.function_evals += 1;
        stats_.row_evals += m_;
        OdeOpArgs a;
        a.stage = stage;
        a.vf = ws_.vf.data();
        a.divf = ws_.divf.data();
        op(OdeOp::scatter, a);
    }
    void compact() {
        cuda::ode_compact(ws_.flags.data(), B_, ws_.idx.data(), ws_.count.data(), nullptr);
        int count = 0;
        ws_.count.copy_to_host(&count, 1);  // synchronous
        m_ = count;
    }

    Field<float>& gpu_;
    Workspace& ws_;
    ode_step::Params p_;
    OdeStats& stats_;
    int64_t B_ = 0, m_ = 0;
};
#endif

}  // namespace

size_t ode_gpu_bytes_per_sample(int64_t D, OdeMethod method) {
    const size_t S = static_cast<size_t>(D + 2);
    const size_t state_rows = static_cast<size_t>(stage_count(method)) + 1 +
                              (method == OdeMethod::dopri5 ? 1 : 0);     // k, y, ynew
    return state_rows * S * sizeof(double)                               //
           + 2 * sizeof(double) + 3 * sizeof(int64_t) + 2 * sizeof(int)  // t h, counters, flags idx
           + 2 * static_cast<size_t>(D) * sizeof(float) + 2 * sizeof(float);  // xf vf, tf divf
}

int64_t ode_gpu_default_chunk(int64_t D, OdeMethod method) {
    const size_t fit = kDefaultChunkBudget / ode_gpu_bytes_per_sample(D, method);
    return std::max<int64_t>(1, std::min<int64_t>(kMaxDefaultChunk, static_cast<int64_t>(fit)));
}

void ode_integrate_gpu(Field<float>& gpu, int64_t B, double* x, double t0, double t1,
                       const OdeOptions& options, double* div_integral, double* path_length,
                       OdeStats* stats, int64_t max_chunk,
                       const std::function<void(int64_t, int64_t)>& progress) {
    EQFLOW_CHECK(gpu.device() == Device::cuda,
                 "ode_integrate_gpu: the field computes on " << device_name(gpu.device()));
    const int64_t D = static_cast<int64_t>(gpu.n_particles()) * gpu.dim();
    EQFLOW_CHECK(B >= 0, "ode_integrate_gpu: negative batch " << B);
    EQFLOW_CHECK(std::isfinite(t0) && std::isfinite(t1),
                 "ode_integrate_gpu: non-finite time interval");
    EQFLOW_CHECK(max_chunk >= 0, "ode_integrate_gpu: negative chunk size " << max_chunk);
    check_options(options);
    const int64_t S = D + 2;
    OdeStats local;
    OdeStats& st = stats ? *stats : local;
    if (B == 0) return;
    if (t0 == t1) {  // nothing to integrate, as ode_integrate
        for (int64_t b = 0; b < B; ++b) {
            if (div_integral) div_integral[b] = 0.0;
            if (path_length) path_length[b] = 0.0;
        }
        if (progress) progress(B, B);
        return;
    }
#if defined(EQFLOW_HAVE_CUDA)
    const int64_t C =
        std::min(B, max_chunk > 0 ? max_chunk : ode_gpu_default_chunk(D, options.method));
    EQFLOW_CHECK(C <= std::numeric_limits<int>::max(), "ode_integrate_gpu: chunk too large");
    Workspace ws(C, D, options.method);
    const ode_step::Params p = ode_host::params_of(options, t0, t1);
    std::vector<double> y(static_cast<size_t>(C * S));
    std::vector<int> flags(static_cast<size_t>(C));
    std::vector<int64_t> acc(static_cast<size_t>(C)), rej(static_cast<size_t>(C));
    for (int64_t start = 0; start < B; start += C) {
        const int64_t n = std::min(C, B - start);
        ChunkRun run(gpu, ws, p, st);
        run.start(n, x + start * D);
        if (options.method == OdeMethod::dopri5) {
            run.dopri5();
        } else {
            run.fixed(options);
        }
        ws.y.copy_to_host(y.data(), static_cast<size_t>(n * S));
        ws.flags.copy_to_host(flags.data(), static_cast<size_t>(n));
        ws.accepted.copy_to_host(acc.data(), static_cast<size_t>(n));
        ws.rejected.copy_to_host(rej.data(), static_cast<size_t>(n));
        for (int64_t b = 0; b < n; ++b) {
            const size_t bs = static_cast<size_t>(b);
            const int64_t row = start + b;
            ode_host::collect_sample(y.data() + b * S, D, flags[bs], acc[bs], rej[bs], x + row * D,
                                     div_integral ? div_integral + row : nullptr,
                                     path_length ? path_length + row : nullptr, &st);
        }
        if (progress) progress(start + n, B);
    }
#else
    (void)x;
    (void)S;
    (void)st;
    EQFLOW_THROW("ode_integrate_gpu: eqflow was built without CUDA");
#endif
}

}  // namespace eqflow
