"""The gRPC service end to end: a real server on a loopback port with the tiny random checkpoint, real clients."""

import asyncio
import io
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiny import camera_image

from emu35_robot import AsyncPlannerClient, Limits, Options, PlannerClient, PlannerServer
from emu35_robot.proto import common_pb2, exploration_pb2, exploration_pb2_grpc, planner_pb2, planner_pb2_grpc
from emu35_robot.servicers import ModelInfo
from emu35_robot.types import ImageProgress, Plan, SamplingParams, Subgoal
from model.engine import load_engine

# max_batch=1: one request decodes, the next waits (the queue tests need a full batch); batching: test_batched_plans
LIMITS = Limits(max_queue=1, max_image_bytes=300_000, max_image_pixels=512 * 512, max_images=2, max_sessions=2,
                max_batch=1)  # fmt: skip


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # the decoder thread competes with gRPC threads on 2 cores


@pytest.fixture(scope="module")
def engine(bundle):
    return load_engine(bundle.model, bundle.tokenizer, bundle.vision_tokenizer, max_len=2048)


def info(bundle):
    return ModelInfo("tiny-random", str(bundle.model), True, "float32", 0)


@pytest.fixture(scope="module")
def server(engine, bundle):
    s = PlannerServer(port=0, host="127.0.0.1", limits=LIMITS, metrics_port=0, grace_s=5).start()
    s.attach(engine, info(bundle))
    yield s
    s.stop(0)


@pytest.fixture
def client(server):
    with PlannerClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c


def png(im):
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def force_images(engine, size=(3, 3), **kw):
    return Options(image_size=size, seed=1, logit_bias={engine.tok.boi_id: 50.0}, **kw)


def endless(engine, **kw):
    """Text that never stops by itself: EOS and BOI suppressed."""
    return Options(seed=2, cfg_scale=1.0, logit_bias={engine.tok.eos_id: -100.0, engine.tok.boi_id: -100.0}, **kw)


def wait_for(cond, timeout=20.0):
    t = time.time()
    while not cond():
        assert time.time() - t < timeout, "timed out"
        time.sleep(0.02)


def requests_count(server, method, code):
    return server.metrics.requests.labels(method, code)._value.get()


# ---- every method -------------------------------------------------------------------------------------------------
def test_plan_streams_subgoals_with_keyframes(client, engine):
    events = list(client.plan_stream("stack the red block on the blue block", [camera_image()], max_subgoals=2,
                                     options=force_images(engine, max_new_tokens=300)))  # fmt: skip
    plan = events[-1]
    assert isinstance(plan, Plan) and plan.usage.reason == "max_subgoals"
    subgoals = [e for e in events if isinstance(e, Subgoal)]
    assert len(subgoals) == len(plan.subgoals) == 2
    for s in plan.subgoals:
        assert s.image.size == (3 * 16, 3 * 16) and s.codes.shape == (3, 3)
    assert [p.rows_done for p in events if isinstance(p, ImageProgress) and p.index == 0] == [1, 2, 3]
    assert plan.usage.generated_tokens > 0 and plan.usage.timings["total_s"] > 0 and "queue_s" in plan.usage.timings


def test_plan_accepts_raw_rgb_and_jpeg(client, engine):
    jpeg = io.BytesIO()
    camera_image(3).save(jpeg, format="JPEG")
    plan = client.plan("open the drawer", [np.asarray(camera_image(2)), jpeg.getvalue()], max_subgoals=1,
                       options=force_images(engine, max_new_tokens=120))  # fmt: skip
    assert len(plan.subgoals) == 1 and plan.usage.prompt_tokens > 20


@pytest.mark.parametrize("task", ["t2i", "x2i", "story", "howto"])
def test_generate_every_task(client, engine, task):
    images = [camera_image()] if task == "x2i" else []
    g = client.generate(task, "a robot arm over a table", images, options=force_images(engine, max_new_tokens=40))
    assert g.task == task and g.usage.generated_tokens == 40 or g.usage.reason == "eos"
    assert g.images and g.images[0].codes.shape == (3, 3)


def test_jacobi_window_through_the_service_keeps_greedy_output(client, engine):
    """The server batches requests (max_batch 1 here): the Jacobi request's windows run in the batch."""
    greedy = SamplingParams(temperature=0.0)
    kw = dict(size=(3, 4), max_new_tokens=40, text_sampling=greedy, image_sampling=greedy)
    plain = client.generate("t2i", "a red cube", options=force_images(engine, **kw))
    fast = client.generate("t2i", "a red cube", options=force_images(engine, jacobi_window=8, **kw))
    assert [i.codes.tolist() for i in fast.images] == [i.codes.tolist() for i in plain.images] and plain.images


def test_explore_keeps_the_session_between_turns(client, engine):
    opts = force_images(engine, size=(2, 2), max_new_tokens=30)
    session = client.explore("a kitchen with a red kettle", [camera_image()], options=opts)
    first = session.first
    assert first.views and first.context_tokens > first.usage.prompt_tokens
    t1 = session.step("move forward")
    t2 = session.step("turn left")
    session.close()
    assert [t.turn for t in session.turns] == [0, 1, 2]
    # later turns prefill only their own tokens: the previous answer's last token + " USER: ... ASSISTANT: ..."
    n = len(engine.tok.encode(" USER: move forward ASSISTANT: <|extra_100|>")) + 1
    assert t1.usage.prompt_tokens <= n < first.usage.prompt_tokens
    assert first.context_tokens < t1.context_tokens < t2.context_tokens <= t2.context_limit
    assert t1.views and t1.views[0].image.size == (32, 32)


def test_get_info(client, server):
    i = client.info()
    assert i.random_weights and i.limits.max_queue == 1 and i.limits.context_tokens == 2048
    assert set(i.tasks) >= {"vla", "t2i", "x2i", "story", "howto", "explore"} and i.device == "cpu"


def test_async_client(server, engine):
    async def main():
        async with AsyncPlannerClient(f"127.0.0.1:{server.port}", timeout=60) as c:
            plan = await c.plan("wipe the table", [camera_image()], max_subgoals=1, options=force_images(engine))
            info = await c.info()
            g = await c.generate("story", "a day at the lab", options=force_images(engine, max_new_tokens=20))
            s = await c.explore(
                "a garden", [camera_image()], options=force_images(engine, size=(2, 2), max_new_tokens=20)
            )
            t = await s.step("look up")
            await s.close()
            return plan, info, g, t

    plan, info, g, t = asyncio.run(main())
    assert len(plan.subgoals) == 1 and info.limits.max_images == 2 and g.usage.generated_tokens > 0
    assert t.turn == 1


# ---- status codes -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: planner_pb2.PlanRequest(instruction="  ", images=[common_pb2.ImageInput(encoded=png(camera_image()))]),
         "instruction is empty"),
        (lambda: planner_pb2.PlanRequest(instruction="x" * 5000,
                                         images=[common_pb2.ImageInput(encoded=png(camera_image()))]),
         "4096"),
        (lambda: planner_pb2.PlanRequest(instruction="go"), "at least one image"),
        (lambda: planner_pb2.PlanRequest(instruction="go", images=[common_pb2.ImageInput(encoded=b"not an image")]),
         r"images\[0\]: cannot decode"),
        (lambda: planner_pb2.PlanRequest(instruction="go",
                                         images=[common_pb2.ImageInput(encoded=png(camera_image(size=(600, 600))))]),
         "exceeds the limit"),
        (lambda: planner_pb2.PlanRequest(instruction="go",
                                         images=[common_pb2.ImageInput(encoded=png(camera_image()))] * 3),
         "3 images exceeds"),
        (lambda: planner_pb2.PlanRequest(
            instruction="go", images=[common_pb2.ImageInput(raw=common_pb2.RawImage(data=b"abc", height=4, width=4))]),
         r"images\[0\].raw.data has 3 bytes"),
        (lambda: planner_pb2.PlanRequest(instruction="go", images=[common_pb2.ImageInput(encoded=png(camera_image()))],
                                         options=common_pb2.GenerationOptions(max_new_tokens=10**6)),
         "max_new_tokens"),
        (lambda: planner_pb2.PlanRequest(
            instruction="go", images=[common_pb2.ImageInput(encoded=png(camera_image()))],
            options=common_pb2.GenerationOptions(text_sampling=common_pb2.SamplingParams(top_p=1.5))),
         "text_sampling.top_p"),
        (lambda: planner_pb2.PlanRequest(instruction="go", images=[common_pb2.ImageInput(encoded=png(camera_image()))],
                                         max_subgoals=99), "max_subgoals"),
        (lambda: planner_pb2.PlanRequest(instruction="go", images=[common_pb2.ImageInput(encoded=png(camera_image()))],
                                         options=common_pb2.GenerationOptions(aspect_ratio="7:1")), "aspect_ratio"),
        (lambda: planner_pb2.PlanRequest(instruction="go", images=[common_pb2.ImageInput(encoded=png(camera_image()))],
                                         options=common_pb2.GenerationOptions(jacobi_window=65)),
         r"jacobi_window must be in \[0, 64\]"),
    ],
)  # fmt: skip
def test_invalid_argument_is_precise(server, make, match):
    stub = planner_pb2_grpc.PlannerStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Plan(make(), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert __import__("re").search(match, e.value.details()), e.value.details()


def test_explore_must_start_with_start(server):
    stub = exploration_pb2_grpc.ExplorationStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    cmd = exploration_pb2.ExploreRequest(command=exploration_pb2.ExploreCommand(text="go"))
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Explore(iter([cmd]), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "start" in e.value.details()


def test_queue_full_is_resource_exhausted_with_a_retry_hint(server, engine):
    stub = planner_pb2_grpc.PlannerStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    req = planner_pb2.PlanRequest(instruction="go", images=[common_pb2.ImageInput(encoded=png(camera_image()))],
                                  options=endless(engine, max_new_tokens=2000).to_proto())  # fmt: skip
    running = stub.Plan(req, timeout=60)
    next(running)  # decoding
    queued = stub.Plan(req, timeout=60)
    wait_for(lambda: server.runtime.scheduler.depth == 1)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Plan(req, timeout=60))  # beyond the queue
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    hint = dict(e.value.trailing_metadata())["retry-after-ms"]
    assert int(hint) >= 100
    running.cancel()
    queued.cancel()
    wait_for(lambda: server.runtime.scheduler.depth == 0 and server.runtime.scheduler._running == 0)


def test_cancellation_frees_the_slot(server, client, engine):
    before = requests_count(server, "Plan", "CANCELLED")
    t0 = time.time()
    stream = client.plan_stream("go", [camera_image()], options=endless(engine, max_new_tokens=2000))
    next(stream)
    stream.close()  # cancels the call
    wait_for(lambda: server.runtime.scheduler._running == 0, timeout=5)
    plan = client.plan("go", [camera_image()], max_subgoals=1, options=force_images(engine))  # the next request runs
    assert len(plan.subgoals) == 1 and time.time() - t0 < 3.4  # 2000 tokens would take longer
    wait_for(lambda: requests_count(server, "Plan", "CANCELLED") == before + 1)


def test_deadline_mid_image_stops_decoding(server, engine):
    stub = planner_pb2_grpc.PlannerStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    opts = force_images(engine, size=(48, 48), max_new_tokens=2000)  # one image: 48 * 49 tokens, seconds on CPU
    req = planner_pb2.PlanRequest(instruction="go", images=[common_pb2.ImageInput(encoded=png(camera_image()))],
                                  options=opts.to_proto())  # fmt: skip
    kinds = []
    with pytest.raises(grpc.RpcError) as e:
        for ev in stub.Plan(req, timeout=1.0):
            kinds.append(ev.WhichOneof("event"))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "keyframe_progress" in kinds and "subgoal_completed" not in kinds  # it expired inside the image
    wait_for(lambda: server.runtime.scheduler._running == 0, timeout=3)  # decoding stopped, slot free
    wait_for(lambda: requests_count(server, "Plan", "DEADLINE_EXCEEDED") >= 1)


def test_metrics_endpoint(server, client, engine):
    client.plan("go", [camera_image()], max_subgoals=1, options=force_images(engine))
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_bound_port}/metrics", timeout=10).read().decode()
    assert 'emu35_robot_requests_total{code="OK",method="Plan"}' in text
    assert 'emu35_robot_requests_total{code="INVALID_ARGUMENT",method="Plan"}' in text
    for name in (
        "emu35_robot_queue_depth",
        "emu35_robot_time_to_first_subgoal_seconds_count",
        "emu35_robot_decode_tokens_per_second_count",
        "emu35_robot_time_to_first_event_seconds_count",
    ):
        assert name in text  # fmt: skip


def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    services = set(db.get_services())
    assert services >= {"emu35.robot.v1.Planner", "emu35.robot.v1.Generation", "emu35.robot.v1.Exploration",
                        "emu35.robot.v1.Service", "grpc.health.v1.Health"}  # fmt: skip
    assert db.FindFileContainingSymbol("emu35.robot.v1.PlanRequest").name.endswith("planner.proto")


# ---- lifecycle: health, retries, shutdown ---------------------------------------------------------------------------
def health_status(port, service=""):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_not_serving_until_loaded_and_client_retries_unavailable(engine, bundle):
    s = PlannerServer(port=0, host="127.0.0.1", limits=LIMITS).start()
    try:
        assert health_status(s.port) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health_status(s.port, "emu35.robot.v1.Planner") == health_pb2.HealthCheckResponse.NOT_SERVING
        with PlannerClient(f"127.0.0.1:{s.port}", retries=0) as c, pytest.raises(grpc.RpcError) as e:
            c.info()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        threading.Timer(0.5, lambda: s.attach(engine, info(bundle), warmup=False)).start()
        with PlannerClient(f"127.0.0.1:{s.port}", retries=6, backoff_s=0.2) as c:
            assert c.info().model == "tiny-random"  # UNAVAILABLE while loading, retried with backoff
        assert health_status(s.port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        s.stop(0)


def test_graceful_shutdown_drains_a_stream_in_flight(engine, bundle):
    s = PlannerServer(port=0, host="127.0.0.1", limits=LIMITS, grace_s=20).start().attach(engine, info(bundle), False)
    ch = grpc.insecure_channel(f"127.0.0.1:{s.port}")
    watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stub = planner_pb2_grpc.PlannerStub(ch)
    req = planner_pb2.PlanRequest(instruction="go", images=[common_pb2.ImageInput(encoded=png(camera_image()))],
                                  options=endless(engine, max_new_tokens=600).to_proto())  # fmt: skip
    stream = stub.Plan(req, timeout=30)
    first = next(stream)
    stopper = threading.Thread(target=s.stop)
    stopper.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    rest = [first, *stream]  # the in-flight stream completes
    assert rest[-1].WhichOneof("event") == "finished" and rest[-1].finished.usage.generated_tokens == 600
    stopper.join(30)
    assert not stopper.is_alive()
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Plan(req, timeout=5))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


# ---- TLS and token auth ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return d / "cert.pem", d / "key.pem"


def test_tls_and_token(engine, bundle, cert):
    s = PlannerServer(port=0, host="127.0.0.1", limits=LIMITS, tls_cert=cert[0], tls_key=cert[1], auth_token="s3cret")
    s.start().attach(engine, info(bundle), warmup=False)
    target = f"localhost:{s.port}"
    try:
        with PlannerClient(target, tls=cert[0], token="s3cret", timeout=30) as c:
            i = c.info()
            assert i.tls and i.auth_required
            assert len(c.plan("go", [camera_image()], max_subgoals=1, options=force_images(engine)).subgoals) == 1
        for token in (None, "wrong"):
            with PlannerClient(target, tls=cert[0], token=token, retries=0) as c:
                with pytest.raises(grpc.RpcError) as e:
                    c.info()
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as e:
                    c.plan("go", [camera_image()])
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # health stays open to probes; a plaintext client cannot talk to the TLS port
        creds = grpc.ssl_channel_credentials(cert[0].read_bytes())
        hs = health_pb2_grpc.HealthStub(grpc.secure_channel(target, creds))
        assert hs.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        with PlannerClient(target, retries=0, timeout=5) as c, pytest.raises(grpc.RpcError):
            c.info()
        assert requests_count(s, "GetInfo", "UNAUTHENTICATED") == 2
    finally:
        s.stop(0)


def test_concurrent_plans_share_a_batch_and_match_solo_results(engine, bundle):
    """Two Plan calls at once on a server with --max-batch 2 decode in the same batch (the batch reaches 2 streams)
    and each gets the plan it gets alone."""
    s = PlannerServer(port=0, host="127.0.0.1", limits=Limits(max_batch=2), grace_s=5).start()
    s.attach(engine, info(bundle))
    try:
        with PlannerClient(f"127.0.0.1:{s.port}", timeout=60) as c:
            opts = [force_images(engine, size=(4, 4), max_new_tokens=200), endless(engine, max_new_tokens=300)]
            plans = lambda i: c.plan("go", [camera_image(i)], max_subgoals=2, options=opts[i])
            alone = [plans(0), plans(1)]
            assert s.runtime.scheduler.batch.peak == 1
            out = [None, None]
            threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, plans(i))) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        assert s.runtime.scheduler.batch.peak == 2
        key = lambda p: ([(g.text, g.codes.tolist()) for g in p.subgoals], p.trailing_text, p.usage.reason)
        assert [key(p) for p in out] == [key(p) for p in alone]
        assert len(alone[0].subgoals) == 2 and alone[1].usage.generated_tokens == 300
    finally:
        s.stop(0)


def test_plan_consensus_draws_candidates_in_one_batch_and_keeps_their_medoid(engine, bundle):
    """`plan_consensus` sends its candidates at once (the batch reaches them all), candidate 0 is the plan asked for
    (here greedy), the others draw their key-frames with their own seeds, and the one returned is the medoid."""
    from emu35_robot.consensus import distance_matrix, medoid

    s = PlannerServer(port=0, host="127.0.0.1", limits=Limits(max_batch=3, max_queue=3), grace_s=5).start()
    s.attach(engine, info(bundle))
    try:
        with PlannerClient(f"127.0.0.1:{s.port}", timeout=60) as c:
            greedy = SamplingParams(0.0, 0, 1.0)
            opts = force_images(engine, size=(3, 3), max_new_tokens=200, image_sampling=greedy)
            alone = c.plan("go", [camera_image()], max_subgoals=2, options=opts)
            result = c.plan_consensus("go", [camera_image()], 3, options=opts, max_subgoals=2)
        best, plans = result.plan, result.candidates
        assert s.runtime.scheduler.batch.peak == 3
        assert len(plans) == 3 and all(len(p.subgoals) == 2 for p in plans)
        assert [g.codes.tolist() for g in plans[0].subgoals] == [g.codes.tolist() for g in alone.subgoals]
        assert plans[1].subgoals[0].codes.tolist() != plans[2].subgoals[0].codes.tolist()  # sampled, other seeds
        assert best is plans[medoid(plans)]
        d = distance_matrix(plans)
        assert np.array_equal(result.distances, d) and result.summary()["chosen"] == result.chosen
        assert d.shape == (3, 3) and np.allclose(d, d.T) and (d.diagonal() == 0).all()
        assert (d[~np.eye(3, dtype=bool)] > 0).all()
        with pytest.raises(ValueError, match="candidates"):
            PlannerClient(f"127.0.0.1:{s.port}").plan_consensus("go", [camera_image()], 0)
    finally:
        s.stop(0)
