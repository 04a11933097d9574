// Shared device helpers of the tierd kernels.
//
// NVRTC-compatible: no host headers, C++14, only <cuda_fp16.h> and <cuda_bf16.h>. Every global
// memory access goes through load/store helpers so that the CPU emulator used by the test suite
// (TK_EMULATION) can bounds- and alignment-check it; on the GPU they are plain loads and stores.
#ifndef TIERD_KERNELS_COMMON_CUH
#define TIERD_KERNELS_COMMON_CUH

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#ifdef TK_EMULATION
#define TK_ACCESS_OK(ptr, nbytes, is_write) ::emu::access_ok((const void*)(ptr), (nbytes), (is_write))
#else
#define TK_ACCESS_OK(ptr, nbytes, is_write) true
#endif

namespace tk {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Vector width of global loads and stores: 16 bytes is the widest single access a thread can issue.
constexpr int kVecBytes = 16;
constexpr float kLog2e = 1.4426950408889634f;
// Finite stand-in for -inf in running maxima: exp2(kNegBig - x) is exactly 0 for any real score and
// kNegBig - kNegBig is 0, never NaN, so a stream or split that saw no key needs no special case.
constexpr float kNegBig = -1.0e30f;
// A split whose log-sum-exp is at or below this saw no key (its lse was left at kNegBig).
constexpr float kEmptyLseThreshold = -5.0e29f;

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ int iclamp(int x, int lo, int hi) { return imin(imax(x, lo), hi); }

// ---- checked global memory access -------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T load(const T* ptr) {
    if (!TK_ACCESS_OK(ptr, sizeof(T), false)) return T();
    return *ptr;
}

template <typename T>
__device__ __forceinline__ void store(T* ptr, T value) {
    if (!TK_ACCESS_OK(ptr, sizeof(T), true)) return;
    *ptr = value;
}

__device__ __forceinline__ uint4 zero_vec() {
    uint4 v;
    v.x = 0u; v.y = 0u; v.z = 0u; v.w = 0u;
    return v;
}

// 16-byte load; ptr must be 16-byte aligned (the wrappers check base pointers and strides).
__device__ __forceinline__ uint4 load16(const void* ptr) {
    if (!TK_ACCESS_OK(ptr, kVecBytes, false)) return zero_vec();
    return *reinterpret_cast<const uint4*>(ptr);
}

__device__ __forceinline__ void store16(void* ptr, uint4 value) {
    if (!TK_ACCESS_OK(ptr, kVecBytes, true)) return;
    *reinterpret_cast<uint4*>(ptr) = value;
}

// ---- element conversions ----------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> struct FromFloat;
template <> struct FromFloat<float> {
    static __device__ __forceinline__ float convert(float x) { return x; }
};
template <> struct FromFloat<__half> {
    static __device__ __forceinline__ __half convert(float x) { return __float2half_rn(x); }
};
template <> struct FromFloat<__nv_bfloat16> {
    static __device__ __forceinline__ __nv_bfloat16 convert(float x) { return __float2bfloat16_rn(x); }
};

template <typename T>
__device__ __forceinline__ T from_float(float x) { return FromFloat<T>::convert(x); }

// Unpack one 16-byte vector holding kVecBytes / sizeof(T) elements of T into floats.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& raw, float* out) {
    const T* elems = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVecBytes / (int)sizeof(T); ++i) out[i] = to_float(elems[i]);
}

// ---- how a head_dim row is spread over the lanes of a warp ------------------------------------
//
// One row (the head_dim elements of one token and head) is read by kLanesPerRow consecutive lanes,
// each holding kVecsPerLane 16-byte vectors; lane r of a row holds vectors r, r + kLanesPerRow, ...
// so that the lanes of a row read one contiguous span per step. A warp covers kRowsPerWarp rows.
template <typename T, int HEAD_DIM>
struct RowLayout {
    static constexpr int kVecElems = kVecBytes / (int)sizeof(T);
    static constexpr int kVecsPerRow = HEAD_DIM / kVecElems;
    static constexpr int kLanesPerRow = kVecsPerRow < kWarpSize ? kVecsPerRow : kWarpSize;
    static constexpr int kVecsPerLane = kVecsPerRow / kLanesPerRow;
    static constexpr int kElemsPerLane = kVecsPerLane * kVecElems;
    static constexpr int kRowsPerWarp = kWarpSize / kLanesPerRow;
    static_assert(HEAD_DIM % kVecElems == 0, "head_dim must fill whole 16-byte vectors");
    static_assert(kVecsPerRow % kLanesPerRow == 0, "a row must split evenly over its lanes");
    static_assert((kLanesPerRow & (kLanesPerRow - 1)) == 0, "lanes per row must be a power of two");

    // Element offset inside the row of the lane's j-th vector.
    static __device__ __forceinline__ int vec_offset(int j, int lane_in_row) {
        return (j * kLanesPerRow + lane_in_row) * kVecElems;
    }
};

// Sum over the WIDTH lanes of an aligned lane group (WIDTH a power of two <= 32). Every lane of the
// warp must call it: the shuffles name the full mask.
template <int WIDTH>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
    for (int offset = WIDTH / 2; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFullMask, x, offset);
    return x;
}

// Online-softmax state of one query row over the keys one lane group has seen: running max m and
// sum l in the log2 domain, and the unnormalised output acc (this lane's elements of the row).
template <int ELEMS>
struct SoftmaxState {
    float m;
    float l;
    float acc[ELEMS];

    __device__ __forceinline__ void reset() {
        m = kNegBig;
        l = 0.0f;
#pragma unroll
        for (int e = 0; e < ELEMS; ++e) acc[e] = 0.0f;
    }

    // Fold in one key whose score (already scaled to log2 units) is s and whose value row is v.
    __device__ __forceinline__ void update(float s, const float* v) {
        const float m_new = fmaxf(m, s);
        const float correction = exp2f(m - m_new);
        const float p = exp2f(s - m_new);
        l = l * correction + p;
#pragma unroll
        for (int e = 0; e < ELEMS; ++e) acc[e] = acc[e] * correction + p * v[e];
        m = m_new;
    }
};

}  // namespace tk

#endif  // TIERD_KERNELS_COMMON_CUH
