// eqflow/flow.h: the continuous normalizing flow as a Boltzmann generator (docs/design.md section
// 6): sampling with the exact log-density, the likelihood of given data by integrating
// backwards, a trained model as a flow in the system's units, chirality folding, and the whole
// evaluation of a model. The prior is eqflow/prior.h, the weights and metrics eqflow/metrics.h,
// the figures eqflow/figures.h.
//
// Time runs from t = 0 (prior) to t = 1 (data); log q(x1) = log p0(x0) - int_0^1 div v dt.
// All log-densities here are NORMALISED on the (n-1)*d dimensional mean-free subspace:
//     log p0(x) = -1/2 |x|^2 - 1/2 (n-1) d log(2 pi)      for centred x.
// The paper's NLL convention leaves out the constant 1/2 (n-1) d log(2 pi); FlowMetrics reports
// both (`nll` in the paper's convention, `nll_normalized` the true negative log-density).
//
// Randomness: sample i of a job with seed s starts from the prior draw of Philox(s, i), so a
// sample does not depend on the batch size or on how many samples are drawn before it.
//
// Failures: a sample whose integration fails (non-finite field, step size underflow) or whose
// energy is not finite gets zero importance weight (log w = -inf) and is counted; ESS and means
// are computed over the finite ones but ESS is normalised by ALL samples drawn.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "eqflow/device.h"
#include "eqflow/egnn.h"
#include "eqflow/export.h"
#include "eqflow/field.h"
#include "eqflow/flow_model.h"
#include "eqflow/metrics.h"
#include "eqflow/ode.h"
#include "eqflow/prior.h"
#include "eqflow/systems.h"

namespace eqflow {

// ---- flows over a generic field ---------------------------------------------------------------

struct FlowOptions {
    OdeOptions ode;           // dopri5, atol = rtol = 1e-4 by default
    int64_t batch = 256;      // samples per integration batch
    bool hutchinson = false;  // Hutchinson divergence (then log q and the weights are approximate)
    int hutchinson_probes = 1;
    uint64_t hutchinson_seed = 0;
    int threads = 1;              // worker threads for the field (0: all hardware threads)
    Device device = Device::cpu;  // cuda: the fused GPU kernels in float32 (exact divergence only)
    // device cpu: the double-precision reference field instead of the fast float32 one (slower;
    // the truth the tests compare to).
    bool reference = false;
    // Called after each batch with (samples done, total).
    std::function<void(int64_t, int64_t)> progress;
};

struct FlowSamples {
    int n = 0, d = 0;
    int64_t count = 0;
    std::vector<double> x;            // [count][n][d] samples at t = 1
    std::vector<double> x0;           // [count][n][d] their prior points
    std::vector<double> log_q;        // [count] normalised model log-density of x
    std::vector<double> path_length;  // [count] int_0^1 |v| dt
    int64_t failed = 0;               // integrations that failed (their x and log_q are NaN)
    OdeStats ode;
};

struct FlowLikelihood {
    std::vector<double> log_q;        // [count] normalised model log-density of the given x
    std::vector<double> x0;           // [count][n][d] the prior points they map back to
    std::vector<double> path_length;  // [count]
    int64_t failed = 0;
    OdeStats ode;
};

// A field for the flow: v and (when div != nullptr) the divergence, for B rows of [n][d].
using FlowField = OdeField;

// How a sampler integrates: B rows x [B][n*d] (host) from t0 to t1 in place, with the outputs
// and OdeStats semantics of ode_integrate (eqflow/ode.h), including failed samples as NaN.
using FlowIntegrator =
    std::function<void(int64_t B, double* x, double t0, double t1, double* div_integral,
                       double* path_length, OdeStats* stats)>;

// The one sampling loop: `count` prior samples (sample i from Philox(seed, i)) integrated from
// t = 0 to 1 in batches of `batch` rows, log q = log p0 - int div. And the one likelihood loop:
// x [count][n][d] (centred) integrated backwards, log q = log p0(x0) + int_1^0 div.
// options.progress is called after each batch.
EQFLOW_API FlowSamples flow_sample(const FlowIntegrator& integrate, int n, int d, int64_t count,
                                   uint64_t seed, int64_t batch, const FlowOptions& options);
EQFLOW_API FlowLikelihood flow_log_likelihood(const FlowIntegrator& integrate, int n, int d,
                                              const double* x, int64_t count, int64_t batch,
                                              const FlowOptions& options);

// The same loops with the host integrator ode_integrate over `field` (options.ode, options.batch).
EQFLOW_API FlowSamples flow_sample(const FlowField& field, int n, int d, int64_t count,
                                   uint64_t seed, const FlowOptions& options);
// x: [count][n][d], centred (use remove_mean first).
EQFLOW_API FlowLikelihood flow_log_likelihood(const FlowField& field, int n, int d, const double* x,
                                              int64_t count, const FlowOptions& options);

// Any backend of the field interface (eqflow/field.h) as a host ODE callback: each call copies
// the rows into the field's memory and precision and evaluates v and the exact divergence, or
// Hutchinson's estimate with `probes` Rademacher directions per row (row r of a call draws from
// Philox(seed + r, 0), one bit per coordinate, so a row's directions do not depend on how rows
// are split). probes = 0: exact.
template <class T>
EQFLOW_API FlowField field_ode(std::shared_ptr<Field<T>> field, int probes = 0, uint64_t seed = 0);

// A model of either field type as a flow field on options.device (on the CPU the fast float32
// field with options.threads, or the double reference with options.reference; or CUDA, an Error
// for the kernel field), exact or Hutchinson (options.hutchinson).
EQFLOW_API FlowField model_flow_field(const FlowModel& model, const FlowOptions& options);
// The same for an EGNN model.
EQFLOW_API FlowField egnn_flow_field(const EgnnModel& model, const FlowOptions& options);

// The integrator sample_model and model_log_likelihood use: on the CPU, ode_integrate over
// model_flow_field; on CUDA with the exact divergence, the device integrator (eqflow/ode_gpu.h)
// with the state on the GPU; on CUDA with Hutchinson, ode_integrate over the GPU field.
// `batch` receives the rows per integrator call that suit it.
EQFLOW_API FlowIntegrator model_integrator(const FlowModel& model, const FlowOptions& options,
                                           int64_t* batch);

// ---- a trained model (EGNN or kernel dynamics) as a flow in the system's units -----------------
// The field and the prior live in model units y = x / s, s = model.length_scale() (1 for the
// particle systems). These convert at the boundary: samples x = s y, test points y = x / s,
// log q_x(x) = log q_y(y) - (n-1) d log s (the density on the mean-free subspace), path lengths
// in the system's units (s times the model's). With s = 1 they are flow_sample and
// flow_log_likelihood over model_integrator.
EQFLOW_API FlowSamples sample_model(const FlowModel& model, int64_t count, uint64_t seed,
                                    const FlowOptions& options);
// x: [count][n][d] centred, in the system's units.
EQFLOW_API FlowLikelihood model_log_likelihood(const FlowModel& model, const double* x,
                                               int64_t count, const FlowOptions& options);

// ---- chirality (docs/design.md section 9)
// --------------------------------------------------------- An E(3)-equivariant flow with a
// reflection-symmetric prior gives a configuration and its mirror image the same density, so it
// samples both enantiomers. For systems that fix a handedness (aldp: L-alanine) the samples of the
// wrong handedness are mirrored, which folds the two images together: the folded density is q(x) +
// q(-x) = 2 q(x), log q + log 2. True for `aldp`.
EQFLOW_API bool folds_chirality(const System& system);
// Mirrors the wrong-handed samples of `s` in place and adds log 2 to every log q (also of failed
// samples, which stay NaN). Returns the number mirrored. No-op (returns 0) when the system does
// not fold chirality.
EQFLOW_API int64_t fold_chirality(const System& system, FlowSamples& s);

// The whole evaluation of a model against a system: draws `n_samples` samples (seed) with their
// exact log q, their reduced energies and weights; integrates the test set backwards for the
// NLL (test_x [n_test][n][d], centred, in the system's units). For systems that fold chirality
// the samples are mirrored to the right handedness and both nll and weights use the folded
// density (see fold_chirality). `samples` (nullable) receives the samples, `weights`
// (nullable) their reweighting. Progress goes through options.progress (samples, then test).
EQFLOW_API FlowMetrics evaluate_flow(const FlowModel& model, const System& system,
                                     const double* test_x, int64_t n_test, int64_t n_samples,
                                     uint64_t seed, const FlowOptions& options,
                                     FlowSamples* samples = nullptr,
                                     Reweighting* weights = nullptr);

}  // namespace eqflow
