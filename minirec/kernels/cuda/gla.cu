// gla.cu: the GLA engine's recurrent form (gated linear attention, and RWKV-6's read order) in
// CUDA C. Launched by minirec/kernels/cuda/gla.py; tested against minirec.ops.gla.run(...,
// backend="numpy") by tests/kernels/test_cuda_matrix.py (emulator; CuPy with pytest -m gpu).
//
// Per batch row b and head h, with a_t = e^{g_t} (g: none, one scalar per head, or one per
// key), S (K, V) K-first:
//   S_t = Diag(a_t) S_{t-1} + k_t v_t^T
//   o_t = scale · S_t^T q_t        (READ_FIRST = false: GLA)
//   o_t = scale · S_{t-1}^T q_t    (READ_FIRST = true: RWKV-6; the bonus (q_t·(u⊙k_t)) v_t is
//                                   added by gla.py, it needs no state)
// Backward, dS = ∂L/∂S_t from dstate and the later steps (qs = scale · q_t):
//   GLA:  dS += qs do_t^T;  dq_t = scale · S_t do_t
//   both: dk_t = dS v_t;  dv_t = dS^T k_t;  dg_t = Σ_V dS ⊙ (a_t S_{t-1})   (per key)
//         dS <- Diag(a_t) dS
//   RWKV: dq_t = scale · S_{t-1} do_t;  then dS += qs do_t^T
//
// Layout (C-contiguous, F float or double): q, k, (g per key) (B, T, H, K); v, o, do
// (B, T, H, V); g per head (B, T, H); S0, ST, dstate, dS0 (B, H, K, V).
// G (the gate's kind): 0 none, 1 one per head, 2 one per key.
//
// Geometry (both kernels): the columns of S are independent, so the V columns are cut into
// nblk slices of VB (blockDim.x = VB <= 32) and one block runs one (b, h, slice): grid
// B·H·nblk. Thread jl owns column j = slice·VB + jl of S (threads with j >= V idle but keep to
// the barriers) and walks the K rows of its column serially: the reductions over K (S^T q,
// dS^T k) are the thread's own, in order. The column lives in shared memory, at
// state[kk * VB + jl] (adjacent threads, adjacent banks); q_t, k_t and a_t are loaded once
// per step into shared vectors by the threads, strided over K.
//
// Forward: one __syncthreads per step (the step vectors double-buffered); the state entering
// steps 0, L, 2L, ... is stored to ckpt (B·H, NC, K, V), NC = ceil(T / L).
// Backward: chunks of L steps, last first. Each chunk is replayed forward from its checkpoint
// into states (B·H, L, K, V) (the same operations as the forward: bitwise its states), then
// walked in reverse with dS in shared memory. dq_t and dk_t (and the per-key dg_t) sum over
// the columns: every thread writes its column's terms to red[r][kk][jl] (rows padded to VB + 1
// against bank conflicts), a barrier, then thread jl sums rows kk = jl, jl + VB, ... over the
// block's columns, in order, into the slice's partial (B·H, nblk, T, K); gla.py sums the
// slices. dv_t is the thread's own.
#include "common.h"

// index of (b, t, h, x) in a (B, T, H, X) array, from bh = b·H + h
__device__ __forceinline__ long long gla_at(long long bh, long long t, long long x, long long T,
                                            long long H, long long X) {
    const long long b = bh / H, h = bh % H;
    return ((b * T + t) * H + h) * X + x;
}

// the decay a_t[kk] of gate kind G (0 none, 1 per head, 2 per key)
template <class F>
__device__ __forceinline__ F gla_decay(const F* __restrict__ g, int G, long long bh, long long t,
                                       long long kk, long long T, long long H, long long K) {
    if (G == 0) return F(1);
    if (G == 1) return exp_(g[gla_at(bh, t, 0, T, H, 1)]);
    return exp_(g[gla_at(bh, t, kk, T, H, K)]);
}

template <class F, bool READ_FIRST>
__global__ void gla_forward(const F* __restrict__ q, const F* __restrict__ k,
                            const F* __restrict__ v, const F* __restrict__ g,
                            const F* __restrict__ S0, F* __restrict__ o, F* __restrict__ ST,
                            F* __restrict__ ckpt, F scale, int G, long long T, long long H,
                            long long K, long long V, long long L, long long nblk) {
    MINIREC_DYNAMIC_SHARED(F, smem);
    const long long VB = blockDim.x, jl = threadIdx.x;
    const long long bh = blockIdx.x / nblk, j = (blockIdx.x % nblk) * VB + jl;
    const bool active = j < V;
    F* state = smem;                 // K * VB: this block's columns
    F* vecs = smem + K * VB;         // 2 buffers of (q_t, k_t, a_t), K each
    const long long NC = (T + L - 1) / L;
    if (active)
        for (long long kk = 0; kk < K; ++kk) state[kk * VB + jl] = S0[(bh * K + kk) * V + j];
    for (long long t = 0; t < T; ++t) {
        F* sq = vecs + (t % 2) * 3 * K;
        F* sk = sq + K;
        F* sa = sk + K;
        for (long long kk = jl; kk < K; kk += VB) {
            sq[kk] = q[gla_at(bh, t, kk, T, H, K)];
            sk[kk] = k[gla_at(bh, t, kk, T, H, K)];
            sa[kk] = gla_decay(g, G, bh, t, kk, T, H, K);
        }
        __syncthreads();  // the step's vectors are in; the buffer written next step was last
                          // read before this barrier
        if (!active) continue;
        if (t % L == 0)
            for (long long kk = 0; kk < K; ++kk)
                ckpt[((bh * NC + t / L) * K + kk) * V + j] = state[kk * VB + jl];
        const F vj = v[gla_at(bh, t, j, T, H, V)];
        F acc = F(0);
        if (READ_FIRST)
            for (long long kk = 0; kk < K; ++kk) acc = fma_(state[kk * VB + jl], sq[kk], acc);
        for (long long kk = 0; kk < K; ++kk) {
            const F s = fma_(sa[kk], state[kk * VB + jl], sk[kk] * vj);
            state[kk * VB + jl] = s;
            if (!READ_FIRST) acc = fma_(s, sq[kk], acc);
        }
        o[gla_at(bh, t, j, T, H, V)] = scale * acc;
    }
    if (active)
        for (long long kk = 0; kk < K; ++kk) ST[(bh * K + kk) * V + j] = state[kk * VB + jl];
}

template <class F, bool READ_FIRST>
__global__ void gla_backward(const F* __restrict__ q, const F* __restrict__ k,
                             const F* __restrict__ v, const F* __restrict__ g,
                             const F* __restrict__ ckpt, const F* __restrict__ dO,
                             const F* __restrict__ dstate, F* __restrict__ states,
                             F* __restrict__ dq_part, F* __restrict__ dk_part,
                             F* __restrict__ dg_part, F* __restrict__ dv, F* __restrict__ dS0,
                             F scale, int G, long long T, long long H, long long K, long long V,
                             long long L, long long nblk) {
    MINIREC_DYNAMIC_SHARED(F, smem);
    const long long VB = blockDim.x, jl = threadIdx.x, P = VB + 1;
    const long long bh = blockIdx.x / nblk, slice = blockIdx.x % nblk, j = slice * VB + jl;
    const bool active = j < V;
    const int R = G == 0 ? 2 : 3;    // reductions per step: dq, dk (and dg)
    F* dS = smem;                    // K * VB
    F* red = dS + K * VB;            // R rows of K * P
    F* sq = red + R * K * P;         // reverse walk: q_t (scaled), k_t, a_t
    F* sk = sq + K;
    F* sa = sk + K;
    F* rvecs = sa + K;               // replay: 2 buffers of (k_t, a_t)
    const long long NC = (T + L - 1) / L;
    if (active)
        for (long long kk = 0; kk < K; ++kk) dS[kk * VB + jl] = dstate[(bh * K + kk) * V + j];
    F* own = states + bh * L * K * V;  // this (b, h)'s replayed states; column j is ours
    for (long long c = NC - 1; c >= 0; --c) {
        const long long t0 = c * L, t1 = t0 + L < T ? t0 + L : T;
        const F* start = ckpt + (bh * NC + c) * K * V;
        // replay S_{t0} .. S_{t1-1} into own[0 .. t1-t0-1]
        for (long long t = t0; t < t1; ++t) {
            F* rk = rvecs + (t % 2) * 2 * K;
            F* ra = rk + K;
            for (long long kk = jl; kk < K; kk += VB) {
                rk[kk] = k[gla_at(bh, t, kk, T, H, K)];
                ra[kk] = gla_decay(g, G, bh, t, kk, T, H, K);
            }
            __syncthreads();
            if (!active) continue;
            const F vj = v[gla_at(bh, t, j, T, H, V)];
            const F* prev = t == t0 ? start : own + (t - t0 - 1) * K * V;
            F* next = own + (t - t0) * K * V;
            for (long long kk = 0; kk < K; ++kk)
                next[kk * V + j] = fma_(ra[kk], prev[kk * V + j], rk[kk] * vj);
        }
        for (long long t = t1 - 1; t >= t0; --t) {
            for (long long kk = jl; kk < K; kk += VB) {
                sq[kk] = scale * q[gla_at(bh, t, kk, T, H, K)];
                sk[kk] = k[gla_at(bh, t, kk, T, H, K)];
                sa[kk] = gla_decay(g, G, bh, t, kk, T, H, K);
            }
            __syncthreads();  // vectors in; last step's reductions done with red
            if (active) {
                const F* S_t = own + (t - t0) * K * V;
                const F* S_prev = t == t0 ? start : own + (t - t0 - 1) * K * V;
                const F* read = READ_FIRST ? S_prev : S_t;
                const F doj = dO[gla_at(bh, t, j, T, H, V)];
                const F vj = v[gla_at(bh, t, j, T, H, V)];
                F acc_dv = F(0);
                for (long long kk = 0; kk < K; ++kk) {
                    F d = dS[kk * VB + jl];
                    if (!READ_FIRST) d = fma_(sq[kk], doj, d);  // dS += qs do^T (o reads S_t)
                    red[kk * P + jl] = read[kk * V + j] * doj;
                    red[(K + kk) * P + jl] = d * vj;
                    if (G != 0) red[(2 * K + kk) * P + jl] = d * (sa[kk] * S_prev[kk * V + j]);
                    acc_dv = fma_(d, sk[kk], acc_dv);
                    d = sa[kk] * d;
                    if (READ_FIRST) d = fma_(sq[kk], doj, d);    // o read S_{t-1}
                    dS[kk * VB + jl] = d;
                }
                dv[gla_at(bh, t, j, T, H, V)] = acc_dv;
            } else {
                for (long long r = 0; r < R * K; ++r) red[r * P + jl] = F(0);
            }
            __syncthreads();  // every column's terms are in red
            const long long out = (bh * nblk + slice) * T + t;
            for (long long kk = jl; kk < K; kk += VB) {
                F s0 = F(0), s1 = F(0), s2 = F(0);
                for (long long x = 0; x < VB; ++x) {
                    s0 = s0 + red[kk * P + x];
                    s1 = s1 + red[(K + kk) * P + x];
                    if (G != 0) s2 = s2 + red[(2 * K + kk) * P + x];
                }
                dq_part[out * K + kk] = scale * s0;
                dk_part[out * K + kk] = s1;
                if (G != 0) dg_part[out * K + kk] = s2;
            }
        }
    }
    if (active)
        for (long long kk = 0; kk < K; ++kk) dS0[(bh * K + kk) * V + j] = dS[kk * VB + jl];
}
