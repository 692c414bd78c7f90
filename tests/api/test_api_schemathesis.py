"""Property-based requests from /openapi.json (schemathesis), valid and invalid, with every
check schemathesis has: no 5xx; each status, body, content type and header is the one the
document declares; valid data is accepted and invalid data refused; a method the document
does not name gets 405 with Allow, OPTIONS an Allow that matches it. Plus our own: every
4xx carries a JSON body with a message. And, without schemathesis, the Allow header and
the forms in the schema, looked at directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from schemathesis import engine
from schemathesis.checks import CHECKS, positive_data_acceptance
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events
from starlette.testclient import TestClient

from tests.api.conftest import make_runtime, serve
from torpor.api.app import Limits, create_app

STATE: dict[str, Any] = {}
MAX_EXAMPLES = 10  # per operation and mode in the fuzzing phase (about 70 operations: ~1 min)
MAX_BODY = 64 * 1024
# What POST /v1/sessions may refuse valid data for: things this server has not got (an
# image, a tool) or was not set up for. No schema can say which images exist.
NOT_HERE = ("no such image:", "unknown tool", "script: models are refused by this server")
# What POST /v1/sandboxes (and a fork) may refuse valid data for besides: a snapshot id
# this server has not got (404), and the tenant's limit of running sandboxes (429), kept
# low here so that generated sandboxes do not fill the machine.
SANDBOXES_PER_TENANT = 2
CREATES = ("POST /v1/sandboxes", "POST /v1/sandboxes/{sid}/fork")


@schemathesis.check
def json_message_on_4xx(ctx: Any, response: Any, case: Any) -> None:
    if 400 <= response.status_code < 500:
        ctype = response.headers.get("content-type", [""])
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        assert ctype.startswith("application/json"), f"{response.status_code} is {ctype}"
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("message"), str) \
            and body["message"], body  # fmt: skip


@schemathesis.check
def valid_data_accepted(ctx: Any, response: Any, case: Any) -> None:
    """schemathesis's positive_data_acceptance, but for two refusals of valid data that no
    document can prevent: 413 for a body over the server's size limit (the schema bounds
    each field, not their sum), and 422 from POST /v1/sessions for an image or tool this
    server has not got (NOT_HERE). A 422 for the form of a value the schema allows (e.g.
    the model's provider:name) still fails."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if response.status_code == 413 and len(response.request.body or b"") > MAX_BODY:
        return
    label = case.operation.label
    if response.status_code == 422 and label in ("POST /v1/sessions", *CREATES):
        message = str(response.json().get("message", ""))
        if any(s in message for s in NOT_HERE) and "errors" not in response.json():
            return
    if label in CREATES and response.status_code in (404, 429):
        return
    if label.partition(" ")[2].startswith("/v1/sandboxes/{sid}") and \
            response.status_code == 409:  # fmt: skip
        return  # a real sandbox's state refuses some calls (paused already, not empty, ...)
    positive_data_acceptance(ctx, response, case)


@pytest.fixture(scope="module")
def api_server(api_home: Path, api_engine: Any, tmp_path_factory: Any) -> Iterator[str]:
    db = tmp_path_factory.mktemp("schemathesis") / "st.db"
    rt = make_runtime(api_home, api_engine, db)
    # no worker threads: generated sessions never start sandboxes
    app = create_app(rt, auth=True, workers=0, limits=Limits(
        max_body_bytes=MAX_BODY, sandboxes_per_tenant=SANDBOXES_PER_TENANT))
    token = app.state.tokens.create("t-fuzz", ["drive", "exec", "sandboxes", "admin"])[0]
    STATE.update(runtime=rt, headers={"Authorization": f"Bearer {token}"})
    with pytest.MonkeyPatch.context() as mp, serve(app) as url:
        # both providers configured: models the pattern allows are accepted (the tests'
        # conftest sets OPENAI_API_KEY; no request is ever sent to either)
        mp.setenv("ANTHROPIC_API_KEY", "test-key-never-sent")
        STATE["url"] = url
        yield url
    for row in rt.sandboxes.list():  # killed, not paused by close: nothing to keep
        rt.sandboxes.kill(row.id)
    rt.close()


# On a real sandbox: what neither kills it nor changes its settings (DELETE, PATCH), nor
# starts what a generated command would be (exec, processes), nor makes more (fork).
REAL_SANDBOX_SKIPS = r"/exec$|/fork$|/processes$|^/v1/sandboxes/{sid}$"
# Its file routes on one path (a generated one could be "/": a listing of everything, a
# removal of everything), and fewer examples: each pause and snapshot is a checkpoint.
REAL_SANDBOX_PATH = "/work/fuzz"
REAL_SANDBOX_EXAMPLES = 5


def run_schemathesis(url: str, mode: str, sid: str | None = None, under: str = "sessions"
                     ) -> tuple[list[str], set[str], set[str]]:  # fmt: skip
    """One run of schemathesis's engine (what `st run --checks all` does) over the
    document, in one generation mode: the failures and errors it found, and the names of
    the checks that ran and of the operations they ran on. With `sid`, every
    `/v1/sessions/{sid}` operation but the event stream (which never ends on an open
    session) is run on that real session instead of generated ids, which are all unknown
    (404); with `under="sandboxes"`, the `/v1/sandboxes/{sid}` operations on that real
    sandbox (but REAL_SANDBOX_SKIPS)."""
    config = SchemathesisConfig.from_dict({
        "seed": 14,
        # an operation whose only input is the session id has few invalid forms that can
        # be sent (most invalid draws are filtered out): fewer negative cases, not an error;
        # invalid bodies of the sandbox routes (patterns on map keys and values) are slow
        # to draw: fewer of them, not an error either
        "suppress-health-check": ["filter_too_much", "too_slow"],
        "headers": STATE["headers"],
        "request-timeout": 10,
        "generation": {"mode": mode, "max-examples": MAX_EXAMPLES if under == "sessions"
                       else REAL_SANDBOX_EXAMPLES},
        # stateful testing follows links between operations: this document has none
        "phases": {"stateful": {"enabled": False}},
        "checks": {
            # replaced by valid_data_accepted above, which calls it
            "positive_data_acceptance": {"enabled": False},
            # schemathesis's defaults and 413: a body over the limit is refused unread
            "negative_data_rejection": {"expected-statuses": [
                "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",
                "429", "5xx"]},
        },
        **({"parameters": {"sid": sid, **({"path": REAL_SANDBOX_PATH}
                                          if under == "sandboxes" else {})}} if sid else {}),
    })  # fmt: skip
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    if sid and under == "sessions":
        schema = schema.include(path_regex="^/v1/sessions/{sid}").exclude(path_regex="/events$")
    elif sid:
        schema = schema.include(path_regex="^/v1/sandboxes/{sid}").exclude(
            path_regex=REAL_SANDBOX_SKIPS).exclude(path_regex="/output/stream$")
    found: list[str] = []
    ran: set[str] = set()
    ops: set[str] = set()
    for ev in engine.from_schema(schema).execute():
        if isinstance(ev, events.ScenarioFinished):
            ops.update([ev.recorder.label] if ev.recorder.checks else [])
            for case_id, nodes in ev.recorder.checks.items():
                ran.update(n.name for n in nodes)
                for n in nodes:
                    if n.failure_info is None:
                        continue
                    f, it = n.failure_info.failure, ev.recorder.interactions.get(case_id)
                    answer = (f"{it.response.status_code} {it.response.content[:500]!r}"
                              if it is not None and it.response is not None else "no answer")
                    found.append(f"{ev.recorder.label}: {n.name}: {f.title}: {f.message}\n"
                                 f"  answer: {answer}\n  {n.failure_info.code_sample}")
        elif isinstance(ev, events.NonFatalError | events.FatalError):
            found.append(f"error: {ev!r}")
        elif isinstance(ev, events.EngineFinished):
            found += [f"after the run: {f.title}: {f.message}" for f in ev.failures]
    return found, ran, ops


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_conforms_to_its_document(api_server: str, mode: str) -> None:
    rt = STATE["runtime"]
    found, ran, ops = run_schemathesis(api_server, mode)
    if mode == "positive":
        # and on a real session (which the run may well close). Positive only: with a path
        # parameter pinned, schemathesis takes a negative case's extra query parameter
        # (ignored, as HTTP APIs do) for its only invalid part and expects a refusal.
        sid = "ses-fuzz"
        rt.create_session(model="openai:none", id=sid, tenant="t-fuzz")
        on_real, _, _ = run_schemathesis(api_server, mode, sid=sid)
        found += on_real
        assert rt.log.head_seq(sid) > 1  # it was reached: more than its creation logged
        # and on a real sandbox of the tenant's
        sbx = rt.sandboxes.create(tenant="t-fuzz", timeout=None)
        on_real, _, real_ops = run_schemathesis(api_server, mode, sid=sbx.id, under="sandboxes")
        found += on_real
        assert "POST /v1/sandboxes/{sid}/pause" in real_ops
        assert rt.sandboxes.snapshots(sbx.id)  # it was reached: paused or snapshotted
    assert not found, "\n\n".join(found)
    # every check there is ran (the built-in ones and ours, but the one ours replaces)
    every = {c.__name__ for c in CHECKS.get_all() if not isinstance(c, type)}
    assert every - {"positive_data_acceptance"} <= ran, every - ran
    # on every operation of the document
    doc = httpx.get(f"{api_server}/openapi.json").json()
    assert ops == {f"{m.upper()} {p}" for p, o in doc["paths"].items() for m in o}


def test_server_counted_no_5xx(api_server: str) -> None:
    """Runs after the conformance tests (same module, same server): the server's own count
    agrees that requests were answered, none with a 5xx."""
    metrics = httpx.get(f"{api_server}/metrics", headers=STATE["headers"]).text
    assert 'torpor_http_requests_total{status="4xx"}' in metrics
    assert 'torpor_http_requests_total{status="2xx"}' in metrics
    assert 'status="5xx"' not in metrics


# -- the same truths, looked at directly ------------------------------------------------

@pytest.fixture()
def client(api_home: Path, api_engine: Any, tmp_path: Path) -> Iterator[TestClient]:
    rt = make_runtime(api_home, api_engine, tmp_path / "allow.db")
    app = create_app(rt, auth=True, workers=0)
    tok = app.state.tokens.create("t1", ["drive"])[0]
    with TestClient(app, headers={"Authorization": f"Bearer {tok}"},
                    raise_server_exceptions=False) as c:  # fmt: skip
        yield c
    rt.close()


def allow_of(r: httpx.Response) -> list[str]:
    return [m.strip() for m in r.headers["allow"].split(",")]


def test_options_and_405_name_the_paths_methods(client: TestClient) -> None:
    r = client.options("/v1/sessions")
    assert r.status_code == 204 and {"GET", "POST", "OPTIONS"} == set(allow_of(r))
    r = client.delete("/v1/sessions")
    assert r.status_code == 405 and set(allow_of(r)) == {"GET", "POST", "OPTIONS"}
    assert r.headers["content-type"].startswith("application/json")
    assert "DELETE is not allowed" in r.json()["message"] and r.json()["status"] == 405
    # every path of the document: OPTIONS names exactly its methods
    doc = client.get("/openapi.json").json()
    for path, ops in doc["paths"].items():
        url = path.replace("{sid}", "ses-any")
        want = {m.upper() for m in ops} | {"OPTIONS"}
        assert set(allow_of(client.options(url))) == want, path
        wrong = "PUT" if "PUT" not in want else "PATCH"
        r = client.request(wrong, url)
        assert r.status_code == 405 and set(allow_of(r)) == want, (path, r.text)


def test_every_error_is_declared_with_its_body(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    error = doc["components"]["schemas"]["ErrorOut"]
    assert error["required"] == ["message", "status"] and error["additionalProperties"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            statuses = {int(s) for s in op["responses"]}
            assert {400, 413, 500} <= statuses, (method, path)
            if path.startswith("/v1/sessions/{sid}"):
                assert {401, 403, 404, 422} <= statuses, (method, path)
            for status, resp in op["responses"].items():
                if int(status) >= 400:
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorOut", (method, path, status)
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # FastAPI's, not ours


def test_model_form_in_the_schema_is_what_the_server_takes(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    model = jsonschema.Draft202012Validator(
        doc["components"]["schemas"]["SessionIn"]["properties"]["model"])
    for ok in ("openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5", "OpenAI:x",
               "script:/tmp/turns.jsonl", "openai:meta-llama/Llama-3.1-8B-Instruct"):
        assert model.is_valid(ok), ok
    for bad in ("000", "gpt-4o", "openai:", "openai: x", "nope:x", " openai:x", "scripted"):
        assert not model.is_valid(bad), bad
    for bad in ("000", "openai:x\n"):  # (Python's `$` takes a newline before the end)
        r = client.post("/v1/sessions", json={"model": bad})
        assert r.status_code == 422 and "provider:name" in r.json()["message"], r.text
    r = client.post("/v1/sessions", json={"model": "OpenAI:gpt-4o-mini"})
    assert r.status_code == 201, r.text
    # script: is the provider's form, refused for this server's setting, not the form
    r = client.post("/v1/sessions", json={"model": "script:/tmp/turns.jsonl"})
    assert r.status_code == 422 and "--scripts DIR" in r.json()["message"]
    image = jsonschema.Draft202012Validator(
        doc["components"]["schemas"]["SessionIn"]["properties"]["image"])
    assert image.is_valid("base") and not image.is_valid("my image")
    r = client.post("/v1/sessions", json={"model": "openai:x", "image": "my image"})
    assert r.status_code == 422
    # a value of another JSON type than the schema's is refused, not converted; an
    # integer may be written 3.0, as JSON Schema has it
    for keep, status in ((False, 422), ("3", 422), (3.5, 422), (3.0, 201), (3, 201)):
        r = client.post("/v1/sessions", json={"model": "openai:x",
                                              "policy": {"keep_snapshots": keep}})
        assert r.status_code == status, (keep, r.text)

