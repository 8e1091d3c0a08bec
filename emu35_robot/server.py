"""The gRPC server: loads the model, registers the services, health and reflection, and shuts down gracefully.

    server = PlannerServer(port=0).start()   # listening; health NOT_SERVING
    server.load("path/to/bundle")             # loads, warms up, then SERVING
    server.wait()                             # until stop(): NOT_SERVING, drain in-flight streams, close

`start` and `load` are separate so that orchestrators see the server (and its NOT_SERVING health) while the weights
load, which takes minutes for the 34B model.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from model import write_random_bundle
from model.engine import Engine, GenerationRequest, load_engine
from model.info import inspect_checkpoint

from . import proto
from .auth import TokenAuthInterceptor
from .limits import Limits
from .metrics import Metrics
from .proto import exploration_pb2_grpc, generation_pb2_grpc, planner_pb2_grpc, service_pb2_grpc
from .servicers import (
    ExplorationServicer,
    GenerationServicer,
    ModelInfo,
    PlannerServicer,
    Runtime,
    ServiceServicer,
)

log = logging.getLogger("emu35_robot.server")
HEALTH_NAMES = ("", *proto.SERVICE_NAMES)


def default_cache_dir() -> Path:
    base = os.environ.get("EMU35_ROBOT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "emu35-robot"
    )
    return Path(base)


def resolve_checkpoint(
    model: str | Path | None, tokenizer: str | Path | None = None, vision_tokenizer: str | Path | None = None
) -> tuple[Path, Path, Path, bool]:
    """-> (model dir, tokenizer dir, vision tokenizer dir, random weights?). `model` is a bundle (model/, tokenizer/,
    vision_tokenizer/) or a model dir with the other two given; None is the shipped Emu3.5-mini when the package has
    it and the tiny random bundle otherwise; "random" is always the tiny random bundle (written once to the cache),
    for trying the service without any trained weights."""
    from .mini import MINI_BUNDLE, mini_available

    if model is None:
        model = MINI_BUNDLE if mini_available() else "random"
    random_weights = str(model) == "random"
    if random_weights:
        root = default_cache_dir() / "random-bundle"
        if not (root / "model" / "config.json").is_file():
            write_random_bundle(root, seed=0)
        model = root
    model = Path(model)
    if (model / "model" / "config.json").is_file():
        tokenizer = tokenizer or model / "tokenizer"
        vision_tokenizer = vision_tokenizer or model / "vision_tokenizer"
        model = model / "model"
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"{model}: no config.json (pass a bundle dir or the model dir)")
    if tokenizer is None or vision_tokenizer is None:
        raise ValueError(f"{model} is a model dir: pass --tokenizer and --vision-tokenizer too")
    return model, Path(tokenizer), Path(vision_tokenizer), random_weights


class PlannerServer:
    def __init__(
        self,
        port: int = 50051,
        host: str = "[::]",
        limits: Limits | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        auth_token: str | None = None,
        metrics_port: int | None = None,
        grace_s: float = 30.0,
    ):
        self.limits = limits or Limits()
        self.host, self.requested_port, self.grace_s = host, port, grace_s
        self.tls = (Path(tls_cert).read_bytes(), Path(tls_key).read_bytes()) if tls_cert and tls_key else None
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        self.auth_token, self.metrics_port = auth_token, metrics_port
        self.metrics = Metrics()
        self.runtime = Runtime(self.limits, self.metrics, auth_required=bool(auth_token), tls=self.tls is not None)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.port: int | None = None
        self.metrics_bound_port: int | None = None
        self._server: grpc.Server | None = None
        self._stopped = threading.Event()

    # ---- lifecycle ------------------------------------------------------------------------------------------
    @classmethod
    def loopback(
        cls, model: str | Path | None = None, max_len: int = 4096, limits: Limits | None = None, **load_kw
    ) -> PlannerServer:
        """A started server on a free 127.0.0.1 port with `model` loaded (None: the shipped mini), for in-process
        clients (the demo, `eval --planner mini`, tests); `address` reaches it and `stop()` ends it."""
        server = cls(port=0, host="127.0.0.1", limits=limits, grace_s=2).start()
        try:
            return server.load(model, max_len=max_len, **load_kw)
        except BaseException:
            server.stop(0)
            raise

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> PlannerServer:
        lim = self.limits
        interceptors = []
        if self.auth_token:
            reject = lambda method: self.metrics.requests.labels(method.rsplit("/", 1)[-1], "UNAUTHENTICATED").inc()
            interceptors.append(TokenAuthInterceptor(self.auth_token, reject))
        # threads: every queued or decoding request and every open session holds one while it streams
        workers = lim.max_queue + max(1, lim.max_batch) + lim.max_sessions + 16
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", lim.max_receive_message_bytes),
                ("grpc.max_send_message_length", lim.max_send_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        rt = self.runtime
        planner_pb2_grpc.add_PlannerServicer_to_server(PlannerServicer(rt), self._server)
        generation_pb2_grpc.add_GenerationServicer_to_server(GenerationServicer(rt), self._server)
        exploration_pb2_grpc.add_ExplorationServicer_to_server(ExplorationServicer(rt), self._server)
        service_pb2_grpc.add_ServiceServicer_to_server(ServiceServicer(rt), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        for name in HEALTH_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        names = (*proto.SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self._server)
        addr = f"{self.host}:{self.requested_port}"
        if self.tls:
            creds = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
            self.port = self._server.add_secure_port(addr, creds)
        else:
            self.port = self._server.add_insecure_port(addr)
        if not self.port:
            raise OSError(f"cannot bind {addr}")
        self._server.start()
        if self.metrics_port is not None:
            self.metrics_bound_port = self.metrics.serve(self.metrics_port)
        log.info("listening on %s:%d (%s)", self.host, self.port, "TLS" if self.tls else "plaintext")
        return self

    def load(
        self,
        model: str | Path | None = None,
        tokenizer: str | Path | None = None,
        vision_tokenizer: str | Path | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        max_len: int = 8192,
        warmup: bool = True,
        tensor_parallel: int = 1,
        fp8: bool = False,
        tp_all_reduce: str = "auto",
        kernels: bool = True,
    ) -> PlannerServer:
        """Load the checkpoint, warm the engine up with one short request, then report SERVING. `tensor_parallel` N > 1
        spawns N - 1 more ranks (one GPU each from `device` on: cuda:0 and cuda:1 for N = 2) that each hold 1/N of
        every block (model/tp_engine.py); this process is rank 0 and serves; `tp_all_reduce` picks how its decode steps
        sum partial outputs (model.tp_engine.peer_sums). `fp8`: float8 weights (model/fp8.py,
        through the Triton kernel of model/skinny_mm.py where it runs). `kernels=False`: plain torch ops on CUDA
        (model.engine.load_engine)."""
        model_dir, tok_dir, vq_dir, random_weights = resolve_checkpoint(model, tokenizer, vision_tokenizer)
        if random_weights:
            log.warning(
                "serving a TINY RANDOM checkpoint from %s. Its plans are noise; it exists to try the service end to "
                "end. Pass --model /path/to/a/bundle for a trained model.",
                model_dir.parent,
            )
        torch_dtype = dtype and getattr(torch, dtype)
        if tensor_parallel > 1:
            from model.tp_engine import start_tensor_parallel

            cuda = str(device).startswith("cuda")
            engine = start_tensor_parallel(
                model_dir,
                tok_dir,
                vq_dir,
                tensor_parallel,
                device,
                torch_dtype,
                max_len,
                all_reduce=tp_all_reduce,
                compile_kernels=cuda,
                fp8=fp8,
            )
            engine.mirror.on_broken = self._tensor_parallel_broken
            log.info("tensor parallel: rank 0 of %d on %s", tensor_parallel, engine.device)
        else:
            engine = load_engine(model_dir, tok_dir, vq_dir, device, torch_dtype, max_len, fp8=fp8, kernels=kernels)
        if fp8:
            n = sum(isinstance(w, torch.Tensor) and w.dtype == torch.float8_e4m3fn for w in engine.lm.buffers())
            log.info("float8 weights in %d projections (rank 0)", n)
        info = ModelInfo(
            name=(model_dir.parent.name if model_dir.name == "model" else model_dir.name),
            checkpoint=str(model_dir),
            random_weights=random_weights,
            dtype=str(next(engine.lm.parameters()).dtype).removeprefix("torch."),
            parameters=inspect_checkpoint(model_dir).num_parameters,  # all of them, also when this rank holds a part
        )
        try:
            return self.attach(engine, info, warmup)
        except BaseException:
            if engine.mirror is not None:
                engine.mirror.close()
            raise

    def _tensor_parallel_broken(self, reason: str) -> None:
        """A rank failed: no request can run any more (each would be refused with the reason); say so to probes."""
        for name in HEALTH_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def attach(self, engine: Engine, info: ModelInfo, warmup: bool = True) -> PlannerServer:
        """Serve an engine built by the caller (benchmarks, notebooks)."""
        if warmup:
            for _ in engine.generate(GenerationRequest(task="vla", question="warm up", max_new_tokens=2, seed=0)):
                pass
        self.runtime.model, self.runtime.engine = info, engine
        for name in HEALTH_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("model %s loaded (%s parameters, %s); SERVING", info.name, f"{info.parameters:,}", engine.device)
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, let in-flight streams finish for up to `grace_s`, then cancel the rest."""
        if self._server is None or self._stopped.is_set():
            return
        grace = self.grace_s if grace_s is None else grace_s
        log.info("shutting down: draining in-flight requests for up to %.0f s", grace)
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self.runtime.scheduler.close()
        mirror = getattr(self.runtime.engine, "mirror", None)
        if mirror is not None:  # the other tensor-parallel ranks
            mirror.close()
        self.metrics.close()
        self._stopped.set()
        log.info("stopped")

    def wait(self) -> None:
        self._stopped.wait()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT -> graceful stop (in a thread: signal handlers must return quickly)."""

        def handler(signum, _frame):
            log.info("received %s", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="shutdown", daemon=True).start()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def serve_forever(args) -> int:
    """`emu35-robot serve`: start, load, serve until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    limits = Limits(
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_sessions=args.max_sessions,
        max_new_tokens=args.max_new_tokens,
        max_image_bytes=args.max_image_bytes,
    )
    token = args.auth_token or os.environ.get("EMU35_ROBOT_TOKEN") or None
    server = PlannerServer(
        port=args.port,
        host=args.host,
        limits=limits,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auth_token=token,
        metrics_port=args.metrics_port,
        grace_s=args.grace,
    ).start()
    server.install_signal_handlers()
    print(f"emu35-robot: listening on {args.host}:{server.port}", file=sys.stderr, flush=True)
    if server.metrics_bound_port is not None:
        print(f"emu35-robot: metrics on :{server.metrics_bound_port}/metrics", file=sys.stderr, flush=True)
    if resolve_checkpoint(args.model, args.tokenizer, args.vision_tokenizer)[3]:
        print(
            "emu35-robot: WARNING: serving a TINY RANDOM checkpoint "
            f"(cached in {default_cache_dir() / 'random-bundle'}); outputs are noise.",
            file=sys.stderr,
            flush=True,
        )
    server.load(
        args.model,
        args.tokenizer,
        args.vision_tokenizer,
        device=args.device,
        max_len=args.max_len,
        tensor_parallel=args.tensor_parallel,
        fp8=args.fp8,
        tp_all_reduce=args.tp_all_reduce,
    )
    print("emu35-robot: SERVING", file=sys.stderr, flush=True)
    server.wait()
    return 0
