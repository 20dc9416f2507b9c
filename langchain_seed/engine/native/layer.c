/* A Llama decoder layer in two calls instead of ten: the engine's one-row decoding step
 * spent about as long in the Python between its kernels (argument checks, tensor
 * allocation, ctypes, module lookups) as in the kernels themselves.
 *
 * Each call runs the library's own kernels in the order engine/layers.py runs them, on the
 * same inputs, so every output is the same bits as that kernel-by-kernel path:
 *
 *   seed_layer_qkv:  normed = rms_norm(hidden); q, k, v = the three projections of normed
 *                    (one int8_linear3 call where all three take 8-bit activations in one
 *                    format without biases); q, k = rotary(q), rotary(k)
 *   (the caller appends k and v to its cache and picks the mask)
 *   seed_layer_rest: attended = attention(q, keys, values, mask);
 *                    h = hidden + o_proj(attended);
 *                    out = h + down_proj(gate_up_silu(rms_norm(h)))
 *   seed_decoder_layers: every layer of a decoder in turn, each as seed_layer_qkv, its k
 *                    and v copied into the layer's cache stores after their S - T filled
 *                    slots, then seed_layer_rest over the S slots (the same calls, so the
 *                    same bits, as one layer at a time)
 *
 * The layer's seven linears (q, k, v, o, gate, up, down, in that order) are described by
 * four arrays: kinds[i] (LINEAR_DENSE: float32 weight [out, in], skinny_linear.c;
 * LINEAR_BLOCKS: GGML blocks with float32 activations, quantized_linear.c; LINEAR_INT8:
 * repacked groups with 8-bit activations, int8_dot.c), formats[i] (the block format code),
 * weights[i] and biases[i] (NULL for none). gate and up share a kind and a format.
 *
 * Shapes: hidden and out [B * T, E] contiguous (B rows of T new tokens); q [B, H, T, D],
 * k and v [B, KV, T, D], all contiguous; keys and values [B, KV, S, D] with each slot's D
 * values contiguous and slots D apart, batch and head strides given; mask [B, 1, T, S]
 * additive or NULL; cos and sin [B or 1, T, D] contiguous (cos_batch_stride 0 for one
 * shared row). The MLP's hidden size is I.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LINEAR_DENSE 0
#define LINEAR_BLOCKS 1
#define LINEAR_INT8 2
enum { Q_PROJ, K_PROJ, V_PROJ, O_PROJ, GATE_PROJ, UP_PROJ, DOWN_PROJ };

void seed_rms_norm(const float *x, long x_stride, const float *weight, float eps, float *out, long rows, long n);
void seed_skinny_linear(const float *x, const float *w, const float *bias, float *out, long n_rows, long n_in,
                        long n_out, int threads);
void seed_gate_up_silu(const float *x, const float *gate, const float *up, float *out, long n_rows, long n_in,
                       long n_out, int threads);
int seed_quantized_linear(const float *x, const uint8_t *w, int format, const float *bias, float *out, long n_rows,
                          long n_in, long n_out, int threads);
int seed_quantized_gate_up_silu(const float *x, const uint8_t *gate, const uint8_t *up, int format, float *out,
                                long n_rows, long n_in, long n_out, int threads);
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

/* out [rows, n_out] = x [rows, n_in] . linear i; returns 0, or nonzero without memory. */
static int project(const int *kinds, const int *formats, const void *const *weights, const float *const *biases,
                   int i, const float *x, float *out, long rows, long n_in, long n_out, int threads) {
  if (kinds[i] == LINEAR_DENSE) {
    seed_skinny_linear(x, weights[i], biases[i], out, rows, n_in, n_out, threads);
    return 0;
  }
  if (kinds[i] == LINEAR_BLOCKS)
    return seed_quantized_linear(x, weights[i], formats[i], biases[i], out, rows, n_in, n_out, threads);
  return seed_int8_linear(x, weights[i], formats[i], biases[i], out, rows, n_in, n_out, threads);
}

static int gate_up_silu(const int *kinds, const int *formats, const void *const *weights, const float *x, float *out,
                        long rows, long n_in, long n_out, int threads) {
  if (kinds[GATE_PROJ] == LINEAR_DENSE) {
    seed_gate_up_silu(x, weights[GATE_PROJ], weights[UP_PROJ], out, rows, n_in, n_out, threads);
    return 0;
  }
  if (kinds[GATE_PROJ] == LINEAR_BLOCKS)
    return seed_quantized_gate_up_silu(x, weights[GATE_PROJ], weights[UP_PROJ], formats[GATE_PROJ], out, rows, n_in,
                                       n_out, threads);
  return seed_int8_gate_up_silu(x, weights[GATE_PROJ], weights[UP_PROJ], formats[GATE_PROJ], out, rows, n_in, n_out,
                                threads);
}

/* Query, key and value of normed [rows, E] into q_rows [rows, H * D], k_rows and v_rows
 * [rows, KV * D]: one int8_linear3 call where it applies (as engine/layers.py decides). */
static int query_key_value(const int *kinds, const int *formats, const void *const *weights,
                           const float *const *biases, const float *normed, float *q_rows, float *k_rows,
                           float *v_rows, long rows, long E, long HD, long KVD, int threads) {
  if (kinds[Q_PROJ] == LINEAR_INT8 && kinds[K_PROJ] == LINEAR_INT8 && kinds[V_PROJ] == LINEAR_INT8 &&
      formats[Q_PROJ] == formats[K_PROJ] && formats[K_PROJ] == formats[V_PROJ] && !biases[Q_PROJ] &&
      !biases[K_PROJ] && !biases[V_PROJ])
    return seed_int8_linear3(normed, weights[Q_PROJ], weights[K_PROJ], weights[V_PROJ], formats[Q_PROJ], q_rows,
                             k_rows, v_rows, rows, E, HD, KVD, KVD, threads);
  int status = project(kinds, formats, weights, biases, Q_PROJ, normed, q_rows, rows, E, HD, threads);
  if (status == 0) status = project(kinds, formats, weights, biases, K_PROJ, normed, k_rows, rows, E, KVD, threads);
  if (status == 0) status = project(kinds, formats, weights, biases, V_PROJ, normed, v_rows, rows, E, KVD, threads);
  return status;
}

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
int seed_layer_qkv(const float *hidden, const float *norm_weight, float eps, const int *kinds, const int *formats,
                   const void *const *weights, const float *const *biases, const float *cos, const float *sin,
                   long cos_batch_stride, float *q, float *k, float *v, long B, long T, long E, long H, long KV,
                   long D, int threads) {
  const long R = B * T;
  float *normed = malloc(sizeof(float) * R * (E + (H + 2 * KV) * D));
  if (!normed) return 1;
  float *q_rows = normed + R * E, *k_rows = q_rows + R * H * D, *v_rows = k_rows + R * KV * D;
  seed_rms_norm(hidden, E, norm_weight, eps, normed, R, E);
  int status = query_key_value(kinds, formats, weights, biases, normed, q_rows, k_rows, v_rows, R, E, H * D, KV * D,
                               threads);
  if (status == 0) {
    seed_rotary(q_rows, T * H * D, D, H * D, cos, sin, cos_batch_stride, q, B, H, T, D);
    seed_rotary(k_rows, T * KV * D, D, KV * D, cos, sin, cos_batch_stride, k, B, KV, T, D);
    heads_first(v_rows, v, B, T, KV, D);
  }
  free(normed);
  return status ? 1 : 0;
}

/* Returns 0, 1 without memory, or -1 when the attention kernel refuses the shapes. */
int seed_layer_rest(const float *hidden, const float *q, const float *keys, const float *values, const float *mask,
                    long S, long k_batch, long k_head, long v_batch, long v_head, float scale, const int *kinds,
                    const int *formats, const void *const *weights, const float *const *biases,
                    const float *norm_weight, float eps, float *out, long B, long T, long E, long H, long KV, long D,
                    long I, int threads) {
  const long R = B * T;
  float *attended = malloc(sizeof(float) * R * (H * D + 2 * E + I));
  if (!attended) return 1;
  float *projected = attended + R * H * D, *normed = projected + R * E, *act = normed + R * E;
  int status = seed_attention(q, keys, values, mask, attended, B, H, KV, T, S, D, k_batch, k_head, v_batch, v_head,
                              scale, threads);
  if (status == 0)
    status = project(kinds, formats, weights, biases, O_PROJ, attended, projected, R, H * D, E, threads) ? 1 : 0;
  if (status == 0) {
    add_rows(hidden, projected, out, R * E);
    seed_rms_norm(out, E, norm_weight, eps, normed, R, E);
    status = gate_up_silu(kinds, formats, weights, normed, act, R, E, I, threads) ? 1 : 0;
  }
  if (status == 0)
    status = project(kinds, formats, weights, biases, DOWN_PROJ, act, projected, R, I, E, threads) ? 1 : 0;
  if (status == 0) add_rows(out, projected, out, R * E);
  free(attended);
  return status;
}

/* Every layer l < L of a decoder over B rows of T new tokens (module notes): hidden [B * T, E]
 * in, out [B * T, E] the last layer's output. Layer l's stores key_stores[l] and
 * value_stores[l] ([B, KV, capacity, D] by the strides given, the same for every layer)
 * hold S - T filled slots and room for T more; the mask [B, 1, T, S] is every layer's.
 * Per layer: norms' weights and epsilons, and the four arrays of seed_layer_qkv.
 * Returns 0, 1 without memory, or -1 when the attention kernel refuses the shapes. */
int seed_decoder_layers(const float *hidden, long L, const float *const *input_norms, const float *input_eps,
                        const int *const *kinds, const int *const *formats, const void *const *const *weights,
                        const float *const *const *biases, const float *const *post_norms, const float *post_eps,
                        const float *cos, const float *sin, long cos_batch_stride, float *const *key_stores,
                        float *const *value_stores, long S, long k_batch, long k_head, long v_batch, long v_head,
                        const float *mask, float scale, float *out, long B, long T, long E, long H, long KV, long D,
                        long I, int threads) {
  const long R = B * T, filled = S - T;
  float *q = malloc(sizeof(float) * R * (H * D + 2 * KV * D + E));
  if (!q) return 1;
  float *k = q + R * H * D, *v = k + R * KV * D, *spare = v + R * KV * D;
  float *outputs[2] = {out, spare};  /* layer l writes outputs[(L - 1 - l) % 2]: the last one out */
  const float *input = hidden;
  int status = 0;
  for (long l = 0; l < L && status == 0; ++l) {
    float *output = outputs[(L - 1 - l) % 2];
    status = seed_layer_qkv(input, input_norms[l], input_eps[l], kinds[l], formats[l], weights[l], biases[l], cos,
                            sin, cos_batch_stride, q, k, v, B, T, E, H, KV, D, threads);
    if (status != 0) break;
    for (long b = 0; b < B; ++b)
      for (long h = 0; h < KV; ++h) {
        memcpy(key_stores[l] + b * k_batch + h * k_head + filled * D, k + (b * KV + h) * T * D, sizeof(float) * T * D);
        memcpy(value_stores[l] + b * v_batch + h * v_head + filled * D, v + (b * KV + h) * T * D,
               sizeof(float) * T * D);
      }
    status = seed_layer_rest(input, q, key_stores[l], value_stores[l], mask, S, k_batch, k_head, v_batch, v_head,
                             scale, kinds[l], formats[l], weights[l], biases[l], post_norms[l], post_eps[l], output, B,
                             T, E, H, KV, D, I, threads);
    input = output;
  }
  free(q);
  return status;
}
