"""docs/api/openapi.yaml is a valid OpenAPI document and names every public route."""

import os

import yaml
from openapi_spec_validator import validate

from harness import ROOT


def test_the_api_document_is_valid_and_complete():
    with open(os.path.join(ROOT, "docs", "api", "openapi.yaml")) as f:
        document = yaml.safe_load(f)
    validate(document)
    paths = set(document["paths"])
    for route in ("/v1/conversations", "/v1/conversations/{id}/messages", "/v1/conversations/{id}/events",
                  "/v1/conversations/{id}/stream", "/v1/conversations/{id}/ws", "/v1/conversations/{id}/typing",
                  "/v1/agent/session", "/v1/agent/conversations", "/v1/agent/conversations/{id}/claim",
                  "/v1/agent/conversations/{id}/messages", "/v1/agent/conversations/{id}/close", "/v1/agent/ws",
                  "/v1/agent/conversations/{id}/transfer", "/v1/agent/conversations/{id}/export", "/v1/agent/agents",
                  "/v1/agent/audit",
                  "/health", "/metrics"):
        assert route in paths, route
