"""``python -m capbench``: the same as the ``capbench`` command."""

from capbench.cli import main

main()
