// Just enough of CUDA's device dialect for g++ to compile a kernel source as plain C++, so the
// tests can run the kernel's own code on the CPU over its whole launch grid (runner.cpp).
// Single-threaded: the built-in index variables are globals set by the grid loop.
#pragma once

#include <math.h>  // floorf, fabsf, fmaxf, fminf in the global namespace, as CUDA has them
#include <cstring>

#define MD_CPU_SHIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct md_uint3 {
    unsigned int x, y, z;
};

static md_uint3 threadIdx, blockIdx, blockDim, gridDim;

// float -> IEEE binary16 bits, round to nearest even (GCC's _Float16 on x86-64 does it in
// software or F16C, either way correctly rounded, like PTX cvt.rn.f16.f32).
inline unsigned short md_shim_half_bits(float v)
{
    _Float16 h = (_Float16)v;
    unsigned short bits;
    std::memcpy(&bits, &h, sizeof bits);
    return bits;
}
