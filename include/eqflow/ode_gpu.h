// eqflow/ode_gpu.h: the flow's ODE integrated on the device, with a CUDA field (eqflow/field.h).
// A plain C++ header: no CUDA types.
//
// Same solvers and semantics as eqflow/ode.h (adaptive Dormand-Prince 5(4) with per-sample step
// sizes, fixed-step RK4 and Euler; forwards and backwards; failures give NaN outputs and are
// counted), used by the sampler of eqflow/flow.h as its integrator (model_integrator), but the
// state never leaves the device while it integrates:
//   - per sample, the augmented state y = [x, I, L] in float64, its stage derivatives, t, h and
//     counters live in device memory; the per-sample arithmetic is src/common/ode_step.h, the very
//     operations of the host solver (results agree with ode_integrate driven by field_ode over the
//     same field up to the last bit of pow() in the step-size controller);
//   - each stage evaluates Field<float>::divergence (float32, exact divergence) on the rows still
//     integrating; the only per-step transfer is the count of those rows, back to the host;
//   - finished samples are COMPACTED out: an index list of the active samples is rebuilt after
//     every step and the field runs on those rows only (gathered into contiguous float32
//     buffers). Masking would still launch one EGNN block per finished sample and need a mask
//     argument in the fused kernels; compaction costs an O(m D) gather per stage, nothing next
//     to the field's exact divergence;
//   - samples go through in chunks of at most `max_chunk` (0: ode_gpu_default_chunk). Each
//     sample's result is independent of its chunk and of the other samples: only OdeStats'
//     function_evals (batched calls) depends on the chunking.
//
// Device memory: ode_gpu_bytes_per_sample(D, method) bytes per sample of a chunk, plus the EGNN
// divergence workspace (4 ceil(n d / 8) bytes per row, plus a fixed slot per resident block of
// the divergence kernel, at most about 0.2 GB on an H200 for LJ55). DOPRI5, S = D + 2:
//     y, ynew, k1..k7          9 S doubles     72 S bytes
//     t, h, steps, accepted, rejected, flags, index          48 bytes
//     field input / output x, v (float32) and t, div          8 D + 8 bytes
// LJ55 (D = 165, S = 167): 13,400 bytes; the default chunk of 65,536 samples needs 0.88 GB
// (+ 5.5 MB divergence partials and the fixed slots): well under 8 GB. RK4 needs 4 stages
// instead of 7 + ynew, Euler one.
//
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "eqflow/export.h"
#include "eqflow/field.h"
#include "eqflow/ode.h"

namespace eqflow {

// Device bytes per sample of a chunk (the integrator's own buffers; see above).
EQFLOW_API size_t ode_gpu_bytes_per_sample(int64_t D, OdeMethod method);

// The default chunk: as many samples as fit in 2 GiB of integrator buffers, at most 65,536
// (enough rows to fill an H200 with divergence work at every system size).
EQFLOW_API int64_t ode_gpu_default_chunk(int64_t D, OdeMethod method);

// ode_integrate (eqflow/ode.h) with a field on the device: x [B][D] (host, D = n d of the
// model) holds x(t0) on entry and x(t1) on return; div_integral, path_length [B] (host,
// nullable); stats (nullable) ACCUMULATES like ode_integrate's. `progress` (nullable) is called
// after each chunk with (rows done, B). The divergence is always computed.
EQFLOW_API void ode_integrate_gpu(Field<float>& gpu, int64_t B, double* x, double t0, double t1,
                                  const OdeOptions& options, double* div_integral,
                                  double* path_length, OdeStats* stats = nullptr,
                                  int64_t max_chunk = 0,
                                  const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace eqflow
