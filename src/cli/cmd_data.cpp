// eqflow data: equilibrium samples by parallel-tempering Metropolis (see eqflow/mcmc.h).
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "cli/cli_common.h"
#include "eqflow/error.h"
#include "eqflow/mcmc.h"
#include "eqflow/molecule.h"
#include "eqflow/npy.h"
#include "eqflow/systems.h"

namespace eqflow::cli {

const char* const kDataUsage =
    "usage: eqflow data --system S --samples N --out data.npy [--seed K]\n"
    "                   [--replicas R] [--t-max T] [--burn-in SWEEPS] [--thin SWEEPS]\n"
    "                   [--chains C] [--threads P] [--float32]\n\n"
    "Equilibrium configurations of S (dw4, lj13, lj55, lj:N) at its temperature, by\n"
    "parallel-tempering Metropolis Monte Carlo on P threads (default: OMP_NUM_THREADS, else\n"
    "every CPU this process may run on): C independent chains of R replicas on a geometric\n"
    "ladder up to T x kT, step sizes tuned during burn-in, one sample every THIN sweeps\n"
    "(default about the energy's autocorrelation time, which cuts the correlation of samples:\n"
    "dw4 20, LJ up to 20 particles 50, larger LJ 150).\n"
    "Output: [N, n*d] float64 (or float32), centred.\n"
    "The same seed gives the same file whatever the number of threads.\n\n"
    "aldp (alanine dipeptide) instead runs Langevin MD with OpenMM (needs an eqflow built with\n"
    "OpenMM): 1 fs steps, friction 1/ps, 300 K, --equilibrate PS picoseconds first (default 100),\n"
    "then one frame every --frame-interval PS (default 1); --platform Reference|CPU (default\n"
    "Reference, the faster one for 22 atoms), --threads P for the CPU platform. Output: nm, "
    "centred.\n";

namespace {
int cmd_data_md(const System& system, Args& args) {
    MdOptions opt;
    opt.samples = args.get_int("samples", -1);
    if (opt.samples <= 0) throw UsageError{"--samples needs a positive count"};
    const std::string out = args.require("out");
    opt.seed = static_cast<uint64_t>(args.get_int("seed", 0));
    const double equilibrate_ps = args.get_double("equilibrate", 100.0);
    const double interval_ps = args.get_double("frame-interval", 1.0);
    opt.platform = args.get("platform", "Reference");
    opt.threads = static_cast<int>(args.get_int("threads", 0));
    const bool f32 = args.flag("float32");
    args.finish();
    if (equilibrate_ps < 0 || interval_ps <= 0)
        throw UsageError{"--equilibrate must be >= 0 and --frame-interval > 0"};
    opt.equilibration_steps = static_cast<int64_t>(std::llround(equilibrate_ps / opt.timestep_ps));
    opt.steps_per_frame = std::max<int64_t>(1, std::llround(interval_ps / opt.timestep_ps));
    if (!openmm_available())
        EQFLOW_THROW("data for " << system.name
                                 << " comes from molecular dynamics, which needs OpenMM: this "
                                    "eqflow was built without it (install libopenmm-dev and "
                                    "reconfigure with -DEQFLOW_OPENMM=ON)");

    Progress progress("data " + system.name + " (MD)", opt.samples);
    opt.progress = [&](int64_t done, int64_t) { progress.update(done); };
    MdStats stats;
    std::vector<double> x = openmm_langevin_md(aldp_data_dir() + "/aldp_system.xml",
                                               aldp_structure().positions, opt, &stats);
    char extra[160];
    std::snprintf(extra, sizeof extra, "OpenMM %s platform, <U> %.2f kJ/mol, T_kin %.1f K",
                  stats.platform.c_str(), stats.mean_potential,
                  2.0 * stats.mean_kinetic / (stats.dof * kBoltzmannKJ));
    progress.finish(extra);
    // Centred like every eqflow data set (docs/design.md section 2): the plain mean, not the centre
    // of mass.
    for (int64_t b = 0; b < opt.samples; ++b) {
        double* xb = x.data() + b * system.n * 3;
        for (int a = 0; a < 3; ++a) {
            double mean = 0.0;
            for (int i = 0; i < system.n; ++i) mean += xb[3 * i + a] / system.n;
            for (int i = 0; i < system.n; ++i) xb[3 * i + a] -= mean;
        }
    }
    save_configurations(out, x, opt.samples, system.n, system.d,
                        f32 ? NpyDtype::f32 : NpyDtype::f64);
    std::fprintf(stderr, "data: wrote %lld MD frames of %s to %s\n",
                 static_cast<long long>(opt.samples), system.name.c_str(), out.c_str());
    return 0;
}
}  // namespace

int cmd_data(Args& args) {
    const System system = make_system(args.require("system"));
    if (system.kind == PotentialKind::molecule) return cmd_data_md(system, args);
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
    std::snprintf(
        extra, sizeof extra,
        "acceptance %.2f at kT, swap acceptance %.2f..%.2f, %d chains, threads: %d",
        stats.acceptance.empty() ? 0.0 : stats.acceptance[0],
        stats.swap_acceptance.empty()
            ? 0.0
            : *std::min_element(stats.swap_acceptance.begin(), stats.swap_acceptance.end()),
        stats.swap_acceptance.empty()
            ? 0.0
            : *std::max_element(stats.swap_acceptance.begin(), stats.swap_acceptance.end()),
        stats.chains, stats.threads);
    progress.finish(extra);
    save_configurations(out, x, opt.samples, system.n, system.d,
                        f32 ? NpyDtype::f32 : NpyDtype::f64);
    std::fprintf(stderr, "data: wrote %lld samples of %s to %s\n",
                 static_cast<long long>(opt.samples), system.name.c_str(), out.c_str());
    return 0;
}

}  // namespace eqflow::cli
