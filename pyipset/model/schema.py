"""Strict field checking, as `kubectl apply --validate=strict` does: every
field of a Pod, Namespace or NetworkPolicy must be one the Kubernetes API
defines, in the shape it defines (object, list, map or scalar), and no key may
appear twice in one object. A typo such as `ingres:` would otherwise be
dropped in silence and turn a policy into deny-all.

The schema is the official `kubernetes` client's: each model class lists its
fields (`attribute_map`) and their types (`openapi_types`). Scalars are
checked only for not being objects or lists: the fields the compiler reads are
checked to the value by validation.py, and quantities such as `cpu: 1` are
numbers in YAML where the client says `str`.

Linear in the object's size; messages name the path and quote a bounded value.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Optional

from ..errors import brief

MAX_PROBLEMS = 10  # per object: enough to fix them, bounded for hostile input

ROOT_MODELS = {"Pod": "V1Pod", "Namespace": "V1Namespace", "NetworkPolicy": "V1NetworkPolicy", "Node": "V1Node"}

_LIST = re.compile(r"(?:List|list)\[(.+)\]\Z")
_DICT = re.compile(r"(?:Dict|dict)\[\s*str\s*,\s*(.+)\]\Z|dict\(str, (.+)\)\Z")
_SCALARS = {"str", "int", "float", "bool", "datetime", "date", "bytearray"}


class DuplicateKeys(dict):
    """A mapping decoded from YAML or JSON that remembers keys given twice
    (the last value wins, as in the API server's decoders)."""

    __slots__ = ("duplicates",)

    def __init__(self, pairs=(), duplicates=()):
        super().__init__(pairs)
        self.duplicates = list(duplicates)


@lru_cache(maxsize=None)
def _fields(model: str) -> Optional[dict]:
    """JSON field name -> type text of a client model, or None if unknown."""
    from kubernetes.client import models  # the official client's generated models
    cls = getattr(models, model, None)
    if cls is None:
        return None
    return {json_name: cls.openapi_types[attr] for attr, json_name in cls.attribute_map.items()}


def check(obj: dict, kind: str) -> list:
    """[(path, value, reason)] of every field problem of the object, at most MAX_PROBLEMS."""
    problems: list = []
    _check(obj, ROOT_MODELS[kind], (), problems)
    return [(_path(parts), value, reason) for parts, value, reason in problems[:MAX_PROBLEMS]]


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$-]{1,64}\Z")


def _path(parts: tuple) -> str:
    """("spec", "ingress", 0, "from") -> spec.ingress[0].from; a key that is not
    a plain word is quoted in brackets. Built only for a problem found."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{brief(part)}]"
    return out


@lru_cache(maxsize=None)
def _shape(type_text: str) -> tuple:
    """A client type text, parsed once: ("list", inner), ("map", inner),
    ("any",), ("scalar", name) or ("model", fields or None)."""
    m = _LIST.match(type_text)
    if m:
        return ("list", m.group(1))
    m = _DICT.match(type_text)
    if m:
        return ("map", m.group(1) or m.group(2))
    if type_text == "object":
        return ("any",)  # int-or-string and free-form fields
    if type_text in _SCALARS:
        return ("scalar", "string" if type_text == "str" else type_text)
    return ("model", _fields(type_text))


def _check(value, type_text: str, parts: tuple, problems: list) -> None:
    if value is None or len(problems) >= MAX_PROBLEMS:
        return  # null: the field is unset
    shape = _shape(type_text)
    kind = shape[0]
    if kind == "model":
        fields = shape[1]
        if fields is None:
            return  # a type this client does not describe: nothing to check against
        if not isinstance(value, dict):
            problems.append((parts, value, "must be an object"))
            return
        if type(value) is not dict:
            _duplicates(value, parts, problems)
        for key, item in value.items():
            field_type = fields.get(key) if isinstance(key, str) else None
            if field_type is None:
                problems.append((parts + (key,), key, "unknown field (the Kubernetes API defines no such field here)"))
            elif item is not None and not (type(item) is str and field_type == "str"):
                _check(item, field_type, parts + (key,), problems)
    elif kind == "list":
        if not isinstance(value, list):
            problems.append((parts, value, "must be a list"))
            return
        for i, item in enumerate(value):
            _check(item, shape[1], parts + (i,), problems)
    elif kind == "map":
        if not isinstance(value, dict):
            problems.append((parts, value, "must be a map"))
            return
        if type(value) is not dict:
            _duplicates(value, parts, problems)
        inner = shape[1]
        if inner == "str":  # labels, annotations: scalars only
            for key, item in value.items():
                if isinstance(item, (dict, list)):
                    problems.append((parts + (key,), item, "must be a string, not "
                                     + ("an object" if isinstance(item, dict) else "a list")))
            return
        for key, item in value.items():
            _check(item, inner, parts + (key,), problems)
    elif kind == "scalar":
        if isinstance(value, (dict, list)):
            problems.append((parts, value, f"must be a {shape[1]}, "
                                           f"not {'an object' if isinstance(value, dict) else 'a list'}"))


def _duplicates(value: dict, parts: tuple, problems: list) -> None:
    for key in getattr(value, "duplicates", ()):
        problems.append((parts + (key,), key, "duplicate field"))
