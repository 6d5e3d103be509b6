"""Serving benchmark: starts `mfql-serve`, drives closed-loop load over each protocol, prints JSON.

    python benchmarks/serve.py                       # a reference-size MLP stand-in bundle, 4 s per load
    python benchmarks/serve.py --repository DIR --model NAME --duration 10
    python benchmarks/serve.py --peers --repository server/default_model --model cube-single

`--peers` measures mfql against two peers it starts itself on the same bundle, with one shared
aiohttp closed-loop client, in interleaved rounds: the no-op FastAPI floor
(benchmarks/peer_noop.py) and a plain FastAPI + onnxruntime handler without batching
(benchmarks/peer_onnx.py). It prints the ratios issue 13 set as goals (REST c=32 throughput
vs the floor, REST c=1 p50 vs the plain handler, WebSocket c=1 p50 vs the floor's p50) and
how close mfql-bench (1 and 2 worker processes) pushes the floor compared with that client.

Measures, each at batch 1 per request: throughput and p50/p99 latency at concurrency 1/8/32;
dynamic batching on vs off (`--max-batch-size 1`); K=5 vs K=1; REST vs WebSocket vs v2;
requests of mixed K grouped by K (the default) vs padded into one run; and, in-process, the ONNX Runtime
session options the server sets (spinning, denormals-as-zero, threads).

Not a test: numbers depend on the machine and its load. The load generator shares the CPU
with the server (on 2 cores, it is a real part of the cost), so compare ratios, not absolutes.
Without `--repository` the model is a torch-free stand-in with the reference MLP policy's size
(actor 4 x 512, two critics 4 x 512, cube-single dims) built with onnx.helper.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from clients import codec  # noqa: E402
from tests.server.live import serving  # noqa: E402

CONCURRENCY = (1, 8, 32)
OBS_DIM, ACTION_DIM, MAX_K = 28, 5, 32


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the stand-in model --------------------------------------------------------------------


def mlp_policy_graph(obs_dim: int, action_dim: int, width: int = 512, depth: int = 4, critics: int = 2):
    """The bundle signature around MLPs of the reference size: candidates from (obs, noise), best of K by
    the critics' mean. Weights are random: latency does not depend on them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    initializers, nodes = [], []

    def weight(name: str, rows: int, cols: int) -> str:
        initializers.append(
            numpy_helper.from_array(
                (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32), name
            )
        )
        return name

    def constant(name: str, value) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attributes) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    constant("axis1", np.array([1], np.int64))
    constant("axis2", np.array([2], np.int64))

    def mlp(prefix: str, first_obs: str, first_other: str, other_dim: int, out_dim: int) -> str:
        # first layer split in an observation part [B, 1, H] and a per-candidate part [B, K, H]
        obs_part = node("Unsqueeze", [node("MatMul", ["observation", weight(f"{prefix}.w0o", obs_dim, width)],
                                           f"{prefix}.o"), "axis1"], f"{prefix}.o3")  # fmt: skip
        hidden = node("Relu", [node("Add", [obs_part, node("MatMul", [first_other, weight(f"{prefix}.w0c", other_dim, width)],
                                                           f"{prefix}.c")], f"{prefix}.h0p")], f"{prefix}.h0")  # fmt: skip
        for layer in range(1, depth):
            hidden = node("Relu", [node("MatMul", [hidden, weight(f"{prefix}.w{layer}", width, width)], f"{prefix}.m{layer}")],
                          f"{prefix}.h{layer}")  # fmt: skip
        return node("MatMul", [hidden, weight(f"{prefix}.out", width, out_dim)], f"{prefix}.y")

    raw = mlp("actor", "observation", "noise", action_dim, action_dim)
    candidates = node("Clip", [node("Tanh", [raw], "squashed"), constant("low", np.float32(-1)),
                               constant("high", np.float32(1))], "candidates")  # fmt: skip
    values = [mlp(f"critic{i}", "observation", "candidates", action_dim, 1) for i in range(critics)]
    total = values[0]
    for i, value in enumerate(values[1:]):
        total = node("Add", [total, value], f"qsum{i}")
    mean = node("Mul", [total, constant("inverse", np.float32(1 / critics))], "qmean")
    scores = node("Squeeze", [mean, "axis2"], "scores")
    best = node("ArgMax", [scores], "best", axis=1, keepdims=1, select_last_index=0)
    node("Squeeze", [node("GatherElements", [scores, best], "best_score", axis=1), "axis1"], "q_value")
    shape = node("Shape", [candidates], "candidate_shape")
    gather_shape = node("Add", [node("Mul", [shape, constant("keep", np.array([1, 0, 1], np.int64))], "zeroed"),
                                constant("one", np.array([0, 1, 0], np.int64))], "gather_shape")  # fmt: skip
    index = node("Expand", [node("Unsqueeze", [best, "axis2"], "best3"), gather_shape], "best_index")
    chosen = node("GatherElements", [candidates, index], "chosen", axis=1)
    node("Squeeze", [chosen, "axis1"], "action")
    graph = helper.make_graph(
        nodes,
        "mlp_policy",
        inputs=[helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["B", obs_dim]),
                helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", "K", action_dim])],
        outputs=[helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", action_dim]),
                 helper.make_tensor_value_info("q_value", TensorProto.FLOAT, ["B"]),
                 helper.make_tensor_value_info("candidates", TensorProto.FLOAT, ["B", "K", action_dim])],
        initializer=initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def write_standin_repository(root: Path, name: str = "bench-mlp") -> Path:
    import onnx

    bundle = root / name / "1"
    bundle.mkdir(parents=True)
    onnx.save(mlp_policy_graph(OBS_DIM, ACTION_DIM), bundle / "policy.onnx")
    tensor = lambda n, shape: {"name": n, "dtype": "float32", "shape": shape}  # noqa: E731
    metadata = {
        "format_version": 1, "name": name, "obs_dim": OBS_DIM, "action_dim": ACTION_DIM,
        "action_low": [-1.0] * ACTION_DIM, "action_high": [1.0] * ACTION_DIM,
        "default_num_candidates": 1, "max_num_candidates": MAX_K, "policy_type": "mlp",
        "env_name": "cube-single-play-singletask-task2-v0", "training_step": None, "success_rate": None,
        "inputs": [tensor("observation", ["B", OBS_DIM]), tensor("noise", ["B", "K", ACTION_DIM])],
        "outputs": [tensor("action", ["B", ACTION_DIM]), tensor("q_value", ["B"]),
                    tensor("candidates", ["B", "K", ACTION_DIM])],
        "files": {"onnx": "policy.onnx"},
    }  # fmt: skip
    (bundle / "metadata.json").write_text(json.dumps(metadata, indent=2))
    sums = [
        f"{hashlib.sha256((bundle / f).read_bytes()).hexdigest()}  {f}\n"
        for f in ("metadata.json", "policy.onnx")
    ]
    (bundle / "SHA256SUMS").write_text("".join(sums))
    return root


# ---- measurements ------------------------------------------------------------------------


def v2_binary_body(observation: np.ndarray, parameters: dict) -> tuple[bytes, dict]:
    header = {
        "inputs": [{"name": "observation", "shape": [1, observation.size], "datatype": "FP32",
                    "parameters": {"binary_data_size": observation.nbytes}}],
        "parameters": {**parameters, "binary_data_output": True},
    }  # fmt: skip
    text = json.dumps(header).encode()
    return text + observation.tobytes(), {"Inference-Header-Content-Length": str(len(text))}


class Slot:
    """One closed-loop client: a persistent connection that sends its next request when answered."""

    def __init__(self, url: str, model: str, protocol: str, k: int | None):
        self.protocol, self.model = protocol, model
        self.parameters = {} if k is None else {"num_candidates": k}
        host, port = url.removeprefix("http://").split(":")
        if protocol == "ws":
            import websockets.sync.client

            self.ws = websockets.sync.client.connect(
                f"ws://{host}:{port}/v1/models/{model}/ws", compression=None
            )
            self.ws.recv()  # the metadata sent on connect
        else:
            self.http = http.client.HTTPConnection(host, int(port), timeout=30)

    def send(self, observation: np.ndarray) -> str:
        """One request; its status ("200" when answered)."""
        if self.protocol == "ws":
            self.ws.send(codec.packb({"observation": observation, **self.parameters}))
            return "200" if isinstance(self.ws.recv(), bytes) else "error frame"
        if self.protocol == "rest":
            path = f"/v1/models/{self.model}/act"
            body = json.dumps({"observation": observation.tolist(), **self.parameters}).encode()
            headers = {"Content-Type": "application/json"}
        else:
            path = f"/v2/models/{self.model}/infer"
            body, headers = v2_binary_body(observation, self.parameters)
        self.http.request("POST", path, body, headers)
        response = self.http.getresponse()
        response.read()
        return str(response.status)

    def close(self) -> None:
        (self.ws if self.protocol == "ws" else self.http).close()


def closed_loop(
    url: str, model: str, protocol: str, concurrency: int, duration: float, k: int | None = None
) -> dict:
    """`concurrency` threads, each with its own connection, sending batch-1 requests back to back.

    Plain sockets in threads instead of mfql-bench's asyncio httpx client: on 2 cores that
    client saturates (~400 requests/s even on /v2/health/live) long before the server does.
    """
    log(f"  {protocol} concurrency={concurrency} K={k or 'default'}")
    observations = np.random.default_rng(0).standard_normal((64, OBS_DIM)).astype(np.float32)
    slots = [Slot(url, model, protocol, k) for _ in range(concurrency)]
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    end = time.perf_counter() + duration

    def drive(slot: Slot, index: int) -> None:
        mine, failed = [], Counter()
        while time.perf_counter() < end:
            started = time.perf_counter()
            status = slot.send(observations[index % len(observations)])
            index += 1
            if status == "200":
                mine.append(time.perf_counter() - started)
            else:
                failed[status] += 1
        with lock:
            latencies.extend(mine)
            errors.update(failed)

    started = time.perf_counter()
    threads = [threading.Thread(target=drive, args=(slot, i)) for i, slot in enumerate(slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for slot in slots:
        slot.close()
    p50, p99 = np.percentile(np.asarray(latencies) * 1e3, [50, 99]) if latencies else (None, None)
    return {
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": None if p50 is None else round(float(p50), 3),
        "p99_ms": None if p99 is None else round(float(p99), 3),
        "ok": len(latencies),
        "errors": dict(errors),
    }


def mixed_k_load(url: str, model: str, duration: float) -> dict:
    """Half the WebSocket clients ask K=1, half K=8, at once: the batches mix the two."""
    log("  ws mixed K=1/K=8, concurrency 2 x 8")
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(closed_loop, url, model, "ws", 8, duration, k) for k in (1, 8)]
        k1, k8 = (run.result() for run in runs)
    return {
        "throughput_rps": round(k1["throughput_rps"] + k8["throughput_rps"], 1),
        "p50_ms_k1": k1["p50_ms"],
        "p50_ms_k8": k8["p50_ms"],
        "errors": {**k1["errors"], **k8["errors"]},
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


def serve_and_measure(repository: Path, model: str, duration: float, *args: str, measure) -> dict:
    with serving(repository, *args, ready_timeout=120.0) as server:
        return measure(server.url)


def session_option_timings(repository: Path, model: str, repeats: int = 300) -> dict:
    """In-process: median ms per session.run at (B, K) for the SessionOptions the server can set."""
    from server.bundle_loader import read_bundle
    from server.runner import OnnxRunner
    from server.settings import ServerSettings

    bundle = read_bundle(next((repository / model).iterdir()))
    variants = {
        "server_default": {},
        "allow_spinning": {"allow_spinning": True},
        "denormals_kept": {"denormal_as_zero": False},
        "two_intra_op_threads": {"intra_op_threads": 2},
    }
    rng = np.random.default_rng(0)
    timings = {}
    for label, options in variants.items():
        settings = ServerSettings(model_repository=repository, **options)
        runner = OnnxRunner(
            bundle.file("onnx"), settings, bundle.metadata.obs_dim, bundle.metadata.action_dim
        )
        row = {}
        for b, k in ((1, 1), (32, 5), (256, 1)):
            observation = rng.standard_normal((b, bundle.metadata.obs_dim)).astype(np.float32)
            noise = rng.standard_normal((b, k, bundle.metadata.action_dim)).astype(np.float32)
            for _ in range(20):
                runner(observation, noise)
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                runner(observation, noise)
                samples.append(time.perf_counter() - started)
            row[f"B{b}_K{k}_ms"] = round(float(np.median(samples)) * 1e3, 4)
        timings[label] = row
    return timings


# ---- peers: the no-op FastAPI floor and a plain FastAPI + onnxruntime handler -------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def peer(module: str, bundle: Path, scratch: Path) -> Iterator[tuple[str, int]]:
    """`uvicorn benchmarks.<module>:app` on a port of its own (read from its log); yields (URL, pid)."""
    log = scratch / f"{module}.log"
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        f"benchmarks.{module}:app",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    env = {**os.environ, "MFQL_PEER_BUNDLE": str(bundle)}
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, "--no-access-log"], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while not (bound := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield bound[1], process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)


async def aiohttp_closed_loop(url: str, model: str, protocol: str, concurrency: int, duration: float) -> dict:
    """The shared client: `concurrency` coroutines, each sending its next request when answered."""
    import aiohttp

    observations = np.random.default_rng(0).standard_normal((64, OBS_DIM_OF[model])).astype(np.float32)
    bodies = [json.dumps({"observation": o.tolist()}).encode() for o in observations]
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors: Counter = Counter()
    end = 0.0

    async def rest(session, index: int) -> None:
        while time.perf_counter() < end:
            started = time.perf_counter()
            async with session.post(
                f"{url}/v1/models/{model}/act", data=bodies[index % 64], headers=headers
            ) as r:
                await r.read()
            index += 1
            if r.status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors[str(r.status)] += 1

    async def websocket(session, index: int) -> None:
        async with session.ws_connect(
            f"{url.replace('http', 'ws', 1)}/v1/models/{model}/ws", compress=0
        ) as ws:
            await ws.receive_bytes()  # the metadata sent on connect
            while time.perf_counter() < end:
                started = time.perf_counter()
                await ws.send_bytes(codec.packb({"observation": observations[index % 64]}))
                reply = await ws.receive()
                index += 1
                if reply.type == aiohttp.WSMsgType.BINARY:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors["error frame"] += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        drive = websocket if protocol == "ws" else rest
        started = time.perf_counter()
        end = started + duration
        await asyncio.gather(*(drive(session, i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    p50, p99 = np.percentile(np.asarray(latencies) * 1e3, [50, 99]) if latencies else (None, None)
    return {
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": None if p50 is None else round(float(p50), 3),
        "p99_ms": None if p99 is None else round(float(p99), 3),
        "errors": dict(errors),
    }


OBS_DIM_OF: dict[str, int] = {}


def bench_closed_loop(url: str, model: str, concurrency: int, duration: float, workers: int) -> dict:
    from clients.bench import LoadSpec, run_load

    spec = LoadSpec(
        url, model, "rest", concurrency=concurrency, duration=duration, max_requests=10**7, workers=workers
    )
    result = asyncio.run(run_load(spec))
    return {"throughput_rps": round(result["throughput_rps"], 1), "p50_ms": round(result["latency_ms"]["p50"], 3),
            "errors": result["errors"]}  # fmt: skip


def peers_round(servers: dict[str, tuple[str, int]], model: str, duration: float) -> dict:
    """Every server at c=1 and c=32 with the shared client, plus mfql-bench on the floor.

    Each row also has the server's CPU time per answered request (all its threads), which a
    machine shared with other jobs disturbs far less than latency or throughput."""
    rows = {}
    for name, protocol, concurrencies in (
        ("floor", "rest", (1, 32)),
        ("plain_onnxruntime", "rest", (1, 32)),
        ("mfql_rest", "rest", (1, 32)),
        ("mfql_ws", "ws", (1, 32)),
        # the same mfql with --inline-below-us 0: every request through the inference thread
        ("mfql_rest_threaded", "rest", (1,)),
        ("mfql_ws_threaded", "ws", (1,)),
    ):
        url, pid = servers[name]
        for concurrency in concurrencies:
            log(f"  {name} c={concurrency}")
            before = cpu_seconds(pid)
            row = asyncio.run(aiohttp_closed_loop(url, model, protocol, concurrency, duration))
            answered = row["throughput_rps"] * duration
            row["server_cpu_ms_per_request"] = round((cpu_seconds(pid) - before) * 1e3 / max(answered, 1), 3)
            rows[f"{name}_c{concurrency}"] = row
    for workers in (1, 2):
        log(f"  mfql-bench on the floor, c=32, {workers} worker(s)")
        rows[f"mfql_bench_floor_c32_w{workers}"] = bench_closed_loop(
            servers["floor"][0], model, 32, duration, workers
        )
    return rows


def peer_ratios(rows: dict) -> dict:
    rps = lambda key: rows[key]["throughput_rps"]  # noqa: E731
    p50 = lambda key: rows[key]["p50_ms"]  # noqa: E731
    return {
        "rest_c32_throughput_vs_floor": ratio(rps("mfql_rest_c32"), rps("floor_c32")),  # goal >= 0.75
        "rest_c1_p50_vs_plain_onnxruntime": ratio(p50("mfql_rest_c1"), p50("plain_onnxruntime_c1")),  # <= 1
        "ws_c1_p50_vs_floor_p50": ratio(p50("mfql_ws_c1"), p50("floor_c1")),  # goal <= 1.5
        # what running a lone request on the event loop saves (--inline-below-us, default vs 0)
        "rest_c1_p50_inline_vs_threaded": ratio(p50("mfql_rest_c1"), p50("mfql_rest_threaded_c1")),
        "ws_c1_p50_inline_vs_threaded": ratio(p50("mfql_ws_c1"), p50("mfql_ws_threaded_c1")),
        "mfql_bench_1_worker_vs_aiohttp_on_floor_c32": ratio(
            rps("mfql_bench_floor_c32_w1"), rps("floor_c32")
        ),
        "mfql_bench_2_workers_vs_aiohttp_on_floor_c32": ratio(
            rps("mfql_bench_floor_c32_w2"), rps("floor_c32")
        ),
    }


def run_peers(repository: Path, model: str, duration: float, rounds: int) -> dict:
    bundle = max((repository / model).iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
    OBS_DIM_OF[model] = json.loads((bundle / "metadata.json").read_text())["obs_dim"]
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        servers = {
            "floor": stack.enter_context(peer("peer_noop", bundle, Path(scratch))),
            "plain_onnxruntime": stack.enter_context(peer("peer_onnx", bundle, Path(scratch))),
        }
        server = stack.enter_context(serving(repository, ready_timeout=120.0, log_dir=Path(scratch)))
        servers["mfql_rest"] = servers["mfql_ws"] = (server.url, server.process.pid)
        threaded = stack.enter_context(
            serving(repository, "--inline-below-us", "0", ready_timeout=120.0, log_dir=Path(scratch))
        )
        servers["mfql_rest_threaded"] = servers["mfql_ws_threaded"] = (threaded.url, threaded.process.pid)
        # Warm-up, not recorded: a fresh server answered its first half second of load several
        # times slower (measured: REST c=1 p50 5.2 ms, then 0.8), and the first load of a round
        # would otherwise pay it for one server only.
        log("warm-up: every server, both protocols, c=1 and c=32, 0.5 s each")
        for url, _ in set(servers.values()):
            for protocol in ("rest", "ws") if url in (server.url, threaded.url) else ("rest",):
                for concurrency in (1, 32):
                    asyncio.run(aiohttp_closed_loop(url, model, protocol, concurrency, 0.5))
        runs = []
        for index in range(rounds):
            log(f"round {index + 1} of {rounds}")
            rows = peers_round(servers, model, duration)
            runs.append({"rows": rows, "ratios": peer_ratios(rows)})
    medians = {key: round(statistics.median(r["ratios"][key] for r in runs), 3) for key in runs[0]["ratios"]}
    return {"model": model, "duration_s_per_load": duration, "rounds": runs, "median_ratios": medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="model repository (default: a generated stand-in)")
    parser.add_argument("--model", default="bench-mlp")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per load")
    parser.add_argument(
        "--peers", action="store_true", help="mfql vs the no-op floor and plain FastAPI + ORT"
    )
    parser.add_argument("--rounds", type=int, default=2, help="--peers: interleaved rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        repository = args.repository or write_standin_repository(Path(scratch) / "repository")
        if args.peers:
            report = run_peers(repository.resolve(), args.model, args.duration, args.rounds)
        else:
            report = run(repository, args.model, args.duration)
    print(json.dumps(report, indent=2))


def run(repository: Path, model: str, duration: float) -> dict:
    log("session options (in-process)")
    report: dict = {
        "model": model,
        "duration_s_per_load": duration,
        "session_options": session_option_timings(repository, model),
    }

    def by_concurrency(url: str, protocols=("rest", "ws")) -> dict:
        return {f"{p}_c{c}": closed_loop(url, model, p, c, duration) for p in protocols for c in CONCURRENCY}

    def batched(url: str) -> dict:
        rows = by_concurrency(url, ("rest", "ws", "v2"))
        for p, c, k in ((p, c, k) for p in ("rest", "ws") for c in (1, 8) for k in (1, 5)):
            rows[f"{p}_c{c}_k{k}"] = closed_loop(url, model, p, c, duration, k=k)
        rows["mixed_k"] = mixed_k_load(url, model, duration)
        return rows

    log("server: dynamic batching (defaults: max batch 256, delay 500 us, mixed K grouped)")
    on = serve_and_measure(repository, model, duration, measure=batched)
    log("server: batching off (--max-batch-size 1)")
    off = serve_and_measure(repository, model, duration, "--max-batch-size", "1", measure=by_concurrency)
    log("server: no queue delay (--max-queue-delay-us 0: batches form only while the runtime is busy)")
    eager = serve_and_measure(
        repository, model, duration, "--max-queue-delay-us", "0", measure=by_concurrency
    )
    log("server: mixed K padded (--mixed-candidates pad)")
    mixed = lambda url: mixed_k_load(url, model, duration)  # noqa: E731
    padded = serve_and_measure(repository, model, duration, "--mixed-candidates", "pad", measure=mixed)
    report.update(batched=on, unbatched=off, no_queue_delay=eager, mixed_k_padded=padded)
    rows = [(p, c) for p in ("rest", "ws") for c in CONCURRENCY]
    report["ratios"] = {
        **{f"batched_vs_unbatched_throughput_{p}_c{c}": ratio(on[f"{p}_c{c}"]["throughput_rps"],
                                                              off[f"{p}_c{c}"]["throughput_rps"]) for p, c in rows},
        **{f"batched_vs_unbatched_p99_{p}_c{c}": ratio(on[f"{p}_c{c}"]["p99_ms"], off[f"{p}_c{c}"]["p99_ms"])
           for p, c in rows},
        **{f"delay500us_vs_delay0_throughput_{p}_c{c}": ratio(on[f"{p}_c{c}"]["throughput_rps"],
                                                             eager[f"{p}_c{c}"]["throughput_rps"]) for p, c in rows},
        **{f"delay500us_vs_delay0_p50_{p}_c{c}": ratio(on[f"{p}_c{c}"]["p50_ms"], eager[f"{p}_c{c}"]["p50_ms"])
           for p, c in rows},
        **{f"k5_vs_k1_throughput_{p}_c{c}": ratio(on[f"{p}_c{c}_k5"]["throughput_rps"],
                                                  on[f"{p}_c{c}_k1"]["throughput_rps"])
           for p in ("rest", "ws") for c in (1, 8)},
        **{f"k5_vs_k1_p50_{p}_c{c}": ratio(on[f"{p}_c{c}_k5"]["p50_ms"], on[f"{p}_c{c}_k1"]["p50_ms"])
           for p in ("rest", "ws") for c in (1, 8)},
        **{f"{p}_vs_rest_throughput_c{c}": ratio(on[f"{p}_c{c}"]["throughput_rps"], on[f"rest_c{c}"]["throughput_rps"])
           for p in ("ws", "v2") for c in CONCURRENCY},
        "mixed_k_group_vs_pad_throughput": ratio(on["mixed_k"]["throughput_rps"], padded["throughput_rps"]),
    }  # fmt: skip
    return report


if __name__ == "__main__":
    main()
