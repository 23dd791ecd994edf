"""Build small local lm-evaluation-harness tasks from any text (no download, deterministic).

Four kinds, each written as ``<name>.jsonl`` (the documents) plus ``<name>.yaml`` (an lm-eval task
config that loads them with :func:`blockexp.evaluation.lmeval.tasks.load_jsonl`):

* ``cloze`` -- LAMBADA-style last-word prediction. Each document is a passage of one to three
  sentences whose final word is the target; the YAML is ``lambada_openai``'s (``doc_to_text``
  drops the last space-separated word, ``doc_to_target`` is ``" " + last word``; metrics
  ``acc`` = the target is the greedy continuation, and ``perplexity``).
* ``choice`` -- HellaSwag-style multiple choice: the first half of a sentence (after the
  sentence before it) and four endings, the true one and the second halves of three other
  sentences; metrics ``acc_norm`` (per-character normalised log-likelihood) and ``acc``.
* ``complete`` -- generative: a passage whose last sentence lacks its final words; the model
  greedily generates until ``.`` or a newline; scored by edit similarity and exact match
  (:func:`blockexp.evaluation.lmeval.tasks.process_completion`).
* ``code_line`` -- generative next-line code completion: up to ``context_lines`` lines of a
  source file (ending where the last line ends), then the next (non-trivial) line; the model
  generates up to 40 tokens and the line after its first newline is scored
  (:func:`blockexp.evaluation.lmeval.tasks.process_next_line`), with the same two scores.

Each YAML lists its headline metric first (the metric a table stars and ``mean`` averages
when no preset names one; see :mod:`blockexp.evaluation.lmeval.scores`). Every builder samples
with ``random.Random(seed)`` so the same text gives the same task.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from blockexp.io.outputs import atomic_write

__all__ = [
    "KINDS",
    "split_sentences",
    "cloze_docs",
    "choice_docs",
    "complete_docs",
    "code_line_docs",
    "write_task",
    "build_tasks",
]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]")


def split_sentences(text: str) -> list[str]:
    """Sentences of a prose document (whitespace collapsed; split after ``.``, ``!``, ``?``)."""
    text = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(text) if s]


def _from_sentences(texts: Iterable[str], make: Callable[[list[str], int, str], Any]) -> list:
    """``make(sentences of its document, index, sentence)`` for every sentence of every text, in
    order, keeping what is not ``None``."""
    out = []
    for sentences in (split_sentences(t) for t in texts):
        for i, sentence in enumerate(sentences):
            item = make(sentences, i, sentence)
            if item is not None:
                out.append(item)
    return out


def cloze_docs(
    texts: Iterable[str], n: int, seed: int = 0, min_words: int = 12, max_words: int = 80
) -> list[dict[str, Any]]:
    """LAMBADA-style passages ``{"text": ...}`` whose last space-separated token is a word."""
    rng = random.Random(seed)

    def passage(sentences: list[str], end: int, last: str) -> dict[str, Any] | None:
        body = last[:-1]
        final = body.rsplit(" ", 1)[-1]
        if not last.endswith(".") or not _WORD.fullmatch(final) or len(final) < 3:
            return None
        start = max(0, end - rng.randint(0, 2))
        text = " ".join(sentences[start:end] + [body])
        return {"text": text} if min_words <= len(text.split(" ")) <= max_words else None

    return _sample(_from_sentences(texts, passage), n, rng, "cloze")


def choice_docs(
    texts: Iterable[str], n: int, seed: int = 0, num_choices: int = 4, min_words: int = 8
) -> list[dict[str, Any]]:
    """HellaSwag-style ``{"ctx", "endings", "label"}``: the true ending among ``num_choices``."""
    rng = random.Random(seed)

    def split(sentences: list[str], i: int, sentence: str) -> tuple[str, str] | None:
        words = sentence.split(" ")
        if len(words) < min_words:
            return None
        cut = len(words) // 2
        before = sentences[i - 1] + " " if i > 0 else ""
        return before + " ".join(words[:cut]), " ".join(words[cut:])

    pool = _from_sentences(texts, split)
    if len(pool) < num_choices:
        raise ValueError(f"choice: need at least {num_choices} usable sentences, got {len(pool)}")
    endings_pool = [ending for _, ending in pool]
    distinct = len(set(endings_pool))
    if distinct < num_choices:
        raise ValueError(
            f"choice: need at least {num_choices} different endings to draw distractors from, "
            f"got {distinct} (the text repeats itself); give more varied text."
        )
    docs = []
    for ctx, ending in pool:
        others = set()
        while len(others) < num_choices - 1:
            other = rng.choice(endings_pool)
            if other != ending:
                others.add(other)
        endings = [ending, *sorted(others)]
        rng.shuffle(endings)
        docs.append({"ctx": ctx, "endings": endings, "label": endings.index(ending)})
    return _sample(docs, n, rng, "choice")


def complete_docs(
    texts: Iterable[str], n: int, seed: int = 0, target_words: int = 2, min_words: int = 8
) -> list[dict[str, Any]]:
    """``{"context", "target"}``: a passage missing the last ``target_words`` words of its last
    sentence (the target, without the final period)."""

    def cut(sentences: list[str], i: int, sentence: str) -> dict[str, str] | None:
        words = sentence[:-1].split(" ")
        if not sentence.endswith(".") or len(words) < min_words:
            return None
        if not all(_WORD.fullmatch(w) for w in words[-target_words:]):
            return None
        before = sentences[i - 1] + " " if i > 0 else ""
        context = before + " ".join(words[:-target_words])
        return {"context": context, "target": " ".join(words[-target_words:])}

    return _sample(_from_sentences(texts, cut), n, random.Random(seed), "complete")


def code_line_docs(
    files: Sequence[str],
    n: int,
    seed: int = 0,
    context_lines: int = 20,
    max_context_chars: int = 1500,
    min_target_chars: int = 8,
) -> list[dict[str, Any]]:
    """``{"context", "target"}``: source lines, then the next line (its indentation included).

    Targets are lines with at least ``min_target_chars`` non-blank characters that are not
    comments; the context holds up to ``context_lines`` lines (cut to the last
    ``max_context_chars`` characters at a line boundary) and ends *before* the newline, so the
    model writes the newline with the target's indentation as its tokenizer joins them (a
    context ending in a bare newline would split a token, e.g. BPE's "\\n" + spaces).
    """
    rng = random.Random(seed)
    candidates = []
    for source in files:
        lines = source.splitlines()
        for i in range(1, len(lines)):
            stripped = lines[i].strip()
            if len(stripped) < min_target_chars or stripped.startswith("#"):
                continue
            context = lines[max(0, i - context_lines) : i]
            while context and sum(len(x) + 1 for x in context) > max_context_chars:
                context = context[1:]
            if not context:
                continue
            candidates.append({"context": "\n".join(context), "target": lines[i].rstrip()})
    return _sample(candidates, n, rng, "code_line")


def _sample(candidates: list[dict], n: int, rng: random.Random, kind: str) -> list[dict]:
    if not candidates:
        raise ValueError(f"{kind}: the text holds no usable documents")
    if len(candidates) <= n:
        return candidates
    return rng.sample(candidates, n)


_HEADER = (
    "# lm-evaluation-harness task written by blockexp.evaluation.lmeval.build ({kind}); documents in {data}\n"
    "task: {name}\n"
    "{tag}"
    "custom_dataset: !function blockexp.evaluation.lmeval.tasks.load_jsonl\n"
    "dataset_kwargs:\n"
    "  data_file: {data}\n"
    "test_split: test\n"
)

#: The metrics of the generation tasks: edit similarity (the headline, listed first) and exact
#: match, averaged.
_EDIT_SIM_AND_EXACT = (
    "metric_list:\n"
    "  - metric: edit_sim\n"
    "    aggregation: mean\n"
    "    higher_is_better: true\n"
    "  - metric: exact_match\n"
    "    aggregation: mean\n"
    "    higher_is_better: true\n"
)

_BODY = {
    "cloze": (
        "output_type: loglikelihood\n"
        "doc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\n"
        "doc_to_target: \"{{' '+text.split(' ')[-1]}}\"\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "  - metric: perplexity\n"
        "    aggregation: perplexity\n"
        "    higher_is_better: false\n"
    ),
    "choice": (
        "output_type: multiple_choice\n"
        'doc_to_text: "{{ctx}}"\n'
        'doc_to_target: "{{label}}"\n'
        'doc_to_choice: "{{endings}}"\n'
        "metric_list:\n"
        "  - metric: acc_norm\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    ),
    "complete": (
        "output_type: generate_until\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_target: "{{target}}"\n'
        'target_delimiter: " "\n'
        "generation_kwargs:\n"
        '  until: [".", "\\n"]\n'
        "  max_gen_toks: 16\n"
        "  do_sample: false\n"
        "process_results: !function blockexp.evaluation.lmeval.tasks.process_completion\n"
        + _EDIT_SIM_AND_EXACT
    ),
    "code_line": (
        "output_type: generate_until\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_target: "{{target}}"\n'
        'target_delimiter: "\\n"\n'
        "generation_kwargs:\n"
        "  max_gen_toks: 40\n"
        "  do_sample: false\n"
        "process_results: !function blockexp.evaluation.lmeval.tasks.process_next_line\n"
        + _EDIT_SIM_AND_EXACT
    ),
}

#: The task kinds :func:`write_task` knows.
KINDS = tuple(_BODY)


def write_task(
    directory: str | Path,
    name: str,
    kind: str,
    docs: Sequence[dict[str, Any]],
    *,
    tags: Sequence[str] = (),
    relative: bool = False,
) -> Path:
    """Write ``<name>.jsonl`` and ``<name>.yaml`` into ``directory`` (atomically); returns the
    YAML path. ``relative=True`` records the JSONL by file name (only for the shipped tasks
    directory, which :func:`~blockexp.evaluation.lmeval.tasks.load_jsonl` resolves names against)."""
    if kind not in _BODY:
        raise ValueError(f"unknown task kind {kind!r}; choose from {list(KINDS)}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"task name {name!r}: use letters, digits and underscores only")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    atomic_write(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    tag = "tag:\n" + "".join(f"  - {t}\n" for t in tags) if tags else ""
    header = _HEADER.format(
        kind=kind, name=name, tag=tag, data=data.name if relative else json.dumps(str(data))
    )
    yaml_path = directory / f"{name}.yaml"
    atomic_write(yaml_path, header + _BODY[kind] + "metadata:\n  version: 1.0\n")
    return yaml_path


def build_tasks(
    directory: str | Path,
    prose: Sequence[str],
    *,
    prefix: str,
    n: int = 200,
    seed: int = 0,
    code: Sequence[str] | None = None,
    relative: bool = False,
) -> list[str]:
    """The three general tasks (``<prefix>_cloze``, ``_choice``, ``_complete``, tagged
    ``<prefix>_general``) from ``prose``, plus ``<prefix>_code_line`` from ``code`` when given.
    Returns the task names."""
    names = []
    tag = [f"{prefix}_general"]
    for kind, docs in (
        ("cloze", cloze_docs(prose, n, seed)),
        ("choice", choice_docs(prose, n, seed)),
        ("complete", complete_docs(prose, n, seed)),
    ):
        write_task(directory, f"{prefix}_{kind}", kind, docs, tags=tag, relative=relative)
        names.append(f"{prefix}_{kind}")
    if code is not None:
        write_task(
            directory,
            f"{prefix}_code_line",
            "code_line",
            code_line_docs(code, n, seed),
            relative=relative,
        )
        names.append(f"{prefix}_code_line")
    return names
