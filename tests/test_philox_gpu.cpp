// Philox draws on the GPU are bit-identical to the host's (label gpu).
#include <gtest/gtest.h>

#include <cstring>

#include "eqflow/random.h"
#include "eqflow/tensor.h"
#include "test_util.h"

namespace eqflow {
namespace {

TEST(PhiloxGpu, NormalAndUniformBitIdentical) {
    for (bool normal : {true, false}) {
        const int rows = 1000, per_row = 39;  // odd: exercises the cached second normal
        Tensor<double> host(Shape{rows, per_row});
        Tensor<double> dev(Shape{rows, per_row}, Device::cuda);
        if (normal) {
            fill_normal(host.view(), per_row, 1234, 77);
            fill_normal(dev.view(), per_row, 1234, 77);
        } else {
            fill_uniform(host.view(), per_row, 1234, 77);
            fill_uniform(dev.view(), per_row, 1234, 77);
        }
        const std::vector<double> h = host.to_vector(), d = dev.to_vector();
        ASSERT_EQ(h.size(), d.size());
        size_t mismatches = 0;
        for (size_t i = 0; i < h.size(); ++i)
            mismatches += std::memcmp(&h[i], &d[i], sizeof(double)) != 0;
        EXPECT_EQ(mismatches, 0u) << (normal ? "normal" : "uniform") << " draws differ in "
                                  << mismatches << " places";
        EXPECT_TRUE(test::not_all_zero(d));
    }
}

}  // namespace
}  // namespace eqflow
