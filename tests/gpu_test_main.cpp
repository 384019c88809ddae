// Entry point of the `gpu` test executables: without a usable GPU they print why and exit with
// 77, which CTest reports as skipped (SKIP_RETURN_CODE).
#include <gtest/gtest.h>

#include <cstdio>

#include "eqflow/device.h"
#include "test_util.h"

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    if (!eqflow::cuda_available()) {
        std::printf("SKIPPED: GPU tests need a CUDA device: %s\n", eqflow::cuda_status().c_str());
        return 77;
    }
    std::printf("eqflow GPU tests on %s, seed %llu\n", eqflow::cuda_status().c_str(),
                static_cast<unsigned long long>(eqflow::test::seed()));
    return RUN_ALL_TESTS();
}
