// safetensors files and EGNN model files: round trips (bit-identical), files from other
// writers, and clear errors for every kind of damage (never a crash, never a read past the end).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "eqflow/egnn.h"
#include "eqflow/error.h"
#include "eqflow/io.h"
#include "eqflow/json.h"
#include "eqflow/model_io.h"
#include "test_util.h"

namespace eqflow {
namespace {

// The message of the Error that `fn` throws ("" when it does not throw).
template <class Fn>
std::string error_of(Fn fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

#define EXPECT_ERROR_CONTAINS(expr, text)                                             \
    do {                                                                              \
        const std::string msg_ = error_of([&] { (void)(expr); });                     \
        EXPECT_NE(msg_.find(text), std::string::npos) << "message: '" << msg_ << "'"; \
    } while (0)

// A safetensors file as another writer would produce it: our own header JSON, no checksum.
std::string foreign_file(const std::string& header_json, const std::string& data) {
    std::string out(8, '\0');
    const uint64_t n = header_json.size();
    std::memcpy(&out[0], &n, 8);
    return out + header_json + data;
}

std::string f64_bytes(const std::vector<double>& v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 8);
}

SafetensorsFile sample_file() {
    SafetensorsFile f;
    f.tensors.push_back(SafeTensor::f64("w", {2, 3}, {1.0, -2.5, 3.25, 1e-300, -0.0, 1.0 / 3.0}));
    f.tensors.push_back(SafeTensor::f32("h", {3}, {0.5, 1.0 / 3.0, -7.0}));
    f.tensors.push_back(SafeTensor::i64("step", {}, {123456789012345LL}));
    f.tensors.push_back(SafeTensor::i64(
        "state", {3},
        {std::numeric_limits<int64_t>::min(), -1, std::numeric_limits<int64_t>::max()}));
    f.tensors.push_back(SafeTensor::f64("empty", {0, 4}, {}));
    f.set_meta("kind", "test");
    f.set_meta("note", "quotes \" and \\ backslashes, unicode \xc3\xa9");
    return f;
}

TEST(Safetensors, RoundTripAllDtypes) {
    const SafetensorsFile f = sample_file();
    const std::string path = test::temp_path("roundtrip.safetensors");
    write_safetensors(path, f);
    const SafetensorsFile g = read_safetensors(path);
    std::remove(path.c_str());
    ASSERT_NO_FATAL_FAILURE(test::expect_same_records(g.tensors, f.tensors, &SafeTensor::name,
                                                      &SafeTensor::dtype, &SafeTensor::shape,
                                                      &SafeTensor::ints));
    // F64 bit-identical (including -0.0 and subnormal-adjacent values), F32 rounded once.
    const std::vector<double>& w = g.at("w").values;
    ASSERT_EQ(w.size(), 6u);
    EXPECT_EQ(std::memcmp(w.data(), f.tensors[0].values.data(), 6 * sizeof(double)), 0);
    EXPECT_EQ(g.at("h").values, (std::vector<double>{0.5, static_cast<double>(1.0f / 3.0f), -7.0}));
    EXPECT_EQ(g.meta("kind"), "test");
    EXPECT_EQ(g.meta("note"), f.meta("note"));
    EXPECT_TRUE(g.has_meta("eqflow.tensor_checksum"));
    EXPECT_EQ(g.meta("eqflow.tensor_checksum").size(), 16u);
    EXPECT_THROW(g.at("nope"), Error);
    EXPECT_THROW(g.meta("nope"), Error);
}

TEST(Safetensors, LayoutFollowsTheFormat) {
    const std::string bytes = serialize_safetensors(sample_file());
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    EXPECT_EQ(n % 8, 0u);  // header padded to a multiple of 8
    const Json header = Json::parse(bytes.substr(8, n));
    EXPECT_EQ(header.at("w").at("dtype").as_string(), "F64");
    EXPECT_EQ(header.at("w").at("data_offsets").as_array()[0].as_int(), 0);
    EXPECT_EQ(header.at("w").at("data_offsets").as_array()[1].as_int(), 48);
    EXPECT_EQ(header.at("h").at("data_offsets").as_array()[1].as_int(), 60);
    EXPECT_EQ(bytes.size(), 8 + n + 48 + 12 + 8 + 24);
    // The checksum keyed by name: FNV-1a 64 over the tensors in name order, each as "len:name",
    // dtype, shape and bytes; and the published test vector of the hash.
    EXPECT_EQ(fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
    const char* data = bytes.data() + 8 + n;
    std::string keyed;
    for (const char* name : {"empty", "h", "state", "step", "w"}) {  // sorted by name
        const Json& e = header.at(name);
        Shape shape;
        for (const Json& d : e.at("shape").as_array()) shape.push_back(d.as_int());
        const int64_t begin = e.at("data_offsets").as_array()[0].as_int();
        const int64_t end = e.at("data_offsets").as_array()[1].as_int();
        keyed += std::to_string(std::string(name).size()) + ":" + name + e.at("dtype").as_string() +
                 shape_string(shape);
        keyed.append(data + begin, static_cast<size_t>(end - begin));
    }
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx",
                  static_cast<unsigned long long>(fnv1a64(keyed.data(), keyed.size())));
    EXPECT_EQ(header.at("__metadata__").at("eqflow.tensor_checksum").as_string(), hex);
}

// A file re-saved by another writer with the same tensors in another order (as
// safetensors.torch.save_file does: sorted by name) and the same metadata still verifies; a
// changed byte in any tensor does not.
TEST(Safetensors, ChecksumIsKeyedByNameNotByFileOrder) {
    const SafetensorsFile f = sample_file();
    const SafetensorsFile written = parse_safetensors(serialize_safetensors(f), "ours");
    // Rebuild the file by hand in reversed tensor order with our metadata (checksums included).
    std::string data, header = "{";
    std::vector<const SafeTensor*> order;
    for (auto it = f.tensors.rbegin(); it != f.tensors.rend(); ++it) order.push_back(&*it);
    const std::string ours = serialize_safetensors(f);
    uint64_t n = 0;
    std::memcpy(&n, ours.data(), 8);
    const Json our_header = Json::parse(ours.substr(8, n));
    for (const SafeTensor* t : order) {
        const Json& e = our_header.at(t->name);
        const int64_t begin = e.at("data_offsets").as_array()[0].as_int();
        const int64_t end = e.at("data_offsets").as_array()[1].as_int();
        const size_t at = data.size();
        data.append(ours.data() + 8 + n + begin, static_cast<size_t>(end - begin));
        Json entry = e;
        Json offsets = Json::array();
        offsets.push_back(Json(static_cast<int64_t>(at)));
        offsets.push_back(Json(static_cast<int64_t>(data.size())));
        entry["data_offsets"] = offsets;
        header += "\"" + t->name + "\":" + entry.dump() + ",";
    }
    header += "\"__metadata__\":" + our_header.at("__metadata__").dump() + "}";
    const SafetensorsFile reordered = parse_safetensors(foreign_file(header, data), "reordered");
    EXPECT_EQ(reordered.tensors.front().name, f.tensors.back().name);
    EXPECT_EQ(reordered.at("w").values, written.at("w").values);
    std::string damaged = data;
    damaged[3] ^= 0x01;
    EXPECT_ERROR_CONTAINS(parse_safetensors(foreign_file(header, damaged), "damaged"),
                          "checksum mismatch");
}

// F16 and BF16: exact on read, rounded to nearest even on write.
TEST(Safetensors, HalfPrecisionTensorsRoundTrip) {
    const double inf = std::numeric_limits<double>::infinity();
    SafetensorsFile f;
    // Exactly representable in binary16: +-0, 1, -2, the largest (65504), the smallest normal
    // (2^-14) and subnormal (2^-24) values, infinity.
    const std::vector<double> exact16 = {
        0.0, -0.0, 1.0, -2.0, 65504.0, 6.103515625e-05, 5.960464477539063e-08, -inf};
    f.tensors.push_back(SafeTensor::f64("a16", {8}, exact16));
    f.tensors.back().dtype = SafetensorsDtype::f16;
    // Rounded: 1/3 -> 0x3555 = 0.333251953125; 65520 rounds to infinity; 2^-25 (a tie) to 0.
    f.tensors.push_back(SafeTensor::f64("r16", {3}, {1.0 / 3.0, 65520.0, 2.9802322387695312e-08}));
    f.tensors.back().dtype = SafetensorsDtype::f16;
    // bfloat16: 1/3 -> 0x3eab = 0.333984375; 3.0e38 stays finite; 1 + 2^-8 (a tie) -> 1.
    f.tensors.push_back(SafeTensor::f64("b", {4}, {1.0 / 3.0, 3.0e38, 1.00390625, -inf}));
    f.tensors.back().dtype = SafetensorsDtype::bf16;
    const SafetensorsFile g = parse_safetensors(serialize_safetensors(f), "half");
    EXPECT_EQ(g.at("a16").dtype, SafetensorsDtype::f16);
    EXPECT_EQ(g.at("a16").values, exact16);
    EXPECT_TRUE(std::signbit(g.at("a16").values[1]));
    EXPECT_EQ(g.at("r16").values, (std::vector<double>{0.333251953125, inf, 0.0}));
    EXPECT_EQ(g.at("b").dtype, SafetensorsDtype::bf16);
    EXPECT_EQ(g.at("b").values[0], 0.333984375);
    EXPECT_TRUE(std::isfinite(g.at("b").values[1]));
    EXPECT_NEAR(g.at("b").values[1], 3.0e38, 3.0e38 / 256);
    EXPECT_EQ(g.at("b").values[2], 1.0);
    EXPECT_EQ(g.at("b").values[3], -inf);
}

TEST(Safetensors, ForeignFileWithoutChecksumLoads) {
    const std::string header = R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[16,20]},)"
                               R"("a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})";
    float b = 2.5f;
    const std::string data =
        f64_bytes({1.5, -3.0}) + std::string(reinterpret_cast<const char*>(&b), 4);
    const SafetensorsFile f = parse_safetensors(foreign_file(header, data), "foreign");
    EXPECT_EQ(f.at("a").values, (std::vector<double>{1.5, -3.0}));
    EXPECT_EQ(f.at("b").values, (std::vector<double>{2.5}));
    EXPECT_TRUE(f.metadata.empty());
}

TEST(Safetensors, DamagedFilesGiveClearErrors) {
    const std::string good_header = R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})";
    const std::string data = f64_bytes({1.0, 2.0});
    auto parse = [](const std::string& bytes) {
        return parse_safetensors(bytes, "damaged.safetensors");
    };
    EXPECT_NO_THROW(parse(foreign_file(good_header, data)));

    EXPECT_ERROR_CONTAINS(parse("abc"), "not a safetensors file");
    EXPECT_ERROR_CONTAINS(parse(foreign_file(good_header, data.substr(0, 12))),
                          "damaged.safetensors");
    EXPECT_ERROR_CONTAINS(parse(foreign_file(good_header, data.substr(0, 12))), "truncated");
    {
        std::string bytes = foreign_file(good_header, data);
        const uint64_t huge = 1ull << 62;
        std::memcpy(&bytes[0], &huge, 8);
        EXPECT_ERROR_CONTAINS(parse(bytes), "corrupted header length");
        const uint64_t too_long = bytes.size();
        std::memcpy(&bytes[0], &too_long, 8);
        EXPECT_ERROR_CONTAINS(parse(bytes), "truncated file");
    }
    EXPECT_ERROR_CONTAINS(parse(foreign_file("[1, 2]", "")), "not a JSON object");
    // Headers that do not describe `data`, and what the error says.
    const struct {
        const char *header, *error;
    } bad_headers[] = {
        {R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]})", "corrupted header"},
        {R"({"a":{"dtype":"F8_E4M3","shape":[16],"data_offsets":[0,16]}})",
         "unsupported dtype F8_E4M3"},
        {R"({"a":{"dtype":"F64","shape":[3],"data_offsets":[0,16]}})", "needs 24"},
        {R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[8,24]}})", "outside the data section"},
        {R"({"a":{"dtype":"F64","shape":[-2],"data_offsets":[0,16]}})", "invalid shape"},
        {R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", "trailing bytes"},
        {R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}})", "contiguous"},
        {R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
         R"("b":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}})",
         "contiguous"},
        {R"({"a":{"dtype":"F64","shape":[2]}})", "data_offsets"},
        {R"({"__metadata__":{"k":1},"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})",
         "not a string"},
        {R"({"a":{"dtype":"F64","shape":[16,16],"data_offsets":[0,16]}})", "does not fit"},
    };
    for (const auto& h : bad_headers) {
        SCOPED_TRACE(h.header);
        EXPECT_ERROR_CONTAINS(parse(foreign_file(h.header, data)), h.error);
    }

    // Our own files: a flipped data byte fails the checksum; every truncation and every flipped
    // header byte is an Error (or, for a byte inside a string that stays valid, a clean load).
    const std::string ours = serialize_safetensors(sample_file());
    uint64_t n = 0;
    std::memcpy(&n, ours.data(), 8);
    {
        std::string bad = ours;
        bad[8 + n + 3] ^= 0x10;
        EXPECT_ERROR_CONTAINS(parse(bad), "checksum mismatch");
    }
    for (size_t len = 0; len < ours.size(); ++len) {
        EXPECT_THROW(parse(ours.substr(0, len)), Error) << "truncated to " << len;
    }
    for (size_t k = 8; k < 8 + n; ++k) {
        std::string bad = ours;
        bad[k] = static_cast<char>(bad[k] ^ 0x5a);
        try {
            parse(bad);
        } catch (const Error&) {
        }
    }
}

TEST(Safetensors, WriterRejectsInconsistentTensors) {
    SafetensorsFile f;
    f.tensors.push_back(SafeTensor::f64("a", {2, 2}, {1.0, 2.0, 3.0}));
    EXPECT_ERROR_CONTAINS(serialize_safetensors(f), "3 values for shape [2, 2]");
    f.tensors[0] = SafeTensor::f64("a", {1}, {1.0});
    f.tensors.push_back(SafeTensor::f64("a", {1}, {1.0}));
    EXPECT_ERROR_CONTAINS(serialize_safetensors(f), "duplicate tensor name 'a'");
    // A missing directory: an error, and nothing is left behind.
    EXPECT_THROW(write_safetensors("/nonexistent_dir_eqflow/x.safetensors", sample_file()), Error);
}

// ---------------------------------------------------------------------------------------------
// EGNN model files
// ---------------------------------------------------------------------------------------------

EgnnModel small_model(bool typed) {
    EgnnModel m;
    m.config = default_egnn_config("dw4", 4, 2);
    m.config.hidden = 6;
    m.config.layers = 2;
    if (typed) m.config.atom_types = {0, 1, 1, 0};
    m.params = egnn_init_parameters(m.config, 11);
    auto gen = test::rng(21);
    // Make the coordinate layers matter, so that evaluating is a real check.
    for (const ParamEntry& e : egnn_parameter_layout(m.config))
        if (e.name.find("coord_mlp.2") != std::string::npos)
            for (int64_t k = 0; k < shape_numel(e.shape); ++k)
                m.params[e.offset + k] = test::random_normal(1, gen)[0];
    return m;
}

TEST(ModelFile, SaveLoadEvaluateBitIdentical) {
    for (bool typed : {false, true}) {
        EgnnModel m = small_model(typed);
        if (typed) m.config.length_scale = 0.25;  // e.g. a molecule in nm
        const std::string path = test::temp_path("model.safetensors");
        save_model(path, m);
        const EgnnModel r = load_model(path);
        const SafetensorsFile raw = read_safetensors(path);
        std::remove(path.c_str());
        EXPECT_EQ(r.params, m.params);
        EXPECT_EQ(r.config.system, "dw4");
        EXPECT_EQ(r.config.n_particles, 4);
        EXPECT_EQ(r.config.dim, 2);
        EXPECT_EQ(r.config.hidden, 6);
        EXPECT_EQ(r.config.layers, 2);
        EXPECT_EQ(r.config.attention, m.config.attention);
        EXPECT_EQ(r.config.tanh, m.config.tanh);
        EXPECT_EQ(r.config.atom_types, m.config.atom_types);
        EXPECT_EQ(r.config.effective_coords_range(), m.config.effective_coords_range());
        EXPECT_EQ(r.config.length_scale, typed ? 0.25 : 1.0);
        for (const char* key :
             {"eqflow.system", "eqflow.n_particles", "eqflow.dim", "eqflow.hidden", "eqflow.layers",
              "eqflow.attention", "eqflow.tanh", "eqflow.coords_range", "eqflow.tensor_checksum",
              "eqflow.meta_checksum", "eqflow.version"})
            EXPECT_TRUE(raw.has_meta(key)) << key;
        EXPECT_EQ(raw.has_meta("eqflow.atom_types"), typed);
        if (typed) EXPECT_EQ(raw.meta("eqflow.atom_types"), "0,1,1,0");
        // Tensors carry the state_dict names and shapes.
        EXPECT_EQ(raw.at("gcl_1.edge_mlp.0.weight").shape, (Shape{6, 14}));

        auto gen = test::rng(22);
        const std::vector<double> x = test::random_normal(3 * 8, gen), t = {0.1, 0.5, 0.9};
        std::vector<double> v1(24), v2(24), d1(3), d2(3);
        egnn_divergence(m.config, m.params.data(), 3, x.data(), t.data(), v1.data(), d1.data());
        egnn_divergence(r.config, r.params.data(), 3, x.data(), t.data(), v2.data(), d2.data());
        EXPECT_TRUE(test::not_all_zero(v1));
        EXPECT_EQ(std::memcmp(v1.data(), v2.data(), 24 * sizeof(double)), 0);
        EXPECT_EQ(std::memcmp(d1.data(), d2.data(), 3 * sizeof(double)), 0);
    }
}

TEST(ModelFile, Float32FilesLoadRounded) {
    const EgnnModel m = small_model(false);
    const std::string path = test::temp_path("model32.safetensors");
    save_model(path, m, SafetensorsDtype::f32);
    const EgnnModel r = load_model(path);
    EXPECT_EQ(read_safetensors(path).at("embedding.weight").dtype, SafetensorsDtype::f32);
    std::remove(path.c_str());
    ASSERT_EQ(r.params.size(), m.params.size());
    for (size_t k = 0; k < m.params.size(); ++k)
        EXPECT_EQ(r.params[k], static_cast<double>(static_cast<float>(m.params[k])));
}

TEST(ModelFile, LoadChecksNamesShapesDtypesAndMetadata) {
    const EgnnModel m = small_model(false);
    const SafetensorsFile good = egnn_model_to_safetensors(m);
    auto load = [](const SafetensorsFile& f) {
        return egnn_model_from_safetensors(f, "m.safetensors");
    };
    EXPECT_NO_THROW(load(good));

    SafetensorsFile f = good;
    f.tensors.erase(f.tensors.begin() + 5);  // gcl_0.edge_mlp.0.bias
    EXPECT_ERROR_CONTAINS(
        load(f), "m.safetensors: missing tensor 'gcl_0.edge_mlp.0.bias' (expected shape [6])");

    f = good;
    for (SafeTensor& t : f.tensors)
        if (t.name == "gcl_1.node_mlp.2.weight")
            t = SafeTensor::f64(t.name, {6, 5}, std::vector<double>(30, 0.0));
    EXPECT_ERROR_CONTAINS(load(f),
                          "tensor 'gcl_1.node_mlp.2.weight' has shape [6, 5], expected [6, 6]");

    f = good;
    f.tensors[0] = SafeTensor::i64("embedding.weight", {6, 1}, std::vector<int64_t>(6, 1));
    EXPECT_ERROR_CONTAINS(
        load(f), "tensor 'embedding.weight' has dtype I64, expected F32, F64, F16 or BF16");

    f = good;
    f.tensors.push_back(SafeTensor::f64("gcl_2.edge_mlp.0.bias", {6}, std::vector<double>(6, 0.0)));
    EXPECT_ERROR_CONTAINS(load(f), "unexpected tensor 'gcl_2.edge_mlp.0.bias'");

    f = good;
    for (size_t k = 0; k < f.metadata.size(); ++k)
        if (f.metadata[k].first == "eqflow.n_particles") f.metadata.erase(f.metadata.begin() + k);
    EXPECT_ERROR_CONTAINS(load(f), "missing metadata key 'eqflow.n_particles'");

    // Metadata with a value that is wrong, and what the error says.
    const struct {
        const char *key, *value, *error;
    } bad_meta[] = {
        // The att_mlp tensors are then unexpected.
        {"eqflow.attention", "false", "unexpected tensor 'gcl_0.att_mlp.0.weight'"},
        {"eqflow.tanh", "maybe", "'eqflow.tanh' = 'maybe'"},
        {"eqflow.hidden", "6x", "'eqflow.hidden' = '6x' is not an integer"},
        {"eqflow.atom_types", "0,1,x,0", "eqflow.atom_types"},
        {"eqflow.atom_types", "0,1", "invalid model configuration"},
        {"eqflow.coords_range", "nan", "eqflow.coords_range"},
        {"eqflow.length_scale", "-0.5", "length_scale"},
    };
    for (const auto& m : bad_meta) {
        SCOPED_TRACE(std::string(m.key) + " = " + m.value);
        f = good;
        f.set_meta(m.key, m.value);
        EXPECT_ERROR_CONTAINS(load(f), m.error);
    }
    // Files from before the length scale existed are in model units.
    f = good;
    f.metadata.erase(
        std::remove_if(f.metadata.begin(), f.metadata.end(),
                       [](const auto& kv) { return kv.first == "eqflow.length_scale"; }),
        f.metadata.end());
    EXPECT_EQ(egnn_model_from_safetensors(f, "old").config.length_scale, 1.0);

    f = good;
    f.tensors[1].values[0] = std::numeric_limits<double>::quiet_NaN();
    EXPECT_ERROR_CONTAINS(load(f), "non-finite");

    // A truncated model file on disk.
    const std::string path = test::temp_path("trunc.safetensors");
    const std::string bytes = serialize_safetensors(good);
    write_file_atomic(path, bytes.substr(0, bytes.size() - 100));
    EXPECT_ERROR_CONTAINS(load_model(path), path);
    EXPECT_ERROR_CONTAINS(load_model(path), "truncated");
    std::remove(path.c_str());
    EXPECT_ERROR_CONTAINS(load_model(path), "cannot read");
}

}  // namespace
}  // namespace eqflow
