// The shipped models (models/*.safetensors): each loads from models/ alone, and `eqflow eval`
// reproduces the check recorded beside it (models/NAME.json "check": the arguments of a small
// deterministic evaluation, 200 samples on 200 test rows shipped with it, and its numbers).
// The full metrics in the same file come from the long evaluation of scripts/reproduce.sh.
#include <dirent.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "eqflow/json.h"
#include "test_util.h"

namespace eqflow {
namespace {

std::string read_text(const std::string& path) {
    std::ifstream in(path);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

std::vector<std::string> shipped_metrics() {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(EQFLOW_MODELS_DIR)) {
        while (const dirent* e = ::readdir(d)) {
            const std::string f = e->d_name;
            if (f.size() > 5 && f.compare(f.size() - 5, 5, ".json") == 0) names.push_back(f);
        }
        ::closedir(d);
    }
    std::sort(names.begin(), names.end());
    return names;
}

class Models : public test::TempDirTest {};

TEST_F(Models, EvalReproducesTheRecordedCheck) {
    const std::vector<std::string> names = shipped_metrics();
    if (names.empty()) GTEST_SKIP() << "no models shipped in " << EQFLOW_MODELS_DIR;
    for (const std::string& name : names) {
        SCOPED_TRACE(name);
        const Json meta = Json::parse(read_text(std::string(EQFLOW_MODELS_DIR) + "/" + name));
        ASSERT_TRUE(meta.contains("check")) << name;
        const Json& check = meta.at("check");
        // Paths in the recorded arguments are relative to the repository root.
        std::string args;
        for (const Json& a : check.at("args").as_array()) {
            std::string s = a.as_string();
            if (s == "CHECK.json")
                s = file("check.json");
            else if (s.rfind("models/", 0) == 0)
                s = std::string(EQFLOW_MODELS_DIR) + s.substr(6);
            args += " '" + s + "'";
        }
        // Fixed steps (see below): a check recorded with dopri5 is not reproducible elsewhere.
        EXPECT_NE(args.find(" '--solver' 'rk4'"), std::string::npos) << name << ":" << args;
        const test::Result r = run(args + " --figure " + file("check.svg"));
        ASSERT_EQ(r.code, 0) << r.out;
        const Json got = Json::parse(read_text(file("check.json")));
        const Json& want = check.at("metrics");
        // The check runs the fast float32 field, whose results do not depend on the thread
        // count, with fixed RK4 steps (an adaptive solver's step decisions flip under rounding
        // changes and move the ESS of 200 samples by points; scripts/ship-model.sh). On another
        // CPU the SIMD width may differ, so float rounding may too: the NLL to 1e-3 nats, the
        // ESS to 0.5 percentage points, the path length to 1e-3 relative.
        EXPECT_NEAR(got.at("nll").as_number(), want.at("nll").as_number(), 1e-3);
        EXPECT_NEAR(got.at("ess").as_number(), want.at("ess").as_number(), 5e-3);
        EXPECT_NEAR(got.at("path_length").as_number(), want.at("path_length").as_number(),
                    1e-3 * want.at("path_length").as_number());
        // The full evaluation it ships with is on the paper's held-out data and eqflow's own.
        for (const char* test : {"paper_test", "eqflow_test"}) {
            ASSERT_TRUE(meta.contains(test)) << name << " has no " << test << " metrics";
            EXPECT_TRUE(std::isfinite(meta.at(test).at("nll").as_number()));
        }
    }
}

}  // namespace
}  // namespace eqflow
