// eqflow eval: NLL on test data, ESS, path length and energy histograms of a trained flow.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "cli/cli_common.h"
#include "cli/flow_cli.h"
#include "eqflow/figures.h"
#include "eqflow/io.h"
#include "eqflow/json.h"
#include "eqflow/model_io.h"
#include "eqflow/molecule.h"
#include "eqflow/npy.h"
#include "eqflow/systems.h"

namespace eqflow::cli {

const char* const kEvalUsage =
    "usage: eqflow eval --model RUN/model.safetensors --test test.npy --out metrics.json\n"
    "                   [--samples N] [--test-max M] [--seed K] [--system S] [--figure F.svg]\n"
    "                   [--solver dopri5|rk4|euler] [--atol A] [--rtol R] [--steps STEPS]\n"
    "                   [--batch B] [--hutchinson PROBES] [--threads P] [--device cpu|cuda]\n"
    "                   [--ramachandran F.svg] [--reference]\n\n"
    "Evaluates a flow as a Boltzmann generator (docs/design.md section 6): the NLL of the test\n"
    "configurations (integrated backwards to the prior; `nll` in the paper's convention without\n"
    "1/2 (n-1) d log 2pi, `nll_normalized` with it), and from N model samples (default 1000):\n"
    "the ESS of the importance weights (fraction of N), the path length int |v| dt, and mean\n"
    "energies of samples, reweighted samples and test data, with standard errors of the first\n"
    "three (NLL: sd / sqrt(M), for independent test points; ESS: delta method, approximate);\n"
    "and the NLL split into the target's entropy on the test points and KL(p || q), through\n"
    "the samples' estimate of log Z: for a model with a fair ESS the KL's error bar is far\n"
    "smaller than the NLL's, whose spread is mostly the test set's (metrics.h says how both\n"
    "are estimated and what biases them). Writes the metrics JSON and an SVG figure of the three\n"
    "energy histograms (default: next to the JSON, *_energy.svg).\n"
    "--test-max M uses the first M test configurations only. Defaults: dopri5, atol = rtol =\n"
    "1e-4. --reference: the double-precision CPU reference field instead of the fast float32\n"
    "one.\n\n"
    "aldp: samples of D-alanine are mirrored (their fraction is reported) and the NLL and the\n"
    "weights use the folded density log q + log 2. The JSON gains an `aldp` object: the free\n"
    "energy difference F(phi > 0) - F(phi < 0) in kT of ALL the test data (MD, also beyond\n"
    "--test-max; error from 10 contiguous blocks), of the reweighted and of the raw samples\n"
    "(error from 10 blocks), and a\n"
    "Ramachandran figure of test data, samples and reweighted samples (--ramachandran F.svg,\n"
    "default *_ramachandran.svg).\n";

namespace {

// phi/psi of [N][22][3] configurations, leaving out rows with NaN positions (failed samples).
void phi_psi(const double* x, int64_t N, const double* log_w, RamachandranPanel& panel) {
    const int64_t D = kAldpAtoms * 3;
    for (int64_t i = 0; i < N; ++i) {
        const double* xi = x + i * D;
        if (!std::isfinite(xi[0])) continue;
        if (log_w && !std::isfinite(log_w[i])) continue;  // zero weight
        double phi = 0.0, psi = 0.0;
        aldp_phi_psi(xi, 1, &phi, &psi);
        panel.phi.push_back(phi);
        panel.psi.push_back(psi);
        if (log_w) panel.log_w.push_back(log_w[i]);
    }
}

Json free_energy_json(const FreeEnergyDifference& f) {
    Json j = Json::object();
    j["delta_f"] = f.delta_f;
    j["error"] = f.error;
    j["n_phi_positive"] = f.n_pos;
    j["n_phi_negative"] = f.n_neg;
    return j;
}

// Kish effective sample count (sum w)^2 / sum w^2 of the weighted samples with phi > 0
// (positive) or phi <= 0, weights relative to the largest of all (0 when the region is empty).
double region_ess(const RamachandranPanel& p, bool positive) {
    double max_lw = -std::numeric_limits<double>::infinity();
    for (double lw : p.log_w) max_lw = std::max(max_lw, lw);
    double sw = 0.0, sw2 = 0.0;
    for (size_t i = 0; i < p.phi.size(); ++i) {
        if ((p.phi[i] > 0) != positive) continue;
        const double w = std::exp(p.log_w[i] - max_lw);
        sw += w;
        sw2 += w * w;
    }
    return sw2 > 0 ? sw * sw / sw2 : 0.0;
}

// The alanine dipeptide analysis of docs/design.md section 9 (figure + free-energy differences).
Json aldp_analysis(const double* test_x, int64_t n_test, const FlowSamples& s, const Reweighting& w,
                   const std::string& figure) {
    RamachandranPanel data{"test data (MD)", {}, {}, {}}, raw{"flow samples", {}, {}, {}},
        rew{"reweighted samples", {}, {}, {}};
    phi_psi(test_x, n_test, nullptr, data);
    phi_psi(s.x.data(), s.count, nullptr, raw);
    phi_psi(s.x.data(), s.count, w.log_w.data(), rew);
    Json j = Json::object();
    const int64_t nd = static_cast<int64_t>(data.phi.size());
    const int64_t nr = static_cast<int64_t>(raw.phi.size());
    const int64_t nw = static_cast<int64_t>(rew.phi.size());
    // An empty set (no test data, every sample failed) gives NaN rather than an error.
    auto delta_f = [](const RamachandranPanel& p, int64_t count) {
        if (count == 0) {
            FreeEnergyDifference none;
            none.delta_f = none.error = std::nan("");
            return none;
        }
        return phi_free_energy_difference(p.phi.data(), p.log_w.empty() ? nullptr : p.log_w.data(),
                                          count);
    };
    const FreeEnergyDifference f_md = delta_f(data, nd), f_raw = delta_f(raw, nr),
                               f_rew = delta_f(rew, nw);
    j["delta_f_md"] = free_energy_json(f_md);
    j["delta_f_samples"] = free_energy_json(f_raw);
    j["delta_f_reweighted"] = free_energy_json(f_rew);
    // The block error of a reweighted estimate is only meaningful with several effective
    // samples on each side; report how many there are (Kish: (sum w)^2 / sum w^2 per region).
    const double ess_pos = region_ess(rew, true), ess_neg = region_ess(rew, false);
    j["delta_f_reweighted"]["effective_samples_phi_positive"] = ess_pos;
    j["delta_f_reweighted"]["effective_samples_phi_negative"] = ess_neg;
    j["delta_f_definition"] = "F(phi > 0) - F(phi < 0) in kT; error: one standard error, 10 blocks";
    write_ramachandran_svg(figure, {data, raw, rew});
    j["figure_ramachandran"] = figure;
    std::printf(
        "aldp: dF(phi>0 - phi<0) = %.3f +- %.3g kT (MD), %.3f +- %.3g (reweighted; effective "
        "samples %.1f at phi>0, %.1f at phi<0), %.3f +- %.3g (raw samples)\n",
        f_md.delta_f, f_md.error, f_rew.delta_f, f_rew.error, ess_pos, ess_neg, f_raw.delta_f,
        f_raw.error);
    return j;
}

std::string figure_path(const std::string& out, const std::string& suffix) {
    const std::string stem = out.size() > 5 && out.compare(out.size() - 5, 5, ".json") == 0
                                 ? out.substr(0, out.size() - 5)
                                 : out;
    return stem + suffix;
}

}  // namespace

int cmd_eval(Args& args) {
    const std::string model_path = args.require("model");
    const std::string test_path = args.require("test");
    const std::string out = args.require("out");
    const int64_t n_samples = args.get_int("samples", 1000);
    const int64_t test_max = args.get_int("test-max", 0);
    const uint64_t seed = static_cast<uint64_t>(args.get_int("seed", 0));
    const std::string system_name = args.get("system", "");
    std::string figure = args.get("figure", "");
    std::string rama_figure = args.get("ramachandran", "");
    FlowOptions fo = flow_options_from(args);
    const std::string device = args.get("device", "auto");
    args.finish();
    if (n_samples <= 0) throw UsageError{"--samples needs a positive count"};
    if (test_max < 0) throw UsageError{"--test-max must be non-negative"};
    // The model first: its field type decides which devices can run it.
    const FlowModel model = load_flow_model(model_path);
    fo.device = resolve_device(device, "evaluation", fo.reference);
    if (figure.empty()) figure = figure_path(out, "_energy.svg");
    if (rama_figure.empty()) rama_figure = figure_path(out, "_ramachandran.svg");
    // Create the output directories now, not after an hour of sampling.
    for (const std::string& path : {out, figure, rama_figure}) {
        const size_t slash = path.find_last_of('/');
        if (slash != std::string::npos && slash > 0) make_directories(path.substr(0, slash));
    }

    const System system = make_system(system_name.empty() ? model.system() : system_name);
    int64_t n_test = 0;
    const std::vector<double> test =
        load_configurations(test_path, system.n, system.d, &n_test, true);
    const int64_t n_test_all = n_test;  // the MD reference of the aldp analysis uses them all
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
    FlowSamples samples;
    Reweighting weights;
    FlowMetrics m =
        evaluate_flow(model, system, test.data(), n_test, n_samples, seed, fo, &samples, &weights);
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
    if (system.name == "aldp")
        j["aldp"] = aldp_analysis(test.data(), n_test_all, samples, weights, rama_figure);
    write_file_atomic(out, j.dump(2) + "\n");
    std::printf(
        "NLL %.4f +- %.4f (normalised %.4f)  ESS %.4f +- %.4f  path length %.4f +- %.4f%s\n", m.nll,
        m.nll_stderr, m.nll_normalized, m.ess, m.ess_stderr, m.path_length, m.path_length_stderr,
        m.approximate ? "  [APPROXIMATE: Hutchinson divergence]" : "");
    const double effective = m.ess * static_cast<double>(m.n_samples);
    std::printf(
        "KL(p||q) on the test points %.4f +- %.4f  (the target's entropy there %.4f in the "
        "NLL's convention; log Z %.4f from %.0f effective samples%s)\n",
        m.kl_test, m.kl_test_stderr, m.entropy_test, m.log_z, effective,
        effective < 100.0 ? ": too few, KL and log Z unreliable" : "");
    if (m.chirality_folded)
        std::printf("mirrored %lld of %lld samples to L-alanine (%.1f%%)\n",
                    static_cast<long long>(m.mirrored_samples), static_cast<long long>(m.n_samples),
                    100.0 * static_cast<double>(m.mirrored_samples) /
                        static_cast<double>(std::max<int64_t>(1, m.n_samples)));
    std::printf("metrics: %s\nfigure:  %s\n", out.c_str(), figure.c_str());
    return 0;
}

}  // namespace eqflow::cli
