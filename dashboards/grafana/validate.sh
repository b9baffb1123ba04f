#!/usr/bin/env bash
# Validate Grafana dashboard JSON against Grafana's own types (no Grafana server needed).
#
#   dashboards/grafana/validate.sh                 # every dashboards/grafana/*.json
#   dashboards/grafana/validate.sh FILE.json ...   # the given files
#
# 1. Installs, once, into a cache outside the repository (DKNN_GRAFANA_SCHEMA_CACHE, default
#    ~/.cache/dknn-agent/grafana-schema) the npm packages pinned in NPM_PINS: Grafana's published
#    TypeScript types (@grafana/schema) and ts-json-schema-generator.
# 2. Generates, once per (pins, this script), a JSON schema from those types:
#      - the dashboard: raw/dashboard/x/types.gen.d.ts, type Dashboard;
#      - each panel plugin in PANEL_PLUGINS: raw/composable/<plugin>/panelcfg/x/types.gen.d.ts,
#        its Options (panel.options) and, where the plugin has one, its FieldConfig
#        (panel.fieldConfig.defaults.custom).
#    The generated types are strict: every object has additionalProperties: false.
# 3. Runs check-jsonschema (pip package, from the repo's .venv or PATH) on the dashboards.
#
# Three documented adjustments to the generated schema (the Python step below):
#  a. Annotation queries. Grafana's CUE source declares #AnnotationQuery open ("unless
#     datasources have migrated to the target+mapping, they just spread their query into the
#     base object"); the TypeScript types cannot say so, and the generated schema then refuses
#     every Prometheus annotation. We add exactly the top-level fields Grafana's Prometheus data
#     source reads (expr, step, titleFormat, textFormat, tagKeys, useValueForTime), typed; any
#     other unknown annotation field still fails.
#  b. Panels. The dashboard type leaves panel.options and the field config's custom block as
#     free-form objects; we bind them, by panel type, to that plugin's own generated Options and
#     FieldConfig, and restrict panel.type to PANEL_PLUGINS so that no panel goes unchecked.
#     Using another panel type means adding it to PANEL_PLUGINS (validation says so).
#  c. Dashboard panels: "Panel or RowPanel" is chosen by type == "row" instead of anyOf; the same
#     documents pass, and an error inside a panel is reported at its path, not as "no match".
#
# Exit status: 0 valid; 1 invalid (check-jsonschema lists every error); 2 a tool is missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

NPM_PINS=("@grafana/schema@13.2.3" "ts-json-schema-generator@2.4.0" "typescript@5.9.3")
# Grafana panel plugin id -> directory under @grafana/schema's raw/composable/.
PANEL_PLUGINS=("timeseries:timeseries" "stat:stat" "heatmap:heatmap" "table:table" "state-timeline:statetimeline")

CACHE="${DKNN_GRAFANA_SCHEMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dknn-agent/grafana-schema}"

die() {
    echo "validate.sh: $*" >&2
    exit 2
}

for tool in node npm python3; do
    command -v "$tool" >/dev/null || die "needs '$tool' (Debian: apt-get install -y nodejs npm python3)"
done
if [[ -x "$REPO/.venv/bin/check-jsonschema" ]]; then
    CHECK_JSONSCHEMA="$REPO/.venv/bin/check-jsonschema"
elif command -v check-jsonschema >/dev/null; then
    CHECK_JSONSCHEMA="$(command -v check-jsonschema)"
else
    die "needs check-jsonschema: $REPO/.venv/bin/python -m pip install 'check-jsonschema==0.39.0'"
fi

key() { sha256sum | cut -c1-16; }
mkdir -p "$CACHE"

# --- 1. npm packages ------------------------------------------------------------------------------
TOOLS="$CACHE/npm-$(printf '%s\n' "${NPM_PINS[@]}" | key)"
if [[ ! -f "$TOOLS/.complete" ]]; then
    echo "validate.sh: installing ${NPM_PINS[*]} into $TOOLS" >&2
    tmp="$(mktemp -d "$CACHE/.npm.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    echo '{"private": true}' >"$tmp/package.json"
    (cd "$tmp" && npm install --no-audit --no-fund --ignore-scripts --save-exact --loglevel=error "${NPM_PINS[@]}" >&2) ||
        die "npm install ${NPM_PINS[*]} failed"
    touch "$tmp/.complete"
    # Concurrent runs: the first rename wins, the others discard their copy.
    mv -T "$tmp" "$TOOLS" 2>/dev/null || rm -rf "$tmp"
    trap - EXIT
fi
TYPES="$TOOLS/node_modules/@grafana/schema/dist/types/raw"
GENERATOR="$TOOLS/node_modules/.bin/ts-json-schema-generator"

# --- 2. schema ------------------------------------------------------------------------------------
SCHEMA_DIR="$CACHE/schema-$( (printf '%s\n' "${NPM_PINS[@]}" "${PANEL_PLUGINS[@]}"; cat "${BASH_SOURCE[0]}") | key)"
SCHEMA="$SCHEMA_DIR/dashboard.schema.json"
if [[ ! -f "$SCHEMA" ]]; then
    echo "validate.sh: generating $SCHEMA" >&2
    tmp="$(mktemp -d "$CACHE/.schema.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    generate() { # <d.ts> <type> <out>
        "$GENERATOR" --path "$1" --type "$2" --no-type-check --out "$3" >/dev/null || die "ts-json-schema-generator failed on $1"
    }
    generate "$TYPES/dashboard/x/types.gen.d.ts" Dashboard "$tmp/dashboard.raw.json" &
    pids=($!)
    plugin_args=()
    for entry in "${PANEL_PLUGINS[@]}"; do
        id="${entry%%:*}" dir="${entry#*:}"
        dts="$TYPES/composable/$dir/panelcfg/x/types.gen.d.ts"
        [[ -f "$dts" ]] || die "no panel types for '$id' in @grafana/schema ($dts)"
        # A plugin without its own FieldConfig (stat) has no custom field options to check.
        has_field_config=0
        grep -q '^export interface FieldConfig\b' "$dts" && has_field_config=1
        generate "$dts" '*' "$tmp/panel.$dir.json" &
        pids+=($!)
        plugin_args+=("$id" "$tmp/panel.$dir.json" "$has_field_config")
    done
    for pid in "${pids[@]}"; do wait "$pid" || die "schema generation failed"; done

    python3 - "$tmp/dashboard.raw.json" "$tmp/dashboard.schema.json" "${plugin_args[@]}" <<'PY'
import json
import sys

raw, out, *plugins = sys.argv[1:]
schema = json.load(open(raw, encoding="utf-8"))
defs = schema["definitions"]

# a. Prometheus annotation fields Grafana reads from the top level of an annotation query.
annotation = defs["AnnotationQuery"]
assert annotation.get("additionalProperties") is False, "AnnotationQuery is no longer strict: revisit tweak a"
annotation["properties"].update(
    {
        "expr": {"type": "string", "description": "Prometheus: the PromQL of the annotation query"},
        "step": {"type": "string", "description": "Prometheus: query step, e.g. 60s"},
        "titleFormat": {"type": "string", "description": "Prometheus: title template ({{label}})"},
        "textFormat": {"type": "string", "description": "Prometheus: text template ({{label}})"},
        "tagKeys": {"type": "string", "description": "Prometheus: comma-separated labels used as tags"},
        "useValueForTime": {"type": "boolean", "description": "Prometheus: the sample value is the event time"},
    }
)


# b. Panel options and custom field config, by panel type, from each plugin's own types.
def prefixed(node, prefix):
    if isinstance(node, dict):
        return {
            k: ("#/definitions/" + prefix + v[len("#/definitions/"):])
            if k == "$ref" and isinstance(v, str) and v.startswith("#/definitions/")
            else prefixed(v, prefix)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [prefixed(v, prefix) for v in node]
    return node


panel = defs["Panel"]
rules, ids = [], []
for i in range(0, len(plugins), 3):
    plugin_id, path, has_field_config = plugins[i], plugins[i + 1], plugins[i + 2] == "1"
    prefix = f"panel.{plugin_id}."
    plugin_defs = json.load(open(path, encoding="utf-8"))["definitions"]
    assert "Options" in plugin_defs, f"{plugin_id}: no Options type"
    for name, definition in plugin_defs.items():
        defs[prefix + name] = prefixed(definition, prefix)
    then = {"properties": {"options": {"$ref": f"#/definitions/{prefix}Options"}}}
    if has_field_config:
        assert "FieldConfig" in plugin_defs, f"{plugin_id}: no FieldConfig type"
        custom = {"$ref": f"#/definitions/{prefix}FieldConfig"}
        then["properties"]["fieldConfig"] = {"properties": {"defaults": {"properties": {"custom": custom}}}}
    rules.append({"if": {"properties": {"type": {"const": plugin_id}}, "required": ["type"]}, "then": then})
    ids.append(plugin_id)
panel["properties"]["type"]["enum"] = ids
panel["properties"]["type"]["description"] += " (dknn: limited to the plugins validate.sh checks: PANEL_PLUGINS)"
panel["allOf"] = rules

# c. Dashboard panels are "Panel or RowPanel" (anyOf), so an error inside a panel is reported as
#    "matches neither". RowPanel requires type "row", which Panel's type (b) no longer allows, so
#    choosing by type accepts exactly the same documents and reports the error where it is.
items = defs["Dashboard"]["properties"]["panels"]["items"]
assert items == {"anyOf": [{"$ref": "#/definitions/Panel"}, {"$ref": "#/definitions/RowPanel"}]}, items
defs["Dashboard"]["properties"]["panels"]["items"] = {
    "if": {"properties": {"type": {"const": "row"}}, "required": ["type"]},
    "then": {"$ref": "#/definitions/RowPanel"},
    "else": {"$ref": "#/definitions/Panel"},
}

json.dump(schema, open(out, "w", encoding="utf-8"), indent=1, sort_keys=True)
PY
    mkdir -p "$SCHEMA_DIR.tmp.$$"
    mv "$tmp/dashboard.schema.json" "$SCHEMA_DIR.tmp.$$/dashboard.schema.json"
    rm -rf "$tmp"
    trap - EXIT
    mv -T "$SCHEMA_DIR.tmp.$$" "$SCHEMA_DIR" 2>/dev/null || rm -rf "$SCHEMA_DIR.tmp.$$"
fi

# --- 3. validate ----------------------------------------------------------------------------------
if [[ $# -eq 0 ]]; then
    shopt -s nullglob
    set -- "$HERE"/*.json
    [[ $# -gt 0 ]] || die "no dashboards in $HERE"
fi
exec "$CHECK_JSONSCHEMA" --schemafile "$SCHEMA" "$@"
