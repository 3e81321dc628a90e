"""The Grafana macro expander (tests/grafana_sql.py) and the dashboards' structure.

The expected strings are what Grafana's PostgreSQL data source produces, written out from its
source (pkg/tsdb/grafana-postgresql-datasource/macros.go, pkg/tsdb/sqleng/sql_engine.go) and
the browser's variable formatting (SqlDatasource.interpolateVariable).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from tests.grafana_sql import (
    DASHBOARD_PROVIDERS_FILE,
    MacroError,
    TimeRange,
    Variable,
    custom_options,
    expand_macros,
    format_interval,
    go_rfc3339nano,
    interpolate_globals,
    interpolate_variables,
    load_dashboards,
    panels,
    parse_interval,
    provisioned_datasource,
    query_variables,
    render,
    variable_sql,
)

RANGE = TimeRange(
    datetime(2017, 4, 21, 5, 1, 17, tzinfo=UTC), datetime(2017, 4, 21, 5, 6, 17, tzinfo=UTC)
)
FROM, TO = "'2017-04-21T05:01:17Z'", "'2017-04-21T05:06:17Z'"


# --- macros ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expanded"),
    [
        ("$__time(time_column)", 'time_column AS "time"'),
        ("$__timeEpoch(time_column)", 'extract(epoch from time_column) as "time"'),
        ("WHERE $__timeFilter(time_column)", f"WHERE time_column BETWEEN {FROM} AND {TO}"),
        ("$__timeFrom()", FROM),
        ("$__timeTo()", TO),
        (
            "GROUP BY $__timeGroup(time_column,'5m')",
            "GROUP BY floor(extract(epoch from time_column)/300)*300",
        ),
        (
            "$__timeGroupAlias(time_column,'5m')",
            'floor(extract(epoch from time_column)/300)*300 AS "time"',
        ),
        ("$__timeGroupAlias(h.hour, 1h)", 'floor(extract(epoch from h.hour)/3600)*3600 AS "time"'),
        ("$__timeGroupAlias(t, '1d')", 'floor(extract(epoch from t)/86400)*86400 AS "time"'),
        ("$__timeGroup(t, '500ms')", "floor(extract(epoch from t)/0.5)*0.5"),
        # pre-5.3 dashboards: a comma right after $__timeGroup means "alias it"
        (
            "SELECT $__timeGroup(t,'1m'), v",
            'SELECT floor(extract(epoch from t)/60)*60 AS "time", v',
        ),
        ("$__unixEpochFilter(epoch)", "epoch >= 1492750877 AND epoch <= 1492751177"),
    ],
)
def test_macros_expand_as_grafana_does(sql: str, expanded: str) -> None:
    assert expand_macros(sql, RANGE, timescaledb=False) == expanded


def test_timescaledb_mode_groups_with_time_bucket() -> None:
    assert (
        expand_macros("$__timeGroup(t,'5m')", RANGE, timescaledb=True)
        == "time_bucket('300.000s',t)"
    )
    assert (
        expand_macros("$__timeGroupAlias(hour, 1h)", RANGE, timescaledb=True)
        == "time_bucket('3600.000s',hour) AS \"time\""
    )


def test_fractional_seconds_are_go_rfc3339nano() -> None:
    moment = datetime(2026, 3, 2, 0, 0, 0, 250000, tzinfo=UTC)
    assert go_rfc3339nano(moment) == "2026-03-02T00:00:00.25Z"
    assert go_rfc3339nano(moment.replace(microsecond=0)) == "2026-03-02T00:00:00Z"


@pytest.mark.parametrize(
    "sql",
    [
        "$__timeFilter()",
        "$__timeGroup(t)",
        "$__timeGroup(t, 'soon')",
        "$__timeBucket(t)",
        "$project(1)",
    ],
)
def test_what_grafana_refuses_is_refused(sql: str) -> None:
    with pytest.raises(MacroError):
        expand_macros(sql, RANGE, timescaledb=False)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1h", 3600), ("1h30m", 5400), ("500ms", 0.5), ("1d", 86400), ("2w", 1_209_600)],
)
def test_intervals_parse_like_gtime(text: str, seconds: float) -> None:
    assert parse_interval(text).total_seconds() == seconds


@pytest.mark.parametrize(
    ("interval", "text"),
    [
        (timedelta(hours=1), "1h"),
        (timedelta(minutes=90), "1h"),
        (timedelta(seconds=30), "30s"),
        (timedelta(days=2), "2d"),
        (timedelta(milliseconds=100), "100ms"),
    ],
)
def test_intervals_format_like_gtime(interval: timedelta, text: str) -> None:
    assert format_interval(interval) == text


def test_global_variables() -> None:
    sql = "$__interval_ms $__interval $__unixEpochFrom() $__unixEpochTo()"
    assert (
        interpolate_globals(sql, RANGE, timedelta(minutes=5)) == "300000 5m 1492750877 1492751177"
    )


# --- template variables ----------------------------------------------------------------------


def test_multi_value_variables_become_quoted_lists() -> None:
    variables = {"project": Variable(("1", "2"), multi=True, include_all=True)}
    assert interpolate_variables("id IN ($project)", variables) == "id IN ('1','2')"
    assert interpolate_variables("id IN (${project})", variables) == "id IN ('1','2')"
    tricky = {"name": Variable(("O'Brien",), include_all=True)}
    assert interpolate_variables("n IN ($name)", tricky) == "n IN ('O''Brien')"


def test_single_value_variables_are_inserted_with_quotes_doubled() -> None:
    assert interpolate_variables("'$v'", {"v": Variable(("a'b",))}) == "'a''b'"
    assert (
        interpolate_variables("interval '$v'", {"v": Variable(("1 hour",))}) == "interval '1 hour'"
    )


def test_grafana_variables_are_left_for_later_and_typos_fail() -> None:
    assert (
        interpolate_variables("$__timeFilter(t) $__interval", {}) == "$__timeFilter(t) $__interval"
    )
    with pytest.raises(MacroError, match="projcet"):
        interpolate_variables("$projcet", {"project": Variable(("1",))})


def test_render_applies_the_three_steps_in_grafanas_order() -> None:
    sql = "SELECT $__timeGroupAlias(t, $__interval), v FROM x WHERE $__timeFilter(t) AND p IN ($p)"
    assert render(
        sql, RANGE, timedelta(hours=1), {"p": Variable(("7",), multi=True)}, timescaledb=False
    ) == (
        'SELECT floor(extract(epoch from t)/3600)*3600 AS "time", v FROM x '
        f"WHERE t BETWEEN {FROM} AND {TO} AND p IN ('7')"
    )


def test_custom_variable_options() -> None:
    assert custom_options({"query": "15 minutes, 1 hour,a\\,b"}) == ["15 minutes", "1 hour", "a,b"]


# --- the dashboards ----------------------------------------------------------------------------

DASHBOARDS = load_dashboards()


def test_the_three_dashboards_are_there() -> None:
    assert {d["uid"] for d in DASHBOARDS.values()} == {
        "fieldtrack-fleet",
        "fieldtrack-ingest",
        "fieldtrack-usage",
    }


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name: str) -> None:
    dashboard = DASHBOARDS[name]
    datasource = provisioned_datasource()
    assert isinstance(dashboard.get("schemaVersion"), int) and dashboard["schemaVersion"] >= 36
    assert dashboard["title"] and dashboard["uid"] and len(dashboard["uid"]) <= 40
    found = panels(dashboard)
    assert found, f"{name} has no panels"
    ids = Counter(panel["id"] for panel in found)
    assert all(n == 1 for n in ids.values()), f"{name}: duplicate panel ids {ids}"
    for panel in found:
        where = f"{name} / {panel.get('title')!r}"
        assert panel.get("title") and panel.get("type"), where
        assert {"x", "y", "w", "h"} <= set(panel.get("gridPos", {})), where
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, where
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": datasource["type"], "uid": datasource["uid"]}, where
        targets = panel.get("targets") or []
        assert targets, f"{where} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), where
        for target in targets:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where
            assert target.get("rawQuery") is True and target.get("rawSql", "").strip(), where
            assert target.get("format") in ("time_series", "table"), where
            if target["format"] == "time_series":
                assert 'AS "time"' in target["rawSql"] or "$__timeGroupAlias" in target["rawSql"], (
                    where
                )
        if "interval" in panel:
            parse_interval(panel["interval"])
    for variable in query_variables(dashboard):
        assert variable["datasource"]["uid"] == datasource["uid"], variable["name"]
        assert variable_sql(variable).strip(), variable["name"]


def test_dashboard_uids_and_titles_are_unique() -> None:
    assert len({d["uid"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)
    assert len({d["title"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)


def test_variables_are_defined_before_use() -> None:
    """A query may only use variables defined earlier (Grafana resolves them in order)."""
    for dashboard in DASHBOARDS.values():
        defined: dict[str, Variable] = {}
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                interpolate_variables(variable_sql(variable), defined)
            defined[variable["name"]] = Variable(("1",), multi=True)
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                interpolate_variables(target["rawSql"], defined)  # raises on an unknown one


def test_datasource_provisioning() -> None:
    datasource = provisioned_datasource()
    assert datasource["type"] == "grafana-postgresql-datasource"
    assert datasource["editable"] is False
    assert datasource["jsonData"]["timescaledb"] is True
    # a secret from the environment, never a value in the file
    assert datasource["secureJsonData"]["password"] == "$FIELDTRACK_GRAFANA_DB_PASSWORD"


def test_dashboard_provider_reads_a_folder() -> None:
    [provider] = yaml.safe_load(DASHBOARD_PROVIDERS_FILE.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert provider["allowUiUpdates"] is False
