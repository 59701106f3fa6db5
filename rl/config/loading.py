"""Loading a config: defaults <- recipe YAML (and the recipes it extends) <- `key=value` overrides, then validated;
and the config as plain containers (secrets redacted) or YAML."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rl.config.errors import ConfigError
from rl.config.run import Config, dependent_defaults, optional_sections, validate


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- recipe YAML <- `key=value` overrides; unknown keys and wrong types fail here, by name.

    Every problem becomes one ConfigError that names the recipe file or the override, and the key.
    `rewards[0].weight=2` sets one field of a list item; `eval_sets={}` (a free-keyed mapping given whole) replaces the
    recipe's mapping, while `trainer={total_steps: 3}` sets that one field of the section."""
    cfg = OmegaConf.structured(Config)
    if recipe is not None:
        for path, tree in _recipe_layers(Path(recipe)):
            _rebase_input_paths(tree, path.parent)
            for key, value in tree.items():
                cfg = _merge(cfg, {key: value}, f"recipe {str(path)!r}")
    for item in overrides or []:
        key, eq, text = (part.strip() for part in item.partition("="))
        where = f"override {item!r}"
        if not eq or not key:
            raise ConfigError(f"{where} is not of the form key=value (e.g. trainer.total_steps=10)")
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"_={text}"]))["_"]  # YAML, as OmegaConf reads it
        except Exception as e:  # noqa: BLE001 -- any YAML problem of the value
            raise ConfigError(f"{where}: the value is not valid YAML ({_first_line(e)}); quote it") from None
        if "[" in key:  # one field of a list item, e.g. rewards[0].weight=2
            cfg = cfg.copy()
            try:
                _call(lambda: OmegaConf.update(cfg, key, value, merge=True), where, key)
            except ConfigError as e:
                raise ConfigError(f"{e} (an override sets a field of an existing item; to add items give the whole "
                                  f"list, e.g. rewards=[{{name: math_verify}}, {{name: format, weight: 0.1}}])") from None
        else:
            node = _call(lambda: OmegaConf.select(cfg, key, default=None), where, key)
            if isinstance(value, dict) and isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict:
                cfg = cfg.copy()  # a free-keyed mapping (eval_sets, kwargs) given whole replaces the old one
                OmegaConf.update(cfg, key, {}, merge=False)
            cfg = _merge(cfg, _nest(key, value), where)
    obj: Config = _call(lambda: OmegaConf.to_object(cfg), "config", _unresolvable(cfg) or "")
    dependent_defaults(obj)
    validate(obj)
    return obj


def _recipe_layers(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The recipe and the recipes it extends, base first: `base: other.yaml` (relative to the recipe's folder) is
    read first and this recipe's keys are merged over it, so a variant recipe states only what it changes."""
    tree = _read_recipe(path)
    base = tree.pop("base", None)
    if base is None:
        return [(path, tree)]
    where = f"recipe {str(path)!r}"
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{where}: base must be the path of another recipe (e.g. base: quickstart.yaml)")
    base_path = path.parent / base
    if base_path.resolve() in chain + (path.resolve(),):
        raise ConfigError(f"{where}: base: {base} makes a cycle of recipes; remove one of the base keys")
    if not base_path.is_file():
        raise ConfigError(f"{where}: base: {base} names {str(base_path)!r}, which is not a file; give a path relative "
                          "to the recipe's folder")
    return _recipe_layers(base_path, chain + (path.resolve(),)) + [(path, tree)]


# Keys that name files or folders to read ("*": every item; "**": every path-like string below). In a recipe, a relative
# one resolves against the recipe's folder when it exists there, else (as in overrides) against the current directory;
# outputs (output_dir, runs/...) always against the current directory.
INPUT_PATHS = ("model.path", "data.mirror", "data.train.source", "data.eval.source", "eval_sets.*.source",
               "rewards.*.fn", "rewards.*.kwargs.**", "algorithm.divergence.data", "rollout.search.knowledge.passages",
               "rollout.search.knowledge.qa_data")


def _rebase_input_paths(tree: dict, folder: Path) -> None:
    """Rewrite, in place, the INPUT_PATHS values of a recipe's tree that exist relative to its folder to absolute
    paths; anything else (a hub id, a named data set, a file found nowhere) is left as written."""
    if folder.absolute() == Path.cwd():
        return
    for key in INPUT_PATHS:
        _rebase_at(tree, key.split("."), folder)


def _rebase_at(node, keys: list[str], folder: Path):
    if not keys:
        return _rebased(node, folder)
    if keys == ["**"]:
        if isinstance(node, (dict, list)):
            for k, v in list(node.items() if isinstance(node, dict) else enumerate(node)):
                node[k] = _rebase_at(v, keys, folder)
            return node
        return _rebased(node, folder, path_like=True)
    key, rest = keys[0], keys[1:]
    items = (node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()) \
        if key == "*" else [(key, node[key])] if isinstance(node, dict) and key in node else ()
    for k, v in list(items):
        node[k] = _rebase_at(v, rest, folder)
    return node


def _rebased(value, folder: Path, path_like: bool = False):
    """folder/value, absolute, when value is a relative path that exists there (for 'file.py:function', the file);
    else value. `path_like`: only values with a '/' or a file suffix (free-form reward kwargs)."""
    if not isinstance(value, str) or not value.strip():
        return value
    head, colon, attr = value.rpartition(":")
    path, tail = (head, colon + attr) if colon and head.endswith(".py") else (value, "")
    try:
        p = Path(path).expanduser()
        if p.is_absolute() or (path_like and "/" not in path and not p.suffix) or not (folder / p).exists():
            return value
    except (OSError, ValueError):  # a NUL byte, a name too long: not a file here, the later check names it
        return value
    return os.path.abspath(folder / p) + tail


def _read_recipe(path: Path) -> dict:
    """The recipe's top-level mapping, or a ConfigError naming the file and what to fix."""
    where = f"recipe {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where} {'is not a file' if path.exists() else 'does not exist'}; "
                          "give the path of a YAML file (see recipes/)")
    try:
        tree = OmegaConf.to_container(OmegaConf.load(path))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:  # also a key given twice
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}; fix that line") from None
    except (OSError, OmegaConfBaseException) as e:  # a scalar at the top, a null key
        raise ConfigError(f"{where} is not a mapping of `key: value` lines ({_first_line(e)}); "
                          "write it like the files in recipes/") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{where} holds a {type(tree).__name__}, not a mapping of `key: value` lines; "
                          "write it like the files in recipes/")
    if not tree:
        raise ConfigError(f"{where} is empty: it would train on the built-in defaults; write the keys of a run in it "
                          "(see recipes/quickstart.yaml), or omit the recipe to use the defaults on purpose")
    return tree


def _merge(cfg, tree: dict, where: str):
    """cfg merged with `tree`, or a ConfigError naming `where` and the key; for a list of sections (rewards), the
    first item that is wrong."""
    key, value = _path(cfg, tree)
    try:
        return _call(lambda: OmegaConf.merge(cfg, tree), where, key)
    except ConfigError:
        if isinstance(value, list) and isinstance(OmegaConf.select(cfg, key), ListConfig):
            for i, item in enumerate(value):
                _call(lambda: OmegaConf.merge(cfg, _nest(key, [item])), where, f"{key}[{i}]")
        raise


def _path(cfg, tree) -> tuple[str, object]:
    """(dotted key, value) of `tree` down to where it leaves the config's sections or branches out:
    ({'trainer': {'total_steps': 3}} -> 'trainer.total_steps')."""
    keys: list[str] = []
    while isinstance(tree, dict) and len(tree) == 1 and isinstance(OmegaConf.select(cfg, ".".join(keys)) if keys
                                                                     else cfg, DictConfig):
        key, tree = next(iter(tree.items()))
        keys.append(str(key))
    return ".".join(keys), tree


def _nest(key: str, value) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _unresolvable(node, prefix: str = "") -> str | None:
    """The first key whose value (an interpolation such as ${seed}) cannot be read, or None."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for k in keys:
        key = f"{prefix}[{k}]" if isinstance(node, ListConfig) else f"{prefix}.{k}" if prefix else str(k)
        try:
            child = node[k]
        except Exception:  # noqa: BLE001 -- whatever OmegaConf raises: this is the key to name
            return key
        if isinstance(child, (DictConfig, ListConfig)) and (bad := _unresolvable(child, key)):
            return bad
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _call(fn, where: str, key: str = ""):
    """fn(), with an OmegaConf or type error turned into a ConfigError naming `where` and the key."""
    try:
        return fn()
    except (OmegaConfBaseException, TypeError, ValueError, KeyError, AttributeError) as e:
        full = getattr(e, "full_key", None) or ""
        name = full if full.split(".")[0].split("[")[0] == key.split(".")[0].split("[")[0] or not key else \
            f"{key}.{full}" if full else key
        msg = (getattr(e, "msg", None) or str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "incompatible container types" in msg:
            msg = "a list given where a mapping of keys is expected, or the other way round"
        if name.endswith(".enabled") and ".".join(name.split(".")[:-1]) in optional_sections(Config()):
            msg += (f"; a method's section is on when present: remove `enabled` (to turn "
                    f"{name.rsplit('.', 1)[0]} off, remove the section or set it to null)")
        raise ConfigError(f"bad {where}{f' at {name!r}' if name else ''}: {msg}") from None


_SECRET = re.compile(r"(?:^|[_-])(?:(?:api|access|secret|private)[_-]?key|token|secret|password|passwd|credentials?)$",
                     re.IGNORECASE)


def redact(tree):
    """A copy of a config dict with the values of secret-looking keys (api_key, token, password, ...) replaced."""
    if isinstance(tree, dict):
        return {k: "***" if _SECRET.search(str(k)) and v is not None else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def to_dict(cfg: Config) -> dict:
    """The config as plain containers, secrets redacted, the optional sections that are off left out (absent is
    off): what is printed, logged and saved with checkpoints."""
    tree = redact(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
    for key, value in optional_sections(cfg).items():
        if value is None:
            *parents, last = key.split(".")
            node = tree
            for part in parents:
                node = node[part]
            del node[last]
    return tree


class _Dumper(yaml.SafeDumper):
    """Block style, except a list of scalars on one line (betas: [0.9, 0.999])."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence(
    "tag:yaml.org,2002:seq", v, flow_style=all(not isinstance(x, (dict, list)) for x in v)))


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, and a last comment line naming the optional sections that are off."""
    text = yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    off = [key for key, value in optional_sections(cfg).items() if value is None]
    lines = textwrap.wrap(f"off (absent): {', '.join(off)}", width=118, subsequent_indent="  ") if off else []
    return text + "".join(f"# {line}\n" for line in lines)
