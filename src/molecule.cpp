// Molecular force fields: the OpenMM System XML reader, dispatch of the batched energies, PDB
// reading, the alanine-dipeptide data files and the analysis helpers (dihedrals, chirality).
#include "eqflow/molecule.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <utility>

#include "cpu/molecule_cpu.h"
#include "eqflow/error.h"
#include "eqflow/io.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/molecule.cuh"
#endif

namespace eqflow {

// ---------------------------------------------------------------------------------------------
// OpenMM System XML. XmlSerializer writes one element per tag with plain attributes; the reader
// walks the tags, keeping the element stack and the type of the enclosing <Force>.
// ---------------------------------------------------------------------------------------------
namespace {
struct Tag {
    std::string name;
    std::map<std::string, std::string> attrs;
    bool closing = false;       // </name>
    bool self_closing = false;  // <name .../>
};

class TagReader {
  public:
    explicit TagReader(const std::string& text) : s_(text) {}
    bool next(Tag& tag) {
        for (;;) {
            const size_t lt = s_.find('<', pos_);
            if (lt == std::string::npos) return false;
            if (s_.compare(lt, 4, "<!--") == 0) {
                const size_t end = s_.find("-->", lt);
                EQFLOW_CHECK(end != std::string::npos, "System XML: unterminated comment");
                pos_ = end + 3;
                continue;
            }
            const size_t gt = s_.find('>', lt);
            EQFLOW_CHECK(gt != std::string::npos, "System XML: unterminated tag at offset " << lt);
            pos_ = gt + 1;
            if (s_[lt + 1] == '?' || s_[lt + 1] == '!') continue;
            std::string body = s_.substr(lt + 1, gt - lt - 1);
            tag = Tag{};
            if (!body.empty() && body[0] == '/') {
                tag.closing = true;
                body.erase(0, 1);
            }
            if (!body.empty() && body.back() == '/') {
                tag.self_closing = true;
                body.pop_back();
            }
            size_t i = 0;
            auto skip_ws = [&] {
                while (i < body.size() && std::isspace(static_cast<unsigned char>(body[i]))) ++i;
            };
            skip_ws();
            while (i < body.size() && !std::isspace(static_cast<unsigned char>(body[i])))
                tag.name += body[i++];
            for (;;) {
                skip_ws();
                if (i >= body.size()) break;
                const size_t eq = body.find('=', i);
                EQFLOW_CHECK(eq != std::string::npos,
                             "System XML: bad attribute in <" << tag.name << ">");
                std::string key = body.substr(i, eq - i);
                while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back())))
                    key.pop_back();
                size_t q = eq + 1;
                while (q < body.size() && std::isspace(static_cast<unsigned char>(body[q]))) ++q;
                EQFLOW_CHECK(
                    q < body.size() && (body[q] == '"' || body[q] == '\''),
                    "System XML: unquoted attribute '" << key << "' in <" << tag.name << ">");
                const size_t close = body.find(body[q], q + 1);
                EQFLOW_CHECK(close != std::string::npos,
                             "System XML: unterminated attribute in <" << tag.name << ">");
                tag.attrs[key] = body.substr(q + 1, close - q - 1);
                i = close + 1;
            }
            return true;
        }
    }

  private:
    const std::string& s_;
    size_t pos_ = 0;
};

double num(const Tag& t, const char* key) {
    auto it = t.attrs.find(key);
    EQFLOW_CHECK(it != t.attrs.end(),
                 "System XML: <" << t.name << "> lacks attribute '" << key << "'");
    char* end = nullptr;
    const double v = std::strtod(it->second.c_str(), &end);
    EQFLOW_CHECK(end && *end == '\0' && std::isfinite(v),
                 "System XML: <" << t.name << "> attribute " << key << "=\"" << it->second
                                 << "\" is not a number");
    return v;
}
int idx(const Tag& t, const char* key, int n) {
    const double v = num(t, key);
    EQFLOW_CHECK(v == std::floor(v) && v >= 0 && v < n,
                 "System XML: <" << t.name << "> index " << key << "=" << v << " out of range [0, "
                                 << n << ")");
    return static_cast<int>(v);
}
}  // namespace

ForceField parse_openmm_system_xml(const std::string& text) {
    ForceField ff;
    TagReader reader(text);
    Tag tag;
    std::vector<std::string> stack;
    std::string force;  // type of the enclosing <Force>, "" outside
    bool seen_system = false, seen_nonbonded = false;
    auto parent = [&](size_t up) -> std::string {
        return stack.size() > up ? stack[stack.size() - 1 - up] : "";
    };
    while (reader.next(tag)) {
        if (tag.closing) {
            EQFLOW_CHECK(!stack.empty() && stack.back() == tag.name,
                         "System XML: unbalanced </" << tag.name << ">");
            stack.pop_back();
            if (tag.name == "Force") force.clear();
            continue;
        }
        const std::string& name = tag.name;
        const int n = ff.n_atoms;
        if (name == "System") {
            seen_system = true;
        } else if (name == "Particle" && parent(0) == "Particles" && force.empty()) {
            ff.masses.push_back(num(tag, "mass"));
            ++ff.n_atoms;
        } else if (name == "VirtualSite" || name == "LocalCoordinatesSite" ||
                   name == "TwoParticleAverageSite" || name == "ThreeParticleAverageSite" ||
                   name == "OutOfPlaneSite") {
            EQFLOW_THROW("System XML: virtual sites are not supported");
        } else if (name == "Constraint") {
            EQFLOW_THROW(
                "System XML: constraints are not supported (the force field needs a System without "
                "them)");
        } else if (name == "Force") {
            force = tag.attrs.count("type") ? tag.attrs.at("type") : "";
            const int group =
                tag.attrs.count("forceGroup") ? static_cast<int>(num(tag, "forceGroup")) : 0;
            auto set_group = [&](int term) {
                EQFLOW_CHECK(ff.force_groups[term] == -1 || ff.force_groups[term] == group,
                             "System XML: two " << force << "s in different force groups");
                ff.force_groups[term] = group;
            };
            if (force == "HarmonicBondForce") {
                set_group(0);
            } else if (force == "HarmonicAngleForce") {
                set_group(1);
            } else if (force == "PeriodicTorsionForce") {
                set_group(2);
            } else if (force == "NonbondedForce") {
                EQFLOW_CHECK(!seen_nonbonded, "System XML: more than one NonbondedForce");
                seen_nonbonded = true;
                EQFLOW_CHECK(num(tag, "method") == 0,
                             "System XML: NonbondedForce must use NoCutoff (method 0)");
                set_group(3);
            } else if (force == "GBSAOBCForce") {
                EQFLOW_CHECK(!ff.has_gb, "System XML: more than one GBSAOBCForce");
                EQFLOW_CHECK(num(tag, "method") == 0,
                             "System XML: GBSAOBCForce must use NoCutoff (method 0)");
                ff.has_gb = true;
                ff.solute_dielectric = num(tag, "soluteDielectric");
                ff.solvent_dielectric = num(tag, "solventDielectric");
                ff.surface_area_energy = num(tag, "surfaceAreaEnergy");
                set_group(4);
            } else if (force != "CMMotionRemover") {
                EQFLOW_THROW("System XML: force '"
                             << force
                             << "' is not supported (supported: HarmonicBondForce, "
                                "HarmonicAngleForce, PeriodicTorsionForce, NonbondedForce, "
                                "GBSAOBCForce, CMMotionRemover)");
            }
        } else if (force == "HarmonicBondForce" && name == "Bond") {
            ff.bonds.push_back(
                {idx(tag, "p1", n), idx(tag, "p2", n), num(tag, "d"), num(tag, "k")});
        } else if (force == "HarmonicAngleForce" && name == "Angle") {
            ff.angles.push_back({idx(tag, "p1", n), idx(tag, "p2", n), idx(tag, "p3", n),
                                 num(tag, "a"), num(tag, "k")});
        } else if (force == "PeriodicTorsionForce" && name == "Torsion") {
            ff.torsions.push_back({idx(tag, "p1", n), idx(tag, "p2", n), idx(tag, "p3", n),
                                   idx(tag, "p4", n), static_cast<int>(num(tag, "periodicity")),
                                   num(tag, "phase"), num(tag, "k")});
        } else if (force == "NonbondedForce" && name == "Particle") {
            ff.charges.push_back(num(tag, "q"));
            ff.sigmas.push_back(num(tag, "sig"));
            ff.epsilons.push_back(num(tag, "eps"));
        } else if (force == "NonbondedForce" && name == "Exception") {
            ff.exceptions.push_back({idx(tag, "p1", n), idx(tag, "p2", n), num(tag, "q"),
                                     num(tag, "sig"), num(tag, "eps")});
        } else if (force == "NonbondedForce" &&
                   (name == "ParticleOffset" || name == "ExceptionOffset" || name == "Parameter")) {
            EQFLOW_THROW("System XML: NonbondedForce parameter offsets are not supported");
        } else if (force == "GBSAOBCForce" && name == "Particle") {
            ff.gb_charges.push_back(num(tag, "q"));
            ff.gb_radii.push_back(num(tag, "r"));
            ff.gb_scales.push_back(num(tag, "scale"));
        }
        if (!tag.self_closing) stack.push_back(name);
    }
    EQFLOW_CHECK(seen_system && ff.n_atoms > 0, "System XML: no <System> with particles");
    EQFLOW_CHECK(stack.empty(), "System XML: unclosed <" << stack.back() << ">");
    if (seen_nonbonded)
        EQFLOW_CHECK(static_cast<int>(ff.charges.size()) == ff.n_atoms,
                     "System XML: NonbondedForce has " << ff.charges.size()
                                                       << " particles, the System " << ff.n_atoms);
    if (ff.has_gb)
        EQFLOW_CHECK(static_cast<int>(ff.gb_charges.size()) == ff.n_atoms,
                     "System XML: GBSAOBCForce has " << ff.gb_charges.size()
                                                     << " particles, the System " << ff.n_atoms);
    for (int i = 0; i < ff.n_atoms && ff.has_gb; ++i)
        EQFLOW_CHECK(ff.gb_radii[i] > kObcDielectricOffset,
                     "System XML: GB radius of atom " << i << " is not above 0.009 nm");
    build_pair_list(ff);
    return ff;
}

ForceField read_openmm_system_xml(const std::string& path) {
    try {
        return parse_openmm_system_xml(read_file(path));
    } catch (const Error& e) {
        EQFLOW_THROW(path << ": " << e.what());
    }
}

void build_pair_list(ForceField& ff) {
    ff.pairs.clear();
    if (ff.charges.empty()) return;
    const int n = ff.n_atoms;
    std::map<std::pair<int, int>, const NonbondedException*> exc;
    for (const NonbondedException& e : ff.exceptions) {
        const auto key = std::minmax(e.i, e.j);
        EQFLOW_CHECK(e.i != e.j && !exc.count(key),
                     "nonbonded exception (" << e.i << ", " << e.j << ") is invalid or repeated");
        exc[key] = &e;
    }
    for (int i = 0; i < n; ++i) {
        for (int j = i + 1; j < n; ++j) {
            auto it = exc.find({i, j});
            NonbondedPair p;
            if (it != exc.end()) {
                p = {i, j, it->second->charge_prod, it->second->sigma, it->second->epsilon};
            } else {
                p = {i, j, ff.charges[i] * ff.charges[j], 0.5 * (ff.sigmas[i] + ff.sigmas[j]),
                     std::sqrt(ff.epsilons[i] * ff.epsilons[j])};
            }
            if (p.charge_prod == 0.0 && p.epsilon == 0.0) continue;
            ff.pairs.push_back(p);
        }
    }
}

double molecule_energy_reference(const ForceField& ff, const double* x, double* grad,
                                 unsigned terms) {
    return cpu::molecule_energy_one(ff, x, grad, terms);
}

std::vector<double> obc_born_radii(const ForceField& ff, const double* x) {
    EQFLOW_CHECK(ff.has_gb, "Born radii: the force field has no GB term");
    std::vector<double> b(static_cast<size_t>(ff.n_atoms));
    cpu::obc_born_radii(ff, x, b.data(), nullptr, nullptr);
    return b;
}

namespace {
template <class T>
void molecule_energy_forces_impl(const ForceField& ff, TensorView<const T> x, TensorView<T> energy,
                                 TensorView<T> forces, unsigned terms, Stream stream) {
    EQFLOW_CHECK(x.rank() == 3 && x.size(1) == ff.n_atoms && x.size(2) == 3,
                 "molecule energy: x has shape " << shape_string(x.shape) << ", expected [B, "
                                                 << ff.n_atoms << ", 3]");
    const int64_t B = x.size(0);
    check_shape(energy, Shape{B}, "molecule energy output");
    EQFLOW_CHECK(energy.device == x.device,
                 "molecule energy: energy and x live on different devices");
    if (forces.defined()) {
        check_shape(forces, Shape{B, ff.n_atoms, 3}, "molecule forces output");
        EQFLOW_CHECK(forces.device == x.device,
                     "molecule energy: forces and x live on different devices");
    }
    if (B == 0) return;
    if (x.device == Device::cpu) {
        cpu::molecule_energy_forces(ff, x.data, B, energy.data,
                                    forces.defined() ? forces.data : nullptr, terms);
        return;
    }
#if defined(EQFLOW_HAVE_CUDA)
    cuda::molecule_energy_forces(ff, x.data, B, energy.data,
                                 forces.defined() ? forces.data : nullptr, terms, stream);
#else
    (void)stream;
    EQFLOW_THROW("molecule energy on the GPU: eqflow was built without CUDA");
#endif
}
}  // namespace

void molecule_energy_forces(const ForceField& ff, TensorView<const double> x,
                            TensorView<double> energy, TensorView<double> forces, unsigned terms,
                            Stream stream) {
    molecule_energy_forces_impl<double>(ff, x, energy, forces, terms, stream);
}
void molecule_energy_forces(const ForceField& ff, TensorView<const float> x,
                            TensorView<float> energy, TensorView<float> forces, unsigned terms,
                            Stream stream) {
    molecule_energy_forces_impl<float>(ff, x, energy, forces, terms, stream);
}

// ---------------------------------------------------------------------------------------------
// PDB and the alanine-dipeptide files
// ---------------------------------------------------------------------------------------------
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

std::shared_ptr<const ForceField> aldp_force_field() {
    static std::mutex mutex;
    static std::shared_ptr<const ForceField> cached;
    std::lock_guard<std::mutex> lock(mutex);
    if (!cached) {
        auto ff = std::make_shared<ForceField>(
            read_openmm_system_xml(aldp_data_dir() + "/aldp_system.xml"));
        EQFLOW_CHECK(ff->n_atoms == kAldpAtoms,
                     "aldp_system.xml has " << ff->n_atoms << " atoms, expected " << kAldpAtoms);
        cached = std::move(ff);
    }
    return cached;
}

PdbStructure aldp_structure() {
    PdbStructure s = read_pdb(aldp_data_dir() + "/aldp.pdb");
    EQFLOW_CHECK(s.n_atoms() == kAldpAtoms,
                 "aldp.pdb has " << s.n_atoms() << " atoms, expected " << kAldpAtoms);
    return s;
}

std::vector<int> aldp_atom_types() {
    // The methyl hydrogens: ACE (0, 2, 3), ALA CB (11, 12, 13), NME (19, 20, 21).
    const int methyl[3][3] = {{0, 2, 3}, {11, 12, 13}, {19, 20, 21}};
    std::vector<int> type(kAldpAtoms, -1);
    int next = 0;
    for (int i = 0; i < kAldpAtoms; ++i) {
        if (type[i] >= 0) continue;
        type[i] = next;
        for (const auto& group : methyl)
            if (group[0] == i)
                for (int k = 1; k < 3; ++k) type[group[k]] = next;
        ++next;
    }
    return type;
}

// ---------------------------------------------------------------------------------------------
// Dihedrals and chirality
// ---------------------------------------------------------------------------------------------
double dihedral_angle(const double* x, int i, int j, int k, int l) {
    // b0 = x_i - x_j, b1 = x_k - x_j (unit), b2 = x_l - x_k; v, w: b0, b2 without their b1 part.
    double b0[3], b1[3], b2[3];
    for (int a = 0; a < 3; ++a) {
        b0[a] = x[3 * i + a] - x[3 * j + a];
        b1[a] = x[3 * k + a] - x[3 * j + a];
        b2[a] = x[3 * l + a] - x[3 * k + a];
    }
    const double nb1 = std::sqrt(b1[0] * b1[0] + b1[1] * b1[1] + b1[2] * b1[2]);
    for (double& c : b1) c /= nb1;
    const double p0 = b0[0] * b1[0] + b0[1] * b1[1] + b0[2] * b1[2];
    const double p2 = b2[0] * b1[0] + b2[1] * b1[1] + b2[2] * b1[2];
    double v[3], w[3];
    for (int a = 0; a < 3; ++a) {
        v[a] = b0[a] - p0 * b1[a];
        w[a] = b2[a] - p2 * b1[a];
    }
    const double c[3] = {b1[1] * v[2] - b1[2] * v[1], b1[2] * v[0] - b1[0] * v[2],
                         b1[0] * v[1] - b1[1] * v[0]};
    const double xx = v[0] * w[0] + v[1] * w[1] + v[2] * w[2];
    const double yy = c[0] * w[0] + c[1] * w[1] + c[2] * w[2];
    return std::atan2(yy, xx);
}

void aldp_phi_psi(const double* x, int64_t B, double* phi, double* psi) {
    for (int64_t b = 0; b < B; ++b) {
        const double* xb = x + b * kAldpAtoms * 3;
        const auto& f = kAldpPhiAtoms;
        const auto& s = kAldpPsiAtoms;
        if (phi) phi[b] = dihedral_angle(xb, f[0], f[1], f[2], f[3]);
        if (psi) psi[b] = dihedral_angle(xb, s[0], s[1], s[2], s[3]);
    }
}

int chirality_sign(const double* x, int a, int centre, int b, int s) {
    double u[3], v[3], w[3];
    for (int k = 0; k < 3; ++k) {
        u[k] = x[3 * a + k] - x[3 * centre + k];
        v[k] = x[3 * b + k] - x[3 * centre + k];
        w[k] = x[3 * s + k] - x[3 * centre + k];
    }
    const double triple = u[0] * (v[1] * w[2] - v[2] * w[1]) + u[1] * (v[2] * w[0] - v[0] * w[2]) +
                          u[2] * (v[0] * w[1] - v[1] * w[0]);
    return (triple > 0) - (triple < 0);
}

bool aldp_is_l(const double* x) {
    return chirality_sign(x, kAldpN, kAldpCA, kAldpC, kAldpCB) > 0;
}

void mirror(double* x, int n) {
    for (int k = 0; k < 3 * n; ++k) x[k] = -x[k];
}

int64_t aldp_fix_chirality(double* x, int64_t B, uint8_t* is_d) {
    int64_t count = 0;
    for (int64_t b = 0; b < B; ++b) {
        double* xb = x + b * kAldpAtoms * 3;
        const bool d = !aldp_is_l(xb);
        if (d) {
            mirror(xb, kAldpAtoms);
            ++count;
        }
        if (is_d) is_d[b] = d ? 1 : 0;
    }
    return count;
}

// ---------------------------------------------------------------------------------------------
// Free energies and the Ramachandran figure
// ---------------------------------------------------------------------------------------------
namespace {
constexpr double kPiRad = 3.14159265358979323846;
}  // namespace

FreeEnergyDifference phi_free_energy_difference(const double* phi, const double* log_w, int64_t N,
                                                int blocks) {
    EQFLOW_CHECK(N > 0, "free-energy difference of an empty sample");
    EQFLOW_CHECK(blocks >= 2, "free-energy difference: need at least 2 blocks, got " << blocks);
    blocks = static_cast<int>(std::min<int64_t>(blocks, N));
    // Weights relative to the largest log weight, so exp() cannot overflow.
    double max_lw = 0.0;
    if (log_w) {
        max_lw = -std::numeric_limits<double>::infinity();
        for (int64_t i = 0; i < N; ++i)
            if (std::isfinite(log_w[i])) max_lw = std::max(max_lw, log_w[i]);
        EQFLOW_CHECK(std::isfinite(max_lw), "free-energy difference: no finite weight");
    }
    auto weight = [&](int64_t i) {
        if (!log_w) return 1.0;
        return std::isfinite(log_w[i]) ? std::exp(log_w[i] - max_lw) : 0.0;
    };
    FreeEnergyDifference r;
    double w_pos = 0.0, w_neg = 0.0;
    std::vector<double> p_block;
    for (int k = 0; k < blocks; ++k) {
        const int64_t begin = N * k / blocks, end = N * (k + 1) / blocks;
        double bp = 0.0, bn = 0.0;
        for (int64_t i = begin; i < end; ++i) {
            EQFLOW_CHECK(std::isfinite(phi[i]),
                         "free-energy difference: phi[" << i << "] is not finite");
            const double w = weight(i);
            if (phi[i] > 0) {
                bp += w;
                ++r.n_pos;
            } else {
                bn += w;
                ++r.n_neg;
            }
        }
        w_pos += bp;
        w_neg += bn;
        if (bp + bn > 0) p_block.push_back(bp / (bp + bn));
    }
    const double inf = std::numeric_limits<double>::infinity();
    if (w_pos == 0.0 || w_neg == 0.0) {
        r.delta_f = w_pos == 0.0 ? inf : -inf;
        r.error = inf;
        return r;
    }
    const double p = w_pos / (w_pos + w_neg);
    r.delta_f = -std::log(w_pos / w_neg);
    double mean = 0.0, var = 0.0;
    for (double v : p_block) mean += v / p_block.size();
    for (double v : p_block) var += (v - mean) * (v - mean);
    const double se =
        p_block.size() > 1 ? std::sqrt(var / (p_block.size() - 1) / p_block.size()) : inf;
    r.error = se / (p * (1.0 - p));
    return r;
}

std::string ramachandran_svg(const std::vector<RamachandranPanel>& panels, int bins) {
    EQFLOW_CHECK(!panels.empty(), "Ramachandran figure: no data");
    EQFLOW_CHECK(bins >= 2 && bins <= 1000,
                 "Ramachandran figure: bins must be 2..1000, got " << bins);
    const double size = 300.0, margin = 50.0, gap = 70.0;
    const double width = margin + panels.size() * (size + gap), height = size + 2 * margin;
    std::ostringstream svg;
    svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
        << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
           "fill=\"white\"/>\n";
    const double cell = size / bins;
    for (size_t p = 0; p < panels.size(); ++p) {
        const RamachandranPanel& panel = panels[p];
        EQFLOW_CHECK(
            panel.phi.size() == panel.psi.size() &&
                (panel.log_w.empty() || panel.log_w.size() == panel.phi.size()),
            "Ramachandran figure: panel '" << panel.title << "' has mismatched phi/psi/weights");
        std::vector<double> hist(static_cast<size_t>(bins * bins), 0.0);
        double max_lw = 0.0;
        if (!panel.log_w.empty()) {
            max_lw = -std::numeric_limits<double>::infinity();
            for (double v : panel.log_w)
                if (std::isfinite(v)) max_lw = std::max(max_lw, v);
        }
        for (size_t i = 0; i < panel.phi.size(); ++i) {
            if (!std::isfinite(panel.phi[i]) || !std::isfinite(panel.psi[i])) continue;
            const double w = panel.log_w.empty()             ? 1.0
                             : std::isfinite(panel.log_w[i]) ? std::exp(panel.log_w[i] - max_lw)
                                                             : 0.0;
            auto bin = [&](double a) {
                const int b = static_cast<int>(std::floor((a + kPiRad) / (2 * kPiRad) * bins));
                return std::clamp(b, 0, bins - 1);
            };
            hist[bin(panel.psi[i]) * bins + bin(panel.phi[i])] += w;
        }
        double hmax = 0.0;
        for (double h : hist) hmax = std::max(hmax, h);
        const double x0 = margin + p * (size + gap), y0 = margin;
        svg << "<g>\n<text x=\"" << x0 + size / 2 << "\" y=\"" << y0 - 12
            << "\" text-anchor=\"middle\">" << panel.title << " (" << panel.phi.size()
            << ")</text>\n";
        svg << "<rect x=\"" << x0 << "\" y=\"" << y0 << "\" width=\"" << size << "\" height=\""
            << size << "\" fill=\"white\" stroke=\"black\"/>\n";
        // Shade by free energy -ln(h / hmax) over 0..8 kT: dark blue (0) to pale yellow (8).
        for (int j = 0; j < bins; ++j) {
            for (int i = 0; i < bins; ++i) {
                const double h = hist[j * bins + i];
                if (h <= 0.0 || hmax <= 0.0) continue;
                const double f = std::min(-std::log(h / hmax) / 8.0, 1.0);
                const int r = static_cast<int>(20 + 235 * f), g = static_cast<int>(40 + 200 * f),
                          b = static_cast<int>(140 + 40 * f);
                // psi increases upwards.
                svg << "<rect x=\"" << x0 + i * cell << "\" y=\"" << y0 + (bins - 1 - j) * cell
                    << "\" width=\"" << cell + 0.05 << "\" height=\"" << cell + 0.05
                    << "\" fill=\"rgb(" << r << "," << g << "," << b << ")\"/>\n";
            }
        }
        svg << "<line x1=\"" << x0 + size / 2 << "\" y1=\"" << y0 << "\" x2=\"" << x0 + size / 2
            << "\" y2=\"" << y0 + size << "\" stroke=\"gray\" stroke-dasharray=\"4 3\"/>\n";
        for (int t = 0; t <= 2; ++t) {
            const char* label = t == 0 ? "-180" : t == 1 ? "0" : "180";
            svg << "<text x=\"" << x0 + t * size / 2 << "\" y=\"" << y0 + size + 16
                << "\" text-anchor=\"middle\">" << label << "</text>\n";
            svg << "<text x=\"" << x0 - 6 << "\" y=\"" << y0 + size - t * size / 2 + 4
                << "\" text-anchor=\"end\">" << label << "</text>\n";
        }
        svg << "<text x=\"" << x0 + size / 2 << "\" y=\"" << y0 + size + 34
            << "\" text-anchor=\"middle\">phi (deg)</text>\n";
        svg << "<text x=\"" << x0 - 36 << "\" y=\"" << y0 + size / 2
            << "\" text-anchor=\"middle\" transform=\"rotate(-90 " << x0 - 36 << " "
            << y0 + size / 2 << ")\">psi (deg)</text>\n</g>\n";
    }
    svg << "</svg>\n";
    return svg.str();
}

void write_ramachandran_svg(const std::string& path, const std::vector<RamachandranPanel>& panels,
                            int bins) {
    write_file_atomic(path, ramachandran_svg(panels, bins));
}

}  // namespace eqflow
