#include "eqflow/error.h"

#include <cstring>

namespace eqflow::detail {

const char* short_path(const char* file) {
    // The build passes absolute paths; report them relative to the project's top folders.
    static const char* const kRoots[] = {"/src/", "/kernels/", "/include/", "/tests/", "/bench/"};
    const char* best = nullptr;
    for (const char* root : kRoots) {
        const char* p = std::strstr(file, root);
        while (p) {  // last occurrence wins, in case the checkout lives below a folder named src
            best = (best == nullptr || p > best) ? p : best;
            p = std::strstr(p + 1, root);
        }
    }
    return best ? best + 1 : file;
}

void throw_error(const std::string& message, const char* file, int line) {
    std::ostringstream oss;
    oss << message << " (" << short_path(file) << ":" << line << ")";
    throw Error(oss.str());
}

}  // namespace eqflow::detail
