"""deploy/: the Grafana dashboard, the Prometheus rules and the systemd unit."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from writewatch.exporter import METRICS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
#: what prometheus_client's ProcessCollector serves (the exporter's own CPU and memory)
PROCESS = {"process_cpu_seconds_total", "process_resident_memory_bytes",
           "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
           "process_start_time_seconds"}
#: the rules' recorded series (a dashboard may use them)
RECORDED = {"writewatch:dirty_bytes:rate5m", "writewatch:dirty_bytes_anon_shmem:rate5m"}


def served_names() -> set[str]:
    out = set(PROCESS)
    for name, (kind, _labels, _doc) in METRICS.items():
        out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" \
            else {name}
    return out


def dashboard_exprs() -> list[str]:
    d = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in d["panels"] for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    # identifiers that are not PromQL functions, keywords, label names or variables
    words = set(re.findall(r"(?<![\w$:{,=~\"])([a-z_][a-z0-9_:]*)(?=\s*[{\[)]|\s*$|\s*[*/+-])",
                           re.sub(r'"[^"]*"', '""', expr)))
    funcs = {"rate", "increase", "sum", "by", "on", "ignoring", "group_left", "avg_over_time",
             "histogram_quantile", "le", "instance", "target", "kind", "reason", "job"}
    return {w for w in words if w not in funcs and w.startswith(("writewatch", "process_"))}


def test_dashboard_is_valid_grafana_json_of_served_metrics() -> None:
    d = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "target", "job", "link_gbps"} <= variables
    for p in d["panels"]:
        g = p["gridPos"]
        assert p["type"] in ("timeseries", "stat") and p["targets"], p["title"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            assert t["refId"] and t["expr"]
            used = {v for v in re.findall(r"\$(\w+)", t["expr"]) if v != "__rate_interval"}
            assert used <= variables, (p["title"], used)
    names = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert {"writewatch_tree_dirty_rate_bytes_per_second", "writewatch_written_pages_total",
            "process_cpu_seconds_total"} <= names  # the extraction finds them
    assert names <= served_names() | RECORDED, names - served_names()


def test_rules_check_and_their_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    for args in (["check", "rules", "prometheus-rules.yml"],
                 ["test", "rules", "prometheus-rules.test.yml"]):
        p = subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
    text = (DEPLOY / "prometheus-rules.yml").read_text()
    names = set(re.findall(r"\b(writewatch_[a-z_]+)\b", text))
    assert names and names <= served_names(), names - served_names()


def test_systemd_unit_runs_a_command_the_cli_accepts() -> None:
    from writewatch.cli.__main__ import build_parser
    text = (DEPLOY / "writewatch-exporter.service").read_text()
    assert "[Service]" in text and "[Install]" in text and "KillSignal=SIGTERM" in text
    lines = text.replace("\\\n", " ").splitlines()
    start = next(ln for ln in lines if ln.startswith("ExecStart="))
    argv = shlex.split(start.removeprefix("ExecStart="))
    assert argv[0].endswith("/writewatch") and argv[1] == "exporter"
    args = build_parser().parse_args(argv[1:])
    assert args.listen.startswith("127.0.0.1:") and args.cgroup and args.follow_forks


def test_docs_list_every_metric_and_no_other() -> None:
    text = (DEPLOY.parent / "docs" / "exporter.md").read_text()
    rows = re.findall(r"^\| `(writewatch_\w+)` \| (\w+) \| ([^|]*) \|", text, re.M)
    assert {n: (k, tuple(x.strip() for x in lab.split(",") if x.strip() != "—"))
            for n, k, lab in rows} == {n: (k, labels) for n, (k, labels, _) in METRICS.items()}
