// mlstm.cu: the mLSTM recurrence (xLSTM's matrix-memory cell) in CUDA C. Launched by
// minirec/kernels/cuda/mlstm.py; tested against minirec.ops.mlstm.run(..., backend="numpy")
// by tests/kernels/test_cuda_matrix.py (emulator; CuPy with pytest -m gpu).
//
// Per batch row b and head h (state C (K, V) K-first, n (K), m scalar):
//   lf_t = log σ(f_t);  x_t = lf_t + m_{t-1};  m_t = max(x_t, i_t)
//   a_t = e^{x_t - m_t};  b_t = e^{i_t - m_t}
//   C_t = a_t C_{t-1} + b_t k_t v_t^T;   n_t = a_t n_{t-1} + b_t k_t
//   qs = scale · q_t;  d_t = n_t · qs;  den_t = max(|d_t|, e^{-m_t});  h_t = C_t^T qs / den_t
// Backward ((dC, dn, dm) = ∂L/∂(C_t, n_t, m_t) from dstate and the later steps):
//   dnum = dh_t / den_t;  hd = Σ_V dh_t ⊙ h_t (mlstm.py)
//   |d_t| >= e^{-m_t}: dd = -hd / d_t  else dd = 0 and dm += hd
//   dC += qs dnum^T;  dn += dd qs;  dq = scale · (C_t dnum + dd n_t)
//   da = Σ dC ⊙ C_{t-1} + dn · n_{t-1};  db = k^T dC v + dn · k
//   dk = b (dC v + dn);  dv = b dC^T k;  dC <- a dC;  dn <- a dn
//   dlf = dm_{t-1} = a da;  di = b db;  dm̄ = dm - a da - b db
//   x_t >= i_t: dlf += dm̄, dm_{t-1} += dm̄  else di += dm̄;   df = dlf σ(-f)
//
// Four kernels:
//   mlstm_gates           one thread per (b, h): the scalar chain m_t, a_t, b_t -> (B·H, T).
//   mlstm_forward         one block per (b, h, slice of VB <= 32 columns of C); thread jl owns
//                         column j = slice·VB + jl of C in shared memory and walks its K rows;
//                         n_t is updated by the block's threads strided over K (every block
//                         keeps its own copy, double-buffered with qs and k_t: one barrier a
//                         step), then every thread forms d_t = n_t · qs itself, in order.
//                         Slice 0 writes n_t (B·H, T, K) and d_t, den_t (B·H, T) for the
//                         backward; checkpoints of C every L steps (B·H, NC, K, V).
//   mlstm_backward        same geometry: chunks of L steps last first, each replayed from its
//                         checkpoint into states (B·H, L, K, V) and walked in reverse, dC in
//                         shared memory; dq, dk sum over columns through red[r][kk][jl] (rows
//                         padded to VB + 1) into slice partials (B·H, nblk, T, K); the n terms
//                         (dn, dd n_t) belong to slice 0 only. da, db are sums over all of C and
//                         n: every thread writes its share to da_col, db_col (B·H, T, nblk·VB)
//                         and mlstm.py sums them; slice 0 writes hd's share of dm (dm_den).
//   mlstm_gates_backward  one thread per (b, h): the scalar chain backwards -> di, df, dm0.
//
// Layout (C-contiguous, F float or double): q, k (B, T, H, K); v, h, dh (B, T, H, V); i, f
// (B, T, H); C0, CT, dC_T, dC0 (B, H, K, V); n0, nT, dn_T, dn0 (B, H, K); m0, dm_T, dm0 (B·H).
#include "common.h"

__device__ __forceinline__ long long mlstm_at(long long bh, long long t, long long x,
                                              long long T, long long H, long long X) {
    const long long b = bh / H, h = bh % H;
    return ((b * T + t) * H + h) * X + x;
}

// max(x, y) that is NaN when either is, as np.maximum
template <class F>
__device__ __forceinline__ F mlstm_max(F x, F y) {
    return (x >= y || x != x) ? x : y;
}

template <class F>
__global__ void mlstm_gates(const F* __restrict__ i, const F* __restrict__ f,
                            const F* __restrict__ m0, F* __restrict__ m_all,
                            F* __restrict__ a_all, F* __restrict__ b_all, long long BH,
                            long long T, long long H) {
    const long long bh = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (bh >= BH) return;
    F m = m0[bh];
    for (long long t = 0; t < T; ++t) {
        const long long s = mlstm_at(bh, t, 0, T, H, 1);
        const F x = m - softplus_(-f[s]);  // lf_t + m_{t-1}, lf = log σ(f) = -softplus(-f)
        const F mt = mlstm_max(x, i[s]);
        a_all[bh * T + t] = exp_(x - mt);
        b_all[bh * T + t] = exp_(i[s] - mt);
        m_all[bh * T + t] = mt;
        m = mt;
    }
}

template <class F>
__global__ void mlstm_forward(const F* __restrict__ q, const F* __restrict__ k,
                              const F* __restrict__ v, const F* __restrict__ m_all,
                              const F* __restrict__ a_all, const F* __restrict__ b_all,
                              const F* __restrict__ C0, const F* __restrict__ n0,
                              F* __restrict__ h, F* __restrict__ CT, F* __restrict__ nT,
                              F* __restrict__ ckpt, F* __restrict__ n_all,
                              F* __restrict__ d_all, F* __restrict__ den_all, F scale,
                              long long T, long long H, long long K, long long V, long long L,
                              long long nblk) {
    MINIREC_DYNAMIC_SHARED(F, smem);
    const long long VB = blockDim.x, jl = threadIdx.x;
    const long long bh = blockIdx.x / nblk, slice = blockIdx.x % nblk, j = slice * VB + jl;
    const bool active = j < V;
    F* state = smem;          // K * VB
    F* vecs = smem + K * VB;  // 2 buffers of (qs, k_t, n_t)
    const long long NC = (T + L - 1) / L;
    if (active)
        for (long long kk = 0; kk < K; ++kk) state[kk * VB + jl] = C0[(bh * K + kk) * V + j];
    for (long long t = 0; t < T; ++t) {
        F* sq = vecs + (t % 2) * 3 * K;
        F* sk = sq + K;
        F* sn = sk + K;
        const F* n_prev = t == 0 ? nullptr : vecs + ((t - 1) % 2) * 3 * K + 2 * K;
        const F a = a_all[bh * T + t], b = b_all[bh * T + t];
        for (long long kk = jl; kk < K; kk += VB) {  // entry kk of n is this thread's
            sq[kk] = scale * q[mlstm_at(bh, t, kk, T, H, K)];
            const F kv = k[mlstm_at(bh, t, kk, T, H, K)];
            sk[kk] = kv;
            const F np_ = t == 0 ? n0[bh * K + kk] : n_prev[kk];
            sn[kk] = fma_(a, np_, b * kv);
            if (slice == 0) n_all[(bh * T + t) * K + kk] = sn[kk];
        }
        __syncthreads();  // qs, k_t, n_t are in; the other buffer is next step's
        F d = F(0);
        for (long long kk = 0; kk < K; ++kk) d = fma_(sn[kk], sq[kk], d);
        const F den = mlstm_max(abs_(d), exp_(-m_all[bh * T + t]));
        if (slice == 0 && jl == 0) {
            d_all[bh * T + t] = d;
            den_all[bh * T + t] = den;
        }
        if (!active) continue;
        if (t % L == 0)
            for (long long kk = 0; kk < K; ++kk)
                ckpt[((bh * NC + t / L) * K + kk) * V + j] = state[kk * VB + jl];
        const F vj = v[mlstm_at(bh, t, j, T, H, V)];
        F num = F(0);
        for (long long kk = 0; kk < K; ++kk) {
            const F c = fma_(a, state[kk * VB + jl], b * (sk[kk] * vj));
            state[kk * VB + jl] = c;
            num = fma_(c, sq[kk], num);
        }
        h[mlstm_at(bh, t, j, T, H, V)] = num / den;
    }
    if (active)
        for (long long kk = 0; kk < K; ++kk) CT[(bh * K + kk) * V + j] = state[kk * VB + jl];
    if (slice == 0 && T > 0) {
        const F* last = vecs + ((T - 1) % 2) * 3 * K + 2 * K;
        for (long long kk = jl; kk < K; kk += VB) nT[bh * K + kk] = last[kk];  // own entries
    }
}

template <class F>
__global__ void mlstm_backward(const F* __restrict__ q, const F* __restrict__ k,
                               const F* __restrict__ v, const F* __restrict__ m_all,
                               const F* __restrict__ a_all, const F* __restrict__ b_all,
                               const F* __restrict__ n_all, const F* __restrict__ n0,
                               const F* __restrict__ d_all, const F* __restrict__ den_all,
                               const F* __restrict__ hd_all, const F* __restrict__ ckpt,
                               const F* __restrict__ dh, const F* __restrict__ dC_T,
                               const F* __restrict__ dn_T, F* __restrict__ states,
                               F* __restrict__ dq_part, F* __restrict__ dk_part,
                               F* __restrict__ dv, F* __restrict__ da_col,
                               F* __restrict__ db_col, F* __restrict__ dm_den,
                               F* __restrict__ dC0, F* __restrict__ dn0, F scale, long long T,
                               long long H, long long K, long long V, long long L,
                               long long nblk) {
    MINIREC_DYNAMIC_SHARED(F, smem);
    const long long VB = blockDim.x, jl = threadIdx.x, P = VB + 1;
    const long long bh = blockIdx.x / nblk, slice = blockIdx.x % nblk, j = slice * VB + jl;
    const long long slot = (bh * T) * (nblk * VB) + slice * VB + jl;  // + t · nblk·VB
    const bool active = j < V, first = slice == 0;
    F* dC = smem;              // K * VB
    F* red = dC + K * VB;      // 2 rows of K * P: dq, dk terms
    F* dn = red + 2 * K * P;   // K: entry kk is thread kk % VB's (slice 0 only)
    F* sq = dn + K;            // reverse walk: qs, k_t
    F* sk = sq + K;
    F* rk = sk + K;            // replay: 2 buffers of k_t
    const long long NC = (T + L - 1) / L;
    if (active)
        for (long long kk = 0; kk < K; ++kk) dC[kk * VB + jl] = dC_T[(bh * K + kk) * V + j];
    if (first)
        for (long long kk = jl; kk < K; kk += VB) dn[kk] = dn_T[bh * K + kk];
    F* own = states + bh * L * K * V;
    for (long long c = NC - 1; c >= 0; --c) {
        const long long t0 = c * L, t1 = t0 + L < T ? t0 + L : T;
        const F* start = ckpt + (bh * NC + c) * K * V;
        for (long long t = t0; t < t1; ++t) {  // replay C_{t0} .. C_{t1-1}, as the forward
            F* bk = rk + (t % 2) * K;
            for (long long kk = jl; kk < K; kk += VB) bk[kk] = k[mlstm_at(bh, t, kk, T, H, K)];
            __syncthreads();
            if (!active) continue;
            const F a = a_all[bh * T + t], b = b_all[bh * T + t];
            const F vj = v[mlstm_at(bh, t, j, T, H, V)];
            const F* prev = t == t0 ? start : own + (t - t0 - 1) * K * V;
            F* next = own + (t - t0) * K * V;
            for (long long kk = 0; kk < K; ++kk)
                next[kk * V + j] = fma_(a, prev[kk * V + j], b * (bk[kk] * vj));
        }
        for (long long t = t1 - 1; t >= t0; --t) {
            for (long long kk = jl; kk < K; kk += VB) {
                sq[kk] = scale * q[mlstm_at(bh, t, kk, T, H, K)];
                sk[kk] = k[mlstm_at(bh, t, kk, T, H, K)];
            }
            __syncthreads();  // vectors in; last step's reductions done with red
            const long long s = bh * T + t;
            const F a = a_all[s], b = b_all[s], d = d_all[s], hd = hd_all[s];
            const bool d_branch = abs_(d) >= exp_(-m_all[s]);  // ties: the |d| branch
            const F dd = d_branch ? -hd / d : F(0);
            if (first && jl == 0) dm_den[s] = d_branch ? F(0) : hd;
            F da = F(0), db = F(0);
            if (active) {
                const F* C_t = own + (t - t0) * K * V;
                const F* C_prev = t == t0 ? start : own + (t - t0 - 1) * K * V;
                const F dnum = dh[mlstm_at(bh, t, j, T, H, V)] / den_all[s];
                const F vj = v[mlstm_at(bh, t, j, T, H, V)];
                F dck = F(0);  // (dC^T k_t)[j]
                for (long long kk = 0; kk < K; ++kk) {
                    const F x = fma_(sq[kk], dnum, dC[kk * VB + jl]);  // dC += qs dnum^T
                    red[kk * P + jl] = C_t[kk * V + j] * dnum;
                    red[(K + kk) * P + jl] = x * vj;
                    da = fma_(x, C_prev[kk * V + j], da);
                    dck = fma_(x, sk[kk], dck);
                    dC[kk * VB + jl] = a * x;
                }
                dv[mlstm_at(bh, t, j, T, H, V)] = b * dck;
                db = vj * dck;
            } else {
                for (long long r = 0; r < 2 * K; ++r) red[r * P + jl] = F(0);
            }
            if (first) {  // the n terms, entries kk = jl, jl + VB, ...
                for (long long kk = jl; kk < K; kk += VB) {
                    const F x = fma_(dd, sq[kk], dn[kk]);  // dn += dd qs
                    dn[kk] = x;
                    const F n_prev = t == 0 ? n0[bh * K + kk] : n_all[(s - 1) * K + kk];
                    da = fma_(x, n_prev, da);
                    db = fma_(x, sk[kk], db);
                }
            }
            da_col[slot + t * nblk * VB] = da;
            db_col[slot + t * nblk * VB] = db;
            __syncthreads();  // every column's terms are in red
            const long long out = (bh * nblk + slice) * T + t;
            for (long long kk = jl; kk < K; kk += VB) {
                F s0 = F(0), s1 = F(0);
                for (long long x = 0; x < VB; ++x) {
                    s0 = s0 + red[kk * P + x];
                    s1 = s1 + red[(K + kk) * P + x];
                }
                if (first) {
                    s0 = fma_(dd, n_all[s * K + kk], s0);  // + dd n_t
                    s1 = s1 + dn[kk];                      // + dn
                    dn[kk] = a * dn[kk];
                }
                dq_part[out * K + kk] = scale * s0;
                dk_part[out * K + kk] = b * s1;
            }
        }
    }
    if (active)
        for (long long kk = 0; kk < K; ++kk) dC0[(bh * K + kk) * V + j] = dC[kk * VB + jl];
    if (first)
        for (long long kk = jl; kk < K; kk += VB) dn0[bh * K + kk] = dn[kk];
}

template <class F>
__global__ void mlstm_gates_backward(const F* __restrict__ i, const F* __restrict__ f,
                                     const F* __restrict__ m0, const F* __restrict__ m_all,
                                     const F* __restrict__ a_all, const F* __restrict__ b_all,
                                     const F* __restrict__ da, const F* __restrict__ db,
                                     const F* __restrict__ dm_den, const F* __restrict__ dm_T,
                                     F* __restrict__ di, F* __restrict__ df,
                                     F* __restrict__ dm0, long long BH, long long T,
                                     long long H) {
    const long long bh = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (bh >= BH) return;
    F dm = dm_T[bh];
    for (long long t = T - 1; t >= 0; --t) {
        const long long s = mlstm_at(bh, t, 0, T, H, 1), r = bh * T + t;
        const F m_prev = t > 0 ? m_all[r - 1] : m0[bh];
        const F x = m_prev - softplus_(-f[s]);
        dm = dm + dm_den[r];
        const F A = a_all[r] * da[r], Bv = b_all[r] * db[r];
        const F bar = dm - A - Bv;            // all of ∂L/∂m_t
        const bool forget = x >= i[s];        // ties: the forget branch
        const F dlf = forget ? A + bar : A;
        di[s] = forget ? Bv : Bv + bar;
        df[s] = dlf * sigmoid_(-f[s]);
        dm = forget ? A + bar : A;            // ∂L/∂m_{t-1}
    }
    dm0[bh] = dm;
}
