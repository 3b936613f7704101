"""Static sentence embeddings distilled from the embedded encoder (Model2Vec's method), for ingestion at speed.

What it is: one vector per token of all-MiniLM-L6-v2's vocabulary, computed once from the encoder itself;
a text's embedding is the normalised mean of its tokens' vectors. No transformer runs per text, so it
embeds thousands of chunks a second where the encoder does about ten.

Why, measured on this project's machine (2 cores, AVX2; bench/embeddings_local.py and bench/README.md):
- the encoder costs about 21 MFLOP per token (6 layers of 384 x 384 and 384 x 1536 products), 24 with
  attention at 256 tokens. Ingestion's target, 200 chunks a second of up to 256 tokens, needs over
  1 TFLOP/s; this machine's float32 BLAS peaks near 165 GFLOP/s (one plain product of the encoder's
  largest shape), and the whole forward pass reaches about 55. No runtime closes a gap of 6 to 20 times:
  int8 on AVX2 (no VNNI) is at most a few times float32. Ingestion with the encoder stays near 10
  chunks a second;
- the static model costs a tokenizer pass and a table row per token: about 3,400 chunks of 800 tokens or
  10,000 of 200 tokens a second in-process, on those 2 cores while other work loaded them; a query
  embeds in a fraction of a millisecond;
- quality, on the labelled set the repo ships (tests/data/retrieval, bench/retrieval_quality.py: 52 short
  documents, 104 questions, half of them paraphrases sharing few words with their answer), embeddings
  alone: hit@5 0.99 with each file one input and 1.00 with each paragraph one, the encoder's 1.00 and
  1.00; hit@1 0.91 and 0.91, the encoder's 0.94 and 0.93 (BM25 alone: hit@5 0.94 and 0.89). A few
  questions in a hundred ranked second rather than first, for hundreds of times the speed; vector stores' search
  is hybrid besides (vectors fused with full-text rank). Hence this is the model to ingest vector stores
  with (`vector_stores.embedding_model`); the encoder stays the better choice where a few texts are
  embedded at a time and the best ranking matters (`/v1/embeddings`).

The method (Model2Vec, https://github.com/MinishLab/model2vec, `distill` with its defaults, reimplemented
here on the numpy encoder because the package's distillation needs torch):
1. every token of the vocabulary goes through the encoder once, as the sequence `[SEP] token [CLS]`
   (Model2Vec's order), and its vector is the mean of the three output states, not normalised;
2. BERT's `[unusedN]` placeholders are left out; PCA (centred, components by decreasing variance, each
   component's sign fixed so that its largest coordinate is positive) keeps 256 dimensions;
3. each token's vector is weighted by SIF, a / (a + p) with a = 1e-4, where p is a Zipf estimate of the
   token's frequency from its rank in the vocabulary (BERT's uncased WordPiece vocabulary is ordered
   roughly by frequency), so frequent words weigh little in a mean;
4. a text is tokenized without [CLS] and [SEP]; unknown tokens are skipped; its vector is the mean of its
   tokens' vectors, normalised to unit length. A text with no known token gets the [UNK] token's vector.

The table (vocab x 256 float32, 31 MB) takes about 30 s to compute on 2 cores (idle), deterministically
from the installed weights: built with one BLAS thread or two, tables differ by under 3e-6. It is cached
under the user's cache directory, keyed by the SHA-256 of the weights and the tokenizer and by the
method's parameters, so that a different model or method never reads a stale table.
`python -m parley.inference.static_embeddings` builds it ahead of time, for `make install`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from parley.inference.sentence_embeddings import Array, ModelFilesError, SentenceEncoder, default_model_dir

log = logging.getLogger(__name__)

# Bumped whenever the distillation changes, so that tables built the old way are not read.
METHOD_VERSION = 1
DEFAULT_DIMENSIONS = 256
SIF_COEFFICIENT = 1e-4
# Far past any chunk (at most 4,096 tokens): the cost per token is a lookup, so a text is read whole,
# up to OpenAI's limit for its embedding models.
DEFAULT_MAX_TOKENS = 8192
# Vocabulary entries with no meaning of their own, left out of the PCA and of every mean.
_UNUSED_TOKEN = re.compile(r"\[unused\d+\]")
# Sequences of three tokens per forward pass while distilling: large products keep BLAS busy.
_DISTILL_BATCH = 1024


def default_cache_dir() -> Path:
    """Where distilled tables are kept: `$XDG_CACHE_HOME/parley/embeddings`, else `~/.cache/parley/embeddings`."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "parley" / "embeddings"


def distill(encoder: SentenceEncoder, dimensions: int = DEFAULT_DIMENSIONS) -> Array:
    """The static table of `encoder`'s vocabulary: one row per token id, `dimensions` wide (see the module
    docstring for the steps). Rows of tokens left out are zero."""
    tokenizer = encoder.tokenizer
    vocab_size = encoder.vocab_size
    if not 1 <= dimensions <= encoder.dimensions:
        raise ValueError(f"dimensions must be within 1..{encoder.dimensions}, not {dimensions}")
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise ModelFilesError("the tokenizer has no [CLS] or [SEP] token")
    states = np.empty((vocab_size, encoder.dimensions), dtype=np.float32)
    for start in range(0, vocab_size, _DISTILL_BATCH):
        ids = range(start, min(start + _DISTILL_BATCH, vocab_size))
        states[start : start + len(ids)] = encoder.pooled([[sep_id, i, cls_id] for i in ids])
    kept = np.array([not _UNUSED_TOKEN.fullmatch(tokenizer.id_to_token(i) or "") for i in range(vocab_size)])

    # PCA in float64: a 384 x 384 covariance, whose eigenvectors are the principal axes.
    x = states[kept].astype(np.float64)
    x -= x.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(x.T @ x)
    axes = eigenvectors[:, np.argsort(eigenvalues)[::-1][:dimensions]]
    # An eigenvector's sign is arbitrary (it can differ between BLAS builds): fixing it makes the table,
    # and so every stored vector, the same wherever it is built.
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(dimensions)])
    projected = x @ (axes * signs)

    # SIF weights from a Zipf prior over the kept tokens' ranks.
    inverse_rank = 1.0 / np.arange(2, projected.shape[0] + 2)
    probability = inverse_rank / inverse_rank.sum()
    projected *= (SIF_COEFFICIENT / (SIF_COEFFICIENT + probability))[:, None]

    table = np.zeros((vocab_size, dimensions), dtype=np.float32)
    table[kept] = projected
    return table


class BertPieces:
    """BERT's uncased tokenization, as `tokenizers` does it, several times faster on text seen before.

    `tokenizers` spends most of its time in BERT's normaliser and pre-tokenizer (Unicode cleaning, accent
    stripping, punctuation splitting, each keeping offsets): about 0.3 M tokens a second on this machine's
    two cores, which held the static model near 250 chunks of 800 tokens a second. But that tokenization
    never joins what ASCII whitespace separates: every step before WordPiece works a character at a time,
    and space, tab, newline and return end a word. So a text's ids are its whitespace-separated pieces' ids
    in order, and a piece seen before needs only a lookup. A new piece of ASCII is tokenized here (drop
    control characters, lowercase, split into runs of letters and digits and single punctuation
    characters, then WordPiece by the tokenizer's own model); any other, or one holding an added token such
    as [SEP], goes to `tokenizers`.
    tests/test_embeddings_static.py checks the ids are `tokenizers`' own.
    """

    _PIECE = re.compile(r"[^ \t\n\r]+")
    # ASCII control characters, which BERT's normaliser removes.
    _CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
    # BERT's words in lowercase ASCII: runs of letters and digits, and single punctuation characters (every
    # printable character that is neither a letter, a digit nor a space).
    _WORD = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")
    # Distinct pieces kept; past it the cache starts again (a corpus of hashes or random strings).
    _MAX_PIECES = 500_000

    def __init__(self, tokenizer: Any, added_tokens: list[str]) -> None:
        self._tokenizer = tokenizer
        self._model = tokenizer.model
        self._added_tokens = added_tokens
        self._pieces: dict[str, list[int]] = {}

    @classmethod
    def of(cls, tokenizer: Any) -> BertPieces | None:
        """The fast path for `tokenizer`, or None when it is not BERT's uncased WordPiece."""
        config = json.loads(tokenizer.to_str())
        normalizer = config.get("normalizer") or {}
        bert = (
            normalizer.get("type") == "BertNormalizer"
            and normalizer.get("clean_text")
            and normalizer.get("lowercase")
            and normalizer.get("strip_accents") in (None, True)
            and (config.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and (config.get("model") or {}).get("type") == "WordPiece"
        )
        added = config.get("added_tokens") or []
        # Added tokens ([CLS], [SEP], ...) are matched in the raw text, before normalising; one that took
        # the whitespace around it would join pieces.
        if not bert or any(t.get("lstrip") or t.get("rstrip") or not t["content"].strip() for t in added):
            return None
        return cls(tokenizer, [t["content"] for t in added])

    def ids(self, text: str) -> list[int]:
        """The token ids of `text`, without [CLS] and [SEP]."""
        pieces = self._pieces
        found = self._PIECE.findall(text)
        try:
            return list(itertools.chain.from_iterable(map(pieces.__getitem__, found)))
        except KeyError:
            if len(pieces) >= self._MAX_PIECES:
                pieces.clear()
            # Read from a dictionary of this text's own: another thread may clear the shared one meanwhile.
            known: dict[str, list[int]] = {}
            for piece in found:
                if piece not in known:
                    piece_ids = pieces.get(piece)
                    if piece_ids is None:
                        piece_ids = pieces[piece] = self._tokenize(piece)
                    known[piece] = piece_ids
            return list(itertools.chain.from_iterable(map(known.__getitem__, found)))

    def _tokenize(self, piece: str) -> list[int]:
        if not piece.isascii() or any(token in piece for token in self._added_tokens):
            ids: list[int] = self._tokenizer.encode(piece, add_special_tokens=False).ids
            return ids
        words = self._WORD.findall(self._CONTROL.sub("", piece).lower())
        return [token.id for word in words for token in self._model.tokenize(word)]


class StaticEncoder:
    """A static embedding model: texts in, unit vectors out, at the tokenizer's speed. Callers in several threads
    may use it at once (its table and tokenizer do not change; its cache of pieces is a dictionary)."""

    # Token arrays are read as given: no [CLS] or [SEP] is added.
    special_tokens = 0

    def __init__(self, table: Array, model_dir: Path, max_tokens: int | None = None) -> None:
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except (OSError, ValueError) as exc:
            raise ModelFilesError(f"cannot read the tokenizer in {model_dir}: {exc}") from exc
        self.max_tokens: int = max_tokens or DEFAULT_MAX_TOKENS
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._pieces = BertPieces.of(self._tokenizer)
        self._table = table
        self.vocab_size: int = table.shape[0]
        self.dimensions: int = table.shape[1]
        # Tokens that carry nothing: [UNK] and the zero rows of the placeholders.
        self._skip: npt.NDArray[np.bool_] = np.logical_not(table.any(axis=1))
        unk = self._tokenizer.token_to_id("[UNK]")
        if unk is not None:
            self._skip[unk] = True
        fallback = table[unk] if unk is not None and table[unk].any() else np.ones(self.dimensions, np.float32)
        self._fallback = (fallback / np.linalg.norm(fallback)).astype(np.float32)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Each text's length in the model's tokens, before truncation."""
        return [len(ids) for ids in self._token_ids(texts)]

    def encode(self, texts: list[str], batch_size: int = 0) -> tuple[Array, int]:
        """Unit vectors for `texts` (one row each) and the number of tokens read, each truncated to max_tokens.
        (`batch_size` is the encoder's parameter; a static model needs none.)"""
        ids = [seq[: self.max_tokens] for seq in self._token_ids(texts)]
        return self._mean(ids), sum(len(i) for i in ids)

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, without [CLS] and [SEP], not truncated."""
        if self._pieces is not None:
            return [self._pieces.ids(text) for text in texts]
        # encode_batch tokenizes on every core, without the GIL.
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def encode_ids(self, ids: list[list[int]]) -> Array:
        """Unit vectors for texts already tokenized; each truncated to max_tokens."""
        return self._mean([seq[: self.max_tokens] for seq in ids])

    def _mean(self, sequences: list[list[int]]) -> Array:
        out = np.empty((len(sequences), self.dimensions), dtype=np.float32)
        table, skip = self._table, self._skip
        # One text at a time: a gather and a sum of its rows (numpy's reduceat over all texts' rows at once
        # is several times slower).
        for i, seq in enumerate(sequences):
            ids = np.asarray(seq, dtype=np.intp)
            ids = ids[~skip[ids]]
            if ids.size == 0:
                out[i] = self._fallback
                continue
            total = table.take(ids, axis=0).sum(axis=0)
            out[i] = total / max(float(np.linalg.norm(total)), 1e-12)
        return out


def source_digest(model_dir: Path) -> str:
    """The SHA-256 of the files a table is computed from: the weights, then the tokenizer."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json"):
        with open(model_dir / name, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def table_path(model_dir: Path, dimensions: int, cache_dir: Path | None = None) -> Path:
    """The cache file of the table of the model in `model_dir` at `dimensions`."""
    key = f"{source_digest(model_dir)[:32]}-d{dimensions}-sif{SIF_COEFFICIENT:g}-v{METHOD_VERSION}"
    return (cache_dir or default_cache_dir()) / f"static-{key}.npy"


def load_table(model_dir: Path, dimensions: int, cache_dir: Path | None = None) -> Array:
    """The table of the model in `model_dir`: read from the cache, else distilled now (about 30 s) and cached.

    Processes that find no table distil it one at a time (a lock file beside it): the others then read it.
    A cache that cannot be written is logged, and the table is used from memory."""
    try:
        path = table_path(model_dir, dimensions, cache_dir)
    except OSError as exc:
        raise ModelFilesError(f"cannot read the embedding model in {model_dir}: {exc}") from exc
    table = _read_table(path, dimensions)
    if table is not None:
        return table
    with _exclusive(path):
        table = _read_table(path, dimensions)  # distilled by another process while this one waited
        if table is not None:
            return table
        log.info("distilling the static embedding model from %s (once; cached in %s)", model_dir, path.parent)
        started = time.perf_counter()
        table = distill(SentenceEncoder(model_dir), dimensions)
        log.info("distilled %d token vectors in %.1f s", table.shape[0], time.perf_counter() - started)
        try:
            # Written aside and renamed, so that no reader ever sees half a file.
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
                np.save(f, table, allow_pickle=False)
            os.replace(f.name, path)
        except OSError as exc:
            log.warning("cannot cache the static embedding model in %s: %s", path.parent, exc)
    return table


def is_cached(model_dir: Path, dimensions: int, cache_dir: Path | None = None) -> bool:
    """Whether the table of the model in `model_dir` is in the cache (loading it takes a fraction of a second)."""
    try:
        return table_path(model_dir, dimensions, cache_dir).is_file()
    except OSError:
        return False


def _read_table(path: Path, dimensions: int) -> Array | None:
    try:
        table: Array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the cached table %s: %s", path, exc)
        return None
    if table.dtype == np.float32 and table.ndim == 2 and table.shape[1] == dimensions:
        return table
    log.warning("ignoring %s: not a table of %d float32 columns", path, dimensions)
    return None


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Holds a lock file beside `path` (released if the process dies); without one, goes ahead unlocked."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def load_static_encoder(
    path: Path | None,
    max_tokens: int | None = None,
    dimensions: int | None = None,
    cache_dir: Path | None = None,
) -> StaticEncoder:
    """The static model distilled from the encoder in `path` (the default model's package when None)."""
    model_dir = path if path is not None else default_model_dir()
    table = load_table(model_dir, dimensions or DEFAULT_DIMENSIONS, cache_dir)
    return StaticEncoder(table, model_dir, max_tokens)


def main() -> None:
    """Build the default static model's table into the cache (`make install` runs this)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    encoder = load_static_encoder(None)
    model_dir = default_model_dir()
    print(
        f"static embeddings: {encoder.vocab_size} x {encoder.dimensions} in "
        f"{table_path(model_dir, encoder.dimensions)} ({time.perf_counter() - started:.1f} s)"
    )


if __name__ == "__main__":
    main()
