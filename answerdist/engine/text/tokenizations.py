"""Every tokenization of a text: the token sequences whose bytes spell it.

A tokenizer maps " 10" to one canonical token sequence, but a model also puts probability on the
others that decode to the same text ([" 1", "0"], [" ", "10"], ...). With `--tokenizations all`
the scorer enters all of them into the answer trie, so that P(variant) is the probability of
the variant's *text*. Byte-level BPE vocabularies (Llama 3, OLMo 2/3, Qwen) and SentencePiece-style
ones with byte fallback (Llama 2, Mistral, Gemma) give each token a fixed byte string, so the
tokenizations of a text are exactly the ways to cut its UTF-8 bytes into vocabulary pieces (a
piece that several tokens spell counts once per token); special tokens are never pieces of
text. The same pieces give the exact probability of a prompt whose end merges with an answer
(answerdist/engine/scoring/scorer.py, `Boundary`).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from tokenizers import Tokenizer

from answerdist.errors import TokenizerError


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # a SentencePiece byte-fallback token
METASPACE = "\u2581"  # SentencePiece's stand-in for a space ("▁")


def _decoders(tokenizer: Tokenizer) -> list[dict]:
    decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    return decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]


def vocabulary_kind(tokenizer: Tokenizer) -> str | None:
    """"bytes" for a byte-level BPE (GPT-2's alphabet: Llama 3, OLMo, Qwen), "metaspace" for a
    SentencePiece-style vocabulary ("▁" for a space, byte-fallback tokens <0xNN>: Llama 2,
    Mistral, Gemma), None for anything else (its tokens' bytes are not known)."""
    parts = _decoders(tokenizer)
    if any(p.get("type") == "ByteLevel" for p in parts):
        return "bytes"
    if any(p.get("type") == "Metaspace" or (p.get("type") == "Replace"
                                            and (p.get("pattern") or {}).get("String") == METASPACE)
           for p in parts):
        return "metaspace"
    return None


class TokenPieces:
    """The byte string of every non-special token of a byte-level BPE or SentencePiece-style
    vocabulary: each token spells fixed bytes wherever it stands in a text (a SentencePiece
    tokenizer's "▁" prepended at the start of a text is the one exception, and it is never
    inside the texts these pieces spell: the end of a prompt and what follows it)."""

    def __init__(self, tokenizer: Tokenizer, source: str):
        kind = vocabulary_kind(tokenizer)
        if kind is None:
            raise TokenizerError(f"{source}: its tokens do not spell fixed bytes (neither a "
                                 "byte-level BPE nor a SentencePiece-style vocabulary), so the "
                                 "token sequences that spell a text cannot be listed; score "
                                 "with --tokenizations canonical, and end the prompt where the "
                                 "answer cannot merge with it")
        alphabet = _byte_decoder()
        added = tokenizer.get_added_tokens_decoder()
        self.ids: dict[bytes, list[int]] = {}
        self.piece: dict[int, bytes] = {}
        for token, i in sorted(tokenizer.get_vocab(with_added_tokens=True).items(),
                               key=lambda item: item[1]):
            if i in added:
                if added[i].special:
                    continue
                piece = added[i].content.encode("utf-8")
            elif kind == "metaspace":
                byte = BYTE_TOKEN.fullmatch(token)
                piece = (bytes([int(byte.group(1), 16)]) if byte
                         else token.replace(METASPACE, " ").encode("utf-8"))
            elif all(c in alphabet for c in token):
                piece = bytes(alphabet[c] for c in token)
            else:
                raise TokenizerError(f"{source}: token {token!r} (id {i}) is not in the byte-level "
                                     "alphabet, so its bytes are unknown; score with "
                                     "--tokenizations canonical")
            if piece:
                self.ids.setdefault(piece, []).append(i)
                self.piece[i] = piece
        self.longest = max(map(len, self.ids), default=0)
        self._starting: dict[bytes, tuple[int, ...]] = {}

    def spell(self, ids) -> bytes | None:
        """The bytes a token sequence spells; None when one of them spells no fixed bytes (a
        special token)."""
        out = []
        for i in ids:
            if i not in self.piece:
                return None
            out.append(self.piece[i])
        return b"".join(out)

    def count(self, data: bytes, limit: int) -> int:
        """How many tokenizations `data` has, counting no further than limit + 1."""
        ways = [0] * (len(data) + 1)
        ways[len(data)] = 1
        for i in range(len(data) - 1, -1, -1):
            total = sum(len(self.ids.get(data[i:j], ())) * ways[j]
                        for j in range(i + 1, min(len(data), i + self.longest) + 1))
            ways[i] = min(total, limit + 1)
        return ways[0]

    def tokenizations(self, text: str | bytes, limit: int) -> list[list[int]] | None:
        """All token sequences spelling `text` (None when there are more than `limit`), in a
        fixed order: shorter first pieces first, then lower ids."""
        data = text.encode("utf-8") if isinstance(text, str) else text
        if self.count(data, limit) > limit:
            return None
        out: list[list[int]] = []

        def cut(i: int, prefix: list[int]) -> None:
            if i == len(data):
                out.append(prefix)
                return
            for j in range(i + 1, min(len(data), i + self.longest) + 1):
                for token in self.ids.get(data[i:j], ()):
                    cut(j, prefix + [token])

        cut(0, [])
        return out

    def prefix_cuts(self, data: bytes, limit: int) -> list[list[int]] | None:
        """Every token sequence spelling a proper prefix of `data`, the empty one first (None
        when there are more than `limit`): the places from which a next token can run past
        the end of `data`."""
        out: list[list[int]] = []

        def cut(i: int, prefix: list[int]) -> bool:
            out.append(prefix)
            if len(out) > limit:
                return False
            for j in range(i + 1, min(len(data) - 1, i + self.longest) + 1):
                for token in self.ids.get(data[i:j], ()):
                    if not cut(j, prefix + [token]):
                        return False
            return True

        return out if cut(0, []) else None

    def starting_with(self, data: bytes) -> tuple[int, ...]:
        """The tokens whose bytes begin with `data` (spell it whole, or run past its end)."""
        if data not in self._starting:
            self._starting[data] = tuple(sorted(i for piece, ids in self.ids.items()
                                                if piece.startswith(data) for i in ids))
        return self._starting[data]


_ANCHORS: dict[int, int | None] = {}


def anchor_token(tokenizer: Tokenizer) -> int | None:
    """A token that decodes to one ASCII letter wherever it stands ("a", or SentencePiece's
    byte token <0x61>), to decode other tokens after it: None if the vocabulary has none."""
    key = id(tokenizer)
    if key not in _ANCHORS:
        found = None
        for letter in "abcdefghijklmnopqrstuvwxyz":
            for name in (letter, f"<0x{ord(letter):02X}>"):
                i = tokenizer.token_to_id(name)
                twice = None if i is None else tokenizer.decode([i, i], skip_special_tokens=False)
                if twice == 2 * letter:
                    found = i
                    break
            if found is not None:
                break
        _ANCHORS[key] = found
    return _ANCHORS[key]


def decode_inside(tokenizer: Tokenizer, batch: list[list[int]]) -> list[str]:
    """Each token sequence's text as it reads inside a text, not at its start: decoded after
    `anchor_token` and with the anchor's letter taken off. A SentencePiece decoder (Llama 2's,
    Mistral's) strips the leading space of a whole text, so "▁Heads" alone decodes to "Heads"
    though in a reply it is " Heads"; a byte-level one decodes the same either way."""
    anchor = anchor_token(tokenizer)
    if anchor is None:
        return tokenizer.decode_batch(batch, skip_special_tokens=False)
    return [t[1:] for t in tokenizer.decode_batch([[anchor, *ids] for ids in batch],
                                                  skip_special_tokens=False)]
