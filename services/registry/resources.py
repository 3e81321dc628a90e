"""The registry's resources, declared once for the CRUD engine, the API and the importer."""

from __future__ import annotations

from services.registry import models
from services.registry.repository import Dependent, Filter, Resource

CUSTOMERS = Resource(
    label="customer",
    table="customers",
    view="customers",
    customer_column="id",
    out=models.Customer,
    viewer_out=models.CustomerView,
    internal=frozenset({"tier", "lifecycle_stage"}),
    sortable=frozenset({"id", "name", "tier", "industry", "lifecycle_stage", "created_at"}),
    default_sort="name",
    filters={
        "tier": Filter("tier"),
        "industry": Filter("industry"),
        "lifecycle_stage": Filter("lifecycle_stage"),
    },
    search_columns=("name", "industry"),
    dependents=(Dependent("projects", "customer_id", "project(s)"),),
)

PROJECTS = Resource(
    label="project",
    table="projects",
    view="project_details",
    customer_column="customer_id",
    out=models.Project,
    viewer_out=models.ProjectView,
    internal=frozenset({"contract_value"}),
    sortable=frozenset(
        {
            "id",
            "name",
            "customer_name",
            "contract_value",
            "go_live_date",
            "status",
            "devices",
            "created_at",
        }
    ),
    default_sort="name",
    filters={"customer_id": Filter("customer_id"), "status": Filter("status")},
    search_columns=("name", "customer_name"),
    dependents=(
        Dependent("devices", "project_id", "device(s)"),
        Dependent("deliveries", "project_id", "delivery(ies)"),
        Dependent("decisions", "project_id", "decision(s)"),
    ),
)

FEATURES = Resource(
    label="feature",
    table="features",
    view="features",
    out=models.Feature,
    sortable=frozenset({"id", "key", "name", "product_line", "kind", "created_at"}),
    default_sort="key",
    filters={
        "product_line": Filter("product_line"),
        "kind": Filter(
            "kind",
            description="interactive: judged by use; standing (alarms, safeguards, schedules): "
            "judged by being enabled on devices",
        ),
    },
    search_columns=("key", "name", "description"),
    dependents=(
        Dependent("deliveries", "feature_id", "delivery(ies)"),
        Dependent("decisions", "feature_id", "decision(s)"),
    ),
)

DELIVERIES = Resource(
    label="delivery",
    table="deliveries",
    view="delivery_details",
    customer_column="customer_id",
    out=models.Delivery,
    viewer_out=models.DeliveryView,
    internal=frozenset(
        {"cost_person_days", "contract_line_value", "business_score", "strategic", "notes"}
    ),
    sortable=frozenset(
        {
            "id",
            "feature_key",
            "status",
            "delivered_on",
            "cost_person_days",
            "contract_line_value",
            "business_score",
            "created_at",
        }
    ),
    default_sort="feature_key",
    filters={
        "project_id": Filter("project_id"),
        "feature_id": Filter("feature_id"),
        "status": Filter("status"),
        "strategic": Filter("strategic"),
    },
    search_columns=("feature_key", "feature_name", "notes"),
)

DEVICES = Resource(
    label="device",
    table="devices",
    view="device_details",
    customer_column="customer_id",
    out=models.Device,
    sortable=frozenset(
        {"id", "serial", "model", "firmware", "site", "status", "last_seen", "created_at"}
    ),
    default_sort="serial",
    filters={
        "project_id": Filter("project_id"),
        "status": Filter("status"),
        "model": Filter("model"),
        "firmware": Filter("firmware"),
        "site": Filter("site"),
        "tag": Filter("tags", "contains", "devices carrying this tag"),
    },
    search_columns=("serial", "site"),
)
