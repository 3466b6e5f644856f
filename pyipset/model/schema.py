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

ROOT_MODELS = {"Pod": "V1Pod", "Namespace": "V1Namespace", "NetworkPolicy": "V1NetworkPolicy"}

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
    _check(obj, ROOT_MODELS[kind], "", problems)
    return problems[:MAX_PROBLEMS]


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$-]{1,64}\Z")


def _join(path: str, key) -> str:
    """path.key, or path[<quoted key>] for a key that is not a plain word."""
    if isinstance(key, str) and _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{brief(key)}]"


def _check(value, type_text: str, path: str, problems: list) -> None:
    if len(problems) >= MAX_PROBLEMS or value is None:
        return  # null: the field is unset
    m = _LIST.match(type_text)
    if m:
        if not isinstance(value, list):
            problems.append((path, value, "must be a list"))
            return
        for i, item in enumerate(value):
            _check(item, m.group(1), f"{path}[{i}]", problems)
        return
    m = _DICT.match(type_text)
    if m:
        if not isinstance(value, dict):
            problems.append((path, value, "must be a map"))
            return
        _duplicates(value, path, problems)
        for key, item in value.items():
            _check(item, m.group(1) or m.group(2), f"{path}[{brief(key)}]", problems)
        return
    if type_text == "object":
        return  # int-or-string and free-form fields
    if type_text in _SCALARS:
        if isinstance(value, (dict, list)):
            problems.append((path, value, f"must be a {'string' if type_text == 'str' else type_text}, "
                                          f"not {'an object' if isinstance(value, dict) else 'a list'}"))
        return
    fields = _fields(type_text)
    if fields is None:
        return  # a type this client does not describe: nothing to check against
    if not isinstance(value, dict):
        problems.append((path, value, "must be an object"))
        return
    _duplicates(value, path, problems)
    for key, item in value.items():
        if key not in fields:
            problems.append((_join(path, key), key,
                             "unknown field (the Kubernetes API defines no such field here)"))
            continue
        _check(item, fields[key], _join(path, key), problems)


def _duplicates(value: dict, path: str, problems: list) -> None:
    for key in getattr(value, "duplicates", ()):
        problems.append((_join(path, key), key, "duplicate field"))
