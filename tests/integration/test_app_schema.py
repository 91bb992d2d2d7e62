"""Every answer the app gives matches its own OpenAPI document (``/openapi.json``).

Schemathesis generates requests for each operation from the document itself, sends them to
the app in process (its ASGI support), and checks each response's status code, content type
and body against what the document declares for that status. Generated ids are mostly
unknown runs (404), so some draws use ids of runs that exist, and a real stack and layer,
to reach the success answers (JSON facts, binary payloads) too.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from attnmap.app.server import create_app  # noqa: E402

from .test_app import client_for  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
EXAMPLES = 25  # per operation: twelve operations stay well under 30 s on two cores


@pytest.fixture(scope="module")
def app(gpt2_dir, t5_dir):
    # Room for every run the generated requests make: the runs below must not be evicted.
    return create_app([str(gpt2_dir), str(t5_dir)], max_runs=10_000)


@pytest.fixture(scope="module")
def runs(app, t5_dir):
    """Ids of stored runs: two GPT-2 texts that align, and a T5 run (three stacks)."""
    with client_for(app) as c:
        texts = ["The cat that sat on the mat was black.", "The cat sat on the mat."]
        ids = [c.post("/api/runs", json={"text": t}).json()["id"] for t in texts]
        ids.append(c.post("/api/runs", json={"text": texts[0], "model": str(t5_dir),
                                             "target": "Die Katze"}).json()["id"])
    return ids


@pytest.fixture(scope="module")
def schema(app):
    # The document as the app serves it; requests then go to the app in process, with the
    # Host header a browser on this machine sends (the app refuses any other Host).
    return schemathesis.openapi.from_asgi("/openapi.json", app,
                                          headers={"host": "127.0.0.1"})


def operations(app) -> list[tuple[str, str]]:
    spec = app.openapi()
    return [(path, method.upper()) for path, ops in spec["paths"].items() for method in ops]


API = [
    ("/api/health", "GET"), ("/api/models", "GET"), ("/api/runs", "GET"), ("/api/runs", "POST"),
    ("/api/runs/{run_id}", "GET"), ("/api/runs/{run_id}/perturb", "POST"),
    ("/api/runs/{run_id}/payload", "GET"), ("/api/runs/{run_id}/layers/{stack}/{layer}", "GET"),
    ("/api/diff/{id_a}/{id_b}", "GET"), ("/api/diff/{id_a}/{id_b}/payload/{side}", "GET"),
    ("/api/generate", "POST"), ("/api/generate/stop", "POST"), ("/api/runs/{run_id}/tiles", "GET"),
]


def test_the_document_declares_every_api_route(app):
    assert sorted(operations(app)) == sorted(API)
    spec = app.openapi()
    for path, method in API:
        responses = spec["paths"][path][method.lower()]["responses"]
        # every route says how it fails: JSON {"detail": …}, never FastAPI's default 422 body
        assert {"400", "500"} <= set(responses), (path, method)
        for code, r in responses.items():
            if code[0] in "45":
                assert r["content"] == {"application/json": {"schema": {
                    "$ref": "#/components/schemas/ErrorBody"}}}, (path, method, code)
        if path.endswith(("/payload", "{layer}", "{side}", "/tiles")):
            assert list(responses["200"]["content"]) == ["application/octet-stream"]
        if path == "/api/generate":  # a stream of Server-Sent Events
            assert list(responses["200"]["content"]) == ["text/event-stream"]


# Path parameters that name real things: half of the draws use these instead of random ones.
def _real(runs: list[str]) -> dict[str, st.SearchStrategy]:
    ids = st.sampled_from(runs)
    return {"run_id": ids, "id_a": ids, "id_b": ids, "stack": st.sampled_from(
        ["self", "encoder", "decoder", "cross"]), "layer": st.integers(-3, 2),
        "side": st.sampled_from(["a", "b"])}


@pytest.mark.parametrize(("path", "method"), API, ids=[f"{m} {p}" for p, m in API])
def test_every_response_matches_the_document(schema, runs, path, method):
    real = _real(runs)
    seen: set[int] = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=schema[path][method].as_strategy(), data=st.data())
    def check(case, data):
        if case.path_parameters and data.draw(st.booleans(), label="real ids"):
            for name in case.path_parameters:
                case.path_parameters[name] = data.draw(real[name], label=name)
        response = case.call(headers={"host": "127.0.0.1"})
        seen.add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    check()
    good = GOOD.get((path, method))
    if good is not None:  # a success answer the random draws may miss, checked the same way
        case = schema[path][method].Case(path_parameters={"run_id": runs[0]}, body=good)
        response = case.call(headers={"host": "127.0.0.1"})
        seen.add(response.status_code)
        case.validate_response(response, checks=CHECKS)
    assert seen & {200, 201}, seen  # the success answer was checked too, not only errors


# Requests whose success needs a valid body the generator reaches only by luck (the draws
# depend on hypothesis's version): one of each is sent as well.
GOOD = {("/api/runs/{run_id}/perturb", "POST"): {"position": 1, "mode": "remove"},
        ("/api/generate", "POST"): {"text": "The cat", "max_new_tokens": 2}}
