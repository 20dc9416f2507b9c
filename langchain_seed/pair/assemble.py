"""The default draft in the cache: the shipped asset's layers, to run on the target's embedding.

The directory holds the asset's config, ``draft_layers.safetensors`` (every weight but the
token embedding), ``head_token_ids.json`` (the ids of its restricted LM head), its model
card, and the target's tokenizer files. It is a layers-only draft
(`engine.models.is_layers_draft_dir`): `engine.models.load_draft(dir, target)` builds it on
the target's own embedding module (blocks or float), so the draft adds only its 14 MB of
layers to memory and nothing is copied from the target to disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tqdm.auto import tqdm
from transformers import AutoConfig

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

LAYOUT = "layers-only"
"""The draft directory's layout (part of its stamp: directories of older layouts are rebuilt)."""


def build_draft(asset_dir: Path, target_dir: Path, out_dir: Path) -> None:
    """Write a layers-only draft dir: the asset's config, layers, head ids and card, and the
    target's tokenizer files. Raises ValueError when the asset does not fit the target."""
    config = AutoConfig.from_pretrained(asset_dir)
    target_config = AutoConfig.from_pretrained(target_dir)
    for name in ("hidden_size", "vocab_size"):
        if getattr(config, name) != getattr(target_config, name):
            raise ValueError(f"draft asset {asset_dir} does not fit target {target_dir}: {name} "
                             f"{getattr(config, name)} vs {getattr(target_config, name)}")
    for name in ("config.json", DRAFT_LAYERS_FILE, HEAD_IDS_FILE, "README.md"):
        if (asset_dir / name).is_file():
            shutil.copy2(asset_dir / name, out_dir / name)
    for name in TOKENIZER_FILES:
        if (target_dir / name).is_file():
            shutil.copy2(target_dir / name, out_dir / name)


def ensure_default_draft(target_dir: str | os.PathLike, progress: bool = True,
                         asset_dir: str | os.PathLike | None = None) -> Path:
    """The draft's dir in the cache: the shipped asset (or `asset_dir`) as a layers-only
    draft for `target_dir` (see the module notes; load it with `engine.models.load_draft`)."""
    target_dir, asset = Path(target_dir), Path(asset_dir) if asset_dir else default_asset_dir()
    if not (asset / DRAFT_LAYERS_FILE).is_file():
        raise FileNotFoundError(f"no draft asset at {asset} ({DRAFT_LAYERS_FILE} missing)")
    stamp = {"layout": LAYOUT, "asset_sha256": sha256_file(asset / DRAFT_LAYERS_FILE),
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
