// pool.cu: 2D max pooling, forward (values and argmax indices) and backward. NCHW, float32.
// Reference: gpunn.reference.max_pool2d_forward / max_pool2d_backward (PyTorch CPU semantics).
//
//   max_pool2d_forward          one thread per output element; writes y and int64 indices
//   max_pool2d_backward_gather  one thread per input element; sums the windows that chose it
//   max_pool2d_backward_planes  one thread per (n, c) plane; scatters its outputs in order
//
// Window rules (../shared/API.md): padded positions never win (they count as minus infinity);
// on ties the first maximum in row-major window order wins; a NaN always takes over, so a
// window holding NaN outputs NaN and reports the position of its last NaN (PyTorch CPU).
// Indices are positions h * W + w in the (n, c) input plane.
// Limits: the host guarantees that every window holds at least one input element (padding at
// most half the kernel, ceil_mode windows never starting in the bottom/right padding);
// max_pool2d_backward_planes skips an index outside [0, H*W) instead of writing out of bounds.
#include "common.cuh"

// One thread per output element (n, c, oh, ow); loops over the window's valid rows and
// columns. Consecutive threads take consecutive ow, so the y and indices stores coalesce.
extern "C" __global__ void max_pool2d_forward(const float* x, float* y, long long* indices,
                                              int N, int C, int H, int W, int OH, int OW, int R,
                                              int S, int stride_h, int stride_w, int pad_h,
                                              int pad_w, int dil_h, int dil_w) {
    const index64 total = (index64)N * C * OH * OW;
    const index64 idx = (index64)blockIdx.x * blockDim.x + threadIdx.x;  // range [0, total)
    if (idx >= total) {
        return;
    }
    const int ow = (int)(idx % OW);
    const int oh = (int)((idx / OW) % OH);
    const index64 nc = idx / ((index64)OH * OW);  // range [0, N*C)
    const float* plane = x + nc * H * W;

    // Window rows h0, h0 + dil_h, ..., h0 + (R-1)*dil_h; keep those inside [0, H).
    const int h0 = oh * stride_h - pad_h;
    const int w0 = ow * stride_w - pad_w;
    const int h_begin = h0 < 0 ? h0 + ceil_div(-h0, dil_h) * dil_h : h0;
    const int w_begin = w0 < 0 ? w0 + ceil_div(-w0, dil_w) * dil_w : w0;
    const int h_end = min(h0 + (R - 1) * dil_h + 1, H);
    const int w_end = min(w0 + (S - 1) * dil_w + 1, W);

    // Start from the first valid element: the same result as starting from minus infinity
    // with that element's index, without needing an infinity constant.
    index64 best_index = (index64)h_begin * W + w_begin;
    float best = plane[best_index];
    for (int ih = h_begin; ih < h_end; ih += dil_h) {
        for (int iw = w_begin; iw < w_end; iw += dil_w) {
            const index64 i = (index64)ih * W + iw;
            const float v = plane[i];
            // Strictly greater keeps the first maximum; isnan lets a NaN take over.
            if (v > best || isnan(v)) {
                best = v;
                best_index = i;
            }
        }
    }
    y[idx] = best;
    indices[idx] = best_index;
}

// One thread per input element (n, c, ih, iw). A gather, not a scatter: the thread visits,
// in row-major (oh, ow) order, every output whose window contains (ih, iw) and adds its
// gradient when that output chose this element. No atomics, a fixed summation order, so two
// runs are bit-identical and the sum order equals a sequential scatter over the outputs.
extern "C" __global__ void max_pool2d_backward_gather(const float* grad_y,
                                                      const long long* indices, float* grad_x,
                                                      int N, int C, int H, int W, int OH,
                                                      int OW, int R, int S, int stride_h,
                                                      int stride_w, int pad_h, int pad_w,
                                                      int dil_h, int dil_w) {
    const index64 total = (index64)N * C * H * W;
    const index64 idx = (index64)blockIdx.x * blockDim.x + threadIdx.x;  // range [0, total)
    if (idx >= total) {
        return;
    }
    const int iw = (int)(idx % W);
    const int ih = (int)((idx / W) % H);
    const index64 nc = idx / ((index64)H * W);  // range [0, N*C)
    const index64 me = (index64)ih * W + iw;
    const float* gy = grad_y + nc * OH * OW;
    const long long* ind = indices + nc * OH * OW;

    // Row oh covers ih when ih + pad_h = oh * stride_h + r * dil_h for some r in [0, R):
    // oh in [ceil((ih + pad_h - (R-1)*dil_h) / stride_h), floor((ih + pad_h) / stride_h)]
    // and (ih + pad_h - oh * stride_h) divisible by dil_h. Columns likewise.
    const int top = ih + pad_h;
    const int left = iw + pad_w;
    const int oh_num = top - (R - 1) * dil_h;
    const int ow_num = left - (S - 1) * dil_w;
    const int oh_lo = oh_num <= 0 ? 0 : ceil_div(oh_num, stride_h);
    const int ow_lo = ow_num <= 0 ? 0 : ceil_div(ow_num, stride_w);
    const int oh_hi = min(top / stride_h, OH - 1);
    const int ow_hi = min(left / stride_w, OW - 1);

    float acc = 0.0f;
    for (int oh = oh_lo; oh <= oh_hi; ++oh) {
        if ((top - oh * stride_h) % dil_h != 0) {
            continue;
        }
        for (int ow = ow_lo; ow <= ow_hi; ++ow) {
            if ((left - ow * stride_w) % dil_w != 0) {
                continue;
            }
            const index64 o = (index64)oh * OW + ow;
            if (ind[o] == me) {
                acc += gy[o];
            }
        }
    }
    grad_x[idx] = acc;
}

// One thread per (n, c) plane: adds each output's gradient, in row-major (oh, ow) order,
// into the element its index names. Used when the window geometry is unknown (the public
// max_pool2d_backward(grad_y, indices, input_shape)); deterministic because one thread owns
// a plane. grad_x must be zeroed by the caller.
extern "C" __global__ void max_pool2d_backward_planes(const float* grad_y,
                                                      const long long* indices, float* grad_x,
                                                      int N, int C, int H, int W, int OH,
                                                      int OW) {
    const index64 nc = (index64)blockIdx.x * blockDim.x + threadIdx.x;  // range [0, N*C)
    if (nc >= (index64)N * C) {
        return;
    }
    const index64 plane_in = (index64)H * W;
    const index64 plane_out = (index64)OH * OW;
    const float* gy = grad_y + nc * plane_out;
    const long long* ind = indices + nc * plane_out;
    float* gx = grad_x + nc * plane_in;
    for (index64 o = 0; o < plane_out; ++o) {
        const long long k = ind[o];
        if (k >= 0 && k < plane_in) {
            gx[k] += gy[o];
        }
    }
}
