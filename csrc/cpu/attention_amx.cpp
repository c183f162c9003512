// fastbert._C_cpu: softmax(Q K^T * scale) V over packed sequences, on the CPU's AMX tiles.
//
// The cpu backend's attention for bfloat16 on CPUs with AMX-BF16 (Sapphire Rapids and later Xeons). It reads
// Q, K and V straight from the packed (rows, 3 * heads * head_dim) output of the fused QKV GEMM and writes the
// packed (rows, heads * head_dim) context: no padding, no gather, no mask. One work item is one (sequence,
// head): K^T and V are rearranged once into AMX's pair-interleaved ("VNNI") layout, then each tile of 16
// queries computes its scores on the tiles (bf16 x bf16 -> fp32), a softmax in fp32 on AVX-512 vectors (exp2
// by a degree-4 polynomial after range reduction: relative error < 3e-6, far under bf16's 4e-3), the
// unnormalised probabilities rounded once to bf16, P V on the tiles, and the 1/sum scaling in fp32 before the
// one rounding of the output. Exactly PyTorch's flash kernel's numerics (fp32 scores and sums, bf16 P),
// without its padding.
//
// Work items are shared by the OpenMP threads of the caller, which is torch's own OpenMP runtime (the module
// is imported after torch, so its libgomp.so.1 is torch's): no second thread team. The GIL is released.
//
// Only the functions marked AMX_TARGET use AMX/AVX-512 instructions; the module loads on any x86-64 CPU and
// Python calls the kernel only where the CPU reports AMX-BF16 and the kernel asked Linux for the tile state.
#include <pybind11/pybind11.h>

#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <new>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

#define AMX_TARGET \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Linux (5.16 and later) gives a process the AMX tile state only when asked.
bool request_amx() {
  constexpr long ARCH_REQ_XCOMP_PERM = 0x1023;
  constexpr long XFEATURE_XTILEDATA = 18;
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

// Scratch memory aligned to 64 bytes: every tile row (64 bytes) then sits in one cache line, where a row
// split over two lines costs two accesses on every tile load and store.
template <typename T>
struct Aligned {
  T* ptr = nullptr;
  void resize(size_t n) {
    std::free(ptr);
    ptr = static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64));
    if (ptr == nullptr) throw std::bad_alloc();
  }
  T* data() { return ptr; }
  Aligned() = default;
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  ~Aligned() { std::free(ptr); }
};

struct Scratch {
  Aligned<uint32_t> kp;  // K^T, VNNI: per (16-key block, 32-dim chunk) a 16 x 16 tile of bf16 pairs
  Aligned<uint16_t> vp;  // V, VNNI: per (32-key block, 16-dim tile) a 16 x 32 tile of bf16
  Aligned<uint16_t> q;   // a partial query tile, zero-padded to 16 rows
  Aligned<uint16_t> p;   // 16 x L32 unnormalised probabilities, bf16
  Aligned<float> s;      // 16 x L16 scores, fp32
  Aligned<float> o;      // 16 x 64 output, fp32 (D = 32: two partial sums side by side)
  float inv[16];
};

AMX_TARGET inline __m512 exp2_poly(__m512 x) {
  // 2^x = 2^n * 2^f, n = round(x), f in [-0.5, 0.5]; 2^f by a degree-4 polynomial fitted for relative error
  // (max 2.6e-6). x <= 0 here; far below -126 the result is 0, as it should be.
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(9.57009568810463e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.591786652803421e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.40247443318367e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931217908859253e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.999992847442627e-1f));
  return _mm512_scalef_ps(p, n);
}

AMX_TARGET inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

AMX_TARGET void load_tile_config() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // GCC does not see that ldtilecfg reads cfg and would drop the stores above without this barrier
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

AMX_TARGET void release_tiles() { _tile_release(); }

// The 16-key block j of K (rows K[16j ..], dims [32c, 32c + 32)) as the B operand of Q K^T: row r holds, for
// each key n, the bf16 pair of dims (32c + 2r, 32c + 2r + 1): a 16 x 16 transpose of 32-bit pairs.
AMX_TARGET void pack_k(const uint16_t* K, int64_t ld, int64_t L, int64_t D, uint32_t* kp) {
  const int64_t nc = D / 32, nkb = (L + 15) / 16;
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t j = 0; j < nkb; ++j) {
    const int64_t keys = L - 16 * j < 16 ? L - 16 * j : 16;
    const __mmask16 valid = tail_mask(keys);
    // gather column r (one 32-bit pair per key) across the block's keys: index = key * ld / 2 (in pairs)
    const __m512i rows = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)(ld / 2)));
    for (int64_t c = 0; c < nc; ++c) {
      const uint32_t* base = reinterpret_cast<const uint32_t*>(K + 16 * j * ld + 32 * c);
      uint32_t* dst = kp + (j * nc + c) * 256;
      for (int r = 0; r < 16; ++r) {
        const __m512i col = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), valid, rows, base + r, 4);
        _mm512_storeu_si512(dst + r * 16, col);
      }
    }
  }
}

// V's 32-key block b, dims [16t, 16t + 16), as the B operand of P V: row r holds, for each dim n, the pair
// (V[32b + 2r][16t + n], V[32b + 2r + 1][16t + n]). Keys past L are zero.
AMX_TARGET void pack_v(const uint16_t* V, int64_t ld, int64_t L, int64_t D, uint16_t* vp) {
  const int64_t L32 = (L + 31) / 32 * 32, nvb = L32 / 32, ndt = D / 16;
  alignas(64) static const uint16_t lo_idx[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                  8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                  24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i lo = _mm512_load_si512(lo_idx), hi = _mm512_load_si512(hi_idx);
  for (int64_t b = 0; b < nvb; ++b) {
    for (int r = 0; r < 16; ++r) {
      const int64_t k0 = 32 * b + 2 * r, k1 = k0 + 1;
      for (int64_t cc = 0; cc < D / 32; ++cc) {
        const __m512i v0 = k0 < L ? _mm512_loadu_si512(V + k0 * ld + 32 * cc) : _mm512_setzero_si512();
        const __m512i v1 = k1 < L ? _mm512_loadu_si512(V + k1 * ld + 32 * cc) : _mm512_setzero_si512();
        _mm512_storeu_si512(vp + ((b * ndt + 2 * cc) * 16 + r) * 32, _mm512_permutex2var_epi16(v0, lo, v1));
        _mm512_storeu_si512(vp + ((b * ndt + 2 * cc + 1) * 16 + r) * 32, _mm512_permutex2var_epi16(v0, hi, v1));
      }
    }
  }
}

// Tiles 0-3 hold the 16 x 64 fp32 accumulators of P V (D = 32: two partial sums of 32 dims side by side).
AMX_TARGET inline void zero_accumulators() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

AMX_TARGET inline void store_accumulators(float* o) {
  _tile_stored(0, o, 64 * 4);
  _tile_stored(1, o + 16, 64 * 4);
  _tile_stored(2, o + 32, 64 * 4);
  _tile_stored(3, o + 48, 64 * 4);
}

AMX_TARGET void attend_one(const uint16_t* qkv, int64_t ld_qkv, uint16_t* out, int64_t ld_out, int64_t start,
                           int64_t L, int64_t h, int64_t heads, int64_t D, float scale, Scratch& sc) {
  const int64_t hidden = heads * D;
  const uint16_t* Q = qkv + start * ld_qkv + h * D;
  const uint16_t* K = Q + hidden;
  const uint16_t* V = Q + 2 * hidden;
  const int64_t nc = D / 32, ndt = D / 16;
  const int64_t nkb = (L + 15) / 16, ldS = nkb * 16;
  const int64_t L32 = (L + 31) / 32 * 32, nvb = L32 / 32;

  uint32_t* kp = sc.kp.data();
  uint16_t* vp = sc.vp.data();
  float* s = sc.s.data();
  uint16_t* p = sc.p.data();
  float* o = sc.o.data();
  // Q's rows are read a tile at a time, 16 rows heads * 3 * D apart: ask for them now (K and V are read next)
  for (int64_t r = 0; r < L; ++r) _mm_prefetch(reinterpret_cast<const char*>(Q + r * ld_qkv), _MM_HINT_T1);
  pack_k(K, ld_qkv, L, D, kp);
  pack_v(V, ld_qkv, L, D, vp);

  const float c = scale * 1.4426950408889634f;  // scores to base-2 exponents
  for (int64_t q0 = 0; q0 < L; q0 += 16) {
    const int64_t m = L - q0 < 16 ? L - q0 : 16;
    const uint16_t* qt;
    int64_t ldq;
    if (m == 16) {
      qt = Q + q0 * ld_qkv;
      ldq = ld_qkv;
    } else {  // a partial tile: the rows past the sequence are zero (never read another sequence's rows)
      std::memset(sc.q.data(), 0, 16 * D * sizeof(uint16_t));
      for (int64_t i = 0; i < m; ++i) std::memcpy(sc.q.data() + i * D, Q + (q0 + i) * ld_qkv, D * 2);
      qt = sc.q.data();
      ldq = D;
    }

    // S = Q K^T for this tile: s[i][16j + n]. Independent accumulators, stored only after all their products
    // are issued (a tile store waits for its product; storing each at once would serialise them).
    if (nc == 1) {
      _tile_loadd(4, qt, ldq * 2);
      int64_t j = 0;
      for (; j + 3 <= nkb; j += 3) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_loadd(5, kp + j * 256, 64);
        _tile_loadd(6, kp + (j + 1) * 256, 64);
        _tile_loadd(7, kp + (j + 2) * 256, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(1, 4, 6);
        _tile_dpbf16ps(2, 4, 7);
        _tile_stored(0, s + j * 16, ldS * 4);
        _tile_stored(1, s + (j + 1) * 16, ldS * 4);
        _tile_stored(2, s + (j + 2) * 16, ldS * 4);
      }
      for (; j < nkb; ++j) {
        _tile_zero(0);
        _tile_loadd(5, kp + j * 256, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_stored(0, s + j * 16, ldS * 4);
      }
    } else {  // D = 64: Q in two tiles (dims 0-31, 32-63)
      _tile_loadd(4, qt, ldq * 2);
      _tile_loadd(3, qt + 32, ldq * 2);
      int64_t j = 0;
      for (; j + 2 <= nkb; j += 2) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_loadd(5, kp + (j * 2) * 256, 64);
        _tile_loadd(6, kp + (j * 2 + 2) * 256, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(7, kp + (j * 2 + 1) * 256, 64);
        _tile_dpbf16ps(0, 3, 7);
        _tile_loadd(5, kp + (j * 2 + 3) * 256, 64);
        _tile_dpbf16ps(1, 3, 5);
        _tile_stored(0, s + j * 16, ldS * 4);
        _tile_stored(1, s + (j + 1) * 16, ldS * 4);
      }
      for (; j < nkb; ++j) {
        _tile_zero(0);
        _tile_loadd(5, kp + (j * 2) * 256, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(6, kp + (j * 2 + 1) * 256, 64);
        _tile_dpbf16ps(0, 3, 6);
        _tile_stored(0, s + j * 16, ldS * 4);
      }
    }

    // softmax numerators exp(scale * (s - max)) in fp32, rounded once to bf16; keys past L and rows past the
    // sequence are zero
    const __m512 vc = _mm512_set1_ps(c);
    for (int64_t i = 0; i < m; ++i) {
      const float* srow = s + i * ldS;
      __m512 vmax = _mm512_set1_ps(-3.0e38f);
      int64_t k = 0;
      for (; k + 16 <= L; k += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(srow + k));
      if (k < L) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, tail_mask(L - k), srow + k));
      const __m512 vb = _mm512_set1_ps(-_mm512_reduce_max_ps(vmax) * c);
      __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
      uint16_t* prow = p + i * L32;
      for (k = 0; k + 32 <= L; k += 32) {
        const __m512 e0 = exp2_poly(_mm512_fmadd_ps(_mm512_loadu_ps(srow + k), vc, vb));
        const __m512 e1 = exp2_poly(_mm512_fmadd_ps(_mm512_loadu_ps(srow + k + 16), vc, vb));
        sum0 = _mm512_add_ps(sum0, e0);
        sum1 = _mm512_add_ps(sum1, e1);
        _mm512_storeu_si512(prow + k, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
      }
      if (k < L32) {
        const __mmask16 m0 = tail_mask(L - k), m1 = k + 16 < L ? tail_mask(L - k - 16) : 0;
        const __m512 e0 = _mm512_maskz_mov_ps(m0, exp2_poly(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, srow + k), vc, vb)));
        const __m512 e1 = _mm512_maskz_mov_ps(m1, exp2_poly(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, srow + k + 16), vc, vb)));
        sum0 = _mm512_add_ps(sum0, e0);
        sum1 = _mm512_add_ps(sum1, e1);
        _mm512_storeu_si512(prow + k, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
      }
      sc.inv[i] = 1.0f / _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
    }
    if (m < 16) std::memset(p + m * L32, 0, (16 - m) * L32 * sizeof(uint16_t));

    // O = P V on the tiles
    if (ndt == 2) {  // D = 32: even and odd key blocks in separate accumulators (two shorter chains), summed below
      zero_accumulators();
      int64_t b = 0;
      for (; b + 2 <= nvb; b += 2) {
        _tile_loadd(4, p + b * 32, L32 * 2);
        _tile_loadd(6, vp + (b * 2) * 512, 64);
        _tile_loadd(7, vp + (b * 2 + 1) * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, p + (b + 1) * 32, L32 * 2);
        _tile_loadd(6, vp + (b * 2 + 2) * 512, 64);
        _tile_loadd(7, vp + (b * 2 + 3) * 512, 64);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      if (b < nvb) {
        _tile_loadd(4, p + b * 32, L32 * 2);
        _tile_loadd(6, vp + (b * 2) * 512, 64);
        _tile_loadd(7, vp + (b * 2 + 1) * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
      }
      store_accumulators(o);
      for (int64_t i = 0; i < m; ++i) {
        const __m512 inv = _mm512_set1_ps(sc.inv[i]);
        uint16_t* orow = out + (start + q0 + i) * ld_out + h * D;
        const float* oi = o + i * 64;
        const __m512 lo = _mm512_mul_ps(_mm512_add_ps(_mm512_loadu_ps(oi), _mm512_loadu_ps(oi + 32)), inv);
        const __m512 hi = _mm512_mul_ps(_mm512_add_ps(_mm512_loadu_ps(oi + 16), _mm512_loadu_ps(oi + 48)), inv);
        _mm512_storeu_si512(orow, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
    } else {  // D = 64: one accumulator per 16 output dims
      zero_accumulators();
      for (int64_t b = 0; b < nvb; ++b) {
        _tile_loadd(4, p + b * 32, L32 * 2);
        _tile_loadd(6, vp + (b * 4) * 512, 64);
        _tile_loadd(7, vp + (b * 4 + 1) * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, vp + (b * 4 + 2) * 512, 64);
        _tile_loadd(6, vp + (b * 4 + 3) * 512, 64);
        _tile_dpbf16ps(2, 4, 5);
        _tile_dpbf16ps(3, 4, 6);
      }
      store_accumulators(o);
      for (int64_t i = 0; i < m; ++i) {
        const __m512 inv = _mm512_set1_ps(sc.inv[i]);
        uint16_t* orow = out + (start + q0 + i) * ld_out + h * D;
        const float* oi = o + i * 64;
        _mm512_storeu_si512(orow, (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(_mm512_loadu_ps(oi + 16), inv),
                                                                 _mm512_mul_ps(_mm512_loadu_ps(oi), inv)));
        _mm512_storeu_si512(orow + 32, (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(_mm512_loadu_ps(oi + 48), inv),
                                                                      _mm512_mul_ps(_mm512_loadu_ps(oi + 32), inv)));
      }
    }
  }
}

void check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("fastbert._C_cpu.attention_bf16: " + what);
}

// qkv: (rows, 3 * heads * D) bf16 with row stride ld_qkv elements (Q, K, V side by side, head-major inside
// each); out: (rows, heads * D) bf16 with row stride ld_out; cu_seqlens: nseq + 1 int32 offsets. Rows past
// cu_seqlens[nseq] (padding rows) are set to zero.
void attention_bf16(uintptr_t qkv_ptr, int64_t ld_qkv, uintptr_t out_ptr, int64_t ld_out, uintptr_t cu_ptr,
                    int64_t nseq, int64_t rows, int64_t heads, int64_t D, double scale, int threads) {
  const auto* qkv = reinterpret_cast<const uint16_t*>(qkv_ptr);
  auto* out = reinterpret_cast<uint16_t*>(out_ptr);
  const auto* cu = reinterpret_cast<const int32_t*>(cu_ptr);
  check(D == 32 || D == 64, "head_dim must be 32 or 64, got " + std::to_string(D));
  check(heads > 0 && nseq >= 0 && rows >= 0 && threads > 0, "bad sizes");
  check(ld_qkv >= 3 * heads * D && ld_out >= heads * D, "row strides are too small for the heads");
  int64_t longest = 0;
  check(nseq == 0 || cu[0] == 0, "cu_seqlens must start at 0");
  for (int64_t b = 0; b < nseq; ++b) {
    const int64_t L = (int64_t)cu[b + 1] - cu[b];
    check(L >= 0, "cu_seqlens must not decrease");
    longest = L > longest ? L : longest;
  }
  check(nseq == 0 || cu[nseq] <= rows, "cu_seqlens ends past the rows");
  const int64_t total = nseq ? cu[nseq] : 0;
  {
    py::gil_scoped_release nogil;
    for (int64_t r = total; r < rows; ++r) std::memset(out + r * ld_out, 0, heads * D * sizeof(uint16_t));
    const int64_t items = nseq * heads;
    const int64_t L16 = (longest + 15) / 16 * 16, L32 = (longest + 31) / 32 * 32;
#pragma omp parallel num_threads(threads)
    {
      Scratch sc;
      sc.kp.resize(L16 * D / 2 + 16);
      sc.vp.resize(L32 * D + 32);
      sc.q.resize(16 * D);
      sc.p.resize(16 * L32 + 32);
      sc.s.resize(16 * L16 + 16);
      sc.o.resize(16 * 64);
      load_tile_config();
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < items; ++it) {
        const int64_t b = it / heads, h = it % heads;
        const int64_t L = (int64_t)cu[b + 1] - cu[b];
        if (L > 0) attend_one(qkv, ld_qkv, out, ld_out, cu[b], L, h, heads, D, (float)scale, sc);
      }
      release_tiles();
    }
  }
}

}  // namespace

PYBIND11_MODULE(_C_cpu, m) {
  m.doc() = "fastbert's CPU kernels: attention over packed sequences on AMX tiles (bf16)";
  m.def("request_amx", &request_amx, "Ask Linux for the AMX tile state; True when granted.");
  m.def("attention_bf16", &attention_bf16, py::arg("qkv_ptr"), py::arg("ld_qkv"), py::arg("out_ptr"),
        py::arg("ld_out"), py::arg("cu_seqlens_ptr"), py::arg("nseq"), py::arg("rows"), py::arg("heads"),
        py::arg("head_dim"), py::arg("scale"), py::arg("threads"));
}
