// eqflow assign: batched exact linear sum assignment of cost matrices from a .npy file.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "cli/cli_common.h"
#include "eqflow/assignment.h"
#include "eqflow/buffer.h"
#include "eqflow/device.h"
#include "eqflow/error.h"
#include "eqflow/npy.h"
#include "eqflow/tensor.h"

namespace eqflow::cli {

const char* const kAssignUsage =
    "usage: eqflow assign --in cost.npy --out perm.npy [--totals totals.npy]\n"
    "                     [--device cpu|cuda|auto]\n\n"
    "Solves the linear sum assignment (minimum-cost perfect matching) of every square cost\n"
    "matrix in cost.npy exactly: shape [P, n, n] (P problems) or [n, n] (one problem), float32,\n"
    "float64 or integer. Writes perm.npy, int64 of shape [P, n]: perm[p, i] is the column given\n"
    "to row i of problem p (a [n, n] input gives [1, n]). --totals writes the optimal totals,\n"
    "float64 [P]. +inf marks a forbidden pair; a NaN cost or a problem whose every assignment "
    "uses\n"
    "a forbidden pair is an error. Outputs are written atomically. --device defaults to the GPU\n"
    "when one is present (n <= 1024 there). On the CPU the problems are solved on\n"
    "OMP_NUM_THREADS threads (default: every CPU this process may use).\n";

int cmd_assign(Args& args) {
    const std::string in = args.require("in");
    const std::string out = args.require("out");
    const std::string totals_out = args.get("totals", "");
    const Device device = parse_device(args.get("device", "auto"));
    args.finish();

    const NpyArray a = read_npy(in);
    EQFLOW_CHECK((a.shape.size() == 3 && a.shape[1] == a.shape[2]) ||
                     (a.shape.size() == 2 && a.shape[0] == a.shape[1]),
                 in << " has shape " << shape_string(a.shape) << ", expected [P, n, n] or [n, n]");
    const int64_t P = a.shape.size() == 3 ? a.shape[0] : 1;
    const int64_t n = a.shape.back();
    const auto start = std::chrono::steady_clock::now();
    // On the CPU the solver reads the values read_npy converted (no further copy of the costs).
    Tensor<double> cost_device;
    TensorView<const double> cost(a.values.data(), Shape{P, n, n});
    if (device != Device::cpu) {
        cost_device = Tensor<double>::from_host(a.values, Shape{P, n, n}, device);
        cost = cost_device.cview();
    }
    Tensor<int64_t> perm(Shape{P, n}, device);
    Tensor<double> totals(Shape{P}, device);
    const std::size_t bytes = assignment_workspace_bytes(device, P, n);
    Buffer<unsigned char> workspace(bytes, device);
    linear_sum_assignment(cost, perm.view(), totals.view(), {}, workspace.data(), bytes);
    const std::vector<int64_t> ph = perm.to_vector();
    const std::vector<double> th = totals.to_vector();
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (!totals_out.empty()) write_npy(totals_out, th.data(), Shape{P});
    write_npy(out, ph.data(), Shape{P, n});
    std::fprintf(stderr, "assign: %lld problems of size %lld on %s in %.1f ms -> %s\n",
                 static_cast<long long>(P), static_cast<long long>(n), device_name(device), ms,
                 out.c_str());
    return 0;
}

}  // namespace eqflow::cli
