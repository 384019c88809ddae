// Molecular structure files (eqflow/molecule_io.h): the PDB reader and the lookup of the
// alanine-dipeptide data files (EQFLOW_SOURCE_DATA_DIR and EQFLOW_INSTALL_DATA_DIR are set for
// this file by CMakeLists.txt).
#include "eqflow/molecule_io.h"

#include <sys/stat.h>

#include <cstdlib>
#include <sstream>

#include "eqflow/error.h"
#include "eqflow/force_field.h"
#include "eqflow/io.h"

namespace eqflow {

PdbStructure read_pdb(const std::string& path) {
    std::istringstream in(read_file(path));
    PdbStructure s;
    std::string line;
    auto field = [&](size_t from, size_t len) {
        std::string f = line.size() > from ? line.substr(from, len) : "";
        const size_t a = f.find_first_not_of(' '), b = f.find_last_not_of(' ');
        return a == std::string::npos ? std::string() : f.substr(a, b - a + 1);
    };
    int line_no = 0;
    while (std::getline(in, line)) {
        ++line_no;
        if (line.rfind("ATOM", 0) != 0 && line.rfind("HETATM", 0) != 0) continue;
        EQFLOW_CHECK(line.size() >= 54, path << ":" << line_no << ": ATOM record too short");
        s.atom_names.push_back(field(12, 4));
        s.residue_names.push_back(field(17, 3));
        s.residue_ids.push_back(std::atoi(field(22, 4).c_str()));
        s.elements.push_back(field(76, 2));
        for (int k = 0; k < 3; ++k) {
            const std::string f = field(30 + 8 * k, 8);
            char* end = nullptr;
            const double v = std::strtod(f.c_str(), &end);
            EQFLOW_CHECK(!f.empty() && end && *end == '\0',
                         path << ":" << line_no << ": bad coordinate '" << f << "'");
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

std::string aldp_data_dir() {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("EQFLOW_DATA_DIR"); env && *env)
        candidates.push_back(std::string(env) + "/aldp");
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
