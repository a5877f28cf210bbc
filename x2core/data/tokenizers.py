"""Tokenizer helpers: small vocabularies and models made on the spot, and one loader.

The text-encoder plugins, the tests and the demo need tokenizers without a model
hub. This module makes them from a corpus (or from nothing) in well under a second:

* :func:`build_wordpiece_vocab` writes a BERT ``vocab.txt`` (specials first, then
  frequent words, then every character seen, whole and as a ``##`` continuation);
* :func:`train_sentencepiece` trains a unigram SentencePiece model in-process whose
  ids, once loaded as an XLM-R tokenizer, follow XLM-R's layout (below);
* :func:`builtin_wordpiece_vocab` is a fixed character-level vocabulary plus some
  common English words, used by the BERT plugin when no tokenizer is configured;
* :func:`load_tokenizer` turns a path (``vocab.txt``, ``*.model`` or a directory)
  into a Hugging Face tokenizer.

XLM-R id layout. The real ``sentencepiece.bpe.model`` has ``<unk>=0, <s>=1, </s>=2``
and no pad or mask. fairseq (and so the published checkpoints) puts
``<s>=0, <pad>=1, </s>=2, <unk>=3`` in front, shifts every other piece by one, and
appends ``<mask>`` after the last piece. Hugging Face's XLM-R tokenizer performs
that remapping when it converts the ``.model`` file, so :func:`train_sentencepiece`
trains with SentencePiece's own ``unk=0, bos=1, eos=2`` (no pad) and lets the
converter produce the XLM-R ids: piece ``k >= 3`` of the SentencePiece model gets
id ``k + 1``, ``<mask>`` gets ``piece_size + 1``, and the vocabulary has
``piece_size + 2`` entries.

Requires transformers >= 5 (tokenizers-backed ``BertTokenizer`` that accepts an
in-memory vocabulary; ``convert_to_native_format`` for SentencePiece files).
"""
from __future__ import annotations

import collections
import io
import os
import string
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

from x2core.errors import ConfigError, InputError
from x2core.utils.atomic import atomic_write

WORDPIECE_SPECIALS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Common caption words so the built-in vocabulary is not purely character-level
# (keeps demo sequences short); everything else falls back to characters.
_COMMON_WORDS = (
    "a an the of in on at to with and is are was were it its this that there "
    "man woman men women person people boy girl child dog cat horse bird car bus "
    "train street road table room picture photo image group two three red blue "
    "green white black small large big sitting standing riding playing holding "
    "walking next front top near water field grass his her they while"
).split()

SPM_FILE_SUFFIX = ".model"


# --- WordPiece ------------------------------------------------------------------------

def _is_cjk(ch: str) -> bool:
    """The CJK ranges BERT's basic tokenizer splits into single characters."""
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _char_tokens(chars: Iterable[str]) -> list[str]:
    """Each character whole and as a ``##`` continuation, so no word of these
    characters ever becomes ``[UNK]``. Punctuation and CJK characters are always
    words of their own after BERT's pre-tokenizer, so they need no ``##`` form."""
    out = []
    for ch in chars:
        out.append(ch)
        if not (_is_cjk(ch) or unicodedata.category(ch).startswith("P") or ch in string.punctuation):
            out.append("##" + ch)
    return out


def builtin_wordpiece_vocab() -> list[str]:
    """The fixed vocabulary used when a BERT encoder has no tokenizer configured.

    ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``, then ASCII lowercase letters,
    digits and punctuation (letters and digits also as ``##`` pieces), then a few
    dozen common caption words. Deterministic: the same list on every call.
    """
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = list(WORDPIECE_SPECIALS) + _char_tokens(chars)
    return vocab + [w for w in dict.fromkeys(_COMMON_WORDS) if w not in vocab]


def _bert_words(texts: Iterable[str], lowercase: bool) -> Iterable[str]:
    """Split texts into words exactly as the WordPiece tokenizer will (same
    normalizer and pre-tokenizer from the ``tokenizers`` library)."""
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=None, lowercase=lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    for text in texts:
        if not isinstance(text, str):
            raise InputError(f"texts must be strings, got {type(text).__name__}")
        for word, _span in pre.pre_tokenize_str(norm.normalize_str(text)):
            yield word


def build_wordpiece_vocab(texts: Iterable[str], path: str | os.PathLike, *, min_freq: int = 1,
                          extra_tokens: Sequence[str] = (), lowercase: bool = True) -> Path:
    """Write a WordPiece ``vocab.txt`` for ``texts`` and return its path.

    Order (ids): the five BERT specials, ``extra_tokens``, words seen at least
    ``min_freq`` times (most frequent first, ties alphabetical), then every
    character seen, whole and as ``##`` piece (by code point). CJK characters are
    single words, as in BERT's basic tokenizer. If ``path`` is a directory the file
    is ``path/vocab.txt``. The file is written atomically.
    """
    if min_freq < 1:
        raise InputError(f"min_freq must be >= 1, got {min_freq}")
    counts: collections.Counter[str] = collections.Counter(_bert_words(texts, lowercase))
    if not counts:
        raise InputError("build_wordpiece_vocab needs at least one non-empty text")
    vocab: list[str] = []
    seen: set[str] = set()

    def add(tok: str) -> None:
        if tok and tok not in seen:
            seen.add(tok)
            vocab.append(tok)

    for tok in (*WORDPIECE_SPECIALS, *extra_tokens):
        add(tok)
    for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n >= min_freq and len(word) > 1:  # single characters come below
            add(word)
    for tok in _char_tokens(sorted({ch for word in counts for ch in word})):
        add(tok)

    path = Path(path)
    if path.is_dir():
        path = path / "vocab.txt"
    atomic_write(path, ("\n".join(vocab) + "\n").encode("utf-8"))
    return path


def wordpiece_tokenizer(vocab: Sequence[str] | dict[str, int] | str | os.PathLike, *,
                        lowercase: bool = True, model_max_length: int = 512):
    """A BERT tokenizer from a token list, a ``token -> id`` dict or a ``vocab.txt``."""
    from transformers import BertTokenizer

    if isinstance(vocab, (str, os.PathLike)):
        vocab = Path(vocab).read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":
            vocab.pop()
    if not isinstance(vocab, dict):
        vocab = {tok: i for i, tok in enumerate(vocab)}
    missing = [t for t in WORDPIECE_SPECIALS if t not in vocab]
    if missing:
        raise ConfigError(f"WordPiece vocabulary lacks the special tokens {missing}")
    return BertTokenizer(vocab=dict(vocab), do_lower_case=lowercase,
                         model_max_length=model_max_length)


def builtin_wordpiece_tokenizer(model_max_length: int = 512):
    """:func:`wordpiece_tokenizer` over :func:`builtin_wordpiece_vocab`."""
    return wordpiece_tokenizer(builtin_wordpiece_vocab(), model_max_length=model_max_length)


# --- SentencePiece ------------------------------------------------------------------

def train_sentencepiece(texts: Iterable[str], prefix: str | os.PathLike, vocab_size: int = 1000, *,
                        model_type: str = "unigram", character_coverage: float = 1.0) -> Path:
    """Train a SentencePiece model in-process and write ``<prefix>.model``.

    Deterministic (one thread, corpus order kept, no sampling). ``vocab_size`` is a
    soft limit: a small corpus gets as many pieces as it supports. The model keeps
    SentencePiece's ``<unk>=0, <s>=1, </s>=2`` like XLM-R's own file, so
    :func:`sentencepiece_tokenizer` yields XLM-R ids (module docstring).
    """
    import sentencepiece as spm

    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise InputError("train_sentencepiece needs at least one non-empty text")
    if vocab_size < 8:
        raise InputError(f"vocab_size must be >= 8, got {vocab_size}")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False,          # small corpora: fewer pieces instead of an error
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
        minloglevel=2)
    path = Path(f"{os.fspath(prefix)}{SPM_FILE_SUFFIX}")
    atomic_write(path, buf.getvalue())
    return path


def sentencepiece_tokenizer(model_path: str | os.PathLike, *, model_max_length: int = 512):
    """An XLM-R tokenizer (fast, ``tokenizers``-backed) from a SentencePiece ``.model``.

    transformers 5 pitfall: ``XLMRobertaTokenizer(vocab_file=path)`` silently
    ignores the file and builds a 5-token vocabulary; the ``.model`` must go through
    ``convert_to_native_format`` (what ``from_pretrained`` does for a directory).
    """
    from transformers import XLMRobertaTokenizer

    path = os.fspath(model_path)
    kwargs = XLMRobertaTokenizer.convert_to_native_format(vocab_file=path)
    tok = XLMRobertaTokenizer(**kwargs, model_max_length=model_max_length)
    # Guard against the silent fallback described above.
    if len(tok) <= 5:
        raise ConfigError(f"could not read the SentencePiece model '{path}'")
    return tok


# --- loading ------------------------------------------------------------------------

_TOKENIZER_DIR_FILES = ("tokenizer.json", "tokenizer_config.json")


def load_tokenizer(path: str | os.PathLike, *, lowercase: bool = True,
                   model_max_length: int | None = None, what: str = "tokenizer"):
    """Load a tokenizer from a local path, dispatching on what the path is.

    * ``*.txt`` file: WordPiece ``vocab.txt`` -> BERT tokenizer (``lowercase``);
    * ``*.model`` file: SentencePiece -> XLM-R tokenizer;
    * directory with ``tokenizer.json``/``tokenizer_config.json``: the class it
      declares (``AutoTokenizer``, local files only);
    * directory with only ``vocab.txt`` or one ``*.model``: as the files above.

    ``what`` names the config field in error messages. Nothing is downloaded.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what}: path '{p}' does not exist")
    if p.is_dir():
        if any((p / name).is_file() for name in _TOKENIZER_DIR_FILES):
            from transformers import AutoTokenizer

            kwargs = {"model_max_length": model_max_length} if model_max_length else {}
            return AutoTokenizer.from_pretrained(str(p), local_files_only=True, **kwargs)
        if (p / "vocab.txt").is_file():
            p = p / "vocab.txt"
        else:
            models = sorted(p.glob(f"*{SPM_FILE_SUFFIX}"))
            if len(models) != 1:
                raise ConfigError(
                    f"{what}: directory '{p}' holds no tokenizer (expected tokenizer.json, "
                    f"tokenizer_config.json, vocab.txt or one SentencePiece *.model file)")
            p = models[0]
    max_len = {"model_max_length": model_max_length} if model_max_length else {}
    if p.suffix == ".txt":
        return wordpiece_tokenizer(p, lowercase=lowercase, **max_len)
    if p.suffix == SPM_FILE_SUFFIX:
        return sentencepiece_tokenizer(p, **max_len)
    raise ConfigError(f"{what}: cannot tell the tokenizer type of '{p}' (expected a WordPiece "
                      f"vocab.txt, a SentencePiece *.model file or a tokenizer directory)")


# --- sanity checks ------------------------------------------------------------------
# A tokenizer that silently maps most words to [UNK] still trains: the MLM loss falls to
# ~0 (predicting [UNK] is easy) and nothing else looks wrong. transformers 5's
# ``BertTokenizerFast(vocab_file=...)`` is one way to get one: it ignores the file and
# keeps only the 5 special tokens.

MAX_UNK_RATE = 0.5  # more [UNK] pieces than this in the probed texts is an error
_FIX = ("build the vocabulary with x2core.data.tokenizers.build_wordpiece_vocab or give the "
        "tokenizer directory")


def tokenizer_source(text_cfg) -> str:
    """Where a text config's tokenizer comes from, for messages: ``'PATH'`` or the built-in."""
    path = getattr(text_cfg, "tokenizer", None) or getattr(text_cfg, "pretrained", None)
    return f"'{path}'" if path else f"(the built-in vocabulary of '{getattr(text_cfg, 'name', '?')}')"


def check_tokenizer_vocab(tokenizer, embedding_rows: int, *, source: str,
                          pretrained: bool) -> None:
    """Refuse a tokenizer that cannot fit, or cannot be the one of, the embedding table.

    * more tokens than ``embedding_rows``: ids past the table;
    * no token but the special ones: every word is ``[UNK]``;
    * ``pretrained`` and fewer than half the table's rows: a warning, not an error (a
      deliberate new vocabulary over pretrained layers is possible): the checkpoint's
      embeddings most likely belong to another vocabulary, so each id would read the row
      of another word.
    """
    n = len(tokenizer)
    if n > embedding_rows:
        raise ConfigError(f"tokenizer {source} has {n} tokens but the embedding table only "
                          f"{embedding_rows} rows")
    specials = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    if not set(tokenizer.get_vocab()) - specials:
        raise ConfigError(f"tokenizer {source} holds only its {n} special tokens, so every word "
                          f"becomes {tokenizer.unk_token}; {_FIX}")
    if pretrained and n < embedding_rows / 2:
        import warnings

        warnings.warn(f"tokenizer {source} has {n} tokens but the pretrained embedding table "
                      f"{embedding_rows} rows: unless the vocabulary is new on purpose, use the "
                      f"checkpoint's own tokenizer (the one saved with the weights)", stacklevel=2)


def check_unk_rate(tokenizer, token_ids: Sequence[Sequence[int]], *, source: str, where: str,
                   max_rate: float = MAX_UNK_RATE) -> float:
    """The ``[UNK]`` share of ``token_ids`` (the probed texts' pieces, no special tokens);
    above ``max_rate`` a one-line :class:`ConfigError` names the tokenizer and the rate."""
    unk = getattr(tokenizer, "unk_token_id", None)
    total = sum(len(ids) for ids in token_ids)
    if unk is None or not total:
        return 0.0
    rate = sum(i == unk for ids in token_ids for i in ids) / total
    if rate > max_rate:
        raise ConfigError(f"tokenizer {source}: {rate:.0%} of the {total} tokens of {where} are "
                          f"{tokenizer.unk_token}, so the model would learn from almost no text; "
                          f"{_FIX}")
    return rate
