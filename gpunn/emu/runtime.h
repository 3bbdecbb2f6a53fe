// Interface between the generated launch trampolines and the scheduler (runtime.cpp).
#ifndef GPUNN_EMU_RUNTIME_H
#define GPUNN_EMU_RUNTIME_H

#include <cstddef>
#include <type_traits>
#include <utility>

namespace gpunn_emu {

// One __global__ function: `body` runs one CUDA thread with the launch's packed arguments.
struct Kernel {
    const char* name;
    bool uses_barrier;  // from the parsed source: fibers are needed only for barriers
    void (*body)(void** args);
};

// Run the grid dims[0..2] of blocks dims[3..5]; 0 on success, else 1 with a message in
// `error`. `args` is packed as for cudaLaunchKernel: args[i] points at the i-th argument.
int launch(const Kernel& kernel, void** args, const long long* dims, long long shared_bytes,
           int workers, char* error, int error_size);

template <typename... P, std::size_t... I>
inline void invoke_unpacked(void (*f)(P...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<P>>*>(args[I])...);
}

// Call kernel `f` with arguments unpacked from `args` by the kernel's own parameter types.
template <typename... P>
inline void invoke(void (*f)(P...), void** args) {
    invoke_unpacked(f, args, std::index_sequence_for<P...>{});
}

}  // namespace gpunn_emu

#endif  // GPUNN_EMU_RUNTIME_H
