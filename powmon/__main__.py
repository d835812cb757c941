"""`python -m powmon` is `powmon`."""

from powmon.cli import main

main()
