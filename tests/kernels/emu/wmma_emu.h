// CPU emulation of the subset of nvcuda::wmma (<mma.h>) the tierd kernels use; included by cuda_emu.h.
//
// Only the m16n16k16 shape with __half / __nv_bfloat16 inputs and float accumulators exists. A
// fragment holds the WHOLE 16x16 tile in every thread (num_elements = 256; element (i, j) of the
// logical matrix is x[i * 16 + j]: matrix_a is M x K, matrix_b is K x N, an accumulator M x N), so
// kernels that touch x[] only through uniform loops (fill, scale) behave as on the GPU, where the
// element-to-lane layout is unspecified.
//
// Memory addressing (the CUDA definition): with row_major / mem_row_major, element (i, j) is at
// ptr[i * ldm + j]; with col_major / mem_col_major, at ptr[i + j * ldm].
//
// Like the GPU functions, every operation first waits for all lanes of the warp (two warp barriers
// of the fiber scheduler, as a shuffle does), and reports an error through emu::fail when the lanes
// passed different operations, pointers, ldm or layouts, when a pointer is not 32-byte aligned, or
// when ldm is not a multiple of 16 bytes (8 elements of a 16-bit type, 4 floats). Loads then read
// the whole tile in every lane; mma_sync computes in fp32 (exact products of the 16-bit inputs);
// store_matrix_sync writes from each lane only its share of the tile (elements whose index i*16+j is
// congruent to the lane modulo 32), so that a lane reading the stored tile before the others have
// stored (a missing __syncwarp) sees stale data, as it could on the GPU.
#ifndef TIERD_WMMA_EMU_H
#define TIERD_WMMA_EMU_H

namespace emu {
namespace wmma_detail {

enum class Op { kLoadA, kLoadB, kLoadC, kStore, kMma };

struct Call {
    Op op;
    uintptr_t ptr;
    unsigned ldm;
    int layout;
};

inline const char* op_name(Op op) {
    switch (op) {
        case Op::kLoadA: return "load_matrix_sync(matrix_a)";
        case Op::kLoadB: return "load_matrix_sync(matrix_b)";
        case Op::kLoadC: return "load_matrix_sync(accumulator)";
        case Op::kStore: return "store_matrix_sync";
        case Op::kMma: return "mma_sync";
    }
    return "?";
}

inline std::vector<Call>& calls() {
    static std::vector<Call> slots;  // one per thread of the block
    return slots;
}

inline int lane() { return state().current->linear % 32; }

inline std::string where(uintptr_t p) {
    const State& s = state();
    char text[160];
    std::snprintf(text, sizeof text, " (pointer %#lx, thread (%u,%u,%u) of block (%u,%u,%u))",
                  static_cast<unsigned long>(p), s.current->thread_idx.x, s.current->thread_idx.y,
                  s.current->thread_idx.z, s.block_idx.x, s.block_idx.y, s.block_idx.z);
    return text;
}

// The checks of one warp-wide operation; every lane of the warp must call it.
inline void warp_call(Op op, const void* ptr, unsigned ldm, int layout, std::size_t elem_bytes) {
    State& s = state();
    const int me = s.current->linear;
    std::vector<Call>& slots = calls();
    if (slots.size() < s.fibers.size()) slots.resize(s.fibers.size());
    const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
    if (op != Op::kMma) {
        if (p % 32 != 0) {
            fail(std::string("wmma ") + op_name(op) + ": pointer not 32-byte aligned" + where(p));
        }
        if ((ldm * elem_bytes) % 16 != 0) {
            fail(std::string("wmma ") + op_name(op) + ": ldm " + std::to_string(ldm) + " is not a multiple of " +
                 std::to_string(16 / elem_bytes) + " elements" + where(p));
        }
    }
    slots[me] = Call{op, p, ldm, layout};
    yield_to_scheduler(FiberState::kAtWarpBarrier);
    const Call& first = slots[me - me % 32];
    const Call& mine = slots[me];
    if (first.op != mine.op || first.ptr != mine.ptr || first.ldm != mine.ldm || first.layout != mine.layout) {
        fail(std::string("wmma ") + op_name(op) + ": lanes of one warp passed different operations, pointers, "
             "ldm or layouts (lane " + std::to_string(me % 32) + " vs lane 0: " + op_name(first.op) + ")" +
             where(p));
    }
    yield_to_scheduler(FiberState::kAtWarpBarrier);  // nobody posts its next call before all compared
}

inline std::size_t offset(int i, int j, unsigned ldm, bool row_major) {
    return row_major ? static_cast<std::size_t>(i) * ldm + j : i + static_cast<std::size_t>(j) * ldm;
}

template <typename T> struct IsInput : std::false_type {};
template <> struct IsInput<__half> : std::true_type {};
template <> struct IsInput<__nv_bfloat16> : std::true_type {};

inline float as_float(float x) { return x; }
inline float as_float(__half x) { return __half2float(x); }
inline float as_float(__nv_bfloat16 x) { return __bfloat162float(x); }

}  // namespace wmma_detail
}  // namespace emu

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator has the m16n16k16 shape only");
    static_assert(std::is_same<Use, accumulator>::value ? std::is_same<T, float>::value
                                                        : ::emu::wmma_detail::IsInput<T>::value,
                  "the emulator has __half / __nv_bfloat16 inputs and float accumulators only");
    static_assert(std::is_same<Use, accumulator>::value ? std::is_same<Layout, void>::value
                                                        : (std::is_same<Layout, row_major>::value ||
                                                           std::is_same<Layout, col_major>::value),
                  "matrix_a / matrix_b need row_major or col_major; an accumulator takes no layout");

public:
    enum { num_elements = 256 };
    typedef T element_type;
    T x[num_elements];  // logical element (i, j) at x[i * 16 + j], the same in every lane
};

template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, const T& value) {
    for (int e = 0; e < 256; ++e) f.x[e] = value;
}

template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* ptr, unsigned ldm) {
    using namespace ::emu::wmma_detail;
    static_assert(!std::is_same<Use, accumulator>::value, "an accumulator load needs a layout_t");
    const bool row = std::is_same<Layout, row_major>::value;
    warp_call(std::is_same<Use, matrix_a>::value ? Op::kLoadA : Op::kLoadB, ptr, ldm, row ? 0 : 1, sizeof(T));
    for (int i = 0; i < 16; ++i) {
        for (int j = 0; j < 16; ++j) f.x[i * 16 + j] = ptr[offset(i, j, ldm, row)];
    }
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* ptr, unsigned ldm,
                             layout_t layout) {
    using namespace ::emu::wmma_detail;
    const bool row = layout == mem_row_major;
    warp_call(Op::kLoadC, ptr, ldm, row ? 0 : 1, sizeof(float));
    for (int i = 0; i < 16; ++i) {
        for (int j = 0; j < 16; ++j) f.x[i * 16 + j] = ptr[offset(i, j, ldm, row)];
    }
}

inline void store_matrix_sync(float* ptr, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
    using namespace ::emu::wmma_detail;
    const bool row = layout == mem_row_major;
    warp_call(Op::kStore, ptr, ldm, row ? 0 : 1, sizeof(float));
    for (int e = lane(); e < 256; e += 32) ptr[offset(e / 16, e % 16, ldm, row)] = f.x[e];
}

// d = a * b + c (d may be c).
template <typename T, typename LayoutA, typename LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
    using namespace ::emu::wmma_detail;
    warp_call(Op::kMma, nullptr, 0, 0, 1);
    float af[256], bf[256], result[256];
    for (int e = 0; e < 256; ++e) {
        af[e] = as_float(a.x[e]);
        bf[e] = as_float(b.x[e]);
    }
    for (int i = 0; i < 16; ++i) {
        for (int j = 0; j < 16; ++j) {
            float acc = c.x[i * 16 + j];
            for (int k = 0; k < 16; ++k) acc += af[i * 16 + k] * bf[k * 16 + j];
            result[i * 16 + j] = acc;
        }
    }
    for (int e = 0; e < 256; ++e) d.x[e] = result[e];
}

}  // namespace wmma
}  // namespace nvcuda

#endif  // TIERD_WMMA_EMU_H
