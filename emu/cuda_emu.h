// emu/cuda_emu.h: runs the project's CUDA kernels on the CPU, for tests on machines without a
// GPU. Two uses:
// - Kernel tests (tests/test_egnn_emulated.cpp) include this header before a kernel header
//   (kernels/*_kernels.cuh) and call emu::launch with a schedule of their choice.
// - The emulation build (-DEQFLOW_CUDA_EMULATION=ON, preset `emu`) compiles every kernels/*.cu
//   as C++ with this header forced in first, and the runtime subset of emu/include
//   (emu/runtime.cpp) in place of the CUDA toolkit: the library's whole CUDA backend, launchers
//   and host orchestration included, then runs the unchanged `gpu` tests on the CPU.
//
// This header turns the CUDA qualifiers into plain C++, and it provides the built-ins the
// kernels use: threadIdx and friends, __syncthreads, __syncwarp, warp shuffles and votes,
// atomics, and dynamic shared memory. A launch runs the whole grid, one block at a time. Each
// CUDA thread of the block is a fiber on the calling OS thread. A fiber runs until it reaches a
// barrier; when every live thread of the block (or of the warp) has arrived, the barrier opens.
//
// What it checks:
// - Barriers. A __syncthreads that not all live threads reach, or a __syncwarp or shuffle with
//   an exited lane, throws emu::Error. So does a deadlock where warps wait on different
//   barriers.
// - Order dependence. Between two barriers the threads run one after another, in the order the
//   Schedule says (thread order, reverse order, or a seeded shuffle every round). A data race
//   between barriers (thread A writes what thread B reads) gives results that depend on that
//   order. A test that runs the same launch under several schedules and demands bit-identical
//   output catches it. In the emulation build, EQFLOW_EMU_SCHEDULE picks the schedule.
// - Uninitialised memory. Dynamic shared memory starts as quiet NaNs (0x7fc00000 in every 32-bit
//   word), and so does device memory from cudaMalloc (0xff bytes), so a read before the first
//   write shows up as NaN in the results.
// - Bounds. Dynamic shared memory and every cudaMalloc are heap buffers of exactly the size
//   asked for. Under AddressSanitizer an access past one aborts with the kernel's source line.
//
// What it does not model: the memory model within a barrier interval (a lost update from two
// threads' read-modify-write of the same word, which real hardware can interleave), streams
// running concurrently with the host or with each other (stream capture and graph replay are
// modelled: emu/include/cuda_runtime_api.h), the device's own math library (its last-bit rounding),
// timing, and anything about performance. It is a logic check, not a replacement for running
// on a GPU and under compute-sanitizer.
#pragma once

#define EQFLOW_CUDA_EMULATION 1

#include <math.h>  // float overloads of sqrt, fabs, ... in the global namespace, as in CUDA

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

// ---- CUDA qualifiers as plain C++ ---------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static __shared__ arrays become function-local statics: one copy, shared by every fiber of
// the block. Blocks run one at a time, so that is exactly one block's shared memory.
#define __shared__ static

namespace emu {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// The order in which the threads of a block run between barriers.
enum class Schedule { forward, reverse, shuffled };

struct LaunchConfig {
    unsigned grid = 1;
    unsigned block = 256;
    size_t dynamic_smem = 0;
    Schedule schedule = Schedule::forward;
    uint64_t seed = 0;  // for Schedule::shuffled
};

// Runs body (a call of the kernel with its arguments) for every thread of every block.
void launch_body(const LaunchConfig& config, const std::function<void()>& body);

template <class Kernel, class... Args>
void launch(const LaunchConfig& config, Kernel kernel, Args... args) {
    launch_body(config, [&] { kernel(args...); });
}

// The schedule of launches made through the runtime (EQFLOW_LAUNCH in the emulation build):
// EQFLOW_EMU_SCHEDULE=forward (the default), reverse or shuffled, read once.
Schedule default_schedule();

// The runtime's launch checks: block size, grid size, and dynamic shared memory against the
// kernel's limit (48 KB unless cudaFuncSetAttribute raised it). False, with the runtime's
// last error set, when the launch is invalid (emu/runtime.cpp).
bool check_launch(const void* kernel, long long grid, long long block, size_t dynamic_smem);

// Work issued to `stream` (a cudaStream_t; nullptr is the legacy default stream): runs it at once,
// or records it when the stream is capturing a graph, or refuses it (the runtime's last error set)
// when capture forbids it (emu/runtime.cpp; the rules are in emu/include/cuda_runtime_api.h).
// Returns the cudaError_t of the refusal, 0 when the work ran or was recorded.
int enqueue(const void* stream, std::function<void()> work);

// kernel<<<grid, block, smem, stream>>>(args...) as EQFLOW_LAUNCH(grid, block, smem, stream,
// kernel)(args...): the arguments are converted to the kernel's parameter types once, and every
// thread gets its own copy of them, as on the device. Runs at once (streams are synchronous)
// unless the stream is capturing: then the launch, with these arguments, joins the graph.
template <class... Params>
struct Launcher {
    void (*kernel)(Params...);
    long long grid, block;
    size_t smem;
    const void* stream;

    template <class... Args>
    void operator()(Args&&... args) const {
        if (!check_launch(reinterpret_cast<const void*>(kernel), grid, block, smem)) return;
        LaunchConfig config;
        config.grid = static_cast<unsigned>(grid);
        config.block = static_cast<unsigned>(block);
        config.dynamic_smem = smem;
        config.schedule = default_schedule();
        enqueue(stream,
                [k = kernel, config,
                 params = std::tuple<Params...>(static_cast<Params>(std::forward<Args>(args))...)] {
                    launch_body(config, [&] { std::apply(k, params); });
                });
    }
};

template <class... Params>
Launcher<Params...> make_launcher(void (*kernel)(Params...), long long grid, long long block,
                                  size_t smem, const void* stream) {
    return Launcher<Params...>{kernel, grid, block, smem, stream};
}

// ---- Built-ins, valid only inside a launch ------------------------------------------------
const Dim3& thread_idx();
const Dim3& block_idx();
const Dim3& block_dim();
const Dim3& grid_dim();
void sync_block();
void sync_warp(unsigned mask);
void* dynamic_smem();
// Warp exchange for shuffles and votes: every lane writes its 8-byte slot of the array
// exchange_slots() returns, one warp barrier, then reads any lane's slot, then calls
// end_exchange(). Each lane alternates between two arrays, so the next exchange cannot
// overwrite a slot before every lane has read it: its writes come after this exchange's reads
// and the exchange after next, which reuses this array, has a barrier in between.
uint64_t* exchange_slots();
void end_exchange();
int lane_id();

template <class T>
T shfl_xor(unsigned mask, T v, int lane_mask, int width) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 8 bytes");
    const int lane = lane_id();
    uint64_t* slots = exchange_slots();
    std::memcpy(&slots[lane], &v, sizeof(T));
    sync_warp(mask);
    // Within segments of `width` lanes, as on the device.
    const int src = (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1));
    T out;
    std::memcpy(&out, &slots[src], sizeof(T));
    end_exchange();
    return out;
}

// __shfl_sync: lane src_lane of the caller's segment of `width` lanes, as on the device.
template <class T>
T shfl_idx(unsigned mask, T v, int src_lane, int width) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 8 bytes");
    const int lane = lane_id();
    uint64_t* slots = exchange_slots();
    std::memcpy(&slots[lane], &v, sizeof(T));
    sync_warp(mask);
    const int src = (lane & ~(width - 1)) | (src_lane & (width - 1));
    T out;
    std::memcpy(&out, &slots[src], sizeof(T));
    end_exchange();
    return out;
}

// __any_sync (all = false) and __all_sync (all = true).
inline int warp_vote(unsigned mask, int predicate, bool all) {
    const int lane = lane_id();
    uint64_t* slots = exchange_slots();
    slots[lane] = predicate ? 1u : 0u;
    sync_warp(mask);
    uint64_t result = all ? 1u : 0u;
    for (int k = 0; k < 32; ++k) {
        if ((mask & (1u << k)) == 0) continue;
        result = all ? (result & slots[k]) : (result | slots[k]);
    }
    end_exchange();
    return static_cast<int>(result);
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())

inline void __syncthreads() {
    emu::sync_block();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::sync_warp(mask);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return emu::shfl_xor(mask, v, lane_mask, width);
}

template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    return emu::shfl_idx(mask, v, src_lane, width);
}

inline int __any_sync(unsigned mask, int predicate) {
    return emu::warp_vote(mask, predicate, false);
}
inline int __all_sync(unsigned mask, int predicate) {
    return emu::warp_vote(mask, predicate, true);
}
inline double __longlong_as_double(long long bits) {
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
}
inline long long __double_as_longlong(double d) {
    long long bits;
    std::memcpy(&bits, &d, sizeof bits);
    return bits;
}

// Fibers of one block never run at the same time, so plain read-modify-write is atomic.
template <class T>
T atomicAdd(T* address, T v) {
    const T old = *address;
    *address = old + v;
    return old;
}
template <class T>
T atomicMin(T* address, T v) {
    const T old = *address;
    if (v < old) *address = v;
    return old;
}
template <class T>
T atomicMax(T* address, T v) {
    const T old = *address;
    if (old < v) *address = v;
    return old;
}

inline float rsqrtf(float v) {
    return 1.0f / std::sqrt(v);
}
inline double rsqrt(double v) {
    return 1.0 / std::sqrt(v);
}
