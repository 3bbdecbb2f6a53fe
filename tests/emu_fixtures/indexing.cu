// Fixture kernels for launch geometry, atomics and argument types.
//   coords     out[flat thread id] = its (block, thread) coordinates, for 3-D grids and blocks
//   histogram  counts[in[i] % bins] += 1 with atomicAdd, from every block
//   float_max  *out = max of in with atomicMax on a float; *total += in via float atomicAdd
//   scale      y[i] = a * x[i] + b for i < n, one thread per element
#include "fixture_common.cuh"

// One thread per (block, thread) pair; six int32 coordinates per thread.
extern "C" __global__ void coords(int* out) {
    const long long block = blockIdx.x + (long long)gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const long long flat = block * (blockDim.x * blockDim.y * blockDim.z) + thread;
    int* o = out + flat * 6;
    o[0] = blockIdx.x;
    o[1] = blockIdx.y;
    o[2] = blockIdx.z;
    o[3] = threadIdx.x;
    o[4] = threadIdx.y;
    o[5] = threadIdx.z;
}

// One thread per input element; every block adds into the same counters.
extern "C" __global__ void histogram(const long long* in, long long* counts, int n, int bins) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd((unsigned long long*)&counts[in[i] % bins], 1ull);
}

// One thread per input element.
extern "C" __global__ void float_max(const float* in, float* out, float* total, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        atomicMax(out, in[i]);
        atomicAdd(total, in[i]);
    }
}

// One thread per element.
extern "C" __global__ void scale(const float* __restrict__ x, float* __restrict__ y, float a,
                                 float b, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaf(a, x[i], b);
}
