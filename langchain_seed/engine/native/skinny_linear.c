/* out[r, o] = bias[o] + sum_k x[r, k] * w[o, k] for a few rows r (float32, AVX2 + FMA).
 *
 * Decoding multiplies a handful of rows (a verification's drafted tokens) by every weight
 * of the model. torch's CPU kernels (MKL, oneDNN) pack the weight on each call and, at 5 to
 * 30 rows, run at half the machine's arithmetic rate while streaming the weight; this
 * kernel reads each weight once, straight from its dense [out, in] layout, and keeps a
 * 4 weight rows x 3 input rows tile of accumulators in registers (12 of the 16 ymm
 * registers), so the rows are re-read from L1/L2 and the weight from memory exactly once.
 *
 * Threads: an OpenMP loop over blocks of 4 output features. Built with -fopenmp and loaded
 * into a process where torch already mapped libgomp.so.1, it shares torch's OpenMP runtime
 * and thread pool (the loader reuses the mapped soname), so no second pool spins.
 */
#include "linear_tiles.h"

/* x: [n_rows, n_in], w: [n_out, n_in], bias: [n_out] or NULL, out: [n_rows, n_out];
 * all contiguous float32. */
void seed_skinny_linear(const float *x, const float *w, const float *bias, float *out,
                        long n_rows, long n_in, long n_out, int threads) {
  const long blocks = n_out / 4;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long b = 0; b < blocks; ++b)
    rows_4(w + 4 * b * n_in, x, bias ? bias + 4 * b : 0, out + 4 * b, n_rows, n_in, n_out,
           b + PREFETCH_BLOCKS < blocks ? w + 4 * (b + PREFETCH_BLOCKS) * n_in : 0);
  for (long o = 4 * blocks; o < n_out; ++o)
    rows_1(w + o * n_in, x, bias ? bias + o : 0, out + o, n_rows, n_in, n_out, 0);
}

/* x: [n_rows, n_in]; gate, up: [n_out, n_in]; out: [n_rows, n_out]; contiguous float32. */
void seed_gate_up_silu(const float *x, const float *gate, const float *up, float *out, long n_rows, long n_in,
                       long n_out, int threads) {
  const long blocks = n_out / 4;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long b = 0; b < blocks; ++b) {
    const int ahead = b + PREFETCH_BLOCKS < blocks;
    gate_up_block(x, gate + 4 * b * n_in, up + 4 * b * n_in, out + 4 * b, n_rows, n_in, n_out, 4, 0,
                  ahead ? gate + 4 * (b + PREFETCH_BLOCKS) * n_in : 0, ahead ? up + 4 * (b + PREFETCH_BLOCKS) * n_in : 0);
  }
  for (long o = 4 * blocks; o < n_out; ++o)
    gate_up_block(x, gate + o * n_in, up + o * n_in, out + o, n_rows, n_in, n_out, 1, 0, 0, 0);
}

int seed_wide_state = -1;

/* The registers the float32 products of this process run on: 512 or 256 bits (linear_tiles.h). */
int seed_float_tile_bits(void) { return wide_registers() ? 512 : 256; }

/* Run them on `bits` (512 or 256) from now on where possible (512 needs AVX-512F and no
 * LANGCHAIN_SEED_FLOAT_PATH=avx2); 0 restores the default. Returns the width in force. The
 * bits of every output are the same either way. */
int seed_set_float_tile_bits(int bits) {
  const int state = bits == 0 ? wide_registers_possible() : bits == 512 && wide_registers_possible();
  __atomic_store_n(&seed_wide_state, state, __ATOMIC_RELAXED);
  return state ? 512 : 256;
}
