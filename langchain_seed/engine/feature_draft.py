"""A draft model conditioned on the target's own hidden states (EAGLE-style).

A plain draft LM sees only tokens. This one also sees the target's *feature* at every
position: the target's last hidden state (after its final norm, what its LM head reads).
At position i its input is the embedding of token t_i plus a learned projection of the
target's feature f_{i-1} at the position before (zeros for the first token); a few
decoder layers of the target's architecture and the target's LM head, restricted to a
subset of the vocabulary, give the draft's distribution for t_{i+1}. Its output is
trained to be the target's feature f_i too, so deeper in a draft tree, where the target
has not run yet, the draft feeds its own output in place of the target's feature.

With the projection at zero this is a plain token draft, so a trained token draft (or
the target's first layers) is the natural start. The target's features come for free:
every verification computes them. The draft owns its decoder layers, final norm and the
projection; the embedding and the LM head rows are the target's, taken when the draft
is assembled (`from_target`, `load`), so the shipped weights are small.

Files of a saved feature draft (`save`/`load`): `feature_draft.json` (layers, head size),
`feature_draft.safetensors` (its own weights), `head_token_ids.json`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_FILE = "feature_draft.json"
WEIGHTS_FILE = "feature_draft.safetensors"
HEAD_IDS_FILE = "head_token_ids.json"


def is_feature_draft_dir(path: str | Path) -> bool:
    """Whether `path` holds a saved feature draft."""
    return (Path(path) / CONFIG_FILE).is_file()


def cut_config(target_config: Any, layers: int) -> Any:
    """A copy of the target's config with only its first `layers` layers (no quantization):
    the architecture of a draft made from it, token or feature."""
    config = copy.deepcopy(target_config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:layers]
    return config


def decoder_config(target_config: Any, layers: int) -> Any:
    """`cut_config` with no vocabulary of its own (inputs come as embeddings)."""
    config = cut_config(target_config, layers)
    config.vocab_size = 1  # the decoder's own embedding table is never read
    config.pad_token_id = None
    return config


def _decoder(config: Any) -> Any:
    """A decoder for `config`: the engine's own Llama for a target built from its modules
    (`engine.llama`), else transformers' model class."""
    from langchain_seed.engine.llama import LlamaModel, LlamaSettings

    if isinstance(config, LlamaSettings):
        return LlamaModel(config)
    from transformers import AutoModel

    return AutoModel.from_config(config)


class FeatureDraftModel(nn.Module):
    """Predicts the target's next feature from (its feature, the next token).

    Args:
        target_config: the target's transformers config (the decoder copies its architecture).
        layers: decoder layers of the draft.
        embed_weight: `[vocab, hidden]` the target's input embedding (shared, not trained).
        head_token_ids: the token ids the draft may propose.
        head_weight: `[head, hidden]` the target's LM-head rows of those ids (shared).
    """

    embed_weight: torch.Tensor  # registered as buffers in __init__
    head_weight: torch.Tensor

    def __init__(self, target_config: Any, layers: int, embed_weight: torch.Tensor,
                 head_token_ids: Sequence[int], head_weight: torch.Tensor) -> None:
        super().__init__()
        self.config = decoder_config(target_config, layers)
        hidden = int(self.config.hidden_size)
        self.decoder = _decoder(self.config)
        self.proj = nn.Linear(hidden, hidden, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.register_buffer("embed_weight", embed_weight.detach(), persistent=False)
        self.register_buffer("head_weight", head_weight.detach(), persistent=False)
        self.head_token_ids = [int(t) for t in head_token_ids]
        self.vocab_size = int(embed_weight.shape[0])

    @classmethod
    def from_target(cls, target, layers: int, head_token_ids: Sequence[int]) -> FeatureDraftModel:
        """A draft for `target`: its embedding and head rows, its first layers and final norm,
        the feature projection at zero (a token draft to start from)."""
        ids = torch.tensor(sorted(set(int(t) for t in head_token_ids)), dtype=torch.long)
        head = target.get_output_embeddings().weight.detach().index_select(0, ids).clone()
        embed = target.get_input_embeddings().weight.detach()
        draft = cls(target.config, layers, embed.float(), ids.tolist(), head.float())
        draft.copy_decoder(target.get_decoder())
        return draft.float()

    def copy_decoder(self, source) -> None:
        """Decoder layers and final norm from `source` (a decoder of the same architecture
        with at least as many layers: the target's, or a trained token draft's)."""
        from langchain_seed.engine.weights.convert import dense_state_dict  # a target may keep blocks

        with torch.no_grad():
            for mine, theirs in zip(self.decoder.layers, source.layers):
                mine.load_state_dict(dense_state_dict(theirs))
            self.decoder.norm.load_state_dict(source.norm.state_dict())

    def get_decoder(self):
        """The decoder layers' module (as transformers models name it)."""
        return self.decoder

    def own_state(self) -> dict[str, torch.Tensor]:
        """The weights the draft owns (its decoder's unused one-row embedding left out)."""
        return {name: tensor for name, tensor in self.state_dict().items() if "embed_tokens" not in name}

    def forward(self, input_ids: torch.Tensor, features: torch.Tensor, **decoder_kwargs) -> torch.Tensor:
        """Outputs `[batch, new, hidden]` (the draft's guess at the target's features there)
        for tokens `[batch, new]` and the target's features `[batch, new, hidden]` at the
        position before each; extra kwargs go to the decoder (position_ids,
        attention_mask, cache, use_cache)."""
        embedded = nn.functional.embedding(input_ids, self.embed_weight)
        inputs = embedded + self.proj(features.to(embedded.dtype))
        return self.decoder(inputs_embeds=inputs, **decoder_kwargs).last_hidden_state

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits `[..., head]` over the head's tokens."""
        from langchain_seed.engine.kernels import linear

        return linear(features, self.head_weight)

    # ----- files -------------------------------------------------------------------
    def save(self, out: str | Path, dtype: torch.dtype = torch.float16) -> int:
        """Write the draft's own weights, config and head ids to `out`; returns bytes written."""
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().to(dtype).contiguous() for name, tensor in self.own_state().items()}
        save_file(state, str(out / WEIGHTS_FILE))
        config = {"draft_type": "feature", "layers": int(self.config.num_hidden_layers),
                  "hidden_size": int(self.config.hidden_size), "head_size": len(self.head_token_ids),
                  "target_model_type": getattr(self.config, "model_type", None)}
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        (out / HEAD_IDS_FILE).write_text(json.dumps(self.head_token_ids) + "\n")
        return sum((out / name).stat().st_size for name in (WEIGHTS_FILE, CONFIG_FILE, HEAD_IDS_FILE))

    @classmethod
    def load(cls, path: str | Path, target) -> FeatureDraftModel:
        """A saved feature draft, assembled with `target`'s embedding and head rows (float32)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not is_feature_draft_dir(path):
            raise FileNotFoundError(f"{path} has no {CONFIG_FILE}: not a feature draft directory")
        config = json.loads((path / CONFIG_FILE).read_text())
        hidden = int(target.config.hidden_size)
        if int(config["hidden_size"]) != hidden:
            raise ValueError(f"feature draft {path} was made for hidden size {config['hidden_size']}, "
                             f"the target has {hidden}")
        head_ids = json.loads((path / HEAD_IDS_FILE).read_text())
        draft = cls.from_target(target, int(config["layers"]), head_ids)
        state = {name: tensor.float() for name, tensor in load_file(str(path / WEIGHTS_FILE)).items()}
        missing, unexpected = draft.load_state_dict(state, strict=False)
        missing = [name for name in missing if "embed_tokens" not in name]
        if missing or unexpected:
            raise ValueError(f"feature draft {path} does not match its config: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        return draft.eval()


def check_feature_draft(target, draft: FeatureDraftModel) -> None:
    """Raise ValueError naming the mismatch when `draft` was not assembled for `target`."""
    embed = target.get_input_embeddings().weight
    if tuple(draft.embed_weight.shape) != tuple(embed.shape):
        raise ValueError(f"feature draft embedding {tuple(draft.embed_weight.shape)} does not match the "
                         f"target's {tuple(embed.shape)}: assemble it with FeatureDraftModel.load(path, target)")
    if int(draft.config.hidden_size) != int(target.config.hidden_size):
        raise ValueError(f"feature draft hidden size {draft.config.hidden_size} differs from the target's "
                         f"{target.config.hidden_size}")
