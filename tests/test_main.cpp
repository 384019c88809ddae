#include <gtest/gtest.h>

#include <cstdio>

#include "test_util.h"

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    std::printf("eqflow tests: seed %llu (set EQFLOW_TEST_SEED to change it)\n",
                static_cast<unsigned long long>(eqflow::test::seed()));
    return RUN_ALL_TESTS();
}
