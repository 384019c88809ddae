#include "cli/flow_cli.h"

#include <cstdio>

#include "eqflow/error.h"

namespace eqflow::cli {

CouplingKind parse_objective(const std::string& name) {
    if (name == "fm") return CouplingKind::fm;
    if (name == "ot") return CouplingKind::ot;
    if (name == "eqot") return CouplingKind::eqot;
    throw UsageError{"unknown objective '" + name + "' (choose fm, ot or eqot)"};
}

Device resolve_device(const std::string& device, const char* what, bool reference) {
    if (device != "cpu" && device != "cuda" && device != "auto")
        throw UsageError{"--device must be cpu, cuda or auto, got '" + device + "'"};
    if (reference && device == "cuda")
        throw UsageError{"--reference is the CPU reference field: use it with --device cpu"};
    // "cuda" without a usable GPU: an Error saying why
    const Device dev = reference ? Device::cpu : parse_device(device);
    if (dev == Device::cuda) {
        std::fprintf(stderr, "device: cuda, %s (the %s runs the GPU kernels in float32)\n",
                     cuda_status().c_str(), what);
    } else {
        std::fprintf(stderr, "device: cpu (the %s runs %s%s)\n", what,
                     reference ? "the double-precision CPU reference field"
                               : "the fast float32 CPU field; --reference: the double reference",
                     cuda_compiled() ? "" : "; this build has no CUDA");
    }
    return dev;
}

FlowOptions flow_options_from(Args& args) {
    FlowOptions o;
    o.ode.method = parse_ode_method(args.get("solver", "dopri5"));
    o.ode.atol = args.get_double("atol", o.ode.atol);
    o.ode.rtol = args.get_double("rtol", o.ode.rtol);
    o.ode.steps = static_cast<int>(args.get_int("steps", o.ode.steps));
    o.batch = args.get_int("batch", o.batch);
    const int64_t probes = args.get_int("hutchinson", 0);
    o.hutchinson = probes > 0;
    o.hutchinson_probes = static_cast<int>(probes > 0 ? probes : 1);
    o.threads = static_cast<int>(args.get_int("threads", 0));
    o.reference = args.flag("reference");
    if (!(o.ode.atol > 0) || !(o.ode.rtol >= 0))
        throw UsageError{"--atol must be positive and --rtol non-negative"};
    if (o.ode.steps <= 0 || o.batch <= 0) throw UsageError{"--steps and --batch must be positive"};
    return o;
}

std::string describe(const FlowOptions& o) {
    char buf[160];
    if (o.ode.method == OdeMethod::dopri5)
        std::snprintf(buf, sizeof buf, "dopri5 (atol %.0e, rtol %.0e)", o.ode.atol, o.ode.rtol);
    else
        std::snprintf(buf, sizeof buf, "%s (%d steps)", ode_method_name(o.ode.method), o.ode.steps);
    std::string s = buf;
    if (o.hutchinson)
        s += ", Hutchinson divergence (" + std::to_string(o.hutchinson_probes) +
             " probes): log q and the weights are APPROXIMATE";
    else
        s += ", exact divergence";
    return s;
}

}  // namespace eqflow::cli
