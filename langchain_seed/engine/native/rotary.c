/* Rotary position embedding of one attention input, as transformers' apply_rotary_pos_emb
 * computes it, bit for bit: out = x * cos + rotate_half(x) * sin, where rotate_half(x) is
 * (-x[half:], x[:half]). Each product and the sum are rounded separately (the library is
 * built with -ffp-contract=off, so no multiply-add is fused), as torch's three eager ops do.
 *
 * x: [batch, heads, tokens, dim] with any strides between its rows (the engine passes the
 * transposed view transformers makes of a projection's [batch, tokens, heads, dim] output);
 * cos, sin: [batch, tokens, dim] contiguous, or [1, tokens, dim] for every row (cos_batch_stride
 * 0, as transformers makes them when the positions are the same for the whole batch);
 * out: [batch, heads, tokens, dim] contiguous.
 * One eager op replaces transformers' nine (two slices, a negation, a concatenation, three
 * multiplications, an addition, and a copy to the cache's layout).
 */

void seed_rotary(const float *x, long batch_stride, long head_stride, long token_stride,
                 const float *cos, const float *sin, long cos_batch_stride, float *out,
                 long batch, long heads, long tokens, long dim) {
  const long half = dim / 2;
  for (long b = 0; b < batch; ++b)
    for (long h = 0; h < heads; ++h)
      for (long t = 0; t < tokens; ++t) {
        const float *row = x + b * batch_stride + h * head_stride + t * token_stride;
        const float *c = cos + b * cos_batch_stride + t * dim, *s = sin + b * cos_batch_stride + t * dim;
        float *o = out + ((b * heads + h) * tokens + t) * dim;
        for (long d = 0; d < half; ++d) o[d] = row[d] * c[d] + (-row[d + half]) * s[d];
        for (long d = half; d < dim; ++d) o[d] = row[d] * c[d] + row[d - half] * s[d];
      }
}
