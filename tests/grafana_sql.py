"""What Grafana sends to PostgreSQL for a panel: its SQL with template variables, the global
`$__interval`-style variables and the PostgreSQL macros expanded, as Grafana does it.

Grafana cannot run on this project's machines, so the dashboards' SQL is checked by
expanding it here and running it against a real database. The rules follow Grafana's own
code, in the order it applies them:

1. the browser replaces template variables (`$project`, `${project}`): a multi-value or
   include-All variable becomes a list of quoted literals `'1','2'`; a single-value one is
   inserted as is, with `'` doubled (public/app/features/plugins/sql/datasource/SqlDatasource.ts,
   `interpolateVariable`; PostgreSQL's `quoteLiteral`);
2. the server replaces `$__interval_ms`, `$__interval`, `$__unixEpochFrom()` and
   `$__unixEpochTo()` (pkg/tsdb/sqleng/sql_engine.go, `Interpolate`);
3. the PostgreSQL macro engine replaces every `$__name(args)`
   (pkg/tsdb/grafana-postgresql-datasource/macros.go): `$__timeFilter(c)` is
   `c BETWEEN '<from>' AND '<to>'` (RFC 3339, UTC, nanoseconds without trailing zeros),
   `$__timeGroup(c,'1h')` is `floor(extract(epoch from c)/3600)*3600`, or
   `time_bucket('3600.000s',c)` when the data source has TimescaleDB turned on, and
   `$__timeGroupAlias` adds `AS "time"` (as does `$__timeGroup` directly followed by a comma,
   for pre-5.3 dashboards); an unknown macro is an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

# Grafana's macro pattern: arguments cannot contain a closing parenthesis.
MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
# Template variable references Grafana's templateSrv understands (without the legacy [[x]]).
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
CALENDAR = re.compile(r"^(\d+)([dw])$")
UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class MacroError(ValueError):
    """The SQL would not run in Grafana either (an unknown macro or variable, a bad interval)."""


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Variable:
    """A template variable's current value(s) and how Grafana formats it."""

    values: tuple[str, ...]
    multi: bool = False
    include_all: bool = False

    def formatted(self) -> str:
        if self.multi or self.include_all:
            return ",".join(quote_literal(v) for v in self.values)
        if len(self.values) != 1:
            raise MacroError(f"a single-value variable needs one value, not {self.values!r}")
        return self.values[0].replace("'", "''")


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def go_rfc3339nano(moment: datetime) -> str:
    """Go's time.RFC3339Nano of a UTC time: no trailing zeros in the fraction, `Z`."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_interval(text: str) -> timedelta:
    """gtime.ParseInterval: `5m`, `1h30m`, `500ms`, `1d`, `2w` (months and years are not
    fixed lengths and not used here)."""
    text = text.strip()
    if calendar := CALENDAR.match(text):
        days = int(calendar[1]) * (7 if calendar[2] == "w" else 1)
        return timedelta(days=days)
    pos, seconds = 0, 0.0
    for part in DURATION_PART.finditer(text):
        if part.start() != pos:
            break
        seconds += float(part[1]) * UNIT_SECONDS[part[2]]
        pos = part.end()
    if pos == 0 or pos != len(text):
        raise MacroError(f"error parsing interval {text!r}")
    return timedelta(seconds=seconds)


def format_interval(interval: timedelta) -> str:
    """gtime.FormatInterval: the largest whole unit (`1d`, `2h`, `30m`, `15s`, `100ms`)."""
    ms = int(interval / timedelta(milliseconds=1))
    for unit, size in (
        ("y", 365 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ):
        if ms >= size:
            return f"{ms // size}{unit}"
    return "1ms"


def go_float(value: float) -> str:
    """Go's %v of a float64 for the values intervals take (`3600`, `0.5`)."""
    return str(int(value)) if value == int(value) else repr(value)


def interpolate_variables(sql: str, variables: Mapping[str, Variable]) -> str:
    """Step 1: template variables. Grafana's own (`$__…`) are left for the server; an
    unknown name is an error here (Grafana would leave it and the SQL would fail)."""

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name.startswith("__"):
            return match[0]
        if match[3] is not None:
            raise MacroError(f"variable format {match[3]!r} is not supported here")
        if name not in variables:
            raise MacroError(f"unknown template variable ${name}")
        return variables[name].formatted()

    return VARIABLE.sub(replace, sql)


def interpolate_globals(sql: str, time_range: TimeRange, interval: timedelta) -> str:
    """Step 2: sqleng.Interpolate."""
    ms = int(interval / timedelta(milliseconds=1))
    sql = sql.replace("$__interval_ms", str(ms))
    sql = sql.replace("$__interval", format_interval(interval))
    sql = sql.replace("$__unixEpochFrom()", str(int(time_range.start.timestamp())))
    return sql.replace("$__unixEpochTo()", str(int(time_range.end.timestamp())))


def expand_macros(sql: str, time_range: TimeRange, *, timescaledb: bool) -> str:
    """Step 3: the PostgreSQL macro engine."""
    original = sql

    def replace(match: re.Match[str]) -> str:
        name = match[1]
        if name == "__timeGroup":
            # Grafana looks at the first occurrence of this exact call in the whole query.
            end = original.find(match[0]) + len(match[0])
            if original[end : end + 1] == ",":
                name = "__timeGroupAlias"
        args = [arg.strip(" ") for arg in match[2].split(",")]
        return _macro(name, args, time_range, timescaledb=timescaledb)

    return MACRO.sub(replace, sql)


def _macro(name: str, args: Sequence[str], time_range: TimeRange, *, timescaledb: bool) -> str:
    start, end = go_rfc3339nano(time_range.start), go_rfc3339nano(time_range.end)
    column = args[0] if args and args[0] else None
    if name in ("__time", "__timeEpoch", "__timeFilter", "__unixEpochFilter") and not column:
        raise MacroError(f"missing time column argument for macro {name}")
    match name:
        case "__time":
            return f'{column} AS "time"'
        case "__timeEpoch":
            return f'extract(epoch from {column}) as "time"'
        case "__timeFilter":
            return f"{column} BETWEEN '{start}' AND '{end}'"
        case "__timeFrom":
            return f"'{start}'"
        case "__timeTo":
            return f"'{end}'"
        case "__timeGroup" | "__timeGroupAlias":
            if len(args) < 2:
                raise MacroError(f"macro {name} needs time column and interval")
            seconds = parse_interval(args[1].strip("'")).total_seconds()
            if timescaledb:
                group = f"time_bucket('{seconds:.3f}s',{args[0]})"
            else:
                group = (
                    f"floor(extract(epoch from {args[0]})/{go_float(seconds)})*{go_float(seconds)}"
                )
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        case "__unixEpochFilter":
            first, last = int(time_range.start.timestamp()), int(time_range.end.timestamp())
            return f"{column} >= {first} AND {column} <= {last}"
        case _:
            raise MacroError(f"unknown macro {name!r}")


def render(
    sql: str,
    time_range: TimeRange,
    interval: timedelta,
    variables: Mapping[str, Variable],
    *,
    timescaledb: bool,
) -> str:
    """The SQL Grafana's PostgreSQL data source runs for a panel target or variable query."""
    sql = interpolate_variables(sql, variables)
    sql = interpolate_globals(sql, time_range, interval)
    return expand_macros(sql, time_range, timescaledb=timescaledb)


# --- the committed dashboards and provisioning ----------------------------------------------

GRAFANA_DIR = Path(__file__).resolve().parents[1] / "dashboards" / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "fieldtrack.yaml"
DASHBOARD_PROVIDERS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "fieldtrack.yaml"
READER_SQL = GRAFANA_DIR / "reader.sql"


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON under dashboards/grafana/dashboards, by file name."""
    return {
        path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


def provisioned_datasource() -> dict[str, Any]:
    loaded = yaml.safe_load(DATASOURCES_FILE.read_text())
    [datasource] = loaded["datasources"]
    return dict(datasource)


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """All panels, including those inside collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def query_variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [v for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "query"]


def variable_sql(variable: Mapping[str, Any]) -> str:
    """A query variable's SQL (older dashboards keep it as a string, newer as {query: …})."""
    query = variable.get("query")
    return str(query["query"] if isinstance(query, dict) else query)


def custom_options(variable: Mapping[str, Any]) -> list[str]:
    """A custom variable's values: its query split at unescaped commas, trimmed."""
    return [o.strip().replace("\\,", ",") for o in re.findall(r"(?:\\,|[^,])+", variable["query"])]
