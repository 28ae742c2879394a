// softmax_scan.cu: the causal softmax scan (Aaren's core) in CUDA C, method "recurrent".
//
// Tested against minirec.ops.softmax_scan.forward/backward (backend="numpy") by
// tests/kernels/test_cuda_softmax_scan.py: on the CPU through the emulator, on a GPU through
// CuPy (pytest -m gpu). Launched by minirec/kernels/cuda/softmax_scan.py.
//
// Layout (C-contiguous, F float or double): scores s, running max M and denominator U
// (B, T, H); values v, numerators W and outputs o (B, T, H, V); the initial state m0, u0
// (B, H), w0 (B, H, V). A "row" is one (batch, head) pair, row = b * H + h: one recurrence
// over T whose state is (m, u, w (V,)).
//
// Forward, per row (the definition, minirec.ops.softmax_scan.step_forward):
//   m_t = max(m_{t-1}, s_t)   (NaN-propagating, like np.maximum; ties keep m_{t-1})
//   α_t = e^{m_{t-1} - m_t},  β_t = e^{s_t - m_t}   (1 where the exponent's terms are equal,
//                                                    so -inf - (-inf) is never formed)
//   u_t = α_t u_{t-1} + β_t,  w_t = α_t w_{t-1} + β_t v_t,  o_t = w_t / u_t
// Backward, per row, t = T-1 .. 0 (step_backward's equations, dm, du, dw carried back):
//   dw += do_t / u_t,  du -= Σ_V (do_t ⊙ o_t) / u_t
//   dα = du u_{t-1} + Σ_V dw ⊙ w_{t-1},   dβ = du + Σ_V dw ⊙ v_t
//   dv_t = β dw,  dw ← α dw,  du ← α du,  ds_t = β dβ
//   dm̄ = dm - α dα - β dβ  to m_{t-1} if m_{t-1} >= s_t, else to s_t;  dm ← α dα (+ dm̄)
//
// Both kernels: one warp per row, blockDim.x = 32 · (rows per block), lanes over V.
//   forward   lane l owns the values j = l, l+32, ...; for each of its j it walks over T
//             with (m, u, w_j) in registers (the scalar recurrence of m, u is recomputed
//             per group of 32 values: no shared memory, no synchronisation). Lane 0 of the
//             first group writes M and U.
//   backward  the loop over t runs in every lane in step; each lane keeps dw_j of its values
//             in its warp's slice of dynamic shared memory (V per warp; only that lane
//             touches them) and the three sums over V of one step are one pass of the lane's
//             values followed by a butterfly warp reduction (__shfl_xor_sync), after which
//             every lane holds the same bits and computes the same scalars. Lane 0 writes ds.
// Warps whose row is past B·H return whole; idle lanes (j >= V) add zeros to the sums.
//
// Rounding: the products and sums are written as NumPy evaluates them (no fma), and the
// code is compiled with --fmad=false on the GPU and -ffp-contract=off on the CPU, so only
// exp (CUDA's exp/expf versus the host's libm) and the order of the sums over V differ
// from the definition.
#include "common.h"

// max(m_prev, s_t) as np.maximum: NaN if either is NaN; ties keep m_prev
template <class F>
__device__ __forceinline__ F running_max(F m_prev, F s_t) {
    return (m_prev >= s_t || m_prev != m_prev) ? m_prev : s_t;
}

// e^{m_old - m_new} for m_old <= m_new: 1 where they are equal (both -inf included),
// NaN where either is NaN (NaN != NaN), as minirec.ops.softmax_scan._rescale
template <class F>
__device__ __forceinline__ F rescale(F m_old, F m_new) {
    return m_old == m_new ? F(1) : exp_(m_old - m_new);
}

// Σ over the 32 lanes of a warp, the same bits in every lane (a butterfly: lane l adds the
// partial sum of lane l ^ d; both lanes of a pair add the same two numbers)
template <class F>
__device__ __forceinline__ F warp_sum(F x) {
    for (int d = 16; d > 0; d /= 2) x += __shfl_xor_sync(0xffffffffu, x, d);
    return x;
}

template <class F>
__global__ void softmax_scan_forward(const F* __restrict__ s, const F* __restrict__ v,
                                     const F* __restrict__ m0, const F* __restrict__ u0,
                                     const F* __restrict__ w0, F* __restrict__ M,
                                     F* __restrict__ U, F* __restrict__ W, F* __restrict__ o,
                                     long long B, long long T, long long H, long long V) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= B * H) return;  // the last block's spare warps
    const long long b = row / H, h = row % H;
    // groups of 32 values; at least one pass, so that M and U are written when V = 0
    for (long long j0 = 0; j0 == 0 || j0 < V; j0 += 32) {
        const long long j = j0 + lane;
        const bool active = j < V;
        F m = m0[row], u = u0[row];
        F w = active ? w0[row * V + j] : F(0);
        for (long long t = 0; t < T; ++t) {
            const long long k = (b * T + t) * H + h;  // (b, t, h)
            const F s_t = s[k];
            const F m_new = running_max(m, s_t);
            const F alpha = rescale(m, m_new), beta = rescale(s_t, m_new);
            u = alpha * u + beta;
            if (active) {
                w = alpha * w + beta * v[k * V + j];
                W[k * V + j] = w;
                o[k * V + j] = w / u;
            }
            if (j0 == 0 && lane == 0) {
                M[k] = m_new;
                U[k] = u;
            }
            m = m_new;
        }
    }
}

template <class F>
__global__ void softmax_scan_backward(const F* __restrict__ s, const F* __restrict__ v,
                                      const F* __restrict__ m0, const F* __restrict__ u0,
                                      const F* __restrict__ w0, const F* __restrict__ M,
                                      const F* __restrict__ U, const F* __restrict__ W,
                                      const F* __restrict__ d_o, int has_do,
                                      const F* __restrict__ dm_T, const F* __restrict__ du_T,
                                      const F* __restrict__ dw_T, F* __restrict__ ds,
                                      F* __restrict__ dv, F* __restrict__ dm0,
                                      F* __restrict__ du0, F* __restrict__ dw0,
                                      long long B, long long T, long long H, long long V) {
    MINIREC_DYNAMIC_SHARED(F, shared);
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= B * H) return;  // whole warps: every lane of a running warp shuffles
    const long long b = row / H, h = row % H;
    F* dw = shared + (threadIdx.x / 32) * V;  // this warp's dw (V,); lane l owns j = l + 32 i
    for (long long j = lane; j < V; j += 32) dw[j] = dw_T[row * V + j];
    F dm = dm_T[row], du = du_T[row];
    for (long long t = T - 1; t >= 0; --t) {
        const long long k = (b * T + t) * H + h;            // (b, t, h)
        const long long k_prev = (b * T + t - 1) * H + h;   // (b, t-1, h) for t > 0
        const F m = M[k], u = U[k], s_t = s[k];
        const F m_prev = t > 0 ? M[k_prev] : m0[row];
        const F u_prev = t > 0 ? U[k_prev] : u0[row];
        // one pass over this lane's values: through o_t = w_t / u_t (dw += do/u, Σ do ⊙ o),
        // then the sums of dα and dβ with the updated dw
        F do_o = F(0), dalpha_w = F(0), dbeta_v = F(0);
        for (long long j = lane; j < V; j += 32) {
            F dw_j = dw[j];
            if (has_do) {
                const F g = d_o[k * V + j];
                do_o += g * (W[k * V + j] / u);
                dw_j = dw_j + g / u;
            }
            const F w_prev = t > 0 ? W[k_prev * V + j] : w0[row * V + j];
            dalpha_w += dw_j * w_prev;
            dbeta_v += dw_j * v[k * V + j];
            dw[j] = dw_j;
        }
        do_o = warp_sum(do_o);
        dalpha_w = warp_sum(dalpha_w);
        dbeta_v = warp_sum(dbeta_v);
        if (has_do) du = du - do_o / u;
        // through u_t = α u_{t-1} + β and w_t = α w_{t-1} + β v_t
        const F alpha = rescale(m_prev, m), beta = rescale(s_t, m);
        const F dalpha = du * u_prev + dalpha_w;
        const F dbeta = du + dbeta_v;
        for (long long j = lane; j < V; j += 32) {
            dv[k * V + j] = beta * dw[j];
            dw[j] = alpha * dw[j];
        }
        du = alpha * du;
        // through α = e^{m_{t-1} - m_t}, β = e^{s_t - m_t} and m_t = max(m_{t-1}, s_t)
        F ds_t = beta * dbeta;
        F dm_prev = alpha * dalpha;
        const F dm_bar = dm - alpha * dalpha - beta * dbeta;
        if (m_prev >= s_t) {  // ties go to the earlier argument
            dm_prev = dm_prev + dm_bar;
        } else {
            ds_t = ds_t + dm_bar;
        }
        if (lane == 0) ds[k] = ds_t;
        dm = dm_prev;
    }
    if (lane == 0) {
        dm0[row] = dm;
        du0[row] = du;
    }
    for (long long j = lane; j < V; j += 32) dw0[row * V + j] = dw[j];
}
