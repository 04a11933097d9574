// Test-only kernel for the emulated nvcuda::wmma (wmma_emu.h): one warp computes d = a * b + c with
// the layouts of `mode`, or misuses the API in one of the ways the emulator must report.
// Built and run by tests/kernels/test_kernels_wmma_emu.py; never compiled for a GPU.
#include <mma.h>

namespace wmma = nvcuda::wmma;

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> Acc;

enum ProbeMode {
    kRowCol = 0,          // a row_major, b col_major (ldm 24 each)
    kColRow = 1,          // a col_major, b row_major
    kMisaligned = 2,      // a loaded 16 bytes past a 32-byte boundary
    kBadLdm = 3,          // a loaded with ldm 20 (not a multiple of 8 halves)
    kLanesDisagree = 4,   // lanes 16..31 pass another pointer
    kDivergent = 5,       // lanes 16..31 skip the load
    kBadFloatLdm = 6,     // accumulator stored with ldm 18 (not a multiple of 4 floats)
    kNoSyncAfterStore = 7 // lanes read the stored tile without __syncwarp
};

template <typename LayoutA, typename LayoutB>
__device__ void probe_mma(Acc& acc, const __half* a, const __half* b) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, LayoutA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, LayoutB> fb;
    wmma::load_matrix_sync(fa, a, 24);
    wmma::load_matrix_sync(fb, b, 24);
    wmma::mma_sync(acc, fa, fb, acc);
}

extern "C" __global__ void wmma_probe(const __half* a, const __half* b, const float* c, float* d_row,
                                      float* d_col, int mode) {
    __shared__ __align__(32) float s_tile[256];
    const int lane = threadIdx.x % 32;
    Acc acc;
    wmma::load_matrix_sync(acc, c, 16, wmma::mem_row_major);
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    if (mode == kRowCol) probe_mma<wmma::row_major, wmma::col_major>(acc, a, b);
    if (mode == kColRow) probe_mma<wmma::col_major, wmma::row_major>(acc, a, b);
    if (mode == kMisaligned) wmma::load_matrix_sync(fa, a + 8, 24);
    if (mode == kBadLdm) wmma::load_matrix_sync(fa, a, 20);
    if (mode == kLanesDisagree) wmma::load_matrix_sync(fa, a + (lane < 16 ? 0 : 16), 24);
    if (mode == kDivergent && lane < 16) wmma::load_matrix_sync(fa, a, 24);
    if (mode == kBadFloatLdm) wmma::store_matrix_sync(d_row, acc, 18, wmma::mem_row_major);
    if (mode == kNoSyncAfterStore) {
        for (int i = lane; i < 256; i += 32) s_tile[i] = -1.0f;
        __syncwarp();
        wmma::store_matrix_sync(s_tile, acc, 16, wmma::mem_row_major);
        d_row[lane] = s_tile[(lane + 1) % 32];  // stored by the next lane: stale until it has run
        return;
    }
    wmma::store_matrix_sync(d_row, acc, 16, wmma::mem_row_major);
    wmma::store_matrix_sync(d_col, acc, 16, wmma::mem_col_major);
}
