// eqflow sample: samples of a trained flow with their exact log-density and importance weights.
#include <cmath>
#include <cstdio>

#include "cli/cli_common.h"
#include "cli/flow_cli.h"
#include "eqflow/error.h"
#include "eqflow/io.h"
#include "eqflow/json.h"
#include "eqflow/model_io.h"
#include "eqflow/molecule_io.h"
#include "eqflow/npy.h"
#include "eqflow/systems.h"

namespace eqflow::cli {

const char* const kSampleUsage =
    "usage: eqflow sample --model RUN/model.safetensors --samples N --out-dir DIR\n"
    "                     [--seed K] [--system S] [--solver dopri5|rk4|euler] [--atol A]\n"
    "                     [--rtol R] [--steps STEPS] [--batch B] [--hutchinson PROBES]\n"
    "                     [--threads P] [--device cpu|cuda] [--format npy|pdb|dcd]\n"
    "                     [--reference]\n\n"
    "Draws N samples from the flow (prior -> t = 1) with the exact log-density (the divergence\n"
    "by forward-mode tangents; --hutchinson makes it an estimate, and the output says so),\n"
    "reweights them to the Boltzmann distribution of the model's system (or --system S) and\n"
    "writes DIR/x.npy [N, n*d], DIR/log_q.npy (normalised on the mean-free subspace),\n"
    "DIR/u.npy (reduced energies), DIR/log_w.npy (-u - log q; -inf = zero weight for\n"
    "non-finite energies or failed integrations), DIR/path_length.npy and DIR/summary.json\n"
    "(ESS as a fraction of N, mean energies, counts). For aldp, samples of the wrong handedness\n"
    "(D-alanine) are mirrored and log q is the folded density (+ log 2); summary.json counts\n"
    "them. Positions are in the system's units. Defaults: dopri5, atol = rtol = 1e-4,\n"
    "--batch 256, --threads 0 (all cores). On the CPU the field is the fast float32 backend;\n"
    "--reference uses the double-precision reference field (slower).\n"
    "--format pdb|dcd (molecules, aldp): also DIR/samples.pdb (one MODEL per sample) or\n"
    "DIR/samples.dcd with DIR/topology.pdb, in Angstrom, topology from the system's PDB, for\n"
    "mdtraj, MDAnalysis or VMD; failed integrations are left out of the trajectory.\n";

int cmd_sample(Args& args) {
    const std::string model_path = args.require("model");
    const int64_t n_samples = args.get_int("samples", -1);
    if (n_samples <= 0) throw UsageError{"--samples needs a positive count"};
    const std::string out_dir = args.require("out-dir");
    const uint64_t seed = static_cast<uint64_t>(args.get_int("seed", 0));
    const std::string system_name = args.get("system", "");
    FlowOptions fo = flow_options_from(args);
    const std::string device = args.get("device", "auto");
    const std::string format = args.get("format", "npy");
    args.finish();
    if (format != "npy" && format != "pdb" && format != "dcd")
        throw UsageError{"--format must be npy, pdb or dcd, got '" + format + "'"};
    // The model first: its field type decides which devices can run it.
    const FlowModel model = load_flow_model(model_path);
    fo.device = resolve_device(device, "sampler", fo.reference);
    const System system = make_system(system_name.empty() ? model.system() : system_name);
    EQFLOW_CHECK(system.n == model.n_particles() && system.d == model.dim(),
                 "the model has " << model.n_particles() << " particles in " << model.dim()
                                  << " dimensions; " << system.name << " has " << system.n << " in "
                                  << system.d);
    // A trajectory needs a topology: the system's PDB structure (molecules only).
    PdbStructure topology;
    if (format != "npy") {
        EQFLOW_CHECK(system.name == "aldp",
                     "--format " << format << " needs a molecular system with a topology (aldp); "
                                 << system.name << " has none");
        topology = aldp_structure();
    }
    std::fprintf(stderr, "sample: %lld samples of %s, %s\n", static_cast<long long>(n_samples),
                 system.name.c_str(), describe(fo).c_str());
    Progress progress("sample", n_samples);
    fo.progress = [&](int64_t done, int64_t) { progress.update(done); };
    FlowSamples s = sample_model(model, n_samples, seed, fo);
    const int64_t mirrored = fold_chirality(system, s);
    const std::vector<double> u = reduced_energies(system, s.x.data(), s.count);
    const Reweighting w = importance_weights(u.data(), s.log_q.data(), s.count);
    char extra[128];
    std::snprintf(extra, sizeof extra, "ESS %.4f, %lld zero-weight samples", w.ess,
                  static_cast<long long>(w.invalid));
    progress.finish(extra);

    // A failed integration is a documented NaN row with zero weight (counted in summary.json);
    // every other output must be finite, or +inf for an energy, -inf for a log weight.
    std::vector<char> failed(static_cast<size_t>(s.count), 0);
    int64_t n_failed = 0;
    for (int64_t i = 0; i < s.count; ++i) {
        failed[static_cast<size_t>(i)] = !std::isfinite(s.log_q[static_cast<size_t>(i)]);
        n_failed += failed[static_cast<size_t>(i)];
    }
    EQFLOW_CHECK(n_failed < s.count, "every one of the " << s.count
                                                         << " integrations failed (the field is "
                                                            "not finite): nothing written");
    check_finite_output(s.x, static_cast<int64_t>(system.n) * system.d, "the sample", false,
                        &failed);
    check_finite_output(u, 1, "the energy", /*allow_plus_inf=*/true, &failed);
    make_directories(out_dir);
    const int64_t D = static_cast<int64_t>(system.n) * system.d;
    write_npy(out_dir + "/x.npy", s.x.data(), Shape{s.count, D});
    write_npy(out_dir + "/log_q.npy", s.log_q.data(), Shape{s.count});
    write_npy(out_dir + "/u.npy", u.data(), Shape{s.count});
    write_npy(out_dir + "/log_w.npy", w.log_w.data(), Shape{s.count});
    write_npy(out_dir + "/path_length.npy", s.path_length.data(), Shape{s.count});
    Json j = Json::object();
    j["model"] = model_path;
    j["system"] = system.name;
    j["n_samples"] = s.count;
    j["seed"] = static_cast<int64_t>(seed);
    j["solver"] = describe(fo);
    j["approximate"] = fo.hutchinson;
    j["ess"] = w.ess;
    j["zero_weight_samples"] = w.invalid;
    j["failed_integrations"] = s.failed;
    j["energy_mean_samples"] = w.energy_mean;
    j["energy_mean_reweighted"] = w.energy_mean_reweighted;
    double pl = 0;
    int64_t np = 0;
    for (double l : s.path_length)
        if (l == l) {
            pl += l;
            ++np;
        }
    j["path_length"] = np > 0 ? pl / static_cast<double>(np) : 0.0;
    j["function_evals"] = s.ode.row_evals;
    j["length_scale"] = model.length_scale();
    if (folds_chirality(system)) {
        j["chirality_folded"] = true;
        j["mirrored_samples"] = mirrored;
        j["mirrored_fraction"] = static_cast<double>(mirrored) / static_cast<double>(s.count);
    }
    write_file_atomic(out_dir + "/summary.json", j.dump(2) + "\n");
    if (format != "npy") {
        std::vector<double> frames;
        for (int64_t i = 0; i < s.count; ++i)
            if (!failed[static_cast<size_t>(i)])
                frames.insert(frames.end(), s.x.begin() + i * D, s.x.begin() + (i + 1) * D);
        const int64_t kept = static_cast<int64_t>(frames.size()) / D;
        if (format == "pdb") {
            write_pdb_trajectory(out_dir + "/samples.pdb", topology, frames.data(), kept);
        } else {
            write_dcd(out_dir + "/samples.dcd", frames.data(), kept, system.n,
                      "eqflow samples of " + system.name);
            write_pdb_trajectory(out_dir + "/topology.pdb", topology, frames.data(), 1);
        }
        std::printf("trajectory: %lld samples in %s/samples.%s\n", static_cast<long long>(kept),
                    out_dir.c_str(), format.c_str());
    }
    std::printf(
        "ESS %.4f (%lld of %lld samples with zero weight)%s; wrote "
        "%s/{x,log_q,u,log_w,path_length}.npy and summary.json\n",
        w.ess, static_cast<long long>(w.invalid), static_cast<long long>(s.count),
        fo.hutchinson ? " [APPROXIMATE: Hutchinson divergence]" : "", out_dir.c_str());
    return 0;
}

}  // namespace eqflow::cli
