#include "eqflow/io.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "eqflow/error.h"

namespace eqflow {

void write_file_atomic(const std::string& path, const std::string& bytes) {
    static std::atomic<unsigned> serial{0};
    std::ostringstream tmp_name;
    tmp_name << path << ".tmp." << ::getpid() << "." << serial++;
    const std::string tmp = tmp_name.str();
    FILE* f = std::fopen(tmp.c_str(), "wb");
    EQFLOW_CHECK(f != nullptr, "cannot write " << path << ": " << std::strerror(errno));
    const size_t written = bytes.empty() ? 0 : std::fwrite(bytes.data(), 1, bytes.size(), f);
    const int err_write = written == bytes.size() ? 0 : errno;
    const int err_close = std::fclose(f) == 0 ? 0 : errno;
    if (err_write != 0 || err_close != 0 || written != bytes.size()) {
        std::remove(tmp.c_str());
        EQFLOW_THROW("cannot write " << path << ": "
                                     << std::strerror(err_write ? err_write : err_close));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        std::remove(tmp.c_str());
        EQFLOW_THROW("cannot write " << path << ": " << std::strerror(err));
    }
}

std::string read_file(const std::string& path) {
    struct stat st {};
    EQFLOW_CHECK(::stat(path.c_str(), &st) == 0,
                 "cannot read " << path << ": " << std::strerror(errno));
    EQFLOW_CHECK(!S_ISDIR(st.st_mode), "cannot read " << path << ": it is a directory");
    std::ifstream in(path, std::ios::binary);
    EQFLOW_CHECK(in.good(), "cannot read " << path << ": " << std::strerror(errno));
    std::ostringstream ss;
    ss << in.rdbuf();
    EQFLOW_CHECK(!in.bad(), "cannot read " << path << ": read error");
    return ss.str();
}

void make_directories(const std::string& path) {
    if (path.empty()) return;
    std::string partial;
    size_t pos = 0;
    while (pos != std::string::npos) {
        pos = path.find('/', pos + 1);
        partial = path.substr(0, pos);
        if (partial.empty()) continue;
        if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
            EQFLOW_THROW("cannot create directory " << partial << ": " << std::strerror(errno));
        }
    }
    struct stat st {};
    EQFLOW_CHECK(::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode),
                 "cannot create directory " << path);
}

}  // namespace eqflow
