"""What every command shares: ``key=value`` settings composed by Hydra, with misspelt keys and options caught first,
and every settings or data problem (Hydra's own included: a wrong group option, a value of the wrong type) reported
as one line with exit status 2 (a traceback means a bug)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys

from mlabel_exp.cli import arguments
from mlabel_exp.config import CONF_DIR, Config, one_line, register
from mlabel_exp.errors import ConfigError, UserError


def user_error(e: UserError) -> SystemExit:
    """A settings or data problem: its message alone on stderr (no traceback: that is for bugs), exit status 2."""
    print(f"error: {e}", file=sys.stderr)
    return SystemExit(2)


def hydra_message(error: Exception) -> str:
    """One line for an error Hydra raised while composing the config (before the command's work began)."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        return arguments.group_message(error.missing_cfg_file, list(error.options))
    if isinstance(error, OverrideParseException):
        first = (error.message.strip().splitlines() or [""])[0]
        key, _, value = error.override.partition("=")
        if first.startswith("LexerNoViableAltException") and value:  # a character such as ; # & quotes unquoted
            quote = "'" if '"' in value else '"'
            return (f"{error.override}: Hydra reads {value!r} only quoted; write '{key}={quote}{value}{quote}' "
                    f"(the shell's quotes around Hydra's)")
        return f"{error.override}: {first}"
    message = (str(error).strip().splitlines() or [type(error).__name__])[0]
    cause = error.__cause__
    if message.startswith("Error merging override ") and cause is not None and str(cause).strip():
        return f"{message.removeprefix('Error merging override ')}: {str(cause).strip().splitlines()[0]}"
    return one_line(error)


def _is_config_error(error: Exception) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(error, (HydraException, OmegaConfBaseException))


@contextlib.contextmanager
def _hydra_raises():
    """Hydra prints a composition error and exits 1 unless HYDRA_FULL_ERROR is set; set, it raises it to us."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def command(task, config_name: str, schema: type = Config, schema_name: str = "config_schema"):
    """``main()`` of a Hydra command: its typed schema registered under the name conf/<config_name>.yaml starts from,
    options and keys checked first, run ids and filters passed as typed, and every UserError or composition error one
    line with exit status 2. In a sweep a job's error is the task's to handle (run.py records it and the sweep goes
    on)."""

    def main() -> None:
        import hydra

        register(schema, schema_name)

        args = arguments.aliased(sys.argv[1:], schema)
        problems = arguments.problems(args, schema, config_name)
        if problems:
            raise user_error(ConfigError("; ".join(problems)))
        sys.argv[1:] = arguments.verbatim(args)
        started = []

        @functools.wraps(task)  # Hydra names the job after the task's module
        def reporting(cfg):
            started.append(True)
            try:
                return task(cfg)
            except UserError as e:
                raise user_error(e) from None

        with _hydra_raises():
            try:
                hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(reporting)()
            except Exception as e:
                if started or not _is_config_error(e):
                    raise
                raise user_error(ConfigError(hydra_message(e))) from None

    return main
