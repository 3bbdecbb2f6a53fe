// common.cuh: helpers shared by every gpunn kernel file (NVRTC-compatible: no host headers).
//
// - GPUNN_SHARED(type, name, dims): every shared-memory array is declared through it, with a
//   static size (no `extern __shared__`), so that the CPU emulator (GPUNN_EMU) can give each
//   block its own poisoned copy.
// - index64: the type of every offset into a tensor that may hold more than 2^31 elements.
// - ceil_div: blocks needed to cover a range.
// - sigmoidf, safe_tanhf: activations that never produce NaN or inf from a finite input and
//   reach their limits exactly (sigmoidf(+100) == 1, sigmoidf(-100) ~ 3.7e-44 -> 0,
//   safe_tanhf(+-100) == +-1). A NaN input still gives NaN.
#pragma once

#ifdef GPUNN_EMU
#define GPUNN_SHARED(type, name, dims) GPUNN_EMU_SHARED(type, name, dims)
#else
#define GPUNN_SHARED(type, name, dims) __shared__ type name dims
#endif

typedef long long index64;

__device__ inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

__device__ inline index64 ceil_div(index64 a, index64 b) { return (a + b - 1) / b; }

// sigmoid(x) = 1 / (1 + e^-x). expf is only called on a non-positive argument, so it never
// overflows: for x >= 0, 1 / (1 + e^-x); for x < 0, e^x / (1 + e^x).
__device__ inline float sigmoidf(float x) {
    if (x >= 0.0f) {
        return 1.0f / (1.0f + expf(-x));
    }
    const float e = expf(x);
    return e / (1.0f + e);
}

// tanh(x): for |x| > 10, 1 - tanh(|x|) < 2e^-20 ~ 4.2e-9, far below half an ulp of 1.0f
// (2^-25 ~ 3e-8), so the float result is exactly +-1; returning it directly keeps any tanhf
// implementation (fast-math included) from producing a NaN through exp overflow. NaN fails
// both comparisons and stays NaN.
__device__ inline float safe_tanhf(float x) {
    if (x > 10.0f) {
        return 1.0f;
    }
    if (x < -10.0f) {
        return -1.0f;
    }
    return tanhf(x);
}
