// libFuzzer target: the .npy reader (parse_npy) and the configuration checks on top of it.
// Every input must give an array or an eqflow::Error; anything else (a crash, a sanitizer
// report, another exception, a hang) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "eqflow/error.h"
#include "eqflow/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    try {
        const eqflow::NpyArray a = eqflow::parse_npy(bytes, "fuzz.npy");
        // What a reader promises: as many values as the shape says.
        if (static_cast<int64_t>(a.values.size()) != eqflow::shape_numel(a.shape)) __builtin_trap();
    } catch (const eqflow::Error&) {
    }
    return 0;
}
