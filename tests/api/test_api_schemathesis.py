"""Property-based requests from /openapi.json (schemathesis), valid and invalid: no 5xx
for any of them, and every 4xx carries a JSON body with a message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.api.conftest import make_runtime, serve
from torpor.api.app import Limits, create_app

TOKEN: dict[str, str] = {}
MAX_EXAMPLES = 20


@schemathesis.check
def json_message_on_4xx(ctx: Any, response: Any, case: Any) -> None:
    if 400 <= response.status_code < 500:
        ctype = response.headers.get("content-type", [""])
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        assert ctype.startswith("application/json"), f"{response.status_code} is {ctype}"
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("message"), str) \
            and body["message"], body  # fmt: skip


@pytest.fixture(scope="module")
def api_schema(api_home: Path, api_engine: Any, tmp_path_factory: Any) -> Iterator[Any]:
    db = tmp_path_factory.mktemp("schemathesis") / "st.db"
    rt = make_runtime(api_home, api_engine, db)
    # no worker threads: generated sessions never start sandboxes
    app = create_app(rt, auth=True, workers=0, limits=Limits(max_body_bytes=64 * 1024))
    TOKEN["value"] = app.state.tokens.create("t-fuzz", ["drive", "exec", "admin"])[0]
    # one real session, so that some generated requests can hit it
    rt.create_session(model="openai:none", id="ses-fuzz", tenant="t-fuzz")
    with serve(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")
    rt.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_no_5xx_and_json_4xx(api_schema: Any, mode: GenerationMode) -> None:
    headers = {"Authorization": f"Bearer {TOKEN['value']}"}
    ops = [r.ok() for r in api_schema.get_all_operations()]
    assert len(ops) >= 14
    ran = 0
    for op in ops:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case: Any) -> None:
            if case.operation.path.endswith("/events") and mode is GenerationMode.POSITIVE:
                # a real session's stream never ends: this one asks for unknown ids (404)
                case.path_parameters["sid"] = f"{case.path_parameters.get('sid', '')}-x"
            case.call_and_validate(headers=headers, timeout=10,
                                   checks=[not_a_server_error, json_message_on_4xx])  # fmt: skip

        try:
            check()
        except Unsatisfiable:  # nothing in this operation can be made invalid (no inputs)
            assert mode is GenerationMode.NEGATIVE
            continue
        ran += 1
    assert ran >= 10
    # the server's own count agrees: requests were answered, none with a 5xx
    metrics = httpx.get(api_schema.get_base_url().rstrip("/") + "/metrics", headers=headers).text
    assert 'torpor_http_requests_total{status="4xx"}' in metrics
    assert 'status="5xx"' not in metrics
