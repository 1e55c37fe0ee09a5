"""``python -m mlabel_exp.predict``: the command lives in mlabel_exp.cli.predict."""

from mlabel_exp.cli.predict import main

if __name__ == "__main__":
    main()
