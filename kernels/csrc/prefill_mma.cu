// Paged attention for prefill / extend on tensor cores (nvcuda::wmma m16n16k16, fp16 / bf16 inputs,
// fp32 accumulators), flash-attention style. Same semantics and arguments as tk_prefill (prefill.cu),
// which stays the fp32 path and the path of GPUs below compute capability 8.0.
//
// The j-th of the q_len query tokens of a sequence sits at position seq_len - q_len + j and sees the
// kv positions 0..that position. Grid: x = tile of kMmaRowsPerCta query rows (CTAs stride over a
// sequence's tiles), y = sequence, z = kv head; block = kMmaThreads. The rows of a sequence and kv
// head are its (token, head-in-group) pairs, row = token * group + head, so each staged K/V tile
// serves every q head of the GQA group.
//
// Per CTA: the Q tile is staged once in shared memory; then, for each tile of kKeys keys, all
// threads stage K and V (16-byte loads; slots outside the arena give zero rows that are masked), and
// each warp, owning 16 query rows:
//   1. S = Q K^T with wmma into its float scratch [16][kKeys];
//   2. online softmax over S in fp32 and the log2 domain (scale folded in), two lanes per row, each
//      owning half of the row's keys; masked or skipped keys get probability 0; P is written as T
//      over the same scratch (every lane has read its scores first) and loaded as matrix_a fragments;
//   3. O += P V: each 16 x kKeys slice of P V is computed into zeroed fragments, stored to the
//      scratch, and added by the two lanes of a row into their registers after rescaling by the
//      row's correction. Lane (r, h) = (lane / 2, lane % 2) owns, for row r, the output columns
//      pass * kKeys + h * kKeys / 2 + e (e < kKeys / 2) of every pass, i.e. HEAD_DIM / 2 floats.
// Fragment elements are never indexed (their layout is unspecified): all per-row work goes through
// shared memory.
//
// bf16 wmma needs sm_80: below it the kernel is compiled as a trap (the planner never launches it).
// Specialisation macros (set by tierd_kernels.sources): TK_SCALAR_T (__half or __nv_bfloat16),
// TK_HEAD_DIM, TK_PAGE_TOKENS.
#include "prefill_common.cuh"
#include <mma.h>

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define TK_MMA_ENABLED 1
#else
#define TK_MMA_ENABLED 0
#endif

namespace tk {

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * kWarpSize;
constexpr int kMmaDim = 16;                             // wmma m = n = k
constexpr int kMmaRowsPerCta = kMmaWarps * kMmaDim;     // each warp owns 16 query rows
constexpr int kMmaPad = 8;                              // 16-bit elements of padding per shared row
constexpr int kMmaSharedLimit = 48 * 1024;              // static shared memory of every architecture

// Keys per staged tile, and whether K and V have a buffer each (else V replaces K in one buffer
// once the scores are computed), chosen so that everything stays under 48 KiB.
template <int HEAD_DIM> struct MmaTile;
template <> struct MmaTile<64> { static constexpr int kKeys = 64; static constexpr int kKvBufs = 2; };
template <> struct MmaTile<128> { static constexpr int kKeys = 32; static constexpr int kKvBufs = 2; };
template <> struct MmaTile<256> { static constexpr int kKeys = 16; static constexpr int kKvBufs = 1; };

// Shared-memory geometry. Staged Q/K/V rows hold HEAD_DIM + kMmaPad elements (16 rows span a multiple
// of 32 bytes, and the padding staggers banks); a warp's scratch rows hold kKeys + 4 floats as S and
// as P V slices, or kKeys + kMmaPad elements of T as P (which fits in the same bytes).
template <typename T, int HEAD_DIM>
struct MmaLayout {
    static constexpr int kKeys = MmaTile<HEAD_DIM>::kKeys;
    static constexpr int kKvBufs = MmaTile<HEAD_DIM>::kKvBufs;
    static constexpr int kBlocks = kKeys / kMmaDim;        // 16-key blocks per tile
    static constexpr int kHalfKeys = kKeys / 2;            // keys (and output columns) per lane and pass
    static constexpr int kPasses = HEAD_DIM / kKeys;       // P V slices of kKeys columns
    static constexpr int kVecElems = kVecBytes / (int)sizeof(T);
    static constexpr int kLd = HEAD_DIM + kMmaPad;         // T per staged row
    static constexpr int kRowVecs = kLd / kVecElems;       // 16-byte vectors per staged row
    static constexpr int kDataVecs = HEAD_DIM / kVecElems; // of which hold data
    static constexpr int kSLd = kKeys + 4;                 // floats per scratch row
    static constexpr int kPLd = kKeys + kMmaPad;           // T per P row
    static constexpr int kScratch = kMmaDim * kSLd;        // floats per warp
    static constexpr int kBytes = (kMmaRowsPerCta + kKvBufs * kKeys) * kLd * (int)sizeof(T) +
                                  kMmaWarps * kScratch * (int)sizeof(float) + kKeys * (int)sizeof(int);
    static_assert(sizeof(T) == 2, "the tensor-core kernel takes 16-bit inputs");
    static_assert(kBytes <= kMmaSharedLimit, "static shared memory must stay under 48 KiB");
    static_assert(HEAD_DIM % kKeys == 0 && kKeys % kMmaDim == 0, "tiles must split into 16 x 16 blocks");
    static_assert(kPLd * sizeof(T) <= kSLd * sizeof(float), "P must fit in the scratch it replaces");
    static_assert(kHalfKeys % kVecElems == 0 && kHalfKeys <= 32, "a lane's output run is whole vectors");
};

// The query row this lane works on (two lanes per row) and the online-softmax state of that row.
struct MmaRow {
    bool ok;
    int pos;              // kv position of the row's token: it sees keys 0..pos
    long long out_row;    // row of out ([total_q_tokens * num_heads][HEAD_DIM])
    float m;              // running max, log2 units
    float l;              // running sum of the (rounded) probabilities
};

#if TK_MMA_ENABLED

namespace wmma = nvcuda::wmma;

template <typename T>
using MmaFragA = wmma::fragment<wmma::matrix_a, kMmaDim, kMmaDim, kMmaDim, T, wmma::row_major>;
template <typename T, typename Layout>
using MmaFragB = wmma::fragment<wmma::matrix_b, kMmaDim, kMmaDim, kMmaDim, T, Layout>;
using MmaFragC = wmma::fragment<wmma::accumulator, kMmaDim, kMmaDim, kMmaDim, float>;

__device__ __forceinline__ MmaRow mma_row(const PrefillArgs& a, const PrefillSeq& sq, int row, int end_row) {
    MmaRow r;
    r.ok = row < end_row;
    const int j = r.ok ? row / sq.group_size : 0;
    const int head = sq.kv_head * sq.group_size + (r.ok ? row % sq.group_size : 0);
    r.pos = sq.seq_len - sq.q_len + j;  // query token j sits at seq_len - q_len + j
    r.out_row = (long long)(sq.q_begin + j) * a.num_heads + head;
    r.m = kNegBig;
    r.l = 0.0f;
    return r;
}

// Stage the CTA's query rows [first_row, first_row + kMmaRowsPerCta) (zeros past end_row).
template <typename T, int HEAD_DIM>
__device__ __forceinline__ void stage_q_tile(const T* __restrict__ q, const PrefillArgs& a, const PrefillSeq& sq,
                                             int first_row, int end_row, uint4* __restrict__ s_q) {
    typedef MmaLayout<T, HEAD_DIM> L;
    for (int idx = threadIdx.x; idx < kMmaRowsPerCta * L::kDataVecs; idx += kMmaThreads) {
        const int r = idx / L::kDataVecs;
        const int vec = idx % L::kDataVecs;
        const int row = first_row + r;
        uint4 val = zero_vec();
        if (row < end_row) {
            const int j = row / sq.group_size;
            const int head = sq.kv_head * sq.group_size + row % sq.group_size;
            const T* q_row = q + (sq.q_begin + j) * a.q_stride_token + head * a.q_stride_head;
            val = load16(q_row + vec * L::kVecElems);
        }
        s_q[r * L::kRowVecs + vec] = val;
    }
}

// Stage rows [tile_start, tile_start + num_keys) of one K or V block (block_base: the layer's K or V
// block of kv head 0 of slot 0, plus the kv head), all threads cooperating. Keys past num_keys or on
// a slot outside the arena are zero rows; s_key_ok (when not null) marks the keys that were read.
template <typename T, int HEAD_DIM, int PAGE_TOKENS>
__device__ __forceinline__ void stage_kv_rows(const T* __restrict__ block_base, const int* __restrict__ table,
                                              const PrefillArgs& a, int tile_start, int num_keys,
                                              uint4* __restrict__ s_rows, int* __restrict__ s_key_ok) {
    typedef MmaLayout<T, HEAD_DIM> L;
    const long long row_stride = (long long)a.num_kv_heads * HEAD_DIM;
    for (int idx = threadIdx.x; idx < L::kKeys * L::kDataVecs; idx += kMmaThreads) {
        const int key = idx / L::kDataVecs;
        const int vec = idx % L::kDataVecs;
        uint4 val = zero_vec();
        bool ok = false;
        if (key < num_keys) {
            const int t = tile_start + key;
            const int slot = load(table + t / PAGE_TOKENS);
            ok = slot >= 0 && slot < a.num_slots;
            if (ok) {
                const T* row = block_base + slot * a.slot_stride + (t % PAGE_TOKENS) * row_stride;
                val = load16(row + vec * L::kVecElems);
            }
        }
        s_rows[key * L::kRowVecs + vec] = val;
        if (s_key_ok != nullptr && vec == 0) s_key_ok[key] = ok ? 1 : 0;
    }
}

// S = Q K^T for the warp's 16 rows and the tile's keys, stored to the warp's scratch [16][kSLd].
template <typename T, int HEAD_DIM>
__device__ __forceinline__ void warp_scores(const T* __restrict__ s_q_warp, const T* __restrict__ s_k,
                                            float* __restrict__ scratch) {
    typedef MmaLayout<T, HEAD_DIM> L;
    MmaFragC acc[L::kBlocks];
#pragma unroll
    for (int nb = 0; nb < L::kBlocks; ++nb) wmma::fill_fragment(acc[nb], 0.0f);
#pragma unroll
    for (int kk = 0; kk < HEAD_DIM / kMmaDim; ++kk) {
        MmaFragA<T> qa;
        wmma::load_matrix_sync(qa, s_q_warp + kk * kMmaDim, L::kLd);
#pragma unroll
        for (int nb = 0; nb < L::kBlocks; ++nb) {
            // K^T as a col_major matrix_b: element (k, n) is K[n][k], at s_k[n * kLd + k].
            MmaFragB<T, wmma::col_major> kb;
            wmma::load_matrix_sync(kb, s_k + nb * kMmaDim * L::kLd + kk * kMmaDim, L::kLd);
            wmma::mma_sync(acc[nb], qa, kb, acc[nb]);
        }
    }
#pragma unroll
    for (int nb = 0; nb < L::kBlocks; ++nb) {
        wmma::store_matrix_sync(scratch + nb * kMmaDim, acc[nb], L::kSLd, wmma::mem_row_major);
    }
}

// Fold the tile's scores (in the scratch) into the row's online softmax and overwrite the scratch
// with P (T, [16][kPLd]); returns the row's correction exp2(m_old - m_new) for its output. Lane
// half h of a row owns keys h * kHalfKeys .. + kHalfKeys. Every lane of the warp must call it.
template <typename T, int HEAD_DIM>
__device__ __forceinline__ float warp_softmax(float* __restrict__ scratch, const int* __restrict__ s_key_ok,
                                              int tile_start, int num_keys, float qk_scale, MmaRow& row) {
    typedef MmaLayout<T, HEAD_DIM> L;
    const int lane = threadIdx.x % kWarpSize;
    const int first_key = (lane & 1) * L::kHalfKeys;
    const float* s_row = scratch + (lane >> 1) * L::kSLd + first_key;
    float s[L::kHalfKeys];
    unsigned valid = 0u;
    float tile_max = kNegBig;
#pragma unroll
    for (int e = 0; e < L::kHalfKeys; ++e) {
        const int key = first_key + e;
        const bool ok = row.ok && key < num_keys && s_key_ok[key] != 0 && tile_start + key <= row.pos;
        s[e] = s_row[e] * qk_scale;
        valid |= ok ? 1u << e : 0u;
        tile_max = ok ? fmaxf(tile_max, s[e]) : tile_max;
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, 1));
    const float m_new = fmaxf(row.m, tile_max);  // stays kNegBig while the row has seen no key
    const float correction = exp2f(row.m - m_new);
    __syncwarp();  // every lane has read its scores: the scratch becomes P
    T* p_row = reinterpret_cast<T*>(scratch) + (lane >> 1) * L::kPLd + first_key;
    float sum = 0.0f;
#pragma unroll
    for (int e = 0; e < L::kHalfKeys; ++e) {
        const T p = from_float<T>((valid >> e) & 1u ? exp2f(s[e] - m_new) : 0.0f);
        p_row[e] = p;
        sum += to_float(p);  // the rounded weights P V uses, so that they are normalised exactly
    }
    sum += __shfl_xor_sync(kFullMask, sum, 1);
    row.l = row.l * correction + sum;
    row.m = m_new;
    return correction;
}

// Steps 1 and 2 for one key tile: S into the scratch, the online softmax, P into registers (pa).
// Returns the row's correction for its output. Every lane of the warp must call it.
template <typename T, int HEAD_DIM>
__device__ __forceinline__ float warp_probabilities(const T* __restrict__ s_q_warp, const T* __restrict__ s_k,
                                                    const int* __restrict__ s_key_ok, float* __restrict__ scratch,
                                                    int tile_start, int num_keys, float qk_scale, MmaRow& row,
                                                    MmaFragA<T> (&pa)[MmaLayout<T, HEAD_DIM>::kBlocks]) {
    typedef MmaLayout<T, HEAD_DIM> L;
    warp_scores<T, HEAD_DIM>(s_q_warp, s_k, scratch);
    __syncwarp();  // all of S is in the scratch
    const float correction = warp_softmax<T, HEAD_DIM>(scratch, s_key_ok, tile_start, num_keys, qk_scale, row);
    __syncwarp();  // all of P is in the scratch
#pragma unroll
    for (int kk = 0; kk < L::kBlocks; ++kk) {
        wmma::load_matrix_sync(pa[kk], reinterpret_cast<const T*>(scratch) + kk * kMmaDim, L::kPLd);
    }
    __syncwarp();  // P is in registers: the scratch is free for the P V slices
    return correction;
}

// o = o * correction + (P V) for the warp's rows, one 16 x kKeys slice of the output per pass.
template <typename T, int HEAD_DIM>
__device__ __forceinline__ void warp_pv(const MmaFragA<T> (&pa)[MmaLayout<T, HEAD_DIM>::kBlocks],
                                        const T* __restrict__ s_v, float* __restrict__ scratch, float correction,
                                        float (&o)[HEAD_DIM / 2]) {
    typedef MmaLayout<T, HEAD_DIM> L;
    const int lane = threadIdx.x % kWarpSize;
    const float* s_row = scratch + (lane >> 1) * L::kSLd + (lane & 1) * L::kHalfKeys;
#pragma unroll
    for (int pass = 0; pass < L::kPasses; ++pass) {
#pragma unroll
        for (int nb = 0; nb < L::kBlocks; ++nb) {
            MmaFragC acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < L::kBlocks; ++kk) {
                MmaFragB<T, wmma::row_major> vb;
                wmma::load_matrix_sync(vb, s_v + kk * kMmaDim * L::kLd + pass * L::kKeys + nb * kMmaDim, L::kLd);
                wmma::mma_sync(acc, pa[kk], vb, acc);
            }
            wmma::store_matrix_sync(scratch + nb * kMmaDim, acc, L::kSLd, wmma::mem_row_major);
        }
        __syncwarp();  // the slice is in the scratch
#pragma unroll
        for (int e = 0; e < L::kHalfKeys; ++e) {
            o[pass * L::kHalfKeys + e] = o[pass * L::kHalfKeys + e] * correction + s_row[e];
        }
        __syncwarp();  // read before the next slice overwrites it
    }
}

// Normalise the lane's output columns and write them (16-byte stores; out is 16-byte aligned).
template <typename T, int HEAD_DIM>
__device__ __forceinline__ void store_mma_output(T* __restrict__ out, const MmaRow& row,
                                                 const float (&o)[HEAD_DIM / 2]) {
    typedef MmaLayout<T, HEAD_DIM> L;
    if (!row.ok) return;
    const float inv_l = row.l > 0.0f ? 1.0f / row.l : 0.0f;
    T* o_row = out + row.out_row * HEAD_DIM + (threadIdx.x % 2) * L::kHalfKeys;
#pragma unroll
    for (int pass = 0; pass < L::kPasses; ++pass) {
#pragma unroll
        for (int v = 0; v < L::kHalfKeys / L::kVecElems; ++v) {
            uint4 packed;
            T* elems = reinterpret_cast<T*>(&packed);
#pragma unroll
            for (int i = 0; i < L::kVecElems; ++i) {
                elems[i] = from_float<T>(o[pass * L::kHalfKeys + v * L::kVecElems + i] * inv_l);
            }
            store16(o_row + pass * L::kKeys + v * L::kVecElems, packed);
        }
    }
}

// Attend the rows [tile_first_row, tile_first_row + kMmaRowsPerCta) of one sequence and kv head
// over their causal key range, kKeys keys at a time.
template <typename T, int HEAD_DIM, int PAGE_TOKENS>
__device__ __forceinline__ void prefill_mma_tile(const T* __restrict__ q, const T* __restrict__ arena,
                                                 const int* __restrict__ block_tables, const PrefillArgs& a,
                                                 const PrefillSeq& sq, int tile_first_row, T* __restrict__ out) {
    typedef MmaLayout<T, HEAD_DIM> L;
    __shared__ __align__(32) uint4 s_q[kMmaRowsPerCta * L::kRowVecs];
    __shared__ __align__(32) uint4 s_kv[L::kKvBufs * L::kKeys * L::kRowVecs];
    __shared__ __align__(32) float s_scratch[kMmaWarps * L::kScratch];
    __shared__ int s_key_ok[L::kKeys];
    const int warp = threadIdx.x / kWarpSize;
    const int tile_end_row = imin(tile_first_row + kMmaRowsPerCta, sq.q_len * sq.group_size);
    const int kv_end = imin(sq.seq_len - sq.q_len + (tile_end_row - 1) / sq.group_size + 1, sq.seq_len);
    // The warp's last row bounds the keys any of its rows sees (uniform over the warp).
    const int warp_first = tile_first_row + warp * kMmaDim;
    const int warp_last = imin(warp_first + kMmaDim, tile_end_row) - 1;
    const int warp_kv_end = warp_last < warp_first ? 0
                          : imin(sq.seq_len - sq.q_len + warp_last / sq.group_size + 1, sq.seq_len);
    MmaRow row = mma_row(a, sq, warp_first + (threadIdx.x % kWarpSize) / 2, tile_end_row);
    float o[HEAD_DIM / 2];
#pragma unroll
    for (int e = 0; e < HEAD_DIM / 2; ++e) o[e] = 0.0f;
    __syncthreads();  // the previous row tile's warps are done with s_q
    stage_q_tile<T, HEAD_DIM>(q, a, sq, tile_first_row, tile_end_row, s_q);

    const T* s_q_warp = reinterpret_cast<const T*>(s_q) + warp * kMmaDim * L::kLd;
    const T* s_k = reinterpret_cast<const T*>(s_kv);
    const T* s_v = s_k + (L::kKvBufs - 1) * L::kKeys * L::kLd;
    float* scratch = s_scratch + warp * L::kScratch;
    const int* table = block_tables + (long long)sq.seq * a.max_pages;
    const T* k_base = arena + a.layer_offset + (long long)sq.kv_head * HEAD_DIM;
    const T* v_base = k_base + (long long)PAGE_TOKENS * a.num_kv_heads * HEAD_DIM;
    const float qk_scale = a.scale * kLog2e;
    for (int tile_start = 0; tile_start < kv_end; tile_start += L::kKeys) {
        const int num_keys = imin(L::kKeys, kv_end - tile_start);
        __syncthreads();  // every warp is done with the previous tile's K and V
        stage_kv_rows<T, HEAD_DIM, PAGE_TOKENS>(k_base, table, a, tile_start, num_keys, s_kv, s_key_ok);
        if (L::kKvBufs == 2) {
            stage_kv_rows<T, HEAD_DIM, PAGE_TOKENS>(v_base, table, a, tile_start, num_keys,
                                                    s_kv + L::kKeys * L::kRowVecs, nullptr);
        }
        __syncthreads();
        const bool active = tile_start < warp_kv_end;  // some row of the warp sees a key of the tile
        MmaFragA<T> pa[L::kBlocks];
        const float correction = active ? warp_probabilities<T, HEAD_DIM>(s_q_warp, s_k, s_key_ok, scratch, tile_start,
                                                                          num_keys, qk_scale, row, pa)
                                        : 1.0f;
        if (L::kKvBufs == 1) {  // V replaces K in the one buffer
            __syncthreads();
            stage_kv_rows<T, HEAD_DIM, PAGE_TOKENS>(v_base, table, a, tile_start, num_keys, s_kv, nullptr);
            __syncthreads();
        }
        if (active) warp_pv<T, HEAD_DIM>(pa, s_v, scratch, correction, o);
    }
    store_mma_output<T, HEAD_DIM>(out, row, o);
}

template <typename T, int HEAD_DIM, int PAGE_TOKENS>
__device__ __forceinline__ void prefill_mma(
        const T* __restrict__ q, const int* __restrict__ cu_q_lens, const T* __restrict__ arena,
        const int* __restrict__ block_tables, const int* __restrict__ seq_lens, const PrefillArgs& a,
        T* __restrict__ out) {
    const PrefillSeq sq = prefill_seq<PAGE_TOKENS>(cu_q_lens, seq_lens, a);
    // Grid-stride over row tiles (uniform over the CTA): any grid width is correct.
    const int rows_total = sq.q_len * sq.group_size;
    for (int first = blockIdx.x * kMmaRowsPerCta; first < rows_total; first += gridDim.x * kMmaRowsPerCta) {
        prefill_mma_tile<T, HEAD_DIM, PAGE_TOKENS>(q, arena, block_tables, a, sq, first, out);
    }
}

#endif  // TK_MMA_ENABLED

}  // namespace tk

#if defined(TK_SCALAR_T) && defined(TK_HEAD_DIM) && defined(TK_PAGE_TOKENS)

// Argument order is tk_prefill's (mirrored by tierd_kernels.plans.plan_prefill); strides and offsets
// in elements. q's base and strides and out's base must be 16-byte aligned (the planner checks).
extern "C" __global__ void __launch_bounds__(tk::kMmaThreads) tk_prefill_mma(
        const TK_SCALAR_T* __restrict__ q, long long q_stride_token, long long q_stride_head,
        const int* __restrict__ cu_q_lens, int total_q_tokens, const TK_SCALAR_T* __restrict__ arena,
        long long slot_stride, long long layer_offset, int num_slots, int num_kv_heads,
        const int* __restrict__ block_tables, int max_pages, const int* __restrict__ seq_lens,
        int num_heads, float scale, TK_SCALAR_T* __restrict__ out) {
#if TK_MMA_ENABLED
    const tk::PrefillArgs a = tk::prefill_args(q_stride_token, q_stride_head, total_q_tokens, slot_stride,
                                               layer_offset, num_slots, num_kv_heads, max_pages, num_heads, scale);
    tk::prefill_mma<TK_SCALAR_T, TK_HEAD_DIM, TK_PAGE_TOKENS>(q, cu_q_lens, arena, block_tables, seq_lens, a, out);
#else
    __trap();  // tensor cores with bf16 need sm_80; tierd_kernels.plans never launches this below it
#endif
}

#endif
