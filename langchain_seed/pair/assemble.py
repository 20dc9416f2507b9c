"""Assembling the default draft: the shipped asset's layers on the target's embedding.

The result is a normal `LlamaForCausalLM` directory in the cache (usable as transformers'
``assistant_model``) plus ``head_token_ids.json``, the ids of the draft's restricted LM
head.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM

from langchain_seed.pair.fetch import (
    ensure_default_target,
    install_atomically,
    read_verified_manifest,
    sha256_file,
)
from langchain_seed.pair.paths import (
    DRAFT_LAYERS_FILE,
    DRAFT_NAME,
    HEAD_IDS_FILE,
    MANIFEST,
    TOKENIZER_FILES,
    cache_dir,
    default_asset_dir,
)


def _target_embedding(target_dir: Path) -> Any:
    for path in sorted(target_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in ("model.embed_tokens.weight", "lm_head.weight"):
                if key in handle.keys():
                    return handle.get_tensor(key).float()
    raise ValueError(f"no embedding (model.embed_tokens.weight) in {target_dir}/*.safetensors")


def build_draft(asset_dir: Path, target_dir: Path, out_dir: Path) -> None:
    """Assemble a full HF draft dir: asset config + layers, the target's embedding and tokenizer."""
    config = AutoConfig.from_pretrained(asset_dir)
    target_config = AutoConfig.from_pretrained(target_dir)
    for name in ("hidden_size", "vocab_size"):
        if getattr(config, name) != getattr(target_config, name):
            raise ValueError(f"draft asset {asset_dir} does not fit target {target_dir}: {name} "
                             f"{getattr(config, name)} vs {getattr(target_config, name)}")
    draft = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.float() for k, v in load_file(str(asset_dir / DRAFT_LAYERS_FILE)).items()}
    state["model.embed_tokens.weight"] = _target_embedding(target_dir)
    missing, unexpected = draft.load_state_dict(state, strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise ValueError(f"draft asset weights do not match its config: missing {missing}, unexpected {unexpected}")
    draft.tie_weights()
    draft.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (target_dir / name).is_file():
            shutil.copy2(target_dir / name, out_dir / name)
    for name in (HEAD_IDS_FILE, "README.md"):
        if (asset_dir / name).is_file():
            shutil.copy2(asset_dir / name, out_dir / name)


def ensure_default_draft(target_dir: str | os.PathLike, progress: bool = True,
                         asset_dir: str | os.PathLike | None = None) -> Path:
    """The draft model dir in the cache, built from the shipped asset + the target's embedding.

    A normal `LlamaForCausalLM` dir (usable as transformers' ``assistant_model``) plus
    ``head_token_ids.json``, the ids of the draft's restricted LM head.
    """
    target_dir, asset = Path(target_dir), Path(asset_dir) if asset_dir else default_asset_dir()
    if not (asset / DRAFT_LAYERS_FILE).is_file():
        raise FileNotFoundError(f"no draft asset at {asset} ({DRAFT_LAYERS_FILE} missing)")
    stamp = {"asset_sha256": sha256_file(asset / DRAFT_LAYERS_FILE),
             "head_ids_sha256": sha256_file(asset / HEAD_IDS_FILE),
             "target_manifest_sha256": sha256_file(target_dir / MANIFEST)
             if (target_dir / MANIFEST).is_file() else str(target_dir.resolve())}
    final = cache_dir() / "models" / (DRAFT_NAME if asset_dir is None else f"draft-{stamp['asset_sha256'][:12]}")
    manifest = read_verified_manifest(final)
    if manifest is not None and all(manifest.get(k) == v for k, v in stamp.items()):
        return final

    def build(tmp: Path) -> dict:
        with tqdm(total=1, desc=f"assemble {final.name}", disable=not progress) as bar:
            build_draft(asset, target_dir, tmp)
            bar.update()
        return stamp

    return install_atomically(build, final)


def ensure_default_pair(progress: bool = True, source: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(target_dir, draft_dir) of the default pair, fetched and built once into the cache."""
    target = ensure_default_target(source=source, progress=progress)
    return target, ensure_default_draft(target, progress=progress)
