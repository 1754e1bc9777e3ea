"""docs/grafana/kvds.json against live /metrics: every metric name in every
panel's PromQL (and in the template variables' queries) is served by a
real worker in a cluster (two workers naming each other with --peers,
with a pull between them so every per-peer series exists) or by a real
`kvds proxy` (in front of stand-in backends, after requests that fill
every labelled series); histograms resolve through their _bucket, _sum
and _count series. The label names a panel selects on or groups by must
be labels of the series it reads (or instance/job, which Prometheus adds,
or le). Every function called is a PromQL function."""
import json
import os
import re
import urllib.request

import pytest

import kvds
from conftest import ROOT, free_port, wait_for
from proxy_util import Proxy, post, proxy_available
from standin import Act, Standin

DASHBOARD = os.path.join(ROOT, "docs", "grafana", "kvds.json")
SCRAPE_LABELS = {"instance", "job"}
AGGREGATIONS = {"sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk",
                "quantile", "count_values", "group"}
PROMQL_FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "delta", "deriv", "exp", "floor",
    "histogram_quantile", "idelta", "increase", "irate", "label_replace", "label_join",
    "last_over_time", "ln", "log2", "log10", "max_over_time", "min_over_time", "predict_linear",
    "quantile_over_time", "rate", "resets", "round", "scalar", "sort", "sort_desc", "sqrt",
    "sum_over_time", "time", "timestamp", "vector",
    "label_values", "query_result", "label_names"}       # Grafana's variable queries
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\$\{?\w+\}?|\[[^\]]*\]|\{[^}]*\}|'
                    r'(?:\d+(?:ms|[smhdwy]))+\b|'              # durations (offset 5m)
                    r'\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[A-Za-z_:][A-Za-z0-9_:]*|\S')
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')


def parse_expr(expr):
    """(metric selectors [(name, {labels matched})], functions, grouping
    labels) of a PromQL expression."""
    metrics, funcs, grouping = [], set(), set()

    def label_values(m):            # Grafana's label_values(selector, label)
        grouping.add(m.group(2))
        return f"label_values({m.group(1)})"
    expr = re.sub(r"label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)", label_values, expr)
    toks = _TOKEN.findall(expr)
    i = 0
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if t in ("by", "without", "on", "ignoring", "group_left", "group_right") and nxt == "(":
            j = i + 2
            while j < len(toks) and toks[j] != ")":
                if toks[j] != ",":
                    grouping.add(toks[j])
                j += 1
            i = j + 1
            continue
        if re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", t) and t.lower() not in KEYWORDS:
            if nxt == "(" or (t in AGGREGATIONS and nxt in ("by", "without")):
                funcs.add(t)
            else:
                labels = set(_LABEL.findall(nxt[1:-1])) if nxt.startswith("{") else set()
                metrics.append((t, labels))
        i += 1
    return metrics, funcs, grouping


def dashboard_exprs():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))
    walk(dash["panels"])
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if v["type"] == "query":
            out.append((f"variable {v['name']}", q["query"] if isinstance(q, dict) else q))
    return dash, out


def families(text):
    """{series name: labels seen} of a /metrics text; a histogram declared
    with # TYPE counts with its _bucket/_sum/_count names even before it
    has samples."""
    names = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            for n in ([f"{name}_bucket", f"{name}_sum", f"{name}_count"]
                      if kind == "histogram" else [name]):
                names.setdefault(n, set())
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(2) or ""))
            names.setdefault(m.group(1), set()).update(labels)
    return names


def test_dashboard_is_well_formed():
    dash, exprs = dashboard_exprs()
    assert dash["title"] and dash["uid"]
    ds = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert len(ds) == 1 and ds[0]["query"] == "prometheus"
    ids = []

    def walk(panels):
        for p in panels:
            ids.append(p["id"])
            assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "${datasource}", p["title"]
                assert p["targets"], p["title"]
                refs = [t["refId"] for t in p["targets"]]
                assert len(set(refs)) == len(refs), p["title"]
                for t in p["targets"]:
                    assert t["datasource"]["uid"] == "${datasource}", p["title"]
            walk(p.get("panels", []))
    walk(dash["panels"])
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    assert len(exprs) >= 30
    for title, expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), \
            (title, expr)


@pytest.fixture(scope="module")
def live_metrics(make_worker, tmp_path_factory):
    """/metrics text of a cluster worker and of a proxy, with every
    labelled series present."""
    # two workers in a static cluster; B pulls a key from A
    pa, pb, ha, hb = free_port(), free_port(), free_port(), free_port()
    a = make_worker("32MiB", ["--peers", f"127.0.0.1:{pb}", "--http-port", str(ha)], port=pa)
    b = make_worker("32MiB", ["--peers", f"127.0.0.1:{pa}", "--http-port", str(hb)], port=pb)
    with kvds.Client(a.addr) as ca:
        ca.put(b"grafana-key", b"v" * 4096)
    with kvds.Client(b.addr) as cb:
        wait_for(lambda: cb.exists([b"grafana-key"]) == [True], "the directory")
        assert cb.get(b"grafana-key") == b"v" * 4096
        with pytest.raises(kvds.NotFound):
            cb.get(b"grafana-absent")

    def scrape(port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()
    wait_for(lambda: 'kvds_peer_pull_seconds_bucket{peer="' in scrape(hb), "per-peer series")
    worker_text = scrape(hb)

    # a proxy in front of stand-ins: a request of each kind, an error, a
    # retry (P1's first answer is a 500)
    ps = [Standin("P1"), Standin("P2")]
    ds = [Standin("D1")]
    px = None
    try:
        if not proxy_available():
            pytest.skip("the kvds binary has no `proxy` subcommand")
        ps[0].plan(Act.status(500))
        px = Proxy(tmp_path_factory.mktemp("grafana"), [s.addr for s in ps], [ds[0].addr],
                   ["--health-interval-ms", "1000", "--policy", "round-robin"])
        px.wait_health(200)
        assert post(px.port, "/v1/completions", {"model": "m", "prompt": "p"}).status == 200
        assert post(px.port, "/v1/chat/completions",
                    {"model": "m", "messages": [{"role": "user", "content": "x"}]}).status == 200
        assert post(px.port, "/v1/completions", b"{").status == 400
        proxy_text = px.metrics()
    finally:
        if px is not None:
            assert px.stop() == 0, px.tail()
        for s in ps + ds:
            s.stop()
    return {"worker": worker_text, "proxy": proxy_text}


def test_every_dashboard_metric_is_served(live_metrics):
    _, exprs = dashboard_exprs()
    served = families(live_metrics["worker"])
    for name, labels in families(live_metrics["proxy"]).items():
        served.setdefault(name, set()).update(labels)
    problems, used = [], set()
    for title, expr in exprs:
        metrics, funcs, grouping = parse_expr(expr)
        assert metrics, f"{title}: no metric in {expr!r}"
        for f in funcs - PROMQL_FUNCTIONS:
            problems.append(f"{title}: {f}() is not a PromQL function")
        have = set(SCRAPE_LABELS) | {"le"}
        for name, labels in metrics:
            used.add(name)
            if name not in served:
                problems.append(f"{title}: {name} is not served")
                continue
            have |= served[name]
            for lb in labels - SCRAPE_LABELS - served[name]:
                problems.append(f"{title}: {name} has no label {lb}")
        for lb in grouping - have:
            problems.append(f"{title}: grouping by {lb}, which no series here has")
    assert not problems, "\n".join(problems)
    # the dashboard covers the proxy's documented metrics and the worker's
    # pool, hits, peers and pull latency
    for must in ("kvds_pool_used_bytes", "kvds_hits_total", "kvds_misses_total",
                 "kvds_peer_received_bytes_total", "kvds_peer_pull_seconds_bucket",
                 "kvds_proxy_ttft_seconds_bucket", "kvds_proxy_backend_outstanding",
                 "kvds_proxy_backend_requests_total", "kvds_proxy_errors_total",
                 "kvds_proxy_backend_up", "kvds_proxy_backend_seconds_bucket"):
        assert must in used, must


def test_parser_sees_names_labels_and_functions():
    """The extraction itself: what it must find and what it must skip."""
    m, f, g = parse_expr('histogram_quantile(0.99, sum by (le, peer) (rate('
                         'kvds_x_bucket{instance=~"$worker", role="a b"}[$__rate_interval])))'
                         ' / clamp_min(kvds_y_total offset 5m, 1e-9) + on(instance) kvds_z')
    assert m == [("kvds_x_bucket", {"instance", "role"}), ("kvds_y_total", set()),
                 ("kvds_z", set())], m
    assert f == {"histogram_quantile", "sum", "rate", "clamp_min"}
    assert g == {"le", "peer", "instance"}
    m, f, g = parse_expr("label_values(kvds_uptime_seconds, instance)")
    assert (m, f, g) == ([("kvds_uptime_seconds", set())], {"label_values"}, {"instance"})
