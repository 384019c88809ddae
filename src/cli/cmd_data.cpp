// eqflow data: equilibrium samples by parallel-tempering Metropolis (see eqflow/mcmc.h).
#include <algorithm>
#include <cstdio>

#include "cli/cli_common.h"
#include "eqflow/mcmc.h"
#include "eqflow/npy.h"
#include "eqflow/systems.h"

namespace eqflow::cli {

const char* const kDataUsage =
    "usage: eqflow data --system S --samples N --out data.npy [--seed K]\n"
    "                   [--replicas R] [--t-max T] [--burn-in SWEEPS] [--thin SWEEPS]\n"
    "                   [--chains C] [--threads P] [--float32]\n\n"
    "Equilibrium configurations of S (dw4, lj13, lj55, lj:N) at its temperature, by\n"
    "parallel-tempering Metropolis Monte Carlo on all cores: C independent chains of R\n"
    "replicas on a geometric ladder up to T x kT, step sizes tuned during burn-in, one\n"
    "sample every THIN sweeps. Output: [N, n*d] float64 (or float32), centred.\n"
    "The same seed gives the same file whatever the number of threads.\n";

int cmd_data(Args& args) {
    const System system = make_system(args.require("system"));
    McmcOptions opt;
    opt.samples = args.get_int("samples", -1);
    if (opt.samples <= 0) throw UsageError{"--samples needs a positive count"};
    const std::string out = args.require("out");
    opt.seed = static_cast<uint64_t>(args.get_int("seed", 0));
    opt.replicas = static_cast<int>(args.get_int("replicas", opt.replicas));
    opt.t_max = args.get_double("t-max", 0.0);
    opt.burn_in = args.get_int("burn-in", opt.burn_in);
    opt.thin = args.get_int("thin", 0);
    opt.chains = static_cast<int>(args.get_int("chains", 0));
    opt.threads = static_cast<int>(args.get_int("threads", 0));
    const bool f32 = args.flag("float32");
    args.finish();

    Progress progress("data " + system.name, opt.samples);
    opt.progress = [&](int64_t done, int64_t) { progress.update(done); };
    McmcStats stats;
    const std::vector<double> x = sample_equilibrium(system, opt, &stats);
    char extra[160];
    std::snprintf(extra, sizeof extra, "acceptance %.2f at kT, swap acceptance %.2f..%.2f, %d chains",
                  stats.acceptance.empty() ? 0.0 : stats.acceptance[0],
                  stats.swap_acceptance.empty() ? 0.0 : *std::min_element(stats.swap_acceptance.begin(), stats.swap_acceptance.end()),
                  stats.swap_acceptance.empty() ? 0.0 : *std::max_element(stats.swap_acceptance.begin(), stats.swap_acceptance.end()),
                  stats.chains);
    progress.finish(extra);
    save_configurations(out, x, opt.samples, system.n, system.d, f32 ? NpyDtype::f32 : NpyDtype::f64);
    std::fprintf(stderr, "data: wrote %lld samples of %s to %s\n", static_cast<long long>(opt.samples),
                 system.name.c_str(), out.c_str());
    return 0;
}

}  // namespace eqflow::cli
