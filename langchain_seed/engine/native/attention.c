/* Grouped-query attention for a few new tokens over a cache, float32, AVX2 + FMA.
 *
 * At decoding sizes (1 to a few dozen query tokens, a few hundred cached slots) torch's
 * CPU SDPA spends most of a call on set-up: 100-300 us a layer for about 3 MFLOP. Here one
 * OpenMP task per (batch row, query head) does the whole head: its T query rows against
 * the S keys of its key/value head with the matmul kernel's register tiles, the additive
 * mask, a softmax with a vectorised exp, and the weighted sum of values.
 *
 * q: [B, H, T, D] contiguous; k, v: [B, KV, S, D] contiguous (head h reads key/value head
 * h / (H / KV)); mask: [B, 1, T, S] contiguous additive float, or NULL (every slot
 * visible); out: [B, T, H, D] contiguous, the layout transformers' attention returns.
 */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

#include "vector_math.h"

void seed_linear_serial(const float *x, const float *w, float *out, long n_rows, long n_in, long n_out);

static inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

/* scores[0:S] (scaled, masked) -> probabilities, in place. */
static void softmax_row(float *scores, const float *mask, long S, float scale) {
  __m256 tops = _mm256_set1_ps(-INFINITY);
  long j = 0;
  for (; j + 8 <= S; j += 8) {
    __m256 x = _mm256_mul_ps(_mm256_loadu_ps(scores + j), _mm256_set1_ps(scale));
    if (mask) x = _mm256_add_ps(x, _mm256_loadu_ps(mask + j));
    _mm256_storeu_ps(scores + j, x);
    tops = _mm256_max_ps(tops, x);
  }
  float top = hmax(tops);
  for (long t = j; t < S; ++t) {
    scores[t] = scores[t] * scale + (mask ? mask[t] : 0.0f);
    top = scores[t] > top ? scores[t] : top;
  }
  __m256 sums = _mm256_setzero_ps();
  for (j = 0; j + 8 <= S; j += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), _mm256_set1_ps(top)));
    _mm256_storeu_ps(scores + j, e);
    sums = _mm256_add_ps(sums, e);
  }
  float tail[8] = {0}, total = 0.0f;
  for (long t = 0; j + t < S; ++t) tail[t] = scores[j + t] - top;
  __m256 e = exp8(_mm256_loadu_ps(tail));
  _mm256_storeu_ps(tail, e);
  for (long t = 0; j + t < S; ++t) scores[j + t] = tail[t], total += tail[t];
  _mm256_storeu_ps(tail, sums);
  for (int t = 0; t < 8; ++t) total += tail[t];
  const __m256 inverse = _mm256_set1_ps(1.0f / total);
  for (j = 0; j + 8 <= S; j += 8) _mm256_storeu_ps(scores + j, _mm256_mul_ps(_mm256_loadu_ps(scores + j), inverse));
  for (; j < S; ++j) scores[j] *= 1.0f / total;
}

/* out[0:8*LANES] = sum_j p[j] * v[j, 0:8*LANES], v's rows `stride` apart; LANES is a
 * compile-time constant so the accumulators stay in registers. */
#define DEFINE_WEIGHTED(LANES)                                                                \
  static void weighted_##LANES(const float *p, const float *v, float *out, long S, long stride) { \
    __m256 acc[LANES];                                                                        \
    for (int d = 0; d < LANES; ++d) acc[d] = _mm256_setzero_ps();                             \
    for (long j = 0; j < S; ++j) {                                                            \
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

/* Returns 0, or -1 when D is not a multiple of 8 up to 256, heads are not a multiple of
 * kv heads, or memory ran out. */
int seed_attention(const float *q, const float *k, const float *v, const float *mask, float *out,
                   long B, long H, long KV, long T, long S, long D, float scale, int threads) {
  if (D % 8 || D > 256 || H % KV) return -1;
  const long group = H / KV;
  int failed = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : failed)
  for (long task = 0; task < B * H; ++task) {
    const long b = task / H, h = task % H;
    const float *keys = k + (b * KV + h / group) * S * D, *values = v + (b * KV + h / group) * S * D;
    float *scores = malloc(sizeof(float) * T * S); /* per task: small, so no fresh pages */
    if (!scores) {
      failed = 1;
      continue;
    }
    seed_linear_serial(q + task * T * D, keys, scores, T, D, S);
    for (long t = 0; t < T; ++t) {
      softmax_row(scores + t * S, mask ? mask + (b * T + t) * S : 0, S, scale);
      weighted_values(scores + t * S, values, out + ((b * T + t) * H + h) * D, S, D);
    }
    free(scores);
  }
  return failed ? -1 : 0;
}
