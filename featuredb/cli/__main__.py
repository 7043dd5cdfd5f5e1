"""`python -m featuredb.cli` runs the console script."""

from featuredb.cli.root import main

main()
