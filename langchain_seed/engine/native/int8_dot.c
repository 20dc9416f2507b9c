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
 *
 * Paths, picked once per process (`dot_path`): AVX2 (4 input rows a tile), 256-bit VNNI (8),
 * and where the CPU has AVX-512BW too, 512-bit VNNI on two groups at a time (16 outputs a
 * vector; 20-25 % faster than 256 bits from 12 rows up on an Intel Xeon with AVX-512).
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

/* Two neighbouring groups (16 outputs) in 512-bit vectors: group g in lanes 0-7, g + 1 in
 * lanes 8-15, each lane computing exactly what group_tile_vnni computes for its output (the
 * same integer sums, the same float operations in the same order), with half the
 * instructions. AVX-512 has no sign_epi8: Q8_0's signed weights are made unsigned by
 * negating x where the weight is negative (x is within [-127, 127]). */
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

AVX512_TARGET static inline __m512i pair_load(const uint8_t *first, long group_bytes) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)first)),
                            _mm256_loadu_si256((const __m256i *)(first + group_bytes)), 1);
}

AVX512_TARGET static inline __m512 pair_halves(const uint8_t *first, long group_bytes) {
  const __m128i a = _mm_loadu_si128((const __m128i *)first), b = _mm_loadu_si128((const __m128i *)(first + group_bytes));
  return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1));
}

AVX512_TARGET static inline __m512i broadcast4_512(const int8_t *p) {
  int32_t word;
  memcpy(&word, p, sizeof word);
  return _mm512_set1_epi32(word);
}

AVX512_TARGET static void pair_tile_vnni512(const uint8_t *wg, long group_bytes, int format, const int8_t *xq,
                                            const float *xd, const float *xs, const float *bias, float *out, long rb,
                                            long n_in, long n_out) {
  const long blocks = n_in / BLOCK_VALUES, bytes = group_block_bytes(format);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[ROW_TILE_VNNI];
  for (int r = 0; r < ROW_TILE_VNNI; ++r) acc[r] = _mm512_setzero_ps();
  for (long b = 0; b < blocks; ++b) {
    const uint8_t *blk = wg + b * bytes;
    const __m512 dw = pair_halves(blk, group_bytes);
    if (format == 1) {
      const __m512 mw = pair_halves(blk + 16, group_bytes);
      __m512i lo[4], hi[4];
      for (int j = 0; j < 4; ++j) {
        const __m512i p = pair_load(blk + 32 + 32 * j, group_bytes);
        lo[j] = _mm512_and_si512(p, low4);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(p, 4), low4);
      }
      for (int r = 0; r < ROW_TILE_VNNI && r < rb; ++r) {
        const int8_t *xb = xq + r * n_in + b * BLOCK_VALUES;
        __m512i isum = _mm512_setzero_si512();
        for (int j = 0; j < 4; ++j) {
          isum = _mm512_dpbusd_epi32(isum, lo[j], broadcast4_512(xb + 4 * j));
          isum = _mm512_dpbusd_epi32(isum, hi[j], broadcast4_512(xb + 16 + 4 * j));
        }
        const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(xd[r * blocks + b]));
        acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_cvtepi32_ps(isum), scale));
        acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(mw, _mm512_set1_ps(xs[r * blocks + b])));
      }
    } else {
      __m512i w[8];
      __mmask64 negative[8];
      for (int j = 0; j < 8; ++j) {
        const __m512i v = pair_load(blk + 16 + 32 * j, group_bytes);
        negative[j] = _mm512_movepi8_mask(v);
        w[j] = _mm512_abs_epi8(v);
      }
      for (int r = 0; r < ROW_TILE_VNNI && r < rb; ++r) {
        const int8_t *xb = xq + r * n_in + b * BLOCK_VALUES;
        __m512i isum = _mm512_setzero_si512();
        for (int j = 0; j < 8; ++j) {
          const __m512i x = broadcast4_512(xb + 4 * j);
          isum = _mm512_dpbusd_epi32(isum, w[j], _mm512_mask_sub_epi8(x, negative[j], _mm512_setzero_si512(), x));
        }
        const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(xd[r * blocks + b]));
        acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_cvtepi32_ps(isum), scale));
      }
    }
  }
  const __m512 bv = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
  for (int r = 0; r < ROW_TILE_VNNI && r < rb; ++r)
    _mm512_storeu_ps(out + r * n_out, bias ? _mm512_add_ps(acc[r], bv) : acc[r]);
}

/* Which dot-product path runs: 2 = 512-bit VNNI, 1 = 256-bit VNNI, 0 = AVX2. The environment
 * can narrow it (LANGCHAIN_SEED_INT8_PATH=avx2 or vnni256), e.g. to compare their bits. */
static int dot_path(void) {
  static int cached = -1;
  if (cached < 0) {
    const char *forced = getenv("LANGCHAIN_SEED_INT8_PATH");
    const int vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
    const int wide = vnni && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512f");
    if (forced && strcmp(forced, "avx2") == 0)
      cached = 0;
    else if (forced && strcmp(forced, "vnni256") == 0)
      cached = vnni;
    else
      cached = wide ? 2 : vnni;
  }
  return cached;
}

/* The work units of a weight with `groups` groups: pairs of groups on the 512-bit path (the
 * last one alone when odd), single groups otherwise. */
static inline long unit_count(long groups) { return dot_path() == 2 ? (groups + 1) / 2 : groups; }

/* Unit u of the weight (module notes) for every input row, into out [n_rows, n_out]. */
static void run_unit(const uint8_t *w, int format, const int8_t *xq, const float *xd, const float *xs,
                     const float *bias, float *out, long n_rows, long n_in, long n_out, long u) {
  const long blocks = n_in / BLOCK_VALUES, group_bytes = blocks * group_block_bytes(format);
  const int path = dot_path();
  const long tile = path ? ROW_TILE_VNNI : ROW_TILE, groups = n_out / GROUP_ROWS;
  const long g = path == 2 ? 2 * u : u;
  const int pair = path == 2 && g + 1 < groups;
  for (long r0 = 0; r0 < n_rows; r0 += tile) {
    const long rb = n_rows - r0 < tile ? n_rows - r0 : tile;
    const int8_t *x = xq + r0 * n_in;
    const float *d = xd + r0 * blocks, *s = xs + r0 * blocks, *b = bias ? bias + g * GROUP_ROWS : 0;
    float *o = out + r0 * n_out + g * GROUP_ROWS;
    if (pair)
      pair_tile_vnni512(w + g * group_bytes, group_bytes, format, x, d, s, b, o, rb, n_in, n_out);
    else if (path)
      group_tile_vnni(w + g * group_bytes, format, x, d, s, b, o, rb, n_in, n_out);
    else
      group_tile_avx2(w + g * group_bytes, format, x, d, s, b, o, rb, n_in, n_out);
  }
}

/* The outputs unit u of a weight with n_out outputs writes: [first, first + count). */
static inline void unit_outputs(long u, long n_out, long *first, long *count) {
  const long per = dot_path() == 2 ? 2 * GROUP_ROWS : GROUP_ROWS;
  *first = u * per;
  *count = n_out - *first < per ? n_out - *first : per;
}

/* out [n_rows, n_out] = x [n_rows, n_in] (quantised here) . w ([n_out / 8 groups] repacked,
 * n_out a multiple of 8) + bias. Returns 0, or 1 without memory for the quantised rows. */
int seed_int8_linear(const float *x, const uint8_t *w, int format, const float *bias, float *out, long n_rows,
                     long n_in, long n_out, int threads) {
  const long blocks = n_in / BLOCK_VALUES, units = unit_count(n_out / GROUP_ROWS);
  int8_t *xq = malloc(n_rows * n_in + 2 * n_rows * blocks * sizeof(float));
  if (!xq) return 1;
  float *xd = (float *)(xq + n_rows * n_in), *xs = xd + n_rows * blocks;
  seed_quantize_activations(x, xq, xd, xs, n_rows, n_in, threads);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long u = 0; u < units; ++u) run_unit(w, format, xq, xd, xs, bias, out, n_rows, n_in, n_out, u);
  free(xq);
  return 0;
}

/* Three products of one input (a layer's query, key and value projections), x quantised
 * once: out_i [n_rows, n_out_i] = x . w_i, each exactly as seed_int8_linear computes it.
 * Returns 0, or 1 without memory. */
int seed_int8_linear3(const float *x, const uint8_t *w0, const uint8_t *w1, const uint8_t *w2, int format,
                      float *out0, float *out1, float *out2, long n_rows, long n_in, long n_out0, long n_out1,
                      long n_out2, int threads) {
  const long blocks = n_in / BLOCK_VALUES, u0 = unit_count(n_out0 / GROUP_ROWS), u1 = unit_count(n_out1 / GROUP_ROWS);
  const long units = u0 + u1 + unit_count(n_out2 / GROUP_ROWS);
  int8_t *xq = malloc(n_rows * n_in + 2 * n_rows * blocks * sizeof(float));
  if (!xq) return 1;
  float *xd = (float *)(xq + n_rows * n_in), *xs = xd + n_rows * blocks;
  seed_quantize_activations(x, xq, xd, xs, n_rows, n_in, threads);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long u = 0; u < units; ++u) {
    if (u < u0)
      run_unit(w0, format, xq, xd, xs, 0, out0, n_rows, n_in, n_out0, u);
    else if (u < u0 + u1)
      run_unit(w1, format, xq, xd, xs, 0, out1, n_rows, n_in, n_out1, u - u0);
    else
      run_unit(w2, format, xq, xd, xs, 0, out2, n_rows, n_in, n_out2, u - u0 - u1);
  }
  free(xq);
  return 0;
}

/* The MLP's first half, silu(gate(x)) * up(x), with both products as in seed_int8_linear
 * (x quantised once); gate and up repacked [n_out / 8 groups]; out [n_rows, n_out]. The SiLU
 * is the dense kernels' (x / (1 + exp(-x))). Returns 0, or 1 without memory. */
int seed_int8_gate_up_silu(const float *x, const uint8_t *gate, const uint8_t *up, int format, float *out,
                           long n_rows, long n_in, long n_out, int threads) {
  const long blocks = n_in / BLOCK_VALUES, units = unit_count(n_out / GROUP_ROWS);
  int8_t *xq = malloc(n_rows * n_in + 2 * n_rows * blocks * sizeof(float) + n_rows * n_out * sizeof(float));
  if (!xq) return 1;
  float *xd = (float *)(xq + n_rows * n_in), *xs = xd + n_rows * blocks, *ups = xs + n_rows * blocks;
  seed_quantize_activations(x, xq, xd, xs, n_rows, n_in, threads);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long u = 0; u < units; ++u) {
    run_unit(gate, format, xq, xd, xs, 0, out, n_rows, n_in, n_out, u);
    run_unit(up, format, xq, xd, xs, 0, ups, n_rows, n_in, n_out, u);
    long first, count;
    unit_outputs(u, n_out, &first, &count);
    for (long r = 0; r < n_rows; ++r)
      for (long o = first; o < first + count; o += GROUP_ROWS) {
        float *gv = out + r * n_out + o;
        const __m256 gx = _mm256_loadu_ps(gv), ux = _mm256_loadu_ps(ups + r * n_out + o);
        const __m256 silu = _mm256_div_ps(gx, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), gx))));
        _mm256_storeu_ps(gv, _mm256_mul_ps(silu, ux));
      }
  }
  free(xq);
  return 0;
}
