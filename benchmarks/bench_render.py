"""What the chat template's render box costs, beside rendering in this process.

    python -m benchmarks.bench_render [--prompts 2000] [--repeats 5]

A run renders its prompts in one child process under RLIMIT_AS (answerdist/engine/text/chat.py,
`_RenderBox`): a template that allocates without bound cannot take the machine's memory. This
measures, side by side in one process, alternating: the box's start (a fresh child, up to its
first rendered prompt), and the median time per prompt rendered through the box and in this
process, for the Tulu template and a ChatML template with a default system message (OLMo 3's
shape), over the prompts of the shipped suite.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date

from answerdist.engine.tasks import load_tasks
from answerdist.engine.text.chat import ChatTemplate
from answerdist.lab.corpus import TULU_TEMPLATE
from tests.tiny import OLMO3_CHAT_TEMPLATE

SPECIAL = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}


def conversations(n: int) -> list[list[dict]]:
    texts = [p.text for t in load_tasks("all") for p in t.prompts]
    return [[{"role": "user", "content": texts[i % len(texts)]}] for i in range(n)]


def timed(template: ChatTemplate, chats) -> float:
    start = time.perf_counter()
    for messages in chats:
        template.render(messages, add_generation_prompt=True)
    return (time.perf_counter() - start) / len(chats)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    chats = conversations(args.prompts)
    today = date.today().isoformat()
    print(f"{'template':<8}{'box start ms':>14}{'box us/prompt':>15}{'here us/prompt':>16}"
          f"{'ratio':>8}")
    for name, text in (("tulu", TULU_TEMPLATE), ("olmo3", OLMO3_CHAT_TEMPLATE)):
        base = ChatTemplate(name, text, SPECIAL)
        starts, boxed, here = [], [], []
        for _ in range(args.repeats):
            box = base.for_run(today)
            start = time.perf_counter()
            box.render(chats[0], add_generation_prompt=True)
            starts.append(time.perf_counter() - start)
            boxed.append(timed(box, chats))
            here.append(timed(base.for_run(today, max_bytes=None), chats))
        b, h = statistics.median(boxed), statistics.median(here)
        print(f"{name:<8}{1e3 * statistics.median(starts):>14.1f}{1e6 * b:>15.1f}"
              f"{1e6 * h:>16.1f}{b / h:>8.2f}x")


if __name__ == "__main__":
    main()
