// multihead.cu: the multi-head Elman RNN, GRU and LSTM (FlashRNN's heads: a block-diagonal
// recurrent matrix, one (G·dh, dh) block per head), the whole time loop in one kernel per
// direction.
//
// Tested against minirec.cells.rnn/gru/lstm.forward/backward with W_hh (NH, G·dh, dh)
// (backend="numpy") by tests/kernels/test_cuda_multihead.py and tests/test_contract.py: on the
// CPU through the emulator, on a GPU through CuPy (pytest -m gpu). Launched by
// minirec/kernels/cuda/multihead.py.
//
// Step (the full cells' equations with W = blockdiag(W_hh[0], …, W_hh[NH-1])):
//   RNN   a = gi + W h_{t-1},  h_t = φ(a)                        (gi = x W_ih^T + b_ih + b_hh)
//   GRU   gh = W h_{t-1} + b_hh;  r, z = σ(gi + gh);  n = tanh(gi_n + r gh_n);
//         h_t = (1 − z) n + z h_{t-1}                            (gi = x W_ih^T + b_ih)
//   LSTM  a = gi + W h_{t-1};  i, f, o = σ, g = tanh;  c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)
// with (W h)[g·H + head·dh + j] = Σ_k W_hh[head, g·dh + j, k] h[head·dh + k].
//
// Layout (C-contiguous, F float or double): gi, gates, da, dgi, dgh (B, T, G·H) gate-major as
// the full cells' (gate g of unit u = head·dh + j at (b·T + t)·G·H + g·H + u; the GRU's gates
// (B, T, 4H) = r | z | n | gh_n); hs, cs, dy (B, T, H); h0, c0 and the state gradients (B, H).
//
// Heads are independent recurrences given gi, so the time loop needs no grid-wide
// synchronisation: ONE block per (batch row, head), blockIdx.x = b·NH + head, runs all T steps
// (a persistent loop, as FlashRNN and slstm.cu do). Threads over the head's dh units (whole
// warps; thread j owns units j, j + blockDim.x, …, the same in every loop of a kernel, so what a
// thread writes for its own units it reads back without a barrier). The head's block of W_hh
// (G·dh² values) lives in dynamic shared memory when it fits (W_shared = 1, read from global
// memory once per sequence); otherwise every step reads it from global memory (L1/L2).
//   forward   WT (NH, G, dh_k, dh_j) = W_hh[head, g·dh + j, k]: thread j reads WT[head, g, k, j]
//             (adjacent threads, adjacent addresses). h_{t-1} of the head in shared memory,
//             double-buffered (2 dh): one __syncthreads per step.
//   backward  W_hh itself, (NH, G·dh, dh): thread k reads W_hh[head, q, k]. Per step
//             t = T-1 … 0: the pointwise backward of each unit → the step's pre-activation
//             gradient (global, and the head's G·dh values in shared memory, double-buffered:
//             one __syncthreads per step), then ∂L/∂h_{t-1}[k] = Σ_q W_hh[head, q, k] d_t[q].
//             dh0 (and the LSTM's dc0) hold dstate on entry and are the running ∂L/∂h (∂L/∂c)
//             of each unit (thread-own entries), the initial state's gradient on exit.
// The weight gradients and dx are GEMMs over all T, outside (multihead.py).
// Sums run in order with explicit fma_ (compiled with --fmad=false and -ffp-contract=off), so
// the GPU and the emulator round alike. NaN propagates as in the definitions: relu keeps a
// NaN, and relu's backward is a selection (a NaN or ±inf upstream gradient stays NaN).
#include "common.h"

// the head's block: shared memory (copied in by the block's threads; the caller syncs) when
// W_shared, else the global block itself
template <class F>
__device__ __forceinline__ const F* head_block(const F* W, F* smem, long long head,
                                               long long size, long long W_shared) {
    const F* Wg = W + head * size;
    if (!W_shared) return Wg;
    for (long long q = threadIdx.x; q < size; q += blockDim.x) smem[q] = Wg[q];
    return smem;
}

// Σ_k WT[g, k, j] h[k] over the head's dh units, in order (the forward's recurrent part)
template <class F>
__device__ __forceinline__ F head_row(const F* WT, const F* h, long long g, long long j,
                                      long long dh) {
    F r = F(0);
    for (long long k = 0; k < dh; ++k) r = fma_(WT[(g * dh + k) * dh + j], h[k], r);
    return r;
}

// Σ_q W[q, k] d[q] over the head's Gd = G·dh pre-activations (the backward's ∂L/∂h_{t-1}[k])
template <class F>
__device__ __forceinline__ F head_col(const F* W, const F* d, long long k, long long Gd,
                                      long long dh) {
    F r = F(0);
    for (long long q = 0; q < Gd; ++q) r = fma_(W[q * dh + k], d[q], r);
    return r;
}

// --------------------------------------------------------------------------------------
// Elman RNN
// --------------------------------------------------------------------------------------

template <class F, bool RELU>
__global__ void multihead_rnn_forward(const F* __restrict__ gi, const F* __restrict__ WT,
                                      const F* __restrict__ h0, F* __restrict__ hs,
                                      long long T, long long NH, long long dh,
                                      long long W_shared) {
    MINIREC_DYNAMIC_SHARED(F, smem);  // [W of the head (dh², if W_shared) | 2 dh: h_{t-1}, h_t]
    const long long b = blockIdx.x / NH, head = blockIdx.x % NH, H = NH * dh, WW = dh * dh;
    const F* Wm = head_block(WT, smem, head, WW, W_shared);
    F* hbuf = smem + (W_shared ? WW : 0);
    for (long long j = threadIdx.x; j < dh; j += blockDim.x) hbuf[j] = h0[b * H + head * dh + j];
    __syncthreads();  // W and h0 are in
    for (long long t = 0; t < T; ++t) {
        const F* prev = hbuf + (t % 2) * dh;
        F* next = hbuf + ((t + 1) % 2) * dh;
        for (long long j = threadIdx.x; j < dh; j += blockDim.x) {
            const long long k_s = (b * T + t) * H + head * dh + j;
            const F a = gi[k_s] + head_row(Wm, prev, 0, j, dh);
            const F h = RELU ? relu_(a) : tanh_(a);
            hs[k_s] = h;
            next[j] = h;
        }
        __syncthreads();  // h_t complete before step t + 1 reads it
    }
}

template <class F, bool RELU>
__global__ void multihead_rnn_backward(const F* __restrict__ hs, const F* __restrict__ W,
                                       const F* __restrict__ dy, F* __restrict__ da,
                                       F* __restrict__ dh0, long long T, long long NH,
                                       long long dh, long long W_shared) {
    MINIREC_DYNAMIC_SHARED(F, smem);  // [W of the head (dh², if W_shared) | 2 × dh: da_t]
    const long long b = blockIdx.x / NH, head = blockIdx.x % NH, H = NH * dh, WW = dh * dh;
    const F* Wm = head_block(W, smem, head, WW, W_shared);
    F* dabuf = smem + (W_shared ? WW : 0);
    if (W_shared) __syncthreads();  // W is in
    for (long long t = T - 1; t >= 0; --t) {
        F* buf = dabuf + (t % 2) * dh;
        for (long long j = threadIdx.x; j < dh; j += blockDim.x) {
            const long long lane = b * H + head * dh + j, k_s = (b * T + t) * H + head * dh + j;
            const F g = dh0[lane] + dy[k_s];  // ∂L/∂h_t in total
            const F h = hs[k_s];
            // tanh: g (1 − h²);  relu: g [h > 0], where g · 0 is g − g (NaN for a NaN or ±inf g)
            const F d = RELU ? (h > F(0) ? g : g - g) : g * (F(1) - h * h);
            da[k_s] = d;
            buf[j] = d;
        }
        __syncthreads();  // the head's da_t is in (the other buffer is the next step's)
        for (long long k = threadIdx.x; k < dh; k += blockDim.x)
            dh0[b * H + head * dh + k] = head_col(Wm, buf, k, dh, dh);
    }
}

// --------------------------------------------------------------------------------------
// GRU (gates r, z, n; b_hh inside the recurrence)
// --------------------------------------------------------------------------------------

template <class F>
__global__ void multihead_gru_forward(const F* __restrict__ gi, const F* __restrict__ WT,
                                      const F* __restrict__ b_hh, const F* __restrict__ h0,
                                      F* __restrict__ hs, F* __restrict__ gates, long long T,
                                      long long NH, long long dh, long long W_shared) {
    MINIREC_DYNAMIC_SHARED(F, smem);  // [W of the head (3 dh², if W_shared) | 2 dh]
    const long long b = blockIdx.x / NH, head = blockIdx.x % NH, H = NH * dh, WW = 3 * dh * dh;
    const F* Wm = head_block(WT, smem, head, WW, W_shared);
    F* hbuf = smem + (W_shared ? WW : 0);
    for (long long j = threadIdx.x; j < dh; j += blockDim.x) hbuf[j] = h0[b * H + head * dh + j];
    __syncthreads();  // W and h0 are in
    for (long long t = 0; t < T; ++t) {
        const F* prev = hbuf + (t % 2) * dh;
        F* next = hbuf + ((t + 1) % 2) * dh;
        for (long long j = threadIdx.x; j < dh; j += blockDim.x) {
            const long long u = head * dh + j, k = (b * T + t) * H + u;
            const long long ki = (b * T + t) * 3 * H + u, kg = (b * T + t) * 4 * H + u;
            const F gh_r = head_row(Wm, prev, 0, j, dh) + b_hh[u];
            const F gh_z = head_row(Wm, prev, 1, j, dh) + b_hh[H + u];
            const F gh_n = head_row(Wm, prev, 2, j, dh) + b_hh[2 * H + u];
            const F r = sigmoid_(gi[ki] + gh_r);
            const F z = sigmoid_(gi[ki + H] + gh_z);
            const F n = tanh_(fma_(r, gh_n, gi[ki + 2 * H]));
            const F h = fma_(z, prev[j], (F(1) - z) * n);
            hs[k] = h;
            next[j] = h;
            gates[kg] = r;
            gates[kg + H] = z;
            gates[kg + 2 * H] = n;
            gates[kg + 3 * H] = gh_n;
        }
        __syncthreads();  // h_t complete before step t + 1 reads it
    }
}

template <class F>
__global__ void multihead_gru_backward(const F* __restrict__ hs, const F* __restrict__ h0,
                                       const F* __restrict__ gates, const F* __restrict__ W,
                                       const F* __restrict__ dy, F* __restrict__ dgi,
                                       F* __restrict__ dgh, F* __restrict__ dh0, long long T,
                                       long long NH, long long dh, long long W_shared) {
    MINIREC_DYNAMIC_SHARED(F, smem);  // [W of the head (3 dh², if W_shared) | 2 × 3 dh: dgh_t]
    const long long b = blockIdx.x / NH, head = blockIdx.x % NH, H = NH * dh, WW = 3 * dh * dh;
    const F* Wm = head_block(W, smem, head, WW, W_shared);
    F* dbuf = smem + (W_shared ? WW : 0);
    if (W_shared) __syncthreads();  // W is in
    for (long long t = T - 1; t >= 0; --t) {
        F* buf = dbuf + (t % 2) * 3 * dh;
        for (long long j = threadIdx.x; j < dh; j += blockDim.x) {
            const long long u = head * dh + j, lane = b * H + u, k = (b * T + t) * H + u;
            const long long ka = (b * T + t) * 3 * H + u, kg = (b * T + t) * 4 * H + u;
            const F r = gates[kg], z = gates[kg + H], n = gates[kg + 2 * H], gh_n = gates[kg + 3 * H];
            const F h_prev = t == 0 ? h0[lane] : hs[k - H];
            const F dh_t = dh0[lane] + dy[k];                   // ∂L/∂h_t in total
            const F da_n = dh_t * (F(1) - z) * (F(1) - n * n);  // through n = tanh(·)
            const F da_z = dh_t * (h_prev - n) * z * (F(1) - z);  // through z = σ(·)
            const F da_r = da_n * gh_n * r * (F(1) - r);        // through r = σ(·)
            const F dgh_n = da_n * r;
            dh0[lane] = dh_t * z;                               // the direct path z ⊙ h_{t-1}
            dgi[ka] = da_r;
            dgi[ka + H] = da_z;
            dgi[ka + 2 * H] = da_n;
            dgh[ka] = da_r;
            dgh[ka + H] = da_z;
            dgh[ka + 2 * H] = dgh_n;
            buf[j] = da_r;
            buf[dh + j] = da_z;
            buf[2 * dh + j] = dgh_n;
        }
        __syncthreads();  // the head's dgh_t is in (the other buffer is the next step's)
        for (long long k = threadIdx.x; k < dh; k += blockDim.x) {
            const long long lane = b * H + head * dh + k;
            dh0[lane] = dh0[lane] + head_col(Wm, buf, k, 3 * dh, dh);
        }
    }
}

// --------------------------------------------------------------------------------------
// LSTM (gates i, f, g, o)
// --------------------------------------------------------------------------------------

template <class F>
__global__ void multihead_lstm_forward(const F* __restrict__ gi, const F* __restrict__ WT,
                                       const F* __restrict__ h0, const F* __restrict__ c0,
                                       F* __restrict__ hs, F* __restrict__ cs,
                                       F* __restrict__ gates, long long T, long long NH,
                                       long long dh, long long W_shared) {
    MINIREC_DYNAMIC_SHARED(F, smem);  // [W of the head (4 dh², if W_shared) | 2 dh]
    const long long b = blockIdx.x / NH, head = blockIdx.x % NH, H = NH * dh, WW = 4 * dh * dh;
    const F* Wm = head_block(WT, smem, head, WW, W_shared);
    F* hbuf = smem + (W_shared ? WW : 0);
    for (long long j = threadIdx.x; j < dh; j += blockDim.x) hbuf[j] = h0[b * H + head * dh + j];
    __syncthreads();  // W and h0 are in
    for (long long t = 0; t < T; ++t) {
        const F* prev = hbuf + (t % 2) * dh;
        F* next = hbuf + ((t + 1) % 2) * dh;
        for (long long j = threadIdx.x; j < dh; j += blockDim.x) {
            const long long u = head * dh + j, k = (b * T + t) * H + u;
            const long long ka = (b * T + t) * 4 * H + u;  // gate q at ka + q·H
            const F i = sigmoid_(gi[ka] + head_row(Wm, prev, 0, j, dh));
            const F f = sigmoid_(gi[ka + H] + head_row(Wm, prev, 1, j, dh));
            const F g = tanh_(gi[ka + 2 * H] + head_row(Wm, prev, 2, j, dh));
            const F o = sigmoid_(gi[ka + 3 * H] + head_row(Wm, prev, 3, j, dh));
            const F c_prev = t == 0 ? c0[b * H + u] : cs[k - H];
            const F c = fma_(f, c_prev, i * g);
            const F h = o * tanh_(c);
            cs[k] = c;
            hs[k] = h;
            next[j] = h;
            gates[ka] = i;
            gates[ka + H] = f;
            gates[ka + 2 * H] = g;
            gates[ka + 3 * H] = o;
        }
        __syncthreads();  // h_t complete before step t + 1 reads it
    }
}

template <class F>
__global__ void multihead_lstm_backward(const F* __restrict__ cs, const F* __restrict__ c0,
                                        const F* __restrict__ gates, const F* __restrict__ W,
                                        const F* __restrict__ dy, F* __restrict__ da,
                                        F* __restrict__ dh0, F* __restrict__ dc0, long long T,
                                        long long NH, long long dh, long long W_shared) {
    MINIREC_DYNAMIC_SHARED(F, smem);  // [W of the head (4 dh², if W_shared) | 2 × 4 dh: da_t]
    const long long b = blockIdx.x / NH, head = blockIdx.x % NH, H = NH * dh, WW = 4 * dh * dh;
    const F* Wm = head_block(W, smem, head, WW, W_shared);
    F* dabuf = smem + (W_shared ? WW : 0);
    if (W_shared) __syncthreads();  // W is in
    for (long long t = T - 1; t >= 0; --t) {
        F* buf = dabuf + (t % 2) * 4 * dh;
        for (long long j = threadIdx.x; j < dh; j += blockDim.x) {
            const long long u = head * dh + j, lane = b * H + u, k = (b * T + t) * H + u;
            const long long ka = (b * T + t) * 4 * H + u;
            const F i = gates[ka], f = gates[ka + H], g = gates[ka + 2 * H], o = gates[ka + 3 * H];
            const F tanh_c = tanh_(cs[k]);
            const F c_prev = t == 0 ? c0[lane] : cs[k - H];
            const F dh_t = dh0[lane] + dy[k];
            const F dc_t = dc0[lane] + dh_t * o * (F(1) - tanh_c * tanh_c);  // through h = o tanh(c)
            const F d4[4] = {dc_t * g * i * (F(1) - i),                     // through c = f c' + i g
                             dc_t * c_prev * f * (F(1) - f),
                             dc_t * i * (F(1) - g * g),
                             dh_t * tanh_c * o * (F(1) - o)};
            dc0[lane] = dc_t * f;
            for (int q = 0; q < 4; ++q) {
                da[ka + q * H] = d4[q];
                buf[q * dh + j] = d4[q];
            }
        }
        __syncthreads();  // the head's da_t is in (the other buffer is the next step's)
        for (long long k = threadIdx.x; k < dh; k += blockDim.x)
            dh0[b * H + head * dh + k] = head_col(Wm, buf, k, 4 * dh, dh);
    }
}
