// Uses the installed library through its public headers only: a DW4 energy and the device query.
#include <cmath>
#include <cstdio>

#include <eqflow/device.h>
#include <eqflow/systems.h>

int main() {
    const eqflow::System s = eqflow::make_system("dw4");
    const double x[8] = {0, 0, 2.5, 0, 0, 5.5, 2.5, 5.5};
    const double e = eqflow::energy_reference(s, x);
    std::printf("consumer: dw4 energy %.6f; GPU: %s\n", e, eqflow::cuda_status().c_str());
    return std::isfinite(e) ? 0 : 1;
}
