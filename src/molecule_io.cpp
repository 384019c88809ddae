// Molecular structure files (eqflow/molecule_io.h): the PDB reader and the lookup of the
// alanine-dipeptide data files (EQFLOW_SOURCE_DATA_DIR and EQFLOW_INSTALL_DATA_DIR are set for
// this file by CMakeLists.txt).
#include "eqflow/molecule_io.h"

#include <dlfcn.h>
#include <limits.h>
#include <sys/stat.h>

#include <cstdlib>
#include <sstream>

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

}  // namespace eqflow
