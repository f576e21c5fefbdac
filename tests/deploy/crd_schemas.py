"""The CRDs' own schemas for deploy/'s KServe and KEDA objects, with no cluster to ask:
- KEDA: cloudcoil-models-keda (dev extra), pydantic models generated from KEDA's CRDs; an object
  is valid when it parses and dumps back unchanged (a field the CRD lacks would be dropped).
- KServe: the KServe SDK's models (generated from KServe's API types, the source of its CRDs),
  read from its wheel, fetched once into .cache/wheels and not installed (its dependencies are
  the whole KServe model server); the Kubernetes types inside (V1Container, ...) are checked
  against the strict Kubernetes schemas kubernetes-validate ships."""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
import zipfile
from typing import Any

import jsonschema
import kubernetes_validate
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from tests.conftest import ROOT

KSERVE_SDK = "0.21.0"
WHEELS = ROOT / ".cache" / "wheels"
ROOTS = {"ClusterServingRuntime": "V1alpha1ClusterServingRuntime",
         "InferenceService": "V1beta1InferenceService"}  # fmt: skip


class SchemaError(AssertionError):
    """An object the CRD's schema does not accept; says where."""


def validate_keda(document: dict[str, Any]) -> None:
    assert document["kind"] == "ScaledObject", document["kind"]
    parsed = ScaledObject.model_validate(document)  # a wrong type raises here
    back = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    if back != document:
        raise SchemaError(f"fields KEDA's ScaledObject does not have: {document} -> {back}")


def validate_kserve(document: dict[str, Any]) -> None:
    _check(document, ROOTS[document["kind"]], document["kind"])


@functools.cache
def _kserve_types() -> dict[str, dict[str, str]]:
    """{SDK model class: {JSON field: its type, e.g. 'list[V1Container]'}} from the wheel."""
    wheels = sorted(WHEELS.glob(f"kserve-{KSERVE_SDK}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--only-binary", ":all:", "-d", str(WHEELS), f"kserve=={KSERVE_SDK}"],
                       check=True, timeout=300)  # fmt: skip
        wheels = sorted(WHEELS.glob(f"kserve-{KSERVE_SDK}-*.whl"))
    types: dict[str, dict[str, str]] = {}
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name in wheel.namelist():
            if name.startswith("kserve/models/") and name.endswith(".py"):
                for node in ast.parse(wheel.read(name)).body:
                    if isinstance(node, ast.ClassDef):
                        fields = _class_dicts(node)
                        if {"openapi_types", "attribute_map"} <= fields.keys():
                            keys = fields["attribute_map"]
                            types[node.name] = {
                                keys[k]: v for k, v in fields["openapi_types"].items()
                            }
    assert "V1alpha1ServingRuntimeSpec" in types, "the KServe SDK's models were not found"
    return types


def _class_dicts(node: ast.ClassDef) -> dict[str, dict[str, str]]:
    return {
        target.id: ast.literal_eval(statement.value)
        for statement in node.body
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Dict)
        for target in statement.targets
        if isinstance(target, ast.Name)
    }


def _check(value: Any, kind: str, where: str) -> None:
    if match := re.fullmatch(r"list\[(.+)\]", kind):
        _expect(value, list, where)
        for index, item in enumerate(value):
            _check(item, match[1], f"{where}[{index}]")
    elif match := re.fullmatch(r"dict\(str, (.+)\)", kind):
        _expect(value, dict, where)
        for key, item in value.items():
            _check(item, match[1], f"{where}.{key}")
    elif kind in _SCALARS:
        _expect(value, _SCALARS[kind], where)
    elif kind in _kserve_types():
        _expect(value, dict, where)
        fields = _kserve_types()[kind]
        for key, item in value.items():
            if key not in fields:
                raise SchemaError(f"{where}.{key}: no such field in KServe's {kind}")
            _check(item, fields[key], f"{where}.{key}")
    elif kind.startswith("V1"):
        try:
            _kubernetes_validator(kind).validate(value)
        except jsonschema.ValidationError as error:
            raise SchemaError(f"{where}: {error.message} (Kubernetes {kind})") from None
    else:
        raise SchemaError(f"{where}: type {kind} is unknown to this check")


_SCALARS: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str,
}  # fmt: skip


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SchemaError(f"{where}: {value!r} is not {kind}")


@functools.cache
def _kubernetes_validator(kind: str) -> jsonschema.Validator:
    """The strict schema of a Kubernetes type (V1Container: core/v1's Container)."""
    version = kubernetes_validate.latest_version()
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    name = kind.removeprefix("V1").lower()
    for file in (f"{name}-v1.json", f"{name}-meta-v1.json"):
        try:
            schema = schema_contents(f"{folder}/{file}", version)
        except FileNotFoundError:
            continue
        definitions = schema_contents(f"{folder}/_definitions.json", version)
        registry: Registry[Any] = Resource.from_contents(definitions) @ (
            Resource.from_contents(schema) @ Registry()
        )
        return jsonschema.Draft202012Validator(schema, registry=registry)
    raise SchemaError(f"no Kubernetes schema for {kind} in {folder}")
