// safetensors reading and writing, and model files of both field types (see eqflow/model_io.h).
#include "eqflow/model_io.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "eqflow/error.h"
#include "eqflow/io.h"
#include "eqflow/json.h"

#ifndef EQFLOW_VERSION_STRING  // set by CMake from project(VERSION)
#define EQFLOW_VERSION_STRING "unknown"
#endif

namespace eqflow {

namespace {

// The reader holds the header in memory; anything bigger is not a header but a corrupted length.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// The data checksum, keyed by tensor name: FNV-1a over the tensors in name order, each as its
// name, dtype, shape and bytes, so a file re-saved by another writer with the tensors in another
// order (safetensors.torch sorts them) still verifies. Files of earlier versions carry the
// data-order checksum under kLegacyChecksumKey; it is verified when the keyed one is absent.
constexpr const char* kChecksumKey = "eqflow.tensor_checksum";
constexpr const char* kLegacyChecksumKey = "eqflow.checksum";
// The data checksum does not cover the metadata, where the sizes of the model are: a second one
// does (files written before it existed have none and are read as before).
constexpr const char* kMetaChecksumKey = "eqflow.meta_checksum";

static_assert(sizeof(double) == 8 && sizeof(float) == 4, "IEEE 754 binary64 / binary32 expected");

bool host_is_little_endian() {
    const uint16_t one = 1;
    uint8_t first;
    std::memcpy(&first, &one, 1);
    return first == 1;
}

size_t item_size(SafetensorsDtype dtype) {
    switch (dtype) {
        case SafetensorsDtype::f16:
        case SafetensorsDtype::bf16:
            return 2;
        case SafetensorsDtype::f32:
            return 4;
        case SafetensorsDtype::f64:
        case SafetensorsDtype::i64:
            break;
    }
    return 8;
}

uint32_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
float bits_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// IEEE binary16 <-> binary32, exact on the way in, round to nearest even on the way out
// (overflow to infinity, NaN kept a quiet NaN).
float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf, NaN
    if (exp != 0) return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
    // Zero or subnormal: mant * 2^-24.
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
}
uint16_t float_to_half(float f) {
    const uint32_t u = float_bits(f);
    const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
    const uint32_t abs = u & 0x7fffffffu;
    if (abs >= 0x7f800000u)  // inf or NaN
        return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
    if (abs < 0x38800000u) {  // below the smallest normal half: a multiple of 2^-24, rounded
        const float scaled = bits_float(abs) * 16777216.0f;  // exact
        const float r = std::nearbyint(scaled);              // nearest, ties to even
        return static_cast<uint16_t>(sign | static_cast<uint16_t>(r));
    }
    // Normal: drop 13 mantissa bits with round to nearest even.
    const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}
// bfloat16 is the upper half of a binary32.
float bf16_to_float(uint16_t b) {
    return bits_float(static_cast<uint32_t>(b) << 16);
}
uint16_t float_to_bf16(float f) {
    const uint32_t u = float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
    return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

std::string hex64(uint64_t v) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
    return buf;
}

// FNV-1a over the metadata sorted by key, each key and value preceded by its length (so that no
// two different maps hash the same bytes), without the two checksum entries.
uint64_t metadata_checksum(const std::vector<std::pair<std::string, std::string>>& metadata) {
    std::vector<std::pair<std::string, std::string>> sorted;
    for (const auto& kv : metadata)
        if (kv.first != kChecksumKey && kv.first != kLegacyChecksumKey &&
            kv.first != kMetaChecksumKey)
            sorted.push_back(kv);
    std::sort(sorted.begin(), sorted.end());
    std::string bytes;
    for (const auto& [key, value] : sorted) {
        bytes += std::to_string(key.size()) + ":" + key;
        bytes += std::to_string(value.size()) + ":" + value;
    }
    return fnv1a64(bytes.data(), bytes.size());
}

// The data checksum keyed by name (kChecksumKey): tensors in name order, each as
// "len:name", its dtype, its shape and its bytes (in the data section at `data`, at the tensor's
// offset). The tensors' offsets must already be known: t.values / t.ints are not used.
struct TensorBytes {
    const std::string* name;
    const char* dtype;
    const Shape* shape;
    const char* begin;
    size_t size;
};
uint64_t keyed_checksum(std::vector<TensorBytes> tensors) {
    std::sort(tensors.begin(), tensors.end(),
              [](const TensorBytes& a, const TensorBytes& b) { return *a.name < *b.name; });
    std::string bytes;
    for (const TensorBytes& t : tensors) {
        bytes += std::to_string(t.name->size()) + ":" + *t.name + t.dtype + shape_string(*t.shape);
        bytes.append(t.begin, t.size);
    }
    return fnv1a64(bytes.data(), bytes.size());
}
// For the writer: tensors laid out back to back in file order from `data`.
uint64_t tensor_checksum(const std::vector<SafeTensor>& tensors, const char* data) {
    std::vector<TensorBytes> list;
    size_t offset = 0;
    for (const SafeTensor& t : tensors) {
        const size_t size = static_cast<size_t>(shape_numel(t.shape)) * item_size(t.dtype);
        list.push_back({&t.name, safetensors_dtype_name(t.dtype), &t.shape, data + offset, size});
        offset += size;
    }
    return keyed_checksum(std::move(list));
}

}  // namespace

const char* safetensors_dtype_name(SafetensorsDtype dtype) {
    static const char* const kNames[] = {"F32", "F64", "I64", "F16", "BF16"};  // enum order
    return kNames[static_cast<int>(dtype)];
}

SafeTensor SafeTensor::f64(std::string name, Shape shape, std::vector<double> values) {
    SafeTensor t;
    t.name = std::move(name);
    t.dtype = SafetensorsDtype::f64;
    t.shape = std::move(shape);
    t.values = std::move(values);
    return t;
}

SafeTensor SafeTensor::f32(std::string name, Shape shape, std::vector<double> values) {
    SafeTensor t = f64(std::move(name), std::move(shape), std::move(values));
    t.dtype = SafetensorsDtype::f32;
    return t;
}

SafeTensor SafeTensor::i64(std::string name, Shape shape, std::vector<int64_t> ints) {
    SafeTensor t = f64(std::move(name), std::move(shape), {});
    t.dtype = SafetensorsDtype::i64;
    t.ints = std::move(ints);
    return t;
}

const SafeTensor* SafetensorsFile::find(const std::string& name) const {
    for (const SafeTensor& t : tensors)
        if (t.name == name) return &t;
    return nullptr;
}

const SafeTensor& SafetensorsFile::at(const std::string& name) const {
    const SafeTensor* t = find(name);
    EQFLOW_CHECK(t != nullptr, "missing tensor '" << name << "'");
    return *t;
}

bool SafetensorsFile::has_meta(const std::string& key) const {
    for (const auto& kv : metadata)
        if (kv.first == key) return true;
    return false;
}

const std::string& SafetensorsFile::meta(const std::string& key) const {
    for (const auto& kv : metadata)
        if (kv.first == key) return kv.second;
    EQFLOW_THROW("missing metadata key '" << key << "'");
}

void SafetensorsFile::set_meta(const std::string& key, std::string value) {
    for (auto& kv : metadata) {
        if (kv.first == key) {
            kv.second = std::move(value);
            return;
        }
    }
    metadata.emplace_back(key, std::move(value));
}

uint64_t fnv1a64(const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t k = 0; k < size; ++k) {
        h ^= p[k];
        h *= 0x100000001b3ull;
    }
    return h;
}

std::string serialize_safetensors(const SafetensorsFile& file) {
    EQFLOW_CHECK(host_is_little_endian(), "safetensors writing needs a little-endian host");
    std::set<std::string> names;
    std::string data;
    Json header = Json::object();
    std::vector<std::pair<std::string, Json>> entries;
    for (const SafeTensor& t : file.tensors) {
        EQFLOW_CHECK(!t.name.empty(), "safetensors: a tensor has an empty name");
        EQFLOW_CHECK(t.name != "__metadata__", "safetensors: '__metadata__' is not a tensor name");
        EQFLOW_CHECK(names.insert(t.name).second,
                     "safetensors: duplicate tensor name '" << t.name << "'");
        for (int64_t s : t.shape)
            EQFLOW_CHECK(s >= 0, "safetensors: tensor '" << t.name << "' has a negative dimension");
        const int64_t count = shape_numel(t.shape);
        const size_t have = t.dtype == SafetensorsDtype::i64 ? t.ints.size() : t.values.size();
        EQFLOW_CHECK(static_cast<int64_t>(have) == count,
                     "safetensors: tensor '" << t.name << "' has " << have << " values for shape "
                                             << shape_string(t.shape));
        const size_t begin = data.size();
        for (int64_t k = 0; k < count; ++k) {
            if (t.dtype == SafetensorsDtype::f64) {
                data.append(reinterpret_cast<const char*>(&t.values[k]), 8);
            } else if (t.dtype == SafetensorsDtype::f32) {
                const float f = static_cast<float>(t.values[k]);
                data.append(reinterpret_cast<const char*>(&f), 4);
            } else if (t.dtype == SafetensorsDtype::f16 || t.dtype == SafetensorsDtype::bf16) {
                const float f = static_cast<float>(t.values[k]);
                const uint16_t h =
                    t.dtype == SafetensorsDtype::f16 ? float_to_half(f) : float_to_bf16(f);
                data.append(reinterpret_cast<const char*>(&h), 2);
            } else {
                data.append(reinterpret_cast<const char*>(&t.ints[k]), 8);
            }
        }
        Json entry = Json::object();
        entry["dtype"] = safetensors_dtype_name(t.dtype);
        Json shape = Json::array();
        for (int64_t s : t.shape) shape.push_back(Json(s));
        entry["shape"] = shape;
        Json offsets = Json::array();
        offsets.push_back(Json(static_cast<int64_t>(begin)));
        offsets.push_back(Json(static_cast<int64_t>(data.size())));
        entry["data_offsets"] = offsets;
        entries.emplace_back(t.name, entry);
    }
    Json meta = Json::object();
    for (const auto& kv : file.metadata) {
        if (kv.first == kChecksumKey || kv.first == kLegacyChecksumKey ||
            kv.first == kMetaChecksumKey)
            continue;  // recomputed below
        meta[kv.first] = kv.second;
    }
    meta[kChecksumKey] = hex64(tensor_checksum(file.tensors, data.data()));
    meta[kMetaChecksumKey] = hex64(metadata_checksum(file.metadata));
    header["__metadata__"] = meta;
    for (auto& e : entries) header[e.first] = e.second;

    std::string json = header.dump();
    while (json.size() % 8 != 0) json.push_back(' ');
    std::string out(8, '\0');
    const uint64_t n = json.size();
    std::memcpy(&out[0], &n, 8);
    out += json;
    out += data;
    return out;
}

SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& what) {
    EQFLOW_CHECK(host_is_little_endian(), "safetensors reading needs a little-endian host");
    EQFLOW_CHECK(bytes.size() >= 8, what << ": not a safetensors file (" << bytes.size()
                                         << " bytes, shorter than the 8-byte header length)");
    uint64_t header_len = 0;
    std::memcpy(&header_len, bytes.data(), 8);
    EQFLOW_CHECK(header_len >= 2 && header_len <= kMaxHeaderBytes,
                 what << ": corrupted header length " << header_len);
    EQFLOW_CHECK(header_len <= bytes.size() - 8, what << ": truncated file (header of "
                                                      << header_len << " bytes, but only "
                                                      << bytes.size() - 8 << " follow)");
    const std::string header_text = bytes.substr(8, header_len);
    const size_t data_begin = 8 + header_len;
    const uint64_t data_size = bytes.size() - data_begin;

    Json header;
    try {
        header = Json::parse(header_text);
    } catch (const Error& e) {
        EQFLOW_THROW(what << ": corrupted header: " << e.what());
    }
    EQFLOW_CHECK(header.is_object(), what << ": corrupted header: not a JSON object");

    SafetensorsFile file;
    struct Span {
        uint64_t begin, end;
        size_t index;
    };
    std::vector<Span> spans;
    for (const auto& kv : header.as_object()) {
        const std::string& name = kv.first;
        const Json& entry = kv.second;
        if (name == "__metadata__") {
            EQFLOW_CHECK(entry.is_object(), what << ": __metadata__ is not an object");
            for (const auto& m : entry.as_object()) {
                EQFLOW_CHECK(m.second.is_string(),
                             what << ": metadata value of '" << m.first << "' is not a string");
                file.metadata.emplace_back(m.first, m.second.as_string());
            }
            continue;
        }
        EQFLOW_CHECK(entry.is_object() && entry.contains("dtype") && entry.contains("shape") &&
                         entry.contains("data_offsets"),
                     what << ": tensor '" << name << "' needs dtype, shape and data_offsets");
        SafeTensor t;
        t.name = name;
        EQFLOW_CHECK(entry.at("dtype").is_string(),
                     what << ": tensor '" << name << "' has a non-string dtype");
        const std::string& dtype = entry.at("dtype").as_string();
        if (dtype == "F32") {
            t.dtype = SafetensorsDtype::f32;
        } else if (dtype == "F64") {
            t.dtype = SafetensorsDtype::f64;
        } else if (dtype == "I64") {
            t.dtype = SafetensorsDtype::i64;
        } else if (dtype == "F16") {
            t.dtype = SafetensorsDtype::f16;
        } else if (dtype == "BF16") {
            t.dtype = SafetensorsDtype::bf16;
        } else {
            EQFLOW_THROW(what << ": tensor '" << name << "' has unsupported dtype " << dtype
                              << " (supported: F32, F64, F16, BF16, I64)");
        }
        const Json& shape = entry.at("shape");
        EQFLOW_CHECK(shape.is_array(),
                     what << ": tensor '" << name << "' has a shape that is not an array");
        uint64_t count = 1;
        for (const Json& s : shape.as_array()) {
            EQFLOW_CHECK(s.is_number() && s.as_number() >= 0 &&
                             s.as_number() <= static_cast<double>(data_size) &&
                             std::floor(s.as_number()) == s.as_number(),
                         what << ": tensor '" << name << "' has an invalid shape " << shape.dump());
            const uint64_t dim = static_cast<uint64_t>(s.as_int());
            // count <= data_size < 2^63 after each step, unless a zero dimension came first.
            EQFLOW_CHECK(dim == 0 || count <= data_size / dim, what << ": tensor '" << name
                                                                    << "' shape " << shape.dump()
                                                                    << " does not fit the file");
            count *= dim;
            t.shape.push_back(static_cast<int64_t>(dim));
        }
        const Json& offsets = entry.at("data_offsets");
        EQFLOW_CHECK(offsets.is_array() && offsets.size() == 2 &&
                         offsets.as_array()[0].is_number() && offsets.as_array()[1].is_number(),
                     what << ": tensor '" << name << "' has invalid data_offsets");
        const double b = offsets.as_array()[0].as_number(), e = offsets.as_array()[1].as_number();
        EQFLOW_CHECK(b >= 0 && e >= b && std::floor(b) == b && std::floor(e) == e &&
                         e <= static_cast<double>(data_size),
                     what << ": tensor '" << name << "' data_offsets [" << b << ", " << e
                          << "] outside the data section of " << data_size
                          << " bytes (truncated file?)");
        const uint64_t begin = static_cast<uint64_t>(b), end = static_cast<uint64_t>(e);
        EQFLOW_CHECK(end - begin == count * item_size(t.dtype),
                     what << ": tensor '" << name << "' has " << end - begin << " bytes, but "
                          << dtype << " " << shape_string(t.shape) << " needs "
                          << count * item_size(t.dtype));
        spans.push_back(Span{begin, end, file.tensors.size()});
        file.tensors.push_back(std::move(t));
    }
    // The tensors must tile the data section: no holes, no overlaps.
    std::vector<Span> sorted = spans;
    std::sort(sorted.begin(), sorted.end(), [](const Span& a, const Span& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    uint64_t cursor = 0;
    for (const Span& s : sorted) {
        EQFLOW_CHECK(s.begin == cursor, what << ": tensor '" << file.tensors[s.index].name
                                             << "' starts at byte " << s.begin
                                             << " of the data section, expected " << cursor
                                             << " (tensors must be contiguous, without overlap)");
        cursor = s.end;
    }
    EQFLOW_CHECK(cursor == data_size, what << ": data section has " << data_size
                                           << " bytes, tensors cover " << cursor
                                           << " (trailing bytes or truncated file)");

    const char* data = bytes.data() + data_begin;
    for (const Span& s : spans) {
        SafeTensor& t = file.tensors[s.index];
        const size_t count = static_cast<size_t>(shape_numel(t.shape));
        const char* src = data + s.begin;
        if (t.dtype == SafetensorsDtype::i64) {
            t.ints.resize(count);
            if (count) std::memcpy(t.ints.data(), src, count * 8);
        } else if (t.dtype == SafetensorsDtype::f64) {
            t.values.resize(count);
            if (count) std::memcpy(t.values.data(), src, count * 8);
        } else if (t.dtype == SafetensorsDtype::f32) {
            t.values.resize(count);
            for (size_t k = 0; k < count; ++k) {
                float f;
                std::memcpy(&f, src + 4 * k, 4);
                t.values[k] = f;
            }
        } else {
            t.values.resize(count);
            for (size_t k = 0; k < count; ++k) {
                uint16_t h;
                std::memcpy(&h, src + 2 * k, 2);
                t.values[k] =
                    t.dtype == SafetensorsDtype::f16 ? half_to_float(h) : bf16_to_float(h);
            }
        }
    }
    if (file.has_meta(kChecksumKey)) {
        std::vector<TensorBytes> list;
        for (const Span& sp : spans) {
            const SafeTensor& t = file.tensors[sp.index];
            list.push_back({&t.name, safetensors_dtype_name(t.dtype), &t.shape, data + sp.begin,
                            static_cast<size_t>(sp.end - sp.begin)});
        }
        const std::string expected = file.meta(kChecksumKey);
        const std::string actual = hex64(keyed_checksum(std::move(list)));
        EQFLOW_CHECK(expected == actual, what << ": checksum mismatch (header says " << expected
                                              << ", the tensors give " << actual
                                              << "): the file is corrupted");
    } else if (file.has_meta(kLegacyChecksumKey)) {
        const std::string expected = file.meta(kLegacyChecksumKey);
        const std::string actual = hex64(fnv1a64(data, data_size));
        EQFLOW_CHECK(expected == actual, what << ": checksum mismatch (header says " << expected
                                              << ", data gives " << actual
                                              << "): the file is corrupted");
    }
    if (file.has_meta(kMetaChecksumKey)) {
        const std::string expected = file.meta(kMetaChecksumKey);
        const std::string actual = hex64(metadata_checksum(file.metadata));
        EQFLOW_CHECK(expected == actual, what << ": metadata checksum mismatch (header says "
                                              << expected << ", metadata gives " << actual
                                              << "): the file is corrupted");
    }
    return file;
}

void write_safetensors(const std::string& path, const SafetensorsFile& file) {
    write_file_atomic(path, serialize_safetensors(file));
}

SafetensorsFile read_safetensors(const std::string& path) {
    return parse_safetensors(read_file(path), path);
}

// ---------------------------------------------------------------------------------------------
// Model files: EGNN and kernel dynamics
// ---------------------------------------------------------------------------------------------

namespace {

// eqflow.format of the two field types. A file without the key is an EGNN (files from other
// safetensors writers, e.g. converted PyTorch checkpoints, and eqflow's own before the key).
constexpr const char* kEgnnFormat = "egnn-v1";
constexpr const char* kKernelFormat = "kernel-dynamics-v1";

FieldKind file_field_kind(const SafetensorsFile& f, const std::string& what) {
    if (!f.has_meta("eqflow.format")) return FieldKind::egnn;
    const std::string& format = f.meta("eqflow.format");
    if (format == kEgnnFormat) return FieldKind::egnn;
    if (format == kKernelFormat) return FieldKind::kernel;
    EQFLOW_THROW(what << ": unknown model format '" << format << "' (metadata eqflow.format; this "
                      << "version reads " << kEgnnFormat << " and " << kKernelFormat << ")");
}

std::string format_double(double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", x);
    return buf;
}

int64_t parse_int_meta(const SafetensorsFile& f, const std::string& key, const std::string& what) {
    EQFLOW_CHECK(f.has_meta(key), what << ": missing metadata key '" << key << "'");
    const std::string& s = f.meta(key);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    EQFLOW_CHECK(!s.empty() && end && *end == '\0' && errno == 0,
                 what << ": metadata '" << key << "' = '" << s << "' is not an integer");
    return v;
}

bool parse_bool_meta(const SafetensorsFile& f, const std::string& key, const std::string& what) {
    EQFLOW_CHECK(f.has_meta(key), what << ": missing metadata key '" << key << "'");
    const std::string& s = f.meta(key);
    if (s == "true" || s == "1" || s == "True") return true;
    if (s == "false" || s == "0" || s == "False") return false;
    EQFLOW_THROW(what << ": metadata '" << key << "' = '" << s << "' is not true or false");
}

// Limits on the sizes in a model's metadata (n_particles, dim, hidden, layers): far above any
// model eqflow trains, far below what would make the layout or the workspaces unbounded.
constexpr int64_t kMaxModelSize[4] = {1 << 16, 16, 1 << 14, 1 << 10};
// The fewest tensors one EGNN layer has (edge, node and coord MLPs; attention adds two).
constexpr int64_t kTensorsPerLayer = 11;
// The length scale and the coordinate range are in the system's units: any value outside these
// bounds overflows the positions or the field long before it could be a real model.
constexpr double kMinLengthScale = 1e-8, kMaxLengthScale = 1e8, kMaxCoordsRange = 1e6;

double parse_double_meta(const SafetensorsFile& f, const std::string& key,
                         const std::string& what) {
    EQFLOW_CHECK(f.has_meta(key), what << ": missing metadata key '" << key << "'");
    const std::string& s = f.meta(key);
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    EQFLOW_CHECK(!s.empty() && end && *end == '\0' && std::isfinite(v),
                 what << ": metadata '" << key << "' = '" << s << "' is not a finite number");
    return v;
}

// The parameters of a model from the file's tensors: every layout entry present, floating,
// with its shape and finite values, and no other tensor. Every tensor is checked against the
// layout before the parameters are allocated: their count is then bounded by the file's size.
std::vector<double> read_layout_tensors(const SafetensorsFile& f,
                                        const std::vector<ParamEntry>& layout, int64_t count,
                                        const std::string& what) {
    std::set<std::string> expected;
    std::map<std::string, const SafeTensor*> by_name;  // find() is linear: no T^2 on big files
    for (const SafeTensor& t : f.tensors) by_name.emplace(t.name, &t);
    std::vector<const SafeTensor*> found;
    for (const ParamEntry& e : layout) {
        expected.insert(e.name);
        const auto it = by_name.find(e.name);
        const SafeTensor* t = it == by_name.end() ? nullptr : it->second;
        EQFLOW_CHECK(t != nullptr, what << ": missing tensor '" << e.name << "' (expected shape "
                                        << shape_string(e.shape) << ")");
        EQFLOW_CHECK(t->dtype != SafetensorsDtype::i64, what << ": tensor '" << e.name
                                                             << "' has dtype "
                                                             << safetensors_dtype_name(t->dtype)
                                                             << ", expected F32, F64, F16 or BF16");
        EQFLOW_CHECK(t->shape == e.shape, what << ": tensor '" << e.name << "' has shape "
                                               << shape_string(t->shape) << ", expected "
                                               << shape_string(e.shape));
        found.push_back(t);
    }
    std::vector<double> params(static_cast<size_t>(count), 0.0);
    for (size_t i = 0; i < layout.size(); ++i) {
        const ParamEntry& e = layout[i];
        const SafeTensor* t = found[i];
        for (size_t k = 0; k < t->values.size(); ++k) {
            EQFLOW_CHECK(std::isfinite(t->values[k]),
                         what << ": tensor '" << e.name << "' holds a non-finite value");
            params[e.offset + k] = t->values[k];
        }
    }
    for (const SafeTensor& t : f.tensors) {
        EQFLOW_CHECK(expected.count(t.name), what << ": unexpected tensor '" << t.name
                                                  << "' (not part of this model configuration)");
    }
    return params;
}

// The model's tensors, one per layout entry, in `dtype`.
void write_layout_tensors(SafetensorsFile& f, const std::vector<ParamEntry>& layout,
                          const std::vector<double>& params, SafetensorsDtype dtype) {
    for (const ParamEntry& e : layout) {
        std::vector<double> values(params.begin() + e.offset,
                                   params.begin() + e.offset + shape_numel(e.shape));
        SafeTensor t = SafeTensor::f64(e.name, e.shape, std::move(values));
        t.dtype = dtype;  // rounded on write when narrower than F64
        f.tensors.push_back(std::move(t));
    }
}

}  // namespace

SafetensorsFile egnn_model_to_safetensors(const EgnnModel& model, SafetensorsDtype dtype) {
    const EgnnConfig& c = model.config;
    EQFLOW_CHECK(dtype != SafetensorsDtype::i64,
                 "EGNN model tensors are floating point (F64, F32, F16, BF16)");
    const std::vector<ParamEntry> layout = egnn_parameter_layout(c);
    const int64_t count = egnn_parameter_count(c);
    EQFLOW_CHECK(static_cast<int64_t>(model.params.size()) == count,
                 "EGNN model has " << model.params.size() << " parameters, its configuration needs "
                                   << count);
    SafetensorsFile f;
    f.set_meta("eqflow.format", kEgnnFormat);
    f.set_meta("eqflow.version", EQFLOW_VERSION_STRING);
    f.set_meta("eqflow.system", c.system);
    f.set_meta("eqflow.n_particles", std::to_string(c.n_particles));
    f.set_meta("eqflow.dim", std::to_string(c.dim));
    f.set_meta("eqflow.hidden", std::to_string(c.hidden));
    f.set_meta("eqflow.layers", std::to_string(c.layers));
    f.set_meta("eqflow.attention", c.attention ? "true" : "false");
    f.set_meta("eqflow.tanh", c.tanh ? "true" : "false");
    f.set_meta("eqflow.coords_range", format_double(c.effective_coords_range()));
    f.set_meta("eqflow.length_scale", format_double(c.length_scale));
    if (!c.atom_types.empty()) {
        std::string types;
        for (size_t i = 0; i < c.atom_types.size(); ++i)
            types += (i ? "," : "") + std::to_string(c.atom_types[i]);
        f.set_meta("eqflow.atom_types", types);
    }
    write_layout_tensors(f, layout, model.params, dtype);
    return f;
}

EgnnModel egnn_model_from_safetensors(const SafetensorsFile& f, const std::string& what) {
    EQFLOW_CHECK(file_field_kind(f, what) == FieldKind::egnn,
                 what << ": a kernel-dynamics model (eqflow.format = " << kKernelFormat
                      << "), not an EGNN; read it with flow_model_from_safetensors / "
                         "load_flow_model");
    EgnnModel model;
    EgnnConfig& c = model.config;
    EQFLOW_CHECK(f.has_meta("eqflow.system"), what << ": missing metadata key 'eqflow.system'");
    c.system = f.meta("eqflow.system");
    const int64_t sizes[4] = {
        parse_int_meta(f, "eqflow.n_particles", what), parse_int_meta(f, "eqflow.dim", what),
        parse_int_meta(f, "eqflow.hidden", what), parse_int_meta(f, "eqflow.layers", what)};
    const char* const size_names[4] = {"n_particles", "dim", "hidden", "layers"};
    for (int k = 0; k < 4; ++k) {
        EQFLOW_CHECK(sizes[k] >= 1 && sizes[k] <= kMaxModelSize[k],
                     what << ": metadata 'eqflow." << size_names[k] << "' = " << sizes[k]
                          << " is out of range [1, " << kMaxModelSize[k] << "]");
    }
    // Every layer has at least kTensorsPerLayer tensors: a layer count that the file cannot hold
    // is refused before the layout (and its memory) is built.
    EQFLOW_CHECK(sizes[3] <= static_cast<int64_t>(f.tensors.size()) / kTensorsPerLayer,
                 what << ": metadata 'eqflow.layers' = " << sizes[3] << " but the file holds only "
                      << f.tensors.size() << " tensors");
    c.n_particles = static_cast<int>(sizes[0]);
    c.dim = static_cast<int>(sizes[1]);
    c.hidden = static_cast<int>(sizes[2]);
    c.layers = static_cast<int>(sizes[3]);
    c.attention = parse_bool_meta(f, "eqflow.attention", what);
    c.tanh = parse_bool_meta(f, "eqflow.tanh", what);
    c.coords_range = parse_double_meta(f, "eqflow.coords_range", what);
    EQFLOW_CHECK(c.coords_range >= 0 && c.coords_range <= kMaxCoordsRange,
                 what << ": metadata 'eqflow.coords_range' = " << c.coords_range
                      << " is out of range [0, " << kMaxCoordsRange << "]");
    // Files written before the length scale existed are in model units.
    if (f.has_meta("eqflow.length_scale"))
        c.length_scale = parse_double_meta(f, "eqflow.length_scale", what);
    EQFLOW_CHECK(c.length_scale >= kMinLengthScale && c.length_scale <= kMaxLengthScale,
                 what << ": metadata 'eqflow.length_scale' = " << c.length_scale
                      << " is out of range [" << kMinLengthScale << ", " << kMaxLengthScale << "]");
    if (f.has_meta("eqflow.atom_types")) {
        const std::string& s = f.meta("eqflow.atom_types");
        std::stringstream ss(s);
        std::string item;
        while (std::getline(ss, item, ',')) {
            EQFLOW_CHECK(static_cast<int64_t>(c.atom_types.size()) < sizes[0],
                         what << ": metadata 'eqflow.atom_types' has more entries than the "
                              << sizes[0] << " particles");
            char* end = nullptr;
            const long v = std::strtol(item.c_str(), &end, 10);
            EQFLOW_CHECK(!item.empty() && end && *end == '\0' && v >= 0 && v < (1 << 20),
                         what << ": metadata 'eqflow.atom_types' = '" << s
                              << "' is not a list of type indices");
            c.atom_types.push_back(static_cast<int>(v));
        }
    }
    try {
        validate_egnn_config(c);
    } catch (const Error& e) {
        EQFLOW_THROW(what << ": invalid model configuration: " << e.what());
    }

    model.params = read_layout_tensors(f, egnn_parameter_layout(c), egnn_parameter_count(c), what);
    return model;
}

void save_model(const std::string& path, const EgnnModel& model, SafetensorsDtype dtype) {
    write_safetensors(path, egnn_model_to_safetensors(model, dtype));
}

EgnnModel load_model(const std::string& path) {
    return egnn_model_from_safetensors(read_safetensors(path), path);
}

namespace {

// Limits on a kernel model's bases: as validate_kernel_config's.
constexpr int64_t kMaxKernelBasis = 4096;

std::string format_list(const std::vector<double>& values) {
    std::string s;
    for (size_t i = 0; i < values.size(); ++i) s += (i ? "," : "") + format_double(values[i]);
    return s;
}

// A comma-separated list of at most kMaxKernelBasis finite numbers.
std::vector<double> parse_list_meta(const SafetensorsFile& f, const std::string& key,
                                    const std::string& what) {
    EQFLOW_CHECK(f.has_meta(key), what << ": missing metadata key '" << key << "'");
    const std::string& s = f.meta(key);
    std::vector<double> values;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        EQFLOW_CHECK(
            static_cast<int64_t>(values.size()) < kMaxKernelBasis,
            what << ": metadata '" << key << "' has more than " << kMaxKernelBasis << " entries");
        char* end = nullptr;
        const double v = std::strtod(item.c_str(), &end);
        EQFLOW_CHECK(
            !item.empty() && end && *end == '\0' && std::isfinite(v),
            what << ": metadata '" << key << "' holds '" << item << "', not a finite number");
        values.push_back(v);
    }
    EQFLOW_CHECK(!values.empty(), what << ": metadata '" << key << "' is empty");
    return values;
}

}  // namespace

SafetensorsFile kernel_model_to_safetensors(const KernelModel& model, SafetensorsDtype dtype) {
    const KernelConfig& c = model.config;
    EQFLOW_CHECK(dtype != SafetensorsDtype::i64,
                 "kernel model tensors are floating point (F64, F32, F16, BF16)");
    validate_kernel_model(model);
    SafetensorsFile f;
    f.set_meta("eqflow.format", kKernelFormat);
    f.set_meta("eqflow.version", EQFLOW_VERSION_STRING);
    f.set_meta("eqflow.system", c.system);
    f.set_meta("eqflow.n_particles", std::to_string(c.n_particles));
    f.set_meta("eqflow.dim", std::to_string(c.dim));
    f.set_meta("eqflow.kernel.radial_centres", format_list(c.radial_centres));
    f.set_meta("eqflow.kernel.radial_widths", format_list(c.radial_widths));
    f.set_meta("eqflow.kernel.time_centres", format_list(c.time_centres));
    f.set_meta("eqflow.kernel.time_width", format_double(c.time_width));
    f.set_meta("eqflow.length_scale", format_double(c.length_scale));
    write_layout_tensors(f, kernel_parameter_layout(c), model.params, dtype);
    return f;
}

KernelModel kernel_model_from_safetensors(const SafetensorsFile& f, const std::string& what) {
    EQFLOW_CHECK(
        file_field_kind(f, what) == FieldKind::kernel,
        what << ": not a kernel-dynamics model (eqflow.format is not " << kKernelFormat << ")");
    KernelModel model;
    KernelConfig& c = model.config;
    EQFLOW_CHECK(f.has_meta("eqflow.system"), what << ": missing metadata key 'eqflow.system'");
    c.system = f.meta("eqflow.system");
    const int64_t n = parse_int_meta(f, "eqflow.n_particles", what);
    const int64_t d = parse_int_meta(f, "eqflow.dim", what);
    EQFLOW_CHECK(n >= 1 && n <= kMaxModelSize[0], what << ": metadata 'eqflow.n_particles' = " << n
                                                       << " is out of range [1, "
                                                       << kMaxModelSize[0] << "]");
    EQFLOW_CHECK(d >= 1 && d <= kMaxModelSize[1], what << ": metadata 'eqflow.dim' = " << d
                                                       << " is out of range [1, "
                                                       << kMaxModelSize[1] << "]");
    c.n_particles = static_cast<int>(n);
    c.dim = static_cast<int>(d);
    c.radial_centres = parse_list_meta(f, "eqflow.kernel.radial_centres", what);
    c.radial_widths = parse_list_meta(f, "eqflow.kernel.radial_widths", what);
    c.time_centres = parse_list_meta(f, "eqflow.kernel.time_centres", what);
    c.time_width = parse_double_meta(f, "eqflow.kernel.time_width", what);
    c.length_scale = parse_double_meta(f, "eqflow.length_scale", what);
    EQFLOW_CHECK(c.length_scale >= kMinLengthScale && c.length_scale <= kMaxLengthScale,
                 what << ": metadata 'eqflow.length_scale' = " << c.length_scale
                      << " is out of range [" << kMinLengthScale << ", " << kMaxLengthScale << "]");
    try {
        validate_kernel_config(c);
    } catch (const Error& e) {
        EQFLOW_THROW(what << ": invalid model configuration: " << e.what());
    }
    model.params =
        read_layout_tensors(f, kernel_parameter_layout(c), kernel_parameter_count(c), what);
    return model;
}

SafetensorsFile flow_model_to_safetensors(const FlowModel& model, SafetensorsDtype dtype) {
    if (model.kind == FieldKind::kernel)
        return kernel_model_to_safetensors(model.kernel_model(), dtype);
    return egnn_model_to_safetensors(model.egnn_model(), dtype);
}

FlowModel flow_model_from_safetensors(const SafetensorsFile& f, const std::string& what) {
    if (file_field_kind(f, what) == FieldKind::kernel)
        return kernel_model_from_safetensors(f, what);
    return egnn_model_from_safetensors(f, what);
}

void save_model(const std::string& path, const FlowModel& model, SafetensorsDtype dtype) {
    write_safetensors(path, flow_model_to_safetensors(model, dtype));
}

FlowModel load_flow_model(const std::string& path) {
    return flow_model_from_safetensors(read_safetensors(path), path);
}

void save_checkpoint(const std::string& path, const TrainingCheckpoint& ck) {
    const int64_t P = static_cast<int64_t>(ck.model.params.size());
    SafetensorsFile f = flow_model_to_safetensors(ck.model);
    for (const auto& [key, value] : ck.fingerprint) f.set_meta(key, value);
    f.set_meta("eqflow.train.step", std::to_string(ck.step));
    f.set_meta("eqflow.train.total_steps", std::to_string(ck.total_steps));
    f.tensors.push_back(
        SafeTensor::i64("trainer.state", Shape{4},
                        {ck.step, ck.adam_step, ck.skipped,
                         static_cast<int64_t>(std::llround(ck.elapsed_seconds * 1e3))}));
    auto moment = [&](const std::vector<double>& m) {
        return m.empty() ? std::vector<double>(static_cast<size_t>(P), 0.0) : m;
    };
    f.tensors.push_back(SafeTensor::f64("optimizer.adam.m", Shape{P}, moment(ck.adam_m)));
    f.tensors.push_back(SafeTensor::f64("optimizer.adam.v", Shape{P}, moment(ck.adam_v)));
    if (!ck.ema.empty()) f.tensors.push_back(SafeTensor::f64("optimizer.ema", Shape{P}, ck.ema));
    write_safetensors(path, f);
}

TrainingCheckpoint load_checkpoint(
    const std::string& path, const std::vector<std::pair<std::string, std::string>>& fingerprint,
    bool with_ema) {
    const SafetensorsFile f = read_safetensors(path);
    for (const auto& [key, value] : fingerprint) {
        EQFLOW_CHECK(f.has_meta(key) && f.meta(key) == value,
                     path << ": cannot resume, " << key << " was '"
                          << (f.has_meta(key) ? f.meta(key) : "?") << "' and is now '" << value
                          << "'");
    }
    // Keys that a run records only when it sets them: one in the checkpoint must be set again.
    for (const char* key :
         {"eqflow.train.ode_steps", "eqflow.train.eqot_starts", "eqflow.train.time_power"}) {
        const bool now = std::any_of(fingerprint.begin(), fingerprint.end(),
                                     [&](const auto& kv) { return kv.first == key; });
        EQFLOW_CHECK(now || !f.has_meta(key), path << ": cannot resume, " << key << " was '"
                                                   << f.meta(key) << "' and is now not set");
    }
    SafetensorsFile model_part;
    model_part.metadata = f.metadata;
    for (const SafeTensor& t : f.tensors)
        if (t.name.rfind("optimizer.", 0) != 0 && t.name.rfind("trainer.", 0) != 0)
            model_part.tensors.push_back(t);
    TrainingCheckpoint ck;
    ck.model = flow_model_from_safetensors(model_part, path);
    ck.fingerprint = fingerprint;
    const int64_t P = static_cast<int64_t>(ck.model.params.size());
    const SafeTensor& state = f.at("trainer.state");
    EQFLOW_CHECK(state.ints.size() == 4, path << ": trainer.state must hold 4 integers");
    ck.step = state.ints[0];
    ck.adam_step = state.ints[1];
    ck.skipped = state.ints[2];
    ck.elapsed_seconds = static_cast<double>(state.ints[3]) * 1e-3;
    // The checksum vouches for the bytes, not for their sense: every resumed counter and moment
    // is checked before the optimiser sees it (an Adam step of INT64_MAX overflows the update,
    // a NaN moment poisons every weight).
    const int64_t total = parse_int_meta(f, "eqflow.train.total_steps", path);
    EQFLOW_CHECK(total >= 0 && ck.step >= 0 && ck.step <= total,
                 path << ": trainer.state step " << ck.step << " is outside 0.." << total);
    ck.total_steps = total;
    EQFLOW_CHECK(
        ck.adam_step >= 0 && ck.adam_step <= ck.step,
        path << ": trainer.state Adam step " << ck.adam_step << " is outside 0.." << ck.step);
    EQFLOW_CHECK(ck.skipped >= 0 && ck.skipped <= ck.step, path << ": trainer.state skipped steps "
                                                                << ck.skipped << " outside 0.."
                                                                << ck.step);
    EQFLOW_CHECK(state.ints[3] >= 0, path << ": trainer.state has a negative elapsed time");
    ck.adam_m = f.at("optimizer.adam.m").values;
    ck.adam_v = f.at("optimizer.adam.v").values;
    EQFLOW_CHECK(
        static_cast<int64_t>(ck.adam_m.size()) == P && static_cast<int64_t>(ck.adam_v.size()) == P,
        path << ": optimizer state does not match the model's " << P << " parameters");
    for (int64_t k = 0; k < P; ++k) {
        EQFLOW_CHECK(
            std::isfinite(ck.adam_m[k]) && std::isfinite(ck.adam_v[k]) && ck.adam_v[k] >= 0,
            path << ": optimizer moment " << k << " is not finite (m = " << ck.adam_m[k]
                 << ", v = " << ck.adam_v[k] << ")");
    }
    if (with_ema) {
        ck.ema = f.at("optimizer.ema").values;
        EQFLOW_CHECK(static_cast<int64_t>(ck.ema.size()) == P,
                     path << ": EMA does not match the model");
        for (double e : ck.ema)
            EQFLOW_CHECK(std::isfinite(e), path << ": optimizer.ema holds a non-finite value");
    }
    return ck;
}

}  // namespace eqflow
