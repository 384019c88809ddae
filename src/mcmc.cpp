#include "eqflow/mcmc.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>

#include "cpu/systems_cpu.h"
#include "eqflow/error.h"
#include "eqflow/parallel.h"
#include "eqflow/philox.h"

namespace eqflow {

namespace {

constexpr double kTargetAcceptance = 0.4;
constexpr int64_t kTuneInterval = 50;  // sweeps between step-size updates during burn-in

struct Replica {
    std::vector<double> x;  // [n][d]
    double energy = 0.0;    // E (not reduced)
    double beta = 1.0;      // 1 / (temperature), temperature in energy units
    double step = 0.1;
    int64_t tried = 0, accepted = 0;
};

struct ChainResult {
    std::vector<double> samples;
    std::vector<double> acceptance, step, swap;
};

double default_t_max(const System& s) {
    // DW4's barriers are ~4.4 kT per pair: up to 4 kT crosses them easily. LJ clusters are
    // well mixed at ~2.5 kT (liquid-like, held together by the harmonic term).
    return s.kind == PotentialKind::double_well ? 4.0 : 2.5;
}

// About the integrated autocorrelation time of the energy at kT, in sweeps, so that recorded
// samples are far less correlated. Measured on the default ladders (2026-12-03): DW4 ~1 recorded
// sample at 20 sweeps; LJ13 ~45 sweeps (4.6 recorded samples at a thinning of 10, 1.6 at 40);
// LJ55 ~130 sweeps. With a thinning of 10, the mean energy of a 2000-sample LJ13 set scattered
// by 0.43 from seed to seed (6 seeds); with 50 by 0.22, against 0.15 for independent samples
// (so still ~900 independent samples' worth, not 2000).
int64_t default_thin(const System& s) {
    if (s.kind == PotentialKind::double_well) return 20;
    return s.n <= 20 ? 50 : 150;
}

// A start without overlaps: particles on a jittered cubic/square lattice of spacing ~r0.
void initial_configuration(const System& s, Philox& rng, double* x) {
    const double spacing = s.kind == PotentialKind::double_well ? 3.0 : 1.1;
    const int side = static_cast<int>(std::ceil(std::pow(static_cast<double>(s.n), 1.0 / s.d)));
    for (int i = 0; i < s.n; ++i) {
        int rem = i;
        for (int a = 0; a < s.d; ++a) {
            x[i * s.d + a] = spacing * (rem % side) + 0.05 * rng.normal();
            rem /= side;
        }
    }
    for (int a = 0; a < s.d; ++a) {
        double mean = 0.0;
        for (int i = 0; i < s.n; ++i) mean += x[i * s.d + a] / s.n;
        for (int i = 0; i < s.n; ++i) x[i * s.d + a] -= mean;
    }
}

void sweep(const System& s, Replica& rep, Philox& rng, std::vector<double>& trial) {
    const int n = s.n, d = s.d;
    for (int k = 0; k < n; ++k) {
        for (int a = 0; a < d; ++a) trial[a] = rep.x[k * d + a] + rep.step * rng.normal();
        const double delta = cpu::energy_delta_move(s, rep.x.data(), k, trial.data());
        ++rep.tried;
        const double log_acc = -rep.beta * delta;
        if (std::isfinite(delta) && (log_acc >= 0.0 || std::log(rng.uniform()) < log_acc)) {
            for (int a = 0; a < d; ++a) rep.x[k * d + a] = trial[a];
            rep.energy += delta;
            ++rep.accepted;
        }
    }
}

void center(const System& s, std::vector<double>& x) {
    for (int a = 0; a < s.d; ++a) {
        double mean = 0.0;
        for (int i = 0; i < s.n; ++i) mean += x[i * s.d + a];
        mean /= s.n;
        for (int i = 0; i < s.n; ++i) x[i * s.d + a] -= mean;
    }
}

ChainResult run_chain(const System& s, const McmcOptions& opt, const std::vector<double>& temps,
                      int chain, int64_t count, int64_t thin,
                      const std::function<void(int64_t)>& on_sample) {
    const int R = static_cast<int>(temps.size());
    Philox rng(opt.seed, static_cast<uint64_t>(chain));
    std::vector<Replica> reps(static_cast<size_t>(R));
    std::vector<double> trial(static_cast<size_t>(s.d));
    for (int r = 0; r < R; ++r) {
        reps[r].x.resize(static_cast<size_t>(s.n * s.d));
        initial_configuration(s, rng, reps[r].x.data());
        reps[r].energy = cpu::energy_one(s, reps[r].x.data(), nullptr, nullptr);
        reps[r].beta = 1.0 / (temps[r] * s.kT);
        reps[r].step = (s.kind == PotentialKind::double_well ? 0.5 : 0.1) * std::sqrt(temps[r]);
    }
    std::vector<int64_t> swap_tried(static_cast<size_t>(std::max(R - 1, 0)), 0),
        swap_acc(swap_tried);
    ChainResult out;
    out.samples.reserve(static_cast<size_t>(count * s.n * s.d));

    auto exchange = [&](int64_t sweep_index) {
        for (int r = static_cast<int>(sweep_index % 2); r + 1 < R; r += 2) {
            // Swap configurations of rungs r and r+1: accept with min(1, exp((b_r - b_r1)(E_r -
            // E_r1))).
            Replica& lo = reps[r];
            Replica& hi = reps[r + 1];
            const double log_acc = (lo.beta - hi.beta) * (lo.energy - hi.energy);
            ++swap_tried[r];
            if (log_acc >= 0.0 || std::log(rng.uniform()) < log_acc) {
                std::swap(lo.x, hi.x);
                std::swap(lo.energy, hi.energy);
                ++swap_acc[r];
            }
        }
    };

    // Burn-in with step-size tuning.
    for (int64_t t = 0; t < opt.burn_in; ++t) {
        for (auto& rep : reps) sweep(s, rep, rng, trial);
        exchange(t);
        if ((t + 1) % kTuneInterval == 0) {
            for (auto& rep : reps) {
                const double acc =
                    rep.tried ? static_cast<double>(rep.accepted) / rep.tried : kTargetAcceptance;
                rep.step *= std::exp(std::clamp(acc - kTargetAcceptance, -0.5, 0.5));
                rep.tried = rep.accepted = 0;
            }
        }
    }
    for (auto& rep : reps) {
        rep.tried = rep.accepted = 0;
        // Re-evaluate the energy to drop any drift from accumulated deltas.
        rep.energy = cpu::energy_one(s, rep.x.data(), nullptr, nullptr);
    }
    std::fill(swap_tried.begin(), swap_tried.end(), 0);
    std::fill(swap_acc.begin(), swap_acc.end(), 0);

    // Production.
    int64_t t = opt.burn_in;
    for (int64_t k = 0; k < count; ++k) {
        for (int64_t j = 0; j < thin; ++j, ++t) {
            for (auto& rep : reps) sweep(s, rep, rng, trial);
            exchange(t);
        }
        std::vector<double> x = reps[0].x;
        center(s, x);
        out.samples.insert(out.samples.end(), x.begin(), x.end());
        reps[0].energy = cpu::energy_one(s, reps[0].x.data(), nullptr, nullptr);
        on_sample(1);
    }
    for (auto& rep : reps) {
        out.acceptance.push_back(rep.tried ? static_cast<double>(rep.accepted) / rep.tried : 0.0);
        out.step.push_back(rep.step);
    }
    for (size_t r = 0; r < swap_tried.size(); ++r)
        out.swap.push_back(swap_tried[r] ? static_cast<double>(swap_acc[r]) / swap_tried[r] : 0.0);
    return out;
}

}  // namespace

std::vector<double> sample_equilibrium(const System& s, const McmcOptions& opt, McmcStats* stats) {
    EQFLOW_CHECK(s.n >= 2 && s.d >= 1, "sampling: system " << s.name << " has no particles");
    EQFLOW_CHECK(s.kind == PotentialKind::double_well || s.kind == PotentialKind::lennard_jones,
                 "sampling: Metropolis sampling supports the pair-potential systems only, not "
                     << s.name << " (molecules use MD)");
    EQFLOW_CHECK(opt.samples >= 0, "sampling: negative sample count " << opt.samples);
    EQFLOW_CHECK(opt.replicas >= 1 && opt.replicas <= 64,
                 "sampling: replicas must be 1..64, got " << opt.replicas);
    EQFLOW_CHECK(opt.burn_in >= 0 && opt.thin >= 0,
                 "sampling: burn-in and thinning must be non-negative");
    const int R = opt.replicas;
    const double t_max = opt.t_max > 0.0 ? opt.t_max : default_t_max(s);
    EQFLOW_CHECK(t_max >= 1.0, "sampling: t_max must be >= 1, got " << t_max);
    std::vector<double> temps(static_cast<size_t>(R), 1.0);
    for (int r = 1; r < R; ++r) temps[r] = std::pow(t_max, static_cast<double>(r) / (R - 1));
    const int64_t thin = opt.thin > 0 ? opt.thin : default_thin(s);

    // Enough chains to use every core and to give independent error estimates; each chain
    // records at most ~1/16 of the samples.
    const int threads = opt.threads > 0 ? opt.threads : default_thread_count();
    int chains = opt.chains > 0 ? opt.chains
                                : static_cast<int>(std::clamp<int64_t>(opt.samples / 50, 1, 64));
    chains = static_cast<int>(std::min<int64_t>(chains, std::max<int64_t>(opt.samples, 1)));
    std::vector<int64_t> per_chain(static_cast<size_t>(chains), opt.samples / chains);
    for (int c = 0; c < opt.samples % chains; ++c) ++per_chain[c];

    // Chain c writes results[c] only, so the output does not depend on which thread ran it.
    std::vector<ChainResult> results(static_cast<size_t>(chains));
    std::atomic<int64_t> done{0};
    std::mutex progress_mutex;
    parallel_for(
        chains,
        [&](int64_t c) {
            results[c] =
                run_chain(s, opt, temps, static_cast<int>(c), per_chain[c], thin, [&](int64_t k) {
                    const int64_t now = done += k;
                    if (opt.progress) {
                        std::lock_guard<std::mutex> lock(progress_mutex);
                        opt.progress(now, opt.samples);
                    }
                });
        },
        threads);

    std::vector<double> all;
    all.reserve(static_cast<size_t>(opt.samples * s.n * s.d));
    for (const auto& r : results) all.insert(all.end(), r.samples.begin(), r.samples.end());
    if (stats) {
        stats->temperatures = temps;
        stats->chains = chains;
        stats->threads = std::min(threads, chains);
        stats->thin = thin;
        stats->acceptance.assign(static_cast<size_t>(R), 0.0);
        stats->step_size.assign(static_cast<size_t>(R), 0.0);
        stats->swap_acceptance.assign(static_cast<size_t>(std::max(R - 1, 0)), 0.0);
        for (const auto& r : results) {
            for (int k = 0; k < R; ++k) {
                stats->acceptance[k] += r.acceptance[k] / chains;
                stats->step_size[k] += r.step[k] / chains;
            }
            for (int k = 0; k + 1 < R; ++k) stats->swap_acceptance[k] += r.swap[k] / chains;
        }
    }
    return all;
}

}  // namespace eqflow
