"""Create (or reuse) an isolated virtual environment with an older transformers, for the
cross-version load tests (``tests/test_portable.py -m slow``).

    python scripts/compat_env.py [--transformers 4.45.2] [--root outputs/compat_envs]

Prints the path of the environment's python on the last line of stdout. The environment is made
with ``python -m venv --system-site-packages``: torch (and numpy, safetensors, ...) come from this
interpreter's site-packages, while ``transformers`` and the ``tokenizers`` / ``huggingface_hub``
releases it pins are installed *inside the venv* (they shadow the system ones there; nothing is
installed into, upgraded in or removed from the system site-packages). The environment is
reused when it already has the requested release; a half-made one (no ``.ready`` marker) is
rebuilt. Installing needs the package index; this script is the only place that downloads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "outputs" / "compat_envs"
# Each release with the tokenizers / huggingface_hub ranges it was published with (pip resolves
# the exact versions; the bounds keep pip from choosing the system's newer ones).
PINS = {
    "4.45.2": ["transformers==4.45.2", "tokenizers>=0.20,<0.21", "huggingface_hub>=0.23.2,<1.0"],
    "4.57.6": ["transformers==4.57.6", "tokenizers>=0.22,<=0.23.0", "huggingface_hub>=0.34,<1.0"],
}


def _python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _installed(python: Path) -> str | None:
    code = "import transformers, sys; print(transformers.__version__, transformers.__file__)"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    version, path = result.stdout.split()
    # The release must come from the venv, not from the system site-packages behind it.
    return version if Path(path).resolve().is_relative_to(python.parent.parent.resolve()) else None


def ensure_env(version: str, root: Path = DEFAULT_ROOT, quiet: bool = True) -> Path:
    """The python of a venv holding transformers ``version`` (created on first use)."""
    pins = PINS.get(version, [f"transformers=={version}"])
    env = root / f"transformers-{version}"
    python = _python(env)
    if (env / ".ready").is_file() and _installed(python) == version:
        return python
    shutil.rmtree(env, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True)
    # PIP_USER would install into the user site; the venv's pip installs into the venv.
    environ = {**os.environ, "PIP_USER": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    command = [str(python), "-m", "pip", "install", *(["--quiet"] if quiet else []), *pins]
    subprocess.run(command, check=True, env=environ, stdout=sys.stderr)
    installed = _installed(python)
    if installed != version:
        raise RuntimeError(f"{env}: expected transformers {version} in the venv, got {installed}")
    (env / ".ready").write_text(version + "\n")
    return python


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transformers", default="4.45.2", help="release to install")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="where the venvs live")
    parser.add_argument("--verbose", action="store_true", help="show pip's output")
    args = parser.parse_args(argv)
    print(ensure_env(args.transformers, Path(args.root), quiet=not args.verbose))


if __name__ == "__main__":
    main()
