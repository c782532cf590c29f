"""A RunSpec resolved against one checkpoint: its mode, label, chat template and packing, and the
run key that identifies its results, decided once (`resolve`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from answerdist.engine.model.checkpoint import check_metadata_files, resolve_device
from answerdist.engine.scoring.scorer import packs_sequences, reply_end, stop_tokens
from answerdist.engine.settings import RunSpec, label_problem, shown
from answerdist.engine.text.chat import ChatTemplate, chat_template_for, load_chat_template
from answerdist.errors import OutputError
from answerdist.version import __version__


@dataclass(frozen=True)
class Resolved:
    """A RunSpec resolved against one checkpoint: what the run does, decided once."""

    spec: RunSpec
    mode: str  # "chat" or "base"
    label: str
    chat: ChatTemplate | None  # what chat mode renders prompts with; None in base mode
    packs: bool  # whether prompts share forward passes (scoring.scorer.packs_sequences)
    own_special_source: str  # the checkpoint's tokenizer_config.json, which its fingerprint covers
    # The tokens at which generation stops (scoring.scorer.stop_tokens), where a task without
    # end_tokens ends at the turn or the line; else None.
    stop_tokens: tuple[int, ...] | None = None

    def key(self, fingerprint: str) -> dict:
        """What identifies the results (the `run` of the manifest and of each task): a rerun with
        an equal key skips finished tasks; a different one never mixes with them silently."""
        spec, chat = self.spec, self.chat
        key = {
            "fingerprint": fingerprint,
            "dtype": spec.dtype,
            "mode": self.mode,
            "chat_template": chat.text if chat is not None else None,
            # Qwen 3's hybrid-reasoning switch: thinking off unless the template says otherwise.
            "enable_thinking": (chat.enable_thinking
                                if chat is not None and chat.uses_thinking_switch else None),
            "tokenizations": (spec.tokenizations if spec.tokenizations == "canonical"
                              else f"all<={spec.max_tokenizations}"),
            "engine_version": __version__,
            "batch_invariant": not self.packs,
            # Packed results depend on how prompts share rows; invariant ones do not.
            "batch_tokens": spec.batch_tokens if self.packs else None,
        }
        # tensor parallelism sums in another order: within rounding, not bit for bit
        if spec.tp > 1:
            key["tp"] = spec.tp
        if spec.end is not None:
            key["end"] = spec.end
        if spec.end_tokens is not None:
            key["end_tokens"] = list(spec.end_tokens)
        if self.stop_tokens is not None and len(self.stop_tokens) > 1:
            # Where generation stops at several tokens, turn and line sum over them.
            key["stop_tokens"] = list(self.stop_tokens)
        if spec.discover is not None or spec.answers_from is not None:
            key["discovery"] = {"replies": spec.discover, "temperature": spec.temperature,
                                "top_p": spec.top_p, "max_new_tokens": spec.max_new_tokens,
                                "seed": spec.seed,
                                "answers_from": (list(spec.answers_from)
                                                 if spec.answers_from is not None else None)}
        if self.template_date is not None:
            key["template_date"] = self.template_date
        if chat is not None and chat.special_source != self.own_special_source:
            # A borrowed template's special tokens: the fingerprint covers only the checkpoint's.
            key["template_special_tokens"] = chat.special_tokens
        return key

    @property
    def template_date(self) -> str | None:
        """The date the prompts hold, where the template renders one."""
        return self.spec.template_date if self.chat is not None and self.chat.uses_date else None


def resolve(spec: RunSpec, checkpoint) -> Resolved:
    """Decide mode, label, chat template and packing of `spec` for one checkpoint.

    `checkpoint` is a loaded `answerdist.Checkpoint` or the `Metadata` that
    `answerdist.engine.run.sweep` reads without the weights: its path names the default label, and
    its chat template (or the one `spec.chat_template` borrows) decides what auto mode means."""
    own_special_source = str(checkpoint.path / "tokenizer_config.json")
    borrowed = None
    if spec.chat_template:
        if Path(spec.chat_template).is_dir():  # a donor checkpoint's files: its own, and small,
            check_metadata_files(Path(spec.chat_template))  # as the scored checkpoint's are
        borrowed = load_chat_template(spec.chat_template, checkpoint.special_tokens,
                                      own_special_source)
    mode = spec.mode
    if mode == "auto":
        mode = "chat" if borrowed is not None or checkpoint.chat_template is not None else "base"
    chat = (chat_template_for(borrowed, checkpoint.chat_template, checkpoint.path)
            .for_run(spec.template_date, spec.template_timeout, spec.template_max_chars,
                     spec.template_max_bytes)
            if mode == "chat" else None)
    label = spec.label or checkpoint.path.resolve().name
    if label_problem(label):
        raise OutputError(f"{checkpoint.path}: its directory name {shown(label)} cannot be a "
                          "label; pass a label")
    packs = packs_sequences(resolve_device(spec.device), spec.batch_invariant)
    stops = (stop_tokens(checkpoint, reply_end(checkpoint, mode, chat))
             if any(t.end in ("turn", "line") and not t.end_tokens for t in spec.tasks) else None)
    return Resolved(spec, mode, label, chat, packs, own_special_source, stops)
