"""What every command shares: Hydra composition with misspelt keys caught first, and settings or data problems
reported as one line with exit status 2 (a traceback means a bug)."""

from __future__ import annotations

import functools
import sys

from mlabel_exp.config import CONF_DIR, Config, ConfigError, UserError, override_problems

def user_error(e: UserError) -> SystemExit:
    """A settings or data problem: its message alone on stderr (no traceback: that is for bugs), exit status 2."""
    print(f"error: {e}", file=sys.stderr)
    return SystemExit(2)


def command(task, config_name: str, schema: type = Config):
    """``main()`` of a Hydra command: misspelt override keys and UserErrors become one line and exit status 2.
    In a sweep a job's error is the task's to handle (run.py records it and the sweep goes on)."""
    import hydra

    @functools.wraps(task)
    def reporting(cfg):
        try:
            return task(cfg)
        except UserError as e:
            raise user_error(e) from None

    def main() -> None:
        problems = override_problems(sys.argv[1:], schema)
        if problems:
            raise user_error(ConfigError("; ".join(problems)))
        hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(reporting)()

    return main
