"""Units of work over a Ray cluster: Ray Data's actor pool computes, the driver writes.

``batch --ray`` and ``evaluate --ray`` hand the units they have not recorded
yet (a photo with all its phrases; an image with all its refs) to
:meth:`RayRun.results`. The units become a ``ray.data`` dataset, one unit a
block, mapped by ``map_batches`` with a callable class: a pool of actors,
each of which builds its segmenter and proposal source once (a
:class:`StepRecipe`, checked against the driver's run configuration) and
turns a unit into a :class:`~globallocal.runs.runfolder.UnitResult`
(records, PNG bytes) with the same step the single-process loop calls.
Results stream back to the driver, which alone writes the run folder, so a
Ray run and a single-process run write the same bytes and either resumes
the other.

Faults. Ray Data restarts an actor that dies (kill -9, out of memory, a lost
node) and retries its unit. A unit that fails on its input becomes error
records inside the step, as in one process, and is not retried. A unit whose
worker died :data:`MAX_ATTEMPTS` times is given up (the step's ``crashed``)
rather than killing workers forever. One small actor counts the attempts,
so the summary can say how many units were retried. A result that arrives
twice (a retried task whose output had already streamed back) is written once.

Where. ``--ray`` takes ``local``, ``auto`` (``RAY_ADDRESS``, else the cluster
running here) or a head's ``HOST:PORT`` (``ray://HOST:PORT`` for Ray Client);
anything else, in the option or in ``RAY_ADDRESS``, is refused before
anything loads (:meth:`RayOptions.check`). Before joining a head, the driver
checks within :data:`HEAD_WAIT_S` seconds that a gRPC server (as Ray's GCS
and Ray Client are) answers there: Ray itself would retry for minutes.

Ray is imported here only, and only once ``--ray`` is given.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import GlobalLocalError, InputError, WeightsError, first_line
from ..plurals import counted
from .native_stderr import dropping_native_lines
from .runfolder import UnitResult
from .worker import Worker, WorkerRecipe, as_stored

__all__ = [
    "HEAD_WAIT_S",
    "INSTALL_HINT",
    "MAX_ATTEMPTS",
    "Pool",
    "RayOptions",
    "RayRun",
    "StepRecipe",
    "check_node",
    "head_unanswered",
    "import_ray",
]

INSTALL_HINT = "pip install 'globallocal[ray]'"
# Attempts at one unit: a photo that kills its worker every time must not loop for ever.
MAX_ATTEMPTS = 3
# How long the driver waits for a head to answer before it says so.
HEAD_WAIT_S = 10.0
# A pool far beyond any cluster's is a typo; so is a share beyond any node's.
MAX_ACTORS = 1024
MAX_SHARES = {"--ray-cpus-per-actor": 1024.0, "--ray-gpus-per-actor": 64.0}
_HEAD = re.compile(r"(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})")
_ADDRESS_FIX = ("use local (start Ray on this machine), auto (join RAY_ADDRESS or the cluster running here) or a "
                "head's HOST:PORT (e.g. 10.0.0.5:6379; ray://HOST:10001 for Ray Client)")
# The client preface of HTTP/2, which gRPC speaks: a gRPC server answers it with a SETTINGS frame (type 4).
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What Ray prints on every run that asks nothing of the user. Its token-authentication notice (a local
# cluster gets a token by default) comes from this logger; and its core worker logs, from C++ straight to the
# standard error, that Ray Data's actors (restarted when they die) take arguments from the object store, which
# Ray Data itself puts there (ray-project/ray#57733).
_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
_CORE_WORKER_NOISE = re.compile(rb"core_worker\.cc:\d+: Actor .* has constructor arguments in the object store and "
                                rb"max_restarts > 0")


def import_ray() -> Any:
    """The ``ray`` module, with ``ray.data``; one line saying how to install it when it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where to run (``local``, ``auto`` or a head's address) and the actor pool (None: see :meth:`Pool.size`)."""

    address: str = "local"
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None

    def check(self) -> None:
        """A bad address or number fails before anything starts (nothing is imported for it)."""
        self.head()
        if self.actors is not None and self.actors < 1:
            raise InputError(f"--ray-actors must be at least 1, got {self.actors}")
        if self.actors is not None and self.actors > MAX_ACTORS:
            raise InputError(f"--ray-actors must be at most {MAX_ACTORS}, got {self.actors}")
        shares = (("--ray-gpus-per-actor", self.gpus_per_actor), ("--ray-cpus-per-actor", self.cpus_per_actor))
        for flag, value in shares:
            if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_SHARES[flag]):
                raise InputError(f"{flag} must be a number from 0 to {MAX_SHARES[flag]:g}, got {value}")

    def head(self) -> tuple[str, int] | None:
        """The head to join, (host, port): ``--ray HOST:PORT``, or ``RAY_ADDRESS`` under ``--ray auto`` (as Ray
        reads it); None to start Ray here (``local``) or to find the cluster running here. A malformed address is
        refused, naming where it came from."""
        address, origin = self.address, f"--ray {self.address!r}"
        if address == "auto" and os.environ.get("RAY_ADDRESS"):
            address = os.environ["RAY_ADDRESS"]
            origin = f"RAY_ADDRESS={address!r} (read under --ray auto)"
        if address in ("local", "auto"):
            return None
        found = _HEAD.fullmatch(address)
        if found is None or not 1 <= int(found[2]) <= 65535:
            raise InputError(f"{origin} is not a Ray address; {_ADDRESS_FIX}")
        return found[1].strip("[]"), int(found[2])


@dataclass(frozen=True)
class Pool:
    """The actor pool of a run: how many, and what each holds."""

    actors: int
    cpus: float
    gpus: float

    @classmethod
    def size(cls, options: RayOptions, resources: dict[str, float]) -> Pool:
        """Defaults: one actor per GPU when the cluster has GPUs, else one per two CPUs, sharing the CPUs."""
        total_gpus, total_cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        gpus = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if total_gpus else 0.0)
        if options.actors is not None:
            actors = options.actors
        else:
            actors = max(1, int(total_gpus // gpus) if gpus > 0 else int(total_cpus // 2))
        cpus = options.cpus_per_actor
        if cpus is None:
            cpus = 1.0 if gpus > 0 else max(total_cpus, 1.0) / actors
        return cls(actors, cpus, gpus)

    @property
    def device(self) -> str:
        """What ``--device auto`` is on these actors (Ray shows each actor its own GPUs only)."""
        return "cuda" if self.gpus > 0 else "cpu"

    def describe(self) -> str:
        return f"{counted(self.actors, 'actor')} of {self.cpus:g} CPU, {self.gpus:g} GPU"


def _gcs_host(ray: Any, host: str) -> str:
    """The host Ray itself connects to (it replaces a local address by this node's)."""
    try:
        return ray._private.services.resolve_ip_for_localhost(host)
    except Exception:  # a private helper: without it, the host as given
        return host


def head_unanswered(host: str, port: int, wait: float = HEAD_WAIT_S) -> str | None:
    """Why no Ray head answers at ``host:port`` within ``wait`` seconds (the name does not resolve, nothing
    listens, what listens is silent or speaks no gRPC), or None when a gRPC server answers."""
    found: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=wait) as connection:
                connection.sendall(_HTTP2_PREFACE)
                frame = connection.recv(9)
        except socket.gaierror as error:
            found.append(f"cannot resolve {host} ({error.strerror})")
        except TimeoutError:
            found.append(f"no answer within {wait:g} s")
        except OSError as error:
            found.append(f"nothing answers there ({error.strerror or error})")
        else:
            found.append(None if len(frame) == 9 and frame[3] == 0x04 else "what answers there is not a Ray head")

    thread = threading.Thread(target=probe, daemon=True)  # a name lookup that hangs is abandoned
    thread.start()
    thread.join(wait)
    return found[0] if found else f"no answer within {wait:g} s"


def describe_cluster(ray: Any) -> str:
    """One line: the cluster's nodes, CPUs, GPUs and memory."""
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return (
        f"ray cluster: {counted(nodes, 'node')}, {counted(float(resources.get('CPU', 0)), 'CPU')}, "
        f"{counted(float(resources.get('GPU', 0)), 'GPU')}, {resources.get('memory', 0) / 2**30:.0f} GiB memory"
    )


def _node_name() -> str:
    """How an actor names its node: host name and IP address."""
    import ray

    return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"


def _sha(identity: Any) -> str:
    return identity.get("sha256", "none") if isinstance(identity, dict) else "none"


def check_node(expected: dict[str, Any], worker: Worker, node: str) -> None:
    """A worker built on ``node`` against the run's configuration (``settings``, ``weights`` by content).

    Other weights content fails with one line naming the node, the file and both hashes.
    """
    found = worker.identity()
    stored, current = expected.get("weights", {}), found["weights"]
    for role in sorted(set(stored) | set(current)):
        if stored.get(role) != current.get(role):
            raise WeightsError(
                f"node {node}: {role} weights {worker.weights.get(role, '(none)')} have sha256 "
                f"{_sha(current.get(role))}, the run's have sha256 {_sha(stored.get(role))}; "
                "give every node the same weights file"
            )
    settings, mine = as_stored(expected.get("settings", {})), found["settings"]
    differing = sorted(key for key in set(settings) | set(mine) if settings.get(key) != mine.get(key))
    if differing:
        raise InputError(
            f"node {node}: settings differ from the run's ({', '.join(differing)}); "
            "install the same globallocal, models and parser on every node"
        )


@dataclass(frozen=True)
class StepRecipe:
    """What an actor runs: build the worker, check it against the run (``expected``), make the step."""

    recipe: WorkerRecipe
    make: Callable[[Worker], Any]
    expected: dict[str, Any]

    def __call__(self, device: str) -> Any:
        worker = self.recipe.build(device)
        check_node(self.expected, worker, _node_name())
        return self.make(worker)


@dataclass
class _Failure:
    """What stops the run (an evaluation error, a node with other weights): raised again on the driver."""

    error: BaseException


class _Attempts:
    """How often each unit was begun, and how many actors started (one small actor per run)."""

    def __init__(self) -> None:
        self.begun: dict[Any, int] = {}
        self.starts = 0

    def started(self) -> None:
        self.starts += 1

    def begin(self, keys: list[Any]) -> list[int]:
        for key in keys:
            self.begun[key] = self.begun.get(key, 0) + 1
        return [self.begun[key] for key in keys]

    def counts(self) -> tuple[int, int]:
        """(actors started, units begun more than once)."""
        return self.starts, sum(count > 1 for count in self.begun.values())


class _UnitActor:
    """The callable class of ``map_batches``: builds its step once, then does the units it is given."""

    def __init__(self, make_step: StepRecipe, device: str, attempts: Any) -> None:
        import ray

        self.ray, self.attempts = ray, attempts
        self.step: Any = None
        self.fatal: BaseException | None = None
        try:
            self.step = make_step(device)
        except GlobalLocalError as error:
            self.fatal = error  # handed to the driver with the first unit, which raises it as one line
        ray.get(attempts.started.remote())

    def _one(self, unit: Any, attempt: int) -> UnitResult | _Failure:
        if self.fatal is not None:
            return _Failure(self.fatal)
        try:
            if attempt > MAX_ATTEMPTS:
                reason = f"its worker died {MAX_ATTEMPTS} times (killed, out of memory or crashed); given up"
                return self.step.crashed(unit, reason)
            return self.step(unit)
        except GlobalLocalError as error:  # evaluate's: the run stops, as it does in one process
            return _Failure(error)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[bytes]]:
        keys = [key.item() if hasattr(key, "item") else key for key in batch["key"]]
        attempts = self.ray.get(self.attempts.begin.remote(keys))
        return {"result": [pickle.dumps(self._one(pickle.loads(blob), n)) for blob, n in zip(batch["unit"], attempts)]}


@dataclass
class RayRun:
    """One ``--ray`` session: joins (or starts) Ray, sizes the pool, runs units, counts restarts and retries."""

    options: RayOptions
    say: Callable[[str], None] = print
    pool: Pool | None = None
    retried: int = 0
    restarts: int = 0
    _started: bool = field(default=False, repr=False)

    def __enter__(self) -> RayRun:
        self.options.check()
        ray = import_ray()
        if not ray.is_initialized():  # else: a session this process opened already (a notebook, the tests)
            head = self.options.head()
            where = self.options.address if head is None else f"{head[0]}:{head[1]}"
            reason = None if head is None else head_unanswered(_gcs_host(ray, head[0]), head[1])
            if reason is not None:
                raise InputError(f"cannot join the Ray cluster at {where}: {reason}; start its head there "
                                 "(`ray start --head`) or check the address")
            logging.getLogger(_TOKEN_NOTICE_LOGGER).setLevel(logging.ERROR)
            try:
                ray.init(address=self.options.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, ValueError) as error:
                raise InputError(f"cannot join the Ray cluster at {where}: {first_line(error)}") from None
            self._started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the run's own bar is on the driver
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        # Ray Data's notes about its own renamed settings, which this run does not set.
        warnings.filterwarnings("ignore", message=r"`\w+` is deprecated", module=r"ray\.")
        self.pool = Pool.size(self.options, ray.cluster_resources())
        self.say(f"{describe_cluster(ray)}; {self.pool.describe()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            import_ray().shutdown()

    def results(self, make_step: StepRecipe, units: list[tuple[Any, Any]]) -> Iterator[UnitResult]:
        """The result of every ``(key, unit)``, in the order they finish, each once."""
        if not units:
            return
        ray = import_ray()
        attempts = ray.remote(num_cpus=0)(_Attempts).remote()
        rows = [{"key": key, "unit": pickle.dumps(unit)} for key, unit in units]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _UnitActor,
            fn_constructor_args=(make_step, self.pool.device, attempts),
            batch_size=1,
            # One unit in flight per actor: an actor that dies loses (and retries) only that one.
            compute=ray.data.ActorPoolStrategy(size=self.pool.actors, max_tasks_in_flight_per_actor=1),
            num_cpus=self.pool.cpus,
            num_gpus=self.pool.gpus or None,
        )
        seen = set()
        with dropping_native_lines(_CORE_WORKER_NOISE):  # the actors start as the rows are asked for
            for row in dataset.iter_rows():
                result = pickle.loads(row["result"])
                if isinstance(result, _Failure):
                    raise result.error
                if result.key not in seen:
                    seen.add(result.key)
                    yield result
        starts, self.retried = ray.get(attempts.counts.remote())
        self.restarts = max(0, starts - self.pool.actors)
