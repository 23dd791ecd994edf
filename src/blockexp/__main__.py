"""``python -m blockexp``: runs the command line (:mod:`blockexp.cli`)."""

import blockexp

# This process only runs the command line: strategies that import torch when registered wait
# until a command needs them (see blockexp.expanders), so --help, plan and expand start fast.
blockexp._defer_torch_strategies = True

from .cli import main  # noqa: E402

if __name__ == "__main__":
    main()
