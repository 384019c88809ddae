// libFuzzer target: the OpenMM System XML reader (size, balance and nesting limits, strict
// numbers, the pair list). Every input must give a force field or an eqflow::Error.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "eqflow/error.h"
#include "eqflow/force_field.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        const eqflow::ForceField ff = eqflow::parse_openmm_system_xml(text);
        // Every parameter the reader accepted is finite (the bounds promise more).
        for (const eqflow::NonbondedPair& p : ff.pairs)
            if (!std::isfinite(p.charge_prod) || !std::isfinite(p.sigma) ||
                !std::isfinite(p.epsilon))
                __builtin_trap();
    } catch (const eqflow::Error&) {
    }
    return 0;
}
