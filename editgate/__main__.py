"""`python -m editgate`: the same CLI as the `editgate` console script (works before a shell rehash)."""

from editgate.cli import main

main()
