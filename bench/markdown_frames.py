"""Benchmark 8: Markdown rendering CPU per stream frame, whole re-render vs incremental.

In this process, no stack: a reply with a realistic Markdown mix (headings,
paragraphs with line breaks, nested lists, Python code blocks, a table) is
streamed in frames of 3 tokens, as ``StreamPublisher``'s coalescing sends
them (a token is a word with its leading whitespace). For replies of 200 to
4,000 tokens, the CPU time (``time.process_time``) one frame spends on
Markdown near the end of the reply (the mean of its last ``WINDOW`` frames):

- old: ``render_markdown`` of the whole text so far, every frame (what each
  frame did before ``MarkdownStream``);
- new: ``MarkdownStream.feed`` + ``render`` (the newly finished blocks once,
  the tail again); the keyframe's joined HTML is bytes, not rendering.

Baseline, same run: ``render_markdown`` of the whole 200-token reply, once.
The whole reply's render CPU is shown too (old: every 10th frame timed, times
10). Frames are timed, not asserted: the check is a target in the table.

    uv run python bench/markdown_frames.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import Result, table  # noqa: E402

SIZES = (200, 500, 1000, 2000, 4000)
QUICK_SIZES = (60, 120)
TOKENS_PER_FRAME = 3
WINDOW = 50  # frames timed at the end of each reply (150 tokens, about one section)
REPEAT = 3  # each figure is the median of this many runs

SECTION = (
    "## Step {i}: what to check\n\n"
    "Before anything else, look at the **inputs** of step {i} and make sure each one\n"
    "is what the previous step produced; a `None` here means it failed quietly.\n\n"
    "- read the configuration with `load_config()` and keep the result\n"
    "- compare the totals:\n"
    "  - the sum of the rows\n"
    "  - the total the report states\n"
    "- write down anything that differs, with its row number\n\n"
    "```python\n"
    "def check_step_{i}(rows, stated):\n"
    "    total = sum(row.price * row.count for row in rows)\n"
    "    if abs(total - stated) > 0.01:\n"
    '        raise ValueError(f"step {i}: {{total}} != {{stated}}")\n'
    "    return total\n"
    "```\n\n"
    "| item | count | price |\n"
    "|------|------:|------:|\n"
    "| apples | 3 | 1.20 |\n"
    "| pears | 5 | 0.80 |\n"
    "| plums | 12 | 0.25 |\n\n"
    "If the table above matches your figures, step {i} is done and the next one\n"
    "can start from its output.\n\n"
)


def reply_tokens(tokens: int) -> list[str]:
    """The first ``tokens`` tokens of the reply (sections repeated, numbered)."""
    out: list[str] = []
    i = 1
    while len(out) < tokens:
        out += re.findall(r"\s*\S+", SECTION.format(i=i))
        i += 1
    return out[:tokens]


def frames_of(tokens: list[str]) -> list[str]:
    """The reply's frames: the text each one adds (``TOKENS_PER_FRAME`` tokens)."""
    return [
        "".join(tokens[i : i + TOKENS_PER_FRAME]) for i in range(0, len(tokens), TOKENS_PER_FRAME)
    ]


def cpu_ms(work: Callable[[], object]) -> float:
    started = time.process_time_ns()
    work()
    return (time.process_time_ns() - started) / 1e6


def old_way(frames: list[str], *, window: int) -> tuple[float, float]:
    """(mean ms per frame over the last ``window`` frames, whole reply ms estimated
    from every 10th frame) when every frame re-renders the whole text."""
    from conversations.rendering import render_markdown

    texts = []
    text = ""
    for delta in frames:
        text += delta
        texts.append(text)
    last = [cpu_ms(lambda t=t: render_markdown(t)) for t in texts[-window:]]
    sampled = [cpu_ms(lambda t=t: render_markdown(t)) for t in texts[::10]]
    return statistics.mean(last), statistics.mean(sampled) * len(texts)


def new_way(frames: list[str], *, window: int) -> tuple[float, float]:
    """(mean ms per frame over the last ``window`` frames, whole reply ms) with
    ``MarkdownStream``."""
    from conversations.rendering import MarkdownStream, render_markdown

    stream = MarkdownStream()
    times = []
    tail = ""

    def frame(delta: str) -> None:
        nonlocal tail
        stream.feed(delta)
        tail = stream.render().tail

    for delta in frames:
        times.append(cpu_ms(lambda d=delta: frame(d)))
    # Not timed: the pieces are what a whole render makes of the reply.
    if stream.finished_html + tail != render_markdown("".join(frames)):
        raise AssertionError("MarkdownStream's pieces differ from the whole render")
    return statistics.mean(times[-window:]), sum(times)


def measure_sizes(sizes: tuple[int, ...], *, window: int, repeat: int) -> Result:
    from conversations.rendering import render_markdown

    base_text = "".join(reply_tokens(200))
    render_markdown(base_text)  # warm-up: imports, Pygments lexers
    gc.collect()
    baseline = statistics.median(cpu_ms(lambda: render_markdown(base_text)) for _ in range(50))
    rows = [["200 tokens rendered whole, once (baseline)", f"{baseline:.2f}", "", "1.0x", "", ""]]
    per_frame: dict[int, tuple[float, float]] = {}
    totals = []
    for size in sizes:
        frames = frames_of(reply_tokens(size))
        span = min(window, len(frames))
        olds, news, old_totals, new_totals = [], [], [], []
        for _ in range(repeat):
            gc.collect()
            old, old_total = old_way(frames, window=span)
            gc.collect()
            new, new_total = new_way(frames, window=span)
            olds.append(old)
            news.append(new)
            old_totals.append(old_total)
            new_totals.append(new_total)
        old, new = statistics.median(olds), statistics.median(news)
        per_frame[size] = (old, new)
        totals.append((size, statistics.median(old_totals), statistics.median(new_totals)))
        rows.append(
            [
                f"{size:,} tokens ({len(frames)} frames)",
                f"{old:.2f}",
                f"{new:.3f}",
                f"{old / baseline:.1f}x",
                f"{new / baseline:.2f}x",
                f"{old / new:.0f}x",
            ]
        )
    first, last = per_frame[sizes[0]], per_frame[sizes[-1]]
    old_growth, new_growth = last[0] / first[0], last[1] / first[1]
    length_growth = sizes[-1] / sizes[0]
    whole = "; ".join(
        f"{size:,} tokens {old_total:.0f} → {new_total:.0f} ms"
        for size, old_total, new_total in totals
    )
    return Result(
        key="markdown",
        title=f"8. Markdown rendering per stream frame ({TOKENS_PER_FRAME} tokens a frame)",
        table=table(
            [
                "reply length (frames timed: the last " + str(window) + ")",
                "old ms/frame",
                "new ms/frame",
                "old / baseline",
                "new / baseline",
                "old / new",
            ],
            rows,
        ),
        notes=[
            "CPU time in this process (time.process_time), the median of "
            f"{repeat} runs; each figure is the mean over the last {window} frames of a "
            "reply of that length. Old: render_markdown of the whole text so far, every "
            "frame. New: MarkdownStream.feed + render (finished blocks rendered once, the "
            "unfinished tail again). Neither includes the template or the send.",
            "The reply cycles through sections of about 150 tokens: a heading, a paragraph "
            "with line breaks, a nested list, a Python code block (highlighted), a table and "
            "a closing paragraph; the new frame's cost follows its tail (at most one such "
            "block), not the reply. A reply that is one long block (a huge code fence, a long "
            "list) keeps a tail that long.",
            f"Whole reply, every frame (old: every 10th frame timed, times 10): {whole}.",
        ],
        checks=[
            (
                "new per-frame cost flat as the reply grows",
                f"{new_growth:.2f}x from {sizes[0]:,} to {sizes[-1]:,} tokens "
                f"(old {old_growth:.1f}x; the reply grew {length_growth:.0f}x)",
                new_growth < 2,
            )
        ],
    )


def measure(env: object = None, *, quick: bool = False) -> Result:
    """Run by ``bench/run_all.py`` (the stack in ``env`` is not used)."""
    if quick:
        return measure_sizes(QUICK_SIZES, window=5, repeat=1)
    return measure_sizes(SIZES, window=WINDOW, repeat=REPEAT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny replies (a smoke run)")
    args = parser.parse_args(argv)
    print(measure(quick=args.quick).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
