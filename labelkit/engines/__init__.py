"""Engines: where the work that grows with N runs.

``local`` (the default) runs in this process, as every stage always has. ``ray`` hands the parts
that are embarrassingly parallel (embedding, the kNN graph's queries) to a Ray cluster: one that
:func:`ray_session` starts on this machine, or an existing one at ``--ray-address`` /
``RAY_ADDRESS``. Both write the same artifacts; docs/scale.md says what runs where.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from labelkit.errors import BadInputError, DependencyError

Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = ("local", "ray")
RAY_INSTALL_HINT = "pip install 'labelkit-ml[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """How to reach (or start) Ray, and how many actors to use.

    ``address`` None joins ``RAY_ADDRESS`` when it is set, else starts a local Ray on this machine with ``num_cpus`` CPUs (None: all) and an
    object store of ``object_store_bytes`` (None: Ray's default, 30% of RAM); an address joins that
    cluster and the two sizes are ignored. ``workers`` None: one actor per GPU of the cluster, else
    one per CPU.
    """

    address: str | None = None
    num_cpus: int | None = None
    object_store_bytes: int | None = None
    workers: int | None = None

    def __post_init__(self):
        for name in ("num_cpus", "object_store_bytes", "workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise BadInputError(f"'{name}' must be a positive integer or None. Got {value!r} instead.")


def import_ray():
    """The ``ray`` module, or a DependencyError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra installs ray[data]; a bare 'ray' lacks it)
    except ImportError as e:
        raise DependencyError(f"--engine ray needs Ray with Ray Data, which is not installed here: {RAY_INSTALL_HINT}") from e
    return ray


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: ``--ray-address``, else the ``RAY_ADDRESS`` environment variable (Ray's own
    convention, so a job submitted to a cluster finds it), else None: start a local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(opts: RayOptions) -> Iterator[Any]:
    """Ray, initialised for the duration: joins ``opts.address`` or starts a local Ray.

    A Ray already initialised in this process (a test's session fixture, a notebook) is used as it
    is and left running; one started here is shut down on exit, however the block ends.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = resolve_address(opts.address)
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    with _quiet_ray_logs():
        try:
            if address:
                ray.init(address=address, **common)
            else:
                # address='local' always starts a new Ray here (ray.init(None) would read RAY_ADDRESS again).
                ray.init(address="local", num_cpus=opts.num_cpus, object_store_memory=opts.object_store_bytes, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise DependencyError(f"could not start or join {where}: {str(e).splitlines()[0]} "
                                  f"(check --ray-address / RAY_ADDRESS; 'labelkit doctor --engine ray' probes it)") from e
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # labelkit draws its own progress
            ctx.print_on_execution_start = False
            yield ray
        finally:
            ray.shutdown()


@contextlib.contextmanager
def _quiet_ray_logs() -> Iterator[None]:
    """Ray's and Ray Data's notices (token auth on a local Ray, executor start/finish) off while
    labelkit drives Ray, restored after: labelkit reports progress and results itself."""
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def placement(ray, device: str, workers: int | None) -> tuple[int, bool]:
    """(actors, one GPU each?) for a model pool on the connected cluster.

    ``device`` is the stage's option: ``auto`` takes GPUs when the cluster has some, ``cpu`` never
    does, ``cuda[:N]`` requires them. Without GPUs there is one actor per cluster CPU.
    """
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if device.startswith("cuda") and gpus == 0:
        raise BadInputError(f"device '{device}' requested but the Ray cluster has no GPU; use --device cpu or auto")
    use_gpu = gpus > 0 and device != "cpu"
    return (workers or (gpus if use_gpu else cpus)), use_gpu
