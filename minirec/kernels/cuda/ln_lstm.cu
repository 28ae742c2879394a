// ln_lstm.cu: the layer-normalised LSTM (Ba, Kiros & Hinton 2016) in PyTorch's gate order
// i, f, g, o: the layer-norm row kernels and the fused per-step kernels, forward and backward.
//
//   a_t = LN(h_{t-1} W_hh^T; alpha_hh, beta_hh) + LN(x_t W_ih^T; alpha_ih, beta_ih) + b
//   c_t = σ(a_f) c_{t-1} + σ(a_i) tanh(a_g),   h_t = σ(a_o) tanh(LN(c_t; alpha_c, beta_c))
//   LN(z) over the whole row (4H gate pre-activations, or the H cells): μ = mean(z),
//   rstd = (mean((z − μ)²) + eps)^{−1/2}, xhat = (z − μ) rstd, LN = alpha xhat + beta
//
// Tested against minirec.cells.ln_lstm.forward/backward (backend="numpy") by
// tests/kernels/test_cuda_ln_lstm.py and tests/test_contract.py: on the CPU through the emulator,
// on a GPU through CuPy (pytest -m gpu). Launched by ln_lstm.py next to it (its plan_* functions).
//
// What runs where, per sequence (G = 4H):
//   zx = x W_ih^T                        one GEMM over all T, before the loop        (B, T, G)
//   xhat_ih, rstd_ih = LN(zx)            ln_lstm_layer_norm_rows: one block per (b, t)
//   zh = h_{t-1} W_hh^T                  one GEMM per step                             (B, G)
//   LN(zh), gates, c_t, LN(c_t), h_t     ONE kernel per step, ln_lstm_forward_step
//   backward, t = T-1 … 0:               ONE kernel per step, ln_lstm_backward_step (dh_t -> dzh_t),
//                                        then the GEMM dzh_t W_hh (-> the dh of step t-1)
//   dzx = LN-backward(da)                ln_lstm_layer_norm_backward_rows, after the loop
//   dW_ih, dW_hh, dx, the gains' sums    GEMMs and reductions over all T, after it
//
// One block per row (b for the step kernels, (b, t) for the row kernels), blockDim.x whole
// warps. A step kernel's thread owns the units j = threadIdx.x + k·blockDim.x: it reads the
// four gate pre-activations q·H + j of its units, applies the nonlinearities and updates their
// cells. The layer norms' row statistics are block reductions (block_sum: xor-shuffles inside
// each warp, then the warps' sums through shared memory, added in a fixed order by every
// thread: no atomics, the same bits in every thread and on every run). Every thread of a block
// takes part in every reduction (no early return). The layer norm is written once: ln_stats
// (forward: μ and rstd, two passes), ln_grad_means + ln_grad (backward:
// dz = rstd (alpha g − mean(alpha g) − xhat mean(alpha g xhat))); each begins with a barrier,
// so the row entries that other threads of the block have just written are visible.
//
// Layout: zx, ax, xhat_ih, xhat_hh, gates, da, dzh (B, T, G); hs, cs, xhat_c, dy, dnc (B, T, H);
// rstd_* (B, T); the per-step buffers zh, dzh_t (B, G) and h_next, dh, dc (B, H); all
// C-contiguous. F is float or double; float computes in float (expf, tanhf, sqrtf, fmaf).
#include "common.h"

__device__ __forceinline__ float ln_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double ln_sqrt(double x) { return sqrt(x); }

// Σ of v over the block, the same bits in every thread. Every thread of the block calls it;
// partial: 32 slots of shared memory (one per warp), free again when it returns
template <class F>
__device__ __forceinline__ F block_sum(F v, F* partial) {
    for (int d = 16; d > 0; d /= 2) v += __shfl_xor_sync(0xffffffffu, v, d);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();  // every warp's sum is in
    F total = F(0);
    for (unsigned w = 0; w < blockDim.x / 32; ++w) total += partial[w];
    __syncthreads();  // every thread has read them: the next call may overwrite
    return total;
}

template <class F>
struct LnStats {
    F mu, rstd;
};

// μ and rstd of the row z[0 .. n) (entries strided over the block's threads)
template <class F>
__device__ __forceinline__ LnStats<F> ln_stats(const F* z, long long n, F eps, F* partial) {
    __syncthreads();  // the row's entries written by other threads of the block are visible
    F s = F(0);
    for (long long k = threadIdx.x; k < n; k += blockDim.x) s += z[k];
    const F mu = block_sum(s, partial) / F(n);
    F v = F(0);
    for (long long k = threadIdx.x; k < n; k += blockDim.x) {
        const F d = z[k] - mu;
        v = fma_(d, d, v);
    }
    const F var = block_sum(v, partial) / F(n);
    return {mu, F(1) / ln_sqrt(var + eps)};
}

template <class F>
struct LnGradMeans {
    F g, gx;  // mean(alpha g), mean(alpha g xhat)
};

// the two means of the layer norm's backward over the row g[0 .. n) = ∂L/∂LN(z)
template <class F>
__device__ __forceinline__ LnGradMeans<F> ln_grad_means(const F* g, const F* xhat,
                                                        const F* alpha, long long n,
                                                        F* partial) {
    __syncthreads();  // the row's entries written by other threads of the block are visible
    F s1 = F(0), s2 = F(0);
    for (long long k = threadIdx.x; k < n; k += blockDim.x) {
        const F ghat = alpha[k] * g[k];
        s1 += ghat;
        s2 = fma_(ghat, xhat[k], s2);
    }
    const F m1 = block_sum(s1, partial) / F(n);
    const F m2 = block_sum(s2, partial) / F(n);
    return {m1, m2};
}

// one entry of ∂L/∂z = rstd (alpha g − mean(alpha g) − xhat mean(alpha g xhat))
template <class F>
__device__ __forceinline__ F ln_grad(F g, F xhat, F rstd, F alpha, LnGradMeans<F> m) {
    return rstd * (fma_(alpha, g, -m.g) - xhat * m.gx);
}

// --------------------------------------------------------------------------------------
// row kernels: the input side's layer norm for all (b, t), before and after the time loop
// --------------------------------------------------------------------------------------

// z (R, n) -> xhat (R, n), rstd (R,); block r normalises row r
template <class F>
__global__ void ln_lstm_layer_norm_rows(const F* __restrict__ z, F* __restrict__ xhat,
                                        F* __restrict__ rstd, long long n, F eps) {
    __shared__ F partial[32];
    const long long r = blockIdx.x;
    const LnStats<F> s = ln_stats(z + r * n, n, eps, partial);
    for (long long k = threadIdx.x; k < n; k += blockDim.x)
        xhat[r * n + k] = (z[r * n + k] - s.mu) * s.rstd;
    if (threadIdx.x == 0) rstd[r] = s.rstd;
}

// g (R, n) = ∂L/∂LN(z) -> dz (R, n) = ∂L/∂z; block r does row r
template <class F>
__global__ void ln_lstm_layer_norm_backward_rows(const F* __restrict__ g,
                                                 const F* __restrict__ xhat,
                                                 const F* __restrict__ rstd,
                                                 const F* __restrict__ alpha,
                                                 F* __restrict__ dz, long long n) {
    __shared__ F partial[32];
    const long long r = blockIdx.x;
    const LnGradMeans<F> m = ln_grad_means(g + r * n, xhat + r * n, alpha, n, partial);
    for (long long k = threadIdx.x; k < n; k += blockDim.x)
        dz[r * n + k] = ln_grad(g[r * n + k], xhat[r * n + k], rstd[r], alpha[k], m);
}

// --------------------------------------------------------------------------------------
// one time step; block b does batch row b
// --------------------------------------------------------------------------------------

// ax (B, T, G) = LN(zx) + b, the input side of a; zh (B, G) = h_{t-1} W_hh^T from the GEMM.
// Writes hs, cs, xhat_c [:, t], gates [:, t] = [i | f | g | o], xhat_hh [:, t], rstd_hh and
// rstd_c [:, t], and h_next (B, H) = h_t, the next step's GEMM operand
template <class F>
__global__ void ln_lstm_forward_step(const F* __restrict__ ax, const F* __restrict__ zh,
                                     const F* __restrict__ alpha_hh,
                                     const F* __restrict__ beta_hh,
                                     const F* __restrict__ alpha_c, const F* __restrict__ beta_c,
                                     const F* __restrict__ c0, F* __restrict__ hs,
                                     F* __restrict__ cs, F* __restrict__ gates,
                                     F* __restrict__ xhat_hh, F* __restrict__ rstd_hh,
                                     F* __restrict__ xhat_c, F* __restrict__ rstd_c,
                                     F* __restrict__ h_next, long long T, long long H,
                                     long long t, F eps) {
    __shared__ F partial[32];
    const long long b = blockIdx.x, G = 4 * H, bt = b * T + t;
    const F* zrow = zh + b * G;
    const LnStats<F> sh = ln_stats(zrow, G, eps, partial);  // LN(zh) over the 4H gates
    for (long long j = threadIdx.x; j < H; j += blockDim.x) {
        F a[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const long long k = q * H + j;
            const F xh = (zrow[k] - sh.mu) * sh.rstd;
            xhat_hh[bt * G + k] = xh;
            a[q] = fma_(alpha_hh[k], xh, beta_hh[k]) + ax[bt * G + k];
        }
        const F i = sigmoid_(a[0]), f = sigmoid_(a[1]), g = tanh_(a[2]), o = sigmoid_(a[3]);
        const F c_prev = t == 0 ? c0[b * H + j] : cs[(bt - 1) * H + j];
        cs[bt * H + j] = fma_(f, c_prev, i * g);
        gates[bt * G + j] = i;
        gates[bt * G + H + j] = f;
        gates[bt * G + 2 * H + j] = g;
        gates[bt * G + 3 * H + j] = o;
    }
    const LnStats<F> sc = ln_stats(cs + bt * H, H, eps, partial);  // LN(c_t) over the H cells
    for (long long j = threadIdx.x; j < H; j += blockDim.x) {
        const F xc = (cs[bt * H + j] - sc.mu) * sc.rstd;
        xhat_c[bt * H + j] = xc;
        const F h = gates[bt * G + 3 * H + j] * tanh_(fma_(alpha_c[j], xc, beta_c[j]));
        hs[bt * H + j] = h;
        h_next[b * H + j] = h;
    }
    if (threadIdx.x == 0) {
        rstd_hh[bt] = sh.rstd;
        rstd_c[bt] = sc.rstd;
    }
}

// dh (B, H): ∂L/∂h_t from step t+1 (dzh_{t+1} W_hh; dstate's h at t = T-1); dc (B, H): ∂L/∂c_t
// from step t+1, replaced by ∂L/∂c_{t-1}. Writes dnc [:, t] = ∂L/∂LN(c_t), da [:, t] = ∂L/∂a_t,
// dzh [:, t] = ∂L/∂zh_t and dzh_t (B, G), the operand of the GEMM dzh_t W_hh
template <class F>
__global__ void ln_lstm_backward_step(const F* __restrict__ cs, const F* __restrict__ c0,
                                      const F* __restrict__ gates,
                                      const F* __restrict__ xhat_hh,
                                      const F* __restrict__ rstd_hh,
                                      const F* __restrict__ xhat_c, const F* __restrict__ rstd_c,
                                      const F* __restrict__ alpha_hh,
                                      const F* __restrict__ alpha_c,
                                      const F* __restrict__ beta_c, const F* __restrict__ dy,
                                      const F* __restrict__ dh, F* __restrict__ dc,
                                      F* __restrict__ dnc, F* __restrict__ da,
                                      F* __restrict__ dzh, F* __restrict__ dzh_t, long long T,
                                      long long H, long long t) {
    __shared__ F partial[32];
    const long long b = blockIdx.x, G = 4 * H, bt = b * T + t;
    for (long long j = threadIdx.x; j < H; j += blockDim.x) {  // through h_t = o tanh(LN(c_t))
        const F dh_t = dh[b * H + j] + dy[bt * H + j];
        const F o = gates[bt * G + 3 * H + j];
        const F tanh_nc = tanh_(fma_(alpha_c[j], xhat_c[bt * H + j], beta_c[j]));
        dnc[bt * H + j] = dh_t * o * (F(1) - tanh_nc * tanh_nc);
        da[bt * G + 3 * H + j] = dh_t * tanh_nc * o * (F(1) - o);
    }
    const LnGradMeans<F> mc = ln_grad_means(dnc + bt * H, xhat_c + bt * H, alpha_c, H, partial);
    for (long long j = threadIdx.x; j < H; j += blockDim.x) {  // through LN(c_t), c = f c' + i g
        const F dc_t = dc[b * H + j] + ln_grad(dnc[bt * H + j], xhat_c[bt * H + j], rstd_c[bt],
                                               alpha_c[j], mc);
        const F i = gates[bt * G + j], f = gates[bt * G + H + j], g = gates[bt * G + 2 * H + j];
        const F c_prev = t == 0 ? c0[b * H + j] : cs[(bt - 1) * H + j];
        da[bt * G + j] = dc_t * g * i * (F(1) - i);
        da[bt * G + H + j] = dc_t * c_prev * f * (F(1) - f);
        da[bt * G + 2 * H + j] = dc_t * i * (F(1) - g * g);
        dc[b * H + j] = dc_t * f;
    }
    const LnGradMeans<F> mh = ln_grad_means(da + bt * G, xhat_hh + bt * G, alpha_hh, G, partial);
    for (long long k = threadIdx.x; k < G; k += blockDim.x) {  // through LN(zh)
        const F v = ln_grad(da[bt * G + k], xhat_hh[bt * G + k], rstd_hh[bt], alpha_hh[k], mh);
        dzh[bt * G + k] = v;
        dzh_t[b * G + k] = v;
    }
}
