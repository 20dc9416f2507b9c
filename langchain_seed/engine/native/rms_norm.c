/* RMS norm of a few rows, single-threaded: out = weight * (x * 1 / sqrt(mean(x^2) + eps)),
 * in float32 as transformers' Llama-family norms compute it (to rounding: the sum of
 * squares runs in 8 lanes). At decoding sizes torch's fused op costs 20-60 us a call
 * (dispatch and waking its thread pool for a few thousand numbers); this costs a few.
 *
 * x: [rows, n] with row stride x_stride; weight: [n]; out: [rows, n] contiguous.
 */
#include <immintrin.h>
#include <math.h>

void seed_rms_norm(const float *x, long x_stride, const float *weight, float eps, float *out,
                   long rows, long n) {
  for (long r = 0; r < rows; ++r) {
    const float *row = x + r * x_stride;
    float *o = out + r * n;
    __m256 acc = _mm256_setzero_ps();
    long k = 0;
    for (; k + 8 <= n; k += 8) {
      __m256 v = _mm256_loadu_ps(row + k);
      acc = _mm256_add_ps(acc, _mm256_mul_ps(v, v));
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    float sum = _mm_cvtss_f32(s);
    for (; k < n; ++k) sum += row[k] * row[k];
    const float scale = 1.0f / sqrtf(sum / (float)n + eps);
    for (k = 0; k < n; ++k) o[k] = weight[k] * (row[k] * scale);
  }
}
