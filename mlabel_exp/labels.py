"""``python -m mlabel_exp.labels``: the command lives in mlabel_exp.cli.labels."""

from mlabel_exp.cli.labels import main

if __name__ == "__main__":
    main()
