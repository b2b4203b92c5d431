// Runs the kernels of milesdeep/pipeline/kernels/preprocess.cu on the CPU, launched the way
// cuLaunchKernel launches them: a name, grid and block sizes, and an array of pointers to the
// argument values. The kernel's parameter types come from its own signature, so a Python
// caller that packs the wrong number or size of arguments is caught by md_param_sizes.
#include "cuda_shim.h"
#include "preprocess.cu"

#include <cstddef>
#include <type_traits>
#include <utility>

namespace {

template <typename... A, std::size_t... I>
void call(void (*k)(A...), void** params, std::index_sequence<I...>)
{
    k(*static_cast<std::remove_reference_t<A>*>(params[I])...);
}

template <typename... A>
void run_grid(void (*k)(A...), const unsigned* grid, const unsigned* block, void** params)
{
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx)
                for (unsigned tz = 0; tz < block[2]; ++tz)
                    for (unsigned ty = 0; ty < block[1]; ++ty)
                        for (unsigned tx = 0; tx < block[0]; ++tx) {
                            blockIdx = {bx, by, bz};
                            threadIdx = {tx, ty, tz};
                            call(k, params, std::index_sequence_for<A...>{});
                        }
}

template <typename... A>
int sizes(void (*)(A...), int* out, int cap)
{
    const int n[] = {static_cast<int>(sizeof(A))...};
    for (int i = 0; i < static_cast<int>(sizeof...(A)) && i < cap; ++i) out[i] = n[i];
    return static_cast<int>(sizeof...(A));
}

struct Entry {
    const char* name;
    void (*run)(const unsigned*, const unsigned*, void**);
    int (*sizes)(int*, int);
};

#define MD_TABLE(K) {#K, [](const unsigned* g, const unsigned* b, void** p) { run_grid(K, g, b, p); }, \
                     [](int* o, int c) { return sizes(K, o, c); }}

const Entry entries[] = {
    MD_TABLE(nv12_to_tensor_u8_f32),
    MD_TABLE(nv12_to_tensor_u8_f16),
    MD_TABLE(nv12_to_tensor_u16_f32),
    MD_TABLE(nv12_to_tensor_u16_f16),
};

const Entry* find(const char* name)
{
    for (const Entry& e : entries)
        if (std::strcmp(e.name, name) == 0) return &e;
    return nullptr;
}

}  // namespace

// Returns 0, or -1 for an unknown kernel name.
extern "C" int md_launch(const char* name, const unsigned* grid, const unsigned* block,
                         void** params)
{
    const Entry* e = find(name);
    if (!e) return -1;
    e->run(grid, block, params);
    return 0;
}

// Writes sizeof of each parameter (up to cap) and returns their count, or -1.
extern "C" int md_param_sizes(const char* name, int* out, int cap)
{
    const Entry* e = find(name);
    return e ? e->sizes(out, cap) : -1;
}
