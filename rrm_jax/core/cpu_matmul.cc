// Small-row float32 matmul for the CPU decode step: y[M, N] = x[M, K] @ w[K, N], w packed in column panels.
//
// A decode step multiplies a few rows (M = the batch, 1..64) by every weight matrix once: a stream over the
// weights with M multiply-adds per weight read. XLA:CPU's dot runs this shape at about half the read bandwidth
// (`python -m rrm_jax.benchmarks.decode_floor`). Here w arrives packed as [P, K, 48] (rrm_jax.core.cpu_kernel.pack,
// once per generate call), so each 48-column panel is one contiguous stream that the hardware prefetcher follows;
// in w's own [K, N] layout a panel is 192 bytes per row at a stride of N floats, a new page every row for wide w,
// and that ran at 15-20 GB/s against 25-38 packed. Each thread takes a contiguous run of panels and keeps an 8-row x
// 48-column block of y in registers: every weight is read once per 8 rows and used for 8 fused multiply-adds.
// Compiled at first use by rrm_jax.core.cpu_kernel (-march=native).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <sys/mman.h>

#include "xla/ffi/api/ffi.h"

#ifndef __AVX512F__
#error "rrm-jax's CPU matmul kernel is written for AVX-512 (32 vector registers)"
#endif

namespace ffi = xla::ffi;

namespace {

typedef float vec __attribute__((vector_size(64), aligned(4)));  // one zmm register, unaligned loads
constexpr int64_t VW = 16;        // floats per vector
constexpr int NB = 3;             // vectors per panel: 8 x 3 accumulators + 3 weights + 1 broadcast <= 32 registers
constexpr int64_t PW = VW * NB;   // panel width in floats (rrm_jax.core.cpu_kernel.PANEL)
constexpr int MR = 8;             // rows per register block
constexpr int64_t KC = 64;        // panel rows summed in registers before they are added to y

inline vec load(const float* p) { vec v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }

// y[m0:m0+R, n0:min(n0+NV*16, N)] += x[m0:m0+R, k0:k1] @ pan[k0:k1, :NV*16]; pan is one [K, 48] panel.
template <int R, int NV>
void block(const float* x, const float* pan, float* y, int64_t K, int64_t N, int64_t m0, int64_t n0, int64_t k0,
           int64_t k1) {
  vec acc[R][NV] = {};
  const float* wp = pan + k0 * PW;
  for (int64_t k = k0; k < k1; ++k, wp += PW) {
    vec wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = load(wp + j * VW);
    for (int r = 0; r < R; ++r) {
      vec b = vec{} + x[(m0 + r) * K + k];
      for (int j = 0; j < NV; ++j) acc[r][j] += b * wv[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) {
      float* yp = y + (m0 + r) * N + n0 + j * VW;
      const int64_t cols = N - (n0 + j * VW);
      if (cols >= VW) {
        store(yp, load(yp) + acc[r][j]);
      } else {  // the last, partial vector of a row: N need not be a multiple of 16
        for (int64_t c = 0; c < cols; ++c) yp[c] += acc[r][j][c];
      }
    }
}

template <int R, int NV>
void rows(const float* x, const float* pan, float* y, int64_t K, int64_t N, int64_t m0, int64_t n0) {
  for (int64_t k0 = 0; k0 < K; k0 += KC) block<R, NV>(x, pan, y, K, N, m0, n0, k0, k0 + KC < K ? k0 + KC : K);
}

// One panel, all rows of x: the panel (K x 48 floats, contiguous) stays in L2 across the 8-row blocks.
template <int NV>
void panel(const float* x, const float* pan, float* y, int64_t M, int64_t K, int64_t N, int64_t n0) {
  int64_t m = 0;
  for (; m + MR <= M; m += MR) rows<MR, NV>(x, pan, y, K, N, m, n0);
  switch (M - m) {
    case 1: rows<1, NV>(x, pan, y, K, N, m, n0); break;
    case 2: rows<2, NV>(x, pan, y, K, N, m, n0); break;
    case 3: rows<3, NV>(x, pan, y, K, N, m, n0); break;
    case 4: rows<4, NV>(x, pan, y, K, N, m, n0); break;
    case 5: rows<5, NV>(x, pan, y, K, N, m, n0); break;
    case 6: rows<6, NV>(x, pan, y, K, N, m, n0); break;
    case 7: rows<7, NV>(x, pan, y, K, N, m, n0); break;
  }
}

// x [M, K], w packed [L, P, K, 48] (column panels, zero-padded past N) of which layer `layer` is used,
// y [M, N] with N <= 48 P. Taking the stacked weights and an index spares a per-layer copy of them.
ffi::Error Matmul(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y, int64_t layer) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 4 || yd.size() != 2 || wd[2] != xd[1] || wd[3] != PW || yd[0] != xd[0] ||
      yd[1] > wd[1] * PW || layer < 0 || layer >= wd[0])
    return ffi::Error::InvalidArgument("rrm_cpu_matmul takes x [M, K], w [L, P, K, 48], 0 <= layer < L and gives "
                                       "y [M, N <= 48 P]");
  const int64_t M = xd[0], K = xd[1], P = wd[1], N = yd[1];
  const float* xp = x.typed_data();
  const float* wp = w.typed_data() + layer * P * K * PW;
  float* yp = y->typed_data();
  std::memset(yp, 0, sizeof(float) * M * N);
  // Static schedule: each thread streams one contiguous run of panels.
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < P; ++p) {
    const int64_t n0 = p * PW, left = (N - n0 + VW - 1) / VW;
    const float* pan = wp + p * K * PW;
    if (left >= 3) panel<3>(xp, pan, yp, M, K, N, n0);
    else if (left == 2) panel<2>(xp, pan, yp, M, K, N, n0);
    else if (left == 1) panel<1>(xp, pan, yp, M, K, N, n0);
  }
  return ffi::Error::Success();
}

// Packs the column-wise concatenation of the inputs, each [L, K, N_i] (or [L, N_i, K] when `transposed`), into
// out [L, P, K, 48], zero past the last column. A memory-bound copy: XLA's pad/concatenate/transpose of the same
// took 1.7 s for Qwen2.5-0.5B.
ffi::Error Pack(ffi::RemainingArgs ins, ffi::ResultBuffer<ffi::F32> out, bool transposed) {
  auto od = out->dimensions();
  if (od.size() != 4 || od[3] != PW) return ffi::Error::InvalidArgument("rrm_cpu_pack gives [L, P, K, 48]");
  const int64_t L = od[0], P = od[1], K = od[2];
  std::vector<const float*> src;
  std::vector<int64_t> first;  // first output column of each input, then the total
  int64_t cols = 0;
  for (size_t i = 0; i < ins.size(); ++i) {
    auto b = ins.get<ffi::Buffer<ffi::F32>>(i);
    if (b.has_error()) return b.error();
    auto d = b->dimensions();
    if (d.size() != 3 || d[0] != L || d[transposed ? 2 : 1] != K)
      return ffi::Error::InvalidArgument("rrm_cpu_pack inputs are [L, K, N] ([L, N, K] transposed) with out's L, K");
    src.push_back(b->typed_data());
    first.push_back(cols);
    cols += d[transposed ? 1 : 2];
  }
  first.push_back(cols);
  if (cols > P * PW) return ffi::Error::InvalidArgument("rrm_cpu_pack: more columns than 48 P");
  float* o = out->typed_data();
  // The packed weights are read every decode step: ask for 2 MiB pages before the first write touches them (fewer
  // TLB misses in the streams, and a few hundred page faults here instead of one per 4 KiB).
  const uintptr_t huge = uintptr_t(1) << 21, begin = reinterpret_cast<uintptr_t>(o);
  const uintptr_t from = (begin + huge - 1) & ~(huge - 1), to = (begin + sizeof(float) * L * P * K * PW) & ~(huge - 1);
  if (to > from) madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
  if (transposed) {  // each input row is a panel column: one 48 x K tile per panel, read and written contiguously
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < L * P; ++t) {
      const int64_t l = t / P, p = t % P;
      float* dst = o + t * K * PW;
      for (int64_t c = 0; c < PW; ++c) {
        const int64_t col = p * PW + c;
        const size_t i = std::upper_bound(first.begin(), first.end(), col) - first.begin() - 1;
        if (col >= cols) {
          for (int64_t k = 0; k < K; ++k) dst[k * PW + c] = 0.f;
          continue;
        }
        const int64_t n = first[i + 1] - first[i];
        const float* row = src[i] + (l * n + col - first[i]) * K;
        for (int64_t k = 0; k < K; ++k) dst[k * PW + c] = row[k];
      }
    }
    return ffi::Error::Success();
  }
  // Blocks of input rows: every input row is read once, contiguously, and cut into its panels' 48-column pieces
  // (reading a panel's column strip instead walks the input at a stride of a row per 192 bytes: 2-3x slower).
  constexpr int64_t KB = 64;
  const int64_t blocks = (K + KB - 1) / KB;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < L * blocks; ++t) {
    const int64_t l = t / blocks, k0 = (t % blocks) * KB, k1 = std::min(K, k0 + KB);
    float* lo = o + l * P * K * PW;
    for (int64_t k = k0; k < k1; ++k) {
      for (size_t i = 0; i + 1 < first.size(); ++i) {
        const int64_t n = first[i + 1] - first[i];
        const float* row = src[i] + (l * K + k) * n;
        for (int64_t c = first[i]; c < first[i + 1];) {  // one piece per panel the input's columns cross
          const int64_t p = c / PW, end = std::min(first[i + 1], (p + 1) * PW);
          std::memcpy(lo + (p * K + k) * PW + c % PW, row + (c - first[i]), sizeof(float) * (end - c));
          c = end;
        }
      }
      if (cols < P * PW) std::memset(lo + ((P - 1) * K + k) * PW + cols % PW, 0, sizeof(float) * (P * PW - cols));
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RrmCpuMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RrmCpuPack, Pack,
                              ffi::Ffi::Bind().RemainingArgs().Ret<ffi::Buffer<ffi::F32>>().Attr<bool>("transposed"));
