// Page copy kernels over the page-first arena: byte movers, independent of dtype and head_dim.
//
// All sizes are in 16-byte vectors (uint4): the wrappers only launch these kernels when every base
// pointer, stride and page size is a multiple of 16 bytes. An index outside the arena (a negative
// slot, a slot >= num_slots) is skipped rather than followed: no access leaves the buffers.
#include "common.cuh"

namespace tk {

constexpr int kCopyThreads = 256;
// Vectors per thread per CTA: four 16-byte loads in flight before the first store.
constexpr int kCopyUnroll = 4;
constexpr int kCopyVecsPerCta = kCopyThreads * kCopyUnroll;
constexpr int kStoreThreads = 128;

__device__ __forceinline__ void copy_chunk(const uint4* __restrict__ src, uint4* __restrict__ dst,
                                           long long num_vecs, long long chunk) {
    const long long first = chunk * kCopyVecsPerCta + threadIdx.x;
    uint4 buf[kCopyUnroll];
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u) {
        const long long v = first + (long long)u * kCopyThreads;
        buf[u] = v < num_vecs ? load16(src + v) : zero_vec();
    }
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u) {
        const long long v = first + (long long)u * kCopyThreads;
        if (v < num_vecs) store16(dst + v, buf[u]);
    }
}

}  // namespace tk

// Argument orders are mirrored by tierd_kernels.plans.

// out[i] = arena[slots[i]] for whole pages. Grid: x = page index i, y = chunk of the page.
extern "C" __global__ void __launch_bounds__(tk::kCopyThreads) tk_gather_pages(
        const uint4* __restrict__ arena, const long long* __restrict__ slots, long long num_slots,
        long long page_vecs, uint4* __restrict__ out) {
    const long long slot = tk::load(slots + blockIdx.x);
    if (slot < 0 || slot >= num_slots) return;
    tk::copy_chunk(arena + slot * page_vecs, out + (long long)blockIdx.x * page_vecs, page_vecs, blockIdx.y);
}

// arena[slots[i]] = src[i] for whole pages. Grid: x = page index i, y = chunk of the page.
extern "C" __global__ void __launch_bounds__(tk::kCopyThreads) tk_scatter_pages(
        const uint4* __restrict__ src, const long long* __restrict__ slots, long long num_slots,
        long long page_vecs, uint4* __restrict__ arena) {
    const long long slot = tk::load(slots + blockIdx.x);
    if (slot < 0 || slot >= num_slots) return;
    tk::copy_chunk(src + (long long)blockIdx.x * page_vecs, arena + slot * page_vecs, page_vecs, blockIdx.y);
}

// Write token i's K and V rows ([num_kv_heads][head_dim], row_vecs vectors each) of one layer at
// flat position slot_mapping[i] = slot * page_tokens + offset; a negative position is padding and
// skipped. Grid: x = token; block = kStoreThreads.
extern "C" __global__ void __launch_bounds__(tk::kStoreThreads) tk_store_kv(
        const uint4* __restrict__ k, long long k_token_stride_vecs, const uint4* __restrict__ v,
        long long v_token_stride_vecs, const long long* __restrict__ slot_mapping, uint4* __restrict__ arena,
        long long num_slots, long long page_tokens, long long page_vecs, long long layer_offset_vecs,
        long long row_vecs) {
    const long long token = blockIdx.x;
    const long long flat = tk::load(slot_mapping + token);
    if (flat < 0) return;
    const long long slot = flat / page_tokens;
    const long long offset = flat % page_tokens;
    if (slot >= num_slots) return;
    uint4* k_dst = arena + slot * page_vecs + layer_offset_vecs + offset * row_vecs;
    uint4* v_dst = k_dst + page_tokens * row_vecs;
    const uint4* k_src = k + token * k_token_stride_vecs;
    const uint4* v_src = v + token * v_token_stride_vecs;
    for (long long i = threadIdx.x; i < row_vecs; i += tk::kStoreThreads) {
        tk::store16(k_dst + i, tk::load16(k_src + i));
        tk::store16(v_dst + i, tk::load16(v_src + i));
    }
}
