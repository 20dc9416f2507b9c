/* The float32 register tiles every matmul-shaped kernel shares: the dense kernels
 * (skinny_linear.c) read their weights straight from memory, the quantised ones
 * (quantized_linear.c) from a few rows dequantised into L1, and both sum in the same order,
 * so a product on dequantised weights equals the dense product bit for bit.
 *
 * Two widths, the same bits: 256-bit tiles (AVX2 + FMA: 4 weight rows x 3 input rows in 12
 * of the 16 ymm registers, 8 partial sums per output) and, where the CPU has AVX-512F,
 * 512-bit tiles that hold two weight rows' 8 partial sums side by side in each zmm register
 * (4 weight rows x 12 input rows in 24 of the 32), so every partial sum takes the same
 * products in the same order and is reduced the same way, with twice the arithmetic per
 * instruction: a many-row product (a verification, a prefill) runs about 1.3x faster.
 * LANGCHAIN_SEED_FLOAT_PATH=avx2 keeps a process on 256 bits (to compare the bits).
 * A PAIRED block of 4 weight rows, which the quantised kernels dequantise into for the
 * 512-bit tiles, interleaves rows 0 and 1 eight values at a time (out[16c:16c+8] = row 0's
 * values 8c..8c+7, out[16c+8:16c+16] = row 1's), then rows 2 and 3 likewise, so each pair
 * loads in one instruction. Within either width each output's order depends only on n_in.  */
#ifndef SEED_LINEAR_TILES_H
#define SEED_LINEAR_TILES_H

#include <immintrin.h>

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

/* The 4 outputs of one input row from a 512-bit tile's two registers ([row 0 | row 1] and
 * [row 2 | row 3] partial sums), reduced as the 256-bit tile reduces its four, plus the bias. */
WIDE_TARGET static inline void store_paired_sums(__m512 acc01, __m512 acc23, const float *bias, float *out) {
  __m128 s = hsum4(low_half(acc01), high_half(acc01), low_half(acc23), high_half(acc23));
  if (bias) s = _mm_add_ps(s, _mm_loadu_ps(bias));
  _mm_storeu_ps(out, s);
}

/* tile_4xRB on 512-bit registers, each holding two weight rows' 8 partial sums side by side
 * ([row 0 | row 1] and [row 2 | row 3] against one input row): every lane takes exactly the
 * products and sums the 256-bit tile's lane takes, and the halves are reduced as it reduces
 * its registers, so the outputs are the same bits at twice the arithmetic per instruction.
 * LOAD01 / LOAD23 give the two weight registers at k: from a row-major block (two 256-bit
 * loads each) or from a PAIRED one (module notes; one load each, n_in a multiple of 8). */
#define DEFINE_WIDE_TILE(NAME, RB, LOAD01, LOAD23)                                            \
  WIDE_TARGET static inline void NAME##RB(const float *w, const float *x, const float *bias, float *out, \
                                          long n_in, long n_out, const float *pf) {           \
    __m512 acc[2][RB];                                                                        \
    for (int p = 0; p < 2; ++p)                                                               \
      for (int j = 0; j < RB; ++j) acc[p][j] = _mm512_setzero_ps();                           \
    long k = 0;                                                                               \
    for (; k + 8 <= n_in; k += 8) {                                                           \
      const __m512 w01 = LOAD01, w23 = LOAD23;                                                \
      if (pf && !(k & 15))                                                                    \
        for (int i = 0; i < 4; ++i) _mm_prefetch((const char *)(pf + i * n_in + k), _MM_HINT_T0); \
      for (int j = 0; j < RB; ++j) {                                                          \
        const __m512 xv = load_twice(x + j * n_in + k);                                       \
        acc[0][j] = _mm512_fmadd_ps(w01, xv, acc[0][j]);                                      \
        acc[1][j] = _mm512_fmadd_ps(w23, xv, acc[1][j]);                                      \
      }                                                                                       \
    }                                                                                         \
    for (int j = 0; j < RB; ++j) {                                                            \
      if (k == n_in) {                                                                        \
        store_paired_sums(acc[0][j], acc[1][j], bias, out + j * n_out);                       \
        continue;                                                                             \
      }                                                                                       \
      const __m256 sums[4] = {low_half(acc[0][j]), high_half(acc[0][j]), low_half(acc[1][j]), high_half(acc[1][j])}; \
      for (int i = 0; i < 4; ++i) { /* row-major only: a PAIRED block has no tail */         \
        float sum = hsum(sums[i]);                                                            \
        for (long t = k; t < n_in; ++t) sum += w[i * n_in + t] * x[j * n_in + t];             \
        out[j * n_out + i] = bias ? sum + bias[i] : sum;                                      \
      }                                                                                       \
    }                                                                                         \
  }

#define DEFINE_WIDE_TILES(NAME, LOAD01, LOAD23)                                               \
  DEFINE_WIDE_TILE(NAME, 12, LOAD01, LOAD23)                                                  \
  DEFINE_WIDE_TILE(NAME, 6, LOAD01, LOAD23)                                                   \
  DEFINE_WIDE_TILE(NAME, 5, LOAD01, LOAD23)                                                   \
  DEFINE_WIDE_TILE(NAME, 4, LOAD01, LOAD23)                                                   \
  DEFINE_WIDE_TILE(NAME, 3, LOAD01, LOAD23)                                                   \
  DEFINE_WIDE_TILE(NAME, 2, LOAD01, LOAD23)                                                   \
  DEFINE_WIDE_TILE(NAME, 1, LOAD01, LOAD23)

DEFINE_WIDE_TILES(wide_tile_4x, load_pair(w + k, w + n_in + k), load_pair(w + 2 * n_in + k, w + 3 * n_in + k))
DEFINE_WIDE_TILES(paired_tile_4x, _mm512_loadu_ps(w + 2 * k), _mm512_loadu_ps(w + 2 * n_in + 2 * k))

/* Every input row against a block of 4 weight rows (512 bits): tiles of 12 rows, then 6,
 * then the rest. */
#define DEFINE_WIDE_ROWS(NAME, TILE)                                                          \
  WIDE_TARGET static void NAME(const float *w, const float *x, const float *bias, float *out, long n_rows, \
                               long n_in, long n_out, const float *pf) {                      \
    long r = 0;                                                                               \
    for (; r + 12 <= n_rows; r += 12) TILE##12(w, x + r * n_in, bias, out + r * n_out, n_in, n_out, r == 0 ? pf : 0); \
    for (; r + 6 <= n_rows; r += 6) TILE##6(w, x + r * n_in, bias, out + r * n_out, n_in, n_out, r == 0 ? pf : 0); \
    const float *xr = x + r * n_in, *first = r == 0 ? pf : 0;                                 \
    float *o = out + r * n_out;                                                               \
    switch (n_rows - r) {                                                                     \
      case 5: TILE##5(w, xr, bias, o, n_in, n_out, first); break;                             \
      case 4: TILE##4(w, xr, bias, o, n_in, n_out, first); break;                             \
      case 3: TILE##3(w, xr, bias, o, n_in, n_out, first); break;                             \
      case 2: TILE##2(w, xr, bias, o, n_in, n_out, first); break;                             \
      case 1: TILE##1(w, xr, bias, o, n_in, n_out, first); break;                             \
      default: break;                                                                         \
    }                                                                                         \
  }

DEFINE_WIDE_ROWS(wide_rows_4, wide_tile_4x)
/* A PAIRED block (module notes) against every input row; 512 bits only. */
DEFINE_WIDE_ROWS(paired_rows_4, paired_tile_4x)

/* Every input row against 4 weight rows, on the widest registers (the same bits either way). */
static inline void rows_4(const float *w, const float *x, const float *bias, float *out, long n_rows, long n_in,
                          long n_out, const float *pf) {
  if (wide_registers())
    wide_rows_4(w, x, bias, out, n_rows, n_in, n_out, pf);
  else
    narrow_rows_4(w, x, bias, out, n_rows, n_in, n_out, pf);
}

/* A lone weight row (a width's last n_out % 4) on 256 bits. */
static inline void rows_1(const float *w, const float *x, const float *bias, float *out, long n_rows, long n_in,
                          long n_out, const float *pf) {
  narrow_rows_1(w, x, bias, out, n_rows, n_in, n_out, pf);
}

/* The MLP's first half in one pass: out[r, o] = silu(x[r] . gate[o]) * (x[r] . up[o]),
 * silu(g) = g / (1 + e^-g). Each block of 4 output features multiplies both weights into
 * small buffers (rows in chunks of GATE_UP_CHUNK), then combines them, so the two
 * [rows, n_out] products, the activation and the product of the eager MLP never exist. */
#define GATE_UP_CHUNK 64

/* out[r, o] = silu(g[r, o]) * u[r, o] for `rows` rows of `width` features (g and u: [rows, width];
 * out: row stride n_out); g is overwritten. */
static void silu_times(float *g, const float *u, float *out, long rows, long width, long n_out) {
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
    for (long o = 0; o < width; ++o) out[r * n_out + o] = g[r * width + o];
}

static void gate_up_block(const float *x, const float *gate, const float *up, float *out, long n_rows, long n_in,
                          long n_out, long width, int paired, const float *pf_gate, const float *pf_up) {
  float g[GATE_UP_CHUNK * 4], u[GATE_UP_CHUNK * 4];
  for (long r0 = 0; r0 < n_rows; r0 += GATE_UP_CHUNK) {
    const long rows = n_rows - r0 < GATE_UP_CHUNK ? n_rows - r0 : GATE_UP_CHUNK;
    if (paired) {
      paired_rows_4(gate, x + r0 * n_in, 0, g, rows, n_in, 4, 0);
      paired_rows_4(up, x + r0 * n_in, 0, u, rows, n_in, 4, 0);
    } else if (width == 4) {
      rows_4(gate, x + r0 * n_in, 0, g, rows, n_in, 4, r0 == 0 ? pf_gate : 0);
      rows_4(up, x + r0 * n_in, 0, u, rows, n_in, 4, r0 == 0 ? pf_up : 0);
    } else {
      rows_1(gate, x + r0 * n_in, 0, g, rows, n_in, 1, 0);
      rows_1(up, x + r0 * n_in, 0, u, rows, n_in, 1, 0);
    }
    silu_times(g, u, out + r0 * n_out, rows, width, n_out);
  }
}

#endif
