// The fast CPU backend of the field interface (eqflow/field.h) for the EGNN: float32, laid out
// for SIMD (src/cpu/simd_f32.h), the same equations as the double reference
// (src/cpu/egnn_cpu.cpp, docs/design.md section 4), which stays the truth it is tested against.
//
// Layout. The hidden width H is padded to Hp, a multiple of the SIMD width; padded weights and
// biases are zero, so padded lanes stay exactly zero through every layer (SiLU(0) = 0). Each
// call first packs the flat parameters (PyTorch layout, [out][in]) into one float array: every
// weight transposed to [in][out] for the forward products (the inner loop runs over outputs with
// unit stride), plus untransposed copies for the backward's transposed products. Packing is
// O(P), a few microseconds, and happens at the start of every call into the caller's workspace,
// so an optimiser that writes parameters() in place (train_ops::adam_update) is always seen, and
// calls keep no state between them.
//
// Tiles. Per sample and layer: P = h W1a^T + b1 and Q = h W1b^T for all n nodes (one [n][H]
// product each, the first-layer factorisation z1_ij = P_i + Q_j + w1r r_ij + w1a a_ij); then the
// n(n-1) ordered edges (i-major) in blocks of kEdgeBlock rows: Z1 and S1 = SiLU(Z1) rowwise,
// Z2 = S1 W2^T + b2 and Zc = Me Wc1^T + bc1 as [rows][Hp] x [Hp][Hp] products, register-blocked
// (tile_rows x Hp/lanes accumulators), attention and the coordinate weight per row (sigmoid(z)
// of each SiLU kept, so SiLU' later needs no exp; a block's gate logits and coordinate weights go
// through exp / tanh as vectors); then the node MLP as two [n][.] products. In layer 0 of an
// untyped model all nodes have the same h, so edges (i, j) and (j, i) are computed once, as the
// pair i < j (layer_edges). Backward recomputes
// each block's forward from the stored node states (h, x, M per layer, as the reference), or reads
// it from a per-sample edge tape when that fits in about the L2 cache (kEdgeTapeBytes: LJ13 yes,
// LJ55 no), and runs the transposed products (G_s1 = G_z2 W2, ...) and the weight-gradient products
// (dW2^T += S1^T G_z2, ...) on the same block. A plain backward first repeats the sample's forward
// (calls keep no state); forward_backward (the training step) runs each sample's forward with v,
// the caller's dL/dv of that row, and the backward on the same tape, so the step pays for one
// forward pass, not two, with the same bits as forward then backward. Forward mode carries K
// tangents per sample in node-major arrays [n][K][Hp]: per edge, the K tangent rows go through W2
// as one [K][Hp] x [Hp][Hp] product with the primal quantities computed once, and the tangent of c
// = wc2 . SiLU(Wc1 me + bc1) is (Wc1^T dsc) . me-tangent, one H x H product per edge rather than
// per direction; in layer 0 (no tangent on h) an edge's tangent is linear in (dr, da) only, so two
// basis tangents per edge replace the K. The coordinates' tangents are coordinate-major, [n][d][Kp]
// (directions innermost, padded to the vector width), so the per-direction work of an edge is
// vector arithmetic over the directions. The exact divergence wants only the Jacobian's diagonal,
// so its last layer carries each edge's d own directions instead of the K (sample_jvp).
//
// Threads. Rows are cut into fixed chunks of kChunkRows; min(threads, chunks) workers take
// chunks w, w + W, w + 2W, ... with their own scratch. Every row's v, dL_dx, div and trace is
// computed by one worker alone; the parameter gradient of each chunk goes to its own slot. So
// results do not depend on the thread count (bit for bit).
//
// Where double accumulation happens, and why:
//   - The parameter gradient: edge contributions are summed in float in the register tiles and a
//     float accumulator [Pg] (about kFlushEdges terms, or one sample's n(n-1) if more, before a
//     flush); every kFlushEdges edges (and at the end of a chunk) that accumulator is added to the
//     chunk's double slot, and the slots are summed in chunk order in double before the one
//     rounding to float into dL_dparams. A batch of 256 LJ13 samples sums ~40,000 edge terms per
//     weight; a float running sum would carry ~1e-4 relative error, the double one none worth
//     counting.
//   - The divergence trace sum_p (J e_p)_p and the Hutchinson sum (1/K) sum_k eps_k . J eps_k:
//     n*d (or K*n*d) terms of either sign whose sum can be much smaller than its terms.
//   - The particle-mean removals (n terms) are in float: short sums of similar-sized numbers.
//
// Gradient contract: parameter gradients ACCUMULATE (+=), input gradients OVERWRITE (=).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "common/egnn_offsets.h"
#include "cpu/egnn_lanes.h"
#include "cpu/simd_f32.h"
#include "eqflow/egnn.h"
#include "eqflow/error.h"
#include "eqflow/field.h"
#include "eqflow/parallel.h"

namespace eqflow {

namespace {

namespace simd = cpu::simd;
using simd::kLanes;
using simd::vf;

constexpr int64_t kChunkRows = 16;     // rows per chunk: fixes the gradient's summation order
constexpr int kEdgeBlock = 32;         // edge rows per tile: 12 [32][Hp] arrays stay in L1/L2
constexpr int64_t kFlushEdges = 1024;  // float gradient terms per weight before a double flush
constexpr int kMaxPairDim = 8;         // layer 0 as pairs (layer_edges) up to this dimension
constexpr float kNormEps = 1e-8f;      // docs/design.md section 4: sqrt(r_ij + 1e-8) + 1
// Backward keeps every edge's forward quantities of a sample (10 [E][Hp] arrays a layer) when
// they fit in this many bytes, about the L2 cache: LJ13 (0.6 MB) does, LJ55 (54 MB) would stream
// from memory and recomputes them per layer instead, which is faster there.
constexpr size_t kEdgeTapeBytes = 4u << 20;

// One row of an edge MLP's SiLU: sig = sigmoid(z), act = z sig over Hp units (both kept for
// the backward), and returns w . act (the attention logit or the coordinate weight, before its
// bias or tanh).
inline float silu_dot(int Hp, const float* z, const float* w, float* sig, float* act) {
    vf dot = vf{};
    for (int o = 0; o < Hp; o += kLanes) {
        const vf zo = simd::load(z + o);
        const vf sg = simd::vsigmoid(zo);
        simd::store(sig + o, sg);
        simd::store(act + o, zo * sg);
        dot += zo * sg * simd::load(w + o);
    }
    return simd::hsum(dot);
}

int64_t chunk_count(int64_t B) {
    return (B + kChunkRows - 1) / kChunkRows;
}
int round_up(int x, int m) {
    return (x + m - 1) / m * m;
}

// Offsets of the packed weights (floats). The first `grad_size` floats are also the layout of
// the packed gradient; the untransposed copies after them are read only by backward.
struct LayerPack {
    int64_t w1aT, w1bT, w1r, w1a, b1;  // [Hp][Hp] x2, [Hp] x3
    int64_t w2T, b2;                   // [Hp][Hp], [Hp]
    int64_t wn1T, bn1, wn2T, bn2;      // [2Hp][Hp] (rows: h | M), [Hp], [Hp][Hp], [Hp]
    int64_t wc1T, bc1, wc2;            // [Hp][Hp], [Hp], [Hp]
    int64_t wa, ba;                    // [Hp], [Hp] (ba in element 0)
    int64_t w1a_n, w1b_n, w2_n, wn1_n, wn2_n, wc1_n;  // untransposed [out][in], rows Hp
};

struct Pack {
    int64_t embT = 0, emb_b = 0;  // [F][Hp], [Hp]
    std::vector<LayerPack> layers;
    int64_t grad_size = 0, total = 0;
    std::vector<int64_t> map;  // packed index -> parameter index, -1 for padding (zero)
};

Pack make_pack(const EgnnConfig& c, int Hp) {
    const EgnnOffsets off = egnn_offsets(c);
    const int H = c.hidden, F = c.in_features(), L = c.layers;
    const int64_t HH = static_cast<int64_t>(Hp) * Hp;
    Pack p;
    int64_t cur = 0;
    auto take = [&](int64_t count) {
        const int64_t o = cur;
        cur += count;
        return o;
    };
    p.embT = take(static_cast<int64_t>(F) * Hp);
    p.emb_b = take(Hp);
    p.layers.resize(static_cast<size_t>(L));
    for (LayerPack& lp : p.layers) {
        lp.w1aT = take(HH);
        lp.w1bT = take(HH);
        lp.w1r = take(Hp);
        lp.w1a = take(Hp);
        lp.b1 = take(Hp);
        lp.w2T = take(HH);
        lp.b2 = take(Hp);
        lp.wn1T = take(2 * HH);
        lp.bn1 = take(Hp);
        lp.wn2T = take(HH);
        lp.bn2 = take(Hp);
        lp.wc1T = take(HH);
        lp.bc1 = take(Hp);
        lp.wc2 = take(Hp);
        lp.wa = take(Hp);
        lp.ba = take(Hp);
    }
    p.grad_size = cur;
    for (LayerPack& lp : p.layers) {
        lp.w1a_n = take(HH);
        lp.w1b_n = take(HH);
        lp.w2_n = take(HH);
        lp.wn1_n = take(2 * HH);
        lp.wn2_n = take(HH);
        lp.wc1_n = take(HH);
    }
    p.total = cur;
    p.map.assign(static_cast<size_t>(p.total), -1);
    std::vector<int64_t>& m = p.map;
    // packed[k0 + k][o] (row stride Hp) <- W[o][col0 + k] (row stride ld), o < rows, k < cols
    auto put_t = [&](int64_t dst, int64_t src, int rows, int cols, int64_t ld, int col0, int k0) {
        for (int o = 0; o < rows; ++o)
            for (int k = 0; k < cols; ++k)
                m[static_cast<size_t>(dst + static_cast<int64_t>(k0 + k) * Hp + o)] =
                    src + o * ld + col0 + k;
    };
    // packed[o][k0 + k] (row stride ldp) <- W[o][col0 + k]
    auto put_n = [&](int64_t dst, int64_t ldp, int64_t src, int rows, int cols, int64_t ld,
                     int col0, int k0) {
        for (int o = 0; o < rows; ++o)
            for (int k = 0; k < cols; ++k)
                m[static_cast<size_t>(dst + o * ldp + k0 + k)] = src + o * ld + col0 + k;
    };
    auto put_v = [&](int64_t dst, int64_t src, int count, int64_t stride) {
        for (int k = 0; k < count; ++k) m[static_cast<size_t>(dst + k)] = src + k * stride;
    };
    put_t(p.embT, off.emb_w, H, F, F, 0, 0);
    put_v(p.emb_b, off.emb_b, H, 1);
    for (int l = 0; l < L; ++l) {
        const EgnnLayerOffsets& lo = off.layers[static_cast<size_t>(l)];
        const LayerPack& lp = p.layers[static_cast<size_t>(l)];
        const int64_t ld1 = 2 * H + 2;
        put_t(lp.w1aT, lo.edge_w0, H, H, ld1, 0, 0);
        put_t(lp.w1bT, lo.edge_w0, H, H, ld1, H, 0);
        put_v(lp.w1r, lo.edge_w0 + 2 * H, H, ld1);
        put_v(lp.w1a, lo.edge_w0 + 2 * H + 1, H, ld1);
        put_v(lp.b1, lo.edge_b0, H, 1);
        put_t(lp.w2T, lo.edge_w2, H, H, H, 0, 0);
        put_v(lp.b2, lo.edge_b2, H, 1);
        put_t(lp.wn1T, lo.node_w0, H, H, 2 * H, 0, 0);
        put_t(lp.wn1T, lo.node_w0, H, H, 2 * H, H, Hp);
        put_v(lp.bn1, lo.node_b0, H, 1);
        put_t(lp.wn2T, lo.node_w2, H, H, H, 0, 0);
        put_v(lp.bn2, lo.node_b2, H, 1);
        put_t(lp.wc1T, lo.coord_w0, H, H, H, 0, 0);
        put_v(lp.bc1, lo.coord_b0, H, 1);
        put_v(lp.wc2, lo.coord_w2, H, 1);
        if (c.attention) {
            put_v(lp.wa, lo.att_w0, H, 1);
            m[static_cast<size_t>(lp.ba)] = lo.att_b0;
        }
        put_n(lp.w1a_n, Hp, lo.edge_w0, H, H, ld1, 0, 0);
        put_n(lp.w1b_n, Hp, lo.edge_w0, H, H, ld1, H, 0);
        put_n(lp.w2_n, Hp, lo.edge_w2, H, H, H, 0, 0);
        put_n(lp.wn1_n, 2 * Hp, lo.node_w0, H, H, 2 * H, 0, 0);
        put_n(lp.wn1_n, 2 * Hp, lo.node_w0, H, H, 2 * H, H, Hp);
        put_n(lp.wn2_n, Hp, lo.node_w2, H, H, H, 0, 0);
        put_n(lp.wc1_n, Hp, lo.coord_w0, H, H, H, 0, 0);
    }
    return p;
}

struct Dims {
    int n, d, H, Hp, F, T, L;
    int64_t E;  // n (n - 1) ordered edges
    bool attention, tanh;
    float cr;
};

// Bump allocation of float arrays in a worker's scratch; with base == nullptr it only counts.
struct Carver {
    float* base;
    size_t used = 0;
    float* take(int64_t count) {
        float* p = base ? base + used : nullptr;
        used += static_cast<size_t>((count + 15) / 16 * 16);
        return p;
    }
};

// The per-edge forward quantities of a run of edges (rows).
struct EdgeArrays {
    float *Z1, *S1, *Z2, *Mm, *Me, *Zc, *Sc;  // [rows][Hp]
    float *G1, *G2, *Gc;                      // [rows][Hp] sigmoid(Z1), sigmoid(Z2), sigmoid(Zc)
    float *r, *a, *nrm, *g, *th_c, *phi;      // [rows]
    float *dx, *dx0;                          // [rows][d]: x_i - x_j, x0_i - x0_j

    void carve(Carver& c, int64_t rows, int64_t Hp, int64_t d) {
        for (float** p : {&Z1, &S1, &Z2, &Mm, &Me, &Zc, &Sc, &G1, &G2, &Gc}) *p = c.take(rows * Hp);
        for (float** p : {&r, &a, &nrm, &g, &th_c, &phi}) *p = c.take(rows);
        for (float** p : {&dx, &dx0}) *p = c.take(rows * d);
    }
    EdgeArrays at(int64_t row, int64_t Hp, int64_t d) const {
        EdgeArrays e = *this;
        for (float** p : {&e.Z1, &e.S1, &e.Z2, &e.Mm, &e.Me, &e.Zc, &e.Sc, &e.G1, &e.G2, &e.Gc})
            *p += row * Hp;
        for (float** p : {&e.r, &e.a, &e.nrm, &e.g, &e.th_c, &e.phi}) *p += row;
        for (float** p : {&e.dx, &e.dx0}) *p += row * d;
        return e;
    }
};

// One worker's scratch for one call.
struct Scratch {
    // node states per layer (the tape): h [L+1][n][Hp], x [L+1][n][d], M [L][n][Hp]
    float *th, *tx, *tM;
    float *P, *Q, *U, *Zn, *Sn;  // [n][Hp], U [n][2Hp]
    // The edge quantities the code reads and writes (Z1 ... dx0 below) point into one of: `blk`,
    // a block of kEdgeBlock rows, recomputed per block; or, for backward, `tape`, every edge of
    // every layer of the current sample ([L][E] rows), written by the forward pass and read back
    // by the backward, so the backward does not recompute the edges' forward. use() points them.
    EdgeArrays blk, tape;
    bool has_tape = false;
    float *Z1, *S1, *Z2, *Mm, *Me, *Zc, *Sc, *G1, *G2, *Gc;
    float *r, *a, *nrm, *g, *th_c, *phi;
    float *dx, *dx0;
    float *GA, *GB;        // [kEdgeBlock][Hp] backward temporaries
    float *gc, *gr, *gdx;  // [kEdgeBlock], gdx [kEdgeBlock][d]

    void use(const EdgeArrays& e) {
        Z1 = e.Z1, S1 = e.S1, Z2 = e.Z2, Mm = e.Mm, Me = e.Me, Zc = e.Zc, Sc = e.Sc;
        G1 = e.G1, G2 = e.G2, Gc = e.Gc;
        r = e.r, a = e.a, nrm = e.nrm, g = e.g, th_c = e.th_c, phi = e.phi;
        dx = e.dx, dx0 = e.dx0;
    }
    // backward
    float *gh, *gh2, *gM, *gP, *gQ, *gU, *gZn;  // [n][Hp], gU [n][2Hp]
    float *gx, *gx2, *gx0;                      // [n][d]
    float* G;                                   // [grad_size] the float gradient accumulator
    // forward mode with K tangents
    float *hd, *hd2, *Pd, *Qd, *Md;      // [n][K][Hp]
    float *xd, *xd2, *x0d;               // [n][d][Kp]: coordinate-major, Kp = K padded to lanes
    float *S1d, *Z2d;                    // [max(K, 2)][Hp]
    float* Med;                          // [2][Hp]
    float *rd, *ad, *cd, *dd;            // [Kp] (padding zero), dd [d][Kp]
    float *ds1, *dm, *dmg, *dsc, *weff;  // [Hp]; dmg = dm g (g the edge's gate, or 1)
    float *u_a, *u_c;                    // [Hp]

    // Returns the floats used; with mem == nullptr only counts.
    static size_t carve(Scratch& s, float* mem, const Dims& D, FieldOp op, int K,
                        int64_t grad_size) {
        Carver c{mem};
        const int64_t n = D.n, d = D.d, Hp = D.Hp, L = D.L, EB = kEdgeBlock;
        s.th = c.take((L + 1) * n * Hp);
        s.tx = c.take((L + 1) * n * d);
        s.tM = c.take(L * n * Hp);
        s.P = c.take(n * Hp);
        s.Q = c.take(n * Hp);
        s.U = c.take(n * 2 * Hp);
        s.Zn = c.take(n * Hp);
        s.Sn = c.take(n * Hp);
        s.blk.carve(c, EB, Hp, d);
        s.use(s.blk);
        const int64_t tape_floats = L * D.E * (10 * Hp + 6 + 2 * d);
        s.has_tape = op == FieldOp::backward &&
                     static_cast<size_t>(tape_floats) * sizeof(float) <= kEdgeTapeBytes;
        for (float** p : {&s.GA, &s.GB}) *p = c.take(EB * Hp);
        for (float** p : {&s.gc, &s.gr}) *p = c.take(EB);
        s.gdx = c.take(EB * d);
        if (op == FieldOp::backward) {
            if (s.has_tape) s.tape.carve(c, L * D.E, Hp, d);
            for (float** p : {&s.gh, &s.gh2, &s.gM, &s.gP, &s.gQ, &s.gZn}) *p = c.take(n * Hp);
            s.gU = c.take(n * 2 * Hp);
            for (float** p : {&s.gx, &s.gx2, &s.gx0}) *p = c.take(n * d);
            s.G = c.take(grad_size);
        }
        if (op == FieldOp::divergence || op == FieldOp::jvp_trace) {
            const int64_t nK = n * K;
            for (float** p : {&s.hd, &s.hd2, &s.Pd, &s.Qd, &s.Md}) *p = c.take(nK * Hp);
            const int64_t Kp = round_up(K, kLanes);
            for (float** p : {&s.xd, &s.xd2, &s.x0d}) *p = c.take(n * d * Kp);
            // K rows, and at least layer 0's two basis rows (K = 1: one Hutchinson probe).
            for (float** p : {&s.S1d, &s.Z2d}) *p = c.take(std::max<int64_t>(K, 2) * Hp);
            s.Med = c.take(2 * int64_t{Hp});  // layer 0's two basis rows
            for (float** p : {&s.rd, &s.ad, &s.cd}) *p = c.take(Kp);
            s.dd = c.take(d * Kp);  // [d][Kp]
            for (float** p : {&s.ds1, &s.dm, &s.dmg, &s.dsc, &s.weff, &s.u_a, &s.u_c})
                *p = c.take(Hp);
        }
        return c.used;
    }
};

// Everything a call reads: dimensions, the packed weights and the edge list.
struct Net {
    Dims D;
    const Pack* pack;
    const float* W;    // packed weights [pack->total]
    const int* ei;     // [E] source of each edge (i-major)
    const int* ej;     // [E] target
    const int* types;  // [n] or nullptr
    const int* pi;     // [E/2] the pairs i < j (i-major)
    const int* pj;
    const float* at(int64_t off) const { return W + off; }
};

// The edges one layer runs over. In general all n(n-1) ordered edges. In layer 0 of a model
// without atom types every node has the same h (the embedding of t alone), so P_i + Q_j = P_j +
// Q_i and z1_ij = z1_ji bit for bit (r and a are symmetric): the edge MLPs give edge (j, i)
// exactly what they give (i, j), and dx_ji = -dx_ij. There the layer runs over the n(n-1)/2
// pairs i < j, each scattering to both ends (x_i += dx s, x_j -= dx s, M_i and M_j += me), and
// backward takes the pair as one edge whose upstream gradients are gx_i - gx_j and gM_i + gM_j:
// half the edge work of that layer, a sixth of the edge work at L = 3.
struct EdgeSet {
    const int* ei;
    const int* ej;
    int64_t E;
    bool pairs;
};
EdgeSet all_edges(const Net& net) {
    return {net.ei, net.ej, net.D.E, false};
}
EdgeSet layer_edges(const Net& net, int l) {
    if (l == 0 && net.D.T == 0 && net.D.d <= kMaxPairDim)
        return {net.pi, net.pj, net.D.E / 2, true};
    return all_edges(net);
}

// ---- primal ------------------------------------------------------------------------------

inline void add_to(float* dst, const float* src, int Hp) {
    for (int o = 0; o < Hp; o += kLanes)
        simd::store(dst + o, simd::load(dst + o) + simd::load(src + o));
}

// h0 [n][Hp] = emb_w f_i + emb_b with f_i = [one_hot(type_i), t].
void embed(const Net& net, float t, float* h0) {
    const Dims& D = net.D;
    const float* embT = net.at(net.pack->embT);
    const float* eb = net.at(net.pack->emb_b);
    for (int i = 0; i < D.n; ++i) {
        float* h = h0 + static_cast<int64_t>(i) * D.Hp;
        for (int o = 0; o < D.Hp; ++o)
            h[o] = eb[o] + t * embT[static_cast<int64_t>(D.T) * D.Hp + o];
        if (D.T > 0) {
            const float* row = embT + static_cast<int64_t>(net.types[i]) * D.Hp;
            for (int o = 0; o < D.Hp; ++o) h[o] += row[o];
        }
    }
}

// P [n][Hp] = h W1a^T + b1, Q = h W1b^T.
void node_projections(const Net& net, const LayerPack& lp, const float* h, float* P, float* Q) {
    const Dims& D = net.D;
    simd::gemm(D.n, D.Hp, D.H, h, D.Hp, net.at(lp.w1aT), D.Hp, net.at(lp.b1), false, P, D.Hp);
    simd::gemm(D.n, D.Hp, D.H, h, D.Hp, net.at(lp.w1bT), D.Hp, nullptr, false, Q, D.Hp);
}

// The forward quantities of edges e0 .. e0+m of one sample into the block arrays of s.
void edge_block_forward(const Net& net, const LayerPack& lp, const EdgeSet& es, int64_t e0, int m,
                        const float* x, const float* x0, Scratch& s) {
    const Dims& D = net.D;
    const int Hp = D.Hp, d = D.d;
    const float* w1r = net.at(lp.w1r);
    const float* w1a = net.at(lp.w1a);
    for (int e = 0; e < m; ++e) {
        const int i = es.ei[e0 + e], j = es.ej[e0 + e];
        float r = 0.0f, a = 0.0f;
        for (int k = 0; k < d; ++k) {
            const float dx = x[i * d + k] - x[j * d + k];
            const float dx0 = x0[i * d + k] - x0[j * d + k];
            s.dx[e * d + k] = dx;
            s.dx0[e * d + k] = dx0;
            r += dx * dx;
            a += dx0 * dx0;
        }
        s.r[e] = r;
        s.a[e] = a;
        s.nrm[e] = std::sqrt(r + kNormEps) + 1.0f;
        const float* Pi = s.P + static_cast<int64_t>(i) * Hp;
        const float* Qj = s.Q + static_cast<int64_t>(j) * Hp;
        float* z1 = s.Z1 + static_cast<int64_t>(e) * Hp;
        float* s1 = s.S1 + static_cast<int64_t>(e) * Hp;
        float* g1 = s.G1 + static_cast<int64_t>(e) * Hp;
        for (int o = 0; o < Hp; o += kLanes) {
            const vf z = simd::load(Pi + o) + simd::load(Qj + o) + simd::load(w1r + o) * r +
                         simd::load(w1a + o) * a;
            const vf sg = simd::vsigmoid(z);
            simd::store(z1 + o, z);
            simd::store(g1 + o, sg);
            simd::store(s1 + o, z * sg);
        }
    }
    // Per-edge scalars (gate logits, then coordinate weights) go through exp / tanh in vectors.
    alignas(64) float tmp[kEdgeBlock] = {};
    simd::gemm(m, Hp, D.H, s.S1, Hp, net.at(lp.w2T), Hp, net.at(lp.b2), false, s.Z2, Hp);
    const float* wa = net.at(lp.wa);
    const float ba = net.at(lp.ba)[0];
    for (int e = 0; e < m; ++e) {
        const int64_t row = static_cast<int64_t>(e) * Hp;
        tmp[e] = silu_dot(Hp, s.Z2 + row, wa, s.G2 + row, s.Mm + row) + ba;
    }
    for (int e = 0; e < kEdgeBlock; e += kLanes) {
        const vf g = D.attention ? simd::vsigmoid(simd::load(tmp + e)) : simd::splat(1.0f);
        simd::store(tmp + e, g);
    }
    for (int e = 0; e < m; ++e) {
        const float g = tmp[e];
        s.g[e] = g;
        const float* mm = s.Mm + static_cast<int64_t>(e) * Hp;
        float* me = s.Me + static_cast<int64_t>(e) * Hp;
        for (int o = 0; o < Hp; o += kLanes) simd::store(me + o, simd::load(mm + o) * g);
    }
    simd::gemm(m, Hp, D.H, s.Me, Hp, net.at(lp.wc1T), Hp, net.at(lp.bc1), false, s.Zc, Hp);
    const float* wc2 = net.at(lp.wc2);
    for (int e = 0; e < m; ++e) {
        const int64_t row = static_cast<int64_t>(e) * Hp;
        tmp[e] = silu_dot(Hp, s.Zc + row, wc2, s.Gc + row, s.Sc + row);
    }
    if (D.tanh) {
        alignas(64) float th[kEdgeBlock];
        for (int e = 0; e < kEdgeBlock; e += kLanes)
            simd::store(th + e, simd::vtanh(simd::load(tmp + e)));
        for (int e = 0; e < m; ++e) {
            s.th_c[e] = th[e];
            s.phi[e] = D.cr * th[e];
        }
    } else {
        for (int e = 0; e < m; ++e) {
            s.th_c[e] = 0.0f;
            s.phi[e] = tmp[e];
        }
    }
}

// x_out[i] += dx phi / nrm and M[i] += me for the edges of a block (pairs: and x_out[j] -=
// dx phi / nrm, M[j] += me).
void edge_block_scatter(const Net& net, const EdgeSet& es, int64_t e0, int m, const Scratch& s,
                        float* x_out, float* M) {
    const int Hp = net.D.Hp, d = net.D.d;
    for (int e = 0; e < m; ++e) {
        const int i = es.ei[e0 + e];
        const float sc = s.phi[e] / s.nrm[e];
        for (int k = 0; k < d; ++k) x_out[i * d + k] += s.dx[e * d + k] * sc;
        const float* me = s.Me + static_cast<int64_t>(e) * Hp;
        add_to(M + static_cast<int64_t>(i) * Hp, me, Hp);
        if (es.pairs) {
            const int j = es.ej[e0 + e];
            for (int k = 0; k < d; ++k) x_out[j * d + k] -= s.dx[e * d + k] * sc;
            add_to(M + static_cast<int64_t>(j) * Hp, me, Hp);
        }
    }
}

// Node update h_out = h + Wn2 SiLU(Wn1 [h, M] + bn1) + bn2; leaves U, Zn, Sn in s (h_out
// nullable: only those).
void node_update(const Net& net, const LayerPack& lp, const float* h, const float* M, float* h_out,
                 Scratch& s) {
    const Dims& D = net.D;
    const int Hp = D.Hp;
    for (int i = 0; i < D.n; ++i) {
        std::memcpy(s.U + static_cast<int64_t>(i) * 2 * Hp, h + static_cast<int64_t>(i) * Hp,
                    sizeof(float) * Hp);
        std::memcpy(s.U + static_cast<int64_t>(i) * 2 * Hp + Hp, M + static_cast<int64_t>(i) * Hp,
                    sizeof(float) * Hp);
    }
    simd::gemm(D.n, Hp, 2 * Hp, s.U, 2 * Hp, net.at(lp.wn1T), Hp, net.at(lp.bn1), false, s.Zn, Hp);
    for (int64_t k = 0; k < static_cast<int64_t>(D.n) * Hp; k += kLanes)
        simd::store(s.Sn + k, simd::vsilu(simd::load(s.Zn + k)));
    if (!h_out) return;
    std::memcpy(h_out, h, sizeof(float) * D.n * Hp);
    simd::gemm(D.n, Hp, D.H, s.Sn, Hp, net.at(lp.wn2T), Hp, nullptr, true, h_out, Hp);
    const float* bn2 = net.at(lp.bn2);
    for (int i = 0; i < D.n; ++i)
        for (int o = 0; o < Hp; o += kLanes) {
            float* p = h_out + static_cast<int64_t>(i) * Hp + o;
            simd::store(p, simd::load(p) + simd::load(bn2 + o));
        }
}

// The whole forward pass of one sample, filling the tape; v [n][d] nullable.
void sample_forward(const Net& net, const float* x, float t, float* v, Scratch& s) {
    const Dims& D = net.D;
    const int64_t nH = static_cast<int64_t>(D.n) * D.Hp, nd = static_cast<int64_t>(D.n) * D.d;
    embed(net, t, s.th);
    std::memcpy(s.tx, x, sizeof(float) * nd);
    for (int l = 0; l < D.L; ++l) {
        const LayerPack& lp = net.pack->layers[static_cast<size_t>(l)];
        const float* h = s.th + l * nH;
        const float* xl = s.tx + l * nd;
        float* x_out = s.tx + (l + 1) * nd;
        float* M = s.tM + l * nH;
        node_projections(net, lp, h, s.P, s.Q);
        std::memcpy(x_out, xl, sizeof(float) * nd);
        std::fill(M, M + nH, 0.0f);
        const EdgeSet es = layer_edges(net, l);
        for (int64_t e0 = 0; e0 < es.E; e0 += kEdgeBlock) {
            const int m = static_cast<int>(std::min<int64_t>(kEdgeBlock, es.E - e0));
            if (s.has_tape) s.use(s.tape.at(l * D.E + e0, D.Hp, D.d));
            edge_block_forward(net, lp, es, e0, m, xl, x, s);
            edge_block_scatter(net, es, e0, m, s, x_out, M);
        }
        // After the last layer the node update cannot change v.
        if (l + 1 < D.L) node_update(net, lp, h, M, s.th + (l + 1) * nH, s);
    }
    if (v) {
        const float* xL = s.tx + D.L * nd;
        for (int k = 0; k < D.d; ++k) {
            float mean = 0.0f;
            for (int i = 0; i < D.n; ++i) mean += xL[i * D.d + k] - x[i * D.d + k];
            mean /= static_cast<float>(D.n);
            for (int i = 0; i < D.n; ++i) v[i * D.d + k] = xL[i * D.d + k] - x[i * D.d + k] - mean;
        }
    }
}

// ---- reverse mode ------------------------------------------------------------------------

inline void add_scaled(float* dst, const float* src, float a, int Hp) {
    for (int o = 0; o < Hp; o += kLanes)
        simd::store(dst + o, simd::load(dst + o) + simd::load(src + o) * a);
}

// One layer backward for one sample. gh_out, gx_out: dL/d(layer outputs); gh_in, gx_in are
// overwritten with dL/d(layer inputs); gx0 += dL/dx0 through a_ij; G += parameter gradient
// (packed layout). The layer's h, x, M come from the tape; every edge's forward quantities from
// the edge tape when the sample has one (kEdgeTapeBytes), else recomputed per block.
void layer_backward(const Net& net, int l, const float* x0, const float* gh_out,
                    const float* gx_out, float* gh_in, float* gx_in, float* gx0, float* G,
                    Scratch& s) {
    const Dims& D = net.D;
    const int n = D.n, d = D.d, Hp = D.Hp, H = D.H;
    const int64_t nH = static_cast<int64_t>(n) * Hp, nd = static_cast<int64_t>(n) * d;
    const LayerPack& lp = net.pack->layers[static_cast<size_t>(l)];
    const float* h = s.th + l * nH;
    const float* M = s.tM + l * nH;
    const bool last = l + 1 == D.L;
    std::memcpy(gh_in, gh_out, sizeof(float) * nH);
    std::memcpy(gx_in, gx_out, sizeof(float) * nd);
    std::fill(s.gM, s.gM + nH, 0.0f);

    // Node update (skipped after the last layer, where gh_out is zero).
    if (!last) {
        node_update(net, lp, h, M, nullptr, s);  // recomputes U, Zn, Sn
        for (int i = 0; i < n; ++i) add_to(G + lp.bn2, gh_out + static_cast<int64_t>(i) * Hp, Hp);
        simd::gemm_tn(n, Hp, Hp, s.Sn, Hp, gh_out, Hp, G + lp.wn2T, Hp);
        // dL/dSn = gh_out Wn2, then dL/dZn
        simd::gemm(n, Hp, H, gh_out, Hp, net.at(lp.wn2_n), Hp, nullptr, false, s.gZn, Hp);
        for (int64_t k = 0; k < nH; k += kLanes)
            simd::store(s.gZn + k, simd::load(s.gZn + k) * simd::vdsilu(simd::load(s.Zn + k)));
        for (int i = 0; i < n; ++i) add_to(G + lp.bn1, s.gZn + static_cast<int64_t>(i) * Hp, Hp);
        simd::gemm_tn(n, 2 * Hp, Hp, s.U, 2 * Hp, s.gZn, Hp, G + lp.wn1T, Hp);
        simd::gemm(n, 2 * Hp, H, s.gZn, Hp, net.at(lp.wn1_n), 2 * Hp, nullptr, false, s.gU, 2 * Hp);
        for (int i = 0; i < n; ++i) {
            add_to(gh_in + static_cast<int64_t>(i) * Hp, s.gU + static_cast<int64_t>(i) * 2 * Hp,
                   Hp);
            std::memcpy(s.gM + static_cast<int64_t>(i) * Hp,
                        s.gU + static_cast<int64_t>(i) * 2 * Hp + Hp, sizeof(float) * Hp);
        }
    }

    // Edges: their forward quantities are on the tape, or recomputed per block.
    if (!s.has_tape) {
        node_projections(net, lp, h, s.P, s.Q);
        s.use(s.blk);
    }
    std::fill(s.gP, s.gP + nH, 0.0f);
    std::fill(s.gQ, s.gQ + nH, 0.0f);
    const float* wc2 = net.at(lp.wc2);
    const float* wa = net.at(lp.wa);
    const float* w1r = net.at(lp.w1r);
    const float* w1a = net.at(lp.w1a);
    const EdgeSet es = layer_edges(net, l);
    // Pairs: gx_i - gx_j, the upstream gradient of the pair as one edge.
    float gx_pair[kMaxPairDim];
    alignas(64) float gzav[kEdgeBlock];  // the gate logits' gradients of a block
    for (int64_t e0 = 0; e0 < es.E; e0 += kEdgeBlock) {
        const int m = static_cast<int>(std::min<int64_t>(kEdgeBlock, es.E - e0));
        if (s.has_tape)
            s.use(s.tape.at(l * D.E + e0, Hp, d));
        else
            edge_block_forward(net, lp, es, e0, m, s.tx + l * nd, x0, s);
        // x_i += dx phi / nrm; phi = cr tanh(c); c = wc2 . SiLU(zc)
        for (int e = 0; e < m; ++e) {
            const int i = es.ei[e0 + e];
            const float* gxi = gx_out + i * d;
            if (es.pairs) {
                const float* gxj = gx_out + es.ej[e0 + e] * d;
                for (int k = 0; k < d; ++k) gx_pair[k] = gxi[k] - gxj[k];
                gxi = gx_pair;
            }
            const float nrm = s.nrm[e], phi = s.phi[e];
            float dot = 0.0f;
            for (int k = 0; k < d; ++k) dot += gxi[k] * s.dx[e * d + k];
            const float g_phi = dot / nrm;
            for (int k = 0; k < d; ++k) s.gdx[e * d + k] = gxi[k] * phi / nrm;
            const float g_nrm = -dot * phi / (nrm * nrm);
            s.gr[e] = g_nrm * 0.5f / (nrm - 1.0f);
            const float gc = D.tanh ? g_phi * D.cr * (1.0f - s.th_c[e] * s.th_c[e]) : g_phi;
            s.gc[e] = gc;
            const float* zc = s.Zc + static_cast<int64_t>(e) * Hp;
            const float* sgc = s.Gc + static_cast<int64_t>(e) * Hp;
            float* ga = s.GA + static_cast<int64_t>(e) * Hp;
            for (int o = 0; o < Hp; o += kLanes) {
                const vf gz = simd::load(wc2 + o) * gc *
                              simd::vdsilu_sig(simd::load(zc + o), simd::load(sgc + o));
                simd::store(ga + o, gz);
            }
        }
        // The block's vector-parameter gradients as column sums over its edges, in edge order
        // (so the same sums as edge by edge), the accumulator in a register instead of a load,
        // add and store of G per edge.
        for (int o = 0; o < Hp; o += kLanes) {
            vf gw = simd::load(G + lp.wc2 + o), gb = simd::load(G + lp.bc1 + o);
            for (int e = 0; e < m; ++e) {
                gw = gw + simd::load(s.Sc + static_cast<int64_t>(e) * Hp + o) * s.gc[e];
                gb = gb + simd::load(s.GA + static_cast<int64_t>(e) * Hp + o);
            }
            simd::store(G + lp.wc2 + o, gw);
            simd::store(G + lp.bc1 + o, gb);
        }
        // zc = Wc1 me + bc1
        simd::gemm_tn(m, Hp, Hp, s.Me, Hp, s.GA, Hp, G + lp.wc1T, Hp);
        simd::gemm(m, Hp, H, s.GA, Hp, net.at(lp.wc1_n), Hp, nullptr, false, s.GB, Hp);
        for (int e = 0; e < m; ++e) {
            const int i = es.ei[e0 + e];
            float* gb = s.GB + static_cast<int64_t>(e) * Hp;
            add_to(gb, s.gM + static_cast<int64_t>(i) * Hp, Hp);  // M_i += me
            if (es.pairs) add_to(gb, s.gM + static_cast<int64_t>(es.ej[e0 + e]) * Hp, Hp);
            const float* z2 = s.Z2 + static_cast<int64_t>(e) * Hp;
            const float* sg2 = s.G2 + static_cast<int64_t>(e) * Hp;
            if (D.attention) {  // me = g m, g = sigmoid(wa . m + ba)
                const float* mm = s.Mm + static_cast<int64_t>(e) * Hp;
                vf acc = vf{};
                for (int o = 0; o < Hp; o += kLanes) acc += simd::load(gb + o) * simd::load(mm + o);
                const float g = s.g[e];
                const float gza = simd::hsum(acc) * g * (1.0f - g);
                G[lp.ba] += gza;
                gzav[e] = gza;
                for (int o = 0; o < Hp; o += kLanes)
                    simd::store(gb + o, simd::load(gb + o) * g + simd::load(wa + o) * gza);
            }
            // m = SiLU(z2)
            for (int o = 0; o < Hp; o += kLanes) {
                const vf gz =
                    simd::load(gb + o) * simd::vdsilu_sig(simd::load(z2 + o), simd::load(sg2 + o));
                simd::store(gb + o, gz);
            }
        }
        for (int o = 0; o < Hp; o += kLanes) {
            vf gw = simd::load(G + lp.wa + o), gb = simd::load(G + lp.b2 + o);
            for (int e = 0; e < m; ++e) {
                const int64_t row = static_cast<int64_t>(e) * Hp + o;
                if (D.attention) gw = gw + simd::load(s.Mm + row) * gzav[e];
                gb = gb + simd::load(s.GB + row);
            }
            simd::store(G + lp.wa + o, gw);
            simd::store(G + lp.b2 + o, gb);
        }
        // z2 = W2 s1 + b2
        simd::gemm_tn(m, Hp, Hp, s.S1, Hp, s.GB, Hp, G + lp.w2T, Hp);
        simd::gemm(m, Hp, H, s.GB, Hp, net.at(lp.w2_n), Hp, nullptr, false, s.GA, Hp);
        // s1 = SiLU(z1), z1 = P_i + Q_j + w1r r + w1a a
        for (int e = 0; e < m; ++e) {
            const int i = es.ei[e0 + e], j = es.ej[e0 + e];
            float* ga = s.GA + static_cast<int64_t>(e) * Hp;
            const float* z1 = s.Z1 + static_cast<int64_t>(e) * Hp;
            const float* sg1 = s.G1 + static_cast<int64_t>(e) * Hp;
            vf accr = vf{}, acca = vf{};
            for (int o = 0; o < Hp; o += kLanes) {
                const vf gz =
                    simd::load(ga + o) * simd::vdsilu_sig(simd::load(z1 + o), simd::load(sg1 + o));
                simd::store(ga + o, gz);
                accr += gz * simd::load(w1r + o);
                acca += gz * simd::load(w1a + o);
            }
            // Pairs: ga is gz_ij + gz_ji, of which P_i, Q_j get the first and P_j, Q_i the
            // second; all h_i are equal there and only sums over the nodes of gP and gQ are used
            // (the weights' gradients and the embedding's, the model having no types), so the
            // sum goes to P_i and Q_j.
            add_to(s.gP + static_cast<int64_t>(i) * Hp, ga, Hp);
            add_to(s.gQ + static_cast<int64_t>(j) * Hp, ga, Hp);
            const float gr = s.gr[e] + simd::hsum(accr);
            const float g_a = simd::hsum(acca);
            for (int k = 0; k < d; ++k) {
                const float gv = s.gdx[e * d + k] + 2.0f * s.dx[e * d + k] * gr;
                gx_in[i * d + k] += gv;
                gx_in[j * d + k] -= gv;
                const float g0 = 2.0f * s.dx0[e * d + k] * g_a;
                gx0[i * d + k] += g0;
                gx0[j * d + k] -= g0;
            }
        }
        for (int o = 0; o < Hp; o += kLanes) {
            vf gr = simd::load(G + lp.w1r + o), ga = simd::load(G + lp.w1a + o);
            for (int e = 0; e < m; ++e) {
                const vf gz = simd::load(s.GA + static_cast<int64_t>(e) * Hp + o);
                gr = gr + gz * s.r[e];
                ga = ga + gz * s.a[e];
            }
            simd::store(G + lp.w1r + o, gr);
            simd::store(G + lp.w1a + o, ga);
        }
    }
    // P_i = W1a h_i + b1, Q_i = W1b h_i
    for (int i = 0; i < n; ++i) add_to(G + lp.b1, s.gP + static_cast<int64_t>(i) * Hp, Hp);
    simd::gemm_tn(n, Hp, Hp, h, Hp, s.gP, Hp, G + lp.w1aT, Hp);
    simd::gemm_tn(n, Hp, Hp, h, Hp, s.gQ, Hp, G + lp.w1bT, Hp);
    simd::gemm(n, Hp, H, s.gP, Hp, net.at(lp.w1a_n), Hp, nullptr, true, gh_in, Hp);
    simd::gemm(n, Hp, H, s.gQ, Hp, net.at(lp.w1b_n), Hp, nullptr, true, gh_in, Hp);
}

// Backward of one sample after sample_forward(x, t) has filled s's tape (node states, and the
// edge tape when s has one): G += dL/dparams (packed, float), dL_dx (nullable) = dL/dx.
void sample_backward_taped(const Net& net, const float* x, float t, const float* dL_dv, float* G,
                           float* dL_dx, Scratch& s) {
    const Dims& D = net.D;
    const int n = D.n, d = D.d, Hp = D.Hp;
    const int64_t nH = static_cast<int64_t>(n) * Hp;
    // v = C (x^L - x^0), C the symmetric mean removal.
    float *gh = s.gh, *gh_in = s.gh2, *gx = s.gx, *gx_in = s.gx2;
    for (int k = 0; k < d; ++k) {
        float mean = 0.0f;
        for (int i = 0; i < n; ++i) mean += dL_dv[i * d + k];
        mean /= static_cast<float>(n);
        for (int i = 0; i < n; ++i) {
            gx[i * d + k] = dL_dv[i * d + k] - mean;
            s.gx0[i * d + k] = -gx[i * d + k];
        }
    }
    std::fill(gh, gh + nH, 0.0f);
    for (int l = D.L - 1; l >= 0; --l) {
        layer_backward(net, l, x, gh, gx, gh_in, gx_in, s.gx0, G, s);
        std::swap(gh, gh_in);
        std::swap(gx, gx_in);
    }
    // h0 = emb_w f + emb_b
    const Pack& p = *net.pack;
    for (int i = 0; i < n; ++i) {
        const float* g = gh + static_cast<int64_t>(i) * Hp;
        add_to(G + p.emb_b, g, Hp);
        add_scaled(G + p.embT + static_cast<int64_t>(D.T) * Hp, g, t, Hp);
        if (D.T > 0) add_to(G + p.embT + static_cast<int64_t>(net.types[i]) * Hp, g, Hp);
    }
    if (dL_dx)
        for (int64_t k = 0; k < static_cast<int64_t>(n) * d; ++k) dL_dx[k] = gx[k] + s.gx0[k];
}

// ---- forward mode ------------------------------------------------------------------------

// K tangents of one sample: dirs [K][n][d] -> v [n][d] (nullable) and vdot = J_v dirs, returned
// through `reduce(q, i, k, vdot_qik)` for every direction q, particle i, coordinate k.
//
// `diagonal` (the exact divergence): dirs are the n*d unit vectors, q = i*d + k, and only the
// diagonal entries q = i*d + k of J_v are wanted. Then the last layer carries d tangent rows per
// edge instead of K: x_i^L depends on the inputs through x_i^{L-1}, x_j^{L-1} and the edges' h, so
// the diagonal needs the tangents of edge (i, j) along particle i's own d directions only. The
// particle-mean removal C adds nothing to the trace: the field is translation equivariant
// (x^L(x + c) = x^L(x) + c for a shift c of every particle), so sum_j d x^L_{i,a} / d x_{j,a} = 1
// and the mean's share of the trace, (1/n) sum_a sum_{i,j} (d x^L_{i,a} / d x_{j,a} - delta_ij),
// is exactly zero; `reduce` gets (J x^L - I) on the diagonal. The double reference keeps the
// removal and every direction; the fast divergence is tested against it.
template <class Reduce>
void sample_jvp(const Net& net, const float* x, float t, int K, const float* dirs, bool diagonal,
                float* v, Scratch& s, const Reduce& reduce) {
    const Dims& D = net.D;
    const int n = D.n, d = D.d, Hp = D.Hp, H = D.H;
    const int64_t nH = static_cast<int64_t>(n) * Hp, nd = static_cast<int64_t>(n) * d;
    const int64_t KHp = static_cast<int64_t>(K) * Hp;
    const int64_t nKH = n * KHp;
    // The coordinates' tangents coordinate-major, the directions innermost and padded to Kp:
    // x0d[(i d + k) Kp + q] = dirs[q][i][k], so the per-edge work over the directions (the
    // tangents of dx, r and a, and the update of x) runs as vectors over q. The padding stays
    // zero: its rd, ad and cd are zero, so its updates add zero.
    const int Kp = round_up(K, kLanes);
    const int64_t nd_Kp = nd * Kp;
    std::fill(s.x0d, s.x0d + nd_Kp, 0.0f);
    for (int q = 0; q < K; ++q)
        for (int64_t ik = 0; ik < nd; ++ik) s.x0d[ik * Kp + q] = dirs[q * nd + ik];
    std::memcpy(s.xd, s.x0d, sizeof(float) * nd_Kp);
    std::fill(s.cd, s.cd + Kp, 0.0f);
    float *hd = s.hd, *hd_next = s.hd2, *xd = s.xd, *xd_next = s.xd2;
    s.use(s.blk);

    embed(net, t, s.th);
    std::memcpy(s.tx, x, sizeof(float) * nd);
    for (int l = 0; l < D.L; ++l) {
        const LayerPack& lp = net.pack->layers[static_cast<size_t>(l)];
        const bool first = l == 0, last = l + 1 == D.L;
        const float* h = s.th + l * nH;
        const float* xl = s.tx + l * nd;
        float* x_out = s.tx + (l + 1) * nd;
        float* M = s.tM + l * nH;
        node_projections(net, lp, h, s.P, s.Q);
        // The last layer of a diagonal sweep: edge (i, j) carries particle i's d directions.
        const bool own_rows = diagonal && last && !first;
        if (!first) {        // tangents of P and Q (zero in layer 0: h^0 depends on t only)
            if (own_rows) {  // P_i along particle i's own directions only
                for (int i = 0; i < n; ++i) {
                    const int64_t off = i * KHp + static_cast<int64_t>(i) * d * Hp;
                    simd::gemm(d, Hp, H, hd + off, Hp, net.at(lp.w1aT), Hp, nullptr, false,
                               s.Pd + off, Hp);
                }
            } else {
                simd::gemm(n * K, Hp, H, hd, Hp, net.at(lp.w1aT), Hp, nullptr, false, s.Pd, Hp);
            }
            simd::gemm(n * K, Hp, H, hd, Hp, net.at(lp.w1bT), Hp, nullptr, false, s.Qd, Hp);
        }
        std::memcpy(x_out, xl, sizeof(float) * nd);
        std::fill(M, M + nH, 0.0f);
        std::memcpy(xd_next, xd, sizeof(float) * nd_Kp);
        if (!last) std::fill(s.Md, s.Md + nKH, 0.0f);  // M's tangent feeds the node update only
        const float* w1r = net.at(lp.w1r);
        const float* w1a = net.at(lp.w1a);
        const float* wa = net.at(lp.wa);
        const float* wc2 = net.at(lp.wc2);
        const EdgeSet es = all_edges(net);  // (per-edge tangents below, i-major)
        for (int64_t e0 = 0; e0 < D.E; e0 += kEdgeBlock) {
            const int m = static_cast<int>(std::min<int64_t>(kEdgeBlock, D.E - e0));
            edge_block_forward(net, lp, es, e0, m, xl, x, s);
            edge_block_scatter(net, es, e0, m, s, x_out, M);
            for (int e = 0; e < m; ++e) {
                const int i = net.ei[e0 + e], j = net.ej[e0 + e];
                const float* dx = s.dx + e * d;
                const float* dx0 = s.dx0 + e * d;
                const float* z1 = s.Z1 + static_cast<int64_t>(e) * Hp;
                const float* z2 = s.Z2 + static_cast<int64_t>(e) * Hp;
                const float* zc = s.Zc + static_cast<int64_t>(e) * Hp;
                const float* mm = s.Mm + static_cast<int64_t>(e) * Hp;
                for (int o = 0; o < Hp; o += kLanes) {
                    simd::store(s.ds1 + o, simd::vdsilu_sig(simd::load(z1 + o),
                                                            simd::load(s.G1 + e * Hp + o)));
                    simd::store(s.dm + o, simd::vdsilu_sig(simd::load(z2 + o),
                                                           simd::load(s.G2 + e * Hp + o)));
                    simd::store(s.dsc + o, simd::vdsilu_sig(simd::load(zc + o),
                                                            simd::load(s.Gc + e * Hp + o)) *
                                               simd::load(wc2 + o));
                }
                // weff = Wc1^T dsc (the untransposed copy read as [o][k]).
                simd::gemm(1, Hp, H, s.dsc, Hp, net.at(lp.wc1_n), Hp, nullptr, false, s.weff, Hp);
                const float nrm = s.nrm[e], phi = s.phi[e], g = s.g[e];
                const float sc = phi / nrm;
                const float dphi_dc = D.tanh ? D.cr * (1.0f - s.th_c[e] * s.th_c[e]) : 1.0f;
                const float dnrm_dr = 0.5f / (nrm - 1.0f);
                const float gate_slope = g * (1.0f - g);
                // This edge's directions q0 .. q0 + rows - 1 (row r = q - q0 of the temporaries).
                const int q0 = own_rows ? i * d : 0;
                const int rows = own_rows ? d : K;
                // Per direction: the tangents of x_i - x_j (dd [d][Kp]), of r and of a. All
                // directions: as vectors over the padded rows; own rows (d of them): scalar.
                auto cidx = [&](int p, int k) {  // (particle p, coordinate k), direction q0
                    return (static_cast<int64_t>(p) * d + k) * Kp + q0;
                };
                if (own_rows) {
                    for (int r = 0; r < rows; ++r) s.rd[r] = s.ad[r] = 0.0f;
                    for (int k = 0; k < d; ++k) {
                        const float *xdi = xd + cidx(i, k), *xdj = xd + cidx(j, k);
                        const float *x0di = s.x0d + cidx(i, k), *x0dj = s.x0d + cidx(j, k);
                        for (int r = 0; r < rows; ++r) {
                            const float ddk = xdi[r] - xdj[r];
                            s.dd[k * Kp + r] = ddk;
                            s.rd[r] += 2.0f * dx[k] * ddk;
                            s.ad[r] += 2.0f * dx0[k] * (x0di[r] - x0dj[r]);
                        }
                    }
                } else {
                    for (int r = 0; r < Kp; r += kLanes) {
                        vf rdv = vf{}, adv = vf{};
                        for (int k = 0; k < d; ++k) {
                            const vf ddk =
                                simd::load(xd + cidx(i, k) + r) - simd::load(xd + cidx(j, k) + r);
                            simd::store(s.dd + k * Kp + r, ddk);
                            rdv += simd::splat(2.0f * dx[k]) * ddk;
                            adv +=
                                simd::splat(2.0f * dx0[k]) * (simd::load(s.x0d + cidx(i, k) + r) -
                                                              simd::load(s.x0d + cidx(j, k) + r));
                        }
                        simd::store(s.rd + r, rdv);
                        simd::store(s.ad + r, adv);
                    }
                }
                // The edge's tangent map from z1-tangent rows [rows][Hp] of S1d to c-tangents cd
                // and me-tangents. With z2d = S1d-row W2^T and md = dm z2d: za = md . wa, gd =
                // g (1 - g) za, me-tangent = g md + gd mm, and cd = me-tangent . weff = g (z2d .
                // (dm weff)) + gd (mm . weff). So one pass over z2d with two accumulators gives za
                // and cd; the me-tangent rows, when wanted, go straight to `med` (stored, or added
                // when `accumulate`): the node update's M tangent, none in the last layer.
                float mm_c = 0.0f;  // mm . weff; s.u_a = dm wa, s.u_c = dm weff
                {
                    vf acc = vf{};
                    for (int o = 0; o < Hp; o += kLanes) {
                        const vf dmv = simd::load(s.dm + o), wv = simd::load(s.weff + o);
                        simd::store(s.u_a + o, dmv * simd::load(wa + o));
                        simd::store(s.u_c + o, dmv * wv);
                        simd::store(s.dmg + o, dmv * (D.attention ? g : 1.0f));
                        acc += simd::load(mm + o) * wv;
                    }
                    mm_c = simd::hsum(acc);
                }
                auto edge_tangents = [&](int count, float* med, bool accumulate) {
                    simd::gemm(count, Hp, H, s.S1d, Hp, net.at(lp.w2T), Hp, nullptr, false, s.Z2d,
                               Hp);
                    for (int q = 0; q < count; ++q) {
                        const float* z2d = s.Z2d + q * Hp;
                        vf za = vf{}, cz = vf{};
                        for (int o = 0; o < Hp; o += kLanes) {
                            const vf zv = simd::load(z2d + o);
                            za += zv * simd::load(s.u_a + o);
                            cz += zv * simd::load(s.u_c + o);
                        }
                        float za_s, cz_s;
                        simd::hsum2(za, cz, za_s, cz_s);
                        const float gd = D.attention ? gate_slope * za_s : 0.0f;
                        const float gm = D.attention ? g : 1.0f;
                        s.cd[q] = gm * cz_s + gd * mm_c;
                        if (med == nullptr) continue;
                        float* mq = med + q * Hp;
                        const vf gdv = simd::splat(gd);
                        for (int o = 0; o < Hp; o += kLanes) {
                            vf mv = simd::load(z2d + o) * simd::load(s.dmg + o);
                            if (D.attention) mv += simd::load(mm + o) * gdv;
                            if (accumulate) mv += simd::load(mq + o);
                            simd::store(mq + o, mv);
                        }
                    }
                };
                float* Mdi = s.Md + i * KHp + static_cast<int64_t>(q0) * Hp;
                // x_i += (dd sc + dx coef) per direction, coef = phid / nrm - phi nrmd / nrm^2,
                // from the directions' c-tangents cd [Kp]: own rows scalar, else vectors.
                const float coef_c = dphi_dc / nrm, coef_r = phi * dnrm_dr / (nrm * nrm);
                auto finish = [&](const float* cd) {
                    if (own_rows) {
                        for (int r = 0; r < rows; ++r) {
                            const float coef = coef_c * cd[r] - coef_r * s.rd[r];
                            for (int k = 0; k < d; ++k)
                                xd_next[cidx(i, k) + r] += s.dd[k * Kp + r] * sc + dx[k] * coef;
                        }
                        return;
                    }
                    const vf scv = simd::splat(sc), ccv = simd::splat(coef_c),
                             crv = simd::splat(coef_r);
                    for (int r = 0; r < Kp; r += kLanes) {
                        const vf coef = ccv * simd::load(cd + r) - crv * simd::load(s.rd + r);
                        for (int k = 0; k < d; ++k) {
                            float* xo = xd_next + cidx(i, k) + r;
                            simd::store(xo, simd::load(xo) + simd::load(s.dd + k * Kp + r) * scv +
                                                simd::splat(dx[k]) * coef);
                        }
                    }
                };
                if (first) {
                    // Layer 0: z1-tangent = ds1 (w1r rd + w1a ad): two basis rows, then each
                    // direction is a combination of the two.
                    for (int o = 0; o < Hp; o += kLanes) {
                        simd::store(s.S1d + o, simd::load(s.ds1 + o) * simd::load(w1r + o));
                        simd::store(s.S1d + Hp + o, simd::load(s.ds1 + o) * simd::load(w1a + o));
                    }
                    edge_tangents(2, last ? nullptr : s.Med, false);
                    const float cr_ = s.cd[0], ca_ = s.cd[1];
                    const float* medr = s.Med;
                    const float* meda = s.Med + Hp;
                    // Each direction's c-tangent is cr_ rd + ca_ ad, into cd (its padding stays
                    // zero: rd and ad are zero there).
                    for (int r = 0; r < Kp; r += kLanes)
                        simd::store(s.cd + r, simd::splat(cr_) * simd::load(s.rd + r) +
                                                  simd::splat(ca_) * simd::load(s.ad + r));
                    if (!last) {
                        for (int q = 0; q < K; ++q) {
                            const float rd = s.rd[q], ad = s.ad[q];
                            if (rd == 0.0f && ad == 0.0f) continue;  // most unit directions
                            float* mdq = Mdi + q * Hp;
                            for (int o = 0; o < Hp; o += kLanes)
                                simd::store(mdq + o, simd::load(mdq + o) +
                                                         simd::load(medr + o) * rd +
                                                         simd::load(meda + o) * ad);
                        }
                    }
                    finish(s.cd);
                } else {
                    const float* Pdi = s.Pd + i * KHp + static_cast<int64_t>(q0) * Hp;
                    const float* Qdj = s.Qd + j * KHp + static_cast<int64_t>(q0) * Hp;
                    for (int r = 0; r < rows; ++r) {
                        const float rd = s.rd[r], ad = s.ad[r];
                        float* s1d = s.S1d + r * Hp;
                        for (int o = 0; o < Hp; o += kLanes)
                            simd::store(
                                s1d + o,
                                simd::load(s.ds1 + o) *
                                    (simd::load(Pdi + r * Hp + o) + simd::load(Qdj + r * Hp + o) +
                                     simd::load(w1r + o) * rd + simd::load(w1a + o) * ad));
                    }
                    edge_tangents(rows, last ? nullptr : Mdi, true);
                    finish(s.cd);
                }
            }
        }
        if (!last) {
            // Primal node update, then its tangent: Znd = Wn1 [hd, Md], hd' = hd + Wn2 (dsilu Znd).
            node_update(net, lp, h, M, s.th + (l + 1) * nH, s);
            float* Znd = s.Pd;  // free now
            simd::gemm(n * K, Hp, H, s.Md, Hp, net.at(lp.wn1T) + static_cast<int64_t>(Hp) * Hp, Hp,
                       nullptr, false, Znd, Hp);
            if (!first)
                simd::gemm(n * K, Hp, H, hd, Hp, net.at(lp.wn1T), Hp, nullptr, true, Znd, Hp);
            for (int i = 0; i < n; ++i) {
                for (int o = 0; o < Hp; o += kLanes)
                    simd::store(s.ds1 + o, simd::vdsilu(simd::load(s.Zn + i * Hp + o)));
                for (int q = 0; q < K; ++q) {
                    float* z = Znd + i * KHp + q * Hp;
                    for (int o = 0; o < Hp; o += kLanes)
                        simd::store(z + o, simd::load(z + o) * simd::load(s.ds1 + o));
                }
            }
            if (first)
                std::fill(hd_next, hd_next + nKH, 0.0f);
            else
                std::memcpy(hd_next, hd, sizeof(float) * nKH);
            simd::gemm(n * K, Hp, H, Znd, Hp, net.at(lp.wn2T), Hp, nullptr, true, hd_next, Hp);
            std::swap(hd, hd_next);
        }
        std::swap(xd, xd_next);
    }
    // v = C (x^L - x^0), vdot = C (xd^L - dirs); a diagonal sweep: (xd^L - dirs) on the diagonal
    const float* xL = s.tx + D.L * nd;
    for (int k = 0; k < d; ++k) {
        if (v) {
            float mean = 0.0f;
            for (int i = 0; i < n; ++i) mean += xL[i * d + k] - x[i * d + k];
            mean /= static_cast<float>(n);
            for (int i = 0; i < n; ++i) v[i * d + k] = xL[i * d + k] - x[i * d + k] - mean;
        }
        auto at = [&](const float* base, int i, int q) {
            return base[(static_cast<int64_t>(i) * d + k) * Kp + q];
        };
        if (diagonal) {
            for (int i = 0; i < n; ++i) {
                const int q = i * d + k;
                reduce(q, i, k, at(xd, i, q) - at(s.x0d, i, q));
            }
            continue;
        }
        for (int q = 0; q < K; ++q) {
            float mean = 0.0f;
            for (int i = 0; i < n; ++i) mean += at(xd, i, q) - at(s.x0d, i, q);
            mean /= static_cast<float>(n);
            for (int i = 0; i < n; ++i) reduce(q, i, k, at(xd, i, q) - at(s.x0d, i, q) - mean);
        }
    }
}

// ---- the field ---------------------------------------------------------------------------

class FastEgnnField final : public Field<float> {
  public:
    FastEgnnField(const EgnnModel& model, int threads)
        : Field<float>(model.config.n_particles, model.config.dim,
                       egnn_parameter_count(model.config), Device::cpu),
          config_(model.config),
          params_(model.params.begin(), model.params.end()),
          threads_(threads > 0 ? threads : default_thread_count()) {
        const EgnnConfig& c = config_;
        D_.n = c.n_particles;
        D_.d = c.dim;
        D_.H = c.hidden;
        D_.Hp = round_up(c.hidden, kLanes);
        D_.F = c.in_features();
        D_.T = c.num_types();
        D_.L = c.layers;
        D_.E = static_cast<int64_t>(D_.n) * (D_.n - 1);
        D_.attention = c.attention;
        D_.tanh = c.tanh;
        D_.cr = static_cast<float>(c.effective_coords_range());
        pack_ = make_pack(c, D_.Hp);
        for (int i = 0; i < D_.n; ++i)
            for (int j = 0; j < D_.n; ++j)
                if (i != j) {
                    ei_.push_back(i);
                    ej_.push_back(j);
                    if (i < j) {
                        pi_.push_back(i);
                        pj_.push_back(j);
                    }
                }
    }

    // Reverse mode of the exact divergence: the reference's forward-over-reverse pass in float
    // with the directions across SIMD lanes (src/cpu/egnn_lanes.cpp), not the tiles above.
    bool supports_divergence_backward() const override { return true; }

  protected:
    TensorView<float> do_parameters() override {
        return TensorView<float>(params_.data(), Shape{parameter_count()}, Device::cpu);
    }
    std::vector<double> do_parameters_to_host() const override {
        return std::vector<double>(params_.begin(), params_.end());
    }
    void do_set_parameters(const std::vector<double>& params) override {
        params_.assign(params.begin(), params.end());
    }

    // Workspace: [chunks][Pg] doubles (backward), the packed weights, then one scratch per worker.
    struct WsLayout {
        size_t slot_bytes = 0, weight_off = 0, scratch_off = 0, scratch_floats = 0;
        int workers = 0;
        size_t total = 0;
    };
    WsLayout layout(FieldOp op, int64_t B, int K) const {
        WsLayout w;
        const int64_t chunks = chunk_count(B);
        w.workers = static_cast<int>(std::min<int64_t>(threads_, std::max<int64_t>(chunks, 1)));
        if (op == FieldOp::backward)
            w.slot_bytes = static_cast<size_t>(chunks * pack_.grad_size) * sizeof(double);
        w.weight_off = w.slot_bytes;
        w.scratch_off =
            w.weight_off +
            static_cast<size_t>(round_up(static_cast<int>(pack_.total), 16)) * sizeof(float);
        Scratch s;
        w.scratch_floats = Scratch::carve(s, nullptr, D_, op, K, pack_.grad_size);
        w.total = w.scratch_off + w.scratch_floats * w.workers * sizeof(float);
        return w;
    }
    size_t do_workspace_bytes(FieldOp op, int64_t B, int K) const override {
        if (op == FieldOp::divergence_backward)  // a double gradient slot [P] per chunk
            return static_cast<size_t>(chunk_count(B) * parameter_count()) * sizeof(double);
        if (op == FieldOp::divergence) K = D_.n * D_.d;
        return layout(op, B, K).total;
    }

    void do_forward(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                    TensorView<unsigned char> ws, Stream) override {
        const int64_t nd = row_size();
        run(FieldOp::forward, x.size(0), 0, ws,
            [&](const Net& net, Scratch& s, int64_t b0, int64_t m, int64_t, double*) {
                for (int64_t b = b0; b < b0 + m; ++b)
                    sample_forward(net, x.data + b * nd, t.data[b], v.data + b * nd, s);
            });
    }

    void do_backward(TensorView<const float> x, TensorView<const float> t,
                     TensorView<const float> dL_dv, TensorView<float> dL_dparams,
                     TensorView<float> dL_dx, TensorView<unsigned char> ws, Stream) override {
        const int64_t nd = row_size();
        reverse(x.size(0), dL_dparams, ws, [&](const Net& net, Scratch& s, int64_t b, float* G) {
            sample_forward(net, x.data + b * nd, t.data[b], nullptr, s);
            sample_backward_taped(net, x.data + b * nd, t.data[b], dL_dv.data + b * nd, G,
                                  dL_dx.defined() ? dL_dx.data + b * nd : nullptr, s);
        });
    }

    // One forward per row: backward's own forward pass (node states, and the edge tape where it
    // fits) also gives v, so a row runs forward (with v), the caller's gradient of that row, and
    // the backward from the tape, while the tape is in cache. The same operations as forward and
    // then backward, so the same bits.
    void do_forward_backward(TensorView<const float> x, TensorView<const float> t,
                             TensorView<float> v, const OutputGradient& grad,
                             TensorView<float> dL_dv, TensorView<float> dL_dparams,
                             TensorView<float> dL_dx, TensorView<unsigned char> ws,
                             Stream) override {
        const int64_t nd = row_size();
        reverse(x.size(0), dL_dparams, ws, [&](const Net& net, Scratch& s, int64_t b, float* G) {
            sample_forward(net, x.data + b * nd, t.data[b], v.data + b * nd, s);
            grad(b, 1);
            sample_backward_taped(net, x.data + b * nd, t.data[b], dL_dv.data + b * nd, G,
                                  dL_dx.defined() ? dL_dx.data + b * nd : nullptr, s);
        });
    }
    size_t do_forward_backward_workspace_bytes(int64_t B) const override {
        return layout(FieldOp::backward, B, 0).total;
    }

    // Each chunk of kChunkRows rows sums its samples into its own double slot; the slots are
    // added in chunk order, so the result does not depend on the thread count.
    void do_divergence_backward(TensorView<const float> x, TensorView<const float> t,
                                TensorView<const float> dL_ddiv, TensorView<float> dL_dparams,
                                TensorView<float> dL_dx, TensorView<unsigned char> ws,
                                Stream) override {
        const int64_t nd = row_size(), P = parameter_count(), B = x.size(0);
        const int64_t chunks = chunk_count(B);
        const EgnnOffsets offsets = egnn_offsets(config_);
        double* slots = reinterpret_cast<double*>(ws.data);
        parallel_for(
            chunks,
            [&](int64_t c) {
                const int64_t b0 = c * kChunkRows, m = std::min(kChunkRows, B - b0);
                double* slot = slots + c * P;
                std::fill(slot, slot + P, 0.0);
                cpu::egnn_divergence_backward_lanes(
                    config_, offsets, params_.data(), m, x.data + b0 * nd, t.data + b0,
                    dL_ddiv.data + b0, slot, dL_dx.defined() ? dL_dx.data + b0 * nd : nullptr);
            },
            threads_);
        for (int64_t i = 0; i < P; ++i) {
            double sum = 0.0;
            for (int64_t c = 0; c < chunks; ++c) sum += slots[c * P + i];
            dL_dparams.data[i] += static_cast<float>(sum);
        }
    }

    void do_divergence(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                       TensorView<float> div, TensorView<unsigned char> ws, Stream) override {
        const int64_t nd = row_size();
        const int K = static_cast<int>(nd);
        // The n*d unit directions, shared by every sample.
        std::vector<float> eye(static_cast<size_t>(nd * nd), 0.0f);
        for (int64_t q = 0; q < nd; ++q) eye[static_cast<size_t>(q * nd + q)] = 1.0f;
        const int d = D_.d;
        run(FieldOp::divergence, x.size(0), K, ws,
            [&](const Net& net, Scratch& s, int64_t b0, int64_t m, int64_t, double*) {
                for (int64_t b = b0; b < b0 + m; ++b) {
                    double tr = 0.0;
                    sample_jvp(net, x.data + b * nd, t.data[b], K, eye.data(), true,
                               v.defined() ? v.data + b * nd : nullptr, s,
                               [&](int q, int i, int k, float vdot) {
                                   if (q == i * d + k) tr += vdot;
                               });
                    div.data[b] = static_cast<float>(tr);
                }
            });
    }

    void do_jvp_trace(TensorView<const float> x, TensorView<const float> t,
                      TensorView<const float> dirs, TensorView<float> v, TensorView<float> trace,
                      TensorView<unsigned char> ws, Stream) override {
        const int64_t nd = row_size();
        const int K = static_cast<int>(dirs.size(1));
        const int d = D_.d;
        run(FieldOp::jvp_trace, x.size(0), K, ws,
            [&](const Net& net, Scratch& s, int64_t b0, int64_t m, int64_t, double*) {
                for (int64_t b = b0; b < b0 + m; ++b) {
                    const float* e = dirs.data + b * K * nd;
                    double sum = 0.0;
                    sample_jvp(net, x.data + b * nd, t.data[b], K, e, false,
                               v.defined() ? v.data + b * nd : nullptr, s,
                               [&](int q, int i, int k, float vdot) {
                                   sum += static_cast<double>(e[q * nd + i * d + k]) * vdot;
                               });
                    trace.data[b] = static_cast<float>(sum / K);
                }
            });
    }

  private:
    int64_t row_size() const { return static_cast<int64_t>(n_particles()) * dim(); }

    // Reverse mode over the rows in backward's workspace layout: row(net, s, b, G) adds row b's
    // parameter gradient to the float accumulator G (packed layout); G is flushed into the
    // chunk's double slot every few rows, and the slots are summed in chunk order into
    // dL_dparams.
    template <class Row>
    void reverse(int64_t B, TensorView<float> dL_dparams, TensorView<unsigned char> ws,
                 const Row& row) const {
        const int64_t Pg = pack_.grad_size;
        // Samples per flush of the float accumulator into the chunk's double slot.
        const int64_t per_flush = std::max<int64_t>(1, kFlushEdges / std::max<int64_t>(D_.E, 1));
        double* slots = reinterpret_cast<double*>(ws.data);
        run(FieldOp::backward, B, 0, ws,
            [&](const Net& net, Scratch& s, int64_t b0, int64_t m, int64_t chunk, double*) {
                double* slot = slots + chunk * Pg;
                std::fill(slot, slot + Pg, 0.0);
                std::fill(s.G, s.G + Pg, 0.0f);
                for (int64_t b = b0; b < b0 + m; ++b) {
                    row(net, s, b, s.G);
                    if ((b - b0 + 1) % per_flush == 0 || b + 1 == b0 + m) {
                        for (int64_t k = 0; k < Pg; ++k) slot[k] += static_cast<double>(s.G[k]);
                        std::fill(s.G, s.G + Pg, 0.0f);
                    }
                }
            });
        const int64_t chunks = chunk_count(B);
        for (int64_t k = 0; k < Pg; ++k) {
            const int64_t p = pack_.map[static_cast<size_t>(k)];
            if (p < 0) continue;
            double sum = 0.0;
            for (int64_t c = 0; c < chunks; ++c) sum += slots[c * Pg + k];
            dL_dparams.data[p] += static_cast<float>(sum);
        }
    }

    // Packs the weights into the workspace, then fn(net, scratch, first row, rows, chunk, -) for
    // every chunk of kChunkRows rows; worker w runs chunks w, w + W, ... with scratch w.
    template <class Fn>
    void run(FieldOp op, int64_t B, int K, TensorView<unsigned char> ws, const Fn& fn) const {
        const WsLayout w = layout(op, B, K);
        float* W = reinterpret_cast<float*>(ws.data + w.weight_off);
        for (int64_t k = 0; k < pack_.total; ++k) {
            const int64_t p = pack_.map[static_cast<size_t>(k)];
            W[k] = p < 0 ? 0.0f : params_[static_cast<size_t>(p)];
        }
        Net net{D_,         &pack_,
                W,          ei_.data(),
                ej_.data(), config_.atom_types.empty() ? nullptr : config_.atom_types.data(),
                pi_.data(), pj_.data()};
        float* scratch = reinterpret_cast<float*>(ws.data + w.scratch_off);
        const int64_t chunks = chunk_count(B);
        parallel_for(
            w.workers,
            [&](int64_t worker) {
                Scratch s;
                Scratch::carve(s, scratch + worker * w.scratch_floats, D_, op, K, pack_.grad_size);
                for (int64_t c = worker; c < chunks; c += w.workers) {
                    const int64_t b0 = c * kChunkRows;
                    fn(net, s, b0, std::min(kChunkRows, B - b0), c, nullptr);
                }
            },
            threads_);
    }

    EgnnConfig config_;
    Dims D_{};
    Pack pack_;
    std::vector<float> params_;
    std::vector<int> ei_, ej_, pi_, pj_;
    int threads_;
};

}  // namespace

std::unique_ptr<Field<float>> make_fast_field(const EgnnModel& model, int threads) {
    validate_egnn_model(model);
    return std::make_unique<FastEgnnField>(model, threads);
}

}  // namespace eqflow
