"""Load model directories with the transformers of *this* interpreter and record what they give.

    <venv>/bin/python scripts/compat_load.py JOB.json RESULT.pt

Run by the python of a ``scripts/compat_env.py`` environment (transformers 4.x) for
``tests/test_portable.py``; it imports only torch and transformers, never blockexp. ``JOB.json``::

    {"ids": [[...]], "text": "...", "messages": [{"role": ..., "content": ...}],
     "dirs": {"name": "/path/to/model/dir", ...}}

``RESULT.pt`` (``torch.save``) holds ``{"transformers": version, "results": {name: {...}}}`` with,
per directory, ``logits`` (float32), ``dtype`` (as loaded with ``torch_dtype="auto"``),
``ids`` (the tokenized ``text``), ``decoded``, ``chat`` (the rendered chat template, or None),
``tokenizer_class``, ``rope_theta`` and ``rope_scaling`` as 4.x reads them, or ``error``
(the exception, as text) where loading failed.
"""

from __future__ import annotations

import json
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def load(path: str, ids: torch.Tensor, text: str, messages: list[dict]) -> dict:
    out: dict = {}
    try:
        config = AutoConfig.from_pretrained(path)
        out["rope_theta"] = getattr(config, "rope_theta", None)
        out["rope_scaling"] = getattr(config, "rope_scaling", None)
        model = AutoModelForCausalLM.from_pretrained(
            path, torch_dtype="auto", attn_implementation="eager"
        ).eval()
        out["dtype"] = str(model.dtype)
        with torch.no_grad():
            out["logits"] = model(input_ids=ids).logits.float()
        tokenizer = AutoTokenizer.from_pretrained(path)
        out["tokenizer_class"] = type(tokenizer).__name__
        out["ids"] = tokenizer(text)["input_ids"]
        out["decoded"] = tokenizer.decode(out["ids"])
        out["chat"] = (
            tokenizer.apply_chat_template(messages, tokenize=False)
            if getattr(tokenizer, "chat_template", None)
            else None
        )
    except Exception as err:  # recorded for the test to judge (e.g. the unportable control)
        out["error"] = f"{type(err).__name__}: {err}"
    return out


def main(argv: list[str]) -> None:
    job_path, result_path = argv
    job = json.loads(open(job_path).read())
    ids = torch.tensor(job["ids"])
    results = {
        name: load(path, ids, job["text"], job.get("messages", []))
        for name, path in job["dirs"].items()
    }
    torch.save({"transformers": transformers.__version__, "results": results}, result_path)


if __name__ == "__main__":
    main(sys.argv[1:])
