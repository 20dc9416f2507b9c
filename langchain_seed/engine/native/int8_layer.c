/* A Llama decoder layer whose linears take 8-bit activations, in two calls instead of
 * ten: the engine's one-row decoding step spent about as long in the Python between its
 * kernels (argument checks, tensor allocation, ctypes, module lookups) as in the
 * kernels themselves.
 *
 * Each call runs the library's own kernels in the order engine/layers.py runs them, on
 * the same inputs, so every output is the same bits as that step-by-step path:
 *
 *   seed_int8_layer_qkv:  normed = rms_norm(hidden); q, k, v = int8_linear3(normed);
 *                         q, k = rotary(q), rotary(k)
 *   (the caller appends k and v to its cache and picks the mask)
 *   seed_int8_layer_rest: attended = attention(q, keys, values, mask);
 *                         h = hidden + o_proj(attended);
 *                         out = h + down_proj(gate_up_silu(rms_norm(h)))
 *
 * Shapes: hidden and out [B * T, E] contiguous (B rows of T new tokens); q [B, H, T, D],
 * k and v [B, KV, T, D], all contiguous; keys and values [B, KV, S, D] with each slot's D
 * values contiguous and slots D apart, batch and head strides given; mask [B, 1, T, S]
 * additive or NULL; cos and sin [B or 1, T, D] contiguous (cos_batch_stride 0 for one
 * shared row). The MLP's hidden size is I. Weights are repacked groups (int8_dot.c) in
 * the format given; biases may be NULL.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void seed_rms_norm(const float *x, long x_stride, const float *weight, float eps, float *out, long rows, long n);
int seed_int8_linear(const float *x, const uint8_t *w, int format, const float *bias, float *out, long n_rows,
                     long n_in, long n_out, int threads);
int seed_int8_linear3(const float *x, const uint8_t *w0, const uint8_t *w1, const uint8_t *w2, int format,
                      float *out0, float *out1, float *out2, long n_rows, long n_in, long n_out0, long n_out1,
                      long n_out2, int threads);
int seed_int8_gate_up_silu(const float *x, const uint8_t *gate, const uint8_t *up, int format, float *out,
                           long n_rows, long n_in, long n_out, int threads);
void seed_rotary(const float *x, long batch_stride, long head_stride, long token_stride, const float *cos,
                 const float *sin, long cos_batch_stride, float *out, long batch, long heads, long tokens, long dim);
int seed_attention(const float *q, const float *k, const float *v, const float *mask, float *out, long B, long H,
                   long KV, long T, long S, long D, long k_batch, long k_head, long v_batch, long v_head,
                   float scale, int threads);

/* v [B, KV, T, D] from the projection's [B * T, KV * D] rows. */
static void heads_first(const float *rows, float *v, long B, long T, long KV, long D) {
  for (long b = 0; b < B; ++b)
    for (long h = 0; h < KV; ++h)
      for (long t = 0; t < T; ++t)
        memcpy(v + ((b * KV + h) * T + t) * D, rows + ((b * T + t) * KV + h) * D, sizeof(float) * D);
}

static void add_rows(const float *a, const float *b, float *out, long n) {
  for (long i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

/* Returns 0, or 1 without memory for its buffers. */
int seed_int8_layer_qkv(const float *hidden, const float *norm_weight, float eps, const uint8_t *wq,
                        const uint8_t *wk, const uint8_t *wv, int format, const float *cos, const float *sin,
                        long cos_batch_stride, float *q, float *k, float *v, long B, long T, long E, long H, long KV,
                        long D, int threads) {
  const long R = B * T;
  float *normed = malloc(sizeof(float) * R * (E + (H + 2 * KV) * D));
  if (!normed) return 1;
  float *q_rows = normed + R * E, *k_rows = q_rows + R * H * D, *v_rows = k_rows + R * KV * D;
  seed_rms_norm(hidden, E, norm_weight, eps, normed, R, E);
  int status = seed_int8_linear3(normed, wq, wk, wv, format, q_rows, k_rows, v_rows, R, E, H * D, KV * D, KV * D,
                                 threads);
  if (status == 0) {
    seed_rotary(q_rows, T * H * D, D, H * D, cos, sin, cos_batch_stride, q, B, H, T, D);
    seed_rotary(k_rows, T * KV * D, D, KV * D, cos, sin, cos_batch_stride, k, B, KV, T, D);
    heads_first(v_rows, v, B, T, KV, D);
  }
  free(normed);
  return status;
}

/* Returns 0, 1 without memory, or -1 when the attention kernel refuses the shapes. */
int seed_int8_layer_rest(const float *hidden, const float *q, const float *keys, const float *values,
                         const float *mask, long S, long k_batch, long k_head, long v_batch, long v_head, float scale,
                         const uint8_t *wo, int o_format, const float *o_bias, const float *norm_weight, float eps,
                         const uint8_t *w_gate, const uint8_t *w_up, int mlp_format, const uint8_t *w_down,
                         int down_format, const float *down_bias, float *out, long B, long T, long E, long H, long KV,
                         long D, long I, int threads) {
  const long R = B * T;
  float *attended = malloc(sizeof(float) * R * (H * D + 2 * E + I));
  if (!attended) return 1;
  float *projected = attended + R * H * D, *normed = projected + R * E, *act = normed + R * E;
  int status = seed_attention(q, keys, values, mask, attended, B, H, KV, T, S, D, k_batch, k_head, v_batch, v_head,
                              scale, threads);
  if (status == 0) status = seed_int8_linear(attended, wo, o_format, o_bias, projected, R, H * D, E, threads);
  if (status == 0) {
    add_rows(hidden, projected, out, R * E);
    seed_rms_norm(out, E, norm_weight, eps, normed, R, E);
    status = seed_int8_gate_up_silu(normed, w_gate, w_up, mlp_format, act, R, E, I, threads);
  }
  if (status == 0) status = seed_int8_linear(act, w_down, down_format, down_bias, projected, R, I, E, threads);
  if (status == 0) add_rows(out, projected, out, R * E);
  free(attended);
  return status;
}
