"""``python -m blockexp``: runs the command line (:mod:`blockexp.cli`)."""

from blockexp.cli import main

if __name__ == "__main__":
    main()
