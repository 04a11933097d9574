// Paged attention for decode: one query token per sequence, K/V read from the page-first arena.
//
// Arena: [num_slots][num_layers][2 (K,V)][PAGE_TOKENS][num_kv_heads][HEAD_DIM] elements of T.
// Grid: x = kv_head * head_tiles + head_tile, y = sequence, z = split; block = kDecodeThreads.
// A CTA serves up to HEADS_PER_CTA query heads of one GQA group, so each K/V row it loads is used
// by all of them. Its 4 warps are cut into "streams" of kLanesPerRow lanes; stream i takes tokens
// i, i + kStreams, ... of the CTA's split, keeps its own online softmax (fp32, log2 domain), and
// the streams are merged through shared memory at the end. With num_splits > 1 (flash-decoding)
// each split writes a normalised partial output and its log-sum-exp, and tk_decode_reduce merges
// the splits; with num_splits == 1 the CTA writes the output directly.
//
// Specialisation macros (set by tierd_kernels.sources): TK_SCALAR_T, TK_HEAD_DIM, TK_PAGE_TOKENS,
// TK_HEADS_PER_CTA.
#include "common.cuh"

namespace tk {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * kWarpSize;
// Tokens a stream loads per loop trip: two K and two V vectors in flight per lane hide more of
// the memory latency than one, for a few more registers.
constexpr int kDecodeUnroll = 2;
// Upper bound on splits per sequence; the planner never asks for more (shared memory of the reduce).
constexpr int kMaxSplits = 128;

struct DecodeArgs {
    long long q_stride_seq;
    long long q_stride_head;
    long long slot_stride;
    long long layer_offset;
    int num_slots;
    int num_kv_heads;
    int max_pages;
    int num_heads;
    float scale;
    int tokens_per_split;
    int num_splits;
};

// Where one CTA of tk_decode_partial works: its sequence, kv head, q heads and token range.
struct DecodeWork {
    int seq;
    int kv_head;
    int first_head;  // first q head of the CTA's tile
    int heads_here;  // q heads of the tile that exist (the last tile of a group may be partial)
    int split;
    int begin;       // token range [begin, end) of this split
    int end;
};

template <int PAGE_TOKENS, int HEADS_PER_CTA>
__device__ __forceinline__ DecodeWork decode_work(const int* __restrict__ seq_lens, const DecodeArgs& a) {
    DecodeWork w;
    const int group = a.num_heads / a.num_kv_heads;
    const int head_tiles = (group + HEADS_PER_CTA - 1) / HEADS_PER_CTA;
    const int head_tile = blockIdx.x % head_tiles;
    w.kv_head = blockIdx.x / head_tiles;
    w.seq = blockIdx.y;
    w.split = blockIdx.z;
    w.first_head = w.kv_head * group + head_tile * HEADS_PER_CTA;
    w.heads_here = imin(HEADS_PER_CTA, group - head_tile * HEADS_PER_CTA);
    // Lengths beyond the block table cannot be read; negative ones mean "no keys".
    const int seq_len = iclamp(load(seq_lens + w.seq), 0, a.max_pages * PAGE_TOKENS);
    // The last split takes every remaining token, so a planner that underestimated the longest
    // sequence costs parallelism, never correctness.
    w.begin = w.split * a.tokens_per_split;
    w.end = w.split == a.num_splits - 1 ? seq_len : imin(w.begin + a.tokens_per_split, seq_len);
    return w;
}

// This lane's slice of each q row of the tile, pre-scaled so that scores come out in log2 units.
// Heads past the group (a partial last tile) read a valid head and are never written.
template <typename T, int HEAD_DIM, int HEADS_PER_CTA>
__device__ __forceinline__ void load_decode_queries(const T* __restrict__ q, const DecodeArgs& a,
                                                    const DecodeWork& w, int lane_in_row,
                                                    float (&qf)[HEADS_PER_CTA][RowLayout<T, HEAD_DIM>::kElemsPerLane]) {
    typedef RowLayout<T, HEAD_DIM> L;
    const float qk_scale = a.scale * kLog2e;
#pragma unroll
    for (int g = 0; g < HEADS_PER_CTA; ++g) {
        const int head = w.first_head + imin(g, w.heads_here - 1);
        const T* q_row = q + w.seq * a.q_stride_seq + head * a.q_stride_head;
#pragma unroll
        for (int j = 0; j < L::kVecsPerLane; ++j) {
#pragma unroll
            for (int i = 0; i < L::kVecElems; ++i) {
                qf[g][j * L::kVecElems + i] = to_float(load(q_row + L::vec_offset(j, lane_in_row) + i)) * qk_scale;
            }
        }
    }
}

// Load the K and V vectors of token t for this lane, or zeros (and valid = false) when t is past the
// split or its slot is outside the arena.
template <typename T, int HEAD_DIM, int PAGE_TOKENS>
__device__ __forceinline__ bool load_decode_token(const T* __restrict__ layer_base, const int* __restrict__ table,
                                                  const DecodeArgs& a, int t, int end, int lane_in_row,
                                                  uint4* k_raw, uint4* v_raw) {
    typedef RowLayout<T, HEAD_DIM> L;
    bool valid = t < end;
    int slot = 0;
    if (valid) {
        slot = load(table + t / PAGE_TOKENS);
        valid = slot >= 0 && slot < a.num_slots;
    }
#pragma unroll
    for (int j = 0; j < L::kVecsPerLane; ++j) {
        k_raw[j] = zero_vec();
        v_raw[j] = zero_vec();
    }
    if (valid) {
        const long long row_stride = (long long)a.num_kv_heads * HEAD_DIM;  // token to token in a page
        const T* k_row = layer_base + slot * a.slot_stride + (t % PAGE_TOKENS) * row_stride;
        const T* v_row = k_row + PAGE_TOKENS * row_stride;                  // K block to V block
#pragma unroll
        for (int j = 0; j < L::kVecsPerLane; ++j) {
            k_raw[j] = load16(k_row + L::vec_offset(j, lane_in_row));
            v_raw[j] = load16(v_row + L::vec_offset(j, lane_in_row));
        }
    }
    return valid;
}

// Stream `stream` folds tokens begin + stream, begin + stream + kStreams, ... into its states.
// Every lane runs the same number of trips (the shuffles in group_sum need the whole warp).
template <typename T, int HEAD_DIM, int PAGE_TOKENS, int HEADS_PER_CTA>
__device__ __forceinline__ void decode_streams(
        const T* __restrict__ arena, const int* __restrict__ block_tables, const DecodeArgs& a,
        const DecodeWork& w, int stream, int lane_in_row,
        const float (&qf)[HEADS_PER_CTA][RowLayout<T, HEAD_DIM>::kElemsPerLane],
        SoftmaxState<RowLayout<T, HEAD_DIM>::kElemsPerLane> (&state)[HEADS_PER_CTA]) {
    typedef RowLayout<T, HEAD_DIM> L;
    constexpr int kStreams = kDecodeWarps * L::kRowsPerWarp;
    constexpr int kElems = L::kElemsPerLane;
    const int* table = block_tables + (long long)w.seq * a.max_pages;
    const T* layer_base = arena + a.layer_offset + (long long)w.kv_head * HEAD_DIM;
    for (int base = w.begin; base < w.end; base += kStreams * kDecodeUnroll) {
        uint4 k_raw[kDecodeUnroll][L::kVecsPerLane];
        uint4 v_raw[kDecodeUnroll][L::kVecsPerLane];
        bool valid[kDecodeUnroll];
#pragma unroll
        for (int u = 0; u < kDecodeUnroll; ++u) {
            valid[u] = load_decode_token<T, HEAD_DIM, PAGE_TOKENS>(
                layer_base, table, a, base + u * kStreams + stream, w.end, lane_in_row, k_raw[u], v_raw[u]);
        }
#pragma unroll
        for (int u = 0; u < kDecodeUnroll; ++u) {
            float kf[kElems];
#pragma unroll
            for (int j = 0; j < L::kVecsPerLane; ++j) unpack16<T>(k_raw[u][j], kf + j * L::kVecElems);
            float score[HEADS_PER_CTA];
#pragma unroll
            for (int g = 0; g < HEADS_PER_CTA; ++g) {
                float partial = 0.0f;
#pragma unroll
                for (int e = 0; e < kElems; ++e) partial += qf[g][e] * kf[e];
                score[g] = group_sum<L::kLanesPerRow>(partial);
            }
            if (valid[u]) {
                float vf[kElems];
#pragma unroll
                for (int j = 0; j < L::kVecsPerLane; ++j) unpack16<T>(v_raw[u][j], vf + j * L::kVecElems);
#pragma unroll
                for (int g = 0; g < HEADS_PER_CTA; ++g) state[g].update(score[g], vf);
            }
        }
    }
}

// Merge the streams' states through shared memory (each weighted by 2^(m_stream - m_max), as in a
// split-K merge) and write the output row, or the split's partial row and log-sum-exp.
template <typename T, int HEAD_DIM, int HEADS_PER_CTA>
__device__ __forceinline__ void merge_decode_streams(
        const DecodeArgs& a, const DecodeWork& w, int stream, int lane_in_row,
        const SoftmaxState<RowLayout<T, HEAD_DIM>::kElemsPerLane> (&state)[HEADS_PER_CTA],
        T* __restrict__ out, float* __restrict__ partial_out, float* __restrict__ partial_lse) {
    typedef RowLayout<T, HEAD_DIM> L;
    constexpr int kStreams = kDecodeWarps * L::kRowsPerWarp;
    __shared__ float s_acc[kStreams][HEADS_PER_CTA][HEAD_DIM];
    __shared__ float s_m[kStreams][HEADS_PER_CTA];
    __shared__ float s_l[kStreams][HEADS_PER_CTA];
    __shared__ float s_weight[kStreams][HEADS_PER_CTA];
    __shared__ float s_inv_l[HEADS_PER_CTA];
    __shared__ float s_lse[HEADS_PER_CTA];
#pragma unroll
    for (int g = 0; g < HEADS_PER_CTA; ++g) {
#pragma unroll
        for (int j = 0; j < L::kVecsPerLane; ++j) {
#pragma unroll
            for (int i = 0; i < L::kVecElems; ++i) {
                s_acc[stream][g][L::vec_offset(j, lane_in_row) + i] = state[g].acc[j * L::kVecElems + i];
            }
        }
        if (lane_in_row == 0) {
            s_m[stream][g] = state[g].m;
            s_l[stream][g] = state[g].l;
        }
    }
    __syncthreads();
    if (threadIdx.x < HEADS_PER_CTA) {
        const int g = threadIdx.x;
        float m_max = kNegBig;
        for (int s = 0; s < kStreams; ++s) m_max = fmaxf(m_max, s_m[s][g]);
        float l_sum = 0.0f;
        for (int s = 0; s < kStreams; ++s) {
            const float weight = exp2f(s_m[s][g] - m_max);
            s_weight[s][g] = weight;
            l_sum += s_l[s][g] * weight;
        }
        s_inv_l[g] = l_sum > 0.0f ? 1.0f / l_sum : 0.0f;
        s_lse[g] = l_sum > 0.0f ? m_max + log2f(l_sum) : kNegBig;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < w.heads_here * HEAD_DIM; idx += kDecodeThreads) {
        const int g = idx / HEAD_DIM;
        const int d = idx % HEAD_DIM;
        float o = 0.0f;
        for (int s = 0; s < kStreams; ++s) o += s_weight[s][g] * s_acc[s][g][d];
        o *= s_inv_l[g];
        const long long row = (long long)w.seq * a.num_heads + w.first_head + g;
        if (a.num_splits == 1) {
            store(out + row * HEAD_DIM + d, from_float<T>(o));
        } else {
            const long long split_row = row * a.num_splits + w.split;
            store(partial_out + split_row * HEAD_DIM + d, o);
            if (d == 0) store(partial_lse + split_row, s_lse[g]);
        }
    }
}

template <typename T, int HEAD_DIM, int PAGE_TOKENS, int HEADS_PER_CTA>
__device__ __forceinline__ void decode_partial(
        const T* __restrict__ q, const T* __restrict__ arena, const int* __restrict__ block_tables,
        const int* __restrict__ seq_lens, const DecodeArgs& a, T* __restrict__ out,
        float* __restrict__ partial_out, float* __restrict__ partial_lse) {
    typedef RowLayout<T, HEAD_DIM> L;
    const DecodeWork w = decode_work<PAGE_TOKENS, HEADS_PER_CTA>(seq_lens, a);
    const int lane = threadIdx.x % kWarpSize;
    const int lane_in_row = lane % L::kLanesPerRow;
    const int stream = (threadIdx.x / kWarpSize) * L::kRowsPerWarp + lane / L::kLanesPerRow;

    float qf[HEADS_PER_CTA][L::kElemsPerLane];
    load_decode_queries<T, HEAD_DIM, HEADS_PER_CTA>(q, a, w, lane_in_row, qf);
    SoftmaxState<L::kElemsPerLane> state[HEADS_PER_CTA];
#pragma unroll
    for (int g = 0; g < HEADS_PER_CTA; ++g) state[g].reset();
    decode_streams<T, HEAD_DIM, PAGE_TOKENS, HEADS_PER_CTA>(arena, block_tables, a, w, stream, lane_in_row, qf, state);
    merge_decode_streams<T, HEAD_DIM, HEADS_PER_CTA>(a, w, stream, lane_in_row, state, out, partial_out, partial_lse);
}

// Merge the splits of one (sequence, head): out = sum_s 2^lse_s * o_s / sum_s 2^lse_s.
// Grid: x = head, y = sequence; block = kDecodeThreads.
template <typename T, int HEAD_DIM>
__device__ __forceinline__ void decode_reduce(
        const float* __restrict__ partial_out, const float* __restrict__ partial_lse, int num_splits,
        int num_heads, T* __restrict__ out) {
    __shared__ float s_weight[kMaxSplits];
    const int splits = imin(num_splits, kMaxSplits);
    const long long row = (long long)blockIdx.y * num_heads + blockIdx.x;
    const long long first_split_row = row * num_splits;
    for (int s = threadIdx.x; s < splits; s += kDecodeThreads) s_weight[s] = load(partial_lse + first_split_row + s);
    __syncthreads();
    if (threadIdx.x == 0) {
        float lse_max = kNegBig;
        for (int s = 0; s < splits; ++s) lse_max = fmaxf(lse_max, s_weight[s]);
        const bool empty = lse_max <= kEmptyLseThreshold;
        float total = 0.0f;
        for (int s = 0; s < splits; ++s) {
            const float w = empty ? 0.0f : exp2f(s_weight[s] - lse_max);
            s_weight[s] = w;
            total += w;
        }
        const float inv_total = total > 0.0f ? 1.0f / total : 0.0f;
        for (int s = 0; s < splits; ++s) s_weight[s] *= inv_total;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < HEAD_DIM; d += kDecodeThreads) {
        float o = 0.0f;
        for (int s = 0; s < splits; ++s) {
            if (s_weight[s] > 0.0f) o += s_weight[s] * load(partial_out + (first_split_row + s) * HEAD_DIM + d);
        }
        store(out + row * HEAD_DIM + d, from_float<T>(o));
    }
}

}  // namespace tk

#if defined(TK_SCALAR_T) && defined(TK_HEAD_DIM) && defined(TK_PAGE_TOKENS) && defined(TK_HEADS_PER_CTA)

// Argument order is mirrored by tierd_kernels.plans.plan_decode; strides and offsets in elements.
extern "C" __global__ void __launch_bounds__(tk::kDecodeThreads) tk_decode_partial(
        const TK_SCALAR_T* __restrict__ q, long long q_stride_seq, long long q_stride_head,
        const TK_SCALAR_T* __restrict__ arena, long long slot_stride, long long layer_offset,
        int num_slots, int num_kv_heads, const int* __restrict__ block_tables, int max_pages,
        const int* __restrict__ seq_lens, int num_heads, float scale, int tokens_per_split,
        int num_splits, TK_SCALAR_T* __restrict__ out, float* __restrict__ partial_out,
        float* __restrict__ partial_lse) {
    tk::DecodeArgs a;
    a.q_stride_seq = q_stride_seq;
    a.q_stride_head = q_stride_head;
    a.slot_stride = slot_stride;
    a.layer_offset = layer_offset;
    a.num_slots = num_slots;
    a.num_kv_heads = num_kv_heads;
    a.max_pages = max_pages;
    a.num_heads = num_heads;
    a.scale = scale;
    a.tokens_per_split = tokens_per_split;
    a.num_splits = num_splits;
    tk::decode_partial<TK_SCALAR_T, TK_HEAD_DIM, TK_PAGE_TOKENS, TK_HEADS_PER_CTA>(
        q, arena, block_tables, seq_lens, a, out, partial_out, partial_lse);
}

extern "C" __global__ void __launch_bounds__(tk::kDecodeThreads) tk_decode_reduce(
        const float* __restrict__ partial_out, const float* __restrict__ partial_lse, int num_splits,
        int num_heads, TK_SCALAR_T* __restrict__ out) {
    tk::decode_reduce<TK_SCALAR_T, TK_HEAD_DIM>(partial_out, partial_lse, num_splits, num_heads, out);
}

#endif
