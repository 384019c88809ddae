#include "eqflow/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <vector>

#include "eqflow/error.h"
#include "eqflow/io.h"

namespace eqflow {

namespace {

const char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

struct Descr {
    NpyDtype dtype;
    size_t item;
    bool big_endian;
};

// The header dict, read strictly: exactly the keys 'descr', 'fortran_order' and 'shape', each
// once (NumPy keeps the last of two equal keys; a reader that took the first would see other
// data), then only spaces up to the newline that ends the header. Values are returned as raw
// text: a quoted string, a word, or a parenthesised tuple.
struct HeaderDict {
    std::string descr, fortran_order, shape;
};

HeaderDict parse_header_dict(const std::string& h, const std::string& path) {
    const auto bad = [&](const std::string& why) {
        EQFLOW_THROW(path << ": not a valid .npy file (header " << why << ")");
    };
    size_t i = 0;
    const auto skip_ws = [&] {
        while (i < h.size() && (h[i] == ' ' || h[i] == '\t')) ++i;
    };
    const auto quoted = [&]() -> std::string {
        if (i >= h.size() || (h[i] != '\'' && h[i] != '"')) bad("has an unquoted string");
        const size_t close = h.find(h[i], i + 1);
        if (close == std::string::npos) bad("has an unterminated string");
        std::string v = h.substr(i, close - i + 1);
        i = close + 1;
        return v;
    };
    skip_ws();
    if (i >= h.size() || h[i] != '{') bad("does not start with '{'");
    ++i;
    HeaderDict d;
    bool seen[3] = {false, false, false};
    for (;;) {
        skip_ws();
        if (i < h.size() && h[i] == '}') break;
        const std::string key = quoted();
        const std::string k = key.substr(1, key.size() - 2);
        int which = k == "descr" ? 0 : k == "fortran_order" ? 1 : k == "shape" ? 2 : -1;
        if (which < 0) bad("has an unknown key " + key);
        if (seen[which]) bad("has the key " + key + " twice");
        seen[which] = true;
        skip_ws();
        if (i >= h.size() || h[i] != ':') bad("has a key without ':'");
        ++i;
        skip_ws();
        std::string value;
        if (i < h.size() && (h[i] == '\'' || h[i] == '"')) {
            value = quoted();
        } else if (i < h.size() && h[i] == '(') {
            const size_t close = h.find(')', i);
            if (close == std::string::npos) bad("has an unterminated tuple");
            value = h.substr(i, close - i + 1);
            i = close + 1;
        } else {
            const size_t b = i;
            while (i < h.size() && std::isalnum(static_cast<unsigned char>(h[i]))) ++i;
            value = h.substr(b, i - b);
        }
        (which == 0 ? d.descr : which == 1 ? d.fortran_order : d.shape) = value;
        skip_ws();
        if (i < h.size() && h[i] == ',') {
            ++i;
            continue;
        }
        skip_ws();
        if (i >= h.size() || h[i] != '}') bad("is malformed");
        break;
    }
    ++i;  // '}'
    for (int k = 0; k < 3; ++k)
        if (!seen[k])
            bad(std::string("has no '") +
                (k == 0   ? "descr"
                 : k == 1 ? "fortran_order"
                          : "shape") +
                "'");
    while (i < h.size() && h[i] == ' ') ++i;
    if (i + 1 != h.size() || h[i] != '\n')
        bad("does not end in spaces and a newline after the dict (wrong header length?)");
    return d;
}

Descr parse_descr(const std::string& raw, const std::string& path) {
    EQFLOW_CHECK(
        raw.size() >= 2 && (raw.front() == '\'' || raw.front() == '"') && raw.back() == raw.front(),
        path << ": unsupported dtype " << raw << " (expected float32, float64, int32 or int64)");
    const std::string d = raw.substr(1, raw.size() - 2);
    auto is = [&](const char* code) { return d.size() == 3 && d.compare(1, 2, code) == 0; };
    EQFLOW_CHECK(
        d.size() == 3 && (d[0] == '<' || d[0] == '>' || d[0] == '|' || d[0] == '='),
        path << ": unsupported dtype '" << d << "' (expected float32, float64, int32 or int64)");
    const bool big = d[0] == '>';
    if (is("f8")) return {NpyDtype::f64, 8, big};
    if (is("f4")) return {NpyDtype::f32, 4, big};
    if (is("i8")) return {NpyDtype::i64, 8, big};
    if (is("i4")) return {NpyDtype::i32, 4, big};
    EQFLOW_THROW(path << ": unsupported dtype '" << d
                      << "' (expected float32, float64, int32 or int64)");
}

Shape parse_shape(const std::string& raw, const std::string& path) {
    EQFLOW_CHECK(raw.size() >= 2 && raw.front() == '(' && raw.back() == ')',
                 path << ": not a valid .npy file (malformed shape " << raw << ")");
    Shape shape;
    std::string tok;
    const std::string inner = raw.substr(1, raw.size() - 2);
    for (size_t i = 0; i <= inner.size(); ++i) {
        const char c = i < inner.size() ? inner[i] : ',';
        if (c == ',') {
            // trim
            size_t a = tok.find_first_not_of(" L");
            size_t b = tok.find_last_not_of(" L");
            if (a != std::string::npos) {
                const std::string num = tok.substr(a, b - a + 1);
                EQFLOW_CHECK(
                    num.find_first_not_of("0123456789") == std::string::npos && num.size() <= 15,
                    path << ": not a valid .npy file (malformed shape " << raw << ")");
                shape.push_back(std::stoll(num));
            }
            tok.clear();
        } else {
            tok += c;
        }
    }
    return shape;
}

void byteswap(unsigned char* p, size_t n) {
    for (size_t i = 0; i < n / 2; ++i) std::swap(p[i], p[n - 1 - i]);
}

std::string make_header(const char* descr, const Shape& shape) {
    std::string dict = "{'descr': '";
    dict += descr;
    dict += "', 'fortran_order': False, 'shape': (";
    for (size_t i = 0; i < shape.size(); ++i) {
        dict += std::to_string(shape[i]);
        if (shape.size() == 1 || i + 1 < shape.size()) dict += ",";
        if (i + 1 < shape.size()) dict += " ";
    }
    dict += "), }";
    // Version 1.0: magic, 2 version bytes, uint16 header length; total padded to 64 bytes.
    size_t total = kMagicLen + 2 + 2 + dict.size() + 1;
    const size_t pad = (64 - total % 64) % 64;
    dict.append(pad, ' ');
    dict += '\n';
    std::string out(kMagic, kMagicLen);
    out += '\x01';
    out += '\x00';
    const uint16_t len = static_cast<uint16_t>(dict.size());
    out += static_cast<char>(len & 0xff);
    out += static_cast<char>(len >> 8);
    out += dict;
    return out;
}

template <class T>
void append_le(std::string& out, T v) {
    unsigned char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // the hosts eqflow supports are little-endian
    out.append(reinterpret_cast<const char*>(b), sizeof(T));
}

// Where the header dict of a .npy file starts and how long it is, from its first bytes: the
// magic, the version and the header length, checked against the file size.
struct Preamble {
    size_t header_offset = 0, header_len = 0;
};

Preamble read_preamble(const unsigned char* p, size_t avail, size_t file_size,
                       const std::string& path) {
    EQFLOW_CHECK(avail >= kMagicLen + 4 && std::memcmp(p, kMagic, kMagicLen) == 0,
                 path << ": not a .npy file (wrong magic bytes)");
    const unsigned major = p[6];
    EQFLOW_CHECK(major >= 1 && major <= 3, path << ": unsupported .npy format version " << major);
    Preamble pre;
    if (major == 1) {
        pre.header_len = p[8] | (p[9] << 8);
        pre.header_offset = 10;
    } else {
        EQFLOW_CHECK(avail >= 12, path << ": truncated .npy header");
        for (int i = 3; i >= 0; --i) pre.header_len = (pre.header_len << 8) | p[8 + i];
        pre.header_offset = 12;
    }
    EQFLOW_CHECK(pre.header_len <= file_size - pre.header_offset,
                 path << ": truncated .npy header");
    return pre;
}

// The array a header describes: shape, dtype, element count, and where the data starts; checks
// that the file holds exactly that many bytes after the header.
struct Layout {
    Shape shape;
    Descr descr;
    size_t count = 0, data_offset = 0;
};

Layout parse_layout(const std::string& header, size_t data_offset, size_t file_size,
                    const std::string& path) {
    const HeaderDict dict = parse_header_dict(header, path);
    Layout l{Shape{}, parse_descr(dict.descr, path), 1, data_offset};
    const std::string& fortran = dict.fortran_order;
    EQFLOW_CHECK(fortran == "False" || fortran == "True",
                 path << ": not a valid .npy file (fortran_order " << fortran << ")");
    EQFLOW_CHECK(fortran == "False",
                 path << ": Fortran-ordered arrays are not supported (save with C order)");
    l.shape = parse_shape(dict.shape, path);
    // Guard the element count against overflow before multiplying by the item size.
    for (int64_t s : l.shape) {
        EQFLOW_CHECK(s >= 0 && (s == 0 || l.count <= (size_t{1} << 40) / static_cast<size_t>(s)),
                     path << ": shape " << shape_string(l.shape) << " is too large");
        l.count *= static_cast<size_t>(s);
    }
    const size_t need = l.count * l.descr.item;
    const size_t have = file_size - data_offset;
    EQFLOW_CHECK(have >= need, path << ": truncated data (shape " << shape_string(l.shape)
                                    << " needs " << need << " bytes, file has " << have << ")");
    // Bytes after the array mean that the header length or the shape is not what was written.
    EQFLOW_CHECK(have == need, path << ": " << have - need << " bytes after the data (shape "
                                    << shape_string(l.shape) << " needs " << need
                                    << "): corrupted header length or shape");
    return l;
}

template <class T>
T load_item(const unsigned char* p, bool big_endian) {
    unsigned char tmp[sizeof(T)];
    std::memcpy(tmp, p, sizeof(T));
    if (big_endian) byteswap(tmp, sizeof(T));
    T v;
    std::memcpy(&v, tmp, sizeof(T));
    return v;
}

// count items at p (the layout's dtype and byte order) -> out[0..count) as double. The dtype is
// decided once per call, not per value, so each case is a plain loop.
void convert_items(const unsigned char* p, size_t count, const Descr& d, double* out,
                   const std::string& path) {
    if (count == 0) return;  // out may be null (an empty vector's data())
    const bool be = d.big_endian;
    switch (d.dtype) {
        case NpyDtype::f64:
            if (!be) {
                std::memcpy(out, p, count * 8);  // the hosts eqflow supports are little-endian
            } else {
                for (size_t i = 0; i < count; ++i) out[i] = load_item<double>(p + 8 * i, true);
            }
            break;
        case NpyDtype::f32:
            for (size_t i = 0; i < count; ++i) out[i] = load_item<float>(p + 4 * i, be);
            break;
        case NpyDtype::i32:
            for (size_t i = 0; i < count; ++i) out[i] = load_item<int32_t>(p + 4 * i, be);
            break;
        case NpyDtype::i64:
            for (size_t i = 0; i < count; ++i) {
                const int64_t v = load_item<int64_t>(p + 8 * i, be);
                EQFLOW_CHECK(v <= (int64_t{1} << 53) && v >= -(int64_t{1} << 53),
                             path << ": int64 value " << v << " does not fit a double exactly");
                out[i] = static_cast<double>(v);
            }
            break;
    }
}

// Closes a file descriptor on scope exit.
struct Fd {
    int fd;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

// Reads exactly n bytes at the current position (fewer only at the end of the file: returns the
// count read).
size_t read_fully(int fd, unsigned char* buf, size_t n, const std::string& path) {
    size_t got = 0;
    while (got < n) {
        const ssize_t r = ::read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        EQFLOW_CHECK(r >= 0, "cannot read " << path << ": " << std::strerror(errno));
        if (r == 0) break;
        got += static_cast<size_t>(r);
    }
    return got;
}

}  // namespace

NpyArray read_npy(const std::string& path) {
    // A regular file is streamed: the header first, then the data in 1 MiB blocks converted
    // straight into the result, so the file's bytes are never held in memory as a whole (a
    // 484 MB cost file would otherwise sit there twice). Anything else (a pipe, /dev/stdin) is
    // read whole and parsed like a buffer.
    struct stat st {};
    EQFLOW_CHECK(::stat(path.c_str(), &st) == 0,
                 "cannot read " << path << ": " << std::strerror(errno));
    EQFLOW_CHECK(!S_ISDIR(st.st_mode), "cannot read " << path << ": it is a directory");
    if (!S_ISREG(st.st_mode)) return parse_npy(read_file(path), path);
    const Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    EQFLOW_CHECK(f.fd >= 0, "cannot read " << path << ": " << std::strerror(errno));
    EQFLOW_CHECK(::fstat(f.fd, &st) == 0, "cannot read " << path << ": " << std::strerror(errno));
    const size_t file_size = static_cast<size_t>(st.st_size);

    unsigned char first[12];
    const size_t got = read_fully(f.fd, first, std::min<size_t>(sizeof first, file_size), path);
    const Preamble pre = read_preamble(first, got, file_size, path);
    // The header dict (it may start inside `first`), then the data from where it begins.
    std::string header(pre.header_len, '\0');
    const size_t in_first = std::min(pre.header_len, got - std::min(got, pre.header_offset));
    if (in_first > 0) std::memcpy(&header[0], first + pre.header_offset, in_first);
    const size_t rest = pre.header_len - in_first;
    EQFLOW_CHECK(
        read_fully(f.fd, reinterpret_cast<unsigned char*>(&header[in_first]), rest, path) == rest,
        path << ": truncated .npy header");
    const Layout l = parse_layout(header, pre.header_offset + pre.header_len, file_size, path);
    NpyArray arr;
    arr.shape = l.shape;
    arr.dtype = l.descr.dtype;
    arr.values.resize(l.count);
    // The data after the header: in blocks of whole items (a file that shrinks while it is read
    // is reported as truncated).
    const size_t item = l.descr.item;
    const size_t block_items = (size_t{1} << 20) / item;
    std::vector<unsigned char> block(block_items * item);
    EQFLOW_CHECK(::lseek(f.fd, static_cast<off_t>(l.data_offset), SEEK_SET) >= 0,
                 "cannot read " << path << ": " << std::strerror(errno));
    for (size_t done = 0; done < l.count;) {
        const size_t items = std::min(block_items, l.count - done);
        EQFLOW_CHECK(read_fully(f.fd, block.data(), items * item, path) == items * item,
                     path << ": truncated data (the file shrank while it was read)");
        convert_items(block.data(), items, l.descr, arr.values.data() + done, path);
        done += items;
    }
    return arr;
}

NpyArray parse_npy(const std::string& bytes, const std::string& path) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    const Preamble pre = read_preamble(p, bytes.size(), bytes.size(), path);
    const Layout l = parse_layout(bytes.substr(pre.header_offset, pre.header_len),
                                  pre.header_offset + pre.header_len, bytes.size(), path);
    NpyArray arr;
    arr.shape = l.shape;
    arr.dtype = l.descr.dtype;
    arr.values.resize(l.count);
    convert_items(p + l.data_offset, l.count, l.descr, arr.values.data(), path);
    return arr;
}

void write_npy(const std::string& path, const double* values, const Shape& shape, NpyDtype dtype) {
    const size_t count = static_cast<size_t>(shape_numel(shape));
    std::string out;
    switch (dtype) {
        case NpyDtype::f64:
            out = make_header("<f8", shape);
            for (size_t i = 0; i < count; ++i) append_le<double>(out, values[i]);
            break;
        case NpyDtype::f32:
            out = make_header("<f4", shape);
            for (size_t i = 0; i < count; ++i) append_le<float>(out, static_cast<float>(values[i]));
            break;
        case NpyDtype::i64:
            out = make_header("<i8", shape);
            for (size_t i = 0; i < count; ++i)
                append_le<int64_t>(out, static_cast<int64_t>(values[i]));
            break;
        case NpyDtype::i32:
            out = make_header("<i4", shape);
            for (size_t i = 0; i < count; ++i)
                append_le<int32_t>(out, static_cast<int32_t>(values[i]));
            break;
    }
    write_file_atomic(path, out);
}

void write_npy(const std::string& path, const float* values, const Shape& shape) {
    const size_t count = static_cast<size_t>(shape_numel(shape));
    std::string out = make_header("<f4", shape);
    for (size_t i = 0; i < count; ++i) append_le<float>(out, values[i]);
    write_file_atomic(path, out);
}

void write_npy(const std::string& path, const int64_t* values, const Shape& shape) {
    const size_t count = static_cast<size_t>(shape_numel(shape));
    std::string out = make_header("<i8", shape);
    for (size_t i = 0; i < count; ++i) append_le<int64_t>(out, values[i]);
    write_file_atomic(path, out);
}

std::vector<double> load_configurations(const std::string& path, int n, int d, int64_t* count,
                                        bool center) {
    NpyArray arr = read_npy(path);
    EQFLOW_CHECK(arr.dtype == NpyDtype::f32 || arr.dtype == NpyDtype::f64,
                 path << ": positions must be float32 or float64");
    const Shape& s = arr.shape;
    const bool flat = s.size() == 2 && s[1] == static_cast<int64_t>(n) * d;
    const bool nested = s.size() == 3 && s[1] == n && s[2] == d;
    EQFLOW_CHECK(flat || nested, path << ": shape " << shape_string(s)
                                      << " does not match the system (expected [N, " << n * d
                                      << "] or [N, " << n << ", " << d << "])");
    const int64_t N = s[0];
    for (size_t i = 0; i < arr.values.size(); ++i) {
        if (!std::isfinite(arr.values[i])) {
            EQFLOW_THROW(path << ": non-finite value " << arr.values[i] << " in configuration "
                              << static_cast<int64_t>(i) / (n * d) << " (NaN or Inf positions)");
        }
    }
    if (center) {
        for (int64_t b = 0; b < N; ++b) {
            double* x = arr.values.data() + b * n * d;
            for (int a = 0; a < d; ++a) {
                double mean = 0.0;
                for (int i = 0; i < n; ++i) mean += x[i * d + a];
                mean /= n;
                for (int i = 0; i < n; ++i) x[i * d + a] -= mean;
            }
        }
    }
    if (count) *count = N;
    return std::move(arr.values);
}

void save_configurations(const std::string& path, const std::vector<double>& x, int64_t count,
                         int n, int d, NpyDtype dtype) {
    EQFLOW_CHECK(
        static_cast<int64_t>(x.size()) == count * n * d,
        "save_configurations: " << x.size() << " values for " << count << " configurations");
    write_npy(path, x.data(), Shape{count, static_cast<int64_t>(n) * d}, dtype);
}

}  // namespace eqflow
