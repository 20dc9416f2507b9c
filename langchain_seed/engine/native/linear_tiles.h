/* The float32 register tiles every matmul-shaped kernel shares: the dense kernels
 * (skinny_linear.c) read their weights straight from memory, the quantised ones
 * (quantized_linear.c) from a few rows dequantised into L1, and both sum in the same order,
 * so a product on dequantised weights equals the dense product bit for bit.
 *
 * Two widths: 256-bit (AVX2 + FMA, 8 partial sums per output, tiles of 4 weight rows x 3
 * input rows in 12 of the 16 ymm registers) and, where the CPU has AVX-512F, 512-bit (16
 * partial sums per output, tiles of 4 x 6 in 24 of the 32 zmm registers), which doubles the
 * arithmetic rate of a many-row product (a verification, a prefill). The two sum in
 * different orders, so their last bits differ; a process uses one width for every product
 * (`wide_tiles`; LANGCHAIN_SEED_FLOAT_PATH=avx2 keeps it on 256 bits), and within a width
 * each output's order depends only on n_in. */
#ifndef SEED_LINEAR_TILES_H
#define SEED_LINEAR_TILES_H

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

/* How many blocks of 4 weight rows ahead a tile's first row prefetches (into L1): the
 * next block streams in from memory while this one is multiplied by the other rows. */
#define PREFETCH_BLOCKS 2

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 shuffled = _mm_movehdup_ps(s);
  s = _mm_add_ps(s, shuffled);
  shuffled = _mm_movehl_ps(shuffled, s);
  return _mm_cvtss_f32(_mm_add_ss(s, shuffled));
}

/* The four sums of a, b, c, d, in that order. */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* One tile: OB weight rows (from w) by RB input rows (from x) into out (row stride n_out).
 * pf, when not NULL, is the block of weight rows to prefetch while reading this one. The
 * order of each sum depends only on OB and n_in, never on the number of rows, so a row's
 * output is the same bit for bit whatever else is in the batch. */
#define DEFINE_TILE(OB, RB)                                                                   \
  static inline void tile_##OB##x##RB(const float *w, const float *x, const float *bias,      \
                                      float *out, long n_in, long n_out, const float *pf) {   \
    __m256 acc[OB][RB];                                                                       \
    for (int i = 0; i < OB; ++i)                                                              \
      for (int j = 0; j < RB; ++j) acc[i][j] = _mm256_setzero_ps();                           \
    long k = 0;                                                                               \
    for (; k + 8 <= n_in; k += 8) {                                                           \
      __m256 wv[OB];                                                                          \
      for (int i = 0; i < OB; ++i) wv[i] = _mm256_loadu_ps(w + i * n_in + k);                 \
      if (pf && !(k & 15))                                                                    \
        for (int i = 0; i < OB; ++i) _mm_prefetch((const char *)(pf + i * n_in + k), _MM_HINT_T0); \
      for (int j = 0; j < RB; ++j) {                                                          \
        __m256 xv = _mm256_loadu_ps(x + j * n_in + k);                                        \
        for (int i = 0; i < OB; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);       \
      }                                                                                       \
    }                                                                                         \
    if (OB == 4 && k == n_in) { /* the 4 sums of a row are adjacent outputs: one store */   \
      for (int j = 0; j < RB; ++j) {                                                          \
        __m128 s = hsum4(acc[0][j], acc[OB > 1 ? 1 : 0][j], acc[OB > 2 ? 2 : 0][j],          \
                         acc[OB > 3 ? 3 : 0][j]);                                             \
        if (bias) s = _mm_add_ps(s, _mm_loadu_ps(bias));                                      \
        _mm_storeu_ps(out + j * n_out, s);                                                    \
      }                                                                                       \
      return;                                                                                 \
    }                                                                                         \
    for (int i = 0; i < OB; ++i)                                                              \
      for (int j = 0; j < RB; ++j) {                                                          \
        float sum = hsum(acc[i][j]);                                                          \
        for (long t = k; t < n_in; ++t) sum += w[i * n_in + t] * x[j * n_in + t];             \
        out[j * n_out + i] = bias ? sum + bias[i] : sum;                                      \
      }                                                                                       \
  }

DEFINE_TILE(4, 3)
DEFINE_TILE(4, 2)
DEFINE_TILE(4, 1)
DEFINE_TILE(1, 3)
DEFINE_TILE(1, 2)
DEFINE_TILE(1, 1)

/* Every input row against OB (4 or 1) weight rows starting at output feature o (256 bits). */
#define DEFINE_ROWS(OB)                                                                       \
  static void narrow_rows_##OB(const float *w, const float *x, const float *bias, float *out,        \
                        long n_rows, long n_in, long n_out, const float *pf) {    \
    long r = 0;                                                                               \
    for (; r + 3 <= n_rows; r += 3)                                                           \
      tile_##OB##x3(w, x + r * n_in, bias, out + r * n_out, n_in, n_out, r == 0 ? pf : 0);   \
    if (n_rows - r == 2)                                                                      \
      tile_##OB##x2(w, x + r * n_in, bias, out + r * n_out, n_in, n_out, r == 0 ? pf : 0);   \
    if (n_rows - r == 1)                                                                      \
      tile_##OB##x1(w, x + r * n_in, bias, out + r * n_out, n_in, n_out, r == 0 ? pf : 0);   \
  }

DEFINE_ROWS(4)
DEFINE_ROWS(1)

/* ---- 512 bits (AVX-512F) ---- */
#define WIDE_TARGET __attribute__((target("avx512f")))

/* The 16 partial sums of v folded to 8 (lane i + lane i + 8), the order hsum and hsum4 then take. */
WIDE_TARGET static inline __m256 fold16(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/* As DEFINE_TILE, on 16 lanes: each output's order depends only on OB and n_in. */
#define DEFINE_WIDE_TILE(OB, RB)                                                              \
  WIDE_TARGET static inline void wide_tile_##OB##x##RB(const float *w, const float *x, const float *bias, \
                                                       float *out, long n_in, long n_out, const float *pf) { \
    __m512 acc[OB][RB];                                                                       \
    for (int i = 0; i < OB; ++i)                                                              \
      for (int j = 0; j < RB; ++j) acc[i][j] = _mm512_setzero_ps();                           \
    long k = 0;                                                                               \
    for (; k + 16 <= n_in; k += 16) {                                                         \
      __m512 wv[OB];                                                                          \
      for (int i = 0; i < OB; ++i) wv[i] = _mm512_loadu_ps(w + i * n_in + k);                 \
      if (pf)                                                                                 \
        for (int i = 0; i < OB; ++i) _mm_prefetch((const char *)(pf + i * n_in + k), _MM_HINT_T0); \
      for (int j = 0; j < RB; ++j) {                                                          \
        __m512 xv = _mm512_loadu_ps(x + j * n_in + k);                                        \
        for (int i = 0; i < OB; ++i) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);       \
      }                                                                                       \
    }                                                                                         \
    if (OB == 4 && k == n_in) {                                                               \
      for (int j = 0; j < RB; ++j) {                                                          \
        __m128 s = hsum4(fold16(acc[0][j]), fold16(acc[OB > 1 ? 1 : 0][j]), fold16(acc[OB > 2 ? 2 : 0][j]), \
                         fold16(acc[OB > 3 ? 3 : 0][j]));                                     \
        if (bias) s = _mm_add_ps(s, _mm_loadu_ps(bias));                                      \
        _mm_storeu_ps(out + j * n_out, s);                                                    \
      }                                                                                       \
      return;                                                                                 \
    }                                                                                         \
    for (int i = 0; i < OB; ++i)                                                              \
      for (int j = 0; j < RB; ++j) {                                                          \
        float sum = hsum(fold16(acc[i][j]));                                                  \
        for (long t = k; t < n_in; ++t) sum += w[i * n_in + t] * x[j * n_in + t];             \
        out[j * n_out + i] = bias ? sum + bias[i] : sum;                                      \
      }                                                                                       \
  }

DEFINE_WIDE_TILE(4, 6)
DEFINE_WIDE_TILE(4, 5)
DEFINE_WIDE_TILE(4, 4)
DEFINE_WIDE_TILE(4, 3)
DEFINE_WIDE_TILE(4, 2)
DEFINE_WIDE_TILE(4, 1)
DEFINE_WIDE_TILE(1, 6)
DEFINE_WIDE_TILE(1, 5)
DEFINE_WIDE_TILE(1, 4)
DEFINE_WIDE_TILE(1, 3)
DEFINE_WIDE_TILE(1, 2)
DEFINE_WIDE_TILE(1, 1)

/* Every input row against OB (4 or 1) weight rows starting at output feature o (512 bits). */
#define DEFINE_WIDE_ROWS(OB)                                                                  \
  WIDE_TARGET static void wide_rows_##OB(const float *w, const float *x, const float *bias, float *out, \
                                         long n_rows, long n_in, long n_out, const float *pf) { \
    long r = 0;                                                                               \
    for (; r + 6 <= n_rows; r += 6)                                                           \
      wide_tile_##OB##x6(w, x + r * n_in, bias, out + r * n_out, n_in, n_out, r == 0 ? pf : 0); \
    const float *xr = x + r * n_in, *first = r == 0 ? pf : 0;                                 \
    float *o = out + r * n_out;                                                               \
    switch (n_rows - r) {                                                                     \
      case 5: wide_tile_##OB##x5(w, xr, bias, o, n_in, n_out, first); break;                  \
      case 4: wide_tile_##OB##x4(w, xr, bias, o, n_in, n_out, first); break;                  \
      case 3: wide_tile_##OB##x3(w, xr, bias, o, n_in, n_out, first); break;                  \
      case 2: wide_tile_##OB##x2(w, xr, bias, o, n_in, n_out, first); break;                  \
      case 1: wide_tile_##OB##x1(w, xr, bias, o, n_in, n_out, first); break;                  \
      default: break;                                                                         \
    }                                                                                         \
  }

DEFINE_WIDE_ROWS(4)
DEFINE_WIDE_ROWS(1)

/* 1 where the products run on 512 bits: the CPU has AVX-512F and LANGCHAIN_SEED_FLOAT_PATH
 * is not "avx2". Read once per process. */
static int wide_tiles(void) {
  static int cached = -1;
  if (cached < 0) {
    const char *forced = getenv("LANGCHAIN_SEED_FLOAT_PATH");
    cached = !(forced && strcmp(forced, "avx2") == 0) && __builtin_cpu_supports("avx512f");
  }
  return cached;
}

/* Every input row against OB weight rows, at the process's width. */
#define DEFINE_DISPATCH(OB)                                                                   \
  static inline void rows_##OB(const float *w, const float *x, const float *bias, float *out, long n_rows, \
                               long n_in, long n_out, const float *pf) {                      \
    if (wide_tiles())                                                                         \
      wide_rows_##OB(w, x, bias, out, n_rows, n_in, n_out, pf);                               \
    else                                                                                      \
      narrow_rows_##OB(w, x, bias, out, n_rows, n_in, n_out, pf);                             \
  }

DEFINE_DISPATCH(4)
DEFINE_DISPATCH(1)

/* The MLP's first half in one pass: out[r, o] = silu(x[r] . gate[o]) * (x[r] . up[o]),
 * silu(g) = g / (1 + e^-g). Each block of 4 output features multiplies both weights into
 * small buffers (rows in chunks of GATE_UP_CHUNK), then combines them, so the two
 * [rows, n_out] products, the activation and the product of the eager MLP never exist. */
#define GATE_UP_CHUNK 64

static void gate_up_block(const float *x, const float *gate, const float *up, float *out, long n_rows, long n_in,
                          long n_out, long width, const float *pf_gate, const float *pf_up) {
  float g[GATE_UP_CHUNK * 4], u[GATE_UP_CHUNK * 4];
  for (long r0 = 0; r0 < n_rows; r0 += GATE_UP_CHUNK) {
    const long rows = n_rows - r0 < GATE_UP_CHUNK ? n_rows - r0 : GATE_UP_CHUNK;
    if (width == 4) {
      rows_4(gate, x + r0 * n_in, 0, g, rows, n_in, 4, r0 == 0 ? pf_gate : 0);
      rows_4(up, x + r0 * n_in, 0, u, rows, n_in, 4, r0 == 0 ? pf_up : 0);
    } else {
      rows_1(gate, x + r0 * n_in, 0, g, rows, n_in, 1, 0);
      rows_1(up, x + r0 * n_in, 0, u, rows, n_in, 1, 0);
    }
    long i = 0;
    for (; i + 8 <= rows * width; i += 8) { /* width 4: two rows of the block at a time */
      __m256 gv = _mm256_loadu_ps(g + i), uv = _mm256_loadu_ps(u + i);
      __m256 silu = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
      _mm256_storeu_ps(g + i, _mm256_mul_ps(silu, uv));
    }
    for (; i < rows * width; ++i) {
      float lane[8] = {-g[i]};
      _mm256_storeu_ps(lane, exp8(_mm256_loadu_ps(lane)));
      g[i] = g[i] / (1.0f + lane[0]) * u[i];
    }
    for (long r = 0; r < rows; ++r)
      for (long o = 0; o < width; ++o) out[(r0 + r) * n_out + o] = g[r * width + o];
  }
}

#endif
