// NV12 / P016 picture -> one network input tensor, one thread per output pixel.
//
// This kernel computes the function written down once, as "THE CONVENTION", at the top of
// milesdeep/pipeline/preprocess.py (the NumPy reference it is tested against): rotation as a
// coordinate map, half-pixel centres, tent filter of half-width f (f = shrink factor when
// antialiasing, else 1), edge replicate, chroma centre-sited at luma 2k + 0.5, planes resampled
// first and colour-converted second, clamp to [0, 255], then (v - mean) * scale.
// The step numbers in the comments below refer to that text.
//
// It includes no header, so NVRTC compiles it as is; the tests also compile it as C++ with
// tests/kernel_shim/cuda_shim.h (which defines MD_CPU_SHIM) and run it over its whole grid.
// Scalar parameters are built by milesdeep.pipeline.kernels.plan_launch; keep the two in step.

__device__ __forceinline__ int md_clampi(int v, int lo, int hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

// Sample scale to 8-bit units (step 5).
template <typename T> __device__ __forceinline__ float md_unit();
template <> __device__ __forceinline__ float md_unit<unsigned char>() { return 1.0f; }
template <> __device__ __forceinline__ float md_unit<unsigned short>() { return 1.0f / 256.0f; }

// Tent-filter a plane of NC interleaved components at stored coordinate (cr, cc) with half-widths
// (fr, fc), replicating edges (step 3). pitch is in bytes. Writes NC normalised sums to res.
template <typename T, int NC>
__device__ __forceinline__ void md_tent(const T* plane, int pitch, int n_rows, int n_cols,
                                        float cr, float fr, float cc, float fc, float* res)
{
    const int r_lo = (int)floorf(cr - fr) + 1, r_hi = (int)floorf(cr + fr);
    const int c_lo = (int)floorf(cc - fc) + 1, c_hi = (int)floorf(cc + fc);
    float acc[NC];
    for (int k = 0; k < NC; ++k) acc[k] = 0.0f;
    float wsum_r = 0.0f, wsum_c = 0.0f;
    for (int c = c_lo; c <= c_hi; ++c) wsum_c += fmaxf(0.0f, 1.0f - fabsf((float)c - cc) / fc);
    for (int r = r_lo; r <= r_hi; ++r) {
        const float wr = fmaxf(0.0f, 1.0f - fabsf((float)r - cr) / fr);
        if (wr == 0.0f) continue;
        const T* row = (const T*)((const char*)plane + (long long)md_clampi(r, 0, n_rows - 1) * pitch);
        float racc[NC];
        for (int k = 0; k < NC; ++k) racc[k] = 0.0f;
        for (int c = c_lo; c <= c_hi; ++c) {
            const float wc = fmaxf(0.0f, 1.0f - fabsf((float)c - cc) / fc);
            const T* px = row + md_clampi(c, 0, n_cols - 1) * NC;
            for (int k = 0; k < NC; ++k) racc[k] += wc * (float)px[k];
        }
        for (int k = 0; k < NC; ++k) acc[k] += wr * racc[k];
        wsum_r += wr;
    }
    const float norm = 1.0f / (wsum_r * wsum_c);
    for (int k = 0; k < NC; ++k) res[k] = acc[k] * norm;
}

// float -> IEEE half bits, round to nearest even (step 7). No cuda_fp16.h: NVRTC ships none.
__device__ __forceinline__ unsigned short md_half_bits(float v)
{
#if defined(__CUDA_ARCH__)
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
#elif defined(MD_CPU_SHIM)
    return md_shim_half_bits(v);
#else
    return 0;  // nvcc's host pass: device code is never run here
#endif
}

__device__ __forceinline__ void md_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void md_store(unsigned short* p, float v) { *p = md_half_bits(v); }

template <typename In, typename Out>
__device__ __forceinline__ void md_nv12_to_tensor(
    const In* y, const In* uv, Out* out,
    int y_pitch, int uv_pitch, int src_h, int src_w, int quarter_turns, int slot,
    int out_h, int out_w, int off_y, int off_x,
    float scale_y, float scale_x, float support_y, float support_x,
    float m00, float m01, float m02, float m10, float m11, float m12,
    float m20, float m21, float m22, float b0, float b1, float b2,
    float mean0, float mean1, float mean2, float out_scale, int nhwc)
{
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int i = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= out_h || j >= out_w) return;

    // Steps 2-3: display coordinates of this output pixel's filter centre.
    const float cy = ((float)(i + off_y) + 0.5f) * scale_y - 0.5f;
    const float cx = ((float)(j + off_x) + 0.5f) * scale_x - 0.5f;
    // Step 1: display -> stored (row centre cr, half-width fr; column cc, fc).
    float cr, fr, cc, fc;
    switch (quarter_turns) {
    case 1:  cr = (float)(src_h - 1) - cx; fr = support_x; cc = cy; fc = support_y; break;
    case 2:  cr = (float)(src_h - 1) - cy; fr = support_y; cc = (float)(src_w - 1) - cx; fc = support_x; break;
    case 3:  cr = cx; fr = support_x; cc = (float)(src_w - 1) - cy; fc = support_y; break;
    default: cr = cy; fr = support_y; cc = cx; fc = support_x; break;
    }
    // Step 4: luma at (cr, cc); chroma at the centre-sited chroma coordinate.
    float lum, ch[2];
    md_tent<In, 1>(y, y_pitch, src_h, src_w, cr, fr, cc, fc, &lum);
    md_tent<In, 2>(uv, uv_pitch, (src_h + 1) / 2, (src_w + 1) / 2,
                   (cr + 0.5f) * 0.5f - 0.5f, fmaxf(1.0f, fr * 0.5f),
                   (cc + 0.5f) * 0.5f - 0.5f, fmaxf(1.0f, fc * 0.5f), ch);
    // Steps 5-6 (matrix rows already in the output's channel order).
    const float unit = md_unit<In>();
    const float Y = lum * unit, U = ch[0] * unit, V = ch[1] * unit;
    float v[3] = {m00 * Y + m01 * U + m02 * V + b0,
                  m10 * Y + m11 * U + m12 * V + b1,
                  m20 * Y + m21 * U + m22 * V + b2};
    const float mean[3] = {mean0, mean1, mean2};
    // Step 7.
    const long long plane = (long long)out_h * out_w;
    Out* dst = out + (long long)slot * 3 * plane;
    for (int k = 0; k < 3; ++k) {
        const float c = fminf(fmaxf(v[k], 0.0f), 255.0f);
        const long long at = nhwc ? ((long long)i * out_w + j) * 3 + k
                                  : k * plane + (long long)i * out_w + j;
        md_store(dst + at, (c - mean[k]) * out_scale);
    }
}

// The entry points: input sample type (u8: NV12, u16: P016) x output (f32, f16 as raw bits).
#define MD_ENTRY(NAME, IN, OUT)                                                                 \
    extern "C" __global__ void NAME(                                                           \
        const IN* y, const IN* uv, OUT* out,                                                   \
        int y_pitch, int uv_pitch, int src_h, int src_w, int quarter_turns, int slot,          \
        int out_h, int out_w, int off_y, int off_x,                                            \
        float scale_y, float scale_x, float support_y, float support_x,                        \
        float m00, float m01, float m02, float m10, float m11, float m12,                      \
        float m20, float m21, float m22, float b0, float b1, float b2,                         \
        float mean0, float mean1, float mean2, float out_scale, int nhwc)                      \
    {                                                                                          \
        md_nv12_to_tensor<IN, OUT>(y, uv, out, y_pitch, uv_pitch, src_h, src_w, quarter_turns, \
                                   slot, out_h, out_w, off_y, off_x, scale_y, scale_x,        \
                                   support_y, support_x, m00, m01, m02, m10, m11, m12, m20,    \
                                   m21, m22, b0, b1, b2, mean0, mean1, mean2, out_scale,       \
                                   nhwc);                                                      \
    }

MD_ENTRY(nv12_to_tensor_u8_f32, unsigned char, float)
MD_ENTRY(nv12_to_tensor_u8_f16, unsigned char, unsigned short)
MD_ENTRY(nv12_to_tensor_u16_f32, unsigned short, float)
MD_ENTRY(nv12_to_tensor_u16_f16, unsigned short, unsigned short)
