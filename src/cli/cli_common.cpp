#include "cli/cli_common.h"

#include "eqflow/error.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace eqflow::cli {

Args::Args(std::string command, std::vector<std::string> argv) : command_(std::move(command)) {
    for (size_t i = 0; i < argv.size(); ++i) {
        const std::string& a = argv[i];
        if (a == "--help" || a == "-h") {
            help_ = true;
            continue;
        }
        if (a.size() < 3 || a.compare(0, 2, "--") != 0) {
            throw UsageError{"unexpected argument '" + a + "'"};
        }
        std::string key = a.substr(2), value;
        const size_t eq = key.find('=');
        if (eq != std::string::npos) {
            value = key.substr(eq + 1);
            key = key.substr(0, eq);
        } else if (i + 1 < argv.size() && argv[i + 1].compare(0, 2, "--") != 0) {
            value = argv[++i];
        } else {
            value = "";  // a switch
        }
        if (values_.count(key)) throw UsageError{"option --" + key + " given twice"};
        values_[key] = value;
    }
}

std::string Args::get(const std::string& key, const std::string& fallback) {
    used_[key] = true;
    auto it = values_.find(key);
    if (it == values_.end()) return fallback;
    if (it->second.empty()) throw UsageError{"option --" + key + " needs a value"};
    return it->second;
}

std::string Args::require(const std::string& key) {
    used_[key] = true;
    auto it = values_.find(key);
    if (it == values_.end() || it->second.empty())
        throw UsageError{"missing required option --" + key};
    return it->second;
}

int64_t Args::get_int(const std::string& key, int64_t fallback) {
    const std::string v = get(key, "");
    if (v.empty()) return fallback;
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (end == v.c_str() || *end != '\0')
        throw UsageError{"option --" + key + " needs an integer, got '" + v + "'"};
    return x;
}

double Args::get_double(const std::string& key, double fallback) {
    const std::string v = get(key, "");
    if (v.empty()) return fallback;
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0')
        throw UsageError{"option --" + key + " needs a number, got '" + v + "'"};
    return x;
}

bool Args::flag(const std::string& key) {
    used_[key] = true;
    auto it = values_.find(key);
    if (it == values_.end()) return false;
    if (it->second.empty() || it->second == "true" || it->second == "1") return true;
    if (it->second == "false" || it->second == "0") return false;
    throw UsageError{"switch --" + key + " takes no value (got '" + it->second + "')"};
}

void Args::finish() {
    for (const auto& kv : values_) {
        if (!used_.count(kv.first)) throw UsageError{"unknown option --" + kv.first};
    }
}

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)), total_(total), tty_(::isatty(STDERR_FILENO) != 0) {
    start_ = last_ = std::chrono::steady_clock::now();
}

void Progress::update(int64_t done, const std::string& extra) {
    const auto now = std::chrono::steady_clock::now();
    const int percent = total_ > 0 ? static_cast<int>(100 * done / total_) : 100;
    const double since_last = std::chrono::duration<double>(now - last_).count();
    // On a terminal: at most ~10 refreshes a second. In a log: every 10% or every 30 s.
    if (tty_ ? since_last < 0.1 : (percent / 10 == last_percent_ / 10 && since_last < 30.0)) return;
    last_ = now;
    last_percent_ = percent;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    std::fprintf(stderr, "%s%s: %3d%% (%lld/%lld) %.1fs%s%s%s", tty_ ? "\r" : "", label_.c_str(),
                 percent, static_cast<long long>(done), static_cast<long long>(total_), elapsed,
                 extra.empty() ? "" : "  ", extra.c_str(), tty_ ? "\033[K" : "\n");
    std::fflush(stderr);
}

void Progress::finish(const std::string& extra) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr, "%s%s: done (%lld) in %.1fs%s%s%s\n", tty_ ? "\r" : "", label_.c_str(),
                 static_cast<long long>(total_), elapsed, extra.empty() ? "" : "  ", extra.c_str(),
                 tty_ ? "\033[K" : "");
    std::fflush(stderr);
}

void check_finite_output(const std::vector<double>& values, int64_t row_size, const char* what,
                         bool allow_plus_inf, const std::vector<char>* skip_row) {
    for (size_t i = 0; i < values.size(); ++i) {
        const double v = values[i];
        if (std::isfinite(v) || (allow_plus_inf && v == std::numeric_limits<double>::infinity()))
            continue;
        const int64_t row = static_cast<int64_t>(i) / row_size;
        if (skip_row && (*skip_row)[static_cast<size_t>(row)]) continue;
        EQFLOW_THROW(what << " of configuration " << row << " overflowed (" << v
                          << "): nothing written; the input or the model is out of range");
    }
}

}  // namespace eqflow::cli
