// Molecular structure files (eqflow/molecule_io.h): the PDB reader and the lookup of the
// alanine-dipeptide data files (EQFLOW_SOURCE_DATA_DIR and EQFLOW_INSTALL_DATA_DIR are set for
// this file by CMakeLists.txt).
#include "eqflow/molecule_io.h"

#include <dlfcn.h>
#include <limits.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <vector>

#include "eqflow/error.h"
#include "eqflow/force_field.h"
#include "eqflow/io.h"

namespace eqflow {

PdbStructure read_pdb(const std::string& path) {
    return parse_pdb(read_file(path), path);
}

PdbStructure parse_pdb(const std::string& text, const std::string& path) {
    std::istringstream in(text);
    PdbStructure s;
    std::string line;
    auto field = [&](size_t from, size_t len) {
        std::string f = line.size() > from ? line.substr(from, len) : "";
        const size_t a = f.find_first_not_of(' '), b = f.find_last_not_of(' ');
        return a == std::string::npos ? std::string() : f.substr(a, b - a + 1);
    };
    // Fixed columns of 8 characters: anything that is not a plain decimal number there (hex,
    // "inf", "nan", an exponent the column cannot hold) is not a PDB coordinate.
    auto plain_decimal = [](const std::string& f) {
        size_t i = (!f.empty() && (f[0] == '-' || f[0] == '+')) ? 1 : 0;
        size_t digits = 0, dots = 0;
        for (; i < f.size(); ++i) {
            if (f[i] >= '0' && f[i] <= '9') {
                ++digits;
            } else if (f[i] == '.' && dots == 0) {
                ++dots;
            } else {
                return false;
            }
        }
        return digits > 0;
    };
    int line_no = 0;
    while (std::getline(in, line)) {
        ++line_no;
        if (line.rfind("ATOM", 0) != 0 && line.rfind("HETATM", 0) != 0) continue;
        EQFLOW_CHECK(line.size() >= 54, path << ":" << line_no << ": ATOM record too short");
        s.atom_names.push_back(field(12, 4));
        s.residue_names.push_back(field(17, 3));
        const std::string rid = field(22, 4);
        char* rend = nullptr;
        const long id = std::strtol(rid.c_str(), &rend, 10);
        EQFLOW_CHECK(rid.empty() || (rend && *rend == '\0'),
                     path << ":" << line_no << ": bad residue number '" << rid << "'");
        s.residue_ids.push_back(static_cast<int>(id));  // 4 columns: fits an int
        s.elements.push_back(field(76, 2));
        for (int k = 0; k < 3; ++k) {
            const std::string f = field(30 + 8 * k, 8);
            EQFLOW_CHECK(plain_decimal(f),
                         path << ":" << line_no << ": bad coordinate '" << f << "'");
            const double v = std::strtod(f.c_str(), nullptr);
            s.positions.push_back(0.1 * v);  // Angstrom -> nm
        }
    }
    EQFLOW_CHECK(!s.atom_names.empty(), path << ": no ATOM/HETATM records");
    return s;
}

namespace {
bool is_file(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
}  // namespace

// The folder holding the eqflow shared library this code runs in ("" when unknown).
std::string library_dir() {
    Dl_info info{};
    if (::dladdr(reinterpret_cast<void*>(&aldp_data_dir), &info) == 0 || info.dli_fname == nullptr)
        return "";
    char resolved[PATH_MAX];
    if (::realpath(info.dli_fname, resolved) == nullptr) return "";
    std::string path(resolved);
    const size_t slash = path.rfind('/');
    return slash == std::string::npos ? "" : path.substr(0, slash);
}

std::string aldp_data_dir() {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("EQFLOW_DATA_DIR"); env && *env)
        candidates.push_back(std::string(env) + "/aldp");
    // Relative to the library: an install (lib/ -> share/eqflow), then the Python package's
    // layout (the library beside data/).
    if (const std::string lib = library_dir(); !lib.empty()) {
#if defined(EQFLOW_DATA_DIR_FROM_LIB)
        candidates.push_back(lib + "/" + EQFLOW_DATA_DIR_FROM_LIB + "/aldp");
#endif
        candidates.push_back(lib + "/data/aldp");
    }
#if defined(EQFLOW_SOURCE_DATA_DIR)
    candidates.push_back(std::string(EQFLOW_SOURCE_DATA_DIR) + "/aldp");
#endif
#if defined(EQFLOW_INSTALL_DATA_DIR)
    candidates.push_back(std::string(EQFLOW_INSTALL_DATA_DIR) + "/aldp");
#endif
    std::string tried;
    for (const std::string& dir : candidates) {
        if (is_file(dir + "/aldp_system.xml") && is_file(dir + "/aldp.pdb")) return dir;
        tried += (tried.empty() ? "" : ", ") + dir;
    }
    EQFLOW_THROW("alanine dipeptide: aldp_system.xml and aldp.pdb not found (looked in "
                 << tried << "); set EQFLOW_DATA_DIR to the folder holding aldp/");
}

PdbStructure aldp_structure() {
    PdbStructure s = read_pdb(aldp_data_dir() + "/aldp.pdb");
    EQFLOW_CHECK(s.n_atoms() == kAldpAtoms,
                 "aldp.pdb has " << s.n_atoms() << " atoms, expected " << kAldpAtoms);
    return s;
}

namespace {
// The atom-name column (13-16): names of fewer than 4 characters of one-letter elements start in
// column 14, as in the files PDB readers expect (" CA ", "HH31").
std::string pdb_atom_name(const std::string& name, const std::string& element) {
    std::string f = (name.size() < 4 && element.size() <= 1) ? " " + name : name;
    f.resize(4, ' ');
    return f;
}

void append_record(std::string& out, const void* bytes, uint32_t size) {
    out.append(reinterpret_cast<const char*>(&size), 4);
    out.append(static_cast<const char*>(bytes), size);
    out.append(reinterpret_cast<const char*>(&size), 4);
}
}  // namespace

std::string format_pdb_trajectory(const PdbStructure& top, const double* x, int64_t frames) {
    const int n = top.n_atoms();
    EQFLOW_CHECK(n > 0 && n <= 99999, "PDB trajectory: " << n << " atoms (1..99999)");
    EQFLOW_CHECK(frames >= 0 && frames <= 9999,
                 "PDB trajectory: " << frames << " frames (the MODEL field holds 0..9999)");
    std::string out;
    char line[96];
    for (int64_t f = 0; f < frames; ++f) {
        std::snprintf(line, sizeof line, "MODEL     %4lld\n", static_cast<long long>(f + 1));
        out += line;
        for (int i = 0; i < n; ++i) {
            const double* r = x + (f * n + i) * 3;
            double a[3];
            for (int k = 0; k < 3; ++k) {
                a[k] = 10.0 * r[k];  // nm -> Angstrom
                EQFLOW_CHECK(std::isfinite(a[k]) && std::fabs(a[k]) < 9999.9995,
                             "PDB trajectory: coordinate " << a[k] << " A of atom " << i
                                                           << " in frame " << f
                                                           << " does not fit the 8.3f column");
            }
            std::snprintf(
                line, sizeof line,
                "ATOM  %5d %4s %-3.3s A%4d    %8.3f%8.3f%8.3f  1.00  0.00          %2.2s\n", i + 1,
                pdb_atom_name(top.atom_names[i], top.elements[i]).c_str(),
                top.residue_names[i].c_str(), top.residue_ids[i] % 10000, a[0], a[1], a[2],
                top.elements[i].c_str());
            out += line;
        }
        out += "ENDMDL\n";
    }
    out += "END\n";
    return out;
}

void write_pdb_trajectory(const std::string& path, const PdbStructure& top, const double* x,
                          int64_t frames) {
    write_file_atomic(path, format_pdb_trajectory(top, x, frames));
}

std::string format_dcd(const double* x, int64_t frames, int n, const std::string& title) {
    EQFLOW_CHECK(n > 0, "DCD: no atoms");
    EQFLOW_CHECK(frames >= 0 && frames <= 0x7fffffff, "DCD: " << frames << " frames");
    std::string out;
    // Header: "CORD" and 20 control integers: frames, first step 0, step interval 1, last step,
    // unused, the time step (a float, 0) at index 9, no unit cell (10), CHARMM version 24 (19).
    int32_t icntrl[20] = {};
    icntrl[0] = static_cast<int32_t>(frames);
    icntrl[1] = 0;
    icntrl[2] = 1;
    icntrl[3] = static_cast<int32_t>(frames);
    icntrl[19] = 24;
    char head[84];
    std::memcpy(head, "CORD", 4);
    std::memcpy(head + 4, icntrl, sizeof icntrl);
    append_record(out, head, sizeof head);
    char titles[4 + 80] = {};
    const int32_t ntitle = 1;
    std::memcpy(titles, &ntitle, 4);
    std::memset(titles + 4, ' ', 80);
    std::memcpy(titles + 4, title.data(), std::min<size_t>(title.size(), 80));
    append_record(out, titles, sizeof titles);
    const int32_t natom = n;
    append_record(out, &natom, 4);
    std::vector<float> axis(static_cast<size_t>(n));
    for (int64_t f = 0; f < frames; ++f)
        for (int k = 0; k < 3; ++k) {
            for (int i = 0; i < n; ++i) {
                const double a = 10.0 * x[(f * n + i) * 3 + k];  // nm -> Angstrom
                EQFLOW_CHECK(std::isfinite(a),
                             "DCD: non-finite coordinate of atom " << i << " in frame " << f);
                axis[static_cast<size_t>(i)] = static_cast<float>(a);
            }
            append_record(out, axis.data(), static_cast<uint32_t>(4 * n));
        }
    return out;
}

void write_dcd(const std::string& path, const double* x, int64_t frames, int n,
               const std::string& title) {
    write_file_atomic(path, format_dcd(x, frames, n, title));
}

}  // namespace eqflow
