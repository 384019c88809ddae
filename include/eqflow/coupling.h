// eqflow/coupling.h: the flow-matching couplings of docs/design.md section 5 (fm, ot, eqot), on the
// CPU and the GPU. They pair each prior sample x0_i with a data sample and return the data side
// of the pairs, aligned, ready for the flow-matching loss (x_t = (1-t) x0 + t x1_paired).
//
//   x0        [B][n][d]  prior samples (centred), left unchanged
//   x1        [B][n][d]  data samples (centred)
//   x1_paired [B][n][d]  the data sample paired with x0_i, permuted and rotated for eqot
//   pairing   [B]        int64 sigma(i): x1_paired[i] comes from x1[sigma(i)] (optional)
//   cost      [B]        double |x0_i - x1_paired[i]|^2 (optional)
//
//   fm    sigma = identity, x1_paired = x1.
//   ot    sigma solves the B x B assignment on C_ij = |x0_i - x1_j|^2 exactly.
//   eqot  for every pair (i, j): the particles of x1_j are assigned to those of x0_i (Hungarian on
//         squared particle distances, only among particles of the same type) and x1_j is rotated
//         onto x0_i (Kabsch; proper rotations unless allow_reflection), giving the aligned cost
//         M_ij = |x0_i - R P x1_j|^2; then sigma solves the assignment on M and
//         x1_paired[i] = R_i P_i x1[sigma(i)].
//
// The per-pair eqot search (a decision beyond docs/design.md, written down here): "Hungarian, then
// Kabsch" from the inputs as they are depends on how x1_j happens to be oriented relative to
// x0_i, so it is not invariant under rotating a sample. eqflow instead starts the search from
// the orientations that map the principal axes of x1_j onto those of x0_i (all 2^(d-1) sign
// choices of proper rotations; 2^d with reflections). These starts turn with the inputs, so the
// result is invariant under rotating and permuting any input sample (up to rounding, for inputs
// whose principal moments are not degenerate). From each start it alternates Hungarian (on the
// rotated x1_j) and Kabsch for up to `refine_iterations` further rounds while the particle
// assignment changes (no round can raise the cost), and keeps the lowest aligned cost. Safety
// net: should that cost exceed the unaligned |x0_i - x1_j|^2, docs/design.md's identity start joins
// the search, so M_ij <= C_ij always and eqot's total cost is never larger than ot's (on random
// inputs the net practically never triggers, and invariance is kept). frame_starts = false gives
// docs/design.md's recipe exactly (identity start; with refine_iterations = 0, one Hungarian +
// Kabsch).
//
// Fewer starts (max_starts = k, 0 < k < the number of frame starts: 2 proper ones in 2D, 4 in
// 3D, twice that with reflections): the frame starts are scored by their nearest-neighbour cost
// sum_a min_b |x0_a - R x1_b|^2 (no assignment needed; src/common/eqot_starts.h) and only the k
// lowest are searched, in their usual order; the safety net stays. The scores turn with the
// inputs, so the coupling stays invariant under rotating and permuting samples (up to rounding:
// two scores within rounding of each other may rank either way, and the pair's result then
// differs by more than rounding), at a higher cost: on the paper's LJ13 data one start makes the
// coupling 2.8x faster on the CPU and raises the coupled cost 1.3% (bench/RESULTS.md). The
// default (0) searches every start; k >= the number of frame starts is the same search. No effect
// without frame starts, nor on the exhaustive 2D alignment below (it has no starts).
//
// Few particles in 2D (d = 2, n <= 5, e.g. DW4): with `exhaustive` (the default) no search at all.
// For a fixed permutation the best 2D rotation and its cost are closed-form, so every permutation
// within the types is tried and M_ij is the exact minimum over permutations and rotations (the
// lexicographically first permutation among ties; src/common/eqot_exhaustive.h). M_ij is then
// the closed-form |x0|^2 + |x1|^2 - 2 sqrt(score), equal to the directly evaluated aligned cost
// up to rounding (~eps |x|^2), so "never above the search's cost" and M_ij <= C_ij hold to that
// rounding; it is invariant by construction. At n = 4 the pair alignments cost ~10x less than
// the two frame starts' search (~32 ns a pair on one core); the DW4 coupling of 256 is now mostly
// its B x B assignment (~5.5 ms; bench/RESULTS.md). exhaustive = false keeps the search
// (frame_starts and refine_iterations apply).
//
// Backends: CPU views (host memory, e.g. the trainer's double arrays) run the plain reference in
// double (the B^2 eqot pair alignments spread over `threads` threads of the pool; the result does
// not depend on their number; for n <= 32 a fixed-size copy of the search with the same result,
// bit for bit, its particle assignments vectorised with AVX-512 or else AVX2 where the CPU has
// them; EQFLOW_NO_AVX512 and EQFLOW_NO_AVX2 set in the environment keep the scalar copy) and need
// no workspace. CUDA views
// run all B^2 eqot pair problems in one launch (one warp per pair, both samples in shared memory,
// the particle distances computed on the fly), the B x B assignment on the GPU (B <= 1024), and
// need `coupling_workspace_bytes` bytes of device workspace (nothing is allocated inside the call).
// With `synchronize` (the default) the call waits for the stream and non-finite coordinates are an
// Error, on the CPU and (ot, eqot, through the batch assignment) on the GPU; fm copies them through
// unchecked. With `synchronize` off, a CUDA call only queues its work on `stream` and never waits
// for the host (what a training step, or a captured CUDA graph, needs); a batch assignment that
// fails there (a NaN pair cost) poisons the whole batch instead of throwing: x1_paired and cost
// NaN, pairing the identity, so a training step's finite check skips the batch. CPU calls ignore
// it. x1_paired must not overlap x0 or x1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "eqflow/device.h"
#include "eqflow/export.h"
#include "eqflow/tensor.h"

namespace eqflow {

enum class CouplingKind { fm, ot, eqot };

// "fm", "ot" or "eqot"; anything else throws an Error listing the choices.
EQFLOW_API CouplingKind parse_coupling(const std::string& name);
EQFLOW_API const char* coupling_name(CouplingKind kind);

struct CouplingOptions {
    CouplingKind kind = CouplingKind::eqot;
    bool allow_reflection = false;  // eqot: improper rotations too (mirror images are equivalent)
    std::vector<int> atom_types;    // [n] type index per particle; empty: all particles alike
    bool frame_starts = true;   // eqot: principal-axes starts (invariance); false: identity start
    int refine_iterations = 1;  // eqot: extra Hungarian + Kabsch rounds per start (>= 0)
    bool exhaustive = true;     // eqot, d = 2, n <= 5: every permutation, exact (see above)
    int threads = 0;            // eqot on the CPU: threads for the B^2 alignments; 0: all
    bool synchronize = true;    // CUDA: wait for the stream, errors thrown (see above)
    int max_starts = 0;  // eqot: search only the k best-scored frame starts (see above); 0: all
};

EQFLOW_API std::size_t coupling_workspace_bytes(Device device, const CouplingOptions& options,
                                                int64_t B, int64_t n, int64_t d);

EQFLOW_API void couple(const CouplingOptions& options, TensorView<const double> x0,
                       TensorView<const double> x1, TensorView<double> x1_paired,
                       TensorView<int64_t> pairing = {}, TensorView<double> cost = {},
                       void* workspace = nullptr, std::size_t workspace_bytes = 0,
                       Stream stream = nullptr);
EQFLOW_API void couple(const CouplingOptions& options, TensorView<const float> x0,
                       TensorView<const float> x1, TensorView<float> x1_paired,
                       TensorView<int64_t> pairing = {}, TensorView<double> cost = {},
                       void* workspace = nullptr, std::size_t workspace_bytes = 0,
                       Stream stream = nullptr);

// The eqot alignment of one pair on the host (the CPU reference of the per-pair alignment above:
// the search, or the exhaustive 2D alignment): x0, x1 [n][d]; types [n] or nullptr. Fills perm
// [n] (x1 particle assigned to x0 particle a) and rotation [d][d], so that the aligned x1 is
// R x1[perm[a]]; returns M_ij, |x0 - R P x1|^2 (in closed form on the exhaustive path, so equal
// to the direct evaluation up to rounding).
EQFLOW_API double eqot_align_pair(const CouplingOptions& options, const double* x0,
                                  const double* x1, int n, int d, int64_t* perm, double* rotation);

}  // namespace eqflow
