"""Routes of the memory methods and the policies, each the local API method of the same name.

They are plain functions: FastAPI runs them in its thread pool, so a store read never blocks
the event loop that streams runs. Each works on the request's tenant's view of the API.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from athena.api import MemoryAPI
from athena.service import responses, schemas
from athena.service.asgi import tenant_of
from athena.service.gate import allowed_policy_names
from athena.service.http_runs import errors, service_of
from orchestrator.errors import PolicyError, PolicyNotFoundError

router = APIRouter(prefix="/v1", tags=["memory"])
_ERRORS = errors(400, 401, 404, 413, 422, 503)
_READS = errors(400, 401, 422, 503)


def _api(request: Request) -> MemoryAPI:
    return service_of(request).view(tenant_of(request.scope))


@router.post("/memories", response_model=responses.NewId, responses=_ERRORS)
def remember(body: schemas.RememberBody, request: Request) -> Response:
    """Remember a piece of knowledge; return its id."""
    return JSONResponse(
        {"id": _api(request).remember(body.content, body.memory_type, body.context, body.tags)}
    )


@router.post("/recall", response_model=responses.RecallResults, responses=_ERRORS)
def recall(body: schemas.RecallBody, request: Request) -> Response:
    """What the tenant's store knows that best matches the query, best first."""
    hits = _api(request).recall(body.query, body.limit, body.context, body.kinds)
    return JSONResponse({"results": hits})


@router.delete("/records/{record_id}", response_model=responses.Forgotten, responses=_ERRORS)
def forget(record_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)], request: Request) -> Response:
    """Forget a record of any kind by id (false when the tenant has no such record)."""
    return JSONResponse({"forgotten": _api(request).forget(record_id)})


@router.post("/events", response_model=responses.NewId, responses=_ERRORS)
def remember_event(body: schemas.EventBody, request: Request) -> Response:
    """Remember something that happened; return its id."""
    api = _api(request)
    return JSONResponse(
        {"id": api.remember_event(body.event_type, body.content, body.outcome, body.context)}
    )


@router.post("/events/search", response_model=responses.EventResults, responses=_ERRORS)
def recall_events(body: schemas.EventSearchBody, request: Request) -> Response:
    """Events, newest first, or ranked by the query."""
    hits = _api(request).recall_events(
        body.query, body.event_type, body.start_date, body.end_date, body.limit
    )
    return JSONResponse({"results": hits})


@router.post("/procedures", response_model=responses.NewId, responses=_ERRORS)
def remember_procedure(body: schemas.ProcedureBody, request: Request) -> Response:
    """Remember how to do something, as ordered steps; return its id."""
    api = _api(request)
    return JSONResponse(
        {"id": api.remember_procedure(body.name, list(body.steps), body.category, body.context)}
    )


@router.post(
    "/procedures/{procedure_id}/code", response_model=responses.GeneratedCode, responses=_ERRORS
)
def generate_procedure_code(
    procedure_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)],
    body: schemas.GenerateBody,
    request: Request,
) -> Response:
    """Turn a remembered procedure into runnable Python, and validate it."""
    return JSONResponse(_api(request).generate_procedure_code(procedure_id))


@router.post("/procedures/validate", response_model=responses.CodeValidation, responses=_ERRORS)
def validate_procedure_code(body: schemas.ValidateBody, request: Request) -> Response:
    """Check Python code: syntax, security, docstrings, error handling, type hints."""
    return JSONResponse(_api(request).validate_procedure_code(body.code, body.procedure_id))


@router.post("/entities", response_model=responses.NewId, responses=_ERRORS)
def remember_entity(body: schemas.EntityBody, request: Request) -> Response:
    """Remember an entity; the same type and name again gives the same id."""
    return JSONResponse(
        {"id": _api(request).remember_entity(body.name, body.entity_type, body.context)}
    )


@router.post("/relations", response_model=responses.NewId, responses=_ERRORS)
def relate_entities(body: schemas.RelationBody, request: Request) -> Response:
    """Link two records; return the relation's id."""
    api = _api(request)
    relation = api.relate_entities(body.source_id, body.target_id, body.relation_type, body.context)
    return JSONResponse({"id": relation})


@router.post("/consolidate", response_model=responses.ConsolidationReport, responses=_ERRORS)
def consolidate(body: schemas.ConsolidateBody, request: Request) -> Response:
    """Learn patterns from recent runs and events, and tidy the memories."""
    return JSONResponse(_api(request).consolidate(body.strategy, body.days_back))


@router.get("/whoami", response_model=responses.Identity, responses=errors(401), tags=["policies"])
def whoami(request: Request) -> Response:
    """The tenant the token names: its name, the policies it may use, its in-flight limit."""
    tenant = tenant_of(request.scope)
    return JSONResponse(
        {
            "tenant": tenant.name,
            "policies": list(allowed_policy_names(tenant)),
            "max_in_flight": tenant.max_in_flight,
        }
    )


@router.get(
    "/policies", response_model=responses.PolicyList, responses=errors(401, 503), tags=["policies"]
)
def list_policies(request: Request) -> Response:
    """The shipped policies this tenant may use, each described."""
    allowed = set(tenant_of(request.scope).policies)
    return JSONResponse(
        {"policies": [p for p in _api(request).list_policies() if p["name"] in allowed]}
    )


@router.get(
    "/policies/{name:text}",
    response_model=responses.PolicyDescription,
    responses=_READS,
    tags=["policies"],
)
def get_policy(name: str, request: Request) -> Response:
    """One shipped policy, described (400 when unknown or not the tenant's to use)."""
    tenant = tenant_of(request.scope)
    try:
        described = _api(request).get_policy(name)
    except PolicyNotFoundError as exc:  # name the tenant's policies, not every shipped one
        raise PolicyNotFoundError(
            f"unknown policy {name!r}: tenant {tenant.name!r} may use {', '.join(tenant.policies)}"
        ) from exc
    if described["name"] not in tenant.policies:
        raise PolicyError(
            f"policy {described['name']!r} is not one tenant {tenant.name!r} may use; "
            f"it may use: {', '.join(tenant.policies)}"
        )
    return JSONResponse(described)
