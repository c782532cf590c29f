"""Answer tries: all continuations of one prompt as a token tree, flattened in DFS pre-order.

Every variant of every answer is a token sequence that follows the same prompt. Shared
prefixes ("Ace of ...", " 1", " 10", " 100") become shared nodes, so each distinct prefix is
run through the model once. In pre-order, a node's subtree is the contiguous range
[k, k + span[k]), which is what the compact attention encoding `span_end` relies on
(see kernels/tree_attention.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Trie:
    tokens: tuple[int, ...]  # token id of each node, DFS pre-order
    parent: tuple[int, ...]  # parent node index, -1 for a child of the prompt
    depth: tuple[int, ...]  # 1 for a child of the prompt
    span: tuple[int, ...]  # size of each node's subtree, itself included
    ends: tuple[int, ...]  # ends[v] = the node where continuation v ends

    def __len__(self) -> int:
        return len(self.tokens)

    def children(self, node: int) -> list[int]:
        """Child nodes of `node` (-1: the prompt's), in order."""
        start = node + 1 if node >= 0 else 0
        stop = node + self.span[node] if node >= 0 else len(self.tokens)
        out, k = [], start
        while k < stop:
            out.append(k)
            k += self.span[k]
        return out

    def path(self, continuation: int) -> list[int]:
        """Nodes from the prompt's child down to where `continuation` ends."""
        nodes, k = [], self.ends[continuation]
        while k >= 0:
            nodes.append(k)
            k = self.parent[k]
        return nodes[::-1]


class DuplicateContinuation(ValueError):
    """Two continuations have the same token ids; `first` and `second` are their indices."""

    def __init__(self, first: int, second: int):
        super().__init__(f"continuations {first} and {second} have identical tokens")
        self.first, self.second = first, second


def build_trie(continuations: list[list[int]]) -> Trie:
    """The trie of `continuations` (each a non-empty list of token ids), children in first-seen
    order so that the layout is deterministic."""
    root: dict = {}
    owner: dict[int, int] = {}  # id(node dict) -> continuation index ending there
    for index, ids in enumerate(continuations):
        if not ids:
            raise ValueError(f"continuation {index} has no tokens")
        node = root
        for token in ids:
            node = node.setdefault(token, {})
        if id(node) in owner:
            raise DuplicateContinuation(owner[id(node)], index)
        owner[id(node)] = index

    tokens, parent, depth, span = [], [], [], []
    ends = [0] * len(continuations)

    def visit(children: dict, parent_index: int, level: int) -> None:
        for token, grandchildren in children.items():
            k = len(tokens)
            tokens.append(token)
            parent.append(parent_index)
            depth.append(level)
            span.append(0)
            if id(grandchildren) in owner:
                ends[owner[id(grandchildren)]] = k
            visit(grandchildren, k, level + 1)
            span[k] = len(tokens) - k

    visit(root, -1, 1)  # depth of a trie is at most a few dozen tokens: recursion is safe
    return Trie(tuple(tokens), tuple(parent), tuple(depth), tuple(span), tuple(ends))
