// The emulator's scheduler: runs a CUDA grid on the CPU with CUDA's block semantics.
//
// Blocks are handed out to OS threads (workers) from one atomic counter. A worker runs one
// block at a time; inside a block every CUDA thread is a ucontext fiber with its own stack,
// and __syncthreads() switches to the next fiber of the block. After the last fiber of a
// pass, the block's scheduler checks that every thread waits at the same barrier and
// releases them all. Kernels whose source shows no barrier run their threads as a plain loop
// on the worker's own stack.
//
// Faults (a barrier not every thread reaches, __syncthreads() in a kernel run without fibers,
// shared memory over the limit, __trap()) end the launch with an error message; the launch
// entry point returns it to Python. Nothing here aborts the process.
#include <pthread.h>
#include <ucontext.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define GPUNN_EMU_ASAN 1
#else
#define GPUNN_EMU_ASAN 0
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace gpunn_emu {
namespace {

// Per-block shared memory on the largest GPUs gpunn targets (sm_90: 227 KiB).
constexpr size_t kSharedCapacity = 227 * 1024;
// Under ASan, poisoned gaps between shared arrays catch an overflow from one into the next.
constexpr size_t kSharedRedzone = GPUNN_EMU_ASAN ? 64 : 0;
// Fiber stacks: ample for kernels with register-blocked accumulators; larger under ASan,
// whose frames carry redzones.
constexpr size_t kStackBytes = GPUNN_EMU_ASAN ? 256 * 1024 : 64 * 1024;

// A fault inside a kernel thread: unwinds that thread to the block loop or fiber entry.
struct Fault {
    std::string message;
};

enum class FiberState { Runnable, AtBarrier, Done };

struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;
    FiberState state = FiberState::Runnable;
    uint3 tid{0, 0, 0};
    const char* barrier_file = nullptr;
    int barrier_line = 0;
};

struct Launch;

// One per OS thread that runs blocks; reused across blocks (stacks, arena).
struct Worker {
    Launch* launch = nullptr;
    bool fiber_mode = false;
    std::vector<Fiber> fibers;
    size_t nthreads = 0;
    size_t current = 0;
    // This pass runs the fibers in descending thread order (see pass_is_reversed).
    bool reverse = false;
    ucontext_t scheduler;
    ucontext_t blank;  // a getcontext() result that makecontext() starts from
    bool blank_ready = false;
    bool faulted = false;
    std::string fault;
    // Shared memory: [0, dynamic_bytes) is the launch's dynamic region; declarations follow.
    char* arena = nullptr;
    size_t arena_used = 0;
    size_t arena_high = 0;
    unsigned long long block_serial = 0;
    void* sched_stack_bottom = nullptr;
    size_t sched_stack_size = 0;

    Worker() {
        arena = static_cast<char*>(std::malloc(kSharedCapacity));
        std::memset(arena, 0xFF, kSharedCapacity);
        arena_high = kSharedCapacity;
    }
    ~Worker() {
        for (Fiber& f : fibers) std::free(f.stack);
        std::free(arena);
    }
};

thread_local Worker* tls_worker = nullptr;

struct Launch {
    const Kernel* kernel;
    void** args;
    dim3 grid, block;
    size_t dynamic_bytes;
    unsigned long long nblocks;
    std::atomic<unsigned long long> next_block{0};
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    std::string error;

    void fail(const std::string& message) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!failed.load()) {
            error = message;
            failed.store(true);
        }
    }
};

std::string where(const char* file, int line) {
    return std::string(file) + ":" + std::to_string(line);
}

std::string thread_name(uint3 t) {
    return "(" + std::to_string(t.x) + ", " + std::to_string(t.y) + ", " + std::to_string(t.z) +
           ")";
}

std::string block_name() { return thread_name(blockIdx); }

// ---- fiber switching (annotated for AddressSanitizer) ----------------------------------------

void switch_context(ucontext_t* from, ucontext_t* to, const void* to_stack, size_t to_size) {
#if GPUNN_EMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, to_stack, to_size);
    swapcontext(from, to);
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
    (void)to_stack;
    (void)to_size;
    swapcontext(from, to);
#endif
}

// Leave a fiber that will never be resumed (it finished, or its block is abandoned).
[[noreturn]] void leave_for_good(ucontext_t* to, const void* to_stack, size_t to_size) {
#if GPUNN_EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, to_stack, to_size);
#else
    (void)to_stack;
    (void)to_size;
#endif
    setcontext(to);
    std::abort();  // setcontext returns only if `to` is not a valid context
}

// A pass runs every live thread of the block up to its next barrier, one after another. The
// order alternates between ascending and descending thread index with the block and with each
// pass, so that a missing barrier between a write by one thread and a read by a neighbour on
// either side (slot[t - 1] as well as slot[t + 1]) lets the reader run first in some pass and
// see the poisoned (NaN) or stale value instead of the neighbour's write.
bool pass_is_reversed(unsigned pass) {
    return ((blockIdx.x + blockIdx.y + blockIdx.z + pass) & 1u) != 0;
}

// The next fiber after the current one in this pass's order that can run, or nthreads for
// none. Pass w->nthreads as `after` to start a pass.
size_t next_runnable_after(const Worker* w, size_t after) {
    if (w->reverse) {
        size_t i = after;  // from nthreads (start) or the current fiber, walk down
        while (i > 0) {
            --i;
            if (w->fibers[i].state == FiberState::Runnable) return i;
        }
        return w->nthreads;
    }
    size_t i = after == w->nthreads ? 0 : after + 1;
    while (i < w->nthreads && w->fibers[i].state != FiberState::Runnable) ++i;
    return i;
}

size_t next_runnable(Worker* w) { return next_runnable_after(w, w->current); }

// Switch from the current fiber (or the scheduler) to fiber i, or to the scheduler when
// i == nthreads. With `dying`, the current fiber is never resumed.
void resume(Worker* w, ucontext_t* from, size_t i, bool dying) {
    ucontext_t* to = &w->scheduler;
    const void* stack = w->sched_stack_bottom;
    size_t size = w->sched_stack_size;
    if (i < w->nthreads) {
        Fiber& f = w->fibers[i];
        w->current = i;
        threadIdx = f.tid;
        to = &f.ctx;
        stack = f.stack;
        size = kStackBytes;
    }
    if (dying) leave_for_good(to, stack, size);
    switch_context(from, to, stack, size);
}

void fiber_entry() {
    Worker* w = tls_worker;
#if GPUNN_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    try {
        w->launch->kernel->body(w->launch->args);
    } catch (Fault& fault) {
        w->faulted = true;
        w->fault = fault.message;
        resume(w, nullptr, w->nthreads, true);
    }
    w->fibers[w->current].state = FiberState::Done;
    resume(w, nullptr, next_runnable(w), true);
}

// ---- one block ------------------------------------------------------------------------------

void reset_shared(Worker* w, size_t dynamic_bytes) {
    // Poison what the previous block used: a read before any write then yields NaN.
#if GPUNN_EMU_ASAN
    __asan_unpoison_memory_region(w->arena, w->arena_high);
#endif
    std::memset(w->arena, 0xFF, w->arena_high);
#if GPUNN_EMU_ASAN
    // Outside the arrays declared so far, any access is an overflow of one of them.
    __asan_poison_memory_region(w->arena + dynamic_bytes, kSharedCapacity - dynamic_bytes);
#endif
    w->arena_used = dynamic_bytes;
    w->arena_high = dynamic_bytes;
    ++w->block_serial;
}

void prepare_fibers(Worker* w) {
    const dim3 b = w->launch->block;
    w->nthreads = size_t(b.x) * b.y * b.z;
    if (!w->blank_ready) {
        getcontext(&w->blank);
        w->blank_ready = true;
    }
    if (w->fibers.size() < w->nthreads) w->fibers.resize(w->nthreads);
    size_t i = 0;
    for (unsigned z = 0; z < b.z; ++z) {
        for (unsigned y = 0; y < b.y; ++y) {
            for (unsigned x = 0; x < b.x; ++x, ++i) {
                Fiber& f = w->fibers[i];
                if (f.stack == nullptr) f.stack = static_cast<char*>(std::malloc(kStackBytes));
                f.ctx = w->blank;
                f.ctx.uc_stack.ss_sp = f.stack;
                f.ctx.uc_stack.ss_size = kStackBytes;
                f.ctx.uc_link = nullptr;
                makecontext(&f.ctx, fiber_entry, 0);
                f.state = FiberState::Runnable;
                f.tid = {x, y, z};
            }
        }
    }
}

// After a pass: every live thread must wait at the same barrier. Returns false with a
// message on a mismatch, true when the block has finished or may run another pass.
bool check_barrier(Worker* w, bool* finished, std::string* message) {
    const Fiber* waiting = nullptr;
    const Fiber* done = nullptr;
    size_t nwaiting = 0;
    for (size_t i = 0; i < w->nthreads; ++i) {
        const Fiber& f = w->fibers[i];
        if (f.state == FiberState::Done) {
            if (done == nullptr) done = &f;
            continue;
        }
        ++nwaiting;
        if (waiting == nullptr) {
            waiting = &f;
        } else if (f.barrier_file != waiting->barrier_file ||
                   f.barrier_line != waiting->barrier_line) {
            *message = "threads of block " + block_name() + " wait at different barriers: " +
                       "thread " + thread_name(waiting->tid) + " at __syncthreads() " +
                       where(waiting->barrier_file, waiting->barrier_line) + ", thread " +
                       thread_name(f.tid) + " at __syncthreads() " +
                       where(f.barrier_file, f.barrier_line);
            return false;
        }
    }
    *finished = nwaiting == 0;
    if (nwaiting > 0 && done != nullptr) {
        *message = "__syncthreads() at " + where(waiting->barrier_file, waiting->barrier_line) +
                   " is reached by " + std::to_string(nwaiting) + " of " +
                   std::to_string(w->nthreads) + " threads of block " + block_name() +
                   "; thread " + thread_name(done->tid) +
                   " (and any others) returned without reaching it";
        return false;
    }
    for (size_t i = 0; i < w->nthreads; ++i) w->fibers[i].state = FiberState::Runnable;
    return true;
}

bool run_block_fibers(Worker* w, std::string* message) {
    prepare_fibers(w);
    for (unsigned pass = 0;; ++pass) {
        w->reverse = pass_is_reversed(pass);
        const size_t first = next_runnable_after(w, w->nthreads);
        resume(w, &w->scheduler, first, false);
        if (w->faulted) {
            *message = w->fault;
            return false;
        }
        bool finished = false;
        if (!check_barrier(w, &finished, message)) return false;
        if (finished) return true;
    }
}

bool run_block_plain(Worker* w, std::string* message) {
    const dim3 b = w->launch->block;
    try {
        for (unsigned z = 0; z < b.z; ++z) {
            for (unsigned y = 0; y < b.y; ++y) {
                for (unsigned x = 0; x < b.x; ++x) {
                    threadIdx = {x, y, z};
                    w->launch->kernel->body(w->launch->args);
                }
            }
        }
    } catch (Fault& fault) {
        *message = fault.message;
        return false;
    }
    return true;
}

void run_blocks(Launch* launch) {
    thread_local Worker worker;
    Worker* w = &worker;
    tls_worker = w;
    w->launch = launch;
    w->fiber_mode = launch->kernel->uses_barrier;
    w->faulted = false;
#if GPUNN_EMU_ASAN
    // The scheduler runs on this OS thread's own stack; ASan needs its bounds to switch back.
    pthread_attr_t attr;
    pthread_getattr_np(pthread_self(), &attr);
    pthread_attr_getstack(&attr, &w->sched_stack_bottom, &w->sched_stack_size);
    pthread_attr_destroy(&attr);
#endif
    gridDim = launch->grid;
    blockDim = launch->block;
    const dim3 g = launch->grid;
    for (;;) {
        if (launch->failed.load(std::memory_order_relaxed)) break;
        unsigned long long b = launch->next_block.fetch_add(1);
        if (b >= launch->nblocks) break;
        blockIdx = {unsigned(b % g.x), unsigned((b / g.x) % g.y), unsigned(b / (g.x * g.y))};
        reset_shared(w, launch->dynamic_bytes);
        std::string message;
        bool ok = w->fiber_mode ? run_block_fibers(w, &message) : run_block_plain(w, &message);
        if (!ok) {
            launch->fail(message);
            break;
        }
    }
    w->launch = nullptr;
}

}  // namespace

// ---- hooks called from kernel code ---------------------------------------------------------------

void syncthreads(const char* file, int line) {
    Worker* w = tls_worker;
    if (w == nullptr || w->launch == nullptr) {
        throw Fault{"__syncthreads() at " + where(file, line) + " called outside a launch"};
    }
    if (!w->fiber_mode) {
        throw Fault{"__syncthreads() at " + where(file, line) +
                    " was reached, but the kernel's source (as parsed) shows no barrier, so "
                    "the emulator ran its threads as a loop; call __syncthreads() in the "
                    "kernel body or in a function defined in the same source"};
    }
    Fiber& f = w->fibers[w->current];
    f.state = FiberState::AtBarrier;
    f.barrier_file = file;
    f.barrier_line = line;
    resume(w, &f.ctx, next_runnable(w), false);
}

void* shared_slot(SharedSlot& slot, size_t bytes, size_t align, const char* file, int line) {
    Worker* w = tls_worker;
    if (w == nullptr || w->launch == nullptr) {
        throw Fault{"shared memory at " + where(file, line) + " declared outside a launch"};
    }
    if (slot.block_serial == w->block_serial) return slot.ptr;
    if (align < 16) align = 16;
    size_t offset = (w->arena_used + kSharedRedzone + align - 1) / align * align;
    if (offset + bytes > kSharedCapacity) {
        throw Fault{"shared memory declared at " + where(file, line) + " brings block " +
                    block_name() + " to " + std::to_string(offset + bytes) +
                    " bytes, over the " + std::to_string(kSharedCapacity) + "-byte limit"};
    }
#if GPUNN_EMU_ASAN
    __asan_unpoison_memory_region(w->arena + offset, bytes);
#endif
    w->arena_used = offset + bytes;
    w->arena_high = w->arena_used;
    slot.block_serial = w->block_serial;
    slot.ptr = w->arena + offset;
    return slot.ptr;
}

void* dynamic_shared() {
    Worker* w = tls_worker;
    if (w == nullptr || w->launch == nullptr) throw Fault{"dynamic shared memory outside a launch"};
    return w->arena;
}

void trap(const char* file, int line) {
    throw Fault{"__trap() at " + where(file, line) + " in thread " + thread_name(threadIdx) +
                " of block " + block_name()};
}

int launch(const Kernel& kernel, void** args, const long long* dims, long long shared_bytes,
           int workers, char* error, int error_size) {
    auto report = [&](const std::string& message) {
        std::snprintf(error, size_t(error_size), "%s", message.c_str());
        return 1;
    };
    if (shared_bytes < 0 || size_t(shared_bytes) > kSharedCapacity) {
        return report("dynamic shared memory of " + std::to_string(shared_bytes) +
                      " bytes is outside [0, " + std::to_string(kSharedCapacity) + "]");
    }
    Launch launch;
    launch.kernel = &kernel;
    launch.args = args;
    launch.grid = dim3(unsigned(dims[0]), unsigned(dims[1]), unsigned(dims[2]));
    launch.block = dim3(unsigned(dims[3]), unsigned(dims[4]), unsigned(dims[5]));
    launch.dynamic_bytes = size_t(shared_bytes);
    launch.nblocks = (unsigned long long)dims[0] * dims[1] * dims[2];
    unsigned long long nworkers = workers < 1 ? 1 : (unsigned long long)workers;
    if (nworkers > launch.nblocks) nworkers = launch.nblocks;
    std::vector<std::thread> threads;
    try {
        for (unsigned long long i = 1; i < nworkers; ++i) {
            threads.emplace_back(run_blocks, &launch);
        }
    } catch (const std::system_error&) {
        // Fewer OS threads than asked for: the ones started (and this one) share the grid.
    }
    run_blocks(&launch);
    for (std::thread& t : threads) t.join();
    if (launch.failed.load()) return report("kernel " + std::string(kernel.name) + ": " +
                                            launch.error);
    return 0;
}

}  // namespace gpunn_emu
