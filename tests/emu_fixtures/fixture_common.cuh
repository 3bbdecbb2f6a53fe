// The one piece of kernels/common.cuh that the emulator fixtures need: shared memory that the
// emulator can poison per block.
#pragma once

#ifdef GPUNN_EMU
#define GPUNN_SHARED(type, name, dims) GPUNN_EMU_SHARED(type, name, dims)
#else
#define GPUNN_SHARED(type, name, dims) __shared__ type name dims
#endif
