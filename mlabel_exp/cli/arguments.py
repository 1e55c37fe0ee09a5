"""The command line before Hydra reads it: each argument one of Hydra's options or a ``key=value`` setting of the
command's schema (anything else named in one line, with the closest valid name), and the values that must stay text
(run ids, MLflow filters) quoted for Hydra's override grammar."""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing

from mlabel_exp.config import CONF_DIR, RENAMED, not_a_setting

#: Hydra's command-line options and how many values each takes ("?": one of INFO_TOPICS, or none).
OPTIONS: dict[str, int | str] = {
    "--help": 0, "-h": 0, "--hydra-help": 0, "--version": 0, "--cfg": 1, "-c": 1, "--resolve": 0, "--package": 1,
    "-p": 1, "--run": 0, "-r": 0, "--multirun": 0, "-m": 0, "--shell-completion": 0, "-sc": 0, "--config-path": 1,
    "-cp": 1, "--config-name": 1, "-cn": 1, "--config-dir": 1, "-cd": 1, "--experimental-rerun": 1, "--info": "?",
    "-i": "?"}
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
#: Settings whose value is taken as typed: run ids (``run=0123`` stays "0123", not the number 123) and MLflow filters
#: (``filter="params.model = 'x'"``, which Hydra's grammar cannot read unquoted).
VERBATIM = ("run", "resume", "sweep", "filter")


def _fields(schema) -> dict[str, typing.Any] | None:
    """A dataclass's settings and their types (class constants left out); None below a free-form setting."""
    if not dataclasses.is_dataclass(schema):
        return None
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def key_problem(key: str, schema: type) -> str | None:
    """Why ``key`` (dotted) is not a setting of ``schema`` (or a short name it declares), with the closest valid name;
    None when it is one."""
    key = getattr(schema, "aliases", {}).get(key, key)
    if key in RENAMED:  # an earlier version's setting
        return f"{key} is not a setting any more: it is now {RENAMED[key]}"
    node, prefix = schema, ""
    for part in key.split("."):
        fields = _fields(node)
        if fields is None:  # below a free-form setting (presets, search.space): anything goes
            return None
        if part not in fields:
            return not_a_setting(part, list(fields), prefix)
        node, prefix = fields[part], f"{prefix}{part}."
    return None


def _as_setting(option: str, value: str | None, schema: type) -> str | None:
    """``--num-images 12`` -> ``num_images=12``, where the option names a setting."""
    name = option.lstrip("-")
    for key in (name.replace("-", "_"), name.replace("-", ".")):
        if key and key_problem(key, schema) is None:
            shown = f'"{value}"' if value and " " in value and '"' not in value else value
            return f"{key}={shown if value is not None else 'VALUE'}"
    return None


def option_problem(arg: str, value: str | None, schema: type) -> str:
    """One line for an option Hydra does not have: the setting it means, or the closest option."""
    option = arg.split("=", 1)[0]
    setting = _as_setting(option, arg.split("=", 1)[1] if "=" in arg else value, schema)
    if setting:
        return f"{option} is not an option: settings are key=value, here {setting}"
    close = difflib.get_close_matches(option, [o for o in OPTIONS if o.startswith("--")], n=1, cutoff=0.8)
    hint = f"did you mean {close[0]}?" if close else "settings are key=value; see --help"
    return f"{option} is not an option ({hint})"


def _group_of(word: str) -> str | None:
    """The config group that has an option ``word`` (``resnet50`` -> ``model``), if one does."""
    found = sorted(p.parent.name for p in CONF_DIR.glob(f"*/{word}.yaml"))
    return found[0] if found else None


def setting_problem(arg: str, schema: type, groups: set[str]) -> str | None:
    """Why ``arg`` (not an option) is not a setting of ``schema``. The command's config groups (``groups``: checked by
    group_problems), Hydra's own settings, additions (+key=) and deletions (~key) are left to Hydra, whose errors
    app.command turns into one line."""
    if "=" not in arg:
        if arg.startswith("~"):
            return None
        group = re.fullmatch(r"[\w.-]+", arg) and _group_of(arg)
        hint = f"did you mean {group}={arg}?" if group else "settings are key=value, e.g. trainer.epochs=5"
        return f"{arg!r} is not a setting ({hint})"
    key = arg.split("=", 1)[0]
    if arg.startswith(("+", "~", "hydra")) or "/" in key or key in groups:
        return None
    return key_problem(key, schema)


def group_message(missing: str, options: list[str]) -> str:
    """``model/resnet5`` not found among ``options``: one line with the closest option and every choice."""
    group, _, option = missing.rpartition("/")
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{group}={option}: no such {group.rsplit('/', 1)[-1]}; {hint}choices: {', '.join(sorted(options))}"


def _sees_every_option(args: list[str]) -> bool:
    """False where config folders other than CONF_DIR may add group options (--config-dir, another primary config,
    hydra.searchpath on the command line or in conf/local/): Hydra alone sees those."""
    if any(a.split("=", 1)[0] in ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")
           or a.lstrip("+").startswith("hydra.searchpath") for a in args):
        return False
    return not any("searchpath" in p.read_text() for p in (CONF_DIR / "local").glob("*.yaml"))


def command_groups(config_name: str) -> set[str]:
    """The config groups a command's config composes: those of its defaults list, and of the configs it extends
    (search's is a run's). Only they take ``group=option``: compare's ``experiment=`` is a setting."""
    from omegaconf import OmegaConf

    groups = set()
    for entry in OmegaConf.load(CONF_DIR / f"{config_name}.yaml").get("defaults", []):
        if isinstance(entry, str):
            groups |= command_groups(entry) if (CONF_DIR / f"{entry}.yaml").is_file() else set()
        else:
            groups |= {k.removeprefix("optional ").split("@")[0] for k in entry if not k.startswith("override ")}
    return groups


def group_problems(args: list[str], groups: set[str]) -> list[str]:
    """``group=option`` settings naming an option that CONF_DIR/<group>/ lacks (Hydra would skip a missing option
    of an optional group, such as experiment=, without a word); ``groups``: the command's."""
    if not _sees_every_option(args):
        return []
    found = []
    for arg in args:
        key, _, value = arg.partition("=")
        name = key.lstrip("+").split("@", 1)[0]  # +group=option adds a group the config does not name
        folder = CONF_DIR / name
        if not (name in groups or key.startswith("+")) or not value or not folder.is_dir() \
                or name.startswith("hydra") or re.search(r"[$(]", value):
            continue
        options = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
        found += [group_message(f"{folder.name}/{v}", options) for v in value.split(",")
                  if v not in options and v != "null"]
    return found


def problems(args: list[str], schema: type, config_name: str = "config") -> list[str]:
    """One line per argument that is neither an option Hydra has nor a setting of ``schema`` or an option of a config
    group of the command's config (conf/<config_name>.yaml)."""
    groups = command_groups(config_name)
    found, i = [], 0
    while i < len(args):
        arg, following = args[i], args[i + 1] if i + 1 < len(args) else None
        if arg.startswith("-") and not re.fullmatch(r"-\d.*", arg):
            takes = OPTIONS.get(arg.split("=", 1)[0])
            value = following if following and not re.match(r"[-+~]|[\w./@]+=", following) else None
            if takes is None:  # --sweep latest: the value goes with the option it follows
                found.append(option_problem(arg, value if "=" not in arg else None, schema))
                takes = 1 if value is not None and "=" not in arg else 0
            skip = takes == 1 and "=" not in arg or takes == "?" and following in INFO_TOPICS
            i += 2 if skip else 1
            continue
        problem = setting_problem(arg, schema, groups)
        found += [problem] if problem else []
        i += 1
    return found + group_problems(args, groups)


def aliased(args: list[str], schema: type) -> list[str]:
    """The arguments with each short name the schema declares (its ``aliases``) spelt out: compare's
    ``experiment=NAME`` is ``tracking.experiment=NAME``."""
    aliases = getattr(schema, "aliases", {})
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        out.append(f"{aliases[key]}={value}" if sep and key in aliases else arg)
    return out


def quote(value: str) -> str:
    """``value`` as a quoted string of Hydra's override grammar (which reads backslashes as escapes only before a
    quote)."""
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def verbatim(args: list[str]) -> list[str]:
    """The arguments, with the value of each VERBATIM setting quoted where Hydra would read it as something else."""
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key in VERBATIM and value and value[0] not in "'\"" and not _reads_as_text(arg, value):
            arg = f"{key}={quote(value)}"
        out.append(arg)
    return out


def _reads_as_text(arg: str, value: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if re.fullmatch(r"[A-Za-z_][\w-]*", value) and value.lower() not in ("true", "false", "null", "nan", "inf"):
        return True  # latest, best, a sweep_id: text already (the parser takes 0.2 s to load)
    try:
        return OverridesParser.create().parse_override(arg).value() == value
    except Exception:  # noqa: BLE001 -- any parse error: quote it
        return False
