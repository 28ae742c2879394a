// slstm.cu: the sLSTM cell of xLSTM (exponential input gate, normaliser n, stabiliser m,
// block-diagonal recurrent matrices per head), the whole time loop in one kernel per direction.
//
// Tested against minirec.cells.slstm.forward/backward (backend="numpy") by
// tests/kernels/test_cuda_slstm.py and tests/test_contract.py: on the CPU through the emulator,
// on a GPU through CuPy (pytest -m gpu). Launched by minirec/kernels/cuda/slstm.py.
//
// Step (module docstring of minirec/cells/slstm.py; a = x W_ih^T + b + blockdiag(R) h_{t-1}):
//   lfm = m_{t-1} + log σ(a_f);  m_t = a_i if n_{t-1} = 0 else max(a_i, lfm)
//   i = exp(min(a_i − m_t, 0)),  f = exp(min(lfm − m_t, 0)),  z = tanh(a_z),  o = σ(a_o)
//   c_t = f c_{t-1} + i z,  n_t = f n_{t-1} + i,  h_t = o c_t / n_t
//
// Layout (C-contiguous, F float or double): a, da (B, T, 4H), gate g of hidden unit u at
// (b·T + t)·4H + g·H + u; hs, cs, ns, ms, dy (B, T, H); h0, c0, n0, m0 and the state
// gradients (B, H). H = NH·dh, unit u = head·dh + j.
//
// Heads are independent recurrences (R is block-diagonal), so the time loop needs no grid-wide
// synchronisation: ONE block per (batch row, head), blockIdx.x = b·NH + head, runs all T steps
// (a persistent loop, as FlashRNN does). Threads over the head's dh units (whole warps; thread
// j owns units j, j + blockDim.x, ..., the same ones in every loop of a kernel, so what a
// thread writes for its own units it reads back without a barrier). The head's four (dh, dh)
// blocks of R live in dynamic shared memory when they fit (R_shared = 1, 4·dh² values, read
// once per sequence); otherwise they are read from global memory (L1/L2) every step.
//   forward   RT (NH, 4, dh_k, dh_j) = R[g, head, j, k] transposed: thread j reads
//             RT[head, g, k, j] (adjacent threads, adjacent addresses). h_{t-1} of the head
//             in shared memory, double-buffered (2 dh): one __syncthreads per step.
//             On entry a holds x W_ih^T + b; the kernel adds the recurrent part in place (the
//             backward's pre-activations).
//   backward  Rb (NH, 4, dh_j, dh_k) = R[g, head, j, k]: thread k reads Rb[head, g, j, k].
//             Per step t = T-1 … 0: the pointwise backward of each unit → da_t (global, and
//             the head's 4·dh values in shared memory, double-buffered: one __syncthreads per
//             step), then ∂L/∂h_{t-1}[k] = Σ_{g,j} Rb[head, g, j, k] da_t[g, j].
//             dh0, dc0, dn0, dm0 hold dstate on entry and are the running ∂L/∂(h, c, n, m)
//             of each unit (thread-own entries), the gradient of the initial state on exit.
// The weight gradients (dW_ih, dR, db) and dx are GEMMs over all T, outside (slstm.py).
// Sums run in order with explicit fma_ (compiled with --fmad=false and -ffp-contract=off), so
// the GPU and the emulator round alike. NaN propagates as in the definition: max is NaN when
// either side is (np.maximum), min(u, 0) keeps a NaN u, and the backward's branch and clamp
// tests are the definition's comparisons, used as selections.
#include "common.h"

// max(p, q), NaN if either is NaN (np.maximum, torch.maximum)
template <class F>
__device__ __forceinline__ F nan_max(F p, F q) {
    return (p != p || p >= q) ? p : q;
}

// min(u, 0), NaN for a NaN u (np.minimum(u, 0)); exp of it is min(exp(u), 1) without overflow
template <class F>
__device__ __forceinline__ F min0(F u) {
    return u > F(0) ? F(0) : u;
}

template <class F>
__global__ void slstm_forward(F* __restrict__ a, const F* __restrict__ RT,
                              const F* __restrict__ h0, const F* __restrict__ c0,
                              const F* __restrict__ n0, const F* __restrict__ m0,
                              F* __restrict__ hs, F* __restrict__ cs, F* __restrict__ ns,
                              F* __restrict__ ms, long long T, long long NH, long long dh,
                              long long R_shared) {
    MINIREC_DYNAMIC_SHARED(F, smem);  // [R of the head (4 dh², if R_shared) | 2 dh: h_{t-1}, h_t]
    const long long b = blockIdx.x / NH, head = blockIdx.x % NH, H = NH * dh;
    const long long RR = 4 * dh * dh;
    const F* Rg = RT + head * RR;
    F* hbuf = smem + (R_shared ? RR : 0);
    if (R_shared) {
        for (long long q = threadIdx.x; q < RR; q += blockDim.x) smem[q] = Rg[q];
    }
    const F* Rm = R_shared ? smem : Rg;
    for (long long j = threadIdx.x; j < dh; j += blockDim.x) hbuf[j] = h0[b * H + head * dh + j];
    __syncthreads();  // R and h0 are in
    for (long long t = 0; t < T; ++t) {
        const F* prev = hbuf + (t % 2) * dh;
        F* next = hbuf + ((t + 1) % 2) * dh;
        for (long long j = threadIdx.x; j < dh; j += blockDim.x) {
            const long long u = head * dh + j, k_s = (b * T + t) * H + u;
            const long long k_a = (b * T + t) * 4 * H + u;  // gate g at k_a + g·H
            F acc[4];
            for (int g = 0; g < 4; ++g) {  // a_g = (x W_ih^T + b)_g + Σ_k R[g, head, j, k] h_{t-1}[k]
                F r = F(0);
                for (long long k = 0; k < dh; ++k) r = fma_(Rm[(g * dh + k) * dh + j], prev[k], r);
                acc[g] = a[k_a + g * H] + r;
                a[k_a + g * H] = acc[g];
            }
            const F c_prev = t == 0 ? c0[b * H + u] : cs[k_s - H];
            const F n_prev = t == 0 ? n0[b * H + u] : ns[k_s - H];
            const F m_prev = t == 0 ? m0[b * H + u] : ms[k_s - H];
            const F a_i = acc[0], a_f = acc[1];
            const F lfm = m_prev - softplus_(-a_f);  // m_{t-1} + log σ(a_f)
            const F m = n_prev == F(0) ? a_i : nan_max(a_i, lfm);
            const F i = exp_(min0(a_i - m));
            const F f = exp_(min0(lfm - m));
            const F z = tanh_(acc[2]);
            const F o = sigmoid_(acc[3]);
            const F c = fma_(f, c_prev, i * z);
            const F n = fma_(f, n_prev, i);
            const F h = o * c / n;
            cs[k_s] = c;
            ns[k_s] = n;
            ms[k_s] = m;
            hs[k_s] = h;
            next[j] = h;
        }
        __syncthreads();  // h_t complete before step t + 1 reads it
    }
}

template <class F>
__global__ void slstm_backward(const F* __restrict__ a, const F* __restrict__ Rb,
                               const F* __restrict__ c0, const F* __restrict__ n0,
                               const F* __restrict__ m0, const F* __restrict__ hs,
                               const F* __restrict__ cs, const F* __restrict__ ns,
                               const F* __restrict__ ms, const F* __restrict__ dy,
                               F* __restrict__ da, F* __restrict__ dh0, F* __restrict__ dc0,
                               F* __restrict__ dn0, F* __restrict__ dm0, long long T,
                               long long NH, long long dh, long long R_shared) {
    MINIREC_DYNAMIC_SHARED(F, smem);  // [R of the head (4 dh², if R_shared) | 2 × 4 dh: da_t]
    const long long b = blockIdx.x / NH, head = blockIdx.x % NH, H = NH * dh;
    const long long RR = 4 * dh * dh;
    const F* Rg = Rb + head * RR;
    F* dabuf = smem + (R_shared ? RR : 0);
    if (R_shared) {
        for (long long q = threadIdx.x; q < RR; q += blockDim.x) smem[q] = Rg[q];
        __syncthreads();  // R is in
    }
    const F* Rm = R_shared ? smem : Rg;
    for (long long t = T - 1; t >= 0; --t) {
        F* buf = dabuf + (t % 2) * 4 * dh;
        for (long long j = threadIdx.x; j < dh; j += blockDim.x) {
            const long long u = head * dh + j, lane = b * H + u, k_s = (b * T + t) * H + u;
            const long long k_a = (b * T + t) * 4 * H + u;
            const F c_prev = t == 0 ? c0[lane] : cs[k_s - H];
            const F n_prev = t == 0 ? n0[lane] : ns[k_s - H];
            const F m_prev = t == 0 ? m0[lane] : ms[k_s - H];
            const F a_i = a[k_a], a_f = a[k_a + H];
            const F c = cs[k_s], n = ns[k_s], m = ms[k_s], h = hs[k_s];
            // the forward's gates again, from the cached pre-activations and states
            const F lfm = m_prev - softplus_(-a_f);
            const bool take_i = n_prev == F(0) || a_i >= lfm;  // where m's gradient goes
            const F u_i = a_i - m, u_f = lfm - m;
            const F i = exp_(min0(u_i));
            const F f = exp_(min0(u_f));
            const F z = tanh_(a[k_a + 2 * H]);
            const F o = sigmoid_(a[k_a + 3 * H]);
            const F dh_t = dh0[lane] + dy[k_s];
            // through h = o c / n
            const F dc_t = dc0[lane] + dh_t * o / n;
            const F dn_t = dn0[lane] - dh_t * h / n;
            const F da_o = dh_t * c / n * (o * (F(1) - o));
            // through c = f c_{t-1} + i z and n = f n_{t-1} + i
            const F di = dc_t * z + dn_t;
            const F df = dc_t * c_prev + dn_t * n_prev;
            const F da_z = dc_t * i * (F(1) - z * z);
            dc0[lane] = dc_t * f;
            dn0[lane] = dn_t * f;
            // through the clamped exponentials, then m = a_i (take_i) or lfm
            const F du_i = u_i > F(0) ? F(0) : di * i;
            const F du_f = u_f > F(0) ? F(0) : df * f;
            const F dm_t = dm0[lane] - du_i - du_f;
            const F da_i = take_i ? du_i + dm_t : du_i;
            const F dlfm = take_i ? du_f : du_f + dm_t;
            dm0[lane] = dlfm;                                 // through lfm = m_{t-1} + log σ(a_f)
            const F da_f = dlfm * sigmoid_(-a_f);
            const F d4[4] = {da_i, da_f, da_z, da_o};
            for (int g = 0; g < 4; ++g) {
                da[k_a + g * H] = d4[g];
                buf[g * dh + j] = d4[g];
            }
        }
        __syncthreads();  // the head's da_t is in (the other buffer is the next step's)
        for (long long k = threadIdx.x; k < dh; k += blockDim.x) {
            F acc = F(0);  // ∂L/∂h_{t-1}[k] = Σ_{g,j} R[g, head, j, k] da_t[g, j]
            for (long long q = 0; q < 4 * dh; ++q) acc = fma_(Rm[q * dh + k], buf[q], acc);
            dh0[b * H + head * dh + k] = acc;
        }
    }
}
