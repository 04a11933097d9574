// What both prefill kernels (prefill.cu on CUDA cores, prefill_mma.cu on tensor cores) share: their
// argument block, the sequence a CTA works on, and the clamping that keeps every access in bounds.
//
// Queries are packed: q[total_q_tokens][num_heads][HEAD_DIM] with sequence s at rows
// cu_q_lens[s]..cu_q_lens[s+1). The j-th of the q_len query tokens of a sequence sits at position
// seq_len - q_len + j and sees the kv positions 0..that position.
#ifndef TIERD_KERNELS_PREFILL_COMMON_CUH
#define TIERD_KERNELS_PREFILL_COMMON_CUH

#include "common.cuh"

namespace tk {

struct PrefillArgs {
    long long q_stride_token;
    long long q_stride_head;
    int total_q_tokens;
    long long slot_stride;
    long long layer_offset;
    int num_slots;
    int num_kv_heads;
    int max_pages;
    int num_heads;
    float scale;
};

// One sequence as seen by a CTA: its query rows and key range.
struct PrefillSeq {
    int seq;
    int kv_head;
    int group_size;  // q heads per kv head
    int q_begin;     // first query token of the sequence in q and out
    int q_len;
    int seq_len;
};

// The sequence of this CTA (blockIdx.y) and kv head (blockIdx.z). Out-of-range cu_q_lens or
// seq_lens are clamped so that no access leaves the buffers.
template <int PAGE_TOKENS>
__device__ __forceinline__ PrefillSeq prefill_seq(const int* __restrict__ cu_q_lens, const int* __restrict__ seq_lens,
                                                  const PrefillArgs& a) {
    PrefillSeq sq;
    sq.seq = blockIdx.y;
    sq.kv_head = blockIdx.z;
    sq.group_size = a.num_heads / a.num_kv_heads;
    sq.q_begin = iclamp(load(cu_q_lens + sq.seq), 0, a.total_q_tokens);
    sq.q_len = iclamp(load(cu_q_lens + sq.seq + 1), sq.q_begin, a.total_q_tokens) - sq.q_begin;
    sq.seq_len = iclamp(load(seq_lens + sq.seq), 0, a.max_pages * PAGE_TOKENS);
    return sq;
}

__device__ __forceinline__ PrefillArgs prefill_args(long long q_stride_token, long long q_stride_head,
                                                    int total_q_tokens, long long slot_stride,
                                                    long long layer_offset, int num_slots, int num_kv_heads,
                                                    int max_pages, int num_heads, float scale) {
    PrefillArgs a;
    a.q_stride_token = q_stride_token;
    a.q_stride_head = q_stride_head;
    a.total_q_tokens = total_q_tokens;
    a.slot_stride = slot_stride;
    a.layer_offset = layer_offset;
    a.num_slots = num_slots;
    a.num_kv_heads = num_kv_heads;
    a.max_pages = max_pages;
    a.num_heads = num_heads;
    a.scale = scale;
    return a;
}

}  // namespace tk

#endif  // TIERD_KERNELS_PREFILL_COMMON_CUH
