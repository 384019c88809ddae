// Uses the installed library through its public headers only: a DW4 energy, the device query,
// and the alanine-dipeptide data found relative to the installed library. With an argument, the
// data folder must lie under that prefix (the test moves the install there first, so the
// source tree and the configured prefix cannot be what is found).
#include <cmath>
#include <cstdio>
#include <string>

#include <eqflow/device.h>
#include <eqflow/molecule_io.h>
#include <eqflow/systems.h>

int main(int argc, char** argv) {
    const eqflow::System s = eqflow::make_system("dw4");
    const double x[8] = {0, 0, 2.5, 0, 0, 5.5, 2.5, 5.5};
    const double e = eqflow::energy_reference(s, x);
    std::printf("consumer: dw4 energy %.6f; GPU: %s\n", e, eqflow::cuda_status().c_str());
    if (!std::isfinite(e)) return 1;
    const std::string data = eqflow::aldp_data_dir();
    const eqflow::System aldp = eqflow::make_system("aldp");
    std::printf("consumer: aldp data in %s (%d atoms)\n", data.c_str(), aldp.n);
    if (argc > 1 && data.rfind(argv[1], 0) != 0) {
        std::printf("consumer: the data folder is not under %s\n", argv[1]);
        return 1;
    }
    return aldp.n == 22 ? 0 : 1;
}
