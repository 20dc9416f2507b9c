"""The default model pair: SmolLM2-135M-Instruct (target) and its distilled draft.

`paths` names the cache, the sources and the pair's tuned decoding settings; `fetch`
fetches and converts the target; `assemble` builds the draft and returns the pair
(`ensure_default_pair`).
"""
