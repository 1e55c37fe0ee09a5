"""``python -m mlabel_exp.synthetic``: the command lives in mlabel_exp.cli.synthetic."""

from mlabel_exp.cli.synthetic import main

if __name__ == "__main__":
    main()
