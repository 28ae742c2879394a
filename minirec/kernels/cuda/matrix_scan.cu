// matrix_scan.cu: the matrix affine scan h_t = A_t h_{t-1} + b_t over time, in CUDA C.
//
// Tested against minirec.scan.matrix.forward/backward (backend="numpy") by
// tests/kernels/test_cuda_matrix_scan.py: on the CPU through the emulator, on a GPU through
// CuPy (pytest -m gpu). Launched by minirec/kernels/cuda/matrix_scan.py.
//
// Layout (C-contiguous, S float, double, cfloat or cdouble): A, dA (B, T, d, d) with
// A[n, t, i, j] at ((n * T + t) * d + i) * d + j; b, h, dh (B, T, d); h0, dstate, dh0 (B, d).
//
// Backward (g_t = ∂L/∂h_t in total, ^H the conjugate transpose):
//   g_{T-1} = dh_{T-1} + dstate,   g_t = dh_t + A_{t+1}^H g_{t+1}
//   db_t = g_t,   dA_t = g_t h_{t-1}^H,   dh0 = A_0^H g_0            (h_{-1} = h0)
//
// Both kernels: one block per batch row n (grid B), threads over the d entries of the state
// (blockDim.x whole warps, thread i owns entries i, i + blockDim.x, ...: threads past d idle
// but keep to the block's barriers). The state of the previous step lives in dynamic shared
// memory, double-buffered (2 d values): step t reads one buffer and writes the other, so one
// __syncthreads per step separates a step's writes from the next step's reads, and the
// reads of the step before from this step's writes.
//   forward   thread i: h_t[i] = Σ_j A_t[i, j] h_{t-1}[j] + b_t[i]   (row i of A_t, in order)
//   backward  thread j: g_t[j] = Σ_i conj(A_{t+1}[i, j]) g_{t+1}[i] + dh_t[j]  (column j of
//             A_{t+1}: adjacent threads read adjacent addresses), then, once g_t is in
//             shared memory, column j of dA_t[i, j] = g_t[i] conj(h_{t-1}[j]), and at the end
//             dh0[j] = Σ_i conj(A_0[i, j]) g_0[i].
// The sums run over the index in order with explicit fma_ (compiled with --fmad=false and
// -ffp-contract=off), so the GPU and the emulator round alike.
#include "common.h"

template <class S>
__global__ void matrix_scan_forward(const S* __restrict__ A, const S* __restrict__ b,
                                    const S* __restrict__ h0, S* __restrict__ h, long long T,
                                    long long d) {
    MINIREC_DYNAMIC_SHARED(S, state);  // two buffers of d: h_{t-1} and h_t
    const long long n = blockIdx.x;
    for (long long i = threadIdx.x; i < d; i += blockDim.x) state[i] = h0[n * d + i];
    __syncthreads();
    for (long long t = 0; t < T; ++t) {
        const S* prev = state + (t % 2) * d;
        S* next = state + ((t + 1) % 2) * d;
        const S* A_t = A + (n * T + t) * d * d;
        for (long long i = threadIdx.x; i < d; i += blockDim.x) {
            const S* row = A_t + i * d;
            S acc = mul(row[0], prev[0]);
            for (long long j = 1; j < d; ++j) acc = fma_(row[j], prev[j], acc);
            acc = add(acc, b[(n * T + t) * d + i]);
            next[i] = acc;
            h[(n * T + t) * d + i] = acc;
        }
        __syncthreads();  // h_t complete before step t + 1 reads it
    }
}

template <class S>
__global__ void matrix_scan_backward(const S* __restrict__ A, const S* __restrict__ h,
                                     const S* __restrict__ h0, const S* __restrict__ dh,
                                     const S* __restrict__ dstate, S* __restrict__ dA,
                                     S* __restrict__ db, S* __restrict__ dh0, long long T,
                                     long long d) {
    MINIREC_DYNAMIC_SHARED(S, g);  // two buffers of d: g_{t+1} and g_t
    const long long n = blockIdx.x;
    for (long long t = T - 1; t >= 0; --t) {
        const S* later = g + (t % 2) * d;  // g_{t+1} (written at step t + 1)
        S* now = g + ((t + 1) % 2) * d;    // g_t
        const S* A_next = A + (n * T + t + 1) * d * d;  // A_{t+1}, read for t < T - 1
        for (long long j = threadIdx.x; j < d; j += blockDim.x) {
            const long long k = (n * T + t) * d + j;
            S acc;
            if (t == T - 1) {
                acc = add(dh[k], dstate[n * d + j]);  // g_{T-1} = dh_{T-1} + dstate
            } else {
                acc = mul(conj_(A_next[j]), later[0]);
                for (long long i = 1; i < d; ++i) acc = fma_(conj_(A_next[i * d + j]), later[i], acc);
                acc = add(acc, dh[k]);
            }
            now[j] = acc;
            db[k] = acc;
        }
        __syncthreads();  // g_t complete: dA_t reads all of it, step t - 1 reads it
        S* dA_t = dA + (n * T + t) * d * d;
        for (long long j = threadIdx.x; j < d; j += blockDim.x) {
            const S h_prev = conj_(t > 0 ? h[(n * T + t - 1) * d + j] : h0[n * d + j]);
            for (long long i = 0; i < d; ++i) dA_t[i * d + j] = mul(now[i], h_prev);
        }
    }
    // dh0 = A_0^H g_0 (g_0 is in buffer 1, complete since the last step's barrier)
    const S* g0 = g + d;
    const S* A_0 = A + n * T * d * d;
    for (long long j = threadIdx.x; j < d; j += blockDim.x) {
        S acc = mul(conj_(A_0[j]), g0[0]);
        for (long long i = 1; i < d; ++i) acc = fma_(conj_(A_0[i * d + j]), g0[i], acc);
        dh0[n * d + j] = acc;
    }
}
