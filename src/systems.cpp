#include "eqflow/systems.h"

#include <algorithm>
#include <cstdlib>

#include "cpu/molecule_cpu.h"
#include "cpu/systems_cpu.h"
#include "eqflow/error.h"
#include "eqflow/force_field.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/molecule.cuh"
#include "kernels/systems.cuh"
#endif

namespace eqflow {

std::vector<std::string> builtin_system_names() {
    return {"dw4", "lj13", "lj55", "lj:N", "aldp"};
}

System make_system(const std::string& name) {
    System s;
    s.name = name;
    if (name == "dw4") {
        s.kind = PotentialKind::double_well;
        s.n = 4;
        s.d = 2;
        return s;
    }
    auto lj = [&](int n) {
        s.kind = PotentialKind::lennard_jones;
        s.n = n;
        s.d = 3;
        return s;
    };
    if (name == "aldp") {
        s.kind = PotentialKind::molecule;
        s.n = kAldpAtoms;
        s.d = 3;
        s.kT = kBoltzmannKJ * kAldpTemperature;
        s.atom_types = aldp_atom_types();
        s.force_field = aldp_force_field();
        return s;
    }
    if (name == "lj13") return lj(13);
    if (name == "lj55") return lj(55);
    if (name.rfind("lj:", 0) == 0) {
        const std::string num = name.substr(3);
        char* end = nullptr;
        const long n = std::strtol(num.c_str(), &end, 10);
        EQFLOW_CHECK(!num.empty() && end && *end == '\0' && n >= 2 && n <= 100000,
                     "system '" << name << "': lj:N needs an integer N >= 2");
        return lj(static_cast<int>(n));
    }
    EQFLOW_THROW("unknown system '" << name << "' (choose dw4, lj13, lj55, lj:N or aldp)");
}

void pair_potential(const System& s, double r, double* phi, double* dphi, double* d2phi) {
    EQFLOW_CHECK(s.kind != PotentialKind::molecule,
                 "system " << s.name << " has no pair potential");
    cpu::pair_terms(s, r, phi, dphi, d2phi);
}

double energy_reference(const System& s, const double* x, double* grad, double* laplacian) {
    if (s.kind == PotentialKind::molecule) {
        EQFLOW_CHECK(
            s.force_field && laplacian == nullptr,
            "system " << s.name << ": "
                      << (s.force_field ? "no Laplacian for molecules" : "no force field"));
        return cpu::molecule_energy_one(*s.force_field, x, grad, kTermAll);
    }
    return cpu::energy_one(s, x, grad, laplacian);
}

namespace {
template <class T>
void check_energy_args(const System& s, const TensorView<const T>& x, const TensorView<T>& u,
                       const TensorView<T>& forces) {
    EQFLOW_CHECK(x.rank() == 3 && x.size(1) == s.n && x.size(2) == s.d,
                 "energy of " << s.name << ": x has shape " << shape_string(x.shape)
                              << ", expected [B, " << s.n << ", " << s.d << "]");
    const int64_t B = x.size(0);
    check_shape(u, Shape{B}, "energy output u");
    EQFLOW_CHECK(u.device == x.device, "energy: u and x live on different devices");
    if (forces.defined()) {
        check_shape(forces, Shape{B, s.n, s.d}, "forces output");
        EQFLOW_CHECK(forces.device == x.device, "energy: forces and x live on different devices");
    }
}

template <class T>
void energy_forces_impl(const System& s, TensorView<const T> x, TensorView<T> u,
                        TensorView<T> forces, Stream stream) {
    check_energy_args(s, x, u, forces);
    const int64_t B = x.size(0);
    if (B == 0) return;
    const bool molecule = s.kind == PotentialKind::molecule;
    EQFLOW_CHECK(!molecule || s.force_field, "system " << s.name << " has no force field");
    if (x.device == Device::cpu) {
        if (molecule)
            cpu::molecule_energy_forces(*s.force_field, x.data, B, u.data,
                                        forces.defined() ? forces.data : nullptr, kTermAll,
                                        1.0 / s.kT);
        else
            cpu::energy_forces(s, x.data, B, u.data, forces.defined() ? forces.data : nullptr);
        return;
    }
#if defined(EQFLOW_HAVE_CUDA)
    if (molecule)
        cuda::molecule_energy_forces(*s.force_field, x.data, B, u.data,
                                     forces.defined() ? forces.data : nullptr, kTermAll, stream,
                                     1.0 / s.kT);
    else
        cuda::energy_forces(s, x.data, B, u.data, forces.defined() ? forces.data : nullptr, stream);
#else
    (void)stream;
    EQFLOW_THROW("energy on the GPU: eqflow was built without CUDA");
#endif
}
}  // namespace

void energy_forces(const System& s, TensorView<const double> x, TensorView<double> u,
                   TensorView<double> forces, Stream stream) {
    energy_forces_impl<double>(s, x, u, forces, stream);
}
void energy_forces(const System& s, TensorView<const float> x, TensorView<float> u,
                   TensorView<float> forces, Stream stream) {
    energy_forces_impl<float>(s, x, u, forces, stream);
}

}  // namespace eqflow
