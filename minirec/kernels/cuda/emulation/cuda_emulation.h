// cuda_emulation.h: run a CUDA C kernel on the CPU, one std::thread per CUDA thread (C++20).
//
// The same .cu a GPU runs is compiled by the host compiler after this header
// (minirec/kernels/cuda/_build.py) and launched through ctypes with the launch plan
// CuPy would use. What it models, and how:
//   threadIdx/blockIdx/blockDim/gridDim  thread_local variables set before the kernel runs
//   a block                              blockDim host threads, one per CUDA thread; blocks
//                                        run one at a time, in blockIdx order (the threads
//                                        are started once per launch and reused)
//   __syncthreads()                      a std::barrier of the block's threads
//   __shfl_*_sync                        a per-warp barrier and exchange slots: every lane
//                                        writes its value, waits, reads the source lane's slot
//                                        (the mask is ignored: all lanes of the warp must take
//                                        part, as in minirec's kernels)
//   static __shared__ arrays             `static` locals: one copy, used by one block at a time
//   dynamic shared memory                MINIREC_DYNAMIC_SHARED (common.h), one arena per launch,
//                                        filled with 0xff (NaN) before every block
//   a thread that returns                drops out of its warp's and block's barriers, as an
//                                        exited GPU thread no longer holds up __syncthreads
// Not modelled: warp-synchronous code without __syncwarp/shuffles, memory-model subtleties
// beyond what the barriers order, texture/constant caches. Built with -fsanitize=thread a
// missing __syncthreads is a reported data race; with -fsanitize=address an out-of-bounds
// access is reported at the faulting line.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define MINIREC_EMULATED 1
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

namespace emu {
struct Warp {
    std::barrier<> bar;
    int size;                                  // lanes that exist (the block's last warp may be short)
    alignas(16) unsigned char slot[2][32][16]; // two banks of one slot per lane, up to 16 bytes
    explicit Warp(int n) : bar(n), size(n) {}
};
struct Block {
    std::barrier<> bar;
    std::vector<std::unique_ptr<Warp>> warps;
    explicit Block(unsigned n) : bar(n) {
        for (unsigned w = 0; w < n; w += 32) warps.push_back(std::make_unique<Warp>(std::min(32u, n - w)));
    }
};
inline thread_local Block* this_block = nullptr;
inline thread_local Warp* this_warp = nullptr;
inline thread_local int this_lane = 0;
inline thread_local int this_bank = 0;         // shuffles alternate between the two banks
inline unsigned char* dynamic_arena = nullptr;
inline std::mutex one_launch_at_a_time;        // static __shared__ copies belong to one launch

inline void* dynamic_shared() { return dynamic_arena; }

// every lane publishes v; returns the value of lane src (its own when src < 0 or absent).
// A bank is written again two shuffles later, after the barrier of the shuffle in between,
// which every lane reaches only once it has read this one: one barrier per shuffle.
template <class T>
T exchange(T v, int src) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "shuffle of 1..16 bytes");
    Warp& w = *this_warp;
    auto& bank = w.slot[this_bank];
    this_bank ^= 1;
    std::memcpy(bank[this_lane], &v, sizeof(T));
    w.bar.arrive_and_wait();
    T out = v;
    if (src >= 0 && src < w.size) std::memcpy(&out, bank[src], sizeof(T));
    return out;
}

template <class... P>
int launch(void (*kernel)(P...), const unsigned* g, const unsigned* b, std::size_t smem,
           void** args, const long long* sizes, int nargs) {
    constexpr int n = sizeof...(P);
    constexpr bool is_ptr[] = {std::is_pointer_v<P>..., false};
    constexpr long long size[] = {static_cast<long long>(sizeof(P))..., 0};
    if (nargs != n) return 1;                  // codes are decoded in _launch.py
    for (int i = 0; i < n; ++i)                // pointers come as size 0, scalars as their size
        if (is_ptr[i] ? sizes[i] != 0 : sizes[i] != size[i])
            return static_cast<int>(1000 * (is_ptr[i] ? 0 : size[i]) + 100 + i);
    const unsigned nt = b[0] * b[1] * b[2];
    if (nt == 0 || nt > 1024 || b[0] > 1024 || b[1] > 1024 || b[2] > 64) return 2;
    if (g[0] == 0 || g[1] == 0 || g[2] == 0 || g[1] > 65535 || g[2] > 65535) return 3;
    if (smem > 48 * 1024) return 4;            // the default dynamic shared-memory limit
    std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    std::vector<std::max_align_t> arena(smem / sizeof(std::max_align_t) + 1);
    dynamic_arena = reinterpret_cast<unsigned char*>(arena.data());
    auto call = [&]<std::size_t... I>(std::index_sequence<I...>) {
        kernel(*static_cast<std::remove_cv_t<P>*>(args[I])...);
    };
    // nt host threads, started once per launch, play the block's CUDA threads for every block
    // in turn; `start` and `done` (with this thread) separate the blocks
    std::unique_ptr<Block> block;
    uint3 index{};
    bool stop = false;
    std::barrier<> start(nt + 1), done(nt + 1);
    auto cuda_thread = [&](unsigned t) {
        threadIdx = {t % b[0], t / b[0] % b[1], t / (b[0] * b[1])};
        blockDim = dim3(b[0], b[1], b[2]);
        gridDim = dim3(g[0], g[1], g[2]);
        this_lane = static_cast<int>(t % 32);
        for (;;) {
            start.arrive_and_wait();
            if (stop) return;
            blockIdx = index;
            this_block = block.get();
            this_warp = block->warps[t / 32].get();
            this_bank = 0;
            call(std::index_sequence_for<P...>{});
            this_warp->bar.arrive_and_drop();  // an exited thread no longer holds others up
            this_block->bar.arrive_and_drop();
            done.arrive_and_wait();
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(nt);
    int code = 0;
    for (unsigned t = 0; t < nt && code == 0; ++t) {
        try {
            threads.emplace_back(cuda_thread, t);
        } catch (...) {
            code = 5;                          // no more host threads
        }
    }
    for (unsigned bz = 0; bz < g[2] && code == 0; ++bz)
    for (unsigned by = 0; by < g[1]; ++by)
    for (unsigned bx = 0; bx < g[0]; ++bx) {
        std::memset(dynamic_arena, 0xff, smem);
        block = std::make_unique<Block>(nt);
        index = {bx, by, bz};
        start.arrive_and_wait();               // run block (bx, by, bz)
        done.arrive_and_wait();
    }
    stop = true;
    if (threads.size() < nt) (void)start.arrive(static_cast<std::ptrdiff_t>(nt - threads.size()));
    start.arrive_and_wait();
    for (auto& th : threads) th.join();
    return code;
}
}  // namespace emu

inline void __syncthreads() { emu::this_block->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::this_warp->bar.arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class T>
T __shfl_sync(unsigned, T v, int src, int width = warpSize) {
    return emu::exchange(v, (emu::this_lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T>
T __shfl_up_sync(unsigned, T v, unsigned d, int width = warpSize) {
    const int lane = emu::this_lane, d_ = static_cast<int>(d);
    return emu::exchange(v, (lane & (width - 1)) >= d_ ? lane - d_ : -1);
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned d, int width = warpSize) {
    const int lane = emu::this_lane, d_ = static_cast<int>(d);
    return emu::exchange(v, (lane & (width - 1)) + d_ < width ? lane + d_ : -1);
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = warpSize) {
    const int lane = emu::this_lane, src = lane ^ mask;  // a later group of `width` gives v back
    return emu::exchange(v, src / width > lane / width ? -1 : src);
}

template <class T>
T atomicAdd(T* address, T v) { return std::atomic_ref<T>(*address).fetch_add(v); }
template <class T>
T __ldg(const T* p) { return *p; }
