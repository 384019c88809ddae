// Equilibrium data: are the samples right? Virial theorem, configurational temperature,
// seed-to-seed agreement of energies and of the DW4 metastable-state populations.
//
// Error bars come from the spread of per-chain means (chains are independent by construction),
// so correlated samples within a chain widen the bars honestly instead of faking precision.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "eqflow/mcmc.h"
#include "eqflow/systems.h"
#include "test_util.h"

namespace eqflow {
namespace {

struct Estimate {
    double mean, stderr_;
};

// Mean over all samples and its standard error from the per-chain means (equal-size chains).
Estimate chain_estimate(const std::vector<double>& values, int chains) {
    const size_t per = values.size() / static_cast<size_t>(chains);
    std::vector<double> means(static_cast<size_t>(chains), 0.0);
    for (int c = 0; c < chains; ++c)
        for (size_t k = 0; k < per; ++k) means[c] += values[c * per + k] / per;
    const double m = std::accumulate(means.begin(), means.end(), 0.0) / chains;
    double var = 0;
    for (double x : means) var += (x - m) * (x - m) / (chains - 1);
    return {m, std::sqrt(var / chains)};
}

// Ratio of two per-sample series, with a jackknife over chains.
Estimate chain_ratio(const std::vector<double>& num, const std::vector<double>& den, int chains) {
    const size_t per = num.size() / static_cast<size_t>(chains);
    std::vector<double> sn(static_cast<size_t>(chains), 0.0), sd(static_cast<size_t>(chains), 0.0);
    for (int c = 0; c < chains; ++c)
        for (size_t k = 0; k < per; ++k) {
            sn[c] += num[c * per + k];
            sd[c] += den[c * per + k];
        }
    const double tn = std::accumulate(sn.begin(), sn.end(), 0.0),
                 td = std::accumulate(sd.begin(), sd.end(), 0.0);
    const double full = tn / td;
    double var = 0;
    for (int c = 0; c < chains; ++c) {
        const double loo = (tn - sn[c]) / (td - sd[c]);
        var += (loo - full) * (loo - full);
    }
    return {full, std::sqrt(var * (chains - 1) / chains)};
}

struct Observables {
    std::vector<double> energy, virial, grad2, laplacian;
};

Observables observe(const System& s, const std::vector<double>& x) {
    Observables o;
    const size_t nd = static_cast<size_t>(s.n * s.d);
    std::vector<double> g(nd);
    for (size_t b = 0; b < x.size() / nd; ++b) {
        const double* xb = x.data() + b * nd;
        double lap = 0;
        o.energy.push_back(energy_reference(s, xb, g.data(), &lap));
        double vir = 0, g2 = 0;
        for (size_t k = 0; k < nd; ++k) {
            vir += xb[k] * g[k];
            g2 += g[k] * g[k];
        }
        o.virial.push_back(vir);
        o.grad2.push_back(g2);
        o.laplacian.push_back(lap);
    }
    return o;
}

McmcOptions test_options(int64_t samples, uint64_t seed) {
    McmcOptions opt;
    opt.samples = samples;
    opt.seed = seed;
    opt.chains = 32;
    opt.burn_in = 1000;
    return opt;
}

// The checks themselves: |estimate - expected| within 4.5 standard errors (a false alarm about
// once in 150,000 runs), and the error bar itself small enough that the test can fail.
// thin 0: the system's default.
void check_equilibrium(const System& s, int64_t samples, double max_rel_stderr, int64_t thin = 0) {
    McmcOptions opt = test_options(samples, test::seed());
    opt.thin = thin;
    McmcStats stats;
    const std::vector<double> x = sample_equilibrium(s, opt, &stats);
    ASSERT_EQ(x.size(), static_cast<size_t>(samples * s.n * s.d));
    const Observables o = observe(s, x);

    const Estimate vir = chain_estimate(o.virial, opt.chains);
    const double dof = s.dof() * s.kT;
    std::printf("%s virial <x.gradE> = %.3f +- %.3f (expected %.0f); acceptance %.2f, swaps %.2f\n",
                s.name.c_str(), vir.mean, vir.stderr_, dof, stats.acceptance[0],
                stats.swap_acceptance[0]);
    EXPECT_LT(vir.stderr_, max_rel_stderr * dof);
    EXPECT_NEAR(vir.mean, dof, 4.5 * vir.stderr_);

    const Estimate tconf = chain_ratio(o.grad2, o.laplacian, opt.chains);
    std::printf("%s configurational temperature = %.4f +- %.4f (expected %.1f)\n", s.name.c_str(),
                tconf.mean, tconf.stderr_, s.kT);
    EXPECT_LT(tconf.stderr_, max_rel_stderr * s.kT);
    EXPECT_NEAR(tconf.mean, s.kT, 4.5 * tconf.stderr_);

    // Centred output.
    for (int a = 0; a < s.d; ++a) {
        double m = 0;
        for (int i = 0; i < s.n; ++i) m += x[i * s.d + a];
        EXPECT_NEAR(m, 0.0, 1e-10);
    }
}

TEST(Mcmc, Dw4SatisfiesVirialAndConfigurationalTemperature) {
    check_equilibrium(make_system("dw4"), 40000, 0.03);
}

TEST(Mcmc, Lj13SatisfiesVirialAndConfigurationalTemperature) {
    // The sampler's correctness, not the default thinning, is under test, and the error bars
    // come from the chain means: a thinning of 10 (the default is 50) keeps them honest and the
    // check at ~4 s instead of ~16 s.
    check_equilibrium(make_system("lj13"), 9600, 0.03, 10);
}

// DW4 metastable states, labelled by the number of short pairs (r < d0 = 4) among the six.
std::vector<double> short_pair_counts(const System& s, const std::vector<double>& x) {
    std::vector<double> k;
    const size_t nd = static_cast<size_t>(s.n * s.d);
    for (size_t b = 0; b < x.size() / nd; ++b) {
        int count = 0;
        for (int i = 0; i < s.n; ++i)
            for (int j = i + 1; j < s.n; ++j) {
                double r2 = 0;
                for (int a = 0; a < s.d; ++a)
                    r2 += std::pow(x[b * nd + i * s.d + a] - x[b * nd + j * s.d + a], 2);
                count += r2 < 16.0;
            }
        k.push_back(count);
    }
    return k;
}

TEST(Mcmc, TwoSeedsAgreeOnEnergyAndStatePopulations) {
    const System s = make_system("dw4");
    const int64_t N = 6400;
    const McmcOptions a = test_options(N, test::seed() + 1), b = test_options(N, test::seed() + 2);
    const std::vector<double> xa = sample_equilibrium(s, a), xb = sample_equilibrium(s, b);
    EXPECT_NE(xa, xb);
    const Estimate ea = chain_estimate(observe(s, xa).energy, a.chains);
    const Estimate eb = chain_estimate(observe(s, xb).energy, b.chains);
    const double se = std::hypot(ea.stderr_, eb.stderr_);
    std::printf("dw4 mean energy: seed A %.3f +- %.3f, seed B %.3f +- %.3f\n", ea.mean, ea.stderr_,
                eb.mean, eb.stderr_);
    EXPECT_NEAR(ea.mean, eb.mean, 4.5 * se);
    EXPECT_LT(se, 0.2);  // ~1% of the energy scale: the comparison can fail

    const std::vector<double> ka = short_pair_counts(s, xa), kb = short_pair_counts(s, xb);
    for (int state = 0; state <= 6; ++state) {
        std::vector<double> ia, ib;
        for (double k : ka) ia.push_back(k == state);
        for (double k : kb) ib.push_back(k == state);
        const Estimate pa = chain_estimate(ia, a.chains), pb = chain_estimate(ib, b.chains);
        std::printf("dw4 state with %d short pairs: %.4f +- %.4f vs %.4f +- %.4f\n", state, pa.mean,
                    pa.stderr_, pb.mean, pb.stderr_);
        EXPECT_NEAR(pa.mean, pb.mean, 4.5 * std::hypot(pa.stderr_, pb.stderr_) + 1e-3)
            << "state " << state;
    }
}

TEST(Mcmc, OutputDependsOnSeedNotThreads) {
    const System s = make_system("lj:6");
    McmcOptions opt = test_options(64, 5);
    opt.chains = 4;
    opt.burn_in = 100;
    opt.threads = 1;
    const std::vector<double> one = sample_equilibrium(s, opt);
    opt.threads = 3;
    const std::vector<double> three = sample_equilibrium(s, opt);
    EXPECT_EQ(one, three);
}

TEST(Mcmc, RejectsBadOptions) {
    const System s = make_system("dw4");
    McmcOptions opt;
    opt.replicas = 0;
    EXPECT_THROW(sample_equilibrium(s, opt), Error);
    opt = McmcOptions{};
    opt.t_max = 0.5;
    EXPECT_THROW(sample_equilibrium(s, opt), Error);
}

}  // namespace
}  // namespace eqflow
