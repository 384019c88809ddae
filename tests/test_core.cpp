// Core: errors, buffers, tensors, the device query, JSON.
#include <gtest/gtest.h>

#include <string>

#include "eqflow/buffer.h"
#include "eqflow/device.h"
#include "eqflow/error.h"
#include "eqflow/json.h"
#include "eqflow/tensor.h"
#include "test_util.h"

namespace eqflow {
namespace {

TEST(Error, CarriesMessageAndFileLine) {
    try {
        EQFLOW_CHECK(1 + 1 == 3, "arithmetic is off by " << 1);
        FAIL() << "no exception";
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("arithmetic is off by 1"), std::string::npos) << what;
        EXPECT_NE(what.find("tests/test_core.cpp:"), std::string::npos) << what;
    }
}

TEST(Device, QueryIsConsistent) {
    const std::string status = cuda_status();
    EXPECT_FALSE(status.empty());
    if (!cuda_compiled()) EXPECT_FALSE(cuda_available());
    EXPECT_EQ(default_device(), cuda_available() ? Device::cuda : Device::cpu);
    EXPECT_EQ(parse_device("cpu"), Device::cpu);
    EXPECT_EQ(parse_device("auto"), default_device());
    EXPECT_THROW(parse_device("tpu"), Error);
    if (!cuda_available()) {
        // Asking for the GPU without one is a clear error that says why.
        try {
            parse_device("cuda");
            FAIL() << "no exception";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(status), std::string::npos) << e.what();
        }
    }
}

TEST(Buffer, HostRoundTripAndMove) {
    Buffer<double> a(5, Device::cpu);
    const double src[5] = {1, 2, 3, 4, 5};
    a.copy_from_host(src, 5);
    Buffer<double> b = std::move(a);
    EXPECT_EQ(a.size(), 0u);
    EXPECT_EQ(a.data(), nullptr);
    ASSERT_EQ(b.size(), 5u);
    double dst[5] = {};
    b.copy_to_host(dst, 5);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(dst[i], src[i]);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
    EXPECT_THROW(b.copy_to_host(dst, 6), Error);
    b.zero();
    b.copy_to_host(dst, 5);
    for (double x : dst) EXPECT_EQ(x, 0.0);
}

TEST(Buffer, DeviceWithoutGpuIsAnError) {
    if (cuda_available()) GTEST_SKIP() << "a GPU is present";
    EXPECT_THROW(Buffer<float>(16, Device::cuda), Error);
}

TEST(Tensor, ShapeViewAndChecks) {
    Tensor<double> t = Tensor<double>::from_host({1, 2, 3, 4, 5, 6}, Shape{2, 3});
    EXPECT_EQ(t.numel(), 6);
    EXPECT_EQ(t.size(-1), 3);
    TensorView<const double> v = t.view();
    EXPECT_EQ(v.rank(), 2);
    EXPECT_EQ(v.data[4], 5.0);
    EXPECT_NO_THROW(check_shape(v, Shape{2, 3}, "t"));
    EXPECT_THROW(check_shape(v, Shape{3, 2}, "t"), Error);
    t.reshape(Shape{6});
    EXPECT_EQ(t.shape(), Shape{6});
    EXPECT_THROW(t.reshape(Shape{4}), Error);
    EXPECT_THROW(Tensor<double>::from_host({1, 2}, Shape{3}), Error);
    EXPECT_EQ(shape_string(Shape{2, 13, 3}), "[2, 13, 3]");
}

TEST(Json, RoundTripAndStrictness) {
    Json j = Json::object();
    j["nll"] = 1.625;
    j["name"] = "dw4 \"quoted\"\n";
    j["n"] = 13;
    j["list"].push_back(Json(1.5));
    j["list"].push_back(Json(nullptr));
    j["nan"] = std::nan("");
    const Json back = Json::parse(j.dump(2));
    EXPECT_EQ(back.at("nll").as_number(), 1.625);
    EXPECT_EQ(back.at("name").as_string(), "dw4 \"quoted\"\n");
    EXPECT_EQ(back.at("n").as_int(), 13);
    EXPECT_EQ(back.at("list").size(), 2u);
    EXPECT_TRUE(back.at("nan").is_null());  // JSON has no NaN
    EXPECT_THROW(Json::parse("{\"a\": 1,}"), Error);
    EXPECT_THROW(Json::parse("{\"a\": 1} x"), Error);
    EXPECT_THROW(Json::parse("{\"a\": 1, \"a\": 2}"), Error);
    EXPECT_THROW(Json::parse("[1, 2"), Error);
    EXPECT_THROW(back.at("missing"), Error);
    EXPECT_THROW(back.at("nll").as_string(), Error);
    EXPECT_EQ(Json::parse("0.1").as_number(), 0.1);
}

}  // namespace
}  // namespace eqflow
