// Paged attention for prefill / extend: several query tokens per sequence, causal.
//
// The j-th of the q_len query tokens of a sequence sits at position seq_len - q_len + j and sees the
// kv positions 0..that position; its K/V are already in the pages. Queries are packed:
// q[total_q_tokens][num_heads][HEAD_DIM] with sequence s at rows cu_q_lens[s]..cu_q_lens[s+1).
//
// Grid: x = tile of query rows (CTAs stride over a sequence's tiles, so any width is correct),
// y = sequence, z = kv head; block = kPrefillThreads. The rows of a sequence and kv head are its
// (token, head-in-group) pairs, row = token * group + head, so a CTA works on consecutive tokens
// and every q head of the GQA group. The CTA stages BLOCK_KEYS keys of
// K and V at a time in shared memory (read once from the arena, used by all its rows); each lane
// group of kLanesPerRow lanes owns kPrefillRowsPerGroup rows and folds the staged keys into their
// online softmax (fp32, log2 domain).
//
// Specialisation macros (set by tierd_kernels.sources): TK_SCALAR_T, TK_HEAD_DIM, TK_PAGE_TOKENS.
#include "prefill_common.cuh"

namespace tk {

constexpr int kPrefillWarps = 4;
constexpr int kPrefillThreads = kPrefillWarps * kWarpSize;
// Rows per lane group: each staged key is reused for this many rows from registers.
constexpr int kPrefillRowsPerGroup = 4;
// Shared memory for one staged K tile (the V tile is as large): 16 KiB keeps K + V at 32 KiB,
// under the 48 KiB of static shared memory every architecture gives.
constexpr int kPrefillTileBytes = 16384;
constexpr int kPrefillMaxKeys = 64;

template <typename T, int HEAD_DIM>
struct PrefillTile {
    static constexpr int kFit = kPrefillTileBytes / (HEAD_DIM * (int)sizeof(T));
    static constexpr int kKeys = kFit < kPrefillMaxKeys ? kFit : kPrefillMaxKeys;
    static_assert(kKeys >= 1, "one key row must fit in a tile");
};

// The rows [first_row, first_row + kRowsPerCta) of one sequence, as seen by one lane group: its
// kPrefillRowsPerGroup query slices (pre-scaled to log2 units), positions and output rows.
template <typename T, int HEAD_DIM>
struct PrefillRows {
    typedef RowLayout<T, HEAD_DIM> L;
    float qf[kPrefillRowsPerGroup][L::kElemsPerLane];
    int pos[kPrefillRowsPerGroup];
    bool ok[kPrefillRowsPerGroup];
    long long out_row[kPrefillRowsPerGroup];
    SoftmaxState<L::kElemsPerLane> state[kPrefillRowsPerGroup];

    __device__ __forceinline__ void load(const T* __restrict__ q, const PrefillArgs& a, const PrefillSeq& sq,
                                         int first_row, int end_row, int lane_in_row) {
        const float qk_scale = a.scale * kLog2e;
#pragma unroll
        for (int r = 0; r < kPrefillRowsPerGroup; ++r) {
            const int row = first_row + r;
            ok[r] = row < end_row;
            const int j = ok[r] ? row / sq.group_size : 0;
            const int head = sq.kv_head * sq.group_size + (ok[r] ? row % sq.group_size : 0);
            pos[r] = sq.seq_len - sq.q_len + j;  // query token j sits at seq_len - q_len + j
            out_row[r] = (long long)(sq.q_begin + j) * a.num_heads + head;
            const T* q_row = q + (sq.q_begin + j) * a.q_stride_token + head * a.q_stride_head;
#pragma unroll
            for (int jv = 0; jv < L::kVecsPerLane; ++jv) {
#pragma unroll
                for (int i = 0; i < L::kVecElems; ++i) {
                    qf[r][jv * L::kVecElems + i] =
                        ok[r] ? to_float(tk::load(q_row + L::vec_offset(jv, lane_in_row) + i)) * qk_scale : 0.0f;
                }
            }
            state[r].reset();
        }
    }

    __device__ __forceinline__ void store_output(T* __restrict__ out, int lane_in_row) const {
#pragma unroll
        for (int r = 0; r < kPrefillRowsPerGroup; ++r) {
            if (!ok[r]) continue;
            const float inv_l = state[r].l > 0.0f ? 1.0f / state[r].l : 0.0f;
            T* o_row = out + out_row[r] * HEAD_DIM;
#pragma unroll
            for (int jv = 0; jv < L::kVecsPerLane; ++jv) {
#pragma unroll
                for (int i = 0; i < L::kVecElems; ++i) {
                    tk::store(o_row + L::vec_offset(jv, lane_in_row) + i,
                              from_float<T>(state[r].acc[jv * L::kVecElems + i] * inv_l));
                }
            }
        }
    }
};

// Stage keys [tile_start, tile_start + num_keys) of K and V in shared memory, all threads
// cooperating; s_key_ok marks keys whose slot lies in the arena.
template <typename T, int HEAD_DIM, int PAGE_TOKENS, int KEYS>
__device__ __forceinline__ void stage_kv_tile(const T* __restrict__ layer_base, const int* __restrict__ table,
                                              const PrefillArgs& a, int tile_start, int num_keys,
                                              uint4 (&s_k)[KEYS][RowLayout<T, HEAD_DIM>::kVecsPerRow],
                                              uint4 (&s_v)[KEYS][RowLayout<T, HEAD_DIM>::kVecsPerRow],
                                              int (&s_key_ok)[KEYS]) {
    typedef RowLayout<T, HEAD_DIM> L;
    const long long row_stride = (long long)a.num_kv_heads * HEAD_DIM;
    for (int idx = threadIdx.x; idx < KEYS * L::kVecsPerRow; idx += kPrefillThreads) {
        const int key = idx / L::kVecsPerRow;
        const int vec = idx % L::kVecsPerRow;
        uint4 k_val = zero_vec();
        uint4 v_val = zero_vec();
        bool ok = false;
        if (key < num_keys) {
            const int t = tile_start + key;
            const int slot = load(table + t / PAGE_TOKENS);
            ok = slot >= 0 && slot < a.num_slots;
            if (ok) {
                const T* k_row = layer_base + slot * a.slot_stride + (t % PAGE_TOKENS) * row_stride;
                k_val = load16(k_row + vec * L::kVecElems);
                v_val = load16(k_row + PAGE_TOKENS * row_stride + vec * L::kVecElems);
            }
        }
        s_k[key][vec] = k_val;
        s_v[key][vec] = v_val;
        if (vec == 0) s_key_ok[key] = ok ? 1 : 0;
    }
}

// Attend the rows of one CTA tile ([first_row, first_row + kRowsPerCta) of the sequence) over
// their causal key range, staging BLOCK keys at a time.
template <typename T, int HEAD_DIM, int PAGE_TOKENS>
__device__ __forceinline__ void prefill_tile(const T* __restrict__ q, const T* __restrict__ arena,
                                             const int* __restrict__ block_tables, const PrefillArgs& a,
                                             const PrefillSeq& sq, int tile_first_row, T* __restrict__ out) {
    typedef RowLayout<T, HEAD_DIM> L;
    constexpr int kElems = L::kElemsPerLane;
    constexpr int kRowsPerCta = kPrefillWarps * L::kRowsPerWarp * kPrefillRowsPerGroup;
    constexpr int kKeys = PrefillTile<T, HEAD_DIM>::kKeys;
    __shared__ uint4 s_k[kKeys][L::kVecsPerRow];
    __shared__ uint4 s_v[kKeys][L::kVecsPerRow];
    __shared__ int s_key_ok[kKeys];

    const int tile_end_row = imin(tile_first_row + kRowsPerCta, sq.q_len * sq.group_size);
    // The tile's last query token bounds the keys any of its rows can see.
    const int kv_end = imin(sq.seq_len - sq.q_len + (tile_end_row - 1) / sq.group_size + 1, sq.seq_len);
    const int lane = threadIdx.x % kWarpSize;
    const int lane_in_row = lane % L::kLanesPerRow;
    const int lane_group = (threadIdx.x / kWarpSize) * L::kRowsPerWarp + lane / L::kLanesPerRow;
    PrefillRows<T, HEAD_DIM> rows;
    rows.load(q, a, sq, tile_first_row + lane_group * kPrefillRowsPerGroup, tile_end_row, lane_in_row);

    const int* table = block_tables + (long long)sq.seq * a.max_pages;
    const T* layer_base = arena + a.layer_offset + (long long)sq.kv_head * HEAD_DIM;
    for (int tile_start = 0; tile_start < kv_end; tile_start += kKeys) {
        const int num_keys = imin(kKeys, kv_end - tile_start);
        __syncthreads();  // every lane group is done with the previous staged tile
        stage_kv_tile<T, HEAD_DIM, PAGE_TOKENS, kKeys>(layer_base, table, a, tile_start, num_keys, s_k, s_v, s_key_ok);
        __syncthreads();
        for (int key = 0; key < num_keys; ++key) {
            float kf[kElems];
#pragma unroll
            for (int jv = 0; jv < L::kVecsPerLane; ++jv) {
                unpack16<T>(s_k[key][jv * L::kLanesPerRow + lane_in_row], kf + jv * L::kVecElems);
            }
            float score[kPrefillRowsPerGroup];
#pragma unroll
            for (int r = 0; r < kPrefillRowsPerGroup; ++r) {
                float partial = 0.0f;
#pragma unroll
                for (int e = 0; e < kElems; ++e) partial += rows.qf[r][e] * kf[e];
                score[r] = group_sum<L::kLanesPerRow>(partial);
            }
            if (s_key_ok[key] == 0) continue;
            float vf[kElems];
#pragma unroll
            for (int jv = 0; jv < L::kVecsPerLane; ++jv) {
                unpack16<T>(s_v[key][jv * L::kLanesPerRow + lane_in_row], vf + jv * L::kVecElems);
            }
#pragma unroll
            for (int r = 0; r < kPrefillRowsPerGroup; ++r) {
                if (rows.ok[r] && tile_start + key <= rows.pos[r]) rows.state[r].update(score[r], vf);
            }
        }
    }
    rows.store_output(out, lane_in_row);
}

template <typename T, int HEAD_DIM, int PAGE_TOKENS>
__device__ __forceinline__ void prefill(
        const T* __restrict__ q, const int* __restrict__ cu_q_lens, const T* __restrict__ arena,
        const int* __restrict__ block_tables, const int* __restrict__ seq_lens, const PrefillArgs& a,
        T* __restrict__ out) {
    typedef RowLayout<T, HEAD_DIM> L;
    constexpr int kRowsPerCta = kPrefillWarps * L::kRowsPerWarp * kPrefillRowsPerGroup;
    const PrefillSeq sq = prefill_seq<PAGE_TOKENS>(cu_q_lens, seq_lens, a);
    // Grid-stride over row tiles (uniform over the CTA): any grid width is correct, the planner
    // only picks how many CTAs share the rows of a sequence.
    const int rows_total = sq.q_len * sq.group_size;
    for (int first = blockIdx.x * kRowsPerCta; first < rows_total; first += gridDim.x * kRowsPerCta) {
        prefill_tile<T, HEAD_DIM, PAGE_TOKENS>(q, arena, block_tables, a, sq, first, out);
    }
}

}  // namespace tk

#if defined(TK_SCALAR_T) && defined(TK_HEAD_DIM) && defined(TK_PAGE_TOKENS)

// Argument order is mirrored by tierd_kernels.plans.plan_prefill; strides and offsets in elements.
extern "C" __global__ void __launch_bounds__(tk::kPrefillThreads) tk_prefill(
        const TK_SCALAR_T* __restrict__ q, long long q_stride_token, long long q_stride_head,
        const int* __restrict__ cu_q_lens, int total_q_tokens, const TK_SCALAR_T* __restrict__ arena,
        long long slot_stride, long long layer_offset, int num_slots, int num_kv_heads,
        const int* __restrict__ block_tables, int max_pages, const int* __restrict__ seq_lens,
        int num_heads, float scale, TK_SCALAR_T* __restrict__ out) {
    const tk::PrefillArgs a = tk::prefill_args(q_stride_token, q_stride_head, total_q_tokens, slot_stride,
                                               layer_offset, num_slots, num_kv_heads, max_pages, num_heads, scale);
    tk::prefill<TK_SCALAR_T, TK_HEAD_DIM, TK_PAGE_TOKENS>(q, cu_q_lens, arena, block_tables, seq_lens, a, out);
}

#endif
