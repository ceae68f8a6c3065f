"""Which models an ingress replica routes to, read from Serve's controller.

The ingress application's arguments name no models: if they did, a deploy that
only added or removed a model would change them, and Serve would restart every
node's listener (dropping its connections). Each ingress replica instead reads
the model applications (``model-<name>``, those not being deleted) from Serve's
controller when it starts, every ``REFRESH_S``, and when a request names a model
it does not know or whose application is gone; requests use the cached handles,
with no controller call of their own. The controller is the one source whichever
way the config was applied (``deploy``, ``serve deploy``, KubeRay's
``serveConfigV2``), and a model whose application is being deleted is dropped as
soon as the controller says so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import ray
from ray import serve
from ray.actor import ActorHandle
from ray.exceptions import RayError
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve.generated.serve_pb2 import ApplicationStatus, StatusOverview
from ray.serve.handle import DeploymentHandle

from server.cluster.settings import MODEL_APP_PREFIX

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # a removed model is dropped this long after Serve starts deleting it, at most
MISS_S = 0.1  # unknown names re-read the controller at most this often (a flood of them)
ASK_TIMEOUT_S = 5.0  # a controller that does not answer (its head restarting): keep the models
GONE = frozenset(
    ApplicationStatus.Value(f"APPLICATION_STATUS_{s}") for s in ("DELETING", "NOT_STARTED")
)


def model_apps(statuses: list[bytes]) -> dict[str, str]:
    """Model name -> its application, from the controller's ``list_serve_statuses``: the
    ``model-<name>`` applications that are not being deleted."""
    found: dict[str, str] = {}
    for raw in statuses:
        app = StatusOverview.FromString(raw)
        model = app.name.removeprefix(MODEL_APP_PREFIX)
        if model and model != app.name and app.app_status.status not in GONE:
            found[model] = app.name
    return found


class Routes:
    """Model name -> deployment handle, re-read from the controller (or fixed)."""

    def __init__(self, fixed: dict[str, DeploymentHandle] | None = None) -> None:
        """``fixed``: the handles of one application holding every model (``from_args``),
        never re-read; None: the model applications the controller lists."""
        self.handles: dict[str, DeploymentHandle] = dict(fixed or {})
        self._controller: ActorHandle | None = (
            None
            if fixed is not None
            else ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        )
        self._read_at = -math.inf
        self._reading: asyncio.Future[None] | None = None
        self._every: asyncio.Task[None] | None = None
        self._departures: dict[str, asyncio.Future[None]] = {}

    async def find(self, model: str) -> DeploymentHandle | None:
        """The model's handle; a name not known re-reads the controller first (a model
        deployed since the last read). A known name returns without yielding the loop."""
        handle = self.handles.get(model)
        if handle is None:
            await self.refresh(MISS_S)
            handle = self.handles.get(model)
        return handle

    def departure(self, model: str) -> asyncio.Future[None]:
        """Done once ``model`` is no longer deployed: a request waiting for one of its
        replicas stops waiting then (Ray's router would hold it until the client gives
        up, and a deleted model gets no replica). Call it on the loop that serves."""
        gone = self._departures.get(model)
        if gone is None:
            gone = self._departures[model] = asyncio.get_running_loop().create_future()
        return gone

    async def start(self) -> None:
        """The first read, then one every ``REFRESH_S``: on the loop that serves requests
        (the one-read-at-a-time future belongs to it)."""
        if self._controller is not None:
            await self.refresh(0.0)
            self._every = asyncio.create_task(self._keep_reading())

    def stop(self) -> None:
        if self._every is not None:
            self._every.cancel()

    async def _keep_reading(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self.refresh(REFRESH_S / 2)

    async def refresh(self, max_age: float) -> None:
        """Re-read the model applications unless read less than ``max_age`` s ago;
        concurrent callers share one read."""
        if self._controller is None or time.monotonic() - self._read_at < max_age:
            return
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read(self._controller))
        await asyncio.shield(self._reading)  # a caller cancelled leaves the read to the rest

    async def _read(self, controller: ActorHandle) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(ASK_TIMEOUT_S):
                statuses = await controller.list_serve_statuses.remote()
            self._use(model_apps(statuses))
        except (RayError, TimeoutError) as exc:  # requests go on to the models known
            log.warning(
                "still routing to %s: Serve's controller did not list the applications "
                "within %g s (%r)",
                sorted(self.handles),
                ASK_TIMEOUT_S,
                exc,
            )
        except Exception:  # a bug: logged, the models known kept, the next read tried
            log.exception("reading the model applications failed")
        finally:
            self._read_at, self._reading = started, None

    def _use(self, apps: dict[str, str]) -> None:
        """Handles for the models now listed (Serve caches them per deployment), none for
        the others."""
        for gone in set(self.handles) - set(apps):
            log.info("model %s is no longer deployed: no longer routed to", gone)
            del self.handles[gone]
            waiting = self._departures.pop(gone, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
        for model, app in apps.items():
            if model not in self.handles:
                log.info("model %s deployed as application %s: routed to", model, app)
                self.handles[model] = serve.get_deployment_handle(
                    model, app_name=app, _check_exists=False
                )
