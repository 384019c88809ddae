// eqflow field: evaluate a model's vector field (and its exact divergence) on configurations.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/cli_common.h"
#include "eqflow/device.h"
#include "eqflow/egnn.h"
#include "eqflow/error.h"
#include "eqflow/flow.h"
#include "eqflow/flow_model.h"
#include "eqflow/model_io.h"
#include "eqflow/npy.h"

namespace eqflow::cli {

const char* const kFieldUsage =
    "usage: eqflow field --model M --in x.npy --t T --out v.npy [--div-out div.npy]\n"
    "                    [--device cpu|cuda|auto] [--reference]\n\n"
    "Evaluates the vector field v(x, T) of the model file M (safetensors; an EGNN or a kernel-\n"
    "dynamics model, as its metadata says) for every\n"
    "configuration in x.npy (shape [N, n*d] or [N, n, d], float32 or float64; centred on load)\n"
    "at time T: on the CPU with the fast float32 backend (--reference: the double-precision\n"
    "reference), or with the fused GPU kernels in float32 (--device cuda; auto picks the GPU\n"
    "when one is usable).\n\n"
    "  --model M          model file (eqflow train's RUN/model.safetensors or any safetensors\n"
    "                     file with the eqflow.* metadata and the PyTorch state_dict names)\n"
    "  --in x.npy         configurations\n"
    "  --t T              time in [0, 1] (0: prior, 1: data)\n"
    "  --out v.npy        the field, float64, shape [N, n*d]\n"
    "  --div-out div.npy  also the exact divergence div_x v, float64, shape [N] (EGNN: forward\n"
    "                     mode along all n*d directions, about n*d times the cost of v; kernel\n"
    "                     field: closed form, about the cost of v)\n"
    "Both field types have GPU kernels (the kernel-dynamics ones have run on the CPU emulator of\n"
    "the GPU only, never on a GPU yet).\n";

int cmd_field(Args& args) {
    const std::string model_path = args.require("model");
    const std::string in = args.require("in");
    const std::string out = args.require("out");
    const std::string t_text = args.require("t");
    const std::string div_out = args.get("div-out", "");
    const bool reference = args.flag("reference");
    const std::string device_name_arg = args.get("device", "auto");
    args.finish();
    if (reference && device_name_arg == "cuda")
        throw UsageError{"--reference is the CPU reference field: use it with --device cpu"};
    char* end = nullptr;
    const double t = std::strtod(t_text.c_str(), &end);
    if (t_text.empty() || !end || *end != '\0' || !std::isfinite(t)) {
        throw UsageError{"--t needs a finite number, got '" + t_text + "'"};
    }
    if (!div_out.empty() && div_out == out)
        throw UsageError{"--out and --div-out name the same file"};

    const FlowModel model = load_flow_model(model_path);
    // auto: the GPU when one is usable.
    const Device device = reference ? Device::cpu : parse_device(device_name_arg);
    const int n = model.n_particles(), d = model.dim();
    int64_t count = 0;
    const std::vector<double> x = load_configurations(in, n, d, &count, /*center=*/true);
    const int64_t nd = static_cast<int64_t>(n) * d;
    // The field works in model units y = x / s (the model's length_scale): v_x(x) = s v_y(x / s),
    // and the divergence is the same in both units.
    const double scale = model.length_scale();
    std::vector<double> y = x;
    for (double& value : y) value /= scale;
    std::vector<double> v(static_cast<size_t>(count * nd)), div(static_cast<size_t>(count));

    // Chunks keep the progress line moving on long inputs (the divergence of LJ55 takes seconds).
    // One field of the interface on the chosen device.
    FlowOptions fo;
    fo.device = device;
    fo.reference = reference;
    fo.threads = 0;
    const FlowField field = model_flow_field(model, fo);
    // (The kernel field's divergence is closed form, as cheap as v.)
    const bool cheap_div = div_out.empty() || model.kind == FieldKind::kernel;
    const int64_t chunk = device == Device::cuda ? 4096 : cheap_div ? 256 : 8;
    Progress progress(div_out.empty() ? "field" : "field+div", count);
    for (int64_t b0 = 0; b0 < count; b0 += chunk) {
        const int64_t nb = std::min(chunk, count - b0);
        const std::vector<double> tb(static_cast<size_t>(nb), t);
        field(nb, y.data() + b0 * nd, tb.data(), v.data() + b0 * nd,
              div_out.empty() ? nullptr : div.data() + b0);
        progress.update(b0 + nb);
    }
    progress.finish();
    for (double& value : v) value *= scale;
    check_finite_output(v, nd, "the field", /*allow_plus_inf=*/false);
    if (!div_out.empty()) check_finite_output(div, 1, "the divergence", /*allow_plus_inf=*/false);
    save_configurations(out, v, count, n, d);
    if (!div_out.empty()) write_npy(div_out, div.data(), Shape{count});
    std::fprintf(
        stderr,
        "field: %lld configurations of %s (n = %d, d = %d) at t = %g, %s field on %s -> %s%s%s\n",
        static_cast<long long>(count), model.system().empty() ? "?" : model.system().c_str(), n, d,
        t, field_kind_name(model.kind), device_name(device), out.c_str(),
        div_out.empty() ? "" : ", ", div_out.c_str());
    return 0;
}

}  // namespace eqflow::cli
