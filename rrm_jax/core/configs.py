"""One loader and one writer for every typed config: frozen dataclasses read from TOML plus ``key=value`` overrides.

A config is a frozen dataclass whose fields are ``int``, ``float``, ``bool``, ``str``, tuples/lists of those,
``X | None`` or a nested config (a TOML table: ``[optim]``, overridden as ``optim.lr=1e-6``). Values are layered:
defaults < a TOML file < overrides, and every layer is named in errors, as ``SOURCE: FIELD: PROBLEM``::

    train/tiny.toml: optim.lr: expected float, got 'fast'
    --set sft_lr=fast: sft_lr: expected float, got 'fast'

Types are strict in files (``true`` is not an int, ``"3"`` is not a number; an int is a fine float). Text a person
typed (an override or a flag) is parsed as a TOML value, falling back to a bare string, and a string is then
converted to the field's type (``"3"`` -> 3). Anywhere, ``"none"`` is None for an ``X | None`` field and a tuple
may be written ``"1,1,8"``. ``dump_toml`` writes a config back (None as ``"none"``) so that ``load`` reads it
unchanged. A config class may define ``upgrade(values, source) -> values`` to accept old spellings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path

from rrm_jax.core.errors import ConfigError

T = typing.TypeVar("T")

# (source named in errors, nested {key: value | {key: ...}}, whether the values are text a person typed)
Layer = tuple[str, dict, bool]

_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def load(
    cls: type[T],
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    *,
    defaults: T | None = None,
    flag: str = "",
) -> T:
    """``cls`` from ``defaults`` (else its own defaults) < the TOML at ``path`` < ``key=value`` overrides.

    ``flag`` is the command-line flag the overrides came with (``--set``), so errors name it."""
    layers = [file_layer(path)] if path is not None else []
    layers += [override_layer(item, flag) for item in overrides]
    return build(cls, layers, defaults=defaults)


def file_layer(path: str | Path) -> Layer:
    try:
        return str(path), tomllib.loads(Path(path).read_text()), False
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); a TOML file is UTF-8") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML file") from None


def override_layer(item: str, flag: str = "") -> Layer:
    """``section.key=value`` -> a layer holding the value's text."""
    source = f"{flag} {item}".strip()
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: expected key=value")
    *parents, leaf = key.strip().split(".")
    values = node = {}
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = text.strip()
    return source, values, True


def build(cls: type[T], layers: typing.Iterable[Layer], *, defaults: T | None = None) -> T:
    """Convert and merge the layers (later ones win), then construct ``cls`` once."""
    merged: dict = {}
    layers = list(layers)
    for source, values, text in layers:
        if hasattr(cls, "upgrade"):
            values = cls.upgrade(values, source)
        _merge(cls, merged, values, source, text)
    where = ", ".join(source for source, _, _ in layers) or cls.__name__
    try:
        return _construct(cls, defaults, merged)
    except (TypeError, ValueError) as e:  # ConfigError included: __post_init__ checks, missing fields
        raise ConfigError(f"{where}: {e}") from None


def _merge(cls, merged: dict, values: dict, source: str, text: bool, prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        where = f"{source}: {prefix}{key}"
        if key not in names:
            raise ConfigError(f"{where}: unknown key; known: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if text and isinstance(value, str):
                value = parse_value(value)
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a table, got {value!r}")
            _merge(tp, merged.setdefault(key, {}), value, source, text, f"{prefix}{key}.")
        else:
            merged[key] = convert(tp, value, where, text=text)


def _construct(cls, base, merged: dict):
    hints = typing.get_type_hints(cls)
    kw = {}
    for key, value in merged.items():
        if dataclasses.is_dataclass(hints[key]):
            inner = getattr(base, key) if base is not None else _field_default(cls, key)
            value = _construct(hints[key], inner, value)
        kw[key] = value
    if base is not None:
        return dataclasses.replace(base, **kw)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required key(s) {', '.join(missing)}")
    return cls(**kw)


def _field_default(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def parse_value(text: str):
    """Override text as a TOML value (``3``, ``1e-6``, ``[1, -1, 1]``, ``'a b'``), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def convert(tp, value, where: str, *, text: bool = False):
    """``value`` as type ``tp`` or a ConfigError naming ``where``; ``text``: a person typed it (see the docstring)."""
    if text and isinstance(value, str):
        raw, value = value, parse_value(value)
        if tp is str:  # `out=123` means the text, `out='a b'` the quoted string
            return value if isinstance(value, str) else raw
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (
            value is None or isinstance(value, str) and value.strip().lower() in ("none", "null")
        ):
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(arg, value, where, text=text)
            except ConfigError:
                pass
    elif origin in (tuple, list):
        if isinstance(value, str):  # "1,1,8" (an empty string is the empty tuple)
            value, text = [v.strip() for v in value.split(",") if v.strip()], True
        elif not isinstance(value, (list, tuple)):
            value = [value]
        items = [convert(args[0], v, where, text=text) for v in value]
        return tuple(items) if origin is tuple else items
    else:
        if text and isinstance(value, str):
            value = _from_text(tp, value)
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _from_text(tp, s: str):
    if tp is bool:
        return _BOOLS.get(s.strip().lower(), s)
    try:
        return tp(s) if tp in (int, float) else s
    except ValueError:
        return s


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_type_name(args[0])}"
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


# ---------------------------------------------------------------------------------------------- writing
def dump_toml(cfg, prefix: str = "") -> str:
    """``cfg`` as TOML: top-level keys, then one table per nested config (``[judge.sampling]`` for a config
    nested two deep); ``load`` reads it back equal."""
    top, tables = [], []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            tables.append(f"\n[{prefix}{f.name}]\n{dump_toml(value, f'{prefix}{f.name}.')}")
        else:
            top.append(f"{f.name} = {_toml_value(value)}\n")
    return "".join(top) + "".join(tables)


def write_toml(cfg, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(cfg))
    return path


def _toml_value(v) -> str:
    if v is None:
        return '"none"'
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # TOML's inf, -inf, nan
    return json.dumps(v)  # JSON's strings, numbers and booleans are TOML's
