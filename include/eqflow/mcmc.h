// eqflow/mcmc.h: equilibrium data by parallel-tempering Metropolis Monte Carlo (CPU, all cores).
//
// The job runs `chains` independent replica-exchange simulations. Each has `replicas` copies of
// the system on a geometric temperature ladder kT, ..., t_max*kT. A sweep moves every particle
// of every replica once (Gaussian displacement, Metropolis test on the O(n) energy change); after
// every sweep, neighbouring replicas attempt an exchange (alternating even/odd pairs). Step sizes
// are tuned per replica during burn-in towards 40% acceptance and then frozen, so that the
// production run is a proper Markov chain. The kT = 1 replica is recorded every `thin` sweeps.
//
// Randomness: chain c draws from Philox(seed, c), so the output depends on the seed only, not
// on the number of threads. Samples are returned centred, chain after chain.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "eqflow/export.h"
#include "eqflow/systems.h"

namespace eqflow {

struct McmcOptions {
    int64_t samples = 1000;  // total number of configurations returned
    uint64_t seed = 0;
    int chains = 0;          // independent PT simulations; 0: chosen from the sample count
    int replicas = 8;        // temperatures per chain (1: plain Metropolis, no exchange)
    double t_max = 0.0;      // highest temperature / kT; 0: a per-system default
    int64_t burn_in = 2000;  // sweeps before recording
    int64_t thin = 0;        // sweeps between recorded samples; 0: a per-system default, about
                             // the energy's autocorrelation time (dw4 20, LJ up to 20
                             // particles 50, larger LJ 150)
    int threads = 0;         // 0: default_thread_count() (eqflow/parallel.h)
    // Called from the pool's threads (serialised) with (samples done, samples total).
    std::function<void(int64_t, int64_t)> progress;
};

struct McmcStats {
    std::vector<double> temperatures;     // the ladder, in units of kT
    std::vector<double> acceptance;       // production acceptance per rung (mean over chains)
    std::vector<double> step_size;        // tuned step per rung (mean over chains)
    std::vector<double> swap_acceptance;  // per neighbouring pair (mean over chains)
    int chains = 0;
    int threads = 0;  // threads given to the chains: min(options.threads (0: all), chains)
    int64_t thin = 0;
};

// Returns `samples` configurations [samples][n][d], centred. `stats` may be null.
EQFLOW_API std::vector<double> sample_equilibrium(const System& system, const McmcOptions& options,
                                                  McmcStats* stats = nullptr);

}  // namespace eqflow
