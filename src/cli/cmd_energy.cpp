// eqflow energy: reduced energies of configurations from a .npy file.
#include <cstdio>

#include "cli/cli_common.h"
#include "eqflow/device.h"
#include "eqflow/npy.h"
#include "eqflow/systems.h"
#include "eqflow/tensor.h"

namespace eqflow::cli {

const char* const kEnergyUsage =
    "usage: eqflow energy --system S --in x.npy --out u.npy [--device cpu|cuda|auto]\n\n"
    "Reduced energies u = E/kT (float64, shape [N]) of the configurations in x.npy\n"
    "(shape [N, n*d] or [N, n, d], float32 or float64). Systems: dw4, lj13, lj55, lj:N, aldp\n"
    "(alanine dipeptide: positions in nm, u = E / (k_B 300 K) with E in kJ/mol).\n";

int cmd_energy(Args& args) {
    const System system = make_system(args.require("system"));
    const std::string in = args.require("in");
    const std::string out = args.require("out");
    const Device device = parse_device(args.get("device", "auto"));
    args.finish();

    int64_t count = 0;
    std::vector<double> x = load_configurations(in, system.n, system.d, &count, /*center=*/true);
    Tensor<double> xt = Tensor<double>::from_host(x, Shape{count, system.n, system.d}, device);
    Tensor<double> u(Shape{count}, device);
    energy_forces(system, xt.cview(), u.view(), {});
    const std::vector<double> uh = u.to_vector();
    check_finite_output(uh, 1, "the energy", /*allow_plus_inf=*/true);
    write_npy(out, uh.data(), Shape{count});
    std::fprintf(stderr, "energy: %lld configurations of %s on %s -> %s\n",
                 static_cast<long long>(count), system.name.c_str(), device_name(device),
                 out.c_str());
    return 0;
}

}  // namespace eqflow::cli
