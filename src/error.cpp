#include "eqflow/error.h"

#include <cstdio>
#include <cstring>

namespace eqflow::detail {

std::string escape_control(const std::string& text) {
    std::string out;
    out.reserve(text.size());
    for (const char ch : text) {
        const unsigned char c = static_cast<unsigned char>(ch);
        if (c >= 0x20 && c != 0x7f) {
            out += ch;
            continue;
        }
        char buf[5];
        std::snprintf(buf, sizeof buf, "\\x%02x", c);
        out += buf;
    }
    return out;
}

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
    // Messages quote text from files (headers, attributes): a newline or escape sequence there
    // must not split the one-line message or reach the terminal raw.
    oss << escape_control(message) << " (" << short_path(file) << ":" << line << ")";
    throw Error(oss.str());
}

}  // namespace eqflow::detail
