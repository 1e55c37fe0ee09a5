"""``python -m mlabel_exp.inspect``: the command lives in mlabel_exp.cli.inspect_data."""

from mlabel_exp.cli.inspect_data import main

if __name__ == "__main__":
    main()
