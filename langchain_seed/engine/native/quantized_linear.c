/* Matmuls on weights kept in GGML's block formats (float32 activations and sums).
 *
 * A weight [n_out, n_in] is stored row by row as blocks of 32 values:
 *   Q8_0 (format 0): fp16 d, 32 x int8 q                      value = q * d          (34 bytes)
 *   Q4_1 (format 1): fp16 d, fp16 m, 16 bytes of nibbles      value = q * d + m      (20 bytes)
 *                    (value j < 16 in byte j's low nibble, value 16 + j in its high nibble)
 * exactly as llama.cpp writes them into a GGUF file. Each block of 4 output rows is
 * dequantised into a per-thread float32 buffer (4 x n_in floats, in L1/L2) with the same
 * rounding as gguf-py's and transformers' dequantisation (a product, then a sum: never
 * fused), and then multiplied by every input row with the dense kernels' register tiles
 * (linear_tiles.h); with at most FUSED_ROWS_MAX input rows on 512 bits the values go
 * straight into the registers those tiles load instead (below). So the result equals the
 * dense kernel on the dequantised weight bit for bit, while memory streams 0.6 (Q4_1) or
 * 1.06 (Q8_0) bytes per weight instead of 4.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "linear_tiles.h"

#define BLOCK_VALUES 32
#define Q8_0_BYTES 34
#define Q4_1_BYTES 20

static inline long block_bytes(int format) { return format == 0 ? Q8_0_BYTES : Q4_1_BYTES; }

static inline float half_to_float(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, sizeof h);
  return _cvtsh_ss(h);
}

/* The 32 values of one Q8_0 block into out[0..31]. */
static inline void dequantize_q8_0(const uint8_t *block, float *out) {
  const __m256 d = _mm256_set1_ps(half_to_float(block));
  const __m128i *q = (const __m128i *)(block + 2);
  for (int i = 0; i < 2; ++i) {
    __m128i bytes = _mm_loadu_si128(q + i);
    __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
    __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
    _mm256_storeu_ps(out + 16 * i, _mm256_mul_ps(lo, d));
    _mm256_storeu_ps(out + 16 * i + 8, _mm256_mul_ps(hi, d));
  }
}

/* The 32 values of one Q4_1 block into out[0..31]. */
static inline void dequantize_q4_1(const uint8_t *block, float *out) {
  const __m256 d = _mm256_set1_ps(half_to_float(block)), m = _mm256_set1_ps(half_to_float(block + 2));
  const __m128i bytes = _mm_loadu_si128((const __m128i *)(block + 4)), low4 = _mm_set1_epi8(0x0F);
  const __m128i low = _mm_and_si128(bytes, low4), high = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);
  const __m128i halves[4] = {low, _mm_srli_si128(low, 8), high, _mm_srli_si128(high, 8)};
  for (int i = 0; i < 4; ++i) {
    __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(halves[i]));
    _mm256_storeu_ps(out + 8 * i, _mm256_add_ps(_mm256_mul_ps(q, d), m));
  }
}

/* The same two blocks on 16 lanes (where the products run on 512 bits): the same product
 * and sum per value, so the same floats, in half the instructions. Value k of the block goes
 * to out[(k / 8) * stride + k % 8]: stride 8 writes the 32 values in a row, 16 leaves room for
 * the other row of a PAIRED block (linear_tiles.h) between each 8. */
WIDE_TARGET static inline void store_16(float *out, long stride, __m512 values) {
  if (stride == 8) {
    _mm512_storeu_ps(out, values);
    return;
  }
  _mm512_mask_storeu_ps(out, 0x00FF, values);               /* lanes 0-7 at out[0:8] */
  _mm512_mask_storeu_ps(out + stride - 8, 0xFF00, values);  /* lanes 8-15 at out[stride:stride + 8] */
}

WIDE_TARGET static inline void wide_dequantize_q8_0(const uint8_t *block, float *out, long stride) {
  const __m512 d = _mm512_set1_ps(half_to_float(block));
  for (int i = 0; i < 2; ++i) {
    const __m128i bytes = _mm_loadu_si128((const __m128i *)(block + 2) + i);
    store_16(out + 2 * i * stride, stride, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), d));
  }
}

WIDE_TARGET static inline void wide_dequantize_q4_1(const uint8_t *block, float *out, long stride) {
  const __m512 d = _mm512_set1_ps(half_to_float(block)), m = _mm512_set1_ps(half_to_float(block + 2));
  const __m128i bytes = _mm_loadu_si128((const __m128i *)(block + 4)), low4 = _mm_set1_epi8(0x0F);
  const __m128i halves[2] = {_mm_and_si128(bytes, low4), _mm_and_si128(_mm_srli_epi16(bytes, 4), low4)};
  for (int i = 0; i < 2; ++i) {
    const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(halves[i]));
    store_16(out + 2 * i * stride, stride, _mm512_add_ps(_mm512_mul_ps(q, d), m));
  }
}

/* ---- Few input rows: dequantised in registers (512 bits) ----
 * With up to FUSED_ROWS_MAX input rows (a decoding step, a short verification) the block's
 * values are used by so few products that writing them to the tile and reading them back
 * costs as much as the products. There each 32-value block of a pair of weight rows is
 * dequantised straight into the four registers a PAIRED tile would load ([row a values
 * 8c..8c+7 | row b's], c = 0..3), with the same product and sum per value, and multiplied
 * in the same order as paired_tile_4x: the same bits, without the round trip. */
#define FUSED_ROWS_MAX 6

/* Two rows' (a, b) block as four PAIRED registers: lanes 0-7 row a's values 8c..8c+7,
 * lanes 8-15 row b's. */
WIDE_TARGET static inline void pair_registers(const uint8_t *a, const uint8_t *b, int format, __m512 out[4]) {
  const __m512 d = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(half_to_float(a)), _mm512_set1_ps(half_to_float(b)));
  __m128i bytes[4];
  if (format == 0) {
    const __m128i a0 = _mm_loadu_si128((const __m128i *)(a + 2)), a1 = _mm_loadu_si128((const __m128i *)(a + 18));
    const __m128i b0 = _mm_loadu_si128((const __m128i *)(b + 2)), b1 = _mm_loadu_si128((const __m128i *)(b + 18));
    bytes[0] = _mm_unpacklo_epi64(a0, b0), bytes[1] = _mm_unpackhi_epi64(a0, b0);
    bytes[2] = _mm_unpacklo_epi64(a1, b1), bytes[3] = _mm_unpackhi_epi64(a1, b1);
    for (int c = 0; c < 4; ++c) out[c] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes[c])), d);
    return;
  }
  const __m512 m = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(half_to_float(a + 2)),
                                        _mm512_set1_ps(half_to_float(b + 2)));
  const __m128i low4 = _mm_set1_epi8(0x0F);
  const __m128i qa = _mm_loadu_si128((const __m128i *)(a + 4)), qb = _mm_loadu_si128((const __m128i *)(b + 4));
  const __m128i low_a = _mm_and_si128(qa, low4), low_b = _mm_and_si128(qb, low4);
  const __m128i high_a = _mm_and_si128(_mm_srli_epi16(qa, 4), low4), high_b = _mm_and_si128(_mm_srli_epi16(qb, 4), low4);
  bytes[0] = _mm_unpacklo_epi64(low_a, low_b), bytes[1] = _mm_unpackhi_epi64(low_a, low_b);
  bytes[2] = _mm_unpacklo_epi64(high_a, high_b), bytes[3] = _mm_unpackhi_epi64(high_a, high_b);
  for (int c = 0; c < 4; ++c)
    out[c] = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes[c])), d), m);
}

/* paired_tile_4xRB on 4 weight rows in `format` blocks (w: row 0's first block, rows
 * row_bytes apart) instead of a dequantised PAIRED block: out[j, 0:4] for RB input rows. */
#define DEFINE_FUSED_TILE(RB)                                                                 \
  WIDE_TARGET static inline void fused_tile_4x##RB(const uint8_t *w, long row_bytes, int format, const float *x, \
                                                   const float *bias, float *out, long n_in, long n_out) { \
    const long bytes = block_bytes(format);                                                   \
    __m512 acc[2][RB];                                                                        \
    for (int p = 0; p < 2; ++p)                                                               \
      for (int j = 0; j < RB; ++j) acc[p][j] = _mm512_setzero_ps();                           \
    for (long k0 = 0, at = 0; k0 < n_in; k0 += BLOCK_VALUES, at += bytes) {                   \
      __m512 w01[4], w23[4];                                                                  \
      pair_registers(w + at, w + row_bytes + at, format, w01);                                \
      pair_registers(w + 2 * row_bytes + at, w + 3 * row_bytes + at, format, w23);            \
      for (int c = 0; c < 4; ++c)                                                             \
        for (int j = 0; j < RB; ++j) {                                                        \
          const __m512 xv = load_twice(x + j * n_in + k0 + 8 * c);                            \
          acc[0][j] = _mm512_fmadd_ps(w01[c], xv, acc[0][j]);                                 \
          acc[1][j] = _mm512_fmadd_ps(w23[c], xv, acc[1][j]);                                 \
        }                                                                                     \
    }                                                                                         \
    for (int j = 0; j < RB; ++j) store_paired_sums(acc[0][j], acc[1][j], bias, out + j * n_out); \
  }

DEFINE_FUSED_TILE(6)
DEFINE_FUSED_TILE(5)
DEFINE_FUSED_TILE(4)
DEFINE_FUSED_TILE(3)
DEFINE_FUSED_TILE(2)
DEFINE_FUSED_TILE(1)

/* Every input row (n_rows <= FUSED_ROWS_MAX) against 4 weight rows in blocks: out[r, 0:4]. */
WIDE_TARGET static void fused_rows_4(const uint8_t *w, long row_bytes, int format, const float *x, const float *bias,
                                     float *out, long n_rows, long n_in, long n_out) {
  switch (n_rows) {
    case 6: fused_tile_4x6(w, row_bytes, format, x, bias, out, n_in, n_out); break;
    case 5: fused_tile_4x5(w, row_bytes, format, x, bias, out, n_in, n_out); break;
    case 4: fused_tile_4x4(w, row_bytes, format, x, bias, out, n_in, n_out); break;
    case 3: fused_tile_4x3(w, row_bytes, format, x, bias, out, n_in, n_out); break;
    case 2: fused_tile_4x2(w, row_bytes, format, x, bias, out, n_in, n_out); break;
    case 1: fused_tile_4x1(w, row_bytes, format, x, bias, out, n_in, n_out); break;
    default: break;
  }
}

/* n_rows weight rows (each n_in values) into out [n_rows, n_in]. */
static void narrow_dequantize_rows(const uint8_t *w, int format, long n_rows, long n_in, float *out) {
  const long blocks = n_in / BLOCK_VALUES, bytes = block_bytes(format);
  for (long r = 0; r < n_rows; ++r)
    for (long b = 0; b < blocks; ++b) {
      const uint8_t *block = w + (r * blocks + b) * bytes;
      float *values = out + r * n_in + b * BLOCK_VALUES;
      if (format == 0)
        dequantize_q8_0(block, values);
      else
        dequantize_q4_1(block, values);
    }
}

/* n_rows weight rows into out: row-major [n_rows, n_in] (paired 0), or, for 4 rows, a PAIRED
 * block (paired 1): rows 0 and 1 interleaved 8 values at a time in out[0:2 * n_in], rows 2
 * and 3 in out[2 * n_in:4 * n_in]. */
WIDE_TARGET static void wide_dequantize_rows(const uint8_t *w, int format, long n_rows, long n_in, float *out,
                                             int paired) {
  const long blocks = n_in / BLOCK_VALUES, bytes = block_bytes(format), stride = paired ? 16 : 8;
  for (long r = 0; r < n_rows; ++r) {
    float *row = paired ? out + (r / 2) * 2 * n_in + (r % 2) * 8 : out + r * n_in;
    for (long b = 0; b < blocks; ++b) {
      const uint8_t *block = w + (r * blocks + b) * bytes;
      float *values = row + b * (BLOCK_VALUES / 8) * stride;
      if (format == 0)
        wide_dequantize_q8_0(block, values, stride);
      else
        wide_dequantize_q4_1(block, values, stride);
    }
  }
}

static inline void dequantize_rows(const uint8_t *w, int format, long n_rows, long n_in, float *out) {
  if (wide_registers())
    wide_dequantize_rows(w, format, n_rows, n_in, out, 0);
  else
    narrow_dequantize_rows(w, format, n_rows, n_in, out);
}

/* A block of 4 weight rows dequantised into tile (4 * n_in floats): PAIRED for the 512-bit
 * products (paired 1), else row-major. A call decides `paired` once (wide_registers) and
 * passes it to every block and product, so a width switched meanwhile by another thread
 * cannot give one block two layouts. */
static inline void dequantize_block(const uint8_t *w, int format, long n_in, float *tile, int paired) {
  if (paired)
    wide_dequantize_rows(w, format, 4, n_in, tile, 1);
  else
    narrow_dequantize_rows(w, format, 4, n_in, tile);
}

static void prefetch_rows(const uint8_t *w, long bytes) {
  for (long i = 0; i < bytes; i += 64) _mm_prefetch((const char *)(w + i), _MM_HINT_T0);
}

/* x: [n_rows, n_in] float32; w: [n_out, n_in] in `format` blocks (n_in a multiple of 32);
 * bias: [n_out] or NULL; out: [n_rows, n_out]. Returns 0, or 1 without memory for the buffer. */
int seed_quantized_linear(const float *x, const uint8_t *w, int format, const float *bias, float *out,
                          long n_rows, long n_in, long n_out, int threads) {
  const long blocks = n_out / 4, row_bytes = n_in / BLOCK_VALUES * block_bytes(format);
  const int paired = wide_registers(), fused = paired && n_rows <= FUSED_ROWS_MAX;
  int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
  {
    float *tile = malloc(4 * n_in * sizeof(float));
    if (!tile) failed = 1;
#pragma omp for schedule(static)
    for (long b = 0; b < blocks; ++b) {
      if (!tile) continue;
      if (b + PREFETCH_BLOCKS < blocks) prefetch_rows(w + 4 * (b + PREFETCH_BLOCKS) * row_bytes, 4 * row_bytes);
      if (fused) {
        fused_rows_4(w + 4 * b * row_bytes, row_bytes, format, x, bias ? bias + 4 * b : 0, out + 4 * b, n_rows, n_in,
                     n_out);
        continue;
      }
      dequantize_block(w + 4 * b * row_bytes, format, n_in, tile, paired);
      (paired ? paired_rows_4 : narrow_rows_4)(tile, x, bias ? bias + 4 * b : 0, out + 4 * b, n_rows, n_in, n_out, 0);
    }
#pragma omp single
    for (long o = 4 * blocks; tile && o < n_out; ++o) {
      dequantize_rows(w + o * row_bytes, format, 1, n_in, tile);
      rows_1(tile, x, bias ? bias + o : 0, out + o, n_rows, n_in, n_out, 0);
    }
    free(tile);
  }
  return failed;
}

/* The MLP's first half, silu(x . gate[o]) * (x . up[o]), on gate and up weights in `format`
 * blocks (both [n_out, n_in]); x: [n_rows, n_in]; out: [n_rows, n_out]. Returns 0, or 1
 * without memory. */
int seed_quantized_gate_up_silu(const float *x, const uint8_t *gate, const uint8_t *up, int format, float *out,
                                long n_rows, long n_in, long n_out, int threads) {
  const long blocks = n_out / 4, row_bytes = n_in / BLOCK_VALUES * block_bytes(format);
  const int paired = wide_registers(), fused = paired && n_rows <= FUSED_ROWS_MAX;
  int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
  {
    float *tiles = malloc(8 * n_in * sizeof(float));
    if (!tiles) failed = 1;
#pragma omp for schedule(static)
    for (long b = 0; b < blocks; ++b) {
      if (!tiles) continue;
      if (fused) {
        fused_rows_4(gate + 4 * b * row_bytes, row_bytes, format, x, 0, tiles, n_rows, n_in, 4);
        fused_rows_4(up + 4 * b * row_bytes, row_bytes, format, x, 0, tiles + 4 * n_rows, n_rows, n_in, 4);
        silu_times(tiles, tiles + 4 * n_rows, out + 4 * b, n_rows, 4, n_out);
        continue;
      }
      dequantize_block(gate + 4 * b * row_bytes, format, n_in, tiles, paired);
      dequantize_block(up + 4 * b * row_bytes, format, n_in, tiles + 4 * n_in, paired);
      gate_up_block(x, tiles, tiles + 4 * n_in, out + 4 * b, n_rows, n_in, n_out, 4, paired, 0, 0);
    }
#pragma omp single
    for (long o = 4 * blocks; tiles && o < n_out; ++o) {
      dequantize_rows(gate + o * row_bytes, format, 1, n_in, tiles);
      dequantize_rows(up + o * row_bytes, format, 1, n_in, tiles + n_in);
      gate_up_block(x, tiles, tiles + n_in, out + o, n_rows, n_in, n_out, 1, 0, 0, 0);
    }
    free(tiles);
  }
  return failed;
}

/* Every row of w ([n_rows, n_in] in `format` blocks) into out [n_rows, n_in] float32. */
void seed_dequantize(const uint8_t *w, int format, float *out, long n_rows, long n_in, int threads) {
  const long row_bytes = n_in / BLOCK_VALUES * block_bytes(format);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long r = 0; r < n_rows; ++r) dequantize_rows(w + r * row_bytes, format, 1, n_in, out + r * n_in);
}
