// emu/cuda_emu.cpp: the fiber scheduler behind cuda_emu.h.
//
// One block at a time: every thread of the block is a fiber with its own stack. The scheduler
// runs each runnable fiber until it blocks on a barrier or returns; then it opens the barriers
// that are complete (a warp whose live lanes all wait at a warp barrier, or a block whose live
// threads all wait at __syncthreads) and goes round again. If no fiber can run and no barrier
// can open, the kernel would hang on a GPU: that is reported as an error.
//
// A fiber switch on x86-64 is a few instructions (emu_switch_stack below: the callee-saved
// registers and the stack pointer), with no system call; elsewhere
// it is swapcontext, which also saves the signal mask (a system call each way) and is several
// times slower.
#include "cuda_emu.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#if defined(__x86_64__)
#define EMU_FAST_SWITCH 1
#else
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif

#if defined(EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(EMU_FAST_SWITCH)
// void emu_switch_stack(void** save_sp, void* load_sp): pushes the callee-saved registers on
// the current stack, stores the stack pointer in *save_sp, loads load_sp and pops the same
// layout from there. Everything else is caller-saved in the System V ABI. The SSE and x87
// control words are not switched: they are per OS thread, and no kernel changes them.
extern "C" void emu_switch_stack(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .globl emu_switch_stack
    .hidden emu_switch_stack
    .type emu_switch_stack, @function
emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_stack, .-emu_switch_stack
    .section .note.GNU-stack,"",@progbits
    .text
)");
#endif

namespace emu {
namespace {

// Stack of one fiber. The kernels keep small register arrays; 256 KB leaves a wide margin
// for the unoptimised, instrumented build.
constexpr size_t kStackBytes = 256 * 1024;
constexpr int kWarpSize = 32;

enum class State { runnable, at_block_barrier, at_warp_barrier, done };

struct Fiber {
#if defined(EMU_FAST_SWITCH)
    void* sp = nullptr;  // saved stack pointer while switched out
#else
    ucontext_t context{};
#endif
    char* stack = nullptr;  // kStackBytes, owned by the stack pool
    State state = State::runnable;
    Dim3 tid;
    int linear = 0;
    unsigned parity = 0;  // which of its warp's two exchange arrays the next exchange uses
#if defined(EMU_ASAN)
    void* fake_stack = nullptr;
#endif
};

struct BlockRun {
    const std::function<void()>* body = nullptr;
    std::vector<Fiber> fibers;
#if defined(EMU_FAST_SWITCH)
    void* scheduler_sp = nullptr;
#else
    ucontext_t scheduler{};
#endif
    Fiber* current = nullptr;
    std::vector<int> order;  // this round's order of the fibers
    size_t next_pos = 0;     // the next entry of `order` to consider
    Dim3 block_idx, block_dim, grid_dim;
    std::vector<uint32_t> smem;   // dynamic shared memory, in 32-bit words
    std::vector<uint64_t> slots;  // warp exchange: two arrays of kWarpSize per warp
    std::exception_ptr failure;
#if defined(EMU_ASAN)
    const void* scheduler_stack_bottom = nullptr;
    size_t scheduler_stack_size = 0;
#endif
};

// Launches are serialised (one emulated device, like a single stream): the launch in progress
// is a plain global, which the built-ins read on every call. A thread_local here would cost a
// __tls_get_addr call per built-in in a shared library, and ASan intercepts those.
std::mutex g_launch_mutex;
std::atomic<BlockRun*> g_run{nullptr};
thread_local bool t_in_launch = false;  // only read at launch, to reject a nested launch

// Fiber stacks, reused from launch to launch (allocating and faulting in 256 stacks per launch
// costs more than many small kernels). Guarded by g_launch_mutex.
std::vector<std::unique_ptr<char[]>> g_stacks;

BlockRun& run() {
    BlockRun* r = g_run.load(std::memory_order_relaxed);
    if (r == nullptr) throw Error("CUDA built-in used outside emu::launch");
    return *r;
}

// The next fiber of this round, in the schedule's order, that can run; null at the end.
Fiber* next_runnable(BlockRun& r) {
    while (r.next_pos < r.order.size()) {
        Fiber& f = r.fibers[static_cast<size_t>(r.order[r.next_pos++])];
        if (f.state == State::runnable) return &f;
    }
    return nullptr;
}

// The current fiber has blocked on a barrier (or finished): hands over to the next runnable
// fiber of the round directly, or to the scheduler when the round is over or a fiber failed.
// Returns when this fiber is resumed (never, once finished).
void yield_to_scheduler(bool finished) {
    BlockRun& r = run();
    Fiber* self = r.current;
    Fiber* next = r.failure ? nullptr : next_runnable(r);
    r.current = next;
#if defined(EMU_ASAN)
    __sanitizer_start_switch_fiber(finished ? nullptr : &self->fake_stack,
                                   next ? next->stack : r.scheduler_stack_bottom,
                                   next ? kStackBytes : r.scheduler_stack_size);
#endif
#if defined(EMU_FAST_SWITCH)
    static_cast<void>(finished);  // a finished fiber is never resumed
    emu_switch_stack(&self->sp, next ? next->sp : r.scheduler_sp);
#else
    if (finished) setcontext(next ? &next->context : &r.scheduler);  // never returns
    swapcontext(&self->context, next ? &next->context : &r.scheduler);
#endif
#if defined(EMU_ASAN)
    __sanitizer_finish_switch_fiber(self->fake_stack, nullptr, nullptr);
#endif
}

void fiber_entry() {
    BlockRun& r = run();
#if defined(EMU_ASAN)
    // The first fiber of a launch starts from the scheduler: that gives its stack's bounds.
    const void* from_bottom = nullptr;
    size_t from_size = 0;
    __sanitizer_finish_switch_fiber(r.current->fake_stack, &from_bottom, &from_size);
    if (r.scheduler_stack_bottom == nullptr) {
        r.scheduler_stack_bottom = from_bottom;
        r.scheduler_stack_size = from_size;
    }
#endif
    try {
        (*r.body)();
    } catch (...) {
        if (!r.failure) r.failure = std::current_exception();
    }
    r.current->state = State::done;
    yield_to_scheduler(true);
}

// Runs one round: every runnable fiber, in order, each until it blocks or finishes. The fibers
// hand over to each other; control comes back here when the round is over.
void run_round(BlockRun& r) {
    r.next_pos = 0;
    Fiber* first = next_runnable(r);
    if (first == nullptr) return;
    r.current = first;
#if defined(EMU_ASAN)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, first->stack, kStackBytes);
#endif
#if defined(EMU_FAST_SWITCH)
    emu_switch_stack(&r.scheduler_sp, first->sp);
#else
    swapcontext(&r.scheduler, &first->context);
#endif
#if defined(EMU_ASAN)
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    r.current = nullptr;
}

std::string describe(const BlockRun& r) {
    std::ostringstream os;
    os << "block (" << r.block_idx.x << ", " << r.block_idx.y << ", " << r.block_idx.z << "):";
    const char* names[] = {"runnable", "at __syncthreads", "at a warp barrier", "done"};
    for (int s = 0; s < 4; ++s) {
        int count = 0;
        for (const Fiber& f : r.fibers) count += static_cast<int>(f.state) == s;
        if (count > 0) os << " " << count << " " << names[s];
    }
    return os.str();
}

// Opens every barrier that is complete; returns whether any opened.
bool open_barriers(BlockRun& r) {
    bool opened = false;
    const int n = static_cast<int>(r.fibers.size());
    for (int w0 = 0; w0 < n; w0 += kWarpSize) {
        const int w1 = std::min(n, w0 + kWarpSize);
        int waiting = 0, done = 0;
        for (int k = w0; k < w1; ++k) {
            waiting += r.fibers[k].state == State::at_warp_barrier;
            done += r.fibers[k].state == State::done;
        }
        if (waiting > 0 && waiting + done == w1 - w0) {
            if (done > 0)
                throw Error("warp barrier or shuffle with exited lanes in warp " +
                            std::to_string(w0 / kWarpSize) + ", " + describe(r));
            for (int k = w0; k < w1; ++k) r.fibers[k].state = State::runnable;
            opened = true;
        }
    }
    if (opened) return true;
    int at_block = 0, done = 0;
    for (const Fiber& f : r.fibers) {
        at_block += f.state == State::at_block_barrier;
        done += f.state == State::done;
    }
    if (at_block > 0 && at_block + done == n) {
        for (Fiber& f : r.fibers)
            if (f.state == State::at_block_barrier) f.state = State::runnable;
        return true;
    }
    return false;
}

void run_block(BlockRun& r, const LaunchConfig& config, std::mt19937_64& gen) {
    const int n = static_cast<int>(r.fibers.size());
    for (int k = 0; k < n; ++k) {
        Fiber& f = r.fibers[k];
        f.state = State::runnable;
        f.parity = 0;
        f.linear = k;
        f.tid = Dim3{static_cast<unsigned>(k), 0, 0};
#if defined(EMU_ASAN)
        // A pooled stack may hold the redzones of a fiber that never returned: clear them.
        __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
#if defined(EMU_FAST_SWITCH)
        // The frame emu_switch_stack pops: six zero registers, then fiber_entry as the return
        // address, at a 16-byte aligned slot so that fiber_entry starts with the stack
        // alignment of a called function; above it a null return address ends any unwinding.
        // Each fiber's stack top sits at a different offset within a 4 KB page: otherwise the
        // hot top frames of all fibers map to the same few cache sets and evict each other.
        const size_t stagger = static_cast<size_t>(k % 64) * 64 + 16;
        auto* top = reinterpret_cast<uint64_t*>(
            reinterpret_cast<uintptr_t>(f.stack + kStackBytes - stagger) & ~uintptr_t{15});
        uint64_t* sp = top - 2;  // sp[1] = 0: fiber_entry's own return address
        sp[1] = 0;
        sp[0] = reinterpret_cast<uint64_t>(&fiber_entry);
        sp -= 6;
        for (int k = 0; k < 6; ++k) sp[k] = 0;
        f.sp = sp;
#else
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack;
        f.context.uc_stack.ss_size = kStackBytes;
        f.context.uc_link = nullptr;
        makecontext(&f.context, fiber_entry, 0);
#endif
    }
    r.order.resize(n);
    std::iota(r.order.begin(), r.order.end(), 0);
    if (config.schedule == Schedule::reverse) std::reverse(r.order.begin(), r.order.end());
    for (;;) {
        if (config.schedule == Schedule::shuffled)
            std::shuffle(r.order.begin(), r.order.end(), gen);
        const bool any = std::any_of(r.fibers.begin(), r.fibers.end(),
                                     [](const Fiber& f) { return f.state == State::runnable; });
        if (any) {
            run_round(r);
            if (r.failure) std::rethrow_exception(r.failure);
            continue;
        }
        if (std::all_of(r.fibers.begin(), r.fibers.end(),
                        [](const Fiber& f) { return f.state == State::done; }))
            return;
        if (!open_barriers(r))
            throw Error("deadlock: no thread can run and no barrier can open, " + describe(r));
    }
}

}  // namespace

void launch_body(const LaunchConfig& config, const std::function<void()>& body) {
    if (t_in_launch) throw Error("emu::launch inside a launch");
    if (config.block == 0 || config.block > 1024) throw Error("block size must be 1..1024");
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    t_in_launch = true;
    BlockRun r;
    r.body = &body;
    r.fibers.resize(config.block);
    while (g_stacks.size() < config.block) g_stacks.emplace_back(new char[kStackBytes]);
    for (size_t k = 0; k < r.fibers.size(); ++k) r.fibers[k].stack = g_stacks[k].get();
    r.grid_dim = Dim3{config.grid, 1, 1};
    r.block_dim = Dim3{config.block, 1, 1};
    r.slots.assign(2 * ((config.block + kWarpSize - 1) / kWarpSize * kWarpSize), 0);
    std::mt19937_64 gen(config.seed);
    std::vector<unsigned> blocks(config.grid);
    std::iota(blocks.begin(), blocks.end(), 0u);
    if (config.schedule == Schedule::reverse) std::reverse(blocks.begin(), blocks.end());
    if (config.schedule == Schedule::shuffled) std::shuffle(blocks.begin(), blocks.end(), gen);
    g_run.store(&r, std::memory_order_relaxed);
    try {
        for (unsigned b : blocks) {
            r.block_idx = Dim3{b, 0, 0};
            // Exactly the launch's size (ASan sees overruns), every word a quiet NaN.
            r.smem.assign((config.dynamic_smem + 3) / 4, 0x7fc00000u);
            r.smem.shrink_to_fit();
            run_block(r, config, gen);
        }
    } catch (...) {
        g_run.store(nullptr, std::memory_order_relaxed);
        t_in_launch = false;
        throw;
    }
    g_run.store(nullptr, std::memory_order_relaxed);
    t_in_launch = false;
}

const Dim3& thread_idx() {
    BlockRun& r = run();
    return r.current->tid;
}
const Dim3& block_idx() {
    return run().block_idx;
}
const Dim3& block_dim() {
    return run().block_dim;
}
const Dim3& grid_dim() {
    return run().grid_dim;
}

void sync_block() {
    BlockRun& r = run();
    r.current->state = State::at_block_barrier;
    yield_to_scheduler(false);
}

void sync_warp(unsigned mask) {
    BlockRun& r = run();
    const int w0 = r.current->linear / kWarpSize * kWarpSize;
    const int lanes = std::min<int>(kWarpSize, static_cast<int>(r.fibers.size()) - w0);
    const unsigned full = lanes == kWarpSize ? 0xffffffffu : ((1u << lanes) - 1u);
    if ((mask & full) != full)
        throw Error("warp barriers over part of a warp are not emulated (mask " +
                    std::to_string(mask) + ")");
    r.current->state = State::at_warp_barrier;
    yield_to_scheduler(false);
}

void* dynamic_smem() {
    BlockRun& r = run();
    if (r.smem.empty()) throw Error("dynamic shared memory used by a launch that asked for none");
    return r.smem.data();
}

uint64_t* exchange_slots() {
    BlockRun& r = run();
    const size_t w0 = static_cast<size_t>(r.current->linear / kWarpSize * kWarpSize);
    return &r.slots[2 * w0 + (r.current->parity ? kWarpSize : 0)];
}

void end_exchange() {
    BlockRun& r = run();
    r.current->parity ^= 1u;
}

int lane_id() {
    return run().current->linear % kWarpSize;
}

}  // namespace emu
