// common.h: what every minirec .cu shares, on a GPU (nvcc, NVRTC, CuPy) and in the CPU
// emulator (emulation/cuda_emulation.h, included before this file there).
//
// Numbers are float, double, cfloat or cdouble; kernels are templates over them and are
// instantiated by name ("linear_scan_forward_recurrent<cfloat>", CuPy's name_expressions).
// Every multiply-add is an explicit fma_ and the code is compiled with --fmad=false on the
// GPU and -ffp-contract=off on the CPU, so both round the same way.
#pragma once

// a complex number of our own: the memory layout of NumPy/CuPy complex64/complex128, and
// trivial (no constructors), so that it can live in __shared__ memory
template <class F>
struct cplx {
    F re, im;
};
typedef cplx<float> cfloat;
typedef cplx<double> cdouble;

// num<S>::one() / zero(): the multiplicative and additive identities
template <class S>
struct num {
    static __device__ __forceinline__ S one() { return S(1); }
    static __device__ __forceinline__ S zero() { return S(0); }
};
template <class F>
struct num<cplx<F>> {
    static __device__ __forceinline__ cplx<F> one() { return {F(1), F(0)}; }
    static __device__ __forceinline__ cplx<F> zero() { return {F(0), F(0)}; }
};

// fma_(a, b, c) = a * b + c, rounded once per real fma
__device__ __forceinline__ float fma_(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return fma(a, b, c); }
template <class F>
__device__ __forceinline__ cplx<F> fma_(cplx<F> a, cplx<F> b, cplx<F> c) {
    return {fma_(a.re, b.re, fma_(-a.im, b.im, c.re)), fma_(a.re, b.im, fma_(a.im, b.re, c.im))};
}

__device__ __forceinline__ float mul(float a, float b) { return a * b; }
__device__ __forceinline__ double mul(double a, double b) { return a * b; }
template <class F>
__device__ __forceinline__ cplx<F> mul(cplx<F> a, cplx<F> b) {
    return {fma_(a.re, b.re, -(a.im * b.im)), fma_(a.re, b.im, a.im * b.re)};
}

__device__ __forceinline__ float add(float a, float b) { return a + b; }
__device__ __forceinline__ double add(double a, double b) { return a + b; }
template <class F>
__device__ __forceinline__ cplx<F> add(cplx<F> a, cplx<F> b) { return {a.re + b.re, a.im + b.im}; }

__device__ __forceinline__ float conj_(float a) { return a; }
__device__ __forceinline__ double conj_(double a) { return a; }
template <class F>
__device__ __forceinline__ cplx<F> conj_(cplx<F> a) { return {a.re, -a.im}; }

// shfl_up(v, d): v of the lane d below this one (this lane's own v for lanes < d)
__device__ __forceinline__ float shfl_up(float v, unsigned d) {
    return __shfl_up_sync(0xffffffffu, v, d);
}
__device__ __forceinline__ double shfl_up(double v, unsigned d) {
    return __shfl_up_sync(0xffffffffu, v, d);
}
template <class F>
__device__ __forceinline__ cplx<F> shfl_up(cplx<F> v, unsigned d) {
    return {shfl_up(v.re, d), shfl_up(v.im, d)};
}

// --------------------------------------------------------------------------------------
// the activations, as minirec/_math.py computes them, in the argument's precision (NaN in,
// NaN out); explicit float/double calls: no fast-math intrinsics
// --------------------------------------------------------------------------------------

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }
__device__ __forceinline__ float abs_(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_(double x) { return fabs(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }

// σ(x) = 1 / (1 + e^{-x}) from e = e^{-|x|} <= 1: no overflow at any x
template <class F>
__device__ __forceinline__ F sigmoid_(F x) {
    const F e = exp_(-abs_(x));
    const F r = F(1) / (F(1) + e);
    return x >= F(0) ? r : e * r;
}

// softplus(x) = max(x, 0) + log1p(e^{-|x|}); a NaN x fails x > 0 and comes back from log1p
template <class F>
__device__ __forceinline__ F softplus_(F x) {
    return (x > F(0) ? x : F(0)) + log1p_(exp_(-abs_(x)));
}

// relu(a) = max(a, 0) with NaN kept (NaN <= 0 is false), as np.maximum(a, 0)
template <class F>
__device__ __forceinline__ F relu_(F a) { return a <= F(0) ? F(0) : a; }

// dynamic shared memory (the launch's shared_mem bytes) as an array of T
#ifdef MINIREC_EMULATED
#define MINIREC_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(emu::dynamic_shared())
#else
#define MINIREC_DYNAMIC_SHARED(T, name)                   \
    extern __shared__ __align__(16) unsigned char name##_bytes[]; \
    T* name = reinterpret_cast<T*>(name##_bytes)
#endif
