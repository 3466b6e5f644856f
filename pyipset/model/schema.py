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

import importlib.metadata
import json
import re
from functools import lru_cache
from pathlib import Path
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


# The client's models as read from it, for the client version it names: importing the client costs
# ~0.45 s (it imports its configuration loaders, urllib3 and the models), more than checking 10k pods.
SNAPSHOT = Path(__file__).with_name("api_fields.json")


def client_models() -> dict:
    """model -> {JSON field name: type text} of every client model the root
    models reach (None for a name the client does not have), read from the
    official client's generated models."""
    from kubernetes.client import models  # the official client's generated models
    out: dict = {}
    todo = sorted(ROOT_MODELS.values())
    while todo:
        model = todo.pop()
        if model in out:
            continue
        cls = getattr(models, model, None)
        out[model] = None if cls is None else \
            {json_name: cls.openapi_types[attr] for attr, json_name in cls.attribute_map.items()}
        for type_text in (out[model] or {}).values():
            shape = _shape_of(type_text)
            while shape[0] in ("list", "map"):
                shape = _shape_of(shape[1])
            if shape[0] == "model":
                todo.append(shape[1])
    return dict(sorted(out.items()))


def write_snapshot() -> None:
    """SNAPSHOT from the installed client (run when the client is upgraded: a test says so)."""
    SNAPSHOT.write_text(json.dumps({"client": importlib.metadata.version("kubernetes"), "models": client_models()},
                                   indent=0, sort_keys=True) + "\n")


def _api(version: Optional[str]) -> Optional[str]:
    """The Kubernetes API a client version was made from: its major version
    (client 37.0.x is Kubernetes 1.37's API; a patch release of the client
    does not change the API's types)."""
    return version.split(".")[0] if version else None


@lru_cache(maxsize=None)
def models() -> dict:
    """client_models() of the installed client: the snapshot when it was taken
    of a client of the same API, else read from the client."""
    try:
        installed = importlib.metadata.version("kubernetes")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    snapshot = json.loads(SNAPSHOT.read_text())
    return snapshot["models"] if _api(snapshot["client"]) == _api(installed) else client_models()


def _fields(model: str) -> Optional[dict]:
    """JSON field name -> type text of a client model, or None if unknown."""
    return models().get(model)


def check(obj: dict, kind: str) -> list:
    """[(path, value, reason)] of every field problem of the object, at most
    MAX_PROBLEMS. Most objects have none: a first walk (_valid) answers
    whether there are any, with no paths kept; only then the second one
    (_check) finds them and their paths."""
    if _valid(obj, _node(ROOT_MODELS[kind])):
        return []
    problems: list = []
    _check(obj, ROOT_MODELS[kind], (), problems)
    return [(_path(parts), value, reason) for parts, value, reason in problems[:MAX_PROBLEMS]]


# _valid's form of the schema: a node [kind, payload] per client type text, made once (a model's
# node before its fields, so that a model reaching itself is one node).
_MODEL, _LIST_OF, _MAP_OF, _LABELS, _SCALAR, _ANY = range(6)
_nodes: dict = {}


def _node(type_text: str) -> list:
    node = _nodes.get(type_text)
    if node is not None:
        return node
    shape = _shape_of(type_text)
    fields = _fields(type_text) if shape[0] == "model" else None
    node = _nodes[type_text] = [{"list": _LIST_OF, "map": _MAP_OF, "any": _ANY, "scalar": _SCALAR}.get(shape[0]), None]
    if shape[0] == "model":
        node[0] = _ANY if fields is None else _MODEL  # a type the client does not describe: nothing to check
        node[1] = None if fields is None else {key: _node(t) for key, t in fields.items()}
    elif shape[0] == "map" and shape[1] == "str":
        node[0] = _LABELS  # labels, annotations: scalars only
    elif shape[0] in ("list", "map"):
        node[1] = _node(shape[1])
    return node


def _valid(value, node: list) -> bool:
    """Whether _check would find no problem in value (a plain walk: no paths, no messages)."""
    kind = node[0]
    if kind == _MODEL:
        if type(value) is not dict:  # not an object, or one with a key given twice (DuplicateKeys)
            return False
        fields = node[1]
        for key, item in value.items():
            child = fields.get(key)
            if child is None:
                return False
            if item is not None and child[0] != _ANY and not (type(item) is str and child[0] == _SCALAR) \
                    and not _valid(item, child):
                return False
        return True
    if kind == _SCALAR:
        return not isinstance(value, (dict, list))
    if kind == _LIST_OF:
        inner = node[1]
        return type(value) is list and all(item is None or _valid(item, inner) for item in value)
    if kind == _LABELS:
        return type(value) is dict and not any(isinstance(item, (dict, list)) for item in value.values())
    if kind == _MAP_OF:
        inner = node[1]
        return type(value) is dict and all(item is None or _valid(item, inner) for item in value.values())
    return True  # _ANY


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


def _shape_of(type_text: str) -> tuple:
    """A client type text: ("list", inner), ("map", inner), ("any",),
    ("scalar", name) or ("model", model name)."""
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
    return ("model", type_text)


@lru_cache(maxsize=None)
def _shape(type_text: str) -> tuple:
    """_shape_of, parsed once, a model's fields (or None) in place of its name."""
    shape = _shape_of(type_text)
    return ("model", _fields(type_text)) if shape[0] == "model" else shape


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
