"""Every command the product prints, rendered so that it runs as printed (pasted into a POSIX shell): each word
shell-quoted (``shlex.quote``: a backslash, a space, ``;``, ``|`` or a quote survive the shell), each override's value
in Hydra's quotes where Hydra's grammar would not read it back as that string (``;``, ``#``, ``&``, quotes, a comma;
the forms docs/data.md lists), and the programs named as they run here: ``python`` and ``mlflow`` where the shell
finds this interpreter's own, else their absolute paths."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path


def _mine(name: str) -> bool:
    """Whether the shell's ``name`` is the one beside this interpreter (an active virtual environment)."""
    found = shutil.which(name)
    return found is not None and Path(found).absolute().parent == Path(sys.executable).absolute().parent


def python() -> list[str]:
    """This interpreter as a command word: ``python`` where the shell finds it first, else its absolute path."""
    return ["python"] if _mine("python") else [sys.executable]


def script(name: str, module: str | None = None) -> list[str]:
    """A console script of this environment (``mlflow``): its name where the shell finds this environment's, else the
    file beside the interpreter, else ``<interpreter> -m <module>``."""
    if _mine(name):
        return [name]
    beside = Path(sys.executable).absolute().parent / name
    return [str(beside)] if beside.is_file() else [sys.executable, "-m", module or name]


def _reads_back(token: str, value: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(token).value() == value
    except HydraException:
        return False


def hydra_quoted(value: str) -> str:
    """``value`` in Hydra's quotes (double, unless it holds a double quote and no single one): the quote escaped, and
    the backslashes before a quote or the end doubled, as Hydra unescapes exactly those."""
    quote = "'" if '"' in value and "'" not in value else '"'
    escaped = re.sub(rf"(\\*)({quote}|$)", lambda m: m.group(1) * 2 + ("\\" + quote if m.group(2) else ""), value)
    return f"{quote}{escaped}{quote}"


def override(key: str, value) -> str:
    """``key=value`` as Hydra reads it back: a string value as it is where Hydra reads it so, else in Hydra's quotes;
    a bool as true/false, a number as Python writes it."""
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if not isinstance(value, str):
        return f"{key}={value}"
    plain = f"{key}={value}"
    return plain if _reads_back(plain, value) else f"{key}={hydra_quoted(value)}"


def command(*words: str) -> str:
    """The words as one shell line: each quoted where the shell would otherwise split or change it."""
    return " ".join(shlex.quote(str(w)) for w in words)


def module_command(module: str, *overrides: str) -> str:
    """``python -m mlabel_exp.<module> <overrides>`` (overrides in Hydra's syntax already: ``override()``'s, or what
    the user typed), as one shell line."""
    return command(*python(), "-m", f"mlabel_exp.{module}", *overrides)


def environment(variables: dict[str, str], *words: str) -> str:
    """``NAME=value ... command``: each value quoted for the shell after its ``=`` (a quoted ``'NAME=value'`` would be
    a command, not an assignment), then the command's words."""
    return " ".join([*(f"{k}={shlex.quote(str(v))}" for k, v in variables.items()), command(*words)])
