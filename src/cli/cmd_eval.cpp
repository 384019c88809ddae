// eqflow eval: NLL on test data, ESS, path length and energy histograms of a trained flow.
#include <cstdio>

#include "cli/cli_common.h"
#include "cli/flow_cli.h"
#include "eqflow/io.h"
#include "eqflow/json.h"
#include "eqflow/model_io.h"
#include "eqflow/npy.h"
#include "eqflow/systems.h"

namespace eqflow::cli {

const char* const kEvalUsage =
    "usage: eqflow eval --model RUN/model.safetensors --test test.npy --out metrics.json\n"
    "                   [--samples N] [--test-max M] [--seed K] [--system S] [--figure F.svg]\n"
    "                   [--solver dopri5|rk4|euler] [--atol A] [--rtol R] [--steps STEPS]\n"
    "                   [--batch B] [--hutchinson PROBES] [--threads P] [--device cpu|cuda]\n\n"
    "Evaluates a flow as a Boltzmann generator (DESIGN.md section 6): the NLL of the test\n"
    "configurations (integrated backwards to the prior; `nll` in the paper's convention without\n"
    "1/2 (n-1) d log 2pi, `nll_normalized` with it), and from N model samples (default 1000):\n"
    "the ESS of the importance weights (fraction of N), the path length int |v| dt, and mean\n"
    "energies of samples, reweighted samples and test data. Writes the metrics JSON and an SVG\n"
    "figure of the three energy histograms (default: next to the JSON, *_energy.svg).\n"
    "--test-max M uses the first M test configurations only. Defaults: dopri5, atol = rtol = "
    "1e-4.\n";

int cmd_eval(Args& args) {
    const std::string model_path = args.require("model");
    const std::string test_path = args.require("test");
    const std::string out = args.require("out");
    const int64_t n_samples = args.get_int("samples", 1000);
    const int64_t test_max = args.get_int("test-max", 0);
    const uint64_t seed = static_cast<uint64_t>(args.get_int("seed", 0));
    const std::string system_name = args.get("system", "");
    std::string figure = args.get("figure", "");
    FlowOptions fo = flow_options_from(args);
    const std::string device = args.get("device", "auto");
    args.finish();
    if (n_samples <= 0) throw UsageError{"--samples needs a positive count"};
    if (test_max < 0) throw UsageError{"--test-max must be non-negative"};
    fo.device = resolve_device(device, "evaluation");
    if (fo.hutchinson) fo.device = Device::cpu;
    if (figure.empty()) {
        const std::string stem = out.size() > 5 && out.compare(out.size() - 5, 5, ".json") == 0
                                     ? out.substr(0, out.size() - 5)
                                     : out;
        figure = stem + "_energy.svg";
    }

    const EgnnModel model = load_model(model_path);
    const System system = make_system(system_name.empty() ? model.config.system : system_name);
    int64_t n_test = 0;
    const std::vector<double> test =
        load_configurations(test_path, system.n, system.d, &n_test, true);
    if (test_max > 0 && test_max < n_test) n_test = test_max;
    std::fprintf(stderr, "eval: %s on %lld test configurations and %lld samples, %s\n",
                 system.name.c_str(), static_cast<long long>(n_test),
                 static_cast<long long>(n_samples), describe(fo).c_str());
    Progress sp("eval: sampling", n_samples), tp("eval: test NLL", n_test);
    bool sampling = true;
    fo.progress = [&](int64_t done, int64_t total) {
        if (sampling)
            sp.update(done);
        else
            tp.update(done);
        if (sampling && done == total) {
            sp.finish();
            sampling = false;
        }
    };
    FlowMetrics m = evaluate_flow(model, system, test.data(), n_test, n_samples, seed, fo);
    if (n_test > 0) tp.finish();
    write_energy_histogram_svg(
        figure, m.histogram,
        system.name + ": energies of test data, flow samples and reweighted samples");
    Json j = m.to_json();
    j["figure_energy_histogram"] = figure;
    j["model"] = model_path;
    j["test"] = test_path;
    j["system"] = system.name;
    j["solver"] = describe(fo);
    j["seed"] = static_cast<int64_t>(seed);
    write_file_atomic(out, j.dump(2) + "\n");
    std::printf("NLL %.4f (normalised %.4f)  ESS %.4f  path length %.4f%s\n", m.nll,
                m.nll_normalized, m.ess, m.path_length,
                m.approximate ? "  [APPROXIMATE: Hutchinson divergence]" : "");
    std::printf("metrics: %s\nfigure:  %s\n", out.c_str(), figure.c_str());
    return 0;
}

}  // namespace eqflow::cli
