"""The OpenAPI document is valid OpenAPI 3.1 and describes exactly the shard's routes."""

from __future__ import annotations

from openapi_spec_validator import validate
from shard.api import openapi_document, routes
from shard.keyadmin import routes as key_routes


def test_the_document_is_valid_openapi() -> None:
    validate(openapi_document())  # raises, naming the first problem


def test_every_route_is_documented_and_nothing_else() -> None:
    served = {(r.method, r.path) for r in [*routes(), *key_routes()]}
    documented = {
        (method.upper(), path)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert served == documented
