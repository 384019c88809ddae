// tests/cli_test_util.h: running the eqflow program from tests. `run` passes the arguments to
// the built CLI (EQFLOW_CLI_PATH), `sh` runs any shell command; both capture stdout and stderr
// together and the exit code.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "test_util.h"

namespace eqflow::test {

struct Result {
    int code;         // exit code, -1 when the program did not exit normally
    std::string out;  // stdout and stderr together
};

inline Result sh(const std::string& command) {
    FILE* p = ::popen((command + " 2>&1").c_str(), "r");
    Result r{-1, ""};
    if (!p) return r;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    const int status = ::pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

inline Result run(const std::string& args) {
    return sh(std::string(EQFLOW_CLI_PATH) + " " + args);
}

inline bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

// A fixture with a scratch directory of its own, removed afterwards.
class TempDirTest : public ::testing::Test {
  protected:
    explicit TempDirTest(const std::string& name) : dir_(temp_path(name)) {}
    void SetUp() override { ::mkdir(dir_.c_str(), 0755); }
    void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
    std::string file(const std::string& name) const { return dir_ + "/" + name; }
    std::string dir_;
};

}  // namespace eqflow::test
