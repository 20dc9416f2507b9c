/* Matmuls with 8-bit activations on GGML blocks repacked for integer dot products
 * (llama.cpp's arithmetic for Q4_1 and Q8_0 weights).
 *
 * Activations: each row of x is quantised per block of 32 values as llama.cpp's Q8_1 does:
 *   d = max|x| / 127, q = round(x / d) (half to even, via x * (1/d)), kept: fp16(d) and
 *   s = fp16(d * sum(q)).
 *
 * Weights: groups of 8 output rows, block by block ([group][block] contiguous); a group's
 * block holds the 8 rows' fp16 scales, then their values interleaved so that one 32-byte
 * vector is 8 rows x 4 consecutive values (byte 4 * row + k):
 *   Q8_0 (format 0): d[8] fp16, 8 vectors of int8 (vector j: values 4j..4j+3)   272 bytes
 *   Q4_1 (format 1): d[8] fp16, m[8] fp16, 4 vectors of nibbles (vector j: low nibble value
 *                    4j + k, high nibble value 16 + 4j + k)                         160 bytes
 * so each 32-bit lane of an integer dot product (VNNI's dpbusd, or AVX2's maddubs + madd)
 * sums 4 products of one output row, and a group's 8 outputs stay in one vector's lanes:
 * no horizontal sums.
 *
 * A block's integer sum is exact. Output (row r, output o) is, in block order,
 *   acc = acc + float(isum) * (d_w * d_x)   [Q4_1 also: acc = acc + m_w * s_x]
 * with every product of two fp16 values exact in float32 and nothing fused, so the result
 * depends only on that row and that output: the same whatever else is in the batch, with
 * or without VNNI, and equal to `engine.weights.int8_dot`'s torch reference.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

#define BLOCK_VALUES 32
#define GROUP_ROWS 8
#define ROW_TILE 4      /* input rows per tile on AVX2 (16 vector registers) */
#define ROW_TILE_VNNI 8 /* and with AVX-512VL's 32 */

static inline long group_block_bytes(int format) { return format == 0 ? 16 + 256 : 32 + 128; }

/* ---- activations ---------------------------------------------------------------------- */

static inline float round_to_half(float value) { return _cvtsh_ss(_cvtss_sh(value, _MM_FROUND_TO_NEAREST_INT)); }

/* One block of 32 values into 32 int8, its scale and its scaled sum. */
static inline void quantize_block(const float *x, int8_t *q, float *d, float *s) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  __m256 v[4], amax = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, v[i]));
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  const float scale = _mm_cvtss_f32(m) / 127.0f, inverse = scale != 0.0f ? 1.0f / scale : 0.0f;
  const __m256 iv = _mm256_set1_ps(inverse);
  __m256i ints[4], total = _mm256_setzero_si256();
  for (int i = 0; i < 4; ++i) {
    ints[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[i], iv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    total = _mm256_add_epi32(total, ints[i]);
  }
  /* int32 -> int16 -> int8 packs interleave 128-bit lanes; undo that with a permute. */
  __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3]));
  packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256((__m256i *)q, packed);
  __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
  t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
  t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
  *d = round_to_half(scale);
  *s = round_to_half(scale * (float)_mm_cvtsi128_si32(t));
}

/* x [n_rows, n_in] -> q [n_rows, n_in] int8, d and s [n_rows, n_in / 32]. */
void seed_quantize_activations(const float *x, int8_t *q, float *d, float *s, long n_rows, long n_in, int threads) {
  const long blocks = n_rows * (n_in / BLOCK_VALUES);
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks >= 4096)
  for (long b = 0; b < blocks; ++b)
    quantize_block(x + b * BLOCK_VALUES, q + b * BLOCK_VALUES, d + b, s + b);
}

/* ---- integer dot products ------------------------------------------------------------- */

/* acc + the 4-product sums of u (unsigned bytes) and v (signed bytes), lane by lane. */
static inline __m256i dot_avx2(__m256i acc, __m256i u, __m256i v) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, v), _mm256_set1_epi16(1)));
}

__attribute__((target("avx512vnni,avx512vl"))) static inline __m256i dot_vnni(__m256i acc, __m256i u, __m256i v) {
  return _mm256_dpbusd_epi32(acc, u, v);
}

static inline __m256i broadcast4(const int8_t *p) {
  int32_t word;
  memcpy(&word, p, sizeof word);
  return _mm256_set1_epi32(word);
}

/* One group of 8 outputs for RB input rows (rows r0.. of xq), every block. DOT is the
 * dot-product step; FORMAT the weight format. Written once as a macro so that the AVX2 and
 * the VNNI variants are the same code. */
#define DEFINE_GROUP_TILE(NAME, ATTR, DOT, TILE)                                                      \
  ATTR static inline void NAME(const uint8_t *wg, int format, const int8_t *xq, const float *xd,     \
                               const float *xs, const float *bias, float *out, long rb, long n_in,   \
                               long n_out) {                                                          \
    const long blocks = n_in / BLOCK_VALUES, bytes = group_block_bytes(format);                      \
    const __m256i low4 = _mm256_set1_epi8(0x0F);                                                     \
    __m256 acc[TILE];                                                                            \
    for (int r = 0; r < TILE; ++r) acc[r] = _mm256_setzero_ps();                                 \
    for (long b = 0; b < blocks; ++b) {                                                              \
      const uint8_t *blk = wg + b * bytes;                                                           \
      const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk));                       \
      if (format == 1) {                                                                             \
        const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 16)));              \
        __m256i lo[4], hi[4];                                                                         \
        for (int j = 0; j < 4; ++j) {                                                                \
          const __m256i p = _mm256_loadu_si256((const __m256i *)(blk + 32 + 32 * j));                \
          lo[j] = _mm256_and_si256(p, low4);                                                         \
          hi[j] = _mm256_and_si256(_mm256_srli_epi16(p, 4), low4);                                   \
        }                                                                                             \
        for (int r = 0; r < TILE; ++r) {                                                         \
          if (r >= rb) break;                                                                         \
          const int8_t *xb = xq + r * n_in + b * BLOCK_VALUES;                                       \
          __m256i isum = _mm256_setzero_si256();                                                     \
          for (int j = 0; j < 4; ++j) {                                                              \
            isum = DOT(isum, lo[j], broadcast4(xb + 4 * j));                                         \
            isum = DOT(isum, hi[j], broadcast4(xb + 16 + 4 * j));                                    \
          }                                                                                           \
          const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(xd[r * blocks + b]));                \
          acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_cvtepi32_ps(isum), scale));            \
          acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(mw, _mm256_set1_ps(xs[r * blocks + b])));     \
        }                                                                                             \
      } else {                                                                                       \
        __m256i w[8];                                                                                \
        for (int j = 0; j < 8; ++j) w[j] = _mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * j)); \
        for (int r = 0; r < TILE; ++r) {                                                         \
          if (r >= rb) break;                                                                         \
          const int8_t *xb = xq + r * n_in + b * BLOCK_VALUES;                                       \
          __m256i isum = _mm256_setzero_si256();                                                     \
          for (int j = 0; j < 8; ++j)                                                                \
            isum = DOT(isum, _mm256_sign_epi8(w[j], w[j]), _mm256_sign_epi8(broadcast4(xb + 4 * j), w[j])); \
          const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(xd[r * blocks + b]));                \
          acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_cvtepi32_ps(isum), scale));            \
        }                                                                                             \
      }                                                                                               \
    }                                                                                                 \
    const __m256 bv = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();                            \
    for (int r = 0; r < TILE; ++r) {                                                             \
      if (r >= rb) break;                                                                             \
      _mm256_storeu_ps(out + r * n_out, bias ? _mm256_add_ps(acc[r], bv) : acc[r]);                  \
    }                                                                                                 \
  }

DEFINE_GROUP_TILE(group_tile_avx2, , dot_avx2, ROW_TILE)
DEFINE_GROUP_TILE(group_tile_vnni, __attribute__((target("avx512vnni,avx512vl"))), dot_vnni, ROW_TILE_VNNI)

static int has_vnni(void) {
  static int cached = -1;
  if (cached < 0) {
    const char *off = getenv("LANGCHAIN_SEED_NO_VNNI");
    cached = (!off || !*off || *off == '0') && __builtin_cpu_supports("avx512vnni") &&
             __builtin_cpu_supports("avx512vl");
  }
  return cached;
}

/* Every output group g of [g0, g1) for every input row, into out [n_rows, n_out_padded]. */
static void run_groups(const uint8_t *w, int format, const int8_t *xq, const float *xd, const float *xs,
                       const float *bias, float *out, long n_rows, long n_in, long n_out, long g) {
  const long blocks = n_in / BLOCK_VALUES, group_bytes = blocks * group_block_bytes(format);
  const int vnni = has_vnni();
  const long tile = vnni ? ROW_TILE_VNNI : ROW_TILE;
  for (long r0 = 0; r0 < n_rows; r0 += tile) {
    const long rb = n_rows - r0 < tile ? n_rows - r0 : tile;
    const int8_t *x = xq + r0 * n_in;
    const float *d = xd + r0 * blocks, *s = xs + r0 * blocks, *b = bias ? bias + g * GROUP_ROWS : 0;
    float *o = out + r0 * n_out + g * GROUP_ROWS;
    if (vnni)
      group_tile_vnni(w + g * group_bytes, format, x, d, s, b, o, rb, n_in, n_out);
    else
      group_tile_avx2(w + g * group_bytes, format, x, d, s, b, o, rb, n_in, n_out);
  }
}

/* out [n_rows, n_out] = x [n_rows, n_in] (quantised here) . w ([n_out / 8 groups] repacked,
 * n_out a multiple of 8) + bias. Returns 0, or 1 without memory for the quantised rows. */
int seed_int8_linear(const float *x, const uint8_t *w, int format, const float *bias, float *out, long n_rows,
                     long n_in, long n_out, int threads) {
  const long blocks = n_in / BLOCK_VALUES, groups = n_out / GROUP_ROWS;
  int8_t *xq = malloc(n_rows * n_in + 2 * n_rows * blocks * sizeof(float));
  if (!xq) return 1;
  float *xd = (float *)(xq + n_rows * n_in), *xs = xd + n_rows * blocks;
  seed_quantize_activations(x, xq, xd, xs, n_rows, n_in, threads);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long g = 0; g < groups; ++g) run_groups(w, format, xq, xd, xs, bias, out, n_rows, n_in, n_out, g);
  free(xq);
  return 0;
}

/* Three products of one input (a layer's query, key and value projections), x quantised
 * once: out_i [n_rows, n_out_i] = x . w_i, each exactly as seed_int8_linear computes it.
 * Returns 0, or 1 without memory. */
int seed_int8_linear3(const float *x, const uint8_t *w0, const uint8_t *w1, const uint8_t *w2, int format,
                      float *out0, float *out1, float *out2, long n_rows, long n_in, long n_out0, long n_out1,
                      long n_out2, int threads) {
  const long blocks = n_in / BLOCK_VALUES, g0 = n_out0 / GROUP_ROWS, g1 = n_out1 / GROUP_ROWS;
  const long groups = g0 + g1 + n_out2 / GROUP_ROWS;
  int8_t *xq = malloc(n_rows * n_in + 2 * n_rows * blocks * sizeof(float));
  if (!xq) return 1;
  float *xd = (float *)(xq + n_rows * n_in), *xs = xd + n_rows * blocks;
  seed_quantize_activations(x, xq, xd, xs, n_rows, n_in, threads);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long g = 0; g < groups; ++g) {
    if (g < g0)
      run_groups(w0, format, xq, xd, xs, 0, out0, n_rows, n_in, n_out0, g);
    else if (g < g0 + g1)
      run_groups(w1, format, xq, xd, xs, 0, out1, n_rows, n_in, n_out1, g - g0);
    else
      run_groups(w2, format, xq, xd, xs, 0, out2, n_rows, n_in, n_out2, g - g0 - g1);
  }
  free(xq);
  return 0;
}

/* The MLP's first half, silu(gate(x)) * up(x), with both products as in seed_int8_linear
 * (x quantised once); gate and up repacked [n_out / 8 groups]; out [n_rows, n_out]. The SiLU
 * is the dense kernels' (x / (1 + exp(-x))). Returns 0, or 1 without memory. */
int seed_int8_gate_up_silu(const float *x, const uint8_t *gate, const uint8_t *up, int format, float *out,
                           long n_rows, long n_in, long n_out, int threads) {
  const long blocks = n_in / BLOCK_VALUES, groups = n_out / GROUP_ROWS;
  int8_t *xq = malloc(n_rows * n_in + 2 * n_rows * blocks * sizeof(float) + n_rows * n_out * sizeof(float));
  if (!xq) return 1;
  float *xd = (float *)(xq + n_rows * n_in), *xs = xd + n_rows * blocks, *ups = xs + n_rows * blocks;
  seed_quantize_activations(x, xq, xd, xs, n_rows, n_in, threads);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long g = 0; g < groups; ++g) {
    run_groups(gate, format, xq, xd, xs, 0, out, n_rows, n_in, n_out, g);
    run_groups(up, format, xq, xd, xs, 0, ups, n_rows, n_in, n_out, g);
    for (long r = 0; r < n_rows; ++r) {
      float *gv = out + r * n_out + g * GROUP_ROWS;
      const __m256 gx = _mm256_loadu_ps(gv), ux = _mm256_loadu_ps(ups + r * n_out + g * GROUP_ROWS);
      const __m256 silu = _mm256_div_ps(gx, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), gx))));
      _mm256_storeu_ps(gv, _mm256_mul_ps(silu, ux));
    }
  }
  free(xq);
  return 0;
}
