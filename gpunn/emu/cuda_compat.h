// CUDA C on the CPU: the built-ins that gpunn's kernels use, mapped to C++17.
//
// g++ force-includes this header (-include) before every kernel source, with GPUNN_EMU
// defined. Each CUDA thread of a block runs as a fiber (or, for kernels with no barrier, as
// one iteration of a loop); runtime.cpp sets threadIdx/blockIdx/blockDim/gridDim before it
// resumes a thread, and __syncthreads() hands control to the block's scheduler.
//
// Limits: no warp-level built-ins (__shfl_*, __ballot_sync, __syncwarp: a kernel using them
// fails to compile); no textures, no cooperative groups; plain `__shared__` declarations
// work but are not poisoned per block (declare shared memory with GPUNN_SHARED from
// kernels/common.cuh so that a read before any write shows up as NaN).
#ifndef GPUNN_EMU_CUDA_COMPAT_H
#define GPUNN_EMU_CUDA_COMPAT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

// ---- declaration specifiers ----------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static thread_local

// ---- thread and block indices ----------------------------------------------------------------
struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ---- runtime hooks (runtime.cpp) ---------------------------------------------------------------
namespace gpunn_emu {

// One per shared-memory declaration and OS thread: where this block's copy lives.
struct SharedSlot {
    unsigned long long block_serial;
    void* ptr;
};

void syncthreads(const char* file, int line);
void* shared_slot(SharedSlot& slot, size_t bytes, size_t align, const char* file, int line);
void* dynamic_shared();
[[noreturn]] void trap(const char* file, int line);

}  // namespace gpunn_emu

#define __syncthreads() ::gpunn_emu::syncthreads(__FILE__, __LINE__)
#define __trap() ::gpunn_emu::trap(__FILE__, __LINE__)
#define __threadfence() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define __threadfence_block() __atomic_thread_fence(__ATOMIC_SEQ_CST)

// `GPUNN_EMU_SHARED(float, tile, [16][65]);` declares a reference `tile` to this block's copy
// of a float[16][65], carved from the per-OS-thread arena that is filled with 0xFF bytes (a
// NaN for floats) before every block. Every thread of the block gets the same address.
#define GPUNN_EMU_SHARED(type, name, dims)                                              \
    static thread_local ::gpunn_emu::SharedSlot gpunn_emu_slot_##name;                  \
    type(&name) dims = *reinterpret_cast<type(*) dims>(::gpunn_emu::shared_slot(        \
        gpunn_emu_slot_##name, sizeof(type dims), alignof(type), __FILE__, __LINE__))

// `extern __shared__ float buf[];` becomes `GPUNN_EMU_DYNAMIC_SHARED(float, buf);`: the
// launch's shared_mem bytes, also poisoned per block.
#define GPUNN_EMU_DYNAMIC_SHARED(type, name) \
    type* name = reinterpret_cast<type*>(::gpunn_emu::dynamic_shared())

// ---- math ------------------------------------------------------------------------------------------
#define __expf expf
#define __logf logf
#define __sinf sinf
#define __cosf cosf
#define __tanf tanf
#define __powf powf
#define __exp10f(x) powf(10.0f, (x))
#define __fdividef(a, b) ((a) / (b))
#define __fadd_rn(a, b) ((a) + (b))
#define __fsub_rn(a, b) ((a) - (b))
#define __fmul_rn(a, b) ((a) * (b))
#define __fdiv_rn(a, b) ((a) / (b))
#define __fsqrt_rn sqrtf
#define __fmaf_rn fmaf
#define __ldg(p) (*(p))

static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __saturatef(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }

static inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, sizeof i);
    return i;
}
static inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
static inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// CUDA's min/max: overloads for each arithmetic type in the global namespace; a mixed pair
// goes through the usual arithmetic conversions (min(int, unsigned) is unsigned, as in CUDA).
#define GPUNN_EMU_MINMAX(T)                                  \
    static inline T min(T a, T b) { return b < a ? b : a; } \
    static inline T max(T a, T b) { return a < b ? b : a; }
GPUNN_EMU_MINMAX(int)
GPUNN_EMU_MINMAX(unsigned int)
GPUNN_EMU_MINMAX(long long)
GPUNN_EMU_MINMAX(unsigned long long)
GPUNN_EMU_MINMAX(long)
GPUNN_EMU_MINMAX(unsigned long)
#undef GPUNN_EMU_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
static inline std::common_type_t<A, B> min(A a, B b) {
    return min(std::common_type_t<A, B>(a), std::common_type_t<A, B>(b));
}
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
static inline std::common_type_t<A, B> max(A a, B b) {
    return max(std::common_type_t<A, B>(a), std::common_type_t<A, B>(b));
}

// ---- vector types -----------------------------------------------------------------------------
#define GPUNN_EMU_VEC(T, name, align)                                                      \
    struct alignas(align) name##2 { T x, y; };                                               \
    struct name##3 { T x, y, z; };                                                           \
    struct alignas(align * 2) name##4 { T x, y, z, w; };                                     \
    static inline name##2 make_##name##2(T x, T y) { return {x, y}; }                        \
    static inline name##3 make_##name##3(T x, T y, T z) { return {x, y, z}; }                \
    static inline name##4 make_##name##4(T x, T y, T z, T w) { return {x, y, z, w}; }
GPUNN_EMU_VEC(float, float, 8)
GPUNN_EMU_VEC(int, int, 8)
GPUNN_EMU_VEC(double, double, 16)
#undef GPUNN_EMU_VEC
static inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) {
    return {x, y, z};
}

// ---- atomics (truly atomic across the OS threads that run blocks) ------------------------------
#define GPUNN_EMU_INT_ATOMICS(T)                                                     \
    static inline T atomicAdd(T* p, T v) {                                           \
        return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);                           \
    }                                                                                \
    static inline T atomicSub(T* p, T v) {                                           \
        return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST);                           \
    }                                                                                \
    static inline T atomicExch(T* p, T v) {                                          \
        return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);                          \
    }                                                                                \
    static inline T atomicAnd(T* p, T v) {                                           \
        return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST);                           \
    }                                                                                \
    static inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); } \
    static inline T atomicXor(T* p, T v) {                                           \
        return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST);                           \
    }                                                                                \
    static inline T atomicCAS(T* p, T expected, T desired) {                         \
        __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, \
                                    __ATOMIC_SEQ_CST);                               \
        return expected;                                                             \
    }                                                                                \
    static inline T atomicMax(T* p, T v) {                                           \
        T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);                                \
        while (old < v && !__atomic_compare_exchange_n(p, &old, v, false,           \
                                                       __ATOMIC_SEQ_CST,            \
                                                       __ATOMIC_SEQ_CST)) {         \
        }                                                                            \
        return old;                                                                  \
    }                                                                                \
    static inline T atomicMin(T* p, T v) {                                           \
        T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);                                \
        while (v < old && !__atomic_compare_exchange_n(p, &old, v, false,           \
                                                       __ATOMIC_SEQ_CST,            \
                                                       __ATOMIC_SEQ_CST)) {         \
        }                                                                            \
        return old;                                                                  \
    }
GPUNN_EMU_INT_ATOMICS(int)
GPUNN_EMU_INT_ATOMICS(unsigned int)
GPUNN_EMU_INT_ATOMICS(long long)
GPUNN_EMU_INT_ATOMICS(unsigned long long)
#undef GPUNN_EMU_INT_ATOMICS

// Floating-point atomics: a compare-and-swap loop on the bit pattern, as CUDA's own
// emulation of atomicMax on floats would be written.
template <typename F, typename Op>
static inline F gpunn_emu_float_atomic(F* p, Op op) {
    using Bits = std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>;
    Bits* bp = reinterpret_cast<Bits*>(p);
    Bits old_bits = __atomic_load_n(bp, __ATOMIC_SEQ_CST);
    for (;;) {
        F old_val;
        memcpy(&old_val, &old_bits, sizeof old_val);
        F new_val = op(old_val);
        Bits new_bits;
        memcpy(&new_bits, &new_val, sizeof new_bits);
        if (__atomic_compare_exchange_n(bp, &old_bits, new_bits, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            return old_val;
        }
    }
}
static inline float atomicAdd(float* p, float v) {
    return gpunn_emu_float_atomic(p, [v](float old) { return old + v; });
}
static inline double atomicAdd(double* p, double v) {
    return gpunn_emu_float_atomic(p, [v](double old) { return old + v; });
}
static inline float atomicMax(float* p, float v) {
    return gpunn_emu_float_atomic(p, [v](float old) { return fmaxf(old, v); });
}
static inline float atomicMin(float* p, float v) {
    return gpunn_emu_float_atomic(p, [v](float old) { return fminf(old, v); });
}
static inline float atomicExch(float* p, float v) {
    return gpunn_emu_float_atomic(p, [v](float) { return v; });
}

#endif  // GPUNN_EMU_CUDA_COMPAT_H
