"""The HTTP server, with a real uvicorn on a free loopback port and two tiny trained runs."""
import base64
import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from _cli import (
    TINY,  # noqa: E402
    run_main,  # noqa: E402
)

from undiffuse.cli import main  # noqa: E402
from undiffuse.inference import generate as gen  # noqa: E402
from undiffuse.io import provenance as prov  # noqa: E402
from undiffuse.serve import Limits, create_app, load_filter  # noqa: E402
from undiffuse.serve.background import BackgroundServer  # noqa: E402

REFUSED_SEEDS = {1001, 1003}


def odd_seed_filter(output, request):
    """Refuses two known seeds (the content-filter test asks for them)."""
    return f"seed {request['seed']} is on the test's refusal list" if request["seed"] in REFUSED_SEEDS else True


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    folder = root / "models"
    folder.mkdir()
    assert main(["train", "--data", "digits", "--max-steps", "3", "--out", str(folder / "digits"), *TINY]) == 0
    assert main(["train", "--data", "digits", "--max-steps", "3", "--conditioning", "class",
                 "--out", str(folder / "cls"), *TINY]) == 0
    outside = root / "outside"
    assert main(["train", "--data", "digits", "--max-steps", "1", "--out", str(outside), *TINY]) == 0
    os.symlink(outside, folder / "escape")  # a run reached through a link that leaves the folder
    (folder / "not-a-run").mkdir()
    return folder


class Counter:
    """Counts network forward calls of a loaded run; can slow them down or make them fail."""

    def __init__(self, net):
        self.calls, self.delay, self.fail = 0, 0.0, False
        self.handle = net.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("injected failure")


@pytest.fixture(scope="module")
def server(models):
    app = create_app(str(models), limits=Limits(max_count=16, max_steps=60, max_body=2048, max_queue=200),
                     content_filter=odd_seed_filter, window=0.05)
    with BackgroundServer(app) as srv:
        srv.state = app.state.server
        srv.counter = Counter(srv.state.registry.get("digits").denoiser.net)
        yield srv


def call(url, path, body=None, *, method=None, headers=None, raw=None, timeout=60):
    """(status, content type, body bytes) of one request; 4xx/5xx are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def pixels(png: bytes) -> bytes:
    return np.asarray(Image.open(io.BytesIO(png))).tobytes()


def images_of(body: bytes) -> list[bytes]:
    return [base64.b64decode(i["png"]) for i in json.loads(body)["images"]]


def without_time(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "created"}


def test_health_and_models(server):
    status, ctype, body = call(server.url, "/health")
    assert status == 200 and ctype.startswith("application/json") and json.loads(body)["status"] == "ok"
    assert json.loads(body)["watermark"] in (True, False)
    status, _, body = call(server.url, "/v1/models")
    listed = {m["name"]: m for m in json.loads(body)["models"]}
    assert set(listed) == {"cls", "digits"}  # not the link out of the folder, not the empty folder
    assert listed["digits"]["kind"] == "image" and listed["digits"]["conditioning"] == "none"
    assert listed["cls"]["conditioning"] == "class" and listed["cls"]["classes"] == [str(k) for k in range(10)]
    assert listed["digits"]["default_sampler"] == "heun" and listed["digits"]["default_steps"] == 3
    assert listed["digits"]["model_sha256"] == prov.model_checksum(server.state.registry.get("digits").checkpoint)


def test_generate_equals_the_library_and_carries_provenance(server):
    status, _, body = call(server.url, "/v1/generate", {"model": "digits", "count": 3, "seed": 7})
    assert status == 200, body
    pngs = images_of(body)
    run = server.state.registry.get("digits")
    expected = gen.to_uint8(gen.to_unit(gen.generate(run, 3, seed=7)))
    for i, png in enumerate(pngs):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)))[..., None], expected[i])
        found = prov.read(png)
        rec = found["provenance"]
        assert rec["model"] == "digits" and rec["seed"] == 7 + i and rec["sampler"] == "heun" and rec["steps"] == 3
        assert rec["model_sha256"] == prov.model_checksum(run.checkpoint) and rec["software"].startswith("undiffuse")
        assert f"seed: {7 + i}" in found["parameters"] and "model: digits" in found["parameters"]


def test_png_format_class_and_guidance(server):
    status, ctype, png = call(server.url, "/v1/generate", {"model": "cls", "class": "4", "guidance": 2.5,
                                                            "format": "PNG", "seed": 3, "steps": 4,
                                                            "sampler": "euler"})
    assert status == 200 and ctype == "image/png"
    rec = prov.read(png)["provenance"]
    assert (rec["class"], rec["guidance"], rec["sampler"], rec["steps"], rec["seed"]) == ("4", 2.5, "euler", 4, 3)
    run = server.state.registry.get("cls")
    x = gen.generate(run, 1, seed=3, sampler="euler", steps=4, denoiser=gen.guided(run, guidance=2.5),
                     condition={"class_labels": gen.class_labels(run, "4", 1)})
    assert pixels(png) == gen.to_uint8(gen.to_unit(x))[0, ..., 0].tobytes()
    status, _, body = call(server.url, "/v1/generate", {"model": "cls", "class": "4", "count": 2, "format": "png"})
    assert status == 200 and len(json.loads(body)["images"]) == 2  # several images come back as JSON


def test_cli_and_server_pngs_agree_on_pixels_and_provenance(server, tmp_path, capsys, monkeypatch):
    """`undiffuse sample` and the server write through the same write_samples: the same
    model/seed/sampler gives the same pixels and provenance record (the time pinned). The
    CLI's record also names the weights (`weights`); the server's does not (kept as it was)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "cli"
    code, _, err = run_main(["sample", "--checkpoint", str(server.state.registry.root + "/cls"), "--num", "2",
                             "--seed", "3", "--class", "4", "--guidance", "2.5", "--sampler", "euler", "--steps", "4",
                             "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    status, _, body = call(server.url, "/v1/generate", {"model": "cls", "class": "4", "guidance": 2.5, "count": 2,
                                                        "seed": 3, "sampler": "euler", "steps": 4})
    assert status == 200, body
    for i, png in enumerate(images_of(body)):
        cli_png = (out / f"{i:06d}.png").read_bytes()
        assert pixels(png) == pixels(cli_png)
        served, written = prov.read(png)["provenance"], prov.read(cli_png)["provenance"]
        assert served["created"] == written["created"] == "2023-11-14T22:13:20Z"
        assert written.pop("weights") == "ema"
        assert served == written and served["seed"] == 3 + i and served["class"] == "4"


def test_fifty_concurrent_requests_are_batched_and_equal_their_twins(server):
    bodies = [{"model": "digits", "seed": 100 + 3 * k, "count": 1 + k % 3} for k in range(46)]
    bodies += [{"model": "digits", "seed": 500 + k, "steps": 4} for k in range(4)]  # another batch key
    server.counter.calls, before = 0, server.state.batcher.batches
    with ThreadPoolExecutor(50) as pool:
        together = list(pool.map(lambda b: call(server.url, "/v1/generate", b), bodies))
    calls_together, batches = server.counter.calls, server.state.batcher.batches - before
    server.counter.calls = 0
    alone = [call(server.url, "/v1/generate", b) for b in bodies]
    calls_alone = server.counter.calls
    assert all(r[0] == 200 for r in together + alone)
    print(f"50 requests: {batches} batches, {calls_together} network calls together, {calls_alone} alone")
    assert calls_together < len(bodies) < calls_alone, (batches, calls_together, calls_alone)  # 5 calls per batch
    assert 2 <= batches < len(bodies)  # two batch keys at least two batches
    for body, (_, _, a), (_, _, b) in zip(bodies, together, alone):
        pa, pb = images_of(a), images_of(b)
        assert len(pa) == len(pb) == body.get("count", 1)
        for x, y in zip(pa, pb):
            assert pixels(x) == pixels(y)
            assert without_time(prov.read(x)["provenance"]) == without_time(prov.read(y)["provenance"])


BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "body is empty"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b"[" * 1500, 400, "not valid JSON"),
    (b'{"model": "digits", "count": 1e400}', 400, "'count' must be an integer"),
    (b'{"count": 2}', 400, "'model' is required"),
    (b'{"model": "digits", "colour": "red"}', 400, "unknown field(s) ['colour']"),
    (b'{"model": "digits", "count": 0}', 413, "'count' must be in 1..16, got 0"),
    (b'{"model": "digits", "count": 100000}', 413, "'count' must be in 1..16"),
    (b'{"model": "digits", "count": "3"}', 400, "'count' must be an integer"),
    (b'{"model": "digits", "steps": 5000}', 400, "'steps' must be in 1..60"),
    (b'{"model": "digits", "seed": -1}', 400, "'seed' must be in 0.."),
    (b'{"model": "digits", "sampler": "fast"}', 400, "'sampler' 'fast' is unknown; allowed: "),
    (b'{"model": "digits", "format": "mp4"}', 400, "'format' 'mp4' is not allowed; allowed: json, png, wav, gif"),
    (b'{"model": "digits", "format": "gif"}', 400, "makes images, not video clips; use format 'png' or 'json'"),
    (b'{"model": "digits", "guidance": NaN}', 400, "'guidance' must be a number"),
    (b'{"model": "digits", "guidance": 3}', 400, "needs a class- or text-conditioned model"),
    (b'{"model": "digits", "class": "3"}', 400, "'class' needs a class-conditional model"),
    (b'{"model": "cls", "class": "eleven"}', 400, "unknown class 'eleven'; allowed: 0, 1"),
    (b'{"model": "digits", "prompt": "a cat"}', 400, "'prompt' needs a text-conditioned model"),
    (b'{"model": "nope"}', 404, "unknown model 'nope'; available: cls, digits"),
    (b'{"model": "not-a-run"}', 404, "cannot be loaded"),
    (b'{"model": "escape"}', 404, "unknown model 'escape'"),
    (b'{"model": 5}', 400, "model name 5 is not allowed"),
    (b'{"model": "x" }' + b" " * 3000, 413, "the limit is 2048"),
]


@pytest.mark.parametrize("raw, status, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_requests_get_4xx_with_a_clear_message(server, raw, status, message):
    got, ctype, body = call(server.url, "/v1/generate", raw=raw)
    assert got == status and ctype.startswith("application/json"), body
    assert message in json.loads(body)["error"]
    assert call(server.url, "/health")[0] == 200


@pytest.mark.parametrize("name", ["../digits", "../../etc/passwd", "digits/../cls", "/tmp", "..", ".hidden",
                                  "escape/..", "dig\\its"])
def test_model_names_cannot_leave_the_folder(server, name):
    for path in ("/v1/generate", "/v1/jobs"):
        status, _, body = call(server.url, path, {"model": name})
        assert status in (400, 404) and "not allowed" in json.loads(body)["error"], (name, body)


def test_health_answers_while_the_network_is_busy(server):
    server.counter.delay = 0.02
    try:
        with ThreadPoolExecutor(8) as pool:
            busy = [pool.submit(call, server.url, "/v1/generate", {"model": "digits", "seed": k, "steps": 20})
                    for k in range(8)]
            time.sleep(0.2)
            waits = []
            while not all(f.done() for f in busy):
                t = time.perf_counter()
                status, _, body = call(server.url, "/health", timeout=5)
                waits.append(time.perf_counter() - t)
                assert status == 200
                time.sleep(0.05)
        assert all(f.result()[0] == 200 for f in busy)
    finally:
        server.counter.delay = 0.0
    assert len(waits) >= 3 and max(waits) < 1.0, waits  # a batch takes > 0.8 s; /health never waits for it


def test_failing_generation_is_a_500_and_the_server_lives_on(server, caplog):
    server.counter.fail = True
    try:
        status, _, body = call(server.url, "/v1/generate", {"model": "digits", "seed": 1})
    finally:
        server.counter.fail = False
    assert status == 500 and "injected failure" in json.loads(body)["error"]
    assert call(server.url, "/health")[0] == 200
    assert call(server.url, "/v1/generate", {"model": "digits", "seed": 1})[0] == 200


def test_job_progress_previews_and_events(server):
    status, _, body = call(server.url, "/v1/jobs", {"model": "digits", "count": 2, "seed": 40, "steps": 6})
    assert status == 202
    job = json.loads(body)
    events, current = [], None
    with urllib.request.urlopen(server.url + job["events"], timeout=60) as stream:
        for line in stream:
            line = line.decode().strip()
            if line.startswith("event: "):
                current = line[7:]
            elif line.startswith("data: "):
                events.append((current, json.loads(line[6:])))
                if current in ("done", "failed", "cancelled"):
                    break
    assert events[-1][0] == "done" and len(events[-1][1]["images"]) == 2
    steps = [e["step"] for name, e in events if name == "progress"]
    assert steps == sorted(steps) and events[-1][1]["step"] == events[-1][1]["total"] == 6
    status, _, body = call(server.url, f"/v1/jobs/{job['id']}")
    got = json.loads(body)
    assert status == 200 and got["status"] == "done" and got["step"] == 6 and "preview" in got
    assert Image.open(io.BytesIO(base64.b64decode(got["preview"]))).size == (16, 8)  # the two images side by side
    alone = images_of(call(server.url, "/v1/generate", {"model": "digits", "count": 2, "seed": 40, "steps": 6})[2])
    assert [pixels(base64.b64decode(i["png"])) for i in got["images"]] == [pixels(p) for p in alone]


def test_cancelled_job_stops(server):
    server.counter.delay = 0.02
    try:
        status, _, body = call(server.url, "/v1/jobs", {"model": "digits", "seed": 9, "steps": 60})
        jid = json.loads(body)["id"]
        for _ in range(200):
            state = json.loads(call(server.url, f"/v1/jobs/{jid}")[2])
            if state["step"] >= 2:
                break
            time.sleep(0.02)
        status, _, body = call(server.url, f"/v1/jobs/{jid}", method="DELETE")
        assert status == 200 and json.loads(body)["cancelled"] is True
        time.sleep(0.3)
        calls = server.counter.calls
        state = json.loads(call(server.url, f"/v1/jobs/{jid}")[2])
        time.sleep(0.3)
        assert server.counter.calls == calls  # nothing runs any more
        assert state["status"] == "cancelled" and 2 <= state["step"] < 60 and "images" not in state
    finally:
        server.counter.delay = 0.0
    assert json.loads(call(server.url, f"/v1/jobs/{jid}", method="DELETE")[2])["cancelled"] is False
    assert call(server.url, "/v1/jobs/ffff0000", method="DELETE")[0] == 404


def test_content_filter_refusals_are_logged_and_never_returned(server, caplog):
    with caplog.at_level(logging.WARNING, logger="undiffuse.serve"):
        status, _, body = call(server.url, "/v1/generate", {"model": "digits", "seed": 1000, "count": 4})
        assert status == 200
        got = json.loads(body)
        assert [i["seed"] for i in got["images"]] == [1000, 1002]
        assert [r["seed"] for r in got["refused"]] == [1001, 1003]
        status, _, body = call(server.url, "/v1/generate", {"model": "digits", "seed": 1001, "format": "png"})
        assert status == 422 and "refused" in json.loads(body)["error"] and b"\x89PNG" not in body
    assert sum("content filter refused" in r.getMessage() for r in caplog.records) == 3


def test_load_filter_by_import_path():
    assert load_filter("test_serve:odd_seed_filter") is odd_seed_filter
    for spec, message in [("nocolon", "MODULE:CALLABLE"), ("no_such_module_xyz:f", "cannot be imported"),
                          ("json:nothing_here", "has no 'nothing_here'"), ("json:__doc__", "not callable")]:
        with pytest.raises(ValueError, match=message):
            load_filter(spec)


def test_queue_cap_is_a_429(models):
    app = create_app(str(models), limits=Limits(max_queue=2), window=0.0)
    with BackgroundServer(app) as srv:
        counter = Counter(app.state.server.registry.get("digits").denoiser.net)
        counter.delay = 0.05
        answers = [call(srv.url, "/v1/jobs", {"model": "digits", "seed": k, "steps": 40}) for k in range(4)]
        assert [a[0] for a in answers] == [202, 202, 429, 429]
        assert "queue is full (2 requests" in json.loads(answers[2][2])["error"]
        assert call(srv.url, "/health")[0] == 200
        for a in answers[:2]:
            call(srv.url, f"/v1/jobs/{json.loads(a[2])['id']}/cancel", raw=b"")


def test_token(models):
    app = create_app(str(models), token="s3cret")
    with BackgroundServer(app) as srv:
        assert call(srv.url, "/health")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, _, body = call(srv.url, "/v1/models", headers=headers)
            assert status == 401 and "bearer token" in json.loads(body)["error"]
            assert call(srv.url, "/v1/generate", {"model": "digits"}, headers=headers)[0] == 401
        assert call(srv.url, "/v1/models", headers={"Authorization": "Bearer s3cret"})[0] == 200
        status, _, _ = call(srv.url, "/v1/generate", {"model": "digits"}, headers={"Authorization": "Bearer s3cret"})
        assert status == 200


def test_serve_refuses_other_addresses_without_a_token(models, capsys, monkeypatch):
    monkeypatch.delenv("UNDIFFUSE_TOKEN", raising=False)
    code, _, err = run_main(["serve", "--models", str(models), "--host", "0.0.0.0"], capsys)
    assert code == 2 and "--host 0.0.0.0 is not a loopback address: give --token or set $UNDIFFUSE_TOKEN" in err
    code, _, err = run_main(["serve", "--models", str(models / "missing")], capsys)
    assert code == 2 and "is not a folder" in err
    code, _, err = run_main(["serve", "--models", str(models), "--content-filter", "json"], capsys)
    assert code == 2 and "--content-filter: content filter 'json' must be MODULE:CALLABLE" in err


def test_verify(server, tmp_path, capsys):
    png = call(server.url, "/v1/generate", {"model": "cls", "class": 7, "format": "png"})[2]
    (tmp_path / "made.png").write_bytes(png)
    code, out, _ = run_main(["verify", str(tmp_path / "made.png")], capsys)
    report = json.loads(out)
    assert code == 0 and report["provenance"] and report["parameters"] and report["model"] == "cls"
    assert report["record"]["class"] == "7"
    Image.open(io.BytesIO(png)).save(tmp_path / "stripped.png")  # re-saved without its text chunks
    code, out, err = run_main(["verify", str(tmp_path / "stripped.png")], capsys)
    assert code == 1 and json.loads(out)["provenance"] is False and "no valid undiffuse provenance" in err
    (tmp_path / "text.png").write_text("hello")
    code, _, err = run_main(["verify", str(tmp_path / "text.png")], capsys)
    assert code == 2 and "cannot read an image" in err
    code, _, err = run_main(["verify", str(tmp_path / "none.png")], capsys)
    assert code == 2 and "does not exist" in err


def test_unknown_job_path_method_and_page(server):
    for method, path, status in (("GET", "/v2/nothing", 404), ("PUT", "/v1/generate", 405),
                                 ("GET", "/v1/generate", 405)):
        got, ctype, body = call(server.url, path, method=method)
        assert got == status and ctype.startswith("application/json") and path in json.loads(body)["error"]
    status, _, body = call(server.url, "/v1/jobs/abc")
    assert status == 404 and "no job 'abc'" in json.loads(body)["error"]
    status, ctype, body = call(server.url, "/")
    assert status == 200 and ctype.startswith("text/html") and b"undiffuse" in body


def test_serve_command_line(models, tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent / "src"), str(Path(__file__).resolve().parent)])}
    proc = subprocess.Popen([sys.executable, "-m", "undiffuse", "serve", "--models", str(models), "--port", str(port),
                             "--max-count", "2", "--content-filter", "test_serve:odd_seed_filter"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if call(url, "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        status, _, body = call(url, "/v1/generate", {"model": "digits", "count": 3})
        assert status == 413 and "'count' must be in 1..2" in json.loads(body)["error"]
        status, _, body = call(url, "/v1/generate", {"model": "digits", "count": 2, "seed": 1002})
        assert status == 200 and [i["seed"] for i in json.loads(body)["images"]] == [1002]
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "content filter refused model=digits seed=1003" in out


def test_text_prompts_are_served_and_batched_like_the_cli(tmp_path, capsys):
    """A text-conditioned run over HTTP: requests with different prompts share one network
    batch, and each gets the pixels `undiffuse sample --prompt` gives for its seeds."""
    folder = tmp_path / "models"
    folder.mkdir()
    assert main(["train", "--data", "digits", "--max-steps", "2", "--conditioning", "text",
                 "--out", str(folder / "txt"), *TINY]) == 0
    app = create_app(str(folder), window=0.5)
    requests = [{"model": "txt", "prompt": p, "count": 2, "seed": s, "steps": 3, "sampler": "euler",
                 "format": "json"} for p, s in (("a seven", 5), ("the digit zero", 40))]
    with BackgroundServer(app) as srv:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda body: call(srv.url, "/v1/generate", body), requests))
        batches = app.state.server.batcher.batches
        status, _, body = call(srv.url, "/v1/generate", {**requests[0], "class": 3})
        assert status == 400  # a class for a text model: named in the error
    assert batches == 1, "the two prompts were not merged into one batch"
    for req, (status, _, body) in zip(requests, answers):
        assert status == 200, body
        out = tmp_path / f"{req['seed']}.npz"
        code, _, err = run_main(["sample", "--checkpoint", str(folder / "txt"), "--prompt", req["prompt"],
                                 "--num", "2", "--seed", str(req["seed"]), "--steps", "3", "--sampler", "euler",
                                 "--format", "npz", "--out", str(out), "--no-progress"], capsys)
        assert code == 0, err
        want = gen.to_uint8(__import__("torch").from_numpy(np.load(out)["samples"]))
        got = [np.asarray(Image.open(io.BytesIO(png))) for png in images_of(body)]
        for g, w in zip(got, want):
            assert np.abs(g.astype(int).reshape(w.shape) - w.astype(int)).max() <= 1  # float batch rounding


def test_control_images_are_served_like_the_cli(tmp_path, capsys):
    """A control run over HTTP: a base64 control image gives the pixels `undiffuse sample
    --control-image` gives; a bad image or a model without an adapter is a 400."""
    folder = tmp_path / "models"
    folder.mkdir()
    assert main(["train", "--data", "digits", "--max-steps", "2", "--out", str(tmp_path / "base"), *TINY]) == 0
    assert main(["train-control", "--base", str(tmp_path / "base"), "--control", "edges", "--max-steps", "2",
                 "--out", str(folder / "ctrl"), "--no-progress", "--set", "train.sample_count=4"]) == 0
    picture = tmp_path / "seven.png"
    Image.fromarray(np.kron(np.eye(8, dtype=np.uint8)[::-1] * 255, np.ones((1, 1), np.uint8))).save(picture)
    encoded = base64.b64encode(picture.read_bytes()).decode()
    app = create_app(str(folder), window=0.05)
    with BackgroundServer(app) as srv:
        status, _, body = call(srv.url, "/v1/generate", {"model": "ctrl", "count": 2, "seed": 4,
                                                         "control_image": encoded, "control_scale": 0.5})
        assert status == 200, body
        bad = call(srv.url, "/v1/generate", {"model": "ctrl", "control_image": "bm90IGFuIGltYWdl"})
        scale_alone = call(srv.url, "/v1/generate", {"model": "ctrl", "control_scale": 1})
    assert bad[0] == 400 and b"not an image" in bad[2]
    assert scale_alone[0] == 400 and b"'control_scale' needs 'control_image'" in scale_alone[2]
    out = tmp_path / "cli.npz"
    code, _, err = run_main(["sample", "--checkpoint", str(folder / "ctrl"), "--control-image", str(picture),
                             "--control-image", str(picture), "--control-scale", "0.5", "--seed", "4", "--format",
                             "npz", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    want = gen.to_uint8(__import__("torch").from_numpy(np.load(out)["samples"]))
    got = [np.asarray(Image.open(io.BytesIO(png))) for png in images_of(body)]
    for g, w in zip(got, want):
        assert np.abs(g.astype(int).reshape(w.shape) - w.astype(int)).max() <= 1
    rec = prov.read(images_of(body)[0])["provenance"]
    assert len(rec["control_image_sha256"]) == 64 and rec["control_scale"] == 0.5
