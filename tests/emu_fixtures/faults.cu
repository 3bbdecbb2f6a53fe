// Fixture kernels with barrier faults, for the emulator tests.
//   early_return     threads past n return before the barrier the others wait at
//   split_barrier    even and odd threads wait at different barriers
//   hidden_barrier   a barrier behind a macro the signature parser cannot see
#include "fixture_common.cuh"

// One thread per element; the threads with i >= n leave before the barrier (the fault).
extern "C" __global__ void early_return(float* out, int n) {
    GPUNN_SHARED(float, buf, [64]);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    buf[threadIdx.x] = 1.0f;
    __syncthreads();
    out[i] = buf[threadIdx.x];
}

// One thread per element; even threads wait at one barrier, odd threads at another.
extern "C" __global__ void split_barrier(float* out) {
    if (threadIdx.x % 2 == 0) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

#define HIDDEN_BARRIER __sync##threads
// One thread per element; its barrier is spelled so that the source does not show it.
extern "C" __global__ void hidden_barrier(float* out) {
    out[threadIdx.x] = 1.0f;
    HIDDEN_BARRIER();
}
