"""Entry script: ``python cli.py ...`` runs ``neurodeploy ...``."""

from neurodeploy.cli import main

if __name__ == "__main__":
    main()
