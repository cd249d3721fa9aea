"""Schemathesis against the running service: requests generated from `/openapi.json` (valid and
not), sent over real HTTP; no answer may be a 5xx, and every answer must match the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from retrieval.encoders.factory import STARTER_DIR  # noqa: E402
from tests.helpers.live_server import serve_collection  # noqa: E402

pytestmark = pytest.mark.skipif(not (STARTER_DIR / "xmodal_model.json").is_file(),
                                reason="the starter weights are not in this checkout")


@pytest.fixture(scope="module")
def live_url(tmp_path_factory) -> str:
    from retrieval.compose import run_index
    from retrieval.demo import write_collection
    from retrieval.settings import Settings

    root: Path = tmp_path_factory.mktemp("schema")
    write_collection(root / "media", images=16, sounds=6, seed=2, concepts=8)
    run_index(Settings(db_dir=root / "db", model="starter", workers=1), [root / "media"])
    with serve_collection(root / "db") as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(live_url):
    return schemathesis.openapi.from_url(f"{live_url}/openapi.json")


# Schemathesis' own pytest plugin (`from_fixture`) does not run on pytest 9 yet; driving its
# Hypothesis strategy directly does the same work.
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_5xx_and_every_response_matches_the_schema(api_schema, mode):
    strategy = api_schema.as_strategy(schemathesis.GenerationMode(mode))
    seen: set[str] = set()

    @given(case=strategy)
    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        seen.add(f"{case.method} {case.path}")
        # A schema-valid upload is any bytes, but only real images and sounds can be searched
        # with: a 415 or 422 for random bytes is the right answer, not a broken promise.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    check()
    # Every operation was exercised, uploads included.
    assert {"POST /search/text", "POST /search/image", "POST /search/audio", "GET /items/{item_id}/media"} <= seen


def test_stateful_runs_follow_the_links_with_no_5xx(api_schema):
    """Sequences built from the OpenAPI links (a search's first hit -> its item, file, thumbnail,
    more like it; its generated picture): every step must answer per the schema, never a 5xx."""
    seen: list[tuple[str, int]] = []

    class Workflow(api_schema.as_state_machine()):
        def after_call(self, response, case):
            seen.append((f"{case.method} {case.path}", response.status_code))

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, excluded_checks=[positive_data_acceptance], transport_kwargs=kwargs)

    Workflow.run(settings=settings(max_examples=40, stateful_step_count=5, deadline=None, derandomize=True,
                                   database=None, suppress_health_check=list(HealthCheck)))
    # Random ids almost never name one of the 22 items: a file served means a link was followed.
    served = {step for step, status in seen if status == 200}
    assert {"GET /items/{item_id}/media", "GET /items/{item_id}/thumbnail"} & served, sorted(set(seen))
    assert "POST /search/item" in served
