// The molecular force field (eqflow/force_field.h): the OpenMM System XML reader, the nonbonded
// pair list, dispatch of the energies to the CPU reference or the GPU, and the alanine-dipeptide
// parameters and atom types.
#include "eqflow/force_field.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

#include "cpu/molecule_cpu.h"
#include "eqflow/error.h"
#include "eqflow/io.h"
#include "eqflow/molecule_io.h"

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
            // The tag ends at the first '>' outside quotes; '<' inside a tag is not XML (and would
            // let a reader that counts tags differently disagree on the nesting).
            size_t gt = lt + 1;
            char quote = 0;
            for (; gt < s_.size(); ++gt) {
                const char c = s_[gt];
                if (quote) {
                    if (c == quote) quote = 0;
                } else if (c == '"' || c == '\'') {
                    quote = c;
                } else if (c == '>') {
                    break;
                }
                EQFLOW_CHECK(c != '<', "System XML: '<' inside the tag at offset " << lt);
            }
            EQFLOW_CHECK(gt < s_.size(), "System XML: unterminated tag at offset " << lt);
            pos_ = gt + 1;
            if (lt + 1 < s_.size() && (s_[lt + 1] == '?' || s_[lt + 1] == '!')) continue;
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

// One reading of a number: plain decimal ([+-] digits [. digits] [e[+-]digits], as XmlSerializer
// writes), never empty, hex, "inf" or "nan", and finite.
bool parse_decimal(const std::string& s, double& out) {
    size_t i = 0;
    const auto digits = [&] {
        const size_t b = i;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
        return i - b;
    };
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    size_t mantissa = digits();
    if (i < s.size() && s[i] == '.') {
        ++i;
        mantissa += digits();
    }
    if (mantissa == 0) return false;
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        ++i;
        if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
        if (digits() == 0) return false;
    }
    if (i != s.size()) return false;
    char* end = nullptr;
    out = std::strtod(s.c_str(), &end);
    return end == s.c_str() + s.size() && std::isfinite(out);
}

// The attribute `key` as a number in [lo, hi]: the ranges are generous physical bounds (nm,
// kJ/mol, e, amu, rad), far outside any force field, but inside what the energies can carry
// without overflowing.
double num(const Tag& t, const char* key, double lo, double hi) {
    auto it = t.attrs.find(key);
    EQFLOW_CHECK(it != t.attrs.end(),
                 "System XML: <" << t.name << "> lacks attribute '" << key << "'");
    double v = 0.0;
    EQFLOW_CHECK(parse_decimal(it->second, v), "System XML: <" << t.name << "> attribute " << key
                                                               << "=\"" << it->second
                                                               << "\" is not a decimal number");
    EQFLOW_CHECK(v >= lo && v <= hi, "System XML: <" << t.name << "> attribute " << key << "=" << v
                                                     << " is outside [" << lo << ", " << hi << "]");
    return v;
}
int integer(const Tag& t, const char* key, int lo, int hi) {
    const double v = num(t, key, lo, hi);
    EQFLOW_CHECK(v == std::floor(v), "System XML: <" << t.name << "> attribute " << key << "=" << v
                                                     << " is not an integer");
    return static_cast<int>(v);
}
int idx(const Tag& t, const char* key, int n) {
    auto it = t.attrs.find(key);
    EQFLOW_CHECK(it != t.attrs.end(),
                 "System XML: <" << t.name << "> lacks attribute '" << key << "'");
    double v = 0.0;
    EQFLOW_CHECK(parse_decimal(it->second, v) && v == std::floor(v) && v >= 0 && v < n,
                 "System XML: <" << t.name << "> index " << key << "=\"" << it->second
                                 << "\" out of range [0, " << n << ")");
    return static_cast<int>(v);
}

// Physical bounds of the parameters (see num()).
constexpr double kMaxMass = 1e6;        // amu
constexpr double kMaxLength = 100.0;    // nm: bond lengths, sigma, GB radii
constexpr double kMaxForceConst = 1e9;  // kJ/mol/nm^2 or kJ/mol/rad^2
constexpr double kMaxEnergy = 1e6;      // kJ/mol: epsilon, torsion barriers
constexpr double kMaxCharge = 100.0;    // e
constexpr double kMaxAngle = 100.0;     // rad (phases and equilibrium angles)
constexpr int kMaxPeriodicity = 100;
constexpr int kMaxForceGroup = 31;  // OpenMM's limit
}  // namespace

void check_system_xml_limits(const std::string& text) {
    EQFLOW_CHECK(text.size() <= kMaxSystemXmlBytes,
                 "System XML: " << text.size() << " bytes, more than the " << kMaxSystemXmlBytes
                                << " eqflow reads");
    TagReader reader(text);
    Tag tag;
    std::vector<std::string> stack;
    while (reader.next(tag)) {
        if (tag.closing) {
            EQFLOW_CHECK(!stack.empty() && stack.back() == tag.name,
                         "System XML: unbalanced </" << tag.name << ">");
            stack.pop_back();
        } else if (!tag.self_closing) {
            stack.push_back(tag.name);
            EQFLOW_CHECK(stack.size() <= static_cast<size_t>(kMaxSystemXmlDepth),
                         "System XML: elements nested deeper than " << kMaxSystemXmlDepth);
        }
    }
    EQFLOW_CHECK(stack.empty(), "System XML: unclosed <" << stack.back() << ">");
}

namespace {}  // namespace

ForceField parse_openmm_system_xml(const std::string& text) {
    check_system_xml_limits(text);
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
            EQFLOW_CHECK(ff.n_atoms < kMaxSystemXmlAtoms,
                         "System XML: more than " << kMaxSystemXmlAtoms << " particles");
            ff.masses.push_back(num(tag, "mass", 0, kMaxMass));
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
                tag.attrs.count("forceGroup") ? integer(tag, "forceGroup", 0, kMaxForceGroup) : 0;
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
                EQFLOW_CHECK(integer(tag, "method", 0, 1000) == 0,
                             "System XML: NonbondedForce must use NoCutoff (method 0)");
                set_group(3);
            } else if (force == "GBSAOBCForce") {
                EQFLOW_CHECK(!ff.has_gb, "System XML: more than one GBSAOBCForce");
                EQFLOW_CHECK(integer(tag, "method", 0, 1000) == 0,
                             "System XML: GBSAOBCForce must use NoCutoff (method 0)");
                ff.has_gb = true;
                ff.solute_dielectric = num(tag, "soluteDielectric", 1e-3, 1e6);
                ff.solvent_dielectric = num(tag, "solventDielectric", 1e-3, 1e6);
                ff.surface_area_energy = num(tag, "surfaceAreaEnergy", 0, kMaxEnergy);
                set_group(4);
            } else if (force != "CMMotionRemover") {
                EQFLOW_THROW("System XML: force '"
                             << force
                             << "' is not supported (supported: HarmonicBondForce, "
                                "HarmonicAngleForce, PeriodicTorsionForce, NonbondedForce, "
                                "GBSAOBCForce, CMMotionRemover)");
            }
        } else if (force == "HarmonicBondForce" && name == "Bond") {
            ff.bonds.push_back({idx(tag, "p1", n), idx(tag, "p2", n), num(tag, "d", 0, kMaxLength),
                                num(tag, "k", 0, kMaxForceConst)});
        } else if (force == "HarmonicAngleForce" && name == "Angle") {
            ff.angles.push_back({idx(tag, "p1", n), idx(tag, "p2", n), idx(tag, "p3", n),
                                 num(tag, "a", 0, kMaxAngle), num(tag, "k", 0, kMaxForceConst)});
        } else if (force == "PeriodicTorsionForce" && name == "Torsion") {
            ff.torsions.push_back(
                {idx(tag, "p1", n), idx(tag, "p2", n), idx(tag, "p3", n), idx(tag, "p4", n),
                 integer(tag, "periodicity", 0, kMaxPeriodicity),
                 num(tag, "phase", -kMaxAngle, kMaxAngle), num(tag, "k", -kMaxEnergy, kMaxEnergy)});
        } else if (force == "NonbondedForce" && name == "Particle") {
            ff.charges.push_back(num(tag, "q", -kMaxCharge, kMaxCharge));
            ff.sigmas.push_back(num(tag, "sig", 0, kMaxLength));
            ff.epsilons.push_back(num(tag, "eps", 0, kMaxEnergy));
        } else if (force == "NonbondedForce" && name == "Exception") {
            ff.exceptions.push_back(
                {idx(tag, "p1", n), idx(tag, "p2", n),
                 num(tag, "q", -kMaxCharge * kMaxCharge, kMaxCharge * kMaxCharge),
                 num(tag, "sig", 0, kMaxLength), num(tag, "eps", 0, kMaxEnergy)});
        } else if (force == "NonbondedForce" &&
                   (name == "ParticleOffset" || name == "ExceptionOffset" || name == "Parameter")) {
            EQFLOW_THROW("System XML: NonbondedForce parameter offsets are not supported");
        } else if (force == "GBSAOBCForce" && name == "Particle") {
            ff.gb_charges.push_back(num(tag, "q", -kMaxCharge, kMaxCharge));
            ff.gb_radii.push_back(num(tag, "r", 0, kMaxLength));
            ff.gb_scales.push_back(num(tag, "scale", 0, 100));
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
// The alanine-dipeptide force field
// ---------------------------------------------------------------------------------------------
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

}  // namespace eqflow
