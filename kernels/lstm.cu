// lstm.cu: one LSTM step, fused, forward and backward. Row-major float32; gate order i, f, g, o.
// Reference: gpunn.reference.lstm_cell_forward / lstm_forward / lstm_backward.
//
//   lstm_cell_forward   one thread per (n, j): pre-activations -> gates, c and h
//   lstm_cell_backward  one thread per (n, j): dh, dc and the saved gates -> dgates, dc_prev
//
// Shapes: pre-activations gx, gh and dgates (N, 4*HID), gate q of column j at q*HID + j;
// biases (4*HID); c_prev, c, h, dh, dc (N, HID). The GEMMs x W_ih^T and h W_hh^T run outside
// (cuBLAS); these kernels do the element-wise work so that it costs one pass over memory.
// Limits: N * 4 * HID may pass 2^31 (64-bit offsets); N * HID below 2^31 * blockDim (grid).
#include "common.cuh"

// One thread per (n, j), j < HID. Reads the four pre-activations of column j (coalesced over
// j within each gate), adds the recurrent part and both biases when present, and writes
// h, c and, when save_gates, the activated gates i, f, g, o for the backward pass.
// Unused optional inputs (has_gh == 0, has_bias == 0) are never read.
extern "C" __global__ void lstm_cell_forward(const float* gx, const float* gh, const float* b_ih,
                                             const float* b_hh, const float* c_prev, float* h,
                                             float* c, float* gates, int N, int HID, int has_gh,
                                             int has_bias, int save_gates) {
    const index64 idx = (index64)blockIdx.x * blockDim.x + threadIdx.x;  // range [0, N*HID)
    if (idx >= (index64)N * HID) {
        return;
    }
    const int j = (int)(idx % HID);
    const index64 n = idx / HID;
    const index64 row = n * 4 * HID + j;  // offset of gate i, column j, in row n

    // a_q = gx + gh + b_ih + b_hh for q in i, f, g, o
    float a[4];
    for (int q = 0; q < 4; ++q) {
        float v = gx[row + q * HID];
        if (has_gh) {
            v += gh[row + q * HID];
        }
        if (has_bias) {
            v += b_ih[q * HID + j] + b_hh[q * HID + j];
        }
        a[q] = v;
    }
    const float i = sigmoidf(a[0]);
    const float f = sigmoidf(a[1]);
    const float g = safe_tanhf(a[2]);
    const float o = sigmoidf(a[3]);

    // c = f * c_prev + i * g;  h = o * tanh(c)
    const float c_new = f * c_prev[idx] + i * g;
    c[idx] = c_new;
    h[idx] = o * safe_tanhf(c_new);
    if (save_gates) {
        gates[row] = i;
        gates[row + HID] = f;
        gates[row + 2 * HID] = g;
        gates[row + 3 * HID] = o;
    }
}

// One thread per (n, j), j < HID. dh = dh_a + dh_b (the output gradient dy_t and the
// gradient arriving through h_t from step t+1, each optional, summed here so that no separate
// add pass runs); dc (optional) is the gradient arriving through c_t. Writes the gradients of
// the four pre-activations and dc_prev. dc and dc_prev may be the same buffer: each thread
// reads its own element before writing it.
extern "C" __global__ void lstm_cell_backward(const float* dh_a, const float* dh_b,
                                              const float* dc, const float* gates,
                                              const float* c_prev, const float* c, float* dgates,
                                              float* dc_prev, int N, int HID, int has_dh_a,
                                              int has_dh_b, int has_dc) {
    const index64 idx = (index64)blockIdx.x * blockDim.x + threadIdx.x;  // range [0, N*HID)
    if (idx >= (index64)N * HID) {
        return;
    }
    const int j = (int)(idx % HID);
    const index64 n = idx / HID;
    const index64 row = n * 4 * HID + j;

    float dh = 0.0f;
    if (has_dh_a) {
        dh += dh_a[idx];
    }
    if (has_dh_b) {
        dh += dh_b[idx];
    }
    const float dc_in = has_dc ? dc[idx] : 0.0f;
    const float i = gates[row];
    const float f = gates[row + HID];
    const float g = gates[row + 2 * HID];
    const float o = gates[row + 3 * HID];
    const float tc = safe_tanhf(c[idx]);  // the tanh(c) of the forward pass, recomputed

    // h = o * tanh(c):  do = dh * tanh(c);  dc_total = dc + dh * o * (1 - tanh(c)^2)
    const float d_o = dh * tc;
    const float dc_total = dc_in + dh * o * (1.0f - tc * tc);
    // c = f * c_prev + i * g
    const float d_i = dc_total * g;
    const float d_f = dc_total * c_prev[idx];
    const float d_g = dc_total * i;
    dc_prev[idx] = dc_total * f;

    // Through the activations: sigmoid' = s (1 - s), tanh' = 1 - t^2.
    dgates[row] = d_i * i * (1.0f - i);
    dgates[row + HID] = d_f * f * (1.0f - f);
    dgates[row + 2 * HID] = d_g * (1.0f - g * g);
    dgates[row + 3 * HID] = d_o * o * (1.0f - o);
}
