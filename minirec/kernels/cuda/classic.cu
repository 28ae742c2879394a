// classic.cu: the fused gate kernels of the Elman RNN, the LSTM and the GRU (PyTorch's
// conventions), one time step each, forward and backward.
//
// Tested against minirec.cells.rnn/lstm/gru.forward/backward (backend="numpy") by
// tests/kernels/test_cuda_classic.py and tests/test_contract.py: on the CPU through the
// emulator, on a GPU through CuPy (pytest -m gpu). Launched by the wrappers rnn.py, lstm.py and
// gru.py next to it (their plan_*_step functions, through classic.py's step_launch).
//
// What runs where, per sequence (G = gates · H; gates: RNN 1, GRU 3 r|z|n, LSTM 4 i|f|g|o):
//   gi  = x W_ih^T + b                  one GEMM over all T, before the loop     (B, T, G)
//   gh  = h_{t-1} W_hh^T                one GEMM per step                          (B, G)
//   the step's gates and state update   ONE kernel per step: *_forward_step here
//   backward, t = T-1 … 0:              ONE kernel per step (*_backward_step: dh_t -> da_t),
//                                       then one GEMM da_t W_hh (-> the dh of step t-1)
//   dW_ih, dW_hh, db, dx                GEMMs over all T, after the loop
//
// Layout: gi, gates, da (B, T, G) (the GRU's gates: (B, T, 4H), r|z|n|gh_n), hs, cs, dy
// (B, T, H), all C-contiguous; a step kernel takes the whole arrays and t. The per-step
// buffers gh, h_next, da_t ((B, G) or (B, H)) are contiguous: the GEMMs read and write them.
// One thread per (b, j), lane = b·H + j: it reads the G/H gate pre-activations of unit j,
// applies the nonlinearities, updates the state and writes what the backward needs (the
// post-activation gates). Adjacent threads read adjacent j (coalesced). F is float or double;
// float computes in float (expf, tanhf, fmaf): no double literal promotes it.
//
// NaN and ±inf propagate as in the NumPy definition: relu(NaN) = NaN (np.maximum keeps it),
// and relu's backward multiplies by [h > 0], so a NaN or ±inf upstream gradient stays NaN.
#include "common.h"

// activations (exp_, tanh_, sigmoid_, relu_) come from common.h

// lane = b·H + j of this thread; false for the ceil-div grid's idle tail threads
__device__ __forceinline__ bool lane_index(long long lanes, long long& lane) {
    lane = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    return lane < lanes;
}

// --------------------------------------------------------------------------------------
// Elman RNN: a_t = gi_t + h_{t-1} W_hh^T,  h_t = φ(a_t)  (gi = x W_ih^T + b_ih + b_hh)
// --------------------------------------------------------------------------------------

// writes hs[:, t] and h_next (B, H) = h_t, the next step's GEMM operand
template <class F, bool RELU>
__global__ void rnn_forward_step(const F* __restrict__ gi, const F* __restrict__ gh,
                                 F* __restrict__ hs, F* __restrict__ h_next, long long B,
                                 long long T, long long H, long long t) {
    long long lane;
    if (!lane_index(B * H, lane)) return;
    const long long b = lane / H, j = lane % H, k = (b * T + t) * H + j;
    const F a = gi[k] + gh[lane];
    const F h = RELU ? relu_(a) : tanh_(a);
    hs[k] = h;
    h_next[lane] = h;
}

// dh (B, H): ∂L/∂h_t from step t+1 (da_{t+1} W_hh; dstate at t = T-1). Writes
// da[:, t] = ∂L/∂a_t and da_t (B, H), the operand of the GEMM da_t W_hh
template <class F, bool RELU>
__global__ void rnn_backward_step(const F* __restrict__ hs, const F* __restrict__ dy,
                                  const F* __restrict__ dh, F* __restrict__ da,
                                  F* __restrict__ da_t, long long B, long long T, long long H,
                                  long long t) {
    long long lane;
    if (!lane_index(B * H, lane)) return;
    const long long b = lane / H, j = lane % H, k = (b * T + t) * H + j;
    const F g = dh[lane] + dy[k];  // ∂L/∂h_t in total
    const F h = hs[k];
    // tanh: g (1 − h²);  relu: g [h > 0], where g · 0 is g − g (NaN for a NaN or ±inf g)
    const F d = RELU ? (h > F(0) ? g : g - g) : g * (F(1) - h * h);
    da[k] = d;
    da_t[lane] = d;
}

// --------------------------------------------------------------------------------------
// LSTM: a_t = gi_t + h_{t-1} W_hh^T = [a_i | a_f | a_g | a_o]  (gi = x W_ih^T + b_ih + b_hh)
//       i, f, o = σ(a_i, a_f, a_o), g = tanh(a_g); c_t = f c_{t-1} + i g; h_t = o tanh(c_t)
// --------------------------------------------------------------------------------------

// writes hs[:, t], cs[:, t], gates[:, t] = [i | f | g | o] and h_next (B, H) = h_t
template <class F>
__global__ void lstm_forward_step(const F* __restrict__ gi, const F* __restrict__ gh,
                                  const F* __restrict__ c0, F* __restrict__ hs,
                                  F* __restrict__ cs, F* __restrict__ gates,
                                  F* __restrict__ h_next, long long B, long long T, long long H,
                                  long long t) {
    long long lane;
    if (!lane_index(B * H, lane)) return;
    const long long b = lane / H, j = lane % H, k = (b * T + t) * H + j;
    const long long G = 4 * H, ka = (b * T + t) * G + j, kh = b * G + j;  // gate q at + q·H
    const F i = sigmoid_(gi[ka] + gh[kh]);
    const F f = sigmoid_(gi[ka + H] + gh[kh + H]);
    const F g = tanh_(gi[ka + 2 * H] + gh[kh + 2 * H]);
    const F o = sigmoid_(gi[ka + 3 * H] + gh[kh + 3 * H]);
    const F c_prev = t == 0 ? c0[lane] : cs[k - H];
    const F c = fma_(f, c_prev, i * g);
    const F h = o * tanh_(c);
    cs[k] = c;
    hs[k] = h;
    h_next[lane] = h;
    gates[ka] = i;
    gates[ka + H] = f;
    gates[ka + 2 * H] = g;
    gates[ka + 3 * H] = o;
}

// dh (B, H): ∂L/∂h_t from step t+1 (da_{t+1} W_hh; dstate's h at t = T-1); dc (B, H): ∂L/∂c_t
// from step t+1, replaced by ∂L/∂c_{t-1} (each thread its own entry). Writes da[:, t] and da_t
template <class F>
__global__ void lstm_backward_step(const F* __restrict__ cs, const F* __restrict__ c0,
                                   const F* __restrict__ gates, const F* __restrict__ dy,
                                   const F* __restrict__ dh, F* __restrict__ dc,
                                   F* __restrict__ da, F* __restrict__ da_t, long long B,
                                   long long T, long long H, long long t) {
    long long lane;
    if (!lane_index(B * H, lane)) return;
    const long long b = lane / H, j = lane % H, k = (b * T + t) * H + j;
    const long long G = 4 * H, ka = (b * T + t) * G + j, kd = b * G + j;
    const F i = gates[ka], f = gates[ka + H], g = gates[ka + 2 * H], o = gates[ka + 3 * H];
    const F tanh_c = tanh_(cs[k]);
    const F c_prev = t == 0 ? c0[lane] : cs[k - H];
    const F dh_t = dh[lane] + dy[k];
    const F dc_t = dc[lane] + dh_t * o * (F(1) - tanh_c * tanh_c);  // through h = o tanh(c)
    const F da_i = dc_t * g * i * (F(1) - i);                        // through c = f c' + i g
    const F da_f = dc_t * c_prev * f * (F(1) - f);
    const F da_g = dc_t * i * (F(1) - g * g);
    const F da_o = dh_t * tanh_c * o * (F(1) - o);
    dc[lane] = dc_t * f;
    da[ka] = da_i;
    da[ka + H] = da_f;
    da[ka + 2 * H] = da_g;
    da[ka + 3 * H] = da_o;
    da_t[kd] = da_i;
    da_t[kd + H] = da_f;
    da_t[kd + 2 * H] = da_g;
    da_t[kd + 3 * H] = da_o;
}

// --------------------------------------------------------------------------------------
// GRU: gi = x W_ih^T + b_ih, gh = h_{t-1} W_hh^T + b_hh (the GEMM gives h W_hh^T, b_hh is
//      added here); r, z = σ(gi_r,z + gh_r,z), n = tanh(gi_n + r gh_n),
//      h_t = (1 − z) n + z h_{t-1}
// --------------------------------------------------------------------------------------

// h_prev (B, H): h_{t-1} (h0 at t = 0), the GEMM's operand. Writes hs[:, t], h_next (B, H)
// and gates[:, t] = [r | z | n | gh_n] (B, T, 4H)
template <class F>
__global__ void gru_forward_step(const F* __restrict__ gi, const F* __restrict__ gh,
                                 const F* __restrict__ b_hh, const F* __restrict__ h_prev,
                                 F* __restrict__ hs, F* __restrict__ gates,
                                 F* __restrict__ h_next, long long B, long long T, long long H,
                                 long long t) {
    long long lane;
    if (!lane_index(B * H, lane)) return;
    const long long b = lane / H, j = lane % H, k = (b * T + t) * H + j;
    const long long ki = (b * T + t) * 3 * H + j, kh = b * 3 * H + j, kg = (b * T + t) * 4 * H + j;
    const F r = sigmoid_(gi[ki] + (gh[kh] + b_hh[j]));
    const F z = sigmoid_(gi[ki + H] + (gh[kh + H] + b_hh[H + j]));
    const F gh_n = gh[kh + 2 * H] + b_hh[2 * H + j];
    const F n = tanh_(fma_(r, gh_n, gi[ki + 2 * H]));
    const F h = fma_(z, h_prev[lane], (F(1) - z) * n);
    hs[k] = h;
    h_next[lane] = h;
    gates[kg] = r;
    gates[kg + H] = z;
    gates[kg + 2 * H] = n;
    gates[kg + 3 * H] = gh_n;
}

// dh (B, H): dgh_{t+1} W_hh from the GEMM (dstate at t = T-1); dh_direct (B, H): the direct
// path z_{t+1} ⊙ ∂L/∂h_{t+1} (zeros at t = T-1), replaced by z_t ⊙ ∂L/∂h_t (each thread its own
// entry). Writes dgi[:, t] = ∂L/∂gi_t, dgh[:, t] = ∂L/∂gh_t and dgh_t (B, 3H), the GEMM's operand
template <class F>
__global__ void gru_backward_step(const F* __restrict__ hs, const F* __restrict__ h0,
                                  const F* __restrict__ gates, const F* __restrict__ dy,
                                  const F* __restrict__ dh, F* __restrict__ dh_direct,
                                  F* __restrict__ dgi, F* __restrict__ dgh,
                                  F* __restrict__ dgh_t, long long B, long long T, long long H,
                                  long long t) {
    long long lane;
    if (!lane_index(B * H, lane)) return;
    const long long b = lane / H, j = lane % H, k = (b * T + t) * H + j;
    const long long kg = (b * T + t) * 4 * H + j, ka = (b * T + t) * 3 * H + j, kd = b * 3 * H + j;
    const F r = gates[kg], z = gates[kg + H], n = gates[kg + 2 * H], gh_n = gates[kg + 3 * H];
    const F h_prev = t == 0 ? h0[lane] : hs[k - H];
    const F dh_t = (dh_direct[lane] + dh[lane]) + dy[k];  // ∂L/∂h_t in total
    const F da_n = dh_t * (F(1) - z) * (F(1) - n * n);     // through n = tanh(·)
    const F da_z = dh_t * (h_prev - n) * z * (F(1) - z);   // through z = σ(·)
    const F da_r = da_n * gh_n * r * (F(1) - r);           // through r = σ(·)
    const F dgh_n = da_n * r;
    dh_direct[lane] = dh_t * z;                            // the direct path z ⊙ h_{t-1}
    dgi[ka] = da_r;
    dgi[ka + H] = da_z;
    dgi[ka + 2 * H] = da_n;
    dgh[ka] = da_r;
    dgh[ka + H] = da_z;
    dgh[ka + 2 * H] = dgh_n;
    dgh_t[kd] = da_r;
    dgh_t[kd + H] = da_z;
    dgh_t[kd + 2 * H] = dgh_n;
}
