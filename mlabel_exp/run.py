"""``python -m mlabel_exp.run``: the command lives in mlabel_exp.cli.run."""

from mlabel_exp.cli.run import main

if __name__ == "__main__":
    main()
