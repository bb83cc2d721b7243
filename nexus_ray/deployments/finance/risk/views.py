"""risk-assessment's routes under ``/finance/v1/risk``.

Who may do what: scoring an application needs the read scope (it changes nothing); storing
applications for a batch needs write; training, batch runs, their records and scores, the model
registry, promotion and rollback are the administrator's (they change what every score is).
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path

from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.exceptions import ValidationFailed

from . import service
from .models import (
    Application,
    ApplicationsCreate,
    ApplicationsCreated,
    BatchCreate,
    JobRead,
    ModelRead,
    PromotionCreate,
    PromotionRead,
    RiskScore,
    ScoreRow,
    TrainingCreate,
)

SCOPES = scopes_of("puabo-blac-risk-assessment")
router = APIRouter()

ModelId = Annotated[UUID, Path(description="The model's id.")]
JobId = Annotated[UUID, Path(description="The job's id.")]


@router.post("/score", response_model=RiskScore, summary="Score an application: probability of default, band, "
             "reasons")
async def score(body: Application, principal: Principal = authorize(SCOPES.read)) -> RiskScore:
    return await service.score(application=body)


@router.get("/models", response_model=Page[ModelRead], summary="Stored models, newest first")
async def list_models(page: PageRequest = page_params(default=20, maximum=100),
                      principal: Principal = authorize(SCOPES.admin)) -> Page[ModelRead]:
    return await service.list_models(page=page)


@router.get("/models/active", response_model=ModelRead, summary="The model scores come from now",
            responses={404: {"description": "No model is active yet: none has been trained."}})
async def active_model(principal: Principal = authorize(SCOPES.read)) -> ModelRead:
    return await service.active_model()


@router.get("/models/{model_id}", response_model=ModelRead, summary="A model with its metrics")
async def get_model(model_id: ModelId, principal: Principal = authorize(SCOPES.admin)) -> ModelRead:
    return await service.get_model(model_id=model_id)


@router.post("/models/{model_id}/promote", response_model=PromotionRead,
             summary="Make this model the active one (audited)")
async def promote(model_id: ModelId, body: PromotionCreate | None = None,
                  principal: Principal = authorize(SCOPES.admin)) -> PromotionRead:
    return await service.promote(model_id=model_id, actor=principal.subject, reason=body.reason if body else "")


@router.post("/models/rollback", response_model=PromotionRead,
             summary="Re-activate the model that was active before this one (audited)")
async def rollback(body: PromotionCreate | None = None, principal: Principal = authorize(SCOPES.admin)
                   ) -> PromotionRead:
    return await service.rollback(actor=principal.subject, reason=body.reason if body else "")


@router.get("/promotions", response_model=Page[PromotionRead], summary="Who activated which model, newest first")
async def promotions(page: PageRequest = page_params(default=50, maximum=500),
                     principal: Principal = authorize(SCOPES.admin)) -> Page[PromotionRead]:
    return await service.promotions(page=page)


@router.post("/training", status_code=202, response_model=JobRead, summary="Train a new model (a Ray job)")
async def train(body: TrainingCreate | None = None, principal: Principal = authorize(SCOPES.admin)) -> JobRead:
    body = body or TrainingCreate()
    return await service.start_job(kind="train", params=body.model_dump(), requested_by=principal.subject)


@router.post("/applications", status_code=201, response_model=ApplicationsCreated,
             summary="Store applications for batch scoring")
async def store_applications(body: ApplicationsCreate, principal: Principal = authorize(SCOPES.write)
                             ) -> ApplicationsCreated:
    return ApplicationsCreated(ids=await service.store_applications(owner=principal.subject, items=body.items))


@router.post("/batches", status_code=202, response_model=JobRead,
             summary="Score stored applications as Ray tasks (a Ray job)")
async def batch(body: BatchCreate, principal: Principal = authorize(SCOPES.admin)) -> JobRead:
    if body.to_id is not None and body.to_id < body.from_id:
        raise ValidationFailed.for_field("to_id", "must not be below from_id")
    return await service.start_job(kind="score", params=body.model_dump(), requested_by=principal.subject)


@router.get("/jobs/{job_id}", response_model=JobRead, summary="A training or batch job: status and progress")
async def get_job(job_id: JobId, principal: Principal = authorize(SCOPES.admin)) -> JobRead:
    return await service.get_job(job_id=job_id)


@router.get("/jobs/{job_id}/scores", response_model=Page[ScoreRow], summary="Scores written by a batch job")
async def batch_scores(job_id: JobId, page: PageRequest = page_params(default=100, maximum=1000),
                       principal: Principal = authorize(SCOPES.admin)) -> Page[ScoreRow]:
    return await service.batch_scores(job_id=job_id, page=page)
