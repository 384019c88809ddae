// eqflow/error.h: errors are exceptions that say what failed and where.
//
// Every check in the library throws eqflow::Error with a one-line message of the form
//   "<what went wrong> (src/npy.cpp:123)"
// so that the command-line program can print it as it is. CUDA and cuBLAS failures carry the
// device and the runtime's message as well (see kernels/cuda_check.cuh). Destructors never throw.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "eqflow/export.h"

namespace eqflow {

class EQFLOW_API Error : public std::runtime_error {
  public:
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
[[noreturn]] EQFLOW_API void throw_error(const std::string& message, const char* file, int line);

// `text` with every control character (below 0x20, and 0x7f) written as \xNN: messages that quote
// bytes from a file stay on one line.
EQFLOW_API std::string escape_control(const std::string& text);

// Strips the directories above the project root from __FILE__, so messages show "src/npy.cpp".
EQFLOW_API const char* short_path(const char* file);
}  // namespace detail

}  // namespace eqflow

// EQFLOW_THROW(stream-expression): throw eqflow::Error with file:line.
#define EQFLOW_THROW(msg)                                                     \
    do {                                                                      \
        std::ostringstream eqflow_oss_;                                       \
        eqflow_oss_ << msg;                                                   \
        ::eqflow::detail::throw_error(eqflow_oss_.str(), __FILE__, __LINE__); \
    } while (0)

// EQFLOW_CHECK(condition, stream-expression): throw when the condition is false.
#define EQFLOW_CHECK(cond, msg)         \
    do {                                \
        if (!(cond)) EQFLOW_THROW(msg); \
    } while (0)
