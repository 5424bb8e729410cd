"""Read config.yaml, apply environment overrides, validate, and report every error at once.

Each error names the key path and where its value came from (``config.yaml:14`` or the environment
variable), so a user fixes all mistakes in one edit instead of one per restart.
`parse_config` is purely computational; `load_config` also reads the file.

`context` is pydantic's validation context: the autoscaler passes checks that need libraries only
it carries (`config.CRON_CHECK`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from chatscale_contract.config import Config

ENV_PREFIX = "CHATSCALE__"
# Well-known deployment variables, mapped to their key path. Generic overrides use
# CHATSCALE__SECTION__KEY=value (value read as YAML, so "2" is a number and "true" a bool).
NAMED_ENV = {
    "REDIS_URL": ("redis", "url"),
    "SHARD_IMAGE": ("shard", "image"),
    "AUTOSCALER_DRY_RUN": ("policy", "dry_run"),
    "STATUS_BIND": ("status", "bind"),
    "STATUS_TOKEN": ("status", "token"),
    "ACTIVATOR_BIND": ("activator", "bind"),
    "ACTIVATOR_ADVERTISE": ("activator", "advertise"),
}

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem with the configuration, located as precisely as the input allows."""

    path: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path or '<top level>'}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; `issues` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def load_config(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
    context: Mapping[str, Any] | None = None,
) -> Config:
    """Read, override and validate. Raises ConfigError naming every problem."""
    source = str(path) if path is not None else "<defaults>"
    try:
        text = Path(path).read_text() if path is not None else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue("", source, f"cannot read: {exc}")]) from None
    config = parse_config(text, source, os.environ if env is None else env, context)
    return resolve_paths(config, Path(path).resolve().parent if path is not None else Path.cwd())


def resolve_paths(config: Config, base: Path) -> Config:
    """Relative file paths in the config are read from the config file's folder, so a config
    works the same whatever the working directory. Purely computational."""

    def absolute(value: str) -> str:
        if value in ("off", "stderr") or value.startswith("/"):
            return value
        return str(base / value)

    nginx = config.nginx.model_copy(
        update={
            name: absolute(getattr(config.nginx, name))
            for name in (
                "template_dir",
                "config_path",
                "pid_path",
                "runtime_dir",
                "access_log",
                "error_log",
            )
        }
    )
    local = config.runtime.local.model_copy(
        update={"log_dir": absolute(config.runtime.local.log_dir)}
    )
    runtime = config.runtime.model_copy(update={"local": local})
    return config.model_copy(update={"nginx": nginx, "runtime": runtime})


def parse_config(
    text: str, source: str, env: Mapping[str, str], context: Mapping[str, Any] | None = None
) -> Config:
    """Validate YAML text plus overrides. Purely computational: no I/O."""
    issues: list[ConfigIssue] = []
    data, lines = _read_yaml(text, source, issues)
    _apply_env(data, lines, env, issues)
    if issues:
        raise ConfigError(issues)
    try:
        return Config.model_validate(data, context=dict(context or {}))
    except ValidationError as exc:
        raise ConfigError(_pydantic_issues(exc, lines, source)) from None


def _read_yaml(
    text: str, source: str, issues: list[ConfigIssue]
) -> tuple[dict[str, Any], dict[Path_, str]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        issues.append(ConfigIssue("", where, f"not valid YAML: {exc}"))
        return {}, {}
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        issues.append(ConfigIssue("", f"{source}:1", "the top level must be a mapping of sections"))
        return {}, {}
    lines: dict[Path_, str] = {(): f"{source}:1"}
    if node is not None:
        _index_lines(node, (), source, lines, issues)
    return data, lines


def _index_lines(
    node: yaml.Node, path: Path_, source: str, lines: dict[Path_, str], issues: list[ConfigIssue]
) -> None:
    """Record where every key path sits in the file, and flag keys given twice."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            where = f"{source}:{key_node.start_mark.line + 1}"
            if key in seen:
                dotted = ".".join(str(p) for p in (*path, key))
                issues.append(ConfigIssue(dotted, where, "key given twice; remove one"))
            seen.add(key)
            lines[(*path, key)] = where
            _index_lines(value_node, (*path, key), source, lines, issues)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = f"{source}:{item.start_mark.line + 1}"
            _index_lines(item, (*path, index), source, lines, issues)


def _apply_env(
    data: dict[str, Any], lines: dict[Path_, str], env: Mapping[str, str], issues: list[ConfigIssue]
) -> None:
    overrides: list[tuple[str, tuple[str, ...], str]] = [
        (name, key_path, env[name]) for name, key_path in NAMED_ENV.items() if name in env
    ]
    for name, given in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            key_path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
            overrides.append((name, key_path, given))
    for name, key_path, raw in overrides:
        value: Any = raw
        if name.startswith(ENV_PREFIX) and raw.strip():
            # Generic overrides are YAML (numbers, booleans, lists); the named ones are plain
            # strings, so STATUS_TOKEN=123456 stays a token and STATUS_TOKEN=null is not "off".
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
        if not _set_path(data, key_path, value):
            dotted = ".".join(key_path)
            issues.append(
                ConfigIssue(dotted, f"env {name}", "cannot override: parent is not a mapping")
            )
            continue
        lines[key_path] = f"env {name}"


def _set_path(data: dict[str, Any], key_path: tuple[str, ...], value: Any) -> bool:
    target = data
    for part in key_path[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            return False
        target = child
    target[key_path[-1]] = value
    return True


_KEY_FIRST = re.compile(r"^([a-z_][a-z0-9_]*(?:\.(?:[a-z_][a-z0-9_]*|\d+))*): (.+)$", re.DOTALL)


def _pydantic_issues(
    exc: ValidationError, lines: dict[Path_, str], source: str
) -> list[ConfigIssue]:
    issues = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        loc, message = _named_key(loc, message, lines)
        dotted = ".".join(str(p) for p in loc)
        if error["type"] == "extra_forbidden":
            message = "unknown key (typo?)"
        elif _worth_showing(error, message):
            message = f"{message} (got {error['input']!r})"
        issues.append(ConfigIssue(dotted, _nearest_line(loc, lines, source), message))
    return sorted(issues, key=_file_order)


def _named_key(loc: Path_, message: str, lines: dict[Path_, str]) -> tuple[Path_, str]:
    """A check across several keys (a model validator) reports at the section it belongs to;
    when its message starts with the key to blame ("max_shards: ..." or "activator.enabled:
    ..."), the issue points at that key and its line instead. Purely computational."""
    match = _KEY_FIRST.match(message)
    if not match:
        return loc, message
    named = tuple(int(p) if p.isdigit() else p for p in match.group(1).split("."))
    for candidate in ((*loc, *named), named):
        if candidate in lines:
            return candidate, match.group(2)
    return (*loc, *named), match.group(2)


def _worth_showing(error: Any, message: str) -> bool:
    """Show the offending value unless it is a whole section or already quoted in the message."""
    if error["type"] == "missing" or "input" not in error or isinstance(error["input"], dict):
        return False
    return repr(error["input"]) not in message


def _file_order(issue: ConfigIssue) -> tuple[int, str, int]:
    """File lines first, in order; environment overrides after them."""
    source, _, line = issue.where.rpartition(":")
    if line.isdigit():
        return (0, source, int(line))
    return (1, issue.where, 0)


def _nearest_line(loc: Path_, lines: dict[Path_, str], source: str) -> str:
    """The location of the key itself, else of the closest parent present in the input."""
    for end in range(len(loc), -1, -1):
        where = lines.get(loc[:end])
        if where is not None:
            return where
    return source
