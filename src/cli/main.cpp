// eqflow: the command-line program. Each subcommand lives in src/cli/cmd_*.cpp.
//
// Exit codes: 0 success, 1 bad input or a failure while running (one line on stderr), 2 bad
// usage (unknown command or option). Outputs are written atomically, so a failed run never
// leaves a half-written file.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "cli/cli_common.h"
#include "eqflow/device.h"
#include "eqflow/error.h"

#ifndef EQFLOW_VERSION_STRING  // set by CMake from project(VERSION)
#define EQFLOW_VERSION_STRING "unknown"
#endif

namespace eqflow::cli {

const std::vector<Command>& commands() {
    static const std::vector<Command> table = {
        {"data", "equilibrium samples of a system (parallel-tempering Metropolis)", kDataUsage,
         cmd_data},
        {"energy", "reduced energies u = E/kT of configurations", kEnergyUsage, cmd_energy},
        {"train", "train an EGNN flow by (equivariant OT) flow matching", kTrainUsage, cmd_train},
        {"sample", "samples with exact log-density and importance weights", kSampleUsage,
         cmd_sample},
        {"eval", "NLL, ESS, path length and energy histograms of a model", kEvalUsage, cmd_eval},
        {"field", "the vector field v(x, t) and its exact divergence", kFieldUsage, cmd_field},
        {"assign", "batched exact linear sum assignment (Hungarian) of cost matrices", kAssignUsage,
         cmd_assign},
        {"demo", "DW4 end to end: data, training, sampling, metrics", kDemoUsage, cmd_demo},
    };
    return table;
}

namespace {
void print_main_help() {
    std::printf(
        "eqflow: equivariant flow matching for Boltzmann generators\n\n"
        "usage: eqflow <command> [options]    (eqflow <command> --help for its "
        "options)\n       eqflow --version\n\ncommands:\n");
    for (const Command& c : commands()) std::printf("  %-8s %s\n", c.name, c.summary);
    std::printf("\nGPU: %s\n", cuda_status().c_str());
}
}  // namespace

int run(int argc, char** argv) {
    if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
        !std::strcmp(argv[1], "help")) {
        print_main_help();
        return argc < 2 ? 2 : 0;
    }
    if (!std::strcmp(argv[1], "--version")) {
        std::printf("eqflow %s\n", EQFLOW_VERSION_STRING);
        return 0;
    }
    const std::string name = argv[1];
    const Command* cmd = nullptr;
    for (const Command& c : commands())
        if (name == c.name) cmd = &c;
    if (cmd == nullptr) {
        std::fprintf(stderr, "eqflow: unknown command '%s' (see eqflow --help)\n", name.c_str());
        return 2;
    }
    try {
        Args args(name, std::vector<std::string>(argv + 2, argv + argc));
        if (args.help()) {
            std::printf("%s", cmd->usage);
            return 0;
        }
        return cmd->run(args);
    } catch (const UsageError& e) {
        std::fprintf(stderr, "eqflow %s: %s (see eqflow %s --help)\n", name.c_str(),
                     detail::escape_control(e.message).c_str(), name.c_str());
        return 2;
    } catch (const Error& e) {
        std::fprintf(stderr, "eqflow %s: error: %s\n", name.c_str(), e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "eqflow %s: error: %s\n", name.c_str(),
                     detail::escape_control(e.what()).c_str());
        return 1;
    }
}

}  // namespace eqflow::cli

int main(int argc, char** argv) {
    return eqflow::cli::run(argc, argv);
}
