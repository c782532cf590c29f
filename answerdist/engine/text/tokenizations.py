"""Every tokenization of a text: the token sequences whose bytes spell it.

A tokenizer maps " 10" to one canonical token sequence, but a model also puts probability on the
others that decode to the same text ([" 1", "0"], [" ", "10"], ...). With `--tokenizations all`
the scorer enters all of them into the answer trie, so that P(variant) is the probability of
the variant's *text*. Byte-level BPE vocabularies (Llama 3, OLMo 2/3, Qwen: every supported
family) give each token a fixed byte string, so the tokenizations of a text are exactly the
ways to cut its UTF-8 bytes into vocabulary pieces; special tokens are never pieces of text.
"""

from __future__ import annotations

import json
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


def _is_byte_level(tokenizer: Tokenizer) -> bool:
    decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(p.get("type") == "ByteLevel" for p in parts)


class TokenPieces:
    """The byte string of every non-special token of a byte-level BPE vocabulary."""

    def __init__(self, tokenizer: Tokenizer, source: str):
        if not _is_byte_level(tokenizer):
            raise TokenizerError(f"{source}: --tokenizations all needs a byte-level BPE tokenizer "
                                 "(its tokens must spell fixed bytes); score with "
                                 "--tokenizations canonical")
        alphabet = _byte_decoder()
        added = tokenizer.get_added_tokens_decoder()
        self.ids: dict[bytes, int] = {}
        for token, i in tokenizer.get_vocab(with_added_tokens=True).items():
            if i in added:
                if added[i].special:
                    continue
                piece = added[i].content.encode("utf-8")
            elif all(c in alphabet for c in token):
                piece = bytes(alphabet[c] for c in token)
            else:
                raise TokenizerError(f"{source}: token {token!r} (id {i}) is not in the byte-level "
                                     "alphabet, so its bytes are unknown; score with "
                                     "--tokenizations canonical")
            self.ids.setdefault(piece, i)
        self.longest = max(map(len, self.ids), default=0)

    def count(self, data: bytes, limit: int) -> int:
        """How many tokenizations `data` has, counting no further than limit + 1."""
        ways = [0] * (len(data) + 1)
        ways[len(data)] = 1
        for i in range(len(data) - 1, -1, -1):
            total = sum(ways[j] for j in range(i + 1, min(len(data), i + self.longest) + 1)
                        if data[i:j] in self.ids)
            ways[i] = min(total, limit + 1)
        return ways[0]

    def tokenizations(self, text: str, limit: int) -> list[list[int]] | None:
        """All token sequences spelling `text` (None when there are more than `limit`), in a
        fixed order: shorter first pieces first."""
        data = text.encode("utf-8")
        if self.count(data, limit) > limit:
            return None
        out: list[list[int]] = []

        def cut(i: int, prefix: list[int]) -> None:
            if i == len(data):
                out.append(prefix)
                return
            for j in range(i + 1, min(len(data), i + self.longest) + 1):
                token = self.ids.get(data[i:j])
                if token is not None:
                    cut(j, prefix + [token])

        cut(0, [])
        return out
