"""The embedded suite's text and tokenizer: the English of Python's own documentation, split in two.

Every Python ships ``pydoc_data.topics.topics`` (about 460k characters of reference text), so the
suite can be trained with no network. The text is the topics joined in sorted key order; the last
``HOLDOUT_FRACTION`` of it (by characters) is held out as probe text and never trained on.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from layerlake.etl.errors import SuiteError

HOLDOUT_FRACTION = 0.1
END_OF_TEXT = "<|endoftext|>"


def corpus_text() -> str:
    """The whole corpus: every pydoc topic, in sorted key order, separated by a blank line."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def split_corpus(text: str, holdout_fraction: float = HOLDOUT_FRACTION) -> tuple[str, str]:
    """``(train, held_out)``: the first ``1 - holdout_fraction`` of the characters, and the rest.

    >>> split_corpus("abcdefghij", 0.2)
    ('abcdefgh', 'ij')
    """
    cut = int(round(len(text) * (1.0 - holdout_fraction)))
    return text[:cut], text[cut:]


def train_text() -> str:
    return split_corpus(corpus_text())[0]


def held_out_text() -> str:
    return split_corpus(corpus_text())[1]


def corpus_sha256() -> str:
    """Identity of the text the suite is trained on (changes with the Python version's docs)."""
    return hashlib.sha256(corpus_text().encode("utf-8")).hexdigest()


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 / Pythia style) trained on ``text``.

    Byte-level means any UTF-8 text encodes without unknown tokens: the 256 byte symbols are the
    initial alphabet, and ``vocab_size - 257`` merges are learnt on top (one id is the special
    ``<|endoftext|>``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tokenizer


def save_tokenizer(tokenizer, path: Path) -> None:
    """Write ``tokenizer.json`` atomically (a temporary sibling, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, path)


def load_tokenizer_file(path: Path):
    """The suite's tokenizer as a ``transformers`` fast tokenizer (what probes and users load); a
    ``SuiteError`` naming the file when it is not a tokenizer."""
    from transformers import PreTrainedTokenizerFast

    check_tokenizer_file(path)
    return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=END_OF_TEXT)


def check_tokenizer_file(path: Path) -> None:
    """Raise ``SuiteError`` unless ``path`` loads as a ``tokenizers`` tokenizer."""
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except FileNotFoundError:
        raise SuiteError(
            f"the suite's tokenizer {path} does not exist", fix="build the suite: `layerlake suite build`"
        ) from None
    except Exception as error:  # tokenizers raises a bare Exception for bad JSON, or fails decoding bytes
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise SuiteError(
            f"the suite's tokenizer {path} is corrupt ({reason})",
            fix="run `layerlake suite build`: it trains the tokenizer again (the same file, so the models are kept)",
        ) from None


def encode(tokenizer_path: Path, text: str) -> np.ndarray:
    """Token ids of ``text`` (int64), with the raw ``tokenizers`` library: no length warnings."""
    from tokenizers import Tokenizer

    check_tokenizer_file(tokenizer_path)
    ids = Tokenizer.from_file(str(tokenizer_path)).encode(text).ids
    return np.asarray(ids, dtype=np.int64)
