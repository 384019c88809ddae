// libFuzzer target: the .npy reader, both ways it reads: parse_npy on the bytes in memory and
// read_npy on the same bytes as a file (which streams the header and the data in blocks).
// Every input must give an array or an eqflow::Error; anything else (a crash, a sanitizer
// report, another exception, a hang) is a bug, and so is any difference between the two ways:
// the same array bit for bit, or the same error message.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "eqflow/error.h"
#include "eqflow/npy.h"

namespace {

// One file per fuzzing process, written for each input and removed right after it is read.
const std::string& scratch_path() {
    static const std::string path = "/tmp/eqflow_fuzz_npy_" + std::to_string(::getpid()) + ".npy";
    return path;
}

bool write_bytes(const std::string& path, const std::string& bytes) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return false;
    const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    return std::fclose(f) == 0 && ok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    const std::string& path = scratch_path();
    eqflow::NpyArray parsed, read;
    std::string parse_error, read_error;
    bool parsed_ok = false, read_ok = false;
    try {
        parsed = eqflow::parse_npy(bytes, path);
        parsed_ok = true;
        // What a reader promises: as many values as the shape says.
        if (static_cast<int64_t>(parsed.values.size()) != eqflow::shape_numel(parsed.shape))
            __builtin_trap();
    } catch (const eqflow::Error& e) {
        parse_error = e.what();
    }
    if (!write_bytes(path, bytes)) return 0;  // no scratch space: nothing to compare
    try {
        read = eqflow::read_npy(path);
        read_ok = true;
    } catch (const eqflow::Error& e) {
        read_error = e.what();
    }
    std::remove(path.c_str());
    if (parsed_ok != read_ok) __builtin_trap();
    if (parsed_ok) {
        if (read.shape != parsed.shape || read.dtype != parsed.dtype ||
            read.values.size() != parsed.values.size() ||
            (!read.values.empty() && std::memcmp(read.values.data(), parsed.values.data(),
                                                 read.values.size() * sizeof(double)) != 0))
            __builtin_trap();
    } else if (read_error != parse_error) {
        __builtin_trap();
    }
    return 0;
}
