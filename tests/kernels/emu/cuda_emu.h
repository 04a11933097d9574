// A CPU emulator for the tierd CUDA kernels, used only by the test suite.
//
// The kernel sources are compiled with g++ as C++ with this header force-included and
// TK_EMULATION defined. Every CUDA thread of a block is a fiber on one OS thread; fibers run until
// they reach a barrier (__syncthreads, or the two warp barriers around each shuffle), so warp
// shuffles and shared memory behave as on the GPU for kernels that synchronise correctly, and
// divergent barriers (some lanes at a shuffle, others exited or at __syncthreads) are reported as
// errors instead of hanging. Every global access of the kernels goes through tk::load/store, which
// call access_ok(): an access outside the buffers passed to the launch, a write to a read-only
// buffer, or a misaligned vector access is reported with its address. `__shared__` becomes
// `static`: blocks run one after another, so a static array is exactly one block's shared memory.
// nvcuda::wmma (tensor cores) is emulated, with its own checks, in wmma_emu.h (included at the end).
#ifndef TIERD_CUDA_EMU_H
#define TIERD_CUDA_EMU_H

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <vector_types.h>

#include <cmath>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace emu {

enum class FiberState { kReady, kAtWarpBarrier, kAtBlockBarrier, kDone };

struct Fiber {
    ucontext_t start_context;
    jmp_buf context;
    std::vector<char> stack;
    uint3 thread_idx;
    int linear = 0;
    bool started = false;
    FiberState state = FiberState::kReady;
};

struct Region {
    uintptr_t begin;
    uintptr_t end;
    bool writable;
};

constexpr std::size_t kFiberStackBytes = 256 * 1024;

struct State {
    std::vector<Fiber> fibers;
    std::vector<uint64_t> exchange;  // one shuffle slot per thread
    std::vector<Region> regions;
    Fiber* current = nullptr;
    jmp_buf scheduler;
    ucontext_t scheduler_context;
    dim3 grid_dim;
    dim3 block_dim;
    uint3 block_idx;
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
    std::string error;
};

inline State& state() {
    static State s;
    return s;
}

inline void fail(const std::string& message) {
    if (state().error.empty()) state().error = message;
}

inline std::string describe_access(uintptr_t p, std::size_t nbytes) {
    const State& s = state();
    char where[200];
    std::snprintf(where, sizeof where, " of %zu bytes at %#lx by thread (%u,%u,%u) of block (%u,%u,%u)",
                  nbytes, static_cast<unsigned long>(p), s.current->thread_idx.x, s.current->thread_idx.y,
                  s.current->thread_idx.z, s.block_idx.x, s.block_idx.y, s.block_idx.z);
    return where;
}

inline bool access_ok(const void* ptr, std::size_t nbytes, bool is_write) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
    if (nbytes > 1 && p % nbytes != 0) {
        fail(std::string("misaligned ") + (is_write ? "write" : "read") + describe_access(p, nbytes));
        return false;
    }
    bool inside = false;
    for (const Region& r : state().regions) {
        if (p >= r.begin && p + nbytes <= r.end) {
            if (!is_write || r.writable) return true;
            inside = true;
        }
    }
    fail(std::string(inside ? "write to a read-only buffer" : (is_write ? "write outside every buffer"
                                                                          : "read outside every buffer")) +
         describe_access(p, nbytes));
    return false;
}

inline Fiber* current_fiber() { return state().current; }

// Leave the running fiber for the scheduler; it resumes here when the scheduler jumps back.
inline void yield_to_scheduler(FiberState waiting_at) {
    Fiber* f = state().current;
    f->state = waiting_at;
    if (_setjmp(f->context) == 0) _longjmp(state().scheduler, 1);
}

inline void fiber_entry() {
    State& s = state();
    s.body(s.body_arg);
    s.current->state = FiberState::kDone;
    _longjmp(s.scheduler, 1);
}

inline void run_fiber(Fiber& f) {
    State& s = state();
    s.current = &f;
    if (_setjmp(s.scheduler) == 0) {
        if (!f.started) {
            f.started = true;
            swapcontext(&s.scheduler_context, &f.start_context);
        } else {
            _longjmp(f.context, 1);
        }
    }
}

// After every ready fiber has run up to a barrier: release the barriers that are complete.
// Returns false (with an error) when the block can make no progress.
inline bool release_barriers() {
    State& s = state();
    const int num_threads = static_cast<int>(s.fibers.size());
    int at_block = 0, done = 0;
    for (const Fiber& f : s.fibers) {
        at_block += f.state == FiberState::kAtBlockBarrier;
        done += f.state == FiberState::kDone;
    }
    if (done == num_threads) return true;
    if (at_block == num_threads) {
        for (Fiber& f : s.fibers) f.state = FiberState::kReady;
        return true;
    }
    bool released = false;
    for (int warp_first = 0; warp_first < num_threads; warp_first += 32) {
        const int warp_end = warp_first + 32 < num_threads ? warp_first + 32 : num_threads;
        int at_warp = 0;
        for (int i = warp_first; i < warp_end; ++i) at_warp += s.fibers[i].state == FiberState::kAtWarpBarrier;
        if (at_warp == 0) continue;
        if (at_warp != warp_end - warp_first) {
            fail("divergent warp: some lanes wait at a shuffle/__syncwarp while others exited or wait at "
                 "__syncthreads (warp of thread " + std::to_string(warp_first) + ")");
            return false;
        }
        for (int i = warp_first; i < warp_end; ++i) s.fibers[i].state = FiberState::kReady;
        released = true;
    }
    if (!released) {
        fail(done > 0 ? "__syncthreads reached after some threads of the block exited"
                      : "deadlock: no barrier can be released");
        return false;
    }
    return true;
}

inline bool run_block() {
    State& s = state();
    for (Fiber& f : s.fibers) {
        f.started = false;
        f.state = FiberState::kReady;
        getcontext(&f.start_context);
        f.start_context.uc_stack.ss_sp = f.stack.data();
        f.start_context.uc_stack.ss_size = f.stack.size();
        f.start_context.uc_link = nullptr;
        makecontext(&f.start_context, fiber_entry, 0);
    }
    for (;;) {
        for (Fiber& f : s.fibers) {
            if (f.state == FiberState::kReady) run_fiber(f);
        }
        bool all_done = true;
        for (const Fiber& f : s.fibers) all_done = all_done && f.state == FiberState::kDone;
        if (all_done) return true;
        if (!release_barriers()) return false;
    }
}

// Run body(arg) as a kernel over the grid; regions are (pointer, bytes, writable) triples.
inline int launch(const unsigned* grid, const unsigned* block, const unsigned long long* regions,
                  int num_regions, void (*body)(void*), void* arg, char* err, int err_len) {
    State& s = state();
    s.error.clear();
    s.regions.clear();
    for (int i = 0; i < num_regions; ++i) {
        const uintptr_t begin = static_cast<uintptr_t>(regions[3 * i]);
        s.regions.push_back(Region{begin, begin + static_cast<uintptr_t>(regions[3 * i + 1]), regions[3 * i + 2] != 0});
    }
    s.grid_dim = dim3(grid[0], grid[1], grid[2]);
    s.block_dim = dim3(block[0], block[1], block[2]);
    const int num_threads = static_cast<int>(block[0] * block[1] * block[2]);
    s.fibers.resize(num_threads);
    s.exchange.assign(num_threads, 0);
    for (int i = 0; i < num_threads; ++i) {
        Fiber& f = s.fibers[i];
        f.linear = i;
        f.thread_idx.x = i % block[0];
        f.thread_idx.y = (i / block[0]) % block[1];
        f.thread_idx.z = i / (block[0] * block[1]);
        if (f.stack.size() != kFiberStackBytes) f.stack.assign(kFiberStackBytes, 0);
    }
    s.body = body;
    s.body_arg = arg;
    for (unsigned z = 0; z < grid[2] && s.error.empty(); ++z) {
        for (unsigned y = 0; y < grid[1] && s.error.empty(); ++y) {
            for (unsigned x = 0; x < grid[0] && s.error.empty(); ++x) {
                s.block_idx.x = x;
                s.block_idx.y = y;
                s.block_idx.z = z;
                if (!run_block()) break;
            }
        }
    }
    if (s.error.empty()) return 0;
    std::snprintf(err, static_cast<std::size_t>(err_len), "%s", s.error.c_str());
    return 1;
}

template <typename T>
inline T shfl_xor(T value, int lane_mask, int width) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of at most 8 bytes");
    State& s = state();
    const int me = s.current->linear;
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    s.exchange[me] = bits;
    yield_to_scheduler(FiberState::kAtWarpBarrier);
    const int lane = me % 32;
    int partner_lane = lane ^ lane_mask;
    if (partner_lane / width != lane / width) partner_lane = lane;  // outside the segment: own value
    const uint64_t partner_bits = s.exchange[me - lane + partner_lane];
    yield_to_scheduler(FiberState::kAtWarpBarrier);
    T result;
    std::memcpy(&result, &partner_bits, sizeof(T));
    return result;
}

template <typename... A>
constexpr int num_params(void (*)(A...)) { return static_cast<int>(sizeof...(A)); }

template <typename... A>
inline void param_sizes(void (*)(A...), int* out) {
    const int sizes[] = {static_cast<int>(sizeof(A))..., 0};
    for (std::size_t i = 0; i < sizeof...(A); ++i) out[i] = sizes[i];
}

template <typename... A, std::size_t... I>
inline void call_kernel(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<typename std::remove_cv<typename std::remove_reference<A>::type>::type*>(args[I])...);
}

}  // namespace emu

#define threadIdx (::emu::current_fiber()->thread_idx)
#define blockIdx (::emu::state().block_idx)
#define blockDim (::emu::state().block_dim)
#define gridDim (::emu::state().grid_dim)

inline void __syncthreads() { ::emu::yield_to_scheduler(::emu::FiberState::kAtBlockBarrier); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::emu::yield_to_scheduler(::emu::FiberState::kAtWarpBarrier); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T value, int lane_mask, int width = 32) {
    return ::emu::shfl_xor(value, lane_mask, width);
}

// Exports, for one kernel, its parameter count and sizes (so the test can check the Python
// launcher's argument list against the real signature) and a launcher taking void* arguments.
#define EMU_EXPORT(kernel)                                                                         \
    extern "C" int emu_num_params_##kernel() { return ::emu::num_params(&kernel); }              \
    extern "C" void emu_param_sizes_##kernel(int* out) { ::emu::param_sizes(&kernel, out); }     \
    static void emu_body_##kernel(void* args) {                                                  \
        ::emu::call_kernel(&kernel, static_cast<void**>(args),                                   \
                           std::make_index_sequence<::emu::num_params(&kernel)>());               \
    }                                                                                            \
    extern "C" int emu_launch_##kernel(const unsigned* grid, const unsigned* block, void** args, \
                                       const unsigned long long* regions, int num_regions,       \
                                       char* err, int err_len) {                                 \
        return ::emu::launch(grid, block, regions, num_regions, emu_body_##kernel, args, err,    \
                             err_len);                                                           \
    }

// nvcuda::wmma (the kernels' `#include <mma.h>` is empty outside nvcc/NVRTC).
#include "wmma_emu.h"

#endif  // TIERD_CUDA_EMU_H
