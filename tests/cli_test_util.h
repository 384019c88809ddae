// tests/cli_test_util.h: running the eqflow program from tests. `run` passes the arguments to
// the built CLI (EQFLOW_CLI_PATH), `sh` runs any shell command; both capture stdout and stderr
// together and the exit code.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

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

// A fixture with a scratch directory of its own (named after the test suite), removed
// afterwards. The tests call run, exists and Result unqualified.
class TempDirTest : public ::testing::Test {
  protected:
    using Result = test::Result;
    static Result run(const std::string& args) { return test::run(args); }
    static bool exists(const std::string& path) { return test::exists(path); }

    TempDirTest()
        : dir_(temp_path(
              ::testing::UnitTest::GetInstance()->current_test_info()->test_suite_name())) {}
    void SetUp() override { ::mkdir(dir_.c_str(), 0755); }
    void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
    std::string file(const std::string& name) const { return dir_ + "/" + name; }
    std::string dir_;
};

// `args` is a usage error: exit code 2, and the message mentions `text`.
inline void expect_usage_error(const std::string& args, const std::string& text) {
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.out;
    EXPECT_NE(r.out.find(text), std::string::npos) << args << "\n" << r.out;
}

// A command that must fail on bad input, and what its message must say.
struct ErrorCase {
    std::string args, expect;
};

// Each case fails with exit code 1 and one line of message, "error:" and the expected text,
// and leaves no `out` behind.
inline void expect_one_line_errors(const std::vector<ErrorCase>& cases, const std::string& out) {
    for (const ErrorCase& c : cases) {
        const Result r = run(c.args);
        EXPECT_EQ(r.code, 1) << c.args << "\n" << r.out;
        EXPECT_NE(r.out.find(c.expect), std::string::npos) << c.args << "\n" << r.out;
        EXPECT_NE(r.out.find("error:"), std::string::npos) << r.out;
        EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << "not one line:\n" << r.out;
        EXPECT_FALSE(exists(out)) << c.args;
    }
}

}  // namespace eqflow::test
