"""`rrm-jax serve` (issue 23.3, 23.5): the official `openai` client against it, the RRM endpoints against the
in-process judge, OpenRLHF's request shape, and the faults (400 naming the field, 401, 413, 429, a client that
goes away, hundreds of malformed bodies, SIGTERM draining what was accepted)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from rrm_jax.core.seeds import derive_seed  # noqa: E402
from rrm_jax.judge.judge import Judge  # noqa: E402
from rrm_jax.sampler import SamplingConfig, generate  # noqa: E402
from rrm_jax.serve.app import create_app  # noqa: E402
from rrm_jax.serve.cli import ServeConfig, build_service  # noqa: E402
from rrm_jax.training.rl.judge_rewards import JudgeReward  # noqa: E402

KEY = "sk-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Running:
    """A uvicorn server in a thread on 127.0.0.1:<free port>; stop() drains it and ends the engine thread."""

    def __init__(self, service):
        self.service = service
        self.port = _free_port()
        config = uvicorn.Config(create_app(service), host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)
        self.service.worker.stop()


CFG = ServeConfig(
    model="tiny", tokenizer="bytes", dtype="float32", mesh=(1, 1, 1), max_model_len=512,
    sampling=SamplingConfig(max_new_tokens=48, temperature=0.6, max_slots=4), api_key=KEY, name="tiny-judge",
    prompt="demo", warmup=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def served():
    s = _Running(build_service(CFG))
    yield s
    s.stop()


@pytest.fixture()
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0)


def _post(served, path, body, key=KEY, timeout=120):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(served.url + path, json=body, headers=headers, timeout=timeout)


def _chat_reference(model, messages, **sampling):
    text = model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return generate(model, [text], SamplingConfig(**sampling))


MESSAGES = [{"role": "user", "content": "Which is better, 2+2=4 or 2+2=5?"}]


# ------------------------------------------------------------------------------------------ OpenAI API
def test_the_openai_client_lists_the_model_and_chats_as_generate_does(served, client):
    assert [m.id for m in client.models.list().data] == ["tiny-judge"]
    out = client.chat.completions.create(model="tiny-judge", messages=MESSAGES, temperature=0, max_tokens=16)
    ref = _chat_reference(served.service.model, MESSAGES, temperature=0, max_new_tokens=16)[0]
    assert out.choices[0].message.content == ref.text and out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    tok = served.service.model.tokenizer
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    prompt_len = len(tok.encode(text, add_special_tokens=False))
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (prompt_len, ref.num_tokens)
    assert out.usage.total_tokens == prompt_len + ref.num_tokens


def test_streamed_chat_equals_the_whole_answer(client):
    kw = dict(model="tiny-judge", messages=MESSAGES, temperature=0.8, seed=11, max_tokens=24)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    parts, finish = [], None
    for chunk in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        for ch in chunk.choices:
            parts.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
        if chunk.usage is not None:
            assert chunk.usage.completion_tokens >= 1
    assert "".join(parts) == whole and finish in ("stop", "length")


def test_completions_with_n_seed_stop_and_logprobs(served, client):
    model = served.service.model
    out = client.completions.create(model="tiny-judge", prompt="abc", max_tokens=10, n=2, seed=5, temperature=1.0)
    ref = generate(model, ["abc"], SamplingConfig(max_new_tokens=10, n=2, seed=5, temperature=1.0))
    assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == [c.text for c in ref]
    greedy = client.completions.create(model="tiny-judge", prompt="abc", max_tokens=10, temperature=0, logprobs=1)
    g = generate(model, ["abc"], SamplingConfig(max_new_tokens=10, temperature=0))[0]
    assert greedy.choices[0].text == g.text
    assert greedy.choices[0].logprobs.token_logprobs == pytest.approx([float(x) for x in g.logprobs], abs=1e-5)
    if len(g.text) > 3:  # a stop string cuts the text before it, as OpenAI does
        stop = g.text[2:4]
        cut = client.completions.create(model="tiny-judge", prompt="abc", max_tokens=10, temperature=0, stop=[stop])
        assert cut.choices[0].text == g.text[: g.text.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_share_batches_and_each_equals_its_own_run(served, client):
    prompts = [f"prompt number {i} " * (1 + i % 3) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(
            pool.map(
                lambda p: client.completions.create(model="m", prompt=p, max_tokens=12, temperature=0).choices[0].text,
                prompts,
            )
        )
    ref = generate(served.service.model, prompts, SamplingConfig(max_new_tokens=12, temperature=0))
    assert outs == [c.text for c in ref]


# ------------------------------------------------------------------------------------------ RRM endpoints
def _judge(served):
    service = served.service
    return Judge(service.model, prompt=CFG.prompt, sampling=service.engine_config,
                 max_prompt_tokens=service.opts.max_prompt_tokens)  # fmt: skip


def test_judge_rank_and_rewards_equal_the_in_process_judge(served):
    judge = _judge(served)
    body = {"query": "2+2?", "response_a": "4", "response_b": "5", "votes": 3, "seed": 2}
    got = _post(served, "/v1/judge", body).json()
    v = judge.compare("2+2?", "4", "5", votes=3, seed=2)
    assert (got["winner"], got["votes_a"], got["votes_b"], got["tokens"]) == (v.winner, v.votes_a, v.votes_b, v.tokens)
    assert got["soft"] == pytest.approx(v.soft) and got["reasoning"] == v.reasonings

    cands = ["one", "two", "three"]
    r = _post(served, "/v1/rank", {"query": "count", "candidates": cands, "strategy": "elo"}).json()
    ref = judge.rank("count", cands, strategy="elo")
    assert r["ranking"] == [int(i) for i in ref.order] and r["comparisons"] == ref.comparisons

    groups = [{"query": "2+2?", "responses": ["4", "5", "four"]}, {"query": "1+1?", "responses": ["2", "3"]}]
    rw = _post(served, "/v1/rewards", {"groups": groups, "reward": "judge_elo", "seed": 1}).json()["rewards"]

    class T:
        def __init__(self, text):
            self.text = text

    flat = JudgeReward(judge, "judge_elo", seed=1)(
        None,
        [T(t) for g in groups for t in g["responses"]],
        {"query": ["2+2?"] * 3 + ["1+1?"] * 2, "group": [0, 0, 0, 1, 1], "step": 0},
    )
    assert rw == [pytest.approx(list(flat[:3])), pytest.approx(list(flat[3:]))]


def test_openrlhf_get_reward_shape(served):
    body = {
        "query": ["Q: 2+2? A: 4", "Q: 2+2? A: 5", "Q: 1+1? A: 2"],
        "prompts": ["Q: 2+2? A:", "Q: 2+2? A:", "Q: 1+1? A:"],
    }
    out = _post(served, "/get_reward", body).json()
    assert len(out["rewards"]) == 3 and all(isinstance(x, float) for x in out["rewards"])
    labelled = _post(served, "/get_reward", body | {"labels": ["4", "4", "2"]}).json()["rewards"]
    assert set(labelled) <= {1.0, -1.0} and len(labelled) == 3
    assert _post(served, "/get_reward", body | {"labels": ["4"]}).status_code == 400


def test_health_and_prometheus_metrics(served):
    assert httpx.get(served.url + "/health").json() == {"status": "ok"}  # no key needed
    text = httpx.get(served.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in ("rrm_queue_depth", "rrm_slots_busy", "rrm_generation_tokens_per_second", "rrm_requests_total"):
        assert re.search(rf"^{name} \d", text, re.M), name
    assert 'rrm_request_latency_seconds_bucket{le="+Inf"}' in text


# ------------------------------------------------------------------------------------------ faults
def test_bad_requests_are_400_naming_the_field(served):
    bad = httpx.post(
        served.url + "/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    for body, field in [
        ({}, "messages"),
        ({"messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"messages": MESSAGES, "n": 0}, "n"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ]:
        r = _post(served, "/v1/chat/completions", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (body, r.text)
    long = _post(served, "/v1/completions", {"prompt": "x" * 2000, "max_tokens": 4})
    assert long.status_code == 400 and "this server takes at most" in long.json()["error"]["message"]
    many = _post(served, "/v1/completions", {"prompt": "x", "max_tokens": 100000})
    assert many.status_code == 400 and many.json()["error"]["param"] == "max_tokens"
    assert _post(served, "/v1/judge", {"query": "q", "response_a": "a"}).json()["error"]["param"] == "response_b"


def test_keys_and_body_cap(served):
    assert _post(served, "/v1/completions", {"prompt": "x"}, key=None).status_code == 401
    assert _post(served, "/v1/completions", {"prompt": "x"}, key="wrong").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0).models.list()
    huge = _post(served, "/v1/completions", {"prompt": "x" * (5 << 20)})
    assert huge.status_code == 413

    def chunked(body: bytes, piece: int = 1 << 16):  # a generator body: chunked transfer, no Content-Length
        yield from (body[i : i + piece] for i in range(0, len(body), piece))

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    post = lambda body: httpx.post(served.url + "/v1/completions", content=chunked(body), headers=headers, timeout=60)
    r = post(json.dumps({"prompt": "x" * (5 << 20)}).encode())
    assert r.status_code == 413 and "at most" in r.json()["error"]["message"], r.text
    small = post(json.dumps({"prompt": "a chunked body", "max_tokens": 3}).encode())
    assert small.status_code == 200 and small.json()["usage"]["completion_tokens"] == 3, small.text


def test_random_malformed_requests_leave_it_healthy(served, client):
    rng = random.Random(0)
    values = [None, -1, 0, 1.5, "x", [], {}, [1, "a"], {"a": 1}, True, 10**12, "\ud800"[:0]]
    paths = ["/v1/chat/completions", "/v1/completions", "/v1/judge", "/v1/rank", "/v1/rewards", "/get_reward"]
    keys = ["messages", "prompt", "n", "temperature", "max_tokens", "top_p", "stop", "query", "candidates", "groups"]
    codes = set()
    for _ in range(200):
        body = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, 4))}
        r = _post(served, rng.choice(paths), body, timeout=60) if rng.random() < 0.9 else httpx.post(
            served.url + rng.choice(paths), content=bytes(rng.randrange(256) for _ in range(30)),
            headers={"Authorization": f"Bearer {KEY}"},
        )  # fmt: skip
        codes.add(r.status_code)
        assert r.status_code < 500, (body, r.text)
    assert 400 in codes
    assert httpx.get(served.url + "/health").status_code == 200
    assert client.completions.create(model="m", prompt="ok", max_tokens=2, temperature=0).choices[0].text is not None


def test_queue_full_is_429_and_a_client_that_leaves_frees_its_slot():
    sampling = dataclasses.replace(CFG.sampling, max_slots=1, max_new_tokens=200)
    cfg = dataclasses.replace(CFG, sampling=sampling, max_queue=0, api_key="")
    s = _Running(build_service(cfg))
    eng = s.service.worker.engine
    step = eng.step

    def slow_step():  # a tiny model decodes 200 tokens in a blink: make the request last while the test acts
        time.sleep(0.1)
        return step()

    eng.step = slow_step
    try:
        with httpx.stream("POST", s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 200, "stream": True,
                                                                  "ignore_eos": True}, timeout=60) as r:  # fmt: skip
            next(r.iter_lines())  # it is running
            busy = httpx.post(s.url + "/v1/completions", json={"prompt": "y", "max_tokens": 1})
            assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
        deadline = time.monotonic() + 30  # the stream closed: its slot frees long before 200 tokens
        while eng.slots_busy or eng.busy:
            assert time.monotonic() < deadline, "the abandoned request still holds its slot"
            time.sleep(0.05)
        assert s.service.worker.counters.requests == 0  # it was cancelled, not finished
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "y", "max_tokens": 1}).status_code == 200
    finally:
        s.stop()


@pytest.mark.slow(40)
def test_sigterm_drains_what_was_accepted_and_exits_0(tmp_path):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS=re.sub(r"device_count=\d+", "device_count=1", os.environ.get("XLA_FLAGS", "")))
    cmd = [sys.executable, "-m", "rrm_jax.cli", "serve", "--model", "tiny", "--tokenizer", "bytes", "--port",
           str(port), "--max-slots", "2", "--max-model-len", "512", "--max-new-tokens", "64"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with ThreadPoolExecutor(2) as pool:
            body = {"prompt": "drain me", "max_tokens": 64, "temperature": 1.0, "seed": 1}
            futs = [pool.submit(httpx.post, url + "/v1/completions", json=body, timeout=120) for _ in range(2)]
            time.sleep(1.0)  # accepted and running
            proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futs]
        assert [a.status_code for a in answers] == [200, 200]
        assert all(a.json()["usage"]["completion_tokens"] >= 1 for a in answers)
        assert proc.wait(60) == 0
        assert "every accepted request was answered" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads(json.dumps(answers[0].json()))["object"] == "text_completion"


def test_reward_functions_for_trl_equal_in_process_and_through_the_server(served):
    """rrm_jax.rewards: TRL's layout (each prompt's completions consecutive, conversational or plain); the same
    rewards from an in-process judge and from the server's /v1/rewards, call after call (each call a new step)."""
    from rrm_jax.rewards import reward_function

    prompts = [[{"role": "user", "content": "2+2?"}]] * 3 + [[{"role": "user", "content": "1+1?"}]] * 2
    completions = [[{"role": "assistant", "content": t}] for t in ("4", "5", "four", "2", "3")]
    local = reward_function(_judge(served), "judge_knockout", seed=4)
    remote = reward_function(served.url, "judge_knockout", seed=4, api_key=KEY)
    for _ in range(2):
        assert remote(prompts, completions) == pytest.approx(local(prompts, completions))
    refs = reward_function(served.url, "judge_reference", api_key=KEY)(["q"] * 2, ["a", "b"], reference=["a", "a"])
    assert len(refs) == 2 and set(refs) <= {1.0, -1.0}
    with pytest.raises(ValueError, match="reference"):
        reward_function(served.url, "judge_reference")(["q"], ["a"])

    from rrm_jax.rewards import verl_compute_score

    os.environ["RRM_JAX_KEY"] = KEY  # verl calls it with its own arguments only: the key comes from the env
    try:
        got = verl_compute_score("gsm8k", "4", "4", {"question": "2+2?"}, url=served.url)
    finally:
        del os.environ["RRM_JAX_KEY"]
    v = _judge(served).compare_many([("2+2?", "4", "4")], seed=derive_seed(0, 0, 0x7D))[0]
    assert got == (1.0 if (v.winner == 0 if v.winner is not None else v.soft > 0.5) else -1.0)


def test_serve_without_a_model_and_without_a_demo_run_says_what_to_pass(tmp_path, monkeypatch, capsys):
    from rrm_jax.cli import main

    monkeypatch.chdir(tmp_path)  # no runs/demo/judge here
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model is required" in err and "runs/demo/judge" in err
    assert main(["serve", "--model", "tiny", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
