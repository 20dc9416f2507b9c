"""Weights kept compact on the CPU: GGML's Q8_0 and Q4_1 blocks behind one linear interface.

- `formats`: the block formats, quantising (gguf-py) and exact dequantising;
- `modules`: `QuantizedLinear` and `QuantizedEmbedding`, computing in float32 on the
  dequantised values (the engine's C kernels at decoding sizes);
- `gguf`: a transformers model straight from a GGUF file, its quantised tensors kept as blocks;
- `convert`: an existing float model's linears quantised in place (`weights="int8"` / `"int4"`).
"""
