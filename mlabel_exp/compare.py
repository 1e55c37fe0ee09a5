"""``python -m mlabel_exp.compare``: the command lives in mlabel_exp.cli.compare."""

from mlabel_exp.cli.compare import main

if __name__ == "__main__":
    main()
