// What the eqot search's starts buy (eqflow/coupling.h): for each variant of the search, the
// coupled cost per sample (the mean |x0_i - x1_paired[i]|^2 that the B x B assignment reaches)
// and the wall time of a coupling, on batches of prior samples against rows of a data file,
// one variant after another on the same batches:
//
//   eqot_starts DATA.npy [--system lj13] [--batch 256] [--batches 8] [--threads 1]
//
// Variants: every start with one refinement round (the default), the 2 and the 1 best-scored
// starts (max_starts; refinement 1, and 1 start also with 0 and 2 rounds), every start without
// refinement, and docs/design.md's one-start recipe (identity start, no refinement; not
// rotation-invariant). A benchmark, not a test: it checks nothing.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "eqflow/coupling.h"
#include "eqflow/npy.h"
#include "eqflow/prior.h"
#include "eqflow/systems.h"

int main(int argc, char** argv) {
    using namespace eqflow;
    if (argc < 2 || argv[1][0] == '-') {
        std::fprintf(stderr,
                     "usage: eqot_starts DATA.npy [--system lj13] [--batch 256] [--batches 8] "
                     "[--threads 1]\n");
        return 2;
    }
    std::string system_name = "lj13";
    int64_t B = 256;
    int batches = 8, threads = 1;
    for (int i = 2; i + 1 < argc; i += 2) {
        const std::string key = argv[i];
        if (key == "--system")
            system_name = argv[i + 1];
        else if (key == "--batch")
            B = std::atoll(argv[i + 1]);
        else if (key == "--batches")
            batches = std::atoi(argv[i + 1]);
        else if (key == "--threads")
            threads = std::atoi(argv[i + 1]);
        else {
            std::fprintf(stderr, "eqot_starts: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    const System sys = make_system(system_name);
    const int n = sys.n, d = sys.d;
    const int64_t nd = static_cast<int64_t>(n) * d;
    int64_t rows = 0;
    const std::vector<double> data = load_configurations(argv[1], n, d, &rows, /*center=*/true);
    if (rows < B || B < 2 || batches < 1) {
        std::fprintf(stderr, "eqot_starts: need batch >= 2, batches >= 1 and >= batch rows\n");
        return 2;
    }
    struct Variant {
        const char* name;
        bool frames;
        int max_starts, refine;
    };
    const Variant variants[] = {
        {"every start, refine 1 (default)", true, 0, 1},
        {"2 best starts, refine 1", true, 2, 1},
        {"1 best start, refine 1", true, 1, 1},
        {"1 best start, refine 0", true, 1, 0},
        {"1 best start, refine 2", true, 1, 2},
        {"every start, refine 0", true, 0, 0},
        {"identity start, refine 0 (recipe)", false, 0, 0},
    };
    std::printf(
        "eqot coupling of %s: %d batches of %lld prior samples against rows of %s, "
        "%d thread(s)\n",
        sys.name.c_str(), batches, static_cast<long long>(B), argv[1], threads);
    std::printf("%-36s %24s %14s\n", "search", "coupled cost / sample", "ms / batch");
    double base_cost = 0.0, base_ms = 0.0;
    for (const Variant& v : variants) {
        CouplingOptions o;
        o.kind = CouplingKind::eqot;
        o.atom_types = sys.atom_types;
        o.frame_starts = v.frames;
        o.max_starts = v.max_starts;
        o.refine_iterations = v.refine;
        o.exhaustive = false;  // the search everywhere (DW4's default alignment has no starts)
        o.threads = threads;
        double total = 0.0, seconds = 0.0;
        std::vector<double> x0(B * nd), x1(B * nd), out(B * nd), cost(B);
        for (int s = 0; s < batches; ++s) {
            sample_prior(B, n, d, 100 + s, 0, x0.data());
            for (int64_t b = 0; b < B; ++b) {
                const int64_t r = (b * 7919 + s * 104729) % rows;
                std::copy(&data[r * nd], &data[r * nd] + nd, &x1[b * nd]);
            }
            const auto t0 = std::chrono::steady_clock::now();
            couple(o, TensorView<const double>(x0.data(), Shape{B, n, d}),
                   TensorView<const double>(x1.data(), Shape{B, n, d}),
                   TensorView<double>(out.data(), Shape{B, n, d}), {},
                   TensorView<double>(cost.data(), Shape{B}));
            seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            for (double c : cost) total += c;
        }
        const double per_sample = total / batches / B, ms = seconds / batches * 1e3;
        if (base_cost == 0.0) base_cost = per_sample, base_ms = ms;
        std::printf("%-36s %12.4f (%+6.2f%%) %8.1f (%4.2fx)\n", v.name, per_sample,
                    100.0 * (per_sample / base_cost - 1.0), ms, base_ms / ms);
    }
    return 0;
}
