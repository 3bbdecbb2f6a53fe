// rnn.cu: one tanh-RNN step, fused, forward and backward. Row-major float32.
// Reference: gpunn.reference.rnn_tanh_forward / rnn_tanh_backward.
//
//   rnn_tanh_cell_forward   one thread per (n, j): h = tanh(gx + gh + b_ih + b_hh)
//   rnn_tanh_cell_backward  one thread per (n, j): dpre = (dh_a + dh_b) * (1 - h^2)
//
// Shapes: gx, gh, h, dh_a, dh_b, dpre (N, HID); biases (HID). The GEMMs x W_ih^T and
// h W_hh^T run outside (cuBLAS); these kernels do the element-wise work in one pass.
// Limits: N * HID below 2^31 * blockDim (grid); offsets are 64-bit.
#include "common.cuh"

// One thread per (n, j), j < HID: h = tanh(gx + gh + b_ih + b_hh), the recurrent part and
// the biases added only when present (unused inputs are never read). Coalesced over j.
extern "C" __global__ void rnn_tanh_cell_forward(const float* gx, const float* gh,
                                                 const float* b_ih, const float* b_hh, float* h,
                                                 int N, int HID, int has_gh, int has_bias) {
    const index64 idx = (index64)blockIdx.x * blockDim.x + threadIdx.x;  // range [0, N*HID)
    if (idx >= (index64)N * HID) {
        return;
    }
    const int j = (int)(idx % HID);
    float a = gx[idx];
    if (has_gh) {
        a += gh[idx];
    }
    if (has_bias) {
        a += b_ih[j] + b_hh[j];
    }
    h[idx] = safe_tanhf(a);
}

// One thread per (n, j), j < HID. dh = dh_a + dh_b (the output gradient dy_t and the gradient
// arriving through h_t from step t+1, each optional, summed here so that no separate add pass
// runs); the pre-activation gradient is dh * tanh'(a) = dh * (1 - h^2), from the saved h.
extern "C" __global__ void rnn_tanh_cell_backward(const float* dh_a, const float* dh_b,
                                                  const float* h, float* dpre, int N, int HID,
                                                  int has_dh_a, int has_dh_b) {
    const index64 idx = (index64)blockIdx.x * blockDim.x + threadIdx.x;  // range [0, N*HID)
    if (idx >= (index64)N * HID) {
        return;
    }
    float dh = 0.0f;
    if (has_dh_a) {
        dh += dh_a[idx];
    }
    if (has_dh_b) {
        dh += dh_b[idx];
    }
    const float hv = h[idx];
    dpre[idx] = dh * (1.0f - hv * hv);
}
