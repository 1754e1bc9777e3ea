"""`kvds proxy` in front of real vLLM 0.32.0 engines (CPU, float32, the tiny
local Llama of kvds.testmodel; nothing downloaded): two prefill and two
decode OpenAI-API servers, all kv_both with KvdsConnector on one real kvds
worker, started once for the module (in parallel: the expensive part) and
shared by every test; each test starts its own proxy (cheap).

- the hand-off: the decoder really loads the prompt's blocks from kvds
  (its connector's "loaded N of M blocks" line for this request id) and
  answers — tokens, text, logprobs — as the prefiller does computing the
  whole request; the same streamed (the decoder's SSE events: the same
  tokens, text and fields; how vLLM groups tokens into events varies)
  and for chat;
- routing with 2P2D for each policy, seen in the proxy's per-backend
  counters and in the engines' own request counters: round-robin
  alternates; prefix-affinity keeps a shared prefix on one prefiller (whose
  vLLM prefix cache then hits) and spreads distinct prompts;
  least-outstanding routes around a decoder busy with a long stream, and
  the client leaving that stream aborts it inside vLLM;
- /health, /v1/models, /metrics counting what was sent;
- 300 concurrent requests, every answer checked against its prompt's
  greedy answer;
- kill -9 of a prefiller's, then a decoder's, process group while
  requests run: every request still succeeds (last: the fleet is
  smaller afterwards).
"""
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

import proxy_util
from proxy_util import RawStream, call, metric, needs_proxy, post, sse_data, wait_until
from serve_util import (LOGPROB_TOL, LOGPROBS, SERVED_NAME, Server, answer, kv_config, loads,
                        max_logprob_diff, start_all)

pytestmark = needs_proxy
make_proxy = proxy_util.make_proxy      # the fixture

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE_MODEL = os.path.join(os.path.dirname(HERE), "connector", "vllm_offline.py")
BLOCK = 128               # vLLM's CPU backend block size
N_FULL = 2
GEN = 8
# a health check times out after min(interval, 5 s): vLLM's /health on a
# loaded 2-core machine can take longer than a few hundred ms
FAST = ["--health-interval-ms", "1000"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "assistant:")
_seq = iter(range(1, 1 << 30))


def fresh_prompt(n_full=N_FULL, tail=43):
    """n_full full blocks + a tail; the first token unique to this call, so
    every block hash is new to every engine."""
    i = next(_seq)
    return [4 + (i * 97) % 400] + [(i * 7 + j * 37) % 500 + 4
                                   for j in range(n_full * BLOCK + tail - 1)]


def rid(tag):
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def body(prompt, max_tokens=GEN, **kw):
    return dict({"model": SERVED_NAME, "prompt": prompt, "max_tokens": max_tokens,
                 "temperature": 0.0, "ignore_eos": True, "return_token_ids": True}, **kw)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, make_worker):
    tmp = tmp_path_factory.mktemp("proxy-fleet")
    model = str(tmp / "model")
    subprocess.run([sys.executable, MAKE_MODEL, "make-model", model], check=True, timeout=120)
    # a chat template of the model's own (vLLM refuses one sent in a request
    # unless --trust-request-chat-template)
    cfg_path = os.path.join(model, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["chat_template"] = CHAT_TEMPLATE
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    w = make_worker("512MiB")
    kv = kv_config("kv_both", w.addr, f"proxy-{uuid.uuid4().hex[:8]}")
    servers = []
    try:
        ps = [Server(f"P{i}", model, tmp, kv, started=servers) for i in (1, 2)]
        ds = [Server(f"D{i}", model, tmp, kv, started=servers) for i in (1, 2)]
        t0 = time.monotonic()
        start_all(servers)
        print(f"\n4 vLLM servers ready in {time.monotonic() - t0:.0f} s")
        yield {"tmp": tmp, "worker": w, "p": ps, "d": ds, "all": servers}
    finally:
        for s in servers:
            s.stop()


def addr(server):
    return f"127.0.0.1:{server.port}"


def start_proxy(make_proxy, fleet, *args, ps=None, ds=None):
    ps = fleet["p"] if ps is None else ps
    ds = fleet["d"] if ds is None else ds
    px = make_proxy([addr(s) for s in ps], [addr(s) for s in ds], [*FAST, *args])
    px.wait_health(200, timeout=10)
    return px


class Routed:
    """Which prefiller and decoder served each of a proxy's sequential
    requests, from its per-backend counters."""

    def __init__(self, px, fleet):
        self.px, self.fleet = px, fleet
        self.last = self._read()

    def _read(self):
        text = self.px.metrics()
        return {(role, s.name): int(metric(text, "kvds_proxy_backend_requests_total",
                                           role=role, backend=addr(s)) or 0)
                for role, group in (("prefill", self.fleet["p"]), ("decode", self.fleet["d"]))
                for s in group}

    def step(self):
        """(prefiller, decoder) names of the one request since the last call."""
        now = self._read()
        moved = {k: now[k] - self.last[k] for k in now if now[k] != self.last[k]}
        self.last = now
        p = [n for (role, n), d in moved.items() if role == "prefill" and d == 1]
        d = [n for (role, n), d in moved.items() if role == "decode" and d == 1]
        assert len(p) == 1 and len(d) == 1 and len(moved) == 2, moved
        return p[0], d[0]


def server(fleet, name):
    return next(s for s in fleet["all"] if s.name == name)


def completion(px, b, xrid, path="/v1/completions"):
    r = post(px.port, path, b, {"X-Request-Id": xrid})
    assert r.status == 200, f"{r}\n{px.tail()}"
    return r.json()


def loads_of(srv, xrid):
    return [x for x in loads(srv) if x["req"].startswith(f"cmpl-{xrid}-")
            or x["req"].startswith(f"chatcmpl-{xrid}-")]


def vllm_requests(srv, **labels):
    return int(metric(srv.metrics(), "vllm:request_success", **labels) or 0)


# ------------------------------------------------------------ the hand-off

def test_handoff_loads_from_kvds_and_equals_colocated(make_proxy, fleet):
    px = start_proxy(make_proxy, fleet, "--policy", "round-robin")
    route = Routed(px, fleet)
    for _ in range(2):            # through both prefillers and both decoders
        prompt, xrid = fresh_prompt(), rid("handoff")
        got = completion(px, body(prompt, logprobs=LOGPROBS), xrid)
        pn, dn = route.step()
        p, d = server(fleet, pn), server(fleet, dn)
        assert got["usage"]["prompt_tokens"] == len(prompt)
        assert len(got["choices"][0]["token_ids"]) == GEN
        ld = loads_of(d, xrid)
        assert [(x["loaded"], x["of"], x["addr"]) for x in ld] == \
            [(N_FULL, N_FULL, fleet["worker"].addr)], f"{xrid}: {loads(d)}\n{d.tail()}"
        assert loads_of(p, xrid) == [], "the prefiller computed the prompt"
        # the prefiller computing the whole request itself (its own KV)
        ref = p.complete(prompt, GEN, logprobs=LOGPROBS)
        a, b_ = answer(got), answer(ref)
        assert a["token_ids"] == b_["token_ids"] and a["text"] == b_["text"], (a, b_)
        assert max_logprob_diff(a, b_) < LOGPROB_TOL, (a["logprobs"], b_["logprobs"])


def _events(data):
    out = []
    for d in data:
        if d == b"[DONE]":
            out.append("[DONE]")
            continue
        ev = json.loads(d)
        for k in ("id", "created"):
            ev.pop(k, None)
        out.append(ev)
    return out


def _joined(events):
    """The stream's content with event boundaries taken out: each choice's
    token ids and text joined in order, its finish reason, the usage event,
    the [DONE] last, and every other field's values as sent."""
    choices, other = {}, []
    for ev in events:
        if ev == "[DONE]":
            other.append(ev)
            continue
        for ch in ev.get("choices", []):
            c = choices.setdefault(ch["index"], {"text": "", "token_ids": [], "finish": [],
                                                 "rest": []})
            c["text"] += ch.get("text") or ""
            c["token_ids"] += ch.get("token_ids") or []
            if ch.get("finish_reason") is not None:
                c["finish"].append((ch["finish_reason"], ch.get("stop_reason")))
            rest = {k: v for k, v in ch.items()
                    if k not in ("index", "text", "token_ids", "finish_reason", "stop_reason")
                    and v is not None}
            if rest and rest not in c["rest"]:
                c["rest"].append(rest)
        top = {k: v for k, v in ev.items() if k != "choices"}
        if top not in other:
            other.append(top)
    return choices, other


def test_stream_through_proxy_is_the_decoders_stream(make_proxy, fleet):
    px = start_proxy(make_proxy, fleet, "--policy", "round-robin")
    route = Routed(px, fleet)
    prompt, xrid = fresh_prompt(), rid("stream")
    b = body(prompt, stream=True, stream_options={"include_usage": True})
    s = RawStream(px.port, "/v1/completions", b, {"X-Request-Id": xrid}, timeout=120)
    try:
        assert s.read_head(120) == 200
        assert s.headers["content-type"].startswith("text/event-stream"), s.headers
        assert s.read_to_end(120), f"stream not ended cleanly: {s.body[-300:]!r}"
    finally:
        s.close()
    pn, dn = route.step()
    d = server(fleet, dn)
    assert [x["loaded"] for x in loads_of(d, xrid)] == [N_FULL], loads(d)
    via_proxy = _events(sse_data(s.body))
    assert via_proxy[-1] == "[DONE]" and len(via_proxy) >= GEN + 1, via_proxy
    # the same request straight to that decoder (its prefix cache holds the
    # loaded blocks now): the same events
    c = RawStream(d.port, "/v1/completions", b, timeout=120)
    try:
        assert c.read_head(120) == 200 and c.read_to_end(120)
    finally:
        c.close()
    direct = _events(sse_data(c.body))
    # vLLM may group a token whose text is not yet whole UTF-8 with the next
    # one or not, depending on timing: compare what the events carry (every
    # field of every event, tokens and text joined), not where they split
    assert _joined(via_proxy) == _joined(direct), (via_proxy, direct)
    # and the tokens a colocated run gives
    toks = [t for ev in via_proxy[:-1] for ch in ev.get("choices", [])
            for t in (ch.get("token_ids") or [])]
    ref = server(fleet, pn).complete(prompt, GEN)
    assert toks == ref["choices"][0]["token_ids"]


def test_chat_through_proxy(make_proxy, fleet):
    px = start_proxy(make_proxy, fleet, "--policy", "round-robin")
    route = Routed(px, fleet)
    text = " ".join(f"item{(i * 7919) % 997}" for i in range(80))     # 2-3 blocks
    cb = {"model": SERVED_NAME, "messages": [{"role": "user", "content": text}],
          "max_tokens": GEN, "temperature": 0.0, "ignore_eos": True}
    xrid = rid("chat")
    got = completion(px, cb, xrid, "/v1/chat/completions")
    pn, dn = route.step()
    ld = loads_of(server(fleet, dn), xrid)
    assert len(ld) == 1 and ld[0]["loaded"] == ld[0]["of"] >= 1, ld
    assert got["usage"]["completion_tokens"] == GEN
    ref = server(fleet, pn).post("/v1/chat/completions", cb)
    assert got["choices"][0]["message"]["content"] == ref["choices"][0]["message"]["content"]


# ---------------------------------------------------------------- routing

def test_round_robin_alternates(make_proxy, fleet):
    px = start_proxy(make_proxy, fleet, "--policy", "round-robin")
    route = Routed(px, fleet)
    before = {s.name: vllm_requests(s) for s in fleet["all"]}
    seen = []
    for i in range(4):
        completion(px, body(fresh_prompt(0, 20), 2), rid("rr"))
        seen.append(route.step())
    pre, dec = [p for p, _ in seen], [d for _, d in seen]
    assert pre[0] != pre[1] and pre[2:] == pre[:2], seen
    assert dec[0] != dec[1] and dec[2:] == dec[:2], seen
    # the engines agree: two requests each
    for s in fleet["all"]:
        wait_until(lambda: vllm_requests(s) - before[s.name] == 2,
                   f"{s.name}'s vllm:request_success at +2 (seen {seen})", timeout=20,
                   poll=0.2)


def test_prefix_affinity_keeps_prefix_spreads_others(make_proxy, fleet):
    px = start_proxy(make_proxy, fleet)          # the default policy
    route = Routed(px, fleet)
    shared = fresh_prompt(N_FULL, 0)
    seen = []
    for i in range(3):
        completion(px, body(shared + [5 + i] * (10 + i), 2), rid("aff"))
        seen.append(route.step())
        if i == 0:
            home = server(fleet, seen[0][0])
            hits0 = metric(home.metrics(), "vllm:prefix_cache_hits")
    assert len(set(seen)) == 1, f"{seen}\n{px.tail()}"
    # the prefiller's own prefix cache served the shared blocks twice
    wait_until(lambda: metric(home.metrics(), "vllm:prefix_cache_hits") - hits0
               >= 2 * N_FULL * BLOCK, "prefix cache hits on the affinity prefiller",
               timeout=20, poll=0.2)
    distinct = []
    for i in range(4):
        completion(px, body(fresh_prompt(1, 5), 2), rid("dis"))
        distinct.append(route.step())
    assert {p for p, _ in distinct} == {"P1", "P2"}, f"{distinct}\n{px.tail()}"
    assert {d for _, d in distinct} == {"D1", "D2"}, f"{distinct}\n{px.tail()}"


def test_least_outstanding_routes_around_a_busy_decoder(make_proxy, fleet):
    px = start_proxy(make_proxy, fleet, "--policy", "least-outstanding")
    route = Routed(px, fleet)
    gen0 = {s.name: metric(s.metrics(), "vllm:generation_tokens") for s in fleet["d"]}
    xrid = rid("long")
    long = body(fresh_prompt(0, 16), 900, stream=True)
    s = RawStream(px.port, "/v1/completions", long, {"X-Request-Id": xrid}, timeout=120)
    try:
        assert s.read_head(120) == 200
        assert s.read_until(lambda b: b"data:" in b, 60), s.body
        _, busy_name = route.step()
        busy = server(fleet, busy_name)
        assert px.m("kvds_proxy_backend_outstanding", role="decode", backend=addr(busy)) == 1
        seen = []
        for i in range(3):
            completion(px, body(fresh_prompt(0, 20), 2), rid("lo"))
            seen.append(route.step())
        assert all(d != busy_name for _, d in seen), (busy_name, seen)
        assert len({p for p, _ in seen}) == 2, f"ties should rotate: {seen}"
        assert not s.ended, "the long stream ended early: the check proved nothing"
    finally:
        s.close()
    # the client left: the proxy cancels the hop and vLLM aborts the request
    # (vLLM counts no finished request for an abort: it stops running, and
    # far fewer than its 900 tokens were made)
    wait_until(lambda: metric(busy.metrics(), "vllm:num_requests_running") == 0,
               f"{busy_name} dropping the abandoned stream", timeout=30, poll=0.2)
    made = metric(busy.metrics(), "vllm:generation_tokens") - gen0[busy_name]
    assert made < 600, f"{busy_name} generated {made} tokens: the stream was not cancelled"
    wait_until(lambda: px.m("kvds_proxy_in_flight") == 0, "proxy in_flight at 0")
    assert px.m("kvds_proxy_client_disconnects_total") == 1


def test_health_models_metrics(make_proxy, fleet):
    px = start_proxy(make_proxy, fleet)
    h = px.health()
    assert h.status == 200 and h.json()["status"] == "ok"
    for s in fleet["all"]:
        assert addr(s) in h.body.decode(), h
    for i in range(3):
        completion(px, body(fresh_prompt(0, 12), 2), rid("m"))
    cb = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hello"}],
          "max_tokens": 2}
    completion(px, cb, rid("mc"), "/v1/chat/completions")
    text = px.metrics()
    assert metric(text, "kvds_proxy_requests_total", endpoint="completions") == 3
    assert metric(text, "kvds_proxy_requests_total", endpoint="chat") == 1
    assert metric(text, "kvds_proxy_ttft_seconds_count") == 4
    assert metric(text, "kvds_proxy_request_seconds_count") == 4
    assert (metric(text, "kvds_proxy_errors_total") or 0) == 0
    assert metric(text, "kvds_proxy_in_flight") == 0
    for role, group in (("prefill", fleet["p"]), ("decode", fleet["d"])):
        assert sum(metric(text, "kvds_proxy_backend_requests_total", role=role,
                          backend=addr(s)) for s in group) == 4
        for s in group:
            assert metric(text, "kvds_proxy_backend_up", role=role, backend=addr(s)) == 1
            assert metric(text, "kvds_proxy_backend_outstanding", role=role,
                          backend=addr(s)) == 0
    m = call(px.port, "GET", "/v1/models")
    assert m.status == 200 and [x["id"] for x in m.json()["data"]] == [SERVED_NAME], m
    direct = call(fleet["p"][0].port, "GET", "/v1/models").json()
    assert m.json()["data"][0]["root"] == direct["data"][0]["root"]


# ------------------------------------------------------------------- load

LOAD_N = 300
LOAD_PROMPTS = 12
LOAD_TOKENS = 4


def test_bounded_load(make_proxy, fleet):
    import aiohttp
    px = start_proxy(make_proxy, fleet)
    prompts = [fresh_prompt(1, 9 + i) for i in range(LOAD_PROMPTS)]
    # each prompt's greedy answer, colocated on one instance
    want = [fleet["p"][0].complete(p, LOAD_TOKENS)["choices"][0]["token_ids"] for p in prompts]
    before = px.metrics()

    async def one(session, i):
        k = i % LOAD_PROMPTS
        async with session.post(f"{px.url}/v1/completions",
                                json=body(prompts[k], LOAD_TOKENS),
                                headers={"X-Request-Id": f"load-{i}-{uuid.uuid4().hex[:6]}"}) as r:
            data = await r.read()
            return k, r.status, data

    async def run():
        conn = aiohttp.TCPConnector(limit=LOAD_N)
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            return await asyncio.gather(*(one(session, i) for i in range(LOAD_N)))

    t0 = time.monotonic()
    results = asyncio.run(run())
    took = time.monotonic() - t0
    bad = []
    for k, status, data in results:
        if status != 200:
            bad.append((k, status, data[:300]))
            continue
        ch = json.loads(data)["choices"][0]
        if ch["token_ids"] != want[k] or len(ch["token_ids"]) != LOAD_TOKENS:
            bad.append((k, ch["token_ids"], want[k]))
    assert not bad, f"{len(bad)} of {LOAD_N} wrong, e.g. {bad[:5]}\n{px.tail()}"
    text = px.metrics()

    def delta(name, **labels):
        return (metric(text, name, **labels) or 0) - (metric(before, name, **labels) or 0)
    assert delta("kvds_proxy_requests_total", endpoint="completions") == LOAD_N
    assert delta("kvds_proxy_ttft_seconds_count") == LOAD_N
    assert (metric(text, "kvds_proxy_errors_total") or 0) == 0
    assert metric(text, "kvds_proxy_in_flight") == 0
    for role, group in (("prefill", fleet["p"]), ("decode", fleet["d"])):
        n = [delta("kvds_proxy_backend_requests_total", role=role, backend=addr(s))
             for s in group]
        assert sum(n) == LOAD_N, (role, n)
    print(f"\n{LOAD_N} concurrent requests through the proxy in {took:.1f} s")


# ---------------------------------------------------------------- failover

def _run_while(px, fn_kill, n_threads=3, after=4):
    """Sends sequential requests from n_threads threads; calls fn_kill()
    once some have succeeded, then goes on until `after` more succeeded per
    thread. Returns (results, killed_info)."""
    results, stop, lock = [], threading.Event(), threading.Lock()
    prompts = [fresh_prompt(1, 5 + i) for i in range(n_threads)]

    def loop(t):
        while not stop.is_set():
            try:
                r = post(px.port, "/v1/completions", body(prompts[t], 4),
                         {"X-Request-Id": rid(f"fo{t}")}, timeout=120)
                res = (r.status, r.body)
            except Exception as e:          # noqa: BLE001  (recorded, asserted below)
                res = (None, repr(e).encode())
            with lock:
                results.append((t, time.monotonic(), res))

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(results) >= 2 * n_threads, "requests before the kill",
                   timeout=60, poll=0.05)
        info = fn_kill()
        n0 = len(results)
        wait_until(lambda: len(results) >= n0 + after * n_threads, "requests after the kill",
                   timeout=120, poll=0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(150)
    return prompts, results, info


def _kill_group(px, srv, role):
    """kill -9 of the server's process group, preferably while the proxy
    has a request in flight on it; True if one was."""
    deadline = time.monotonic() + 5
    busy = False
    while time.monotonic() < deadline and not busy:
        busy = px.m("kvds_proxy_backend_outstanding", role=role, backend=addr(srv)) > 0
    os.killpg(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(30)
    return busy


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_failover_kill9(make_proxy, fleet, role):
    """Last in the module: the killed engines stay dead."""
    victim = fleet["p" if role == "prefill" else "d"][0]
    live = [s for s in fleet["all"] if s.proc.poll() is None]
    assert victim in live, "the victim is already dead"
    px = start_proxy(make_proxy, fleet, "--policy", "round-robin",
                     ps=[s for s in fleet["p"] if s in live],
                     ds=[s for s in fleet["d"] if s in live])
    prompts, results, busy = _run_while(px, lambda: _kill_group(px, victim, role))
    bad = [(t, res[0], res[1][:300]) for t, _, res in results
           if res[0] != 200 or len(json.loads(res[1])["choices"][0]["token_ids"]) != 4]
    assert not bad, f"{len(bad)} of {len(results)} failed (in flight at the kill: {busy}): " \
                    f"{bad[:5]}\n{px.tail()}"
    answers = {}
    for t, _, res in results:
        answers.setdefault(t, set()).add(tuple(json.loads(res[1])["choices"][0]["token_ids"]))
    assert all(len(a) == 1 for a in answers.values()), answers
    px.wait_health(200)
    wait_until(lambda: px.m("kvds_proxy_backend_up", role=role, backend=addr(victim)) == 0,
               "the killed backend marked down", timeout=10)
    assert px.m("kvds_proxy_errors_total") == 0
    print(f"\nkill -9 {victim.name}: {len(results)} requests all served "
          f"(one in flight on it at the kill: {busy}; retries "
          f"{px.m('kvds_proxy_retries_total', role=role)})")
