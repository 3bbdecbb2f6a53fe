// Fixture kernels for the emulator tests: shared-memory tiles and barriers, float32.
//   transpose       out (W, H) = in (H, W)^T through a TILE x (TILE + 1) shared tile
//   block_sum       out[b] = sum of in over block b's BLOCK elements (tree reduction)
//   shift_left      out[i] = in[i + 1] within a block, through shared memory; `sync` says
//                   whether the barrier between the write and the read is taken
//   shift_right     out[i] = in[i - 1] within a block, the same way
//   read_unwritten  out[i] = tile[i] of a shared tile no thread wrote
#include "fixture_common.cuh"

#define TILE 16
#define BLOCK 128

// One thread per element; a block moves one TILE x TILE tile. Reads are along rows of `in`,
// writes along rows of `out`; the padding column keeps the column read of the tile apart.
extern "C" __global__ void __launch_bounds__(TILE * TILE)
    transpose(const float* __restrict__ in, float* __restrict__ out, int H, int W) {
    GPUNN_SHARED(float, tile, [TILE][TILE + 1]);
    const int w = blockIdx.x * TILE + threadIdx.x;
    const int h = blockIdx.y * TILE + threadIdx.y;
    if (h < H && w < W) tile[threadIdx.y][threadIdx.x] = in[h * W + w];
    // Threads below read what other threads of the block wrote.
    __syncthreads();
    const int oh = blockIdx.x * TILE + threadIdx.y;  // row of out = column of in
    const int ow = blockIdx.y * TILE + threadIdx.x;
    if (oh < W && ow < H) out[oh * H + ow] = tile[threadIdx.x][threadIdx.y];
}

__device__ __forceinline__ void tree_step(float* partial, int stride) {
    if ((int)threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    // The next step reads sums this step wrote.
    __syncthreads();
}

// One thread per element; block b sums in[b * BLOCK, (b + 1) * BLOCK) (zeros past n).
extern "C" __global__ void block_sum(const float* in, float* out, long long n) {
    GPUNN_SHARED(float, partial, [BLOCK]);
    const long long i = (long long)blockIdx.x * BLOCK + threadIdx.x;
    partial[threadIdx.x] = i < n ? in[i] : 0.0f;
    // Every partial sum must be written before the tree reads it.
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride /= 2) tree_step(partial, stride);
    if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

// One thread per element of a block: out[i] = in[i + 1], the last thread of the block reads 0.
extern "C" __global__ void shift_left(const float* in, float* out, int sync) {
    GPUNN_SHARED(float, slot, [BLOCK]);
    const int i = blockIdx.x * BLOCK + threadIdx.x;
    slot[threadIdx.x] = in[i];
    if (sync) {
        // The neighbour's slot is written by another thread.
        __syncthreads();
    }
    out[i] = threadIdx.x + 1 < BLOCK ? slot[threadIdx.x + 1] : 0.0f;
}

// One thread per element of a block: out[i] = in[i - 1], the first thread of the block reads 0.
extern "C" __global__ void shift_right(const float* in, float* out, int sync) {
    GPUNN_SHARED(float, slot, [BLOCK]);
    const int i = blockIdx.x * BLOCK + threadIdx.x;
    slot[threadIdx.x] = in[i];
    if (sync) {
        // The neighbour's slot is written by another thread.
        __syncthreads();
    }
    out[i] = threadIdx.x > 0 ? slot[threadIdx.x - 1] : 0.0f;
}

// One thread per element: reads a shared slot no thread wrote (the emulator gives NaN).
extern "C" __global__ void read_unwritten(float* out) {
    GPUNN_SHARED(float, tile, [BLOCK]);
    out[blockIdx.x * BLOCK + threadIdx.x] = tile[threadIdx.x];
}
