// eqflow/io.h: file helpers shared by every writer. Outputs are never half-written: data goes
// to a temporary file beside the target, which is renamed over it only when complete.
#pragma once

#include <string>

#include "eqflow/export.h"

namespace eqflow {

// Writes `bytes` to `path` atomically (temporary file + rename). Throws Error on failure and
// leaves no temporary file behind.
EQFLOW_API void write_file_atomic(const std::string& path, const std::string& bytes);

// Reads a whole file; throws Error with the path and the system's reason when it cannot.
EQFLOW_API std::string read_file(const std::string& path);

// Creates a directory and its parents when missing.
EQFLOW_API void make_directories(const std::string& path);

}  // namespace eqflow
