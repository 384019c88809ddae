// eqflow/prior.h: the flow's prior, the standard normal on the mean-free subspace of dimension
// (n-1) d (docs/design.md section 6). Log-densities are normalised on that subspace:
//     log p0(x) = -1/2 |x|^2 - 1/2 (n-1) d log(2 pi)      for centred x.
// Sample i of a draw with seed s comes from Philox(s, first_stream + i).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eqflow/export.h"

namespace eqflow {

// ---- the prior: standard normal on the mean-free subspace ------------------------------------

// 1/2 (n-1) d log(2 pi): the normalising constant the paper's NLL convention leaves out.
EQFLOW_API double prior_log_normalizer(int n, int d);

// Removes each configuration's particle mean. x: [B][n][d].
EQFLOW_API void remove_mean(int64_t B, int n, int d, double* x);

// x [count][n][d]: row i is n*d standard normals of Philox(seed, first_stream + i) with the
// particle mean removed (the projection of an isotropic Gaussian onto the subspace is the
// standard normal there).
EQFLOW_API void sample_prior(int64_t count, int n, int d, uint64_t seed, uint64_t first_stream,
                             double* x);

// log p0 of centred configurations: -1/2 |x|^2 - prior_log_normalizer(n, d). x: [B][n][d].
EQFLOW_API void prior_log_density(int64_t B, int n, int d, const double* x, double* log_p);

}  // namespace eqflow
