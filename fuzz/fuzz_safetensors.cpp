// libFuzzer target: the safetensors reader and the model (EGNN or kernel dynamics, as the
// metadata's eqflow.format says) built from its metadata and tensors. Every input must give a
// model or an eqflow::Error, in bounded time and memory.
#include <cstddef>
#include <cstdint>
#include <string>

#include "eqflow/error.h"
#include "eqflow/model_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    try {
        const eqflow::SafetensorsFile f = eqflow::parse_safetensors(bytes, "fuzz.safetensors");
        const eqflow::FlowModel m = eqflow::flow_model_from_safetensors(f, "fuzz.safetensors");
        if (m.params.empty()) __builtin_trap();
    } catch (const eqflow::Error&) {
    }
    return 0;
}
