"""``python -m mlabel_exp.export``: the command lives in mlabel_exp.cli.export."""

from mlabel_exp.cli.export import main

if __name__ == "__main__":
    main()
