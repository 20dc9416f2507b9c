/* Grouped-query attention for a few new tokens over a cache, float32, AVX2 + FMA (scores and
 * weighted values on 512-bit registers where the CPU has AVX-512F, the same bits: below).
 *
 * At decoding sizes (1 to a few dozen query tokens, a few hundred cached slots) torch's
 * CPU SDPA spends most of a call on set-up: 100-300 us a layer for about 3 MFLOP. Here one
 * OpenMP task per (batch row, query head) does the whole head: its T query rows against
 * the S keys of its key/value head (two rows at a time, each key vector loaded once for
 * both), the additive mask, a softmax with a vectorised exp (the rows' normalisers summed
 * side by side), and the weighted sum of values. Tiling rows that way halved the kernel's
 * time on a batched verification (3 rows x 6 tokens over 400 slots: 340 -> 177 us a
 * layer) without changing a bit.
 *
 * Every sum runs in slot order with masked slots contributing exact zeros, and each score
 * in one fixed order: a query row's output depends only on its own visible keys and values
 * in their order, not on the batch, the other query rows, or holes and padding in the
 * cache (what a model with 8-bit activations needs to decode the same in every mode).
 *
 * q: [B, H, T, D] contiguous; k, v: [B, KV, S, D] with each slot's D values contiguous and
 * slots D apart, batch and head strides given (head h reads key/value head h / (H / KV));
 * mask: [B, 1, T, S] contiguous additive float, or NULL (every slot visible); out:
 * [B, T, H, D] contiguous, the layout transformers' attention returns.
 */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

/* Scores below this are masked (an additive mask's -inf or the dtype's minimum): they get
 * probability exactly 0, so a masked slot changes no sum. */
#define MASKED_BELOW -1e30f

/* scores[0:S] -> scale * scores + mask, masked slots -inf (even a NaN score); returns the
 * row's maximum. */
static float scale_and_mask(float *scores, const float *mask, long S, float scale) {
  __m256 tops = _mm256_set1_ps(-INFINITY);
  long j = 0;
  const __m256 floor = _mm256_set1_ps(MASKED_BELOW), minus_infinity = _mm256_set1_ps(-INFINITY);
  for (; j + 8 <= S; j += 8) {
    __m256 x = _mm256_mul_ps(_mm256_loadu_ps(scores + j), _mm256_set1_ps(scale));
    if (mask) {
      const __m256 m = _mm256_loadu_ps(mask + j);
      /* a masked slot is -inf whatever its key held (even NaN), so it never sets the max */
      x = _mm256_blendv_ps(minus_infinity, _mm256_add_ps(x, m), _mm256_cmp_ps(m, floor, _CMP_GT_OQ));
    }
    _mm256_storeu_ps(scores + j, x);
    tops = _mm256_max_ps(tops, x);
  }
  float top = hmax(tops);
  for (long t = j; t < S; ++t) {
    const int masked = mask && !(mask[t] > MASKED_BELOW);
    scores[t] = masked ? -INFINITY : scores[t] * scale + (mask ? mask[t] : 0.0f);
    top = scores[t] > top ? scores[t] : top;
  }
  return top;
}

/* scores[0:S] -> exp(scores - top), masked slots exactly 0. */
static void exponentials(float *scores, long S, float top) {
  const __m256 floor = _mm256_set1_ps(MASKED_BELOW), tops = _mm256_set1_ps(top);
  long j = 0;
  for (; j + 8 <= S; j += 8) {
    const __m256 x = _mm256_loadu_ps(scores + j);
    _mm256_storeu_ps(scores + j, _mm256_and_ps(exp8(_mm256_sub_ps(x, tops)), _mm256_cmp_ps(x, floor, _CMP_GT_OQ)));
  }
  if (j < S) {
    float chunk[8] = {0};
    const long n = S - j;
    for (long t = 0; t < n; ++t) chunk[t] = scores[j + t];
    const __m256 x = _mm256_loadu_ps(chunk);
    _mm256_storeu_ps(chunk, _mm256_and_ps(exp8(_mm256_sub_ps(x, tops)), _mm256_cmp_ps(x, floor, _CMP_GT_OQ)));
    for (long t = 0; t < n; ++t) scores[j + t] = chunk[t];
  }
}

/* Rows scores[t * S: (t + 1) * S] (scaled, masked) -> probabilities, in place, for T rows.
 * Each row's normaliser is summed slot by slot in slot order, so a slot's probability does
 * not depend on where in the cache its row's slots lie or how many masked slots sit between
 * them; the rows' sums run side by side (independent chains, the same order each). */
static void softmax_rows(float *scores, const float *mask, long mask_stride, long T, long S, float scale) {
  enum { SIDE_BY_SIDE = 8 };
  for (long t0 = 0; t0 < T; t0 += SIDE_BY_SIDE) {
    const long rows = T - t0 < SIDE_BY_SIDE ? T - t0 : SIDE_BY_SIDE;
    float total[SIDE_BY_SIDE] = {0};
    for (long t = t0; t < t0 + rows; ++t)
      exponentials(scores + t * S, S, scale_and_mask(scores + t * S, mask ? mask + t * mask_stride : 0, S, scale));
    for (long j = 0; j < S; ++j)
      for (long r = 0; r < rows; ++r) total[r] += scores[(t0 + r) * S + j];
    for (long r = 0; r < rows; ++r) {
      float *row = scores + (t0 + r) * S;
      const float inverse = total[r] > 0.0f ? 1.0f / total[r] : 0.0f; /* a row that sees no slot gets zeros */
      const __m256 inverses = _mm256_set1_ps(inverse);
      long j = 0;
      for (; j + 8 <= S; j += 8) _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), inverses));
      for (; j < S; ++j) row[j] *= inverse;
    }
  }
}

/* scores[t, j] = q[t] . k[j] for rows t0 .. t0 + ROWS - 1 and slots j0 .. j0 + 3: each
 * key vector loaded once for the ROWS query rows. */
#define DEFINE_SCORE_TILE(ROWS)                                                                       \
  static inline void score_tile_##ROWS(const float *q, const float *k, float *scores, long t0, long j0, \
                                       long S, long D) {                                              \
    __m256 acc[ROWS][4];                                                                              \
    for (int r = 0; r < ROWS; ++r)                                                                    \
      for (int i = 0; i < 4; ++i) acc[r][i] = _mm256_setzero_ps();                                    \
    for (long d = 0; d < D; d += 8) {                                                                 \
      __m256 qv[ROWS];                                                                                \
      for (int r = 0; r < ROWS; ++r) qv[r] = _mm256_loadu_ps(q + (t0 + r) * D + d);                   \
      for (int i = 0; i < 4; ++i) {                                                                   \
        const __m256 kv = _mm256_loadu_ps(k + (j0 + i) * D + d);                                      \
        for (int r = 0; r < ROWS; ++r) acc[r][i] = _mm256_fmadd_ps(qv[r], kv, acc[r][i]);             \
      }                                                                                               \
    }                                                                                                 \
    for (int r = 0; r < ROWS; ++r)                                                                    \
      for (int i = 0; i < 4; ++i) scores[(t0 + r) * S + j0 + i] = hsum8(acc[r][i]);                  \
  }

DEFINE_SCORE_TILE(2)
DEFINE_SCORE_TILE(1)

/* One score, summed as the tiles sum each of theirs. */
static inline float score_one(const float *query, const float *key, long D) {
  __m256 acc = _mm256_setzero_ps();
  for (long d = 0; d < D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(query + d), _mm256_loadu_ps(key + d), acc);
  return hsum8(acc);
}

/* scores[t, j] = q[t] . k[j] for T query rows and S slots (D a multiple of 8, slots D
 * apart): each score is 8-lane products in ascending d then hsum8, the same whatever S, T,
 * the tile it fell in or the slot's index. */
static void slot_scores(const float *q, const float *k, float *scores, long T, long S, long D) {
  long t = 0;
  for (; t + 2 <= T; t += 2) {
    long j = 0;
    for (; j + 4 <= S; j += 4) score_tile_2(q, k, scores, t, j, S, D);
    for (; j < S; ++j)
      for (int r = 0; r < 2; ++r) scores[(t + r) * S + j] = score_one(q + (t + r) * D, k + j * D, D);
  }
  for (; t < T; ++t) {
    long j = 0;
    for (; j + 4 <= S; j += 4) score_tile_1(q, k, scores, t, j, S, D);
    for (; j < S; ++j) scores[t * S + j] = score_one(q + t * D, k + j * D, D);
  }
}

/* out[0:8*LANES] = sum_j p[j] * v[j, 0:8*LANES], v's rows `stride` apart; LANES is a
 * compile-time constant so the accumulators stay in registers. */
#define DEFINE_WEIGHTED(LANES)                                                                \
  static void weighted_##LANES(const float *p, const float *v, float *out, long S, long stride) { \
    __m256 acc[LANES];                                                                        \
    for (int d = 0; d < LANES; ++d) acc[d] = _mm256_setzero_ps();                             \
    for (long j = 0; j < S; ++j) {                                                            \
      if (p[j] == 0.0f) continue; /* a masked slot: its values may be anything, even NaN */  \
      const __m256 weight = _mm256_set1_ps(p[j]);                                             \
      for (int d = 0; d < LANES; ++d)                                                         \
        acc[d] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(v + j * stride + 8 * d), acc[d]);    \
    }                                                                                         \
    for (int d = 0; d < LANES; ++d) _mm256_storeu_ps(out + 8 * d, acc[d]);                    \
  }

DEFINE_WEIGHTED(8)
DEFINE_WEIGHTED(1)

/* out[0:D] = sum_j p[j] * v[j, 0:D], D a multiple of 8: 64 columns at a time, then 8. */
static void weighted_values(const float *p, const float *v, float *out, long S, long D) {
  long d = 0;
  for (; d + 64 <= D; d += 64) weighted_8(p, v + d, out + d, S, D);
  for (; d < D; d += 8) weighted_1(p, v + d, out + d, S, D);
}

/* ---- 512 bits (AVX-512F): the same bits ----
 * Scores: query rows t and t + 1 side by side in one register ([q_t[d:d+8] | q_t+1[d:d+8]],
 * interleaved once into `pair`), each key's 8 values loaded twice ([k_j[d:d+8] | same]): each
 * half accumulates exactly what score_tile_2's register for that row and slot does, and is
 * reduced by the same hsum8. Weighted values: each lane sums p[j] * v[j, d] in slot order as
 * the 256-bit loop's lane does, 16 columns per register. */
#define WIDE_SLOTS 8 /* slots per score tile (wide_score_tile_8) */

/* pair[16c:16c+8] = a[8c:8c+8], pair[16c+8:16c+16] = b[8c:8c+8] for the D / 8 chunks. */
static inline void interleave_rows(const float *a, const float *b, float *pair, long D) {
  for (long d = 0; d < D; d += 8) {
    memcpy(pair + 2 * d, a + d, 8 * sizeof(float));
    memcpy(pair + 2 * d + 8, b + d, 8 * sizeof(float));
  }
}

/* scores[t, j0 + i] and scores[t + 1, j0 + i] for i < SLOTS (the rows interleaved in pair). */
#define DEFINE_WIDE_SCORE_TILE(SLOTS)                                                                 \
  WIDE_TARGET static inline void wide_score_tile_##SLOTS(const float *pair, const float *k, float *scores, \
                                                         long t, long j0, long S, long D) {           \
    __m512 acc[SLOTS];                                                                                \
    for (int i = 0; i < SLOTS; ++i) acc[i] = _mm512_setzero_ps();                                     \
    for (long d = 0; d < D; d += 8) {                                                                 \
      const __m512 qv = _mm512_loadu_ps(pair + 2 * d);                                                \
      for (int i = 0; i < SLOTS; ++i) acc[i] = _mm512_fmadd_ps(qv, load_twice(k + (j0 + i) * D + d), acc[i]); \
    }                                                                                                 \
    for (int i = 0; i < SLOTS; ++i) {                                                                 \
      scores[t * S + j0 + i] = hsum8(low_half(acc[i]));                                               \
      scores[(t + 1) * S + j0 + i] = hsum8(high_half(acc[i]));                                        \
    }                                                                                                 \
  }

DEFINE_WIDE_SCORE_TILE(8) /* WIDE_SLOTS */
DEFINE_WIDE_SCORE_TILE(1)

/* slot_scores on 512 bits: the same bits. pair: 2 * D floats of scratch. */
WIDE_TARGET static void wide_slot_scores(const float *q, const float *k, float *scores, long T, long S, long D,
                                         float *pair) {
  long t = 0;
  for (; t + 2 <= T; t += 2) {
    interleave_rows(q + t * D, q + (t + 1) * D, pair, D);
    long j = 0;
    for (; j + WIDE_SLOTS <= S; j += WIDE_SLOTS) wide_score_tile_8(pair, k, scores, t, j, S, D);
    for (; j < S; ++j) wide_score_tile_1(pair, k, scores, t, j, S, D);
  }
  if (t < T) slot_scores(q + t * D, k, scores + t * S, 1, S, D);
}

/* weighted_8 on 512 bits (64 columns in 4 registers): the same bits. */
WIDE_TARGET static void wide_weighted_64(const float *p, const float *v, float *out, long S, long stride) {
  __m512 acc[4];
  for (int d = 0; d < 4; ++d) acc[d] = _mm512_setzero_ps();
  for (long j = 0; j < S; ++j) {
    if (p[j] == 0.0f) continue; /* a masked slot: its values may be anything, even NaN */
    const __m512 weight = _mm512_set1_ps(p[j]);
    for (int d = 0; d < 4; ++d) acc[d] = _mm512_fmadd_ps(weight, _mm512_loadu_ps(v + j * stride + 16 * d), acc[d]);
  }
  for (int d = 0; d < 4; ++d) _mm512_storeu_ps(out + 16 * d, acc[d]);
}

/* weighted_values, 64 columns at a time on 512 bits where the process runs them. */
static void any_weighted_values(const float *p, const float *v, float *out, long S, long D) {
  if (!wide_registers()) {
    weighted_values(p, v, out, S, D);
    return;
  }
  long d = 0;
  for (; d + 64 <= D; d += 64) wide_weighted_64(p, v + d, out + d, S, D);
  for (; d < D; d += 8) weighted_1(p, v + d, out + d, S, D);
}

/* Returns 0, or -1 when D is not a multiple of 8 up to 256, heads are not a multiple of
 * kv heads, or memory ran out. */
int seed_attention(const float *q, const float *k, const float *v, const float *mask, float *out,
                   long B, long H, long KV, long T, long S, long D, long k_batch, long k_head, long v_batch,
                   long v_head, float scale, int threads) {
  if (D % 8 || D > 256 || H % KV) return -1;
  const long group = H / KV;
  int failed = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : failed)
  for (long task = 0; task < B * H; ++task) {
    const long b = task / H, h = task % H;
    const float *keys = k + b * k_batch + (h / group) * k_head, *values = v + b * v_batch + (h / group) * v_head;
    /* per task: small, so no fresh pages; then 2 * D floats for a pair of query rows */
    float *scores = malloc(sizeof(float) * (T * S + 2 * D));
    if (!scores) {
      failed = 1;
      continue;
    }
    if (wide_registers())
      wide_slot_scores(q + task * T * D, keys, scores, T, S, D, scores + T * S);
    else
      slot_scores(q + task * T * D, keys, scores, T, S, D);
    softmax_rows(scores, mask ? mask + b * T * S : 0, S, T, S, scale);
    for (long t = 0; t < T; ++t) any_weighted_values(scores + t * S, values, out + ((b * T + t) * H + h) * D, S, D);
    free(scores);
  }
  return failed ? -1 : 0;
}
