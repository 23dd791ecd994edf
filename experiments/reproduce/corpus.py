"""Real text for the reproduction: English prose and Python code that packages ship.

* **General (English prose)**: the reStructuredText sources of the Python documentation, as
  Debian ships them in ``python3.X-doc`` (``/usr/share/doc/python3.X/html/_sources``). Fetched
  with ``apt-get download`` (no root needed) and unpacked in Python (``.deb`` = ``ar`` archive
  holding ``data.tar.*``). Only prose paragraphs are kept: code blocks, directives, tables,
  headings and ``>>>`` sessions are dropped and inline markup is reduced to its text.
  Licence: the Python documentation is under the PSF License Agreement (Debian's
  ``copyright`` file for the package; https://docs.python.org/3/license.html).
* **Domain (Python code)**: the standard library's ``.py`` sources of the running interpreter
  (``sysconfig.get_paths()["stdlib"]``), without its tests, IDLE, demos, vendored packages and
  generated tables. Licence: PSF License Agreement.

Files are split, by a hash of their path, into train (90%), validation (5%) and task (5%) pools,
so held-out loss and the local tasks see documents that training never saw.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

DOC_PACKAGES = [f"python3.{minor}-doc" for minor in (13, 12, 11, 10)]
CODE_EXCLUDE = {
    "test", "tests", "idlelib", "turtledemo", "site-packages", "lib2to3", "pydoc_data",
    "encodings", "__pycache__", "ensurepip", "tkinter", "unittest", "distutils",
}  # fmt: skip


def split_of(name: str) -> str:
    """``train`` / ``val`` / ``task`` from a stable hash of ``name`` (90 / 5 / 5)."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100
    return "val" if bucket < 5 else "task" if bucket < 10 else "train"


# -- the Debian package -------------------------------------------------------------------------
def download_doc_deb(directory: Path) -> Path:
    """The newest ``python3.X-doc`` .deb in ``directory``, fetched with ``apt-get download``."""
    directory.mkdir(parents=True, exist_ok=True)
    found = sorted(directory.glob("python3.*-doc_*.deb"))
    if found:
        return found[-1]
    errors = []
    for package in DOC_PACKAGES:
        proc = subprocess.run(
            ["apt-get", "download", package], cwd=directory, capture_output=True, text=True
        )
        found = sorted(directory.glob(f"{package}_*.deb"))
        if proc.returncode == 0 and found:
            return found[-1]
        errors.append(f"{package}: {proc.stderr.strip().splitlines()[-1:]}")
    raise SystemExit(
        "could not download the Python documentation package with apt-get "
        f"({'; '.join(errors)}). On a non-Debian machine, fetch python3.11-doc_*.deb from "
        f"https://packages.debian.org/bookworm/python3.11-doc and put it in {directory}."
    )


def _deb_members(deb: Path) -> tarfile.TarFile:
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise SystemExit(f"{deb} is not a Debian package (no ar header)")
    offset = 8
    while offset < len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[offset + 60 : offset + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        offset += 60 + size + (size % 2)
    raise SystemExit(f"{deb} holds no data.tar member")


_ROLE = re.compile(r":[\w:.+-]+:`(?:[^`<]*<)?([^`>]+)>?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_+")
_LITERAL = re.compile(r"``([^`]+)``")
_EMPH = re.compile(r"\*\*?([^*]+)\*\*?")
_REF = re.compile(r"`([^`]+)`_*")


_LITERAL_DIRECTIVES = (
    "code-block", "code", "sourcecode", "doctest", "testcode", "testoutput", "testsetup",
    "productionlist", "literalinclude", "csv-table", "list-table", "table", "highlight",
    "raw", "toctree", "image", "figure", "include", "index", "only", "moduleauthor",
)  # fmt: skip
_DIRECTIVE = re.compile(r"\.\.\s+([\w:-]+)::")


def _clean(para: str) -> str:
    para = _ROLE.sub(r"\1", para)
    para = _LINK.sub(r"\1", para)
    para = _LITERAL.sub(r"\1", para)
    para = _EMPH.sub(r"\1", para)
    para = _REF.sub(r"\1", para)
    return re.sub(r"::$", ":", para).replace("\\", "")


def rst_prose(text: str) -> str:
    """The prose paragraphs of a reStructuredText file, inline markup reduced to its text.

    Kept: paragraphs, list items and the bodies of descriptive directives (``function``,
    ``note``, ...). Dropped: literal blocks (after ``::``) and code/table directives, directive
    lines and options, headings, ``>>>`` sessions, and paragraphs with fewer than 8 words or
    less than 80% letters and spaces.
    """
    blocks, block = [], []
    for line in text.splitlines() + [""]:
        if line.strip():
            block.append(line.rstrip())
        elif block:
            blocks.append(block)
            block = []
    kept = []
    literal_indent = None
    for lines in blocks:
        indent = len(lines[0]) - len(lines[0].lstrip())
        if literal_indent is not None:
            if indent > literal_indent:
                continue
            literal_indent = None
        first = lines[0].strip()
        directive = _DIRECTIVE.match(first)
        if directive:
            if directive.group(1) in _LITERAL_DIRECTIVES:
                literal_indent = indent
                continue
            lines = [x for x in lines[1:] if not x.strip().startswith(":")]
            if not lines:
                continue
            first = lines[0].strip()
        if lines[-1].rstrip().endswith("::"):
            literal_indent = indent
        if first.startswith(("..", ">>>", "...", ":", "|", "=", "+", "#", "$", "%")):
            continue
        if len(lines) > 1 and re.fullmatch(r"[=\-~^\"'`#*+]{3,}", lines[1].strip()):
            continue  # a heading
        para = " ".join(x.strip() for x in lines)
        para = re.sub(r"^(?:[*-]|\d+\.|#\.)\s+", "", para)
        para = _clean(para)
        letters = sum(c.isalpha() or c.isspace() for c in para)
        if len(para.split()) >= 8 and letters >= 0.8 * len(para):
            kept.append(para)
    return "\n\n".join(kept)


def prose_documents(deb: Path) -> tuple[dict[str, str], str]:
    """``{source path: prose}`` of every ``.rst.txt`` in the package, and its version."""
    tar = _deb_members(deb)
    docs = {}
    for member in tar.getmembers():
        if member.isfile() and "/_sources/" in member.name and member.name.endswith(".rst.txt"):
            raw = tar.extractfile(member).read().decode("utf-8", "replace")
            prose = rst_prose(raw)
            if len(prose) >= 200:
                docs[member.name.split("/_sources/", 1)[1]] = prose
    return docs, deb.name


def code_documents(max_file_chars: int = 150_000) -> tuple[dict[str, str], str]:
    """``{relative path: source}`` of the running interpreter's standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if CODE_EXCLUDE & set(rel.parts[:-1]) or rel.name.startswith(("_pydecimal", "_pydatetime")):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if 500 <= len(text) <= max_file_chars:
            docs[str(rel)] = text
    return docs, f"CPython {sys.version.split()[0]} stdlib ({root})"


def write_corpora(out: Path, downloads: Path) -> dict:
    """Write ``{general,code}_{train,val,task}.jsonl`` and ``corpus.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    deb = download_doc_deb(downloads)
    for kind, (docs, source) in (
        ("general", prose_documents(deb)),
        ("code", code_documents()),
    ):
        split = {"train": [], "val": [], "task": []}
        for name, text in sorted(docs.items()):
            split[split_of(name)].append({"name": name, "text": text})
        for part, rows in split.items():
            with (out / f"{kind}_{part}.jsonl").open("w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        summary[kind] = {
            "source": source,
            "licence": "PSF License Agreement",
            **{f"{part}_files": len(rows) for part, rows in split.items()},
            **{f"{part}_chars": sum(len(r["text"]) for r in rows) for part, rows in split.items()},
        }
    (out / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
