// libFuzzer target: the PDB reader. Every input must give a structure or an eqflow::Error.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "eqflow/error.h"
#include "eqflow/molecule_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        const eqflow::PdbStructure s = eqflow::parse_pdb(text, "fuzz.pdb");
        if (s.positions.size() != 3 * s.atom_names.size()) __builtin_trap();
        for (double v : s.positions)
            if (!std::isfinite(v)) __builtin_trap();
    } catch (const eqflow::Error&) {
    }
    return 0;
}
