"""The decoding engine: autoregressive, speculative and scheduled (SeeD) decoding."""
