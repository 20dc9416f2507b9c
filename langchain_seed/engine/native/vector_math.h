/* Vector helpers shared by the engine's C kernels (AVX2 + FMA, and AVX-512F where the CPU
 * has it: `wide_registers`). */
#ifndef SEED_VECTOR_MATH_H
#define SEED_VECTOR_MATH_H

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define WIDE_TARGET __attribute__((target("avx512f")))

/* Where the float32 kernels run on 512-bit registers (1) or 256 (0); -1 until decided. One
 * value for the process (defined in skinny_linear.c; seed_set_float_tile_bits sets it). */
extern int seed_wide_state;

/* 1 where the CPU has AVX-512F and LANGCHAIN_SEED_FLOAT_PATH is not "avx2". */
static inline int wide_registers_possible(void) {
  const char *forced = getenv("LANGCHAIN_SEED_FLOAT_PATH");
  return !(forced && strcmp(forced, "avx2") == 0) && __builtin_cpu_supports("avx512f");
}

/* 1 where the float32 kernels run on 512-bit registers: by default wherever they can
 * (wide_registers_possible), or as the engine's measurement chose (seed_set_float_tile_bits).
 * The 512-bit code holds the 256-bit code's 8-lane partial sums side by side (two weight rows,
 * two query rows), so either gives the same bits, and switching at any time is safe. */
static inline int wide_registers(void) {
  int state = __atomic_load_n(&seed_wide_state, __ATOMIC_RELAXED);
  if (state < 0) {
    state = wide_registers_possible();
    __atomic_store_n(&seed_wide_state, state, __ATOMIC_RELAXED);
  }
  return state;
}

/* [a[0:8] | b[0:8]] in one register. */
WIDE_TARGET static inline __m512 load_pair(const float *a, const float *b) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(a))),
                                             _mm256_castps_pd(_mm256_loadu_ps(b)), 1));
}

/* [p[0:8] | p[0:8]]. */
WIDE_TARGET static inline __m512 load_twice(const float *p) {
  return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(p))));
}

WIDE_TARGET static inline __m256 low_half(__m512 v) { return _mm512_castps512_ps256(v); }
WIDE_TARGET static inline __m256 high_half(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

/* e^x for 8 lanes (Cephes' single-precision exp: range reduction by ln 2 and a degree-5
 * polynomial, about 1 ulp); inputs below -87.3 give 0 or a denormal, so masked slots
 * (the dtype's minimum) vanish. */
static inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365478515625f));
  __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(scale));
}

#endif
