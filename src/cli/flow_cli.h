// src/cli/flow_cli.h: helpers shared by the flow commands (train, sample, eval, demo).
#pragma once

#include <string>

#include "cli/cli_common.h"
#include "eqflow/coupling.h"
#include "eqflow/device.h"
#include "eqflow/flow.h"
#include "eqflow/flow_model.h"

namespace eqflow::cli {

// "fm", "ot" or "eqot"; anything else is a UsageError.
CouplingKind parse_objective(const std::string& name);

// --device for the flow commands: cpu, cuda or auto (the GPU when one is usable). Says on stderr
// which one runs `what`; "cuda" without a usable GPU is an Error that says why; anything else is
// a UsageError. `reference` (--reference: the double-precision CPU reference field instead of
// the fast float32 one) makes auto the CPU and is a UsageError with cuda. Both field types (the
// EGNN and the kernel dynamics) have a CUDA backend.
Device resolve_device(const std::string& device, const char* what, bool reference = false);

// The integration options shared by sample / eval: --solver, --atol, --rtol, --steps, --batch,
// --hutchinson PROBES, --threads, --reference.
FlowOptions flow_options_from(Args& args);

// One line describing the solver, e.g. "dopri5 (atol 1e-04, rtol 1e-04), exact divergence".
std::string describe(const FlowOptions& options);

}  // namespace eqflow::cli
