"""Run the gpunn CLI from a checkout: ``PYTHONPATH=. python cli.py --help``.

The command lives in ``gpunn/cli.py`` (installed as the ``gpunn`` script); this file is a thin
shim so that a checkout without an install works the same way.
"""

from gpunn.cli import main

if __name__ == "__main__":
    main()
