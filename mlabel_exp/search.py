"""``python -m mlabel_exp.search``: the command lives in mlabel_exp.cli.search."""

from mlabel_exp.cli.search import main

if __name__ == "__main__":
    main()
