// linear_scan.cu: the diagonal affine scan h_t = a_t ⊙ h_{t-1} + b_t over time, in CUDA C.
//
// Tested against minirec.scan.linear.forward/backward (backend="numpy") by
// tests/kernels/test_cuda_linear_scan.py: on the CPU through the emulator, on a GPU through
// CuPy (pytest -m gpu). Launched by minirec/kernels/cuda/linear_scan.py.
//
// Layout: a, b, h, dh (B, T, R) C-contiguous, R the product of the trailing axes; h0 and
// dstate (B, R). A "lane" is one (i, r) pair, index lane = i * R + r: one scan of length T.
// S is float, double, cfloat or cdouble.
//
// Backward (g_t = ∂L/∂h_t in total):
//   g_{T-1} = dh_{T-1} + dstate,  g_t = dh_t + conj(a_{t+1}) g_{t+1}
//   db_t = g_t,  da_t = g_t conj(h_{t-1}),  dh0 = conj(a_0) g_0        (h_{-1} = h0)
//
// Two methods:
//   recurrent  one thread per lane walks over T (adjacent threads read adjacent r: coalesced).
//   chunked    time is cut into chunks of L steps, one block per (lane, chunk), in three
//              kernels: (1) every block reduces its chunk to one affine map (its "total"),
//              (2) one thread per lane scans the chunk totals into the state entering each
//              chunk (its "carry"), (3) every block scans its chunk again from its carry and
//              writes the outputs. Inside a block the scan is work-efficient: each thread
//              composes `items` consecutive steps serially, the threads' maps are scanned with
//              warp shuffles, then the warps' totals through shared memory.
#include "common.h"

// --------------------------------------------------------------------------------------
// recurrent: one thread per lane
// --------------------------------------------------------------------------------------

template <class S>
__global__ void linear_scan_forward_recurrent(const S* __restrict__ a, const S* __restrict__ b,
                                              const S* __restrict__ h0, S* __restrict__ h,
                                              long long B, long long T, long long R) {
    const long long lane = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= B * R) return;  // the ceil-div grid's last block has idle threads
    const long long i = lane / R, r = lane % R;
    S state = h0[lane];
    for (long long t = 0; t < T; ++t) {
        const long long k = (i * T + t) * R + r;
        state = fma_(a[k], state, b[k]);  // h_t = a_t h_{t-1} + b_t
        h[k] = state;
    }
}

template <class S>
__global__ void linear_scan_backward_recurrent(const S* __restrict__ a, const S* __restrict__ h,
                                               const S* __restrict__ h0, const S* __restrict__ dh,
                                               const S* __restrict__ dstate, S* __restrict__ da,
                                               S* __restrict__ db, S* __restrict__ dh0,
                                               long long B, long long T, long long R) {
    const long long lane = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= B * R) return;
    const long long i = lane / R, r = lane % R;
    S g = dstate[lane];
    for (long long t = T - 1; t >= 0; --t) {
        const long long k = (i * T + t) * R + r;
        // g_t = dh_t + conj(a_{t+1}) g_{t+1};  g_{T-1} = dh_{T-1} + dstate
        g = t == T - 1 ? add(dh[k], g) : fma_(conj_(a[k + R]), g, dh[k]);
        const S h_prev = t > 0 ? h[k - R] : h0[lane];
        db[k] = g;
        da[k] = mul(g, conj_(h_prev));
    }
    dh0[lane] = mul(conj_(a[i * T * R + r]), g);
}

// --------------------------------------------------------------------------------------
// chunked: the block scan
// --------------------------------------------------------------------------------------

// The affine map x -> a x + b. Scanning h_t = a_t h_{t-1} + b_t is scanning these maps
// under composition; compose(earlier, later) is "apply earlier, then later":
//   (a1, b1) then (a2, b2) = (a2 a1, a2 b1 + b2)
template <class S>
struct Affine {
    S a, b;
};

template <class S>
__device__ __forceinline__ Affine<S> identity() { return {num<S>::one(), num<S>::zero()}; }

template <class S>
__device__ __forceinline__ Affine<S> compose(Affine<S> earlier, Affine<S> later) {
    return {mul(later.a, earlier.a), fma_(later.a, earlier.b, later.b)};
}

// The scan runs over positions u = 0 .. T-1: forward in time for the forward pass
// (t = u, element (a_t, b_t)) and backward in time for the gradient (t = T-1-u, element
// (conj(a_{t+1}), dh_t), with conj(a_T) read as 1). `base` is lane (i, r)'s offset i*T*R + r.
template <class S, bool REVERSE>
__device__ __forceinline__ Affine<S> element(const S* __restrict__ a, const S* __restrict__ v,
                                             long long base, long long u, long long T, long long R) {
    if (!REVERSE) return {a[base + u * R], v[base + u * R]};
    const long long t = T - 1 - u;
    return {t + 1 < T ? conj_(a[base + (t + 1) * R]) : num<S>::one(), v[base + t * R]};
}

// This thread's positions: `items` consecutive ones of chunk blockIdx.y (chunk length L).
// The tail threads of the last chunk (and of any chunk when blockDim.x * items > L) get an
// empty range, hence the identity map, and still take part in the block scan.
struct Span {
    long long begin, end;
};
__device__ __forceinline__ Span thread_span(long long T, long long L, long long items) {
    const long long chunk_begin = (long long)blockIdx.y * L;
    const long long chunk_end = chunk_begin + L < T ? chunk_begin + L : T;
    const long long begin = chunk_begin + (long long)threadIdx.x * items;
    const long long end = begin + items < chunk_end ? begin + items : chunk_end;
    return {begin, end > begin ? end : begin};
}

// level 0: compose this thread's elements one after the other
template <class S, bool REVERSE>
__device__ __forceinline__ Affine<S> thread_total(const S* __restrict__ a, const S* __restrict__ v,
                                                  long long base, Span span, long long T,
                                                  long long R) {
    Affine<S> acc = identity<S>();
    for (long long u = span.begin; u < span.end; ++u)
        acc = compose(acc, element<S, REVERSE>(a, v, base, u, T, R));
    return acc;
}

// level 1: inclusive scan across the 32 lanes of a warp (Kogge-Stone, 5 shuffle steps):
// after the step with distance d, lane l holds the composition of lanes l-2d+1 .. l
template <class S>
__device__ __forceinline__ Affine<S> warp_inclusive_scan(Affine<S> x, int lane) {
    for (unsigned d = 1; d < 32; d *= 2) {
        const Affine<S> earlier = {shfl_up(x.a, d), shfl_up(x.b, d)};
        if (lane >= (int)d) x = compose(earlier, x);
    }
    return x;
}

// levels 1-3: exclusive scan across the block (blockDim.x a multiple of 32, at most 1024):
// returns the composition of the maps of all earlier threads (identity for thread 0)
template <class S>
__device__ __forceinline__ Affine<S> block_exclusive_scan(Affine<S> x) {
    __shared__ Affine<S> warp_prefix[32];  // one entry per warp
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int warps = blockDim.x / 32;
    const Affine<S> inclusive = warp_inclusive_scan(x, lane);
    if (lane == 31) warp_prefix[warp] = inclusive;  // the warp's total
    __syncthreads();
    // level 2: warp 0 scans the warps' totals, turning them into each warp's prefix
    if (warp == 0) {
        const Affine<S> total = lane < warps ? warp_prefix[lane] : identity<S>();
        const Affine<S> scanned = warp_inclusive_scan(total, lane);
        const Affine<S> before = {shfl_up(scanned.a, 1), shfl_up(scanned.b, 1)};
        if (lane < warps) warp_prefix[lane] = lane == 0 ? identity<S>() : before;
    }
    __syncthreads();
    // level 3: the warp's prefix, then the lanes before this one inside the warp
    const Affine<S> lanes_before = {shfl_up(inclusive.a, 1), shfl_up(inclusive.b, 1)};
    return compose(warp_prefix[warp], lane == 0 ? identity<S>() : lanes_before);
}

// kernel 1: the total map of every chunk -> totals_a/totals_b (B, chunks, R)
// grid (B*R, chunks), block (threads), REVERSE for the gradient's scan
template <class S, bool REVERSE>
__global__ void linear_scan_chunk_totals(const S* __restrict__ a, const S* __restrict__ v,
                                         S* __restrict__ totals_a, S* __restrict__ totals_b,
                                         long long T, long long R, long long L, long long items) {
    const long long lane = blockIdx.x, i = lane / R, r = lane % R, base = i * T * R + r;
    const Affine<S> mine = thread_total<S, REVERSE>(a, v, base, thread_span(T, L, items), T, R);
    const Affine<S> before = block_exclusive_scan(mine);
    if (threadIdx.x == blockDim.x - 1) {  // the last thread's inclusive prefix is the chunk's
        const Affine<S> total = compose(before, mine);
        const long long k = (i * gridDim.y + blockIdx.y) * R + r;
        totals_a[k] = total.a;
        totals_b[k] = total.b;
    }
}

// kernel 2: carry[c] = the state entering chunk c, from init (h0, or dstate for the gradient)
// one thread per lane, grid ceil(B*R / threads)
template <class S>
__global__ void linear_scan_chunk_carries(const S* __restrict__ totals_a,
                                          const S* __restrict__ totals_b,
                                          const S* __restrict__ init, S* __restrict__ carry,
                                          long long B, long long R, long long chunks) {
    const long long lane = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= B * R) return;
    const long long i = lane / R, r = lane % R;
    S state = init[lane];
    for (long long c = 0; c < chunks; ++c) {
        const long long k = (i * chunks + c) * R + r;
        carry[k] = state;
        state = fma_(totals_a[k], state, totals_b[k]);
    }
}

// kernel 3 (forward): scan every chunk from its carry and write h
template <class S>
__global__ void linear_scan_forward_chunked(const S* __restrict__ a, const S* __restrict__ b,
                                            const S* __restrict__ carry, S* __restrict__ h,
                                            long long T, long long R, long long L, long long items) {
    const long long lane = blockIdx.x, i = lane / R, r = lane % R, base = i * T * R + r;
    const Span span = thread_span(T, L, items);
    const Affine<S> before = block_exclusive_scan(thread_total<S, false>(a, b, base, span, T, R));
    // the state entering this thread's first step: the block's prefix applied to the carry
    S state = fma_(before.a, carry[(i * gridDim.y + blockIdx.y) * R + r], before.b);
    for (long long t = span.begin; t < span.end; ++t) {  // a second read of a, b (from cache)
        state = fma_(a[base + t * R], state, b[base + t * R]);
        h[base + t * R] = state;
    }
}

// kernel 3 (backward): scan every chunk of the reversed time from its carry: g, then da, db, dh0
template <class S>
__global__ void linear_scan_backward_chunked(const S* __restrict__ a, const S* __restrict__ h,
                                             const S* __restrict__ h0, const S* __restrict__ dh,
                                             const S* __restrict__ carry, S* __restrict__ da,
                                             S* __restrict__ db, S* __restrict__ dh0,
                                             long long T, long long R, long long L,
                                             long long items) {
    const long long lane = blockIdx.x, i = lane / R, r = lane % R, base = i * T * R + r;
    const Span span = thread_span(T, L, items);
    const Affine<S> before = block_exclusive_scan(thread_total<S, true>(a, dh, base, span, T, R));
    S g = fma_(before.a, carry[(i * gridDim.y + blockIdx.y) * R + r], before.b);
    for (long long u = span.begin; u < span.end; ++u) {
        const Affine<S> e = element<S, true>(a, dh, base, u, T, R);
        g = fma_(e.a, g, e.b);  // g_t = conj(a_{t+1}) g_{t+1} + dh_t
        const long long t = T - 1 - u, k = base + t * R;
        const S h_prev = t > 0 ? h[k - R] : h0[lane];
        db[k] = g;
        da[k] = mul(g, conj_(h_prev));
        if (t == 0) dh0[lane] = mul(conj_(a[base]), g);
    }
}
