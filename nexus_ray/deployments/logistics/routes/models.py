"""route-optimizer's schemas: a job (its problem, back end, time limit) and what it read back.

The problem itself is :class:`nexus_ray.compute.vrp.VrpProblem` (the JSON problem format,
whose JSON schema is served at ``GET .../schema/problem``); a job may instead carry a Solomon
instance as text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nexus_ray.compute.vrp import DEFAULT_BACKEND, Backend, Objective, VrpProblem, VrpSolution, read_solomon

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
KEY_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,255}$"


class JobCreate(BaseModel):
    """A routing problem to solve, as JSON (``problem``) or as a Solomon instance (``solomon``)."""

    model_config = ConfigDict(extra="forbid")

    problem: VrpProblem | None = Field(None, description="The problem in the JSON format.")
    solomon: str | None = Field(None, max_length=500_000, description="The problem as Solomon text.")
    backend: Backend = Field(DEFAULT_BACKEND, description="Solver: pyvrp (default) or ortools.")
    objective: Objective = Field(
        "vehicles", description="vehicles: fewest vehicles, then distance (Solomon's); distance: distance alone.",
    )
    time_limit_s: float = Field(10.0, gt=0, description="Wall-clock limit of the solve, seconds.")
    idempotency_key: str | None = Field(
        None, pattern=KEY_PATTERN, description="A retry with the same key returns the first job.",
    )

    @field_validator("solomon")
    @classmethod
    def _readable(cls, text: str | None) -> str | None:
        if text is not None:
            read_solomon(text)  # ValueError: 422 naming solomon
        return text

    @model_validator(mode="after")
    def _one_problem(self) -> JobCreate:
        if (self.problem is None) == (self.solomon is None):
            raise ValueError("give exactly one of problem and solomon")
        return self

    def parsed(self) -> VrpProblem:
        """The problem, whichever way it came."""
        return self.problem if self.problem is not None else read_solomon(self.solomon or "")


class JobRead(BaseModel):
    """A solve job: its state and, once succeeded, its solution (routes with arrival times)."""

    id: UUID
    status: JobStatus
    name: str
    customers: int
    backend: str
    objective: str
    time_limit_s: float
    owner: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    solution: VrpSolution | None = Field(None, description="Present once the job succeeded.")
