// delta_rule.cu: the delta engine's recurrent form (DeltaNet, Gated DeltaNet) in CUDA C.
// Launched by minirec/kernels/cuda/delta_rule.py; tested against
// minirec.ops.delta_rule.run(..., backend="numpy") by tests/kernels/test_cuda_matrix.py
// (emulator; CuPy with pytest -m gpu).
//
// Per batch row b and head h, a_t = e^{g_t} (a_t = 1 when GATED is false), S (K, V) K-first:
//   Sp  = a_t S_{t-1}                   (decay first)
//   e_t = v_t - Sp^T k_t                (the error against the decayed state)
//   S_t = Sp + β_t k_t e_t^T
//   o_t = scale · S_t^T q_t
// Backward, dS = ∂L/∂S_t from dstate and the later steps:
//   dS += scale · q_t do_t^T;   dq_t = scale · S_t do_t
//   dβ_t = k_t^T dS e_t;   de = β_t dS^T k_t;   dv_t = de
//   dk_t = β_t dS e_t - Sp de;   dSp = dS - k_t de^T
//   dg_t = Σ dSp ⊙ Sp;   dS <- a_t dSp
//
// Layout (C-contiguous, F float or double): q, k (B, T, H, K); v, o, do (B, T, H, V);
// g, beta (B, T, H); S0, ST, dstate, dS0 (B, H, K, V).
//
// Geometry as gla.cu: one block per (b, h, slice of VB <= 32 columns), thread jl owns column
// j = slice·VB + jl of S in shared memory (state[kk * VB + jl]) and walks its K rows; every
// column's e_t, S^T k and S^T q are the thread's own. q_t, k_t are staged in shared memory
// (double-buffered: one barrier per step). The backward replays each chunk of L steps from
// the forward's checkpoints into states (B·H, L, K, V), walks it in reverse, and sums dq_t,
// dk_t over the block's columns through red[r][kk][jl] (rows padded to VB + 1) into slice
// partials (B·H, nblk, T, K). dβ_t and dg_t are sums over all of S: every column writes its
// share to dbeta_col, dg_col (B·H, T, V) and delta_rule.py sums them.
#include "common.h"

__device__ __forceinline__ long long delta_at(long long bh, long long t, long long x,
                                              long long T, long long H, long long X) {
    const long long b = bh / H, h = bh % H;
    return ((b * T + t) * H + h) * X + x;
}

template <class F, bool GATED>
__global__ void delta_rule_forward(const F* __restrict__ q, const F* __restrict__ k,
                                   const F* __restrict__ v, const F* __restrict__ g,
                                   const F* __restrict__ beta, const F* __restrict__ S0,
                                   F* __restrict__ o, F* __restrict__ ST, F* __restrict__ ckpt,
                                   F scale, long long T, long long H, long long K, long long V,
                                   long long L, long long nblk) {
    MINIREC_DYNAMIC_SHARED(F, smem);
    const long long VB = blockDim.x, jl = threadIdx.x;
    const long long bh = blockIdx.x / nblk, j = (blockIdx.x % nblk) * VB + jl;
    const bool active = j < V;
    F* state = smem;          // K * VB
    F* vecs = smem + K * VB;  // 2 buffers of (q_t, k_t)
    const long long NC = (T + L - 1) / L;
    if (active)
        for (long long kk = 0; kk < K; ++kk) state[kk * VB + jl] = S0[(bh * K + kk) * V + j];
    for (long long t = 0; t < T; ++t) {
        F* sq = vecs + (t % 2) * 2 * K;
        F* sk = sq + K;
        for (long long kk = jl; kk < K; kk += VB) {
            sq[kk] = q[delta_at(bh, t, kk, T, H, K)];
            sk[kk] = k[delta_at(bh, t, kk, T, H, K)];
        }
        __syncthreads();  // the step's vectors are in (the other buffer is next step's)
        if (!active) continue;
        if (t % L == 0)
            for (long long kk = 0; kk < K; ++kk)
                ckpt[((bh * NC + t / L) * K + kk) * V + j] = state[kk * VB + jl];
        const long long s = delta_at(bh, t, 0, T, H, 1);
        const F a = GATED ? exp_(g[s]) : F(1);
        const F b = beta[s];
        F pred = F(0);  // (Sp^T k_t)[j]
        for (long long kk = 0; kk < K; ++kk) {
            const F sp = a * state[kk * VB + jl];
            state[kk * VB + jl] = sp;
            pred = fma_(sp, sk[kk], pred);
        }
        const F e = v[delta_at(bh, t, j, T, H, V)] - pred;
        F acc = F(0);
        for (long long kk = 0; kk < K; ++kk) {
            const F st = fma_(b, sk[kk] * e, state[kk * VB + jl]);
            state[kk * VB + jl] = st;
            acc = fma_(st, sq[kk], acc);
        }
        o[delta_at(bh, t, j, T, H, V)] = scale * acc;
    }
    if (active)
        for (long long kk = 0; kk < K; ++kk) ST[(bh * K + kk) * V + j] = state[kk * VB + jl];
}

template <class F, bool GATED>
__global__ void delta_rule_backward(const F* __restrict__ q, const F* __restrict__ k,
                                    const F* __restrict__ v, const F* __restrict__ g,
                                    const F* __restrict__ beta, const F* __restrict__ ckpt,
                                    const F* __restrict__ dO, const F* __restrict__ dstate,
                                    F* __restrict__ states, F* __restrict__ dq_part,
                                    F* __restrict__ dk_part, F* __restrict__ dv,
                                    F* __restrict__ dbeta_col, F* __restrict__ dg_col,
                                    F* __restrict__ dS0, F scale, long long T, long long H,
                                    long long K, long long V, long long L, long long nblk) {
    MINIREC_DYNAMIC_SHARED(F, smem);
    const long long VB = blockDim.x, jl = threadIdx.x, P = VB + 1;
    const long long bh = blockIdx.x / nblk, slice = blockIdx.x % nblk, j = slice * VB + jl;
    const bool active = j < V;
    F* dS = smem;              // K * VB
    F* red = dS + K * VB;      // 2 rows of K * P: dq, dk terms
    F* sq = red + 2 * K * P;   // reverse walk: scale · q_t, k_t
    F* sk = sq + K;
    F* rk = sk + K;            // replay: 2 buffers of k_t
    const long long NC = (T + L - 1) / L;
    if (active)
        for (long long kk = 0; kk < K; ++kk) dS[kk * VB + jl] = dstate[(bh * K + kk) * V + j];
    F* own = states + bh * L * K * V;
    for (long long c = NC - 1; c >= 0; --c) {
        const long long t0 = c * L, t1 = t0 + L < T ? t0 + L : T;
        const F* start = ckpt + (bh * NC + c) * K * V;
        for (long long t = t0; t < t1; ++t) {  // replay S_{t0} .. S_{t1-1}, as the forward
            F* bk = rk + (t % 2) * K;
            for (long long kk = jl; kk < K; kk += VB) bk[kk] = k[delta_at(bh, t, kk, T, H, K)];
            __syncthreads();
            if (!active) continue;
            const long long s = delta_at(bh, t, 0, T, H, 1);
            const F a = GATED ? exp_(g[s]) : F(1);
            const F b = beta[s];
            const F* prev = t == t0 ? start : own + (t - t0 - 1) * K * V;
            F* next = own + (t - t0) * K * V;
            F pred = F(0);
            for (long long kk = 0; kk < K; ++kk) {
                const F sp = a * prev[kk * V + j];
                next[kk * V + j] = sp;
                pred = fma_(sp, bk[kk], pred);
            }
            const F e = v[delta_at(bh, t, j, T, H, V)] - pred;
            for (long long kk = 0; kk < K; ++kk)
                next[kk * V + j] = fma_(b, bk[kk] * e, next[kk * V + j]);
        }
        for (long long t = t1 - 1; t >= t0; --t) {
            for (long long kk = jl; kk < K; kk += VB) {
                sq[kk] = scale * q[delta_at(bh, t, kk, T, H, K)];
                sk[kk] = k[delta_at(bh, t, kk, T, H, K)];
            }
            __syncthreads();  // vectors in; last step's reductions done with red
            if (active) {
                const long long s = delta_at(bh, t, 0, T, H, 1);
                const F a = GATED ? exp_(g[s]) : F(1);
                const F b = beta[s];
                const F* S_t = own + (t - t0) * K * V;
                const F* S_prev = t == t0 ? start : own + (t - t0 - 1) * K * V;
                const F doj = dO[delta_at(bh, t, j, T, H, V)];
                F pred = F(0);  // e_t as the forward computed it
                for (long long kk = 0; kk < K; ++kk)
                    pred = fma_(a * S_prev[kk * V + j], sk[kk], pred);
                const F e = v[delta_at(bh, t, j, T, H, V)] - pred;
                F dot = F(0);  // (dS^T k_t)[j]
                for (long long kk = 0; kk < K; ++kk) {
                    const F d = fma_(sq[kk], doj, dS[kk * VB + jl]);  // dS += scale q do^T
                    dS[kk * VB + jl] = d;
                    red[kk * P + jl] = S_t[kk * V + j] * doj;
                    dot = fma_(d, sk[kk], dot);
                }
                const F de = b * dot;
                dbeta_col[(bh * T + t) * V + j] = e * dot;
                dv[delta_at(bh, t, j, T, H, V)] = de;
                F dg = F(0);
                for (long long kk = 0; kk < K; ++kk) {
                    const F d = dS[kk * VB + jl];
                    const F sp = a * S_prev[kk * V + j];
                    red[(K + kk) * P + jl] = fma_(b, d * e, -(sp * de));  // β dS e - Sp de
                    const F dsp = fma_(-sk[kk], de, d);                   // dS - k de^T
                    dg = fma_(dsp, sp, dg);
                    dS[kk * VB + jl] = a * dsp;
                }
                if (GATED) dg_col[(bh * T + t) * V + j] = dg;
            } else {
                for (long long r = 0; r < 2 * K; ++r) red[r * P + jl] = F(0);
            }
            __syncthreads();  // every column's terms are in red
            const long long out = (bh * nblk + slice) * T + t;
            for (long long kk = jl; kk < K; kk += VB) {
                F s0 = F(0), s1 = F(0);
                for (long long x = 0; x < VB; ++x) {
                    s0 = s0 + red[kk * P + x];
                    s1 = s1 + red[(K + kk) * P + x];
                }
                dq_part[out * K + kk] = scale * s0;
                dk_part[out * K + kk] = s1;
            }
        }
    }
    if (active)
        for (long long kk = 0; kk < K; ++kk) dS0[(bh * K + kk) * V + j] = dS[kk * VB + jl];
}
