from __future__ import annotations

from datetime import date

from fastapi import APIRouter
from psycopg.rows import class_row
from pydantic import BaseModel

from services.analytics.usage import ProjectUsage, project_usage
from services.api.deps import ConnDep, WindowDep
from services.api.errors import NOT_FOUND

router = APIRouter(prefix="/projects", tags=["projects"])


class ProjectSummary(BaseModel):
    id: int
    name: str
    customer_id: int
    customer_name: str
    status: str
    go_live_date: date | None
    devices: int


LIST_PROJECTS = """
SELECT p.id, p.name, p.customer_id, c.name AS customer_name, p.status, p.go_live_date,
       (SELECT count(*) FROM devices d WHERE d.project_id = p.id AND d.status = 'active')::int
           AS devices
FROM projects p JOIN customers c ON c.id = p.customer_id
ORDER BY c.name, p.name
"""


def list_project_summaries(conn: ConnDep) -> list[ProjectSummary]:
    with conn.cursor(row_factory=class_row(ProjectSummary)) as cur:
        return cur.execute(LIST_PROJECTS).fetchall()


@router.get("", response_model=list[ProjectSummary], summary="All projects with their customer")
def list_projects(conn: ConnDep) -> list[ProjectSummary]:
    return list_project_summaries(conn)


@router.get(
    "/{project_id}/usage",
    response_model=ProjectUsage,
    responses=NOT_FOUND,
    summary="Feature usage in a window beside what was delivered",
)
def get_project_usage(project_id: int, conn: ConnDep, window: WindowDep) -> ProjectUsage:
    return project_usage(conn, project_id, window.since, window.until)
