"""Entry point for ``python -m bundling_ml``; see :mod:`bundling_ml.cli`."""
import sys

from bundling_ml.cli import main

if __name__ == "__main__":
    sys.exit(main())
