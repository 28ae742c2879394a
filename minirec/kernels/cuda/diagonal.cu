// diagonal.cu: the diagonal recurrent cells as fused gate + scan (+ read-out) kernels.
//
//   minGRU   h_t = σ(−s_t) h_{t−1} + σ(s_t) h̃_t               s = k (the gate logit)
//   minLSTM  the same with s_t = softplus_(−k_f) − softplus_(−k_i)  (the normalised gates)
//   HGRN     h_t = e^{g_t} h_{t−1} + x_t
//   (negative eigenvalues: a ↦ 2a − 1, i.e. σ(−s) − σ(s) and 2e^g − 1)
//   LRU      h_t = λ h_{t−1} + γ (B x_t)                        complex h, λ; real γ
//   S4D      h_t = Ā h_{t−1} + B̄ x_t,  y_t = 2 Re(Σ_n C h_t) + D x_t   per channel d
//
// Tested against the NumPy definitions (minirec/cells/mingru.py, minlstm.py, lru.py, ssm.py,
// minirec/ops/hgrn.py) by tests/kernels/test_cuda_diagonal.py and tests/test_contract.py:
// on the CPU through the emulator, on a GPU through CuPy (pytest -m gpu). Launched by
// minirec/kernels/cuda/diagonal.py (the per-cell wrappers mingru.py, minlstm.py, hgrn.py,
// lru.py, ssm.py next to it).
//
// What is fused: the gates are computed from the pre-activations inside the scan (no a, b
// arrays in memory), the S4D input B̄ x_t and read-out 2 Re(Σ_n C h_t) + D x_t too; the
// backward is one reverse pass that recomputes the gates, forms the gradients of the
// pre-activations and, for LRU/S4D, sums the parameter gradients over time per lane. The
// input projections (x W^T, x B^T) and the LRU read-out h C^T are GEMMs outside (cuBLAS).
//
// Layout: a lane is (i, r), one scan of length T: the arrays of the scan are (B, T, R)
// C-contiguous, index k = (i*T + t)*R + r (R = H for minGRU/minLSTM/HGRN, N for LRU,
// D*N for S4D with r = d*N + n); states (B, R). F is float or double, S = F or cplx<F>.
//
// Time is cut into `n` chunks of L steps (one chunk of T steps for method="recurrent"); a
// thread runs one (lane, chunk): grid (ceil(B*R / threads), n), adjacent threads take
// adjacent r (coalesced). method="chunked" is reduce-then-scan over the chunks, three
// launches per direction: (1) *_chunk_totals: every (lane, chunk) composes its steps into one
// affine map; (2) diagonal_chunk_carries: one thread per lane scans the chunk maps into the
// value entering each chunk (its "carry"); (3) the apply kernel (*_forward, *_backward) runs
// every chunk from its carry and writes the outputs. For "recurrent" only (3) runs, with the
// initial state (forward) or dstate (backward) as the one carry.
//
// Backward (g_t = ∂L/∂h_t in total; conj only for complex S):
//   g_t = dh_t + conj(a_{t+1}) g_{t+1},  g_{T−1} = dh_{T−1} + dstate,  dh0 = conj(a_0) g_0
// so the reverse scan's element at step t is (conj(a_{t+1}), dh_t), with a_T read as 1.
#include "common.h"

// ======================================================================================
// real and complex helpers (the activations exp_, sigmoid_, softplus_ are common.h's)
// ======================================================================================

// a real times a complex number, and the real part of a conj(b)
template <class F>
__device__ __forceinline__ cplx<F> scale(F s, cplx<F> z) { return {s * z.re, s * z.im}; }
template <class F>
__device__ __forceinline__ F re_mul_conj(cplx<F> a, cplx<F> b) { return a.re * b.re + a.im * b.im; }

// ======================================================================================
// chunks: the steps of chunk blockIdx.y (length L; the last chunk may be shorter)
// ======================================================================================

struct Chunk {
    long long begin, end;
};
__device__ __forceinline__ Chunk this_chunk(long long T, long long L) {
    const long long begin = (long long)blockIdx.y * L;
    return {begin, begin + L < T ? begin + L : T};
}

template <class S>
struct Affine {  // x -> a x + b
    S a, b;
};

// kernel 2 of "chunked": carry[c] = the value entering chunk c (in the direction of the scan)
// from init (h0 forward, dstate backward); totals, carry (B, chunks, R). One thread per lane.
template <class S, bool REVERSE>
__global__ void diagonal_chunk_carries(const S* __restrict__ totals_a,
                                       const S* __restrict__ totals_b,
                                       const S* __restrict__ init, S* __restrict__ carry,
                                       long long B, long long R, long long chunks) {
    const long long lane = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= B * R) return;
    const long long i = lane / R, r = lane % R;
    S state = init[lane];
    for (long long u = 0; u < chunks; ++u) {
        const long long c = REVERSE ? chunks - 1 - u : u;
        const long long k = (i * chunks + c) * R + r;
        carry[k] = state;
        state = fma_(totals_a[k], state, totals_b[k]);
    }
}

// kernel 1 of "chunked", for any cell: the chunk's steps composed into one map. A cell
// provides forward(i, r, t) (the step's (a_t, b_t)), coefficient(i, r, t) (a_t) and
// upstream(i, r, t) (dh_t). Forward: h_end = A h_begin + B. Reverse: g_begin = A g_end + B
// with the elements (conj(a_{t+1}), dh_t) from the chunk's last step down to its first.
template <class Cell, bool REVERSE, class S>
__device__ __forceinline__ void chunk_total(const Cell& cell, S* __restrict__ totals_a,
                                            S* __restrict__ totals_b, long long B, long long T,
                                            long long R, long long L) {
    const long long lane = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= B * R) return;
    const long long i = lane / R, r = lane % R;
    const Chunk ch = this_chunk(T, L);
    Affine<S> acc = {num<S>::one(), num<S>::zero()};
    if (!REVERSE) {
        for (long long t = ch.begin; t < ch.end; ++t) {
            const Affine<S> e = cell.forward(i, r, t);
            acc = {mul(e.a, acc.a), fma_(e.a, acc.b, e.b)};
        }
    } else {
        S m = ch.end < T ? conj_(cell.coefficient(i, r, ch.end)) : num<S>::one();
        for (long long t = ch.end - 1; t >= ch.begin; --t) {
            acc = {mul(m, acc.a), fma_(m, acc.b, cell.upstream(i, r, t))};
            m = conj_(cell.coefficient(i, r, t));
        }
    }
    const long long k = (i * gridDim.y + blockIdx.y) * R + r;
    totals_a[k] = acc.a;
    totals_b[k] = acc.b;
}

// ======================================================================================
// minGRU, minLSTM, HGRN: real gates from pre-activations p (, q) and values v
// ======================================================================================

enum class Gate : int { mingru = 0, minlstm = 1, hgrn = 2 };

// One step's gates. minGRU/minLSTM: w = σ(s) (write gate), keep = σ(−s) (= 1 − w, exact near
// 0), a = keep (keep − w with negative eigenvalues), b = w v. HGRN: w = e^g, a = w (2w − 1),
// b = v (keep unused).
template <class F>
struct GateStep {
    F a, b, w, keep;
};

template <class F, Gate G>
struct Gated {
    const F* __restrict__ p;   // minGRU: s = k; minLSTM: k_f; HGRN: g          (B, T, R)
    const F* __restrict__ q;   // minLSTM: k_i (unused otherwise)               (B, T, R)
    const F* __restrict__ v;   // minGRU/minLSTM: h̃; HGRN: x                  (B, T, R)
    const F* __restrict__ dh;  // the upstream gradient (reverse scans only)   (B, T, R)
    int negative;              // negative eigenvalues: a ↦ 2a − 1
    long long T, R;

    __device__ __forceinline__ GateStep<F> step(long long k) const {
        if constexpr (G == Gate::hgrn) {
            const F e = exp_(p[k]);
            return {negative ? F(2) * e - F(1) : e, v[k], e, F(0)};
        } else {
            const F s = G == Gate::minlstm ? softplus_(-p[k]) - softplus_(-q[k]) : p[k];
            const F w = sigmoid_(s), keep = sigmoid_(-s);
            return {negative ? keep - w : keep, w * v[k], w, keep};
        }
    }
    __device__ __forceinline__ Affine<F> forward(long long i, long long r, long long t) const {
        const GateStep<F> s = step((i * T + t) * R + r);
        return {s.a, s.b};
    }
    __device__ __forceinline__ F coefficient(long long i, long long r, long long t) const {
        return step((i * T + t) * R + r).a;
    }
    __device__ __forceinline__ F upstream(long long i, long long r, long long t) const {
        return dh[(i * T + t) * R + r];
    }
};

template <class F, Gate G, bool REVERSE>
__global__ void gated_chunk_totals(const F* __restrict__ p, const F* __restrict__ q,
                                   const F* __restrict__ v, const F* __restrict__ dh,
                                   F* __restrict__ totals_a, F* __restrict__ totals_b,
                                   int negative, long long B, long long T, long long R,
                                   long long L) {
    chunk_total<Gated<F, G>, REVERSE>(Gated<F, G>{p, q, v, dh, negative, T, R}, totals_a,
                                      totals_b, B, T, R, L);
}

// forward: h (B, T, R) from carry (B, chunks, R) (h0 for one chunk)
template <class F, Gate G>
__global__ void gated_forward(const F* __restrict__ p, const F* __restrict__ q,
                              const F* __restrict__ v, const F* __restrict__ carry,
                              F* __restrict__ h, int negative, long long B, long long T,
                              long long R, long long L) {
    const long long lane = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= B * R) return;  // the ceil-div grid's last block has idle threads
    const long long i = lane / R, r = lane % R;
    const Gated<F, G> cell{p, q, v, v, negative, T, R};
    const Chunk ch = this_chunk(T, L);
    F state = carry[(i * gridDim.y + blockIdx.y) * R + r];
    for (long long t = ch.begin; t < ch.end; ++t) {
        const long long k = (i * T + t) * R + r;
        const GateStep<F> s = cell.step(k);
        state = fma_(s.a, state, s.b);  // h_t = a_t h_{t-1} + b_t
        h[k] = state;
    }
}

// backward: the reverse pass from carry (the g entering each chunk from the later steps;
// dstate for the last), recomputing the gates:
//   minGRU/minLSTM (c = 2 with negative eigenvalues, else 1):
//     dw = g h̃ − c g h_{t−1},  ds = dw w keep,  dh̃ = g w
//     minGRU dk = ds;  minLSTM dk_f = −ds σ(−k_f), dk_i = ds σ(−k_i)
//   HGRN: dx = g,  dg = g h_{t−1} e^g  (g h_{t−1} 2e^g with negative eigenvalues)
// dp, dq (minLSTM), dv (B, T, R); dh0 (B, R) written by chunk 0.
template <class F, Gate G>
__global__ void gated_backward(const F* __restrict__ p, const F* __restrict__ q,
                               const F* __restrict__ v, const F* __restrict__ h,
                               const F* __restrict__ h0, const F* __restrict__ dh,
                               const F* __restrict__ carry, F* __restrict__ dp,
                               F* __restrict__ dq, F* __restrict__ dv, F* __restrict__ dh0,
                               int negative, long long B, long long T, long long R, long long L) {
    const long long lane = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= B * R) return;
    const long long i = lane / R, r = lane % R;
    const Gated<F, G> cell{p, q, v, dh, negative, T, R};
    const Chunk ch = this_chunk(T, L);
    F g = carry[(i * gridDim.y + blockIdx.y) * R + r];
    F m = ch.end < T ? cell.coefficient(i, r, ch.end) : F(1);  // a_{t+1}, a_T read as 1
    for (long long t = ch.end - 1; t >= ch.begin; --t) {
        const long long k = (i * T + t) * R + r;
        g = fma_(m, g, dh[k]);  // g_t = dh_t + a_{t+1} g_{t+1}
        const GateStep<F> s = cell.step(k);
        const F h_prev = t > 0 ? h[k - R] : h0[lane];
        const F da = g * h_prev;
        if constexpr (G == Gate::hgrn) {
            dv[k] = g;
            dp[k] = da * (negative ? F(2) * s.w : s.w);
        } else {
            const F dw = g * v[k] - (negative ? F(2) * da : da);
            const F ds = dw * s.w * s.keep;
            dv[k] = g * s.w;
            if constexpr (G == Gate::minlstm) {
                dp[k] = -ds * sigmoid_(-p[k]);
                dq[k] = ds * sigmoid_(-q[k]);
            } else {
                dp[k] = ds;
            }
        }
        m = s.a;
    }
    if (ch.begin == 0) dh0[lane] = m * g;  // dh0 = a_0 g_0
}

// ======================================================================================
// LRU: h_t = λ h_{t−1} + γ Bx_t per lane (i, n); λ (N) complex, γ (N) real, Bx (B, T, N)
// ======================================================================================

template <class F>
struct Lru {
    const cplx<F>* __restrict__ lam;
    const F* __restrict__ gamma;
    const cplx<F>* __restrict__ Bx;
    const cplx<F>* __restrict__ dh;
    long long T, R;

    __device__ __forceinline__ Affine<cplx<F>> forward(long long i, long long r, long long t) const {
        return {lam[r], scale(gamma[r], Bx[(i * T + t) * R + r])};
    }
    __device__ __forceinline__ cplx<F> coefficient(long long, long long r, long long) const {
        return lam[r];
    }
    __device__ __forceinline__ cplx<F> upstream(long long i, long long r, long long t) const {
        return dh[(i * T + t) * R + r];
    }
};

template <class F, bool REVERSE>
__global__ void lru_chunk_totals(const cplx<F>* __restrict__ lam, const F* __restrict__ gamma,
                                 const cplx<F>* __restrict__ Bx, const cplx<F>* __restrict__ dh,
                                 cplx<F>* __restrict__ totals_a, cplx<F>* __restrict__ totals_b,
                                 long long B, long long T, long long R, long long L) {
    chunk_total<Lru<F>, REVERSE>(Lru<F>{lam, gamma, Bx, dh, T, R}, totals_a, totals_b, B, T, R, L);
}

template <class F>
__global__ void lru_forward(const cplx<F>* __restrict__ lam, const F* __restrict__ gamma,
                            const cplx<F>* __restrict__ Bx, const cplx<F>* __restrict__ carry,
                            cplx<F>* __restrict__ h, long long B, long long T, long long R,
                            long long L) {
    const long long lane = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= B * R) return;
    const long long i = lane / R, r = lane % R;
    const Chunk ch = this_chunk(T, L);
    const cplx<F> a = lam[r];
    const F gam = gamma[r];
    cplx<F> state = carry[(i * gridDim.y + blockIdx.y) * R + r];
    for (long long t = ch.begin; t < ch.end; ++t) {
        const long long k = (i * T + t) * R + r;
        state = fma_(a, state, scale(gam, Bx[k]));  // h_t = λ h_{t-1} + γ Bx_t
        h[k] = state;
    }
}

// backward: g_t from dh = dy conj(C) (a GEMM outside); writes gg = γ g (B, T, N) (for the
// GEMMs dB = gg^T x and dx = Re(gg conj(B))), dh0, and per (lane, chunk) the sums over the
// chunk's steps dlam = Σ_t g_t conj(h_{t−1}) and dgamma = Σ_t Re(g_t conj(Bx_t)), (B, chunks, N)
template <class F>
__global__ void lru_backward(const cplx<F>* __restrict__ lam, const F* __restrict__ gamma,
                             const cplx<F>* __restrict__ Bx, const cplx<F>* __restrict__ h,
                             const cplx<F>* __restrict__ h0, const cplx<F>* __restrict__ dh,
                             const cplx<F>* __restrict__ carry, cplx<F>* __restrict__ gg,
                             cplx<F>* __restrict__ dlam, F* __restrict__ dgamma,
                             cplx<F>* __restrict__ dh0, long long B, long long T, long long R,
                             long long L) {
    const long long lane = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= B * R) return;
    const long long i = lane / R, r = lane % R;
    const Chunk ch = this_chunk(T, L);
    const cplx<F> a_conj = conj_(lam[r]);
    const F gam = gamma[r];
    const long long part = (i * gridDim.y + blockIdx.y) * R + r;
    cplx<F> g = carry[part];
    cplx<F> sum_lam = num<cplx<F>>::zero();
    F sum_gamma = F(0);
    for (long long t = ch.end - 1; t >= ch.begin; --t) {
        const long long k = (i * T + t) * R + r;
        g = fma_(t + 1 < T ? a_conj : num<cplx<F>>::one(), g, dh[k]);
        const cplx<F> h_prev = t > 0 ? h[k - R] : h0[lane];
        sum_lam = fma_(g, conj_(h_prev), sum_lam);
        sum_gamma += re_mul_conj(g, Bx[k]);
        gg[k] = scale(gam, g);
    }
    dlam[part] = sum_lam;
    dgamma[part] = sum_gamma;
    if (ch.begin == 0) dh0[lane] = mul(a_conj, g);
}

// ======================================================================================
// S4D: per channel d, N complex modes; lane (i, r), r = d*N + n. Ā, B̄, C (D, N) complex,
// D (D,) real, x, y, dy (B, T, D) real. The read-out sums over n inside the kernel.
// ======================================================================================

template <class F>
struct Ssm {
    const cplx<F>* __restrict__ Abar;
    const cplx<F>* __restrict__ Bbar;
    const cplx<F>* __restrict__ C;
    const F* __restrict__ x;
    const F* __restrict__ dy;
    long long T, D, N;

    __device__ __forceinline__ Affine<cplx<F>> forward(long long i, long long r, long long t) const {
        return {Abar[r], scale(x[(i * T + t) * D + r / N], Bbar[r])};
    }
    __device__ __forceinline__ cplx<F> coefficient(long long, long long r, long long) const {
        return Abar[r];
    }
    // dh_t = 2 dy_t conj(C) (through y = 2 Re(Σ_n C h) + D x)
    __device__ __forceinline__ cplx<F> upstream(long long i, long long r, long long t) const {
        return scale(F(2) * dy[(i * T + t) * D + r / N], conj_(C[r]));
    }
};

template <class F, bool REVERSE>
__global__ void ssm_chunk_totals(const cplx<F>* __restrict__ Abar, const cplx<F>* __restrict__ Bbar,
                                 const cplx<F>* __restrict__ C, const F* __restrict__ x,
                                 const F* __restrict__ dy, cplx<F>* __restrict__ totals_a,
                                 cplx<F>* __restrict__ totals_b, long long B, long long T,
                                 long long D, long long N, long long L) {
    chunk_total<Ssm<F>, REVERSE>(Ssm<F>{Abar, Bbar, C, x, dy, T, D, N}, totals_a, totals_b, B, T,
                                 D * N, L);
}

// The threads of one channel (i, d): a group of P consecutive threads (P = N rounded up to a
// power of two when N <= 32, so that a group sits inside one warp; else to whole warps, and
// the block is one group), thread n of the group owns mode n (n >= N: idle, adds 0).
struct Group {
    long long i, d, n, r;
    bool active;
};
__device__ __forceinline__ Group this_group(long long B, long long D, long long N, long long P) {
    const long long thread = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long channel = thread / P, n = thread % P;
    const bool active = channel < B * D && n < N;
    return {channel / D, channel % D, n, (channel % D) * N + n, active};
}

// Σ of v over the P threads of this thread's group; the result is valid in the group's
// thread n = 0. Every thread of the block must call it (shuffles and __syncthreads):
// a butterfly of xor-shuffles inside each warp (lanes of different groups never mix: P
// divides 32, or P is whole warps), then, for P > 32, the warps' sums through shared memory.
// `partial` holds 2 x 32 values: step t uses half t % 2, so one __syncthreads per step
// suffices (the half written at step t+2 was read before the barrier of step t+1).
template <class F>
__device__ __forceinline__ F group_sum(F v, long long P, F* partial, long long t) {
    for (int d = (P < 32 ? (int)P : 32) / 2; d > 0; d /= 2) v += __shfl_xor_sync(0xffffffffu, v, d);
    if (P <= 32) return v;
    F* half = partial + 32 * (t & 1);
    if (threadIdx.x % 32 == 0) half[threadIdx.x / 32] = v;
    __syncthreads();
    F total = F(0);
    if (threadIdx.x == 0)
        for (unsigned w = 0; w < blockDim.x / 32; ++w) total += half[w];
    return total;
}

// forward: h (B, T, D, N) (kept for the backward) and y = 2 Re(Σ_n C h_t) + D x_t (B, T, D)
template <class F>
__global__ void ssm_forward(const cplx<F>* __restrict__ Abar, const cplx<F>* __restrict__ Bbar,
                            const cplx<F>* __restrict__ C, const F* __restrict__ Dskip,
                            const F* __restrict__ x, const cplx<F>* __restrict__ carry,
                            cplx<F>* __restrict__ h, F* __restrict__ y, long long B, long long T,
                            long long D, long long N, long long P, long long L) {
    __shared__ F partial[64];
    const Group gr = this_group(B, D, N, P);
    const long long R = D * N;
    const Chunk ch = this_chunk(T, L);
    const cplx<F> zero = num<cplx<F>>::zero();
    const cplx<F> a = gr.active ? Abar[gr.r] : zero, b = gr.active ? Bbar[gr.r] : zero;
    const cplx<F> c = gr.active ? C[gr.r] : zero;
    cplx<F> state = gr.active ? carry[(gr.i * gridDim.y + blockIdx.y) * R + gr.r] : zero;
    for (long long t = ch.begin; t < ch.end; ++t) {  // every thread runs every step
        const long long kx = (gr.i * T + t) * D + gr.d, k = (gr.i * T + t) * R + gr.r;
        const F xt = gr.active ? x[kx] : F(0);
        state = fma_(a, state, scale(xt, b));  // h_t = Ā h_{t-1} + B̄ x_t
        if (gr.active) h[k] = state;
        const F total = group_sum(gr.active ? c.re * state.re - c.im * state.im : F(0), P,
                                  partial, t);  // Σ_n Re(C h_t)
        if (gr.active && gr.n == 0) y[kx] = F(2) * total + Dskip[gr.d] * xt;
    }
}

// backward: g_t = 2 dy_t conj(C) + conj(Ā) g_{t+1} from carry; writes dx_t = Re(Σ_n g_t
// conj(B̄)) + D dy_t (B, T, D), dh0 (B, D, N), and per (lane, chunk) the sums over its steps
// dAbar = Σ g_t conj(h_{t−1}), dBbar = Σ g_t x_t, dC = 2 Σ dy_t conj(h_t), (B, chunks, D, N)
template <class F>
__global__ void ssm_backward(const cplx<F>* __restrict__ Abar, const cplx<F>* __restrict__ Bbar,
                             const cplx<F>* __restrict__ C, const F* __restrict__ Dskip,
                             const F* __restrict__ x, const cplx<F>* __restrict__ h,
                             const cplx<F>* __restrict__ h0, const F* __restrict__ dy,
                             const cplx<F>* __restrict__ carry, F* __restrict__ dx,
                             cplx<F>* __restrict__ dAbar, cplx<F>* __restrict__ dBbar,
                             cplx<F>* __restrict__ dC, cplx<F>* __restrict__ dh0, long long B,
                             long long T, long long D, long long N, long long P, long long L) {
    __shared__ F partial[64];
    const Group gr = this_group(B, D, N, P);
    const long long R = D * N;
    const Chunk ch = this_chunk(T, L);
    const cplx<F> zero = num<cplx<F>>::zero();
    const cplx<F> a_conj = gr.active ? conj_(Abar[gr.r]) : zero;
    const cplx<F> b = gr.active ? Bbar[gr.r] : zero, c = gr.active ? C[gr.r] : zero;
    const long long part = (gr.i * gridDim.y + blockIdx.y) * R + gr.r;
    cplx<F> g = gr.active ? carry[part] : zero;
    cplx<F> sum_a = zero, sum_b = zero, sum_c = zero;
    for (long long t = ch.end - 1; t >= ch.begin; --t) {  // every thread runs every step
        const long long kx = (gr.i * T + t) * D + gr.d, k = (gr.i * T + t) * R + gr.r;
        const F dyt = gr.active ? dy[kx] : F(0), xt = gr.active ? x[kx] : F(0);
        const cplx<F> dh = scale(F(2) * dyt, conj_(c));
        g = fma_(t + 1 < T ? a_conj : num<cplx<F>>::one(), g, dh);
        if (gr.active) {
            const cplx<F> h_prev = t > 0 ? h[k - R] : h0[gr.i * R + gr.r];
            sum_a = fma_(g, conj_(h_prev), sum_a);
            sum_b = add(sum_b, scale(xt, g));
            sum_c = add(sum_c, scale(dyt, conj_(h[k])));
        }
        const F total = group_sum(gr.active ? re_mul_conj(g, b) : F(0), P, partial, t);
        if (gr.active && gr.n == 0) dx[kx] = total + Dskip[gr.d] * dyt;
    }
    if (!gr.active) return;
    dAbar[part] = sum_a;
    dBbar[part] = sum_b;
    dC[part] = scale(F(2), sum_c);
    if (ch.begin == 0) dh0[gr.i * R + gr.r] = mul(a_conj, g);
}
