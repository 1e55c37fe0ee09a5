"""``python -m mlabel_exp.diagnose``: the command lives in mlabel_exp.cli.diagnose."""

from mlabel_exp.cli.diagnose import main

if __name__ == "__main__":
    main()
