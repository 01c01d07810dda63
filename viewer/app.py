"""FastAPI application: one router per resource; health is the only open route."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel

from storage.archive import Archive
from storage.audit import AuditTrail
from storage.intake import Intake
from storage.stats import archive_counts
from viewer.admin import router as admin_router
from viewer.archive_admin import router as archive_admin_router
from viewer.auth import (
    CLINICAL_READERS,
    Caller,
    caller,
    oidc_verifier,
    requires,
    signing_key,
)
from viewer.console import router as console_router
from viewer.console_api import router as console_api_router
from viewer.dicomweb import router as dicomweb_router
from viewer.epr import iid_router, install_link_errors
from viewer.epr import router as epr_router
from viewer.images import ImageService
from viewer.migration_admin import router as migration_admin_router
from viewer.orders import router as orders_router
from viewer.research import ResearchViews
from viewer.research import router as research_router
from viewer.research_admin import router as research_admin_router
from viewer.tiers_admin import router as tiers_admin_router
from viewer.upload import router as upload_router

# Counts and paths of the clinical archive: not for research or teaching roles.
StatusReader = Annotated[Caller, Depends(requires(CLINICAL_READERS, "the archive status"))]


class Health(BaseModel):
    status: str


def install_docs(app: FastAPI) -> None:
    """The OpenAPI schema and Swagger UI at FastAPI's usual paths, for any valid token (or the
    admin console's session cookie, which a browser sends when the UI fetches the schema)."""

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(who: Annotated[Caller, Depends(caller)]) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request, who: Annotated[Caller, Depends(caller)]) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{app.title} API")


def create_app(
    archive: Archive,
    runtime_status: Callable[[], dict[str, Any]],
    intake: Intake | None = None,
) -> FastAPI:
    trail = AuditTrail(archive.sessions)
    research = ResearchViews(archive.settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        trail.close()  # pending audit events are written before the process exits
        research.close()

    # FastAPI's own schema and docs routes answer anyone: install_docs serves them behind auth
    app = FastAPI(
        title="pacsbroker",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    app.state.signing_key = signing_key(archive.settings.data_dir)
    app.state.oidc = oidc_verifier(archive.settings)
    if archive.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=archive.settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
        )

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/api/v1/status", tags=["admin"])
    def status(who: StatusReader) -> dict[str, Any]:
        with archive.sessions() as session:
            counts = archive_counts(session)
        return {"archive": counts, **runtime_status()}

    # Routes are matched one by one in the order they were added, so the viewers' hot paths
    # (DICOMweb) come first; no other router's paths start with /dicomweb.
    images = ImageService(archive)
    app.include_router(dicomweb_router(archive, images, trail, intake))
    app.include_router(admin_router(archive))
    app.include_router(archive_admin_router(archive))
    app.include_router(epr_router(archive, images, trail, intake))
    app.include_router(iid_router(archive, trail))
    app.include_router(orders_router(archive))
    app.include_router(upload_router(archive, trail, intake))
    app.include_router(tiers_admin_router(archive))
    app.include_router(migration_admin_router(archive))
    app.include_router(console_api_router(archive))
    app.include_router(console_router())
    app.include_router(research_router(research))
    app.include_router(research_admin_router(archive, research))
    install_link_errors(app)
    return app
