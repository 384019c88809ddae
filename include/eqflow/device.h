// eqflow/device.h: where data lives and what the runtime can use.
//
// A plain C++ caller never needs a CUDA header: a stream is an opaque handle (a cudaStream_t
// cast to void*; nullptr is the default stream).
#pragma once

#include <string>

#include "eqflow/export.h"

namespace eqflow {

enum class Device { cpu, cuda };

using Stream = void*;

EQFLOW_API const char* device_name(Device device);

// True when the library was compiled with the CUDA backend.
EQFLOW_API bool cuda_compiled();

// True when the CUDA backend was compiled in and at least one usable device answers.
// The answer is computed once and cached.
EQFLOW_API bool cuda_available();

// One line for people: "NVIDIA H200 (sm_90, 139.8 GiB)", or why the GPU is not usable
// ("eqflow was built without CUDA", "no CUDA device: <runtime message>").
EQFLOW_API std::string cuda_status();

// Device::cuda when cuda_available(), otherwise Device::cpu.
EQFLOW_API Device default_device();

// Parses "cpu", "cuda" or "auto". Asking for "cuda" when no GPU is usable throws an Error that
// says why; "auto" falls back to the CPU.
EQFLOW_API Device parse_device(const std::string& name);

// Waits for all work on the stream (no-op on the CPU build).
EQFLOW_API void synchronize(Stream stream = nullptr);

}  // namespace eqflow
