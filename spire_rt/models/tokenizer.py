"""A small CLIP-format BPE tokenizer built from the restoration prompt grammar.

The presets that ship without real weights need a tokenizer, and the real CLIP vocabulary cannot be fetched at run
time. This one is built by the project: CLIP's byte-level alphabet (so any text still tokenizes, letter by letter),
plus BPE merges learned from the grammar's words, so a restoration prompt becomes a handful of word tokens.
Numbers never merge: CLIP's pre-tokenizer already splits every digit into its own token, so "1.55" reads as
"1", ".", "5", "5" (SPIRE's numbers are read digit by digit). The files are the standard `vocab.json` and
`merges.txt`, loadable by `transformers.CLIPTokenizer`.
"""

from __future__ import annotations

import collections
import itertools
import json
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
MAX_LENGTH = 77

# The grammar's words (SPIRE.md "Restoration prompt grammar") and a few common caption words.
CORPUS_WORDS = (
    *("remove", "all", "degradation", "deblur", "with", "sigma", "upsample", "to", "denoise", "dejpeg", "quality"),
    *("x", "a", "an", "the", "of", "on", "in", "and", "photo", "picture", "image", "dog", "cat", "person", "face"),
    *("man", "woman", "building", "street", "tree", "sky"),
)


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def learn_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Greedy BPE (Sennrich et al. 2016) until every corpus word is a single symbol."""
    byte_map = bytes_to_unicode()
    spelled = {}
    for word in set(words):
        symbols = [byte_map[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        spelled[word] = symbols
    merges = []
    while True:
        pairs = collections.Counter()
        for symbols in spelled.values():
            pairs.update(itertools.pairwise(symbols))
        if not pairs:
            return merges
        # Ties broken by the pair itself so the merge list is the same on every run.
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        merges.append(best)
        for word, symbols in spelled.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            spelled[word] = merged


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary order: bytes, bytes ending a word, merged symbols, then the two special tokens."""
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [symbol + END_OF_WORD for symbol in alphabet] + [a + b for a, b in merges] + [BOS, EOS]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def write_tokenizer_files(folder: str | Path) -> Path:
    """Write `vocab.json` and `merges.txt` for the grammar tokenizer into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(CORPUS_WORDS)
    (folder / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def build_grammar_tokenizer() -> CLIPTokenizer:
    """The grammar tokenizer as a `transformers.CLIPTokenizer`, built in memory."""
    merges = learn_merges(CORPUS_WORDS)
    return CLIPTokenizer(vocab=build_vocab(merges), merges=merges,
                         model_max_length=MAX_LENGTH)
