// eqflow/metrics.h: importance weights, the effective sample size, energy histograms and the
// flow's metrics (NLL in the paper's convention and normalised, ESS, path length, mean energies;
// docs/design.md section 6). A sample with a failed integration or a non-finite energy gets
// zero weight (log w = -inf) and is counted; ESS is normalised by ALL samples drawn.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eqflow/export.h"

#include "eqflow/json.h"
#include "eqflow/systems.h"

namespace eqflow {

// ---- importance weights and metrics ---------------------------------------------------------

// ESS of importance weights given as log w, as a fraction of N: (sum w)^2 / sum w^2 / N.
// Non-finite log w count as zero weight (still counted in N). 0 when no weight is finite.
EQFLOW_API double effective_sample_size(const double* log_w, int64_t N);

// Standard error of effective_sample_size over draws of the N samples, by the delta method on
// ESS = mean(w)^2 / mean(w^2) (w = 0 where log w is not finite; samples assumed independent, as
// the flow's are). Approximate: with heavy-tailed weights it comes out low (log-normal weights
// with ESS ~0.37 at N = 2000: ~0.028 against a spread of ~0.036 over repeated draws). NaN when
// N < 2 or no weight is finite.
EQFLOW_API double effective_sample_size_stderr(const double* log_w, int64_t N);

struct Reweighting {
    std::vector<double> log_w;  // [N] -u - log q; -inf where u or log q is not finite
    int64_t invalid = 0;        // samples with zero weight because u or log q is not finite
    double ess = 0.0;           // fraction of N
    double ess_stderr = 0.0;    // effective_sample_size_stderr
    double energy_mean = 0.0;   // plain mean of u over the finite samples
    double energy_mean_reweighted = 0.0;  // self-normalised importance-weighted mean of u
};

// u: reduced energies, log_q: normalised model log-densities, both [N].
EQFLOW_API Reweighting importance_weights(const double* u, const double* log_q, int64_t N);

// Reduced energies of [N][n][d] configurations (CPU); non-finite inputs give +inf.
EQFLOW_API std::vector<double> reduced_energies(const System& system, const double* x, int64_t N);

struct EnergyHistogram {
    std::vector<double> edges;  // bins + 1 edges
    std::vector<double> data;   // densities (integrate to 1 over the range), per bin
    std::vector<double> samples;
    std::vector<double> reweighted;
    EQFLOW_API Json to_json() const;
};

// Histograms of the data's, the samples' and the reweighted samples' energies on a common range:
// from the lower of the data's and the samples' 0.5% quantiles to the data's 99.5% quantile plus
// half the data's spread (a poor model's high-energy tail must not squeeze the data into a few
// bins). Densities are normalised by all finite values, so mass outside the range shows as an
// area below 1. Non-finite energies are left out.
EQFLOW_API EnergyHistogram energy_histogram(const std::vector<double>& u_data,
                                            const std::vector<double>& u_samples,
                                            const std::vector<double>& log_w, int bins = 60);

struct FlowMetrics {
    double nll = 0.0;             // mean -log q over the test set, the paper's convention
    double nll_normalized = 0.0;  // nll + prior_log_normalizer(n, d)
    double ess = 0.0;             // fraction of the samples drawn
    double path_length = 0.0;     // mean over samples of int |v| dt
    // Standard errors of the three, from the same numbers: nll's is sd(-log q) / sqrt(finite
    // test points), which holds for independent test points (a correlated test set, such as
    // consecutive MCMC samples, has a larger one); ess's is effective_sample_size_stderr;
    // path_length's is sd / sqrt(finite samples). NaN where fewer than 2 values are finite.
    double nll_stderr = 0.0, ess_stderr = 0.0, path_length_stderr = 0.0;
    // The NLL's stderr is mostly the test set's own spread (sd(-log q) ~ sd(u): ~0.2 nats for
    // 1000 LJ13 points), so NLLs on different test sets (the paper's and ours) differ by that
    // much for the same model. These split it, over the test points where u and log q are both
    // finite: log_z = log of the importance-sampling estimate mean(exp(log w)) over the N samples
    // (failed ones weigh 0) of the target's partition function on the space the model's density
    // lives on (normalised convention; for aldp, whose density is folded, the L-half's);
    // kl_test = mean(-u - log q) - log_z, an estimate of KL(p || q) whose spread is that of
    // log w on the data (small for a good model), with kl_test_stderr from both terms (log_z's
    // by the delta method, (1/ess - 1) / N, which grows as the ESS falls; the test points taken
    // as independent); and entropy_test = mean(u) + log_z in the paper's convention, the
    // target's entropy on those test points: the NLL a perfect model would score there (nll =
    // entropy_test + kl_test when every test point is finite). NaN when no weight or test point
    // is finite. Caveats: log_z misses what the samples never reach (a missed mode), and counts
    // failed integrations (failed_samples) as zero weight, f of them biasing it by about
    // log(1 - f); both bias kl_test high and entropy_test low. With few effective samples
    // (ess * n_samples below ~100) log_z is one or a few weights, biased low far beyond its
    // stderr: an untrained LJ13 model (ESS 1/50) gave kl_test ~4711 +- 1.2. `eqflow eval` says so.
    double log_z = 0.0, kl_test = 0.0, kl_test_stderr = 0.0, entropy_test = 0.0;
    int64_t n_samples = 0, n_test = 0;
    int64_t failed_samples = 0;  // zero-weight samples (failed integration or non-finite energy)
    int64_t failed_test = 0;     // test points whose backward integration failed (left out of nll)
    double energy_mean_samples = 0.0, energy_mean_reweighted = 0.0, energy_mean_test = 0.0;
    bool approximate = false;  // Hutchinson divergence: nll and weights are estimates
    // Chirality folding (folds_chirality): samples mirrored to the right handedness, as a
    // fraction of the samples drawn; nll and weights use the folded density (log q + log 2).
    bool chirality_folded = false;
    int64_t mirrored_samples = 0;
    double length_scale = 1.0;  // the model's (EgnnConfig::length_scale)
    EnergyHistogram histogram;
    EQFLOW_API Json
    to_json() const;  // the keys of docs/design.md section 7 (without the figure paths)
};

// NLL from normalised log q of the test set; the rest from the samples' log q, u and path lengths.
EQFLOW_API FlowMetrics flow_metrics(int n, int d, const std::vector<double>& test_log_q,
                                    const std::vector<double>& test_u,
                                    const std::vector<double>& sample_log_q,
                                    const std::vector<double>& sample_u,
                                    const std::vector<double>& sample_path_length);

}  // namespace eqflow
