// Couplings: argument checks, then dispatch on where the samples live.
#include "eqflow/coupling.h"

#include <algorithm>
#include <cmath>

#include "cpu/coupling_cpu.h"
#include "eqflow/error.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/coupling.cuh"
#endif

namespace eqflow {

CouplingKind parse_coupling(const std::string& name) {
    if (name == "fm") return CouplingKind::fm;
    if (name == "ot") return CouplingKind::ot;
    if (name == "eqot") return CouplingKind::eqot;
    EQFLOW_THROW("unknown coupling '" << name << "' (choose fm, ot or eqot)");
}

const char* coupling_name(CouplingKind kind) {
    static const char* const kNames[] = {"fm", "ot", "eqot"};  // in the order of the enum
    return kNames[static_cast<int>(kind)];
}

namespace {
void check_options(const CouplingOptions& o, int64_t n, int64_t d) {
    EQFLOW_CHECK(o.refine_iterations >= 0 && o.refine_iterations <= 100,
                 "coupling: refine_iterations must be in [0, 100], got " << o.refine_iterations);
    EQFLOW_CHECK(o.max_starts >= 0,
                 "coupling: max_starts must be >= 0 (0: every start), got " << o.max_starts);
    EQFLOW_CHECK(o.atom_types.empty() || static_cast<int64_t>(o.atom_types.size()) == n,
                 "coupling: " << o.atom_types.size() << " atom types for " << n << " particles");
    for (int t : o.atom_types) EQFLOW_CHECK(t >= 0, "coupling: negative atom type " << t);
    if (o.kind == CouplingKind::eqot)
        EQFLOW_CHECK(d == 2 || d == 3, "eqot coupling: d must be 2 or 3, got " << d);
}
}  // namespace

std::size_t coupling_workspace_bytes(Device device, const CouplingOptions& o, int64_t B, int64_t n,
                                     int64_t d) {
    EQFLOW_CHECK(B >= 0 && n >= 0 && d >= 0, "coupling workspace: negative size");
    check_options(o, n, d);
    if (device == Device::cpu) return 0;
#if defined(EQFLOW_HAVE_CUDA)
    return cuda::coupling_workspace_bytes(o, B, n, d);
#else
    EQFLOW_THROW("coupling on the GPU: eqflow was built without CUDA");
#endif
}

namespace {
template <class T>
void couple_impl(const CouplingOptions& o, TensorView<const T> x0, TensorView<const T> x1,
                 TensorView<T> x1_paired, TensorView<int64_t> pairing, TensorView<double> cost,
                 void* workspace, std::size_t workspace_bytes, Stream stream) {
    EQFLOW_CHECK(x0.rank() == 3,
                 "coupling: x0 has shape " << shape_string(x0.shape) << ", expected [B, n, d]");
    const int64_t B = x0.size(0), n = x0.size(1), d = x0.size(2);
    check_shape(x0, Shape{B, n, d}, "coupling x0");
    check_shape(x1, Shape{B, n, d}, "coupling x1");
    check_shape(x1_paired, Shape{B, n, d}, "coupling x1_paired");
    EQFLOW_CHECK(x1.device == x0.device && x1_paired.device == x0.device,
                 "coupling: x0, x1 and x1_paired live on different devices");
    if (pairing.defined()) {
        check_shape(pairing, Shape{B}, "coupling pairing");
        EQFLOW_CHECK(pairing.device == x0.device,
                     "coupling: pairing and x0 live on different devices");
    }
    if (cost.defined()) {
        check_shape(cost, Shape{B}, "coupling cost");
        EQFLOW_CHECK(cost.device == x0.device, "coupling: cost and x0 live on different devices");
    }
    check_options(o, n, d);
    if (B > 0) {
        const T* out = x1_paired.data;
        const int64_t count = B * n * d;
        const bool overlaps = (out < x0.data + count && x0.data < out + count) ||
                              (out < x1.data + count && x1.data < out + count);
        EQFLOW_CHECK(!overlaps, "coupling: x1_paired must not overlap x0 or x1");
    }
    if (B == 0) return;
    int64_t* pr = pairing.defined() ? pairing.data : nullptr;
    double* co = cost.defined() ? cost.data : nullptr;
    if (x0.device == Device::cpu) {
        const int64_t count = B * n * d;
        std::vector<double> a(x0.data, x0.data + count), b(x1.data, x1.data + count);
        for (int64_t k = 0; k < count; ++k)
            EQFLOW_CHECK(std::isfinite(a[k]) && std::isfinite(b[k]),
                         "coupling: non-finite coordinate in the batch");
        std::vector<double> out(count);
        cpu::couple(o, a.data(), b.data(), B, static_cast<int>(n), static_cast<int>(d), out.data(),
                    pr, co);
        std::copy(out.begin(), out.end(), x1_paired.data);
        return;
    }
#if defined(EQFLOW_HAVE_CUDA)
    cuda::couple(o, x0.data, x1.data, B, static_cast<int>(n), static_cast<int>(d), x1_paired.data,
                 pr, co, workspace, workspace_bytes, stream);
#else
    (void)workspace;
    (void)workspace_bytes;
    (void)stream;
    EQFLOW_THROW("coupling on the GPU: eqflow was built without CUDA");
#endif
}
}  // namespace

void couple(const CouplingOptions& o, TensorView<const double> x0, TensorView<const double> x1,
            TensorView<double> x1_paired, TensorView<int64_t> pairing, TensorView<double> cost,
            void* workspace, std::size_t workspace_bytes, Stream stream) {
    couple_impl<double>(o, x0, x1, x1_paired, pairing, cost, workspace, workspace_bytes, stream);
}
void couple(const CouplingOptions& o, TensorView<const float> x0, TensorView<const float> x1,
            TensorView<float> x1_paired, TensorView<int64_t> pairing, TensorView<double> cost,
            void* workspace, std::size_t workspace_bytes, Stream stream) {
    couple_impl<float>(o, x0, x1, x1_paired, pairing, cost, workspace, workspace_bytes, stream);
}

double eqot_align_pair(const CouplingOptions& o, const double* x0, const double* x1, int n, int d,
                       int64_t* perm, double* rotation) {
    check_options(o, n, d);
    EQFLOW_CHECK(n >= 1, "eqot_align_pair: n must be positive");
    cpu::EqotScratch scratch;
    return cpu::eqot_align_pair(o, x0, x1, n, d,
                                o.atom_types.empty() ? nullptr : o.atom_types.data(), perm,
                                rotation, scratch);
}

}  // namespace eqflow
