// bench/egnn_unfused.cu: the unfused EGNN forward baseline (see egnn_unfused.h).
//
// Per layer, with E = n (n-1) edges per sample (no self-loops) and BE = B E edge rows:
//   P = h W1a^T, Q = h W1b^T                         SGEMM  [B n][H] x [H][H]       (nodes)
//   r_e, a_e                                         per-edge kernel                 [BE]
//   S1 = SiLU(P_i + b1 + Q_j + w1r r + w1a a)        elementwise kernel              [BE][H]
//   Z2 = S1 W2^T                                     SGEMM  [BE][H] x [H][H]
//   m = SiLU(Z2 + b2) * sigmoid(wa . m + ba)         per-edge kernel (warp)          [BE][H]
//   Z3 = m Wc1^T                                     SGEMM  [BE][H] x [H][H]
//   phi = cr tanh(wc2 . SiLU(Z3 + bc1))              per-edge kernel (warp)          [BE]
//   x' = x + sum_j d_ij / (sqrt(r + 1e-8) + 1) phi   per-node kernel
//   M_i = sum_j m_ij                                 per-(node, unit) kernel         [B n][H]
//   h += Wn2 SiLU(Wn1 [h, M] + bn1) + bn2            3 SGEMMs + 2 elementwise (skipped after the
//                                                    last layer: it cannot change v)
// Two [BE][H] float tensors are live at once (S1/Z3 and Z2/m): for LJ55 at B = 1024 that is
// 2 x 3.04e6 x 64 x 4 B = 1.56 GB, the memory traffic the fused kernels avoid.
// cuBLAS runs in CUBLAS_DEFAULT_MATH: plain FP32 SGEMM, no TF32 (the fused kernels are FP32).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "egnn_unfused.h"

namespace eqflow::bench {

namespace {

void check(cudaError_t err, const char* call, int line) {
    if (err != cudaSuccess) {
        std::ostringstream oss;
        oss << call << " failed: " << cudaGetErrorString(err) << " (bench/egnn_unfused.cu:" << line
            << ")";
        throw std::runtime_error(oss.str());
    }
}
void check(cublasStatus_t st, const char* call, int line) {
    if (st != CUBLAS_STATUS_SUCCESS) {
        std::ostringstream oss;
        oss << call << " failed: cuBLAS status " << static_cast<int>(st)
            << " (bench/egnn_unfused.cu:" << line << ")";
        throw std::runtime_error(oss.str());
    }
}
#define UNFUSED_CHECK(call) check((call), #call, __LINE__)
#define UNFUSED_CHECK_LAUNCH() UNFUSED_CHECK(cudaGetLastError())

constexpr int kThreads = 256;
constexpr float kCoordEps = 1e-8f;

__device__ __forceinline__ float sigmoid(float z) {
    return 1.0f / (1.0f + expf(-z));
}
__device__ __forceinline__ float silu(float z) {
    return z * sigmoid(z);
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Edge e of sample b: e = (b n + i) (n-1) + jj, source j = jj < i ? jj : jj + 1.
__device__ __forceinline__ void edge_ends(int64_t e, int n, int64_t* node_i, int64_t* node_j) {
    const int64_t row = e / (n - 1);  // b n + i
    const int jj = static_cast<int>(e % (n - 1));
    const int i = static_cast<int>(row % n);
    *node_i = row;
    *node_j = row - i + (jj < i ? jj : jj + 1);
}

// h [B n][H] = emb_w[:, F-1] t_b + emb_b (untyped: the only feature is t); x = x0 = input.
__global__ void __launch_bounds__(kThreads)
    embed_kernel(int64_t B, int n, int d, int H, int F, const float* __restrict__ emb_w,
                 const float* __restrict__ emb_b, const float* __restrict__ t,
                 float* __restrict__ h) {
    const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (idx >= B * n * H) return;
    const int k = static_cast<int>(idx % H);
    const int64_t b = idx / (static_cast<int64_t>(n) * H);
    h[idx] = emb_b[k] + emb_w[k * F + (F - 1)] * t[b];
}

// r_e = |x_i - x_j|^2 (current coordinates), a_e = |x0_i - x0_j|^2 (input coordinates).
__global__ void __launch_bounds__(kThreads)
    edge_geometry_kernel(int64_t BE, int n, int d, const float* __restrict__ x,
                         const float* __restrict__ x0, float* __restrict__ r_e,
                         float* __restrict__ a_e) {
    const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (e >= BE) return;
    int64_t ni, nj;
    edge_ends(e, n, &ni, &nj);
    float r = 0.0f, a = 0.0f;
    for (int c = 0; c < d; ++c) {
        const float dx = x[ni * d + c] - x[nj * d + c];
        const float d0 = x0[ni * d + c] - x0[nj * d + c];
        r += dx * dx;
        a += d0 * d0;
    }
    r_e[e] = r;
    a_e[e] = a;
}

// S1 [BE][H] = SiLU(P_i + b1 + Q_j + w1r r + w1a a); w1 [H][2H+2].
__global__ void __launch_bounds__(kThreads)
    edge_pre_kernel(int64_t BE, int n, int H, const float* __restrict__ P,
                    const float* __restrict__ Q, const float* __restrict__ w1,
                    const float* __restrict__ b1, const float* __restrict__ r_e,
                    const float* __restrict__ a_e, float* __restrict__ S1) {
    const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (idx >= BE * H) return;
    const int64_t e = idx / H;
    const int k = static_cast<int>(idx % H);
    int64_t ni, nj;
    edge_ends(e, n, &ni, &nj);
    const int W1 = 2 * H + 2;
    const float pre = P[ni * H + k] + b1[k] + Q[nj * H + k] + w1[k * W1 + 2 * H] * r_e[e] +
                      w1[k * W1 + 2 * H + 1] * a_e[e];
    S1[idx] = silu(pre);
}

// In place on Z [BE][H]: m = SiLU(Z + b2), times sigmoid(wa . m + ba) with attention. One warp
// per edge (8 edges per block).
__global__ void __launch_bounds__(kThreads)
    edge_message_kernel(int64_t BE, int H, const float* __restrict__ b2,
                        const float* __restrict__ wa, const float* __restrict__ ba, float* Z) {
    const int64_t e = blockIdx.x * static_cast<int64_t>(kThreads / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (e >= BE) return;
    float* z = Z + e * H;
    float dot = 0.0f;
    for (int k = lane; k < H; k += 32) {
        const float m = silu(z[k] + b2[k]);
        z[k] = m;
        if (wa) dot += wa[k] * m;
    }
    if (!wa) return;
    const float gate = sigmoid(warp_sum(dot) + ba[0]);
    __syncwarp();
    for (int k = lane; k < H; k += 32) z[k] *= gate;
}

// phi [BE] = cr tanh(wc2 . SiLU(Z3 + bc1)) (or without tanh). One warp per edge.
__global__ void __launch_bounds__(kThreads)
    edge_phi_kernel(int64_t BE, int H, const float* __restrict__ Z3, const float* __restrict__ bc1,
                    const float* __restrict__ wc2, int use_tanh, float coords_range,
                    float* __restrict__ phi) {
    const int64_t e = blockIdx.x * static_cast<int64_t>(kThreads / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (e >= BE) return;
    float c = 0.0f;
    for (int k = lane; k < H; k += 32) c += wc2[k] * silu(Z3[e * H + k] + bc1[k]);
    c = warp_sum(c);
    if (lane == 0) phi[e] = use_tanh ? coords_range * tanhf(c) : c;
}

// x_next_i = x_i + sum_j (x_i - x_j) / (sqrt(r_ij + 1e-8) + 1) phi_ij. One thread per node.
__global__ void __launch_bounds__(kThreads)
    coord_update_kernel(int64_t Bn, int n, int d, const float* __restrict__ x,
                        const float* __restrict__ r_e, const float* __restrict__ phi,
                        float* __restrict__ x_next) {
    const int64_t node = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (node >= Bn) return;
    const int i = static_cast<int>(node % n);
    const int64_t first = node - i;
    float acc[3] = {0.0f, 0.0f, 0.0f};
    for (int jj = 0; jj < n - 1; ++jj) {
        const int64_t e = node * (n - 1) + jj;
        const int64_t j = first + (jj < i ? jj : jj + 1);
        const float s = phi[e] / (sqrtf(r_e[e] + kCoordEps) + 1.0f);
        for (int c = 0; c < d; ++c) acc[c] += (x[node * d + c] - x[j * d + c]) * s;
    }
    for (int c = 0; c < d; ++c) x_next[node * d + c] = x[node * d + c] + acc[c];
}

// M [B n][H] = sum_j m_ij. One thread per (node, unit).
__global__ void __launch_bounds__(kThreads)
    aggregate_kernel(int64_t Bn, int n, int H, const float* __restrict__ m, float* __restrict__ M) {
    const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (idx >= Bn * H) return;
    const int64_t node = idx / H;
    const int k = static_cast<int>(idx % H);
    float acc = 0.0f;
    for (int jj = 0; jj < n - 1; ++jj) acc += m[(node * (n - 1) + jj) * H + k];
    M[idx] = acc;
}

// A [rows][H] = act(A + bias), act = SiLU or identity.
__global__ void __launch_bounds__(kThreads)
    bias_act_kernel(int64_t rows, int H, const float* __restrict__ bias, int apply_silu, float* A) {
    const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (idx >= rows * H) return;
    const float z = A[idx] + bias[idx % H];
    A[idx] = apply_silu ? silu(z) : z;
}

// v = x^L - x^0 minus its particle mean. One thread per (sample, dimension).
__global__ void __launch_bounds__(kThreads)
    output_kernel(int64_t B, int n, int d, const float* __restrict__ xL,
                  const float* __restrict__ x0, float* __restrict__ v) {
    const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (idx >= B * d) return;
    const int64_t b = idx / d;
    const int c = static_cast<int>(idx % d);
    float mean = 0.0f;
    for (int i = 0; i < n; ++i) mean += xL[(b * n + i) * d + c] - x0[(b * n + i) * d + c];
    mean /= static_cast<float>(n);
    for (int i = 0; i < n; ++i) {
        const int64_t k = (b * n + i) * d + c;
        v[k] = xL[k] - x0[k] - mean;
    }
}

unsigned blocks(int64_t work, int per_block = kThreads) {
    return static_cast<unsigned>((work + per_block - 1) / per_block);
}

struct DeviceFloats {
    float* ptr = nullptr;
    size_t count = 0;
    void allocate(size_t n) {
        count = n;
        if (n > 0) UNFUSED_CHECK(cudaMalloc(&ptr, n * sizeof(float)));
    }
    ~DeviceFloats() {
        if (ptr) cudaFree(ptr);
    }
};

}  // namespace

struct EgnnUnfused::Impl {
    EgnnConfig c;
    int64_t max_batch = 0;
    cublasHandle_t handle = nullptr;
    DeviceFloats params, x0, xa, xb, t, v, h, P, Q, M, node_tmp, edge_a, edge_b, r_e, a_e, phi;
    std::map<std::string, const float*> ptr;

    const float* get(const std::string& name) const {
        auto it = ptr.find(name);
        if (it == ptr.end()) throw std::runtime_error("unfused EGNN: no parameter " + name);
        return it->second;
    }
    ~Impl() {
        if (handle) cublasDestroy(handle);
    }

    // C [M][N] (row-major, ldc = N) = A [M][K] (row-major, lda) W^T + beta C, W [N][K]
    // row-major with row stride ldw: in cuBLAS's column-major terms C^T = W A^T.
    void gemm(int Mr, int N, int K, const float* A, int lda, const float* W, int ldw, float* C,
              float beta) const {
        const float one = 1.0f;
        UNFUSED_CHECK(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, N, Mr, K, &one, W, ldw, A, lda,
                                  &beta, C, N));
    }
};

EgnnUnfused::EgnnUnfused(const EgnnModel& model, int64_t max_batch)
    : impl_(std::make_unique<Impl>()) {
    Impl& im = *impl_;
    im.c = model.config;
    im.max_batch = max_batch;
    if (!im.c.atom_types.empty()) throw std::runtime_error("unfused EGNN: untyped models only");
    int count = 0;
    UNFUSED_CHECK(cudaGetDeviceCount(&count));
    const int n = im.c.n_particles, d = im.c.dim, H = im.c.hidden;
    if (d > 3) throw std::runtime_error("unfused EGNN: d <= 3");
    std::vector<float> pf(model.params.begin(), model.params.end());
    im.params.allocate(pf.size());
    UNFUSED_CHECK(
        cudaMemcpy(im.params.ptr, pf.data(), pf.size() * sizeof(float), cudaMemcpyHostToDevice));
    for (const ParamEntry& p : egnn_parameter_layout(im.c))
        im.ptr[p.name] = im.params.ptr + p.offset;
    const size_t B = static_cast<size_t>(max_batch), nd = static_cast<size_t>(n) * d;
    const size_t nodes = B * n, edges = B * n * (n - 1);
    for (DeviceFloats* a : {&im.x0, &im.xa, &im.xb, &im.v}) a->allocate(B * nd);
    im.t.allocate(B);
    for (DeviceFloats* a : {&im.h, &im.P, &im.Q, &im.M, &im.node_tmp}) a->allocate(nodes * H);
    im.edge_a.allocate(edges * H);
    im.edge_b.allocate(edges * H);
    for (DeviceFloats* a : {&im.r_e, &im.a_e, &im.phi}) a->allocate(edges);
    UNFUSED_CHECK(cublasCreate(&im.handle));
    UNFUSED_CHECK(cublasSetMathMode(im.handle, CUBLAS_DEFAULT_MATH));
}

EgnnUnfused::~EgnnUnfused() = default;

void EgnnUnfused::set_input(const float* x, const float* t, int64_t B) {
    Impl& im = *impl_;
    if (B > im.max_batch) throw std::runtime_error("unfused EGNN: batch above max_batch");
    const size_t nd = static_cast<size_t>(im.c.n_particles) * im.c.dim;
    UNFUSED_CHECK(cudaMemcpy(im.x0.ptr, x, B * nd * sizeof(float), cudaMemcpyHostToDevice));
    UNFUSED_CHECK(cudaMemcpy(im.t.ptr, t, B * sizeof(float), cudaMemcpyHostToDevice));
}

void EgnnUnfused::forward(int64_t B) {
    Impl& im = *impl_;
    if (B <= 0) return;
    const int n = im.c.n_particles, d = im.c.dim, H = im.c.hidden, F = im.c.in_features();
    const int64_t Bn = B * n, BE = Bn * (n - 1);
    const int nodes = static_cast<int>(Bn), edges = static_cast<int>(BE);
    embed_kernel<<<blocks(Bn * H), kThreads>>>(B, n, d, H, F, im.get("embedding.weight"),
                                               im.get("embedding.bias"), im.t.ptr, im.h.ptr);
    UNFUSED_CHECK_LAUNCH();
    UNFUSED_CHECK(
        cudaMemcpyAsync(im.xa.ptr, im.x0.ptr, B * n * d * sizeof(float), cudaMemcpyDeviceToDevice));
    float* x = im.xa.ptr;
    float* x_next = im.xb.ptr;
    const float cr = static_cast<float>(im.c.effective_coords_range());
    for (int l = 0; l < im.c.layers; ++l) {
        const std::string g = "gcl_" + std::to_string(l) + ".";
        const float* w1 = im.get(g + "edge_mlp.0.weight");
        // Per-node halves of the first edge layer: P = W1a h, Q = W1b h.
        im.gemm(nodes, H, H, im.h.ptr, H, w1, 2 * H + 2, im.P.ptr, 0.0f);
        im.gemm(nodes, H, H, im.h.ptr, H, w1 + H, 2 * H + 2, im.Q.ptr, 0.0f);
        edge_geometry_kernel<<<blocks(BE), kThreads>>>(BE, n, d, x, im.x0.ptr, im.r_e.ptr,
                                                       im.a_e.ptr);
        UNFUSED_CHECK_LAUNCH();
        edge_pre_kernel<<<blocks(BE * H), kThreads>>>(BE, n, H, im.P.ptr, im.Q.ptr, w1,
                                                      im.get(g + "edge_mlp.0.bias"), im.r_e.ptr,
                                                      im.a_e.ptr, im.edge_a.ptr);
        UNFUSED_CHECK_LAUNCH();
        im.gemm(edges, H, H, im.edge_a.ptr, H, im.get(g + "edge_mlp.2.weight"), H, im.edge_b.ptr,
                0.0f);
        edge_message_kernel<<<blocks(BE, kThreads / 32), kThreads>>>(
            BE, H, im.get(g + "edge_mlp.2.bias"),
            im.c.attention ? im.get(g + "att_mlp.0.weight") : nullptr,
            im.c.attention ? im.get(g + "att_mlp.0.bias") : nullptr, im.edge_b.ptr);
        UNFUSED_CHECK_LAUNCH();
        im.gemm(edges, H, H, im.edge_b.ptr, H, im.get(g + "coord_mlp.0.weight"), H, im.edge_a.ptr,
                0.0f);
        edge_phi_kernel<<<blocks(BE, kThreads / 32), kThreads>>>(
            BE, H, im.edge_a.ptr, im.get(g + "coord_mlp.0.bias"), im.get(g + "coord_mlp.2.weight"),
            im.c.tanh ? 1 : 0, cr, im.phi.ptr);
        UNFUSED_CHECK_LAUNCH();
        coord_update_kernel<<<blocks(Bn), kThreads>>>(Bn, n, d, x, im.r_e.ptr, im.phi.ptr, x_next);
        UNFUSED_CHECK_LAUNCH();
        if (l + 1 < im.c.layers) {  // the last node MLP cannot change v
            aggregate_kernel<<<blocks(Bn * H), kThreads>>>(Bn, n, H, im.edge_b.ptr, im.M.ptr);
            UNFUSED_CHECK_LAUNCH();
            const float* wn1 = im.get(g + "node_mlp.0.weight");
            im.gemm(nodes, H, H, im.h.ptr, H, wn1, 2 * H, im.node_tmp.ptr, 0.0f);
            im.gemm(nodes, H, H, im.M.ptr, H, wn1 + H, 2 * H, im.node_tmp.ptr, 1.0f);
            bias_act_kernel<<<blocks(Bn * H), kThreads>>>(Bn, H, im.get(g + "node_mlp.0.bias"), 1,
                                                          im.node_tmp.ptr);
            UNFUSED_CHECK_LAUNCH();
            im.gemm(nodes, H, H, im.node_tmp.ptr, H, im.get(g + "node_mlp.2.weight"), H, im.h.ptr,
                    1.0f);  // h += Wn2 s
            bias_act_kernel<<<blocks(Bn * H), kThreads>>>(Bn, H, im.get(g + "node_mlp.2.bias"), 0,
                                                          im.h.ptr);
            UNFUSED_CHECK_LAUNCH();
        }
        std::swap(x, x_next);
    }
    output_kernel<<<blocks(B * d), kThreads>>>(B, n, d, x, im.x0.ptr, im.v.ptr);
    UNFUSED_CHECK_LAUNCH();
}

void EgnnUnfused::synchronize() const {
    UNFUSED_CHECK(cudaDeviceSynchronize());
}

std::vector<float> EgnnUnfused::output(int64_t B) const {
    const size_t nd = static_cast<size_t>(impl_->c.n_particles) * impl_->c.dim;
    std::vector<float> v(static_cast<size_t>(B) * nd);
    UNFUSED_CHECK(
        cudaMemcpy(v.data(), impl_->v.ptr, v.size() * sizeof(float), cudaMemcpyDeviceToHost));
    return v;
}

size_t EgnnUnfused::device_bytes() const {
    const Impl& im = *impl_;
    size_t total = 0;
    for (const DeviceFloats* a :
         {&im.params, &im.x0, &im.xa, &im.xb, &im.t, &im.v, &im.h, &im.P, &im.Q, &im.M,
          &im.node_tmp, &im.edge_a, &im.edge_b, &im.r_e, &im.a_e, &im.phi})
        total += a->count * sizeof(float);
    return total;
}

}  // namespace eqflow::bench
