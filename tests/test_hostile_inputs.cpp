// Regression tests of issue 17: inputs that crashed, hung, or were read as something they are
// not (found by mutating valid files) give one-line eqflow::Errors, in milliseconds. The fuzz
// targets in fuzz/ keep looking for more; whatever they find lands here.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "eqflow/egnn.h"
#include "eqflow/error.h"
#include "eqflow/force_field.h"
#include "eqflow/io.h"
#include "eqflow/model_io.h"
#include "eqflow/molecule_io.h"
#include "eqflow/npy.h"

namespace eqflow {
namespace {

// Hostile inputs must be refused before any real work. They take milliseconds; the bound is
// loose for loaded CI machines and sanitizer builds, and still far below the seconds to minutes
// that the inputs took before (27 s for eqflow.layers = 2^20, minutes for many JSON keys).
constexpr double kFastSeconds = 5.0;

// Runs `f`, which must throw eqflow::Error quickly with a one-line message containing `needle`.
template <class F>
void expect_fast_error(F&& f, const std::string& needle) {
    const auto start = std::chrono::steady_clock::now();
    std::string message;
    try {
        f();
        ADD_FAILURE() << "no error; expected one containing '" << needle << "'";
        return;
    } catch (const Error& e) {
        message = e.what();
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(seconds, kFastSeconds) << message;
    EXPECT_NE(message.find(needle), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

std::string aldp_xml() {
    return read_file(aldp_data_dir() + "/aldp_system.xml");
}

std::string replace_first(std::string s, const std::string& from, const std::string& to) {
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) s.replace(at, from.size(), to);
    return s;
}

TEST(HostileXml, DeepNestingIsRefusedBeforeAnyReader) {
    // 100,000 levels overflowed the stack of OpenMM's recursive reader.
    const std::string xml = replace_first(
        aldp_xml(), "<Constraints/>", "<Constraints/>" + [] {
            std::string s;
            for (int i = 0; i < 100000; ++i) s += "<a>";
            for (int i = 0; i < 100000; ++i) s += "</a>";
            return s;
        }());
    expect_fast_error([&] { check_system_xml_limits(xml); }, "nested deeper than");
    expect_fast_error([&] { parse_openmm_system_xml(xml); }, "nested deeper than");
    // '>' inside a quoted value is no tag end; '<' inside a tag is not XML.
    expect_fast_error([&] { check_system_xml_limits("<System><a x=\"<\"/></System>"); },
                      "inside the tag");
}

TEST(HostileXml, ValuesAreParsedStrictly) {
    const std::string xml = aldp_xml();
    EXPECT_NO_THROW(parse_openmm_system_xml(xml));
    // The first NonbondedForce particle of aldp_system.xml; each edit used to give NaN or Inf
    // energies with exit code 0 (or read "0x10" as 16, "" as 0).
    const size_t nb = xml.find("<Force", xml.find("NonbondedForce") - 200);
    ASSERT_NE(nb, std::string::npos);
    const size_t p = xml.find("<Particle ", xml.find("NonbondedForce"));
    const size_t end = xml.find("/>", p);
    const std::string particle = xml.substr(p, end - p);
    auto with = [&](const std::string& key, const std::string& value) {
        const size_t k = particle.find(" " + key + "=\"");
        const size_t v0 = k + key.size() + 3, v1 = particle.find('"', v0);
        std::string edited = particle;
        edited.replace(v0, v1 - v0, value);
        std::string out = xml;
        out.replace(p, particle.size(), edited);
        return out;
    };
    const struct {
        const char* key;
        const char* value;
        const char* needle;
    } cases[] = {{"q", "1e308", "outside"},       {"sig", "1e300", "outside"},
                 {"eps", "-0.5", "outside"},      {"q", "", "not a decimal number"},
                 {"q", "0x10", "not a decimal"},  {"sig", "inf", "not a decimal"},
                 {"eps", "nan", "not a decimal"}, {"q", " 1", "not a decimal"},
                 {"q", "1e", "not a decimal"},    {"q", "1e999", "not a decimal"}};
    for (const auto& c : cases) {
        SCOPED_TRACE(std::string(c.key) + "=\"" + c.value + "\"");
        expect_fast_error([&] { parse_openmm_system_xml(with(c.key, c.value)); }, c.needle);
    }
    expect_fast_error(
        [&] {
            parse_openmm_system_xml(replace_first(xml, "forceGroup=\"0\"", "forceGroup=\"1e300\""));
        },
        "outside");
}

TEST(HostilePdb, CoordinatesAreParsedStrictly) {
    const std::string pdb = read_file(aldp_data_dir() + "/aldp.pdb");
    EXPECT_EQ(parse_pdb(pdb, "aldp.pdb").n_atoms(), 22);
    const size_t atom = pdb.find("ATOM");
    ASSERT_NE(atom, std::string::npos);
    for (const char* bad : {"     inf", "     nan", "    0x10", "  1e+300", "        "}) {
        std::string edited = pdb;
        edited.replace(atom + 30, 8, bad);
        expect_fast_error([&] { parse_pdb(edited, "aldp.pdb"); }, "bad coordinate");
    }
}

// A small valid .npy file (float64, shape (2, 3)) and its header as written by NumPy.
std::string npy_with_header(const std::string& dict, size_t data_bytes = 48) {
    std::string header = dict;
    const size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::string out = "\x93NUMPY\x01";
    out += '\0';
    out += static_cast<char>(header.size() & 0xff);
    out += static_cast<char>(header.size() >> 8);
    out += header;
    out.append(data_bytes, '\0');
    return out;
}

TEST(HostileNpy, OneReadingOfAHeader) {
    const std::string ok = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }";
    EXPECT_EQ(parse_npy(npy_with_header(ok), "ok.npy").values.size(), 6u);
    // NumPy keeps the last of two equal keys; eqflow took the first: the two read other data.
    expect_fast_error(
        [&] {
            parse_npy(npy_with_header("{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, "
                                      "'shape': (2, 3), }"),
                      "dup.npy");
        },
        "twice");
    expect_fast_error(
        [&] {
            parse_npy(npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), "
                                      "'extra': 1}"),
                      "extra.npy");
        },
        "unknown key");
    // A header length changed by 8 shifts the data: refused, not read as shifted numbers.
    for (int delta : {-8, 8, 16}) {
        std::string shifted = npy_with_header(ok);
        const int len = static_cast<unsigned char>(shifted[8]) + delta;
        shifted[8] = static_cast<char>(len);
        SCOPED_TRACE(delta);
        EXPECT_THROW(parse_npy(shifted, "shifted.npy"), Error);
    }
    // Trailing bytes after the data.
    expect_fast_error([&] { parse_npy(npy_with_header(ok, 56), "long.npy"); }, "after the data");
    // Empty arrays of every dtype (found by fuzz_npy: a zero-length copy into an empty vector's
    // null data(), which UBSan reports in the asan and fuzz builds).
    for (const char* descr : {"<f8", "=f8", ">f8", "<f4", "<i4", "<i8"}) {
        const NpyArray e = parse_npy(npy_with_header(std::string("{'descr': '") + descr +
                                                         "', 'fortran_order': False, 'shape': "
                                                         "(0, 3), }",
                                                     0),
                                     "empty.npy");
        EXPECT_EQ(e.shape, (Shape{0, 3})) << descr;
        EXPECT_TRUE(e.values.empty()) << descr;
    }
    // A newline inside a header value stays out of the one-line message.
    expect_fast_error(
        [&] {
            parse_npy(
                npy_with_header("{'descr': '<f\n8', 'fortran_order': False, 'shape': (2, 3), }"),
                "nl.npy");
        },
        "\\x0a");
}

SafetensorsFile tiny_model_file() {
    EgnnConfig c = default_egnn_config("dw4", 4, 2);
    c.hidden = 4;
    c.layers = 1;
    return egnn_model_to_safetensors(EgnnModel{c, egnn_init_parameters(c, 1)});
}

TEST(HostileModel, SizesInTheMetadataAreBoundedBeforeAllocating) {
    // eqflow.hidden = 2^20 reached an allocation of terabytes; eqflow.layers = 2^20 took 27 s
    // and 7 GB building the layout of a 29 KB file. The metadata checksum now catches such
    // edits; the bounds hold even for a file whose checksums were recomputed.
    const struct {
        const char* key;
        const char* value;
        const char* needle;
    } cases[] = {{"eqflow.hidden", "1048576", "out of range"},
                 {"eqflow.hidden", "16384", "shape"},
                 {"eqflow.layers", "1048576", "out of range"},
                 {"eqflow.layers", "1000", "holds only"},
                 {"eqflow.n_particles", "-1", "out of range"},
                 {"eqflow.length_scale", "1e300", "out of range"},
                 {"eqflow.coords_range", "1e300", "out of range"}};
    for (const auto& c : cases) {
        SCOPED_TRACE(std::string(c.key) + " = " + c.value);
        SafetensorsFile f = tiny_model_file();
        f.set_meta(c.key, c.value);
        const std::string bytes = serialize_safetensors(f);
        expect_fast_error([&] { egnn_model_from_safetensors(parse_safetensors(bytes, "m"), "m"); },
                          c.needle);
    }
    // An edit without recomputing: the metadata checksum.
    std::string bytes = serialize_safetensors(tiny_model_file());
    const size_t at = bytes.find("\"eqflow.layers\":\"1\"");
    ASSERT_NE(at, std::string::npos);
    bytes[at + std::strlen("\"eqflow.layers\":\"")] = '9';
    expect_fast_error([&] { parse_safetensors(bytes, "m"); }, "metadata checksum mismatch");
}

TEST(HostileModel, AHeaderOfManyKeysParsesInLinearTime) {
    // 200,000 metadata keys (2.6 MB) took minutes: every key was checked against all before it.
    // 100,000 here: quadratic, that is still over a minute.
    std::string header = "{\"__metadata__\":{";
    for (int i = 0; i < 100000; ++i)
        header += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":\"v\"";
    header += "}}";
    while (header.size() % 8) header += ' ';
    std::string bytes(8, '\0');
    const uint64_t n = header.size();
    std::memcpy(&bytes[0], &n, 8);
    bytes += header;
    expect_fast_error([&] { egnn_model_from_safetensors(parse_safetensors(bytes, "m"), "m"); },
                      "missing metadata key");
}

class HostileCheckpoint : public test::TempDirTest {
  protected:
    TrainingCheckpoint valid() const {
        const SafetensorsFile f = tiny_model_file();
        TrainingCheckpoint ck;
        ck.model = egnn_model_from_safetensors(f, "tiny");
        const size_t P = ck.model.params.size();
        ck.step = 10;
        ck.total_steps = 100;
        ck.adam_step = 9;
        ck.skipped = 1;
        ck.adam_m.assign(P, 0.1);
        ck.adam_v.assign(P, 0.01);
        ck.fingerprint = {{"eqflow.system", "dw4"}, {"eqflow.train.seed", "3"}};
        return ck;
    }
    void expect_refused(const TrainingCheckpoint& ck, const std::string& needle,
                        const std::vector<std::pair<std::string, std::string>>& fp) const {
        save_checkpoint(file("ck.safetensors"), ck);  // valid checksums
        expect_fast_error([&] { load_checkpoint(file("ck.safetensors"), fp, false); }, needle);
    }
};

TEST_F(HostileCheckpoint, ResumedStateIsChecked) {
    const TrainingCheckpoint ok = valid();
    save_checkpoint(file("ok.safetensors"), ok);
    EXPECT_EQ(load_checkpoint(file("ok.safetensors"), ok.fingerprint, false).step, 10);
    TrainingCheckpoint ck = ok;
    ck.step = ck.adam_step = std::numeric_limits<int64_t>::max();  // overflowed adam_update
    expect_refused(ck, "outside 0..", ok.fingerprint);
    ck = ok;
    ck.adam_step = -1;
    expect_refused(ck, "Adam step -1", ok.fingerprint);
    ck = ok;
    ck.adam_step = 11;
    expect_refused(ck, "Adam step 11", ok.fingerprint);
    ck = ok;
    ck.skipped = -3;
    expect_refused(ck, "skipped", ok.fingerprint);
    ck = ok;
    ck.adam_m[5] = std::numeric_limits<double>::quiet_NaN();
    expect_refused(ck, "not finite", ok.fingerprint);
    ck = ok;
    ck.adam_v[0] = std::numeric_limits<double>::infinity();
    expect_refused(ck, "not finite", ok.fingerprint);
    ck = ok;
    ck.adam_v[0] = -1.0;
    expect_refused(ck, "not finite", ok.fingerprint);
    // Labelled with another system: the run's fingerprint names it.
    ck = ok;
    ck.fingerprint[0].second = "lj13";
    expect_refused(ck, "eqflow.system", ok.fingerprint);
}

}  // namespace
}  // namespace eqflow
