// .npy reading and writing, including every kind of bad file.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>

#include "eqflow/error.h"
#include "eqflow/io.h"
#include "eqflow/npy.h"
#include "test_util.h"

namespace eqflow {
namespace {

void write_raw(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A hand-made v1.0 header around `dict` (padded as NumPy does) followed by `body`.
std::string npy_bytes(const std::string& dict, const std::string& body, char major = 1) {
    std::string h = dict;
    const size_t prefix = major == 1 ? 10 : 12;
    while ((prefix + h.size() + 1) % 64 != 0) h += ' ';
    h += '\n';
    std::string out = "\x93NUMPY";
    out += major;
    out += '\0';
    if (major == 1) {
        out += static_cast<char>(h.size() & 0xff);
        out += static_cast<char>(h.size() >> 8);
    } else {
        for (int i = 0; i < 4; ++i) out += static_cast<char>((h.size() >> (8 * i)) & 0xff);
    }
    return out + h + body;
}

std::string doubles(std::initializer_list<double> v) {
    std::string s;
    for (double x : v) s.append(reinterpret_cast<const char*>(&x), 8);
    return s;
}

std::string error_of(const std::string& path) {
    try {
        read_npy(path);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

class Npy : public ::testing::Test {
  protected:
    std::string path_ = test::temp_path("npy.npy");
    void TearDown() override { std::remove(path_.c_str()); }
};

TEST_F(Npy, RoundTripFloat64AndFloat32) {
    const std::vector<double> v = {1.0, -2.5, 3.25e-7, 4e10, 0.1, 6.0};
    write_npy(path_, v.data(), Shape{2, 3});
    NpyArray a = read_npy(path_);
    EXPECT_EQ(a.shape, (Shape{2, 3}));
    EXPECT_EQ(a.dtype, NpyDtype::f64);
    EXPECT_EQ(a.values, v);
    write_npy(path_, v.data(), Shape{6}, NpyDtype::f32);
    a = read_npy(path_);
    EXPECT_EQ(a.dtype, NpyDtype::f32);
    ASSERT_EQ(a.values.size(), 6u);
    for (size_t i = 0; i < v.size(); ++i)
        EXPECT_EQ(a.values[i], static_cast<double>(static_cast<float>(v[i])));
    const std::vector<int64_t> ints = {0, 5, -3};
    write_npy(path_, ints.data(), Shape{3});
    a = read_npy(path_);
    EXPECT_EQ(a.dtype, NpyDtype::i64);
    EXPECT_EQ(a.values, (std::vector<double>{0, 5, -3}));
}

TEST_F(Npy, ReadsHandMadeFilesOfEveryVersionAndBigEndian) {
    write_raw(path_, npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                               doubles({1.5, 2.5})));
    EXPECT_EQ(read_npy(path_).values, (std::vector<double>{1.5, 2.5}));
    write_raw(path_, npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }",
                               doubles({1.5, 2.5}), 2));
    EXPECT_EQ(read_npy(path_).shape, (Shape{1, 2}));
    std::string be = doubles({1.5});
    std::reverse(be.begin(), be.end());
    write_raw(path_, npy_bytes("{'descr': '>f8', 'fortran_order': False, 'shape': (1,), }", be));
    EXPECT_EQ(read_npy(path_).values, (std::vector<double>{1.5}));
    write_raw(path_, npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 8), }", ""));
    EXPECT_EQ(read_npy(path_).shape, (Shape{0, 8}));
}

TEST_F(Npy, StreamedFileReadMatchesTheBufferParser) {
    // read_npy streams regular files in 1 MiB blocks; parse_npy converts a buffer at once. Both
    // must give the same array for every dtype and byte order, across block boundaries (counts
    // that are not a multiple of a block).
    const size_t count = 3 * (size_t{1} << 17) + 7;
    std::mt19937_64 gen(7);
    for (const char* descr : {"<f8", ">f8", "<f4", ">f4", "<i4", ">i8", "<i8"}) {
        const size_t item = descr[2] - '0';
        std::string body(count * item, '\0');
        for (size_t i = 0; i < count; ++i) {
            unsigned char b[8];
            const uint64_t r = gen();
            if (descr[1] == 'f' && item == 8) {
                const double v = static_cast<double>(r >> 11) * 1e-9 - 4e6;
                std::memcpy(b, &v, 8);
            } else if (descr[1] == 'f') {
                const float v = static_cast<float>(r >> 40) * 1e-3f - 5e3f;
                std::memcpy(b, &v, 4);
            } else if (item == 8) {
                const int64_t v = static_cast<int64_t>(r >> 12) - (int64_t{1} << 51);
                std::memcpy(b, &v, 8);
            } else {
                const int32_t v = static_cast<int32_t>(r);
                std::memcpy(b, &v, 4);
            }
            if (descr[0] == '>') std::reverse(b, b + item);
            std::memcpy(&body[i * item], b, item);
        }
        const std::string bytes =
            npy_bytes(std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" +
                          std::to_string(count) + ",), }",
                      body);
        write_raw(path_, bytes);
        const NpyArray a = read_npy(path_), b = parse_npy(bytes, path_);
        EXPECT_EQ(a.shape, b.shape) << descr;
        EXPECT_EQ(a.dtype, b.dtype) << descr;
        EXPECT_EQ(a.values, b.values) << descr;
        EXPECT_TRUE(test::not_all_zero(a.values)) << descr;
    }
    // A value that does not fit a double, in the third block: the same error either way.
    std::string body(count * 8, '\0');
    const int64_t big = (int64_t{1} << 53) + 1;
    std::memcpy(&body[(count - 3) * 8], &big, 8);
    write_raw(path_, npy_bytes("{'descr': '<i8', 'fortran_order': False, 'shape': (" +
                                   std::to_string(count) + ",), }",
                               body));
    EXPECT_NE(error_of(path_).find("does not fit a double"), std::string::npos) << error_of(path_);
}

TEST_F(Npy, BadFilesGiveOneLineErrors) {
    struct Case {
        std::string bytes, expect;
    };
    const std::string good = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }";
    const Case cases[] = {
        {"", "wrong magic"},
        {"PK\x03\x04 this is a zip", "wrong magic"},
        {npy_bytes(good, doubles({1.0})), "truncated data"},
        {npy_bytes(good, doubles({1.0, 2.0})).substr(0, 40), "truncated"},
        {npy_bytes("{'descr': '<c16', 'fortran_order': False, 'shape': (2,), }",
                   doubles({1, 2, 3, 4})),
         "unsupported dtype"},
        {npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", doubles({1, 2})),
         "unsupported dtype"},
        {npy_bytes("{'descr': '<f8', 'fortran_order': True, 'shape': (2,), }", doubles({1, 2})),
         "Fortran"},
        {npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2, -1), }", doubles({1, 2})),
         "malformed shape"},
        {npy_bytes("{'descr': '<f8', 'fortran_order': False, }", doubles({1, 2})), "no 'shape'"},
        {npy_bytes(
             "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999, 99999999999), }", ""),
         "too large"},
        {std::string("\x93NUMPY\x09\x00", 8) + "xx", "version"},
    };
    for (const Case& c : cases) {
        write_raw(path_, c.bytes);
        const std::string msg = error_of(path_);
        EXPECT_NE(msg.find(c.expect), std::string::npos)
            << "expected '" << c.expect << "', got '" << msg << "'";
        EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
        EXPECT_NE(msg.find(path_), std::string::npos) << "does not name the file: " << msg;
    }
    const std::string missing = error_of(test::temp_path("does_not_exist.npy"));
    EXPECT_NE(missing.find("cannot read"), std::string::npos) << missing;
}

TEST_F(Npy, ConfigurationsCheckShapeFinitenessAndCentre) {
    // [N, n*d] and [N, n, d] both load; positions are centred.
    const std::vector<double> x = {0, 0, 2, 0, 2, 2, 0, 2, 1, 1, 3, 1, 3, 3, 1, 3};  // 2 x dw4
    write_npy(path_, x.data(), Shape{2, 8});
    int64_t count = 0;
    std::vector<double> c = load_configurations(path_, 4, 2, &count);
    EXPECT_EQ(count, 2);
    EXPECT_EQ(c[0], -1.0);
    EXPECT_EQ(c[8], -1.0);
    write_npy(path_, x.data(), Shape{2, 4, 2}, NpyDtype::f32);
    EXPECT_EQ(load_configurations(path_, 4, 2, &count), c);
    // Wrong shape for the system.
    write_npy(path_, x.data(), Shape{2, 8});
    try {
        load_configurations(path_, 13, 3, &count);
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("does not match the system"), std::string::npos)
            << e.what();
    }
    // NaN and Inf positions are refused, naming the configuration.
    for (double bad :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
        std::vector<double> y = x;
        y[11] = bad;
        write_npy(path_, y.data(), Shape{2, 8});
        try {
            load_configurations(path_, 4, 2, &count);
            FAIL();
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("configuration 1"), std::string::npos) << e.what();
        }
    }
    // Integer arrays are not positions.
    const std::vector<int64_t> ints(8, 1);
    write_npy(path_, ints.data(), Shape{1, 8});
    EXPECT_THROW(load_configurations(path_, 4, 2, &count), Error);
}

TEST_F(Npy, AtomicWriteLeavesNoPartialFile) {
    const std::vector<double> v = {1, 2};
    EXPECT_THROW(write_npy("/nonexistent-dir/x.npy", v.data(), Shape{2}), Error);
    write_file_atomic(path_, "old");
    EXPECT_EQ(read_file(path_), "old");
    write_file_atomic(path_, "new");
    EXPECT_EQ(read_file(path_), "new");
}

}  // namespace
}  // namespace eqflow
